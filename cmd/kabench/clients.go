// This file builds the three clients kabench compares, each with a count
// of the connections it dials.

package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/keepalive-go/keepalive"
)

// describe says what each client is, for the report.
var describe = map[string]string{
	clientNoKeepAlive: "http.DefaultTransport clone with DisableKeepAlives",
	clientDefault:     "http.DefaultTransport clone (MaxIdleConnsPerHost 2)",
	clientKeepAlive:   "keepalive.NewClient()",
}

// benchClient is one client under measurement. A new one is built for every
// run, so that every run pays for its own connections, as a new process
// would.
type benchClient struct {
	*http.Client
	dials   func() int64     // connections opened so far
	retries func() int64     // retries so far
	close   func()           // closes idle connections
	waits   func(*runResult) // fills in keepalive's waits for the server; nil for the others

	tlsHandshakes *atomic.Int64 // counted by the TLS configuration (tls.go)
}

// newClient builds the client name. It sets no Client.Timeout: for a
// RoundTripper other than *http.Transport, http.Client implements that
// timeout with a goroutine and a timer per request (and *http.Transport
// adds another goroutine for the Request.Cancel that sets), which cost the
// keepalive client 15-35% of its requests/s here. measureRun bounds each
// request with its context instead, at the same cost for every client.
//
// For a target on a unix socket, every client dials the socket (keepalive
// through keepalive.WithDialContext).
func newClient(name string, t target, cfg *config) (*benchClient, error) {
	handshakes := new(atomic.Int64)
	switch name {
	case clientNoKeepAlive, clientDefault:
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DisableKeepAlives = name == clientNoKeepAlive
		var dials atomic.Int64
		dial := tr.DialContext
		switch {
		case t.unix != "":
			dial = unixDialer(t.unix)
		case t.backends != nil: // backends.go: the name's addresses in order, as a net.Dialer
			dial, tr.Proxy = t.backends.dialer(), nil
		}
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err == nil {
				dials.Add(1)
			}
			return c, err
		}
		setTransportTLS(tr, cfg, handshakes) // tls.go
		return &benchClient{
			Client:  &http.Client{Transport: tr},
			dials:   dials.Load,
			retries: func() int64 { return 0 },
			close:   tr.CloseIdleConnections,
			waits:   func(*runResult) {},

			tlsHandshakes: handshakes,
		}, nil
	case clientKeepAlive:
		var waits, waited atomic.Int64
		onRetry := func(e keepalive.RetryEvent) {
			if e.RetryAfter {
				waits.Add(1)
				waited.Add(int64(e.Wait))
			}
		}
		opts := []keepalive.Option{
			keepalive.WithTLSConfig(clientTLSConfig(cfg, handshakes)),
			keepalive.WithObserver(keepalive.Observer{OnRetry: onRetry}), // called on retries only
		}
		if cfg.http1 {
			opts = append(opts, keepalive.WithoutHTTP2())
		}
		if t.unix != "" {
			opts = append(opts, keepalive.WithDialContext(unixDialer(t.unix)))
		}
		if t.backends != nil { // backends.go: the same addresses, balanced
			opts = append(opts, keepalive.WithResolver(t.backends.resolve), keepalive.WithProxy(nil))
		}
		c, err := keepalive.NewClient(opts...)
		if err != nil {
			return nil, fmt.Errorf("keepalive.NewClient: %w", err)
		}
		tr := c.Transport.(*keepalive.Transport)
		return &benchClient{
			Client:  c,
			dials:   func() int64 { return tr.Stats().Dials },
			retries: func() int64 { return tr.Stats().Retries },
			close:   tr.CloseIdleConnections,
			waits: func(r *runResult) {
				st := tr.Stats()
				r.RetryAfterWaits, r.RetryAfterMs = waits.Load(), ms(time.Duration(waited.Load()))
				r.HostPauses, r.PauseWaits = st.Pauses, st.PauseWaits
			},

			tlsHandshakes: handshakes,
		}, nil
	}
	return nil, fmt.Errorf("unknown client %q", name)
}
