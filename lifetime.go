// This file holds the connection lifetime of WithConnMaxLifetime: a net.Conn
// wrapper, put on every connection by the dialer (transport.go), that
// retires an HTTP/1 connection once it is older than its lifetime, in the
// one way net/http absorbs without an error: the first write of the next
// request fails before any byte is written, and net/http sends the request
// again on a new connection.

package keepalive

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// DefaultConnMaxLifetime is 0: connections live as long as they are
	// used, as in net/http, Envoy (max_connection_duration unset) and
	// Finagle (maxLifeTime unbounded). A lifetime makes traffic follow DNS
	// changes and rebalance behind L4 load balancers (a Kubernetes Service
	// spreads connections, not requests), at the price of a new connection
	// (a TCP and often a TLS handshake) per lifetime per connection; only
	// deployments behind such balancers gain from it, and they should pick
	// it to match how fast they scale: 1 to 5 minutes is typical.
	DefaultConnMaxLifetime time.Duration = 0

	// ConnLifetimeJitter spreads connection lifetimes over +-10% of
	// WithConnMaxLifetime, so that connections dialed together (at start,
	// after an outage) do not all expire together and redial in a burst.
	ConnLifetimeJitter = 0.1
)

// WithConnMaxLifetime retires connections older than d (+-10%,
// ConnLifetimeJitter): an HTTP/1 connection past its lifetime takes no new
// request, and the request is sent on a new connection instead. Callers
// see no error: net/http itself resends a request whose reused connection
// fails before any byte was written, when its body can be rewound (no body,
// or GetBody, which http.NewRequest sets for in-memory bodies, whatever
// the method: a POST without Idempotency-Key included); a request whose
// body cannot be rewound is resent by the Transport, which checks that not
// a byte of it was read. A response in progress is never cut: a connection
// is retired only when its next request starts (a request with Expect:
// 100-continue keeps its connection until its response; a WebSocket or
// other 101 upgrade keeps it for good). An expired connection
// that stays idle is closed by the idle timeout. Stats.ConnsExpired counts
// the connections retired.
//
// HTTP/2 connections are not retired: the connection is shared by
// concurrent streams, and closing it would fail the streams in flight; the
// servers that need HTTP/2 connections to end send GOAWAY (Envoy's
// max_connection_duration, gRPC's MaxConnectionAge), which net/http handles
// without errors. Nor are HTTPS connections through a proxy: the Transport
// cannot see their protocol.
//
// Default DefaultConnMaxLifetime; zero means connections are never retired
// by age; negative is an error.
func WithConnMaxLifetime(d time.Duration) Option {
	return durationOption("WithConnMaxLifetime", d, func(o *options) { o.connMaxLifetime = d })
}

// Private implementation past this point.

// errConnExpired is the write error of a connection past its lifetime.
var errConnExpired = errors.New("keepalive: connection reached its max lifetime")

// Protocols of a lifetimeConn, as seen from its first bytes.
const (
	connUnknown int32 = iota // nothing written yet
	connHTTP1                // HTTP/1 requests: retired by age
	connOpaque               // TLS, a proxy tunnel or HTTP/2: never retired
)

// lifetimeConn retires an HTTP/1 connection past its expiry at the first
// write of a request, which is the first write after a response was read.
// A fresh connection is never refused (net/http does not resend on one).
type lifetimeConn struct {
	net.Conn
	expires time.Time
	expired *atomic.Int64 // Stats.ConnsExpired

	mode    atomic.Int32
	readNew atomic.Bool  // a read returned data since the last write
	retired atomic.Bool  // a write was refused; net/http closes the connection
	written atomic.Int64 // bytes written
	pinned  atomic.Int64 // -1, or written when a pinned request got the connection
}

// withLifetime wraps a new connection when WithConnMaxLifetime is set.
func (t *Transport) withLifetime(c net.Conn) net.Conn {
	d := t.opts.connMaxLifetime
	if d <= 0 {
		return c
	}
	jitter := (rand.Float64()*2 - 1) * ConnLifetimeJitter
	lc := &lifetimeConn{
		Conn:    c,
		expires: time.Now().Add(d + time.Duration(jitter*float64(d))),
		expired: &t.stats.connsExpired,
	}
	lc.pinned.Store(-1)
	return lc
}

func (c *lifetimeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.readNew.Store(true)
	}
	return n, err
}

func (c *lifetimeConn) Write(p []byte) (int, error) {
	if c.retired.Load() {
		return 0, errConnExpired
	}
	switch c.mode.Load() {
	case connUnknown:
		c.mode.CompareAndSwap(connUnknown, sniffProtocol(p))
	case connHTTP1:
		if c.readNew.Swap(false) && !time.Now().Before(c.expires) && c.refusable() {
			if !c.retired.Swap(true) {
				c.expired.Add(1)
			}
			return 0, errConnExpired
		}
	}
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// refusable reports whether a write may be refused: any write, unless a
// request pinned the connection, then only before its first byte.
func (c *lifetimeConn) refusable() bool {
	p := c.pinned.Load()
	return p < 0 || p == c.written.Load()
}

// sniffProtocol tells HTTP/1 from the rest by a connection's first write:
// a TLS record, a proxy's CONNECT or the HTTP/2 preface hide what follows.
func sniffProtocol(p []byte) int32 {
	switch {
	case len(p) == 0:
		return connUnknown
	case p[0] == 0x16, hasPrefix(p, "CONNECT "), hasPrefix(p, "PRI * HTTP/2"):
		return connOpaque
	}
	return connHTTP1
}

func hasPrefix(p []byte, s string) bool { return len(p) >= len(s) && string(p[:len(s)]) == s }

// dialTLS dials HTTPS connections when WithConnMaxLifetime is set: it runs
// the TLS handshake over a lifetimeConn itself, to learn the protocol that
// ALPN chose, which net/http would hide, and arms the lifetime only for
// HTTP/1.
func (t *Transport) dialTLS(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		raw, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		var cfg *tls.Config
		if t.base.TLSClientConfig != nil { // h2's NextProtos are set by now
			cfg = t.base.TLSClientConfig.Clone()
		} else {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				raw.Close()
				return nil, err
			}
			cfg.ServerName = host
		}
		hctx := ctx
		if d := t.opts.tlsHandshakeTimeout; d > 0 {
			var cancel context.CancelFunc
			hctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(hctx); err != nil {
			raw.Close()
			return nil, err
		}
		if lc, ok := raw.(*lifetimeConn); ok && tc.ConnectionState().NegotiatedProtocol != "h2" {
			lc.readNew.Store(false) // the handshake's reads were no response
			lc.mode.Store(connHTTP1)
		}
		return tc, nil
	}
}

// roundTripLive sends r on the underlying transport. Most requests go
// straight through; three kinds need to know their connection, which a
// GotConn trace tells (it costs allocations, only for them, only with a
// lifetime set):
//
//   - a body that cannot be rewound: net/http does not resend it after a
//     retired connection refused it, so it is sent again here, with the
//     same body, when the connection it was given is the one that refused,
//     not a byte was written on it since, and not a byte of the body was
//     read (net/http writes the headers of such a body before reading it,
//     and the refusal comes at that first write). The error alone does not
//     tell: net/http may report the closed connection's read error instead.
//   - Expect: 100-continue: the body is written after the 100 response is
//     read, which would look like the next request; the connection is
//     pinned to the request, refusable only before its first byte.
//   - Upgrade: after a 101 the connection is the caller's byte stream.
func (t *Transport) roundTripLive(r *http.Request) (*http.Response, error) {
	if t.opts.connMaxLifetime <= 0 {
		return t.base.RoundTrip(r)
	}
	streamed := r.Body != nil && r.Body != http.NoBody && r.GetBody == nil
	upgrade := r.Header.Get("Upgrade") != ""
	pin := upgrade || hasToken(r.Header["Expect"], "100-continue")
	if !streamed && !pin {
		return t.base.RoundTrip(r)
	}
	var (
		conn    atomic.Pointer[lifetimeConn]
		written atomic.Int64
	)
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		c := asLifetimeConn(info.Conn)
		if c != nil {
			n := c.written.Load()
			written.Store(n)
			if pin {
				c.pinned.Store(n)
			}
		}
		conn.Store(c)
	}}
	ctx := httptrace.WithClientTrace(r.Context(), trace)
	for resends := 0; ; resends++ {
		conn.Store(nil)
		rr := r.WithContext(ctx)
		var g *unsentBody
		if streamed {
			g = &unsentBody{rc: r.Body}
			rr.Body = g
		}
		resp, err := t.base.RoundTrip(rr)
		c := conn.Load()
		if c != nil && pin {
			if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
				c.mode.Store(connOpaque)
			}
			c.pinned.Store(-1)
		}
		refused := err != nil && c != nil && c.retired.Load() && c.written.Load() == written.Load()
		if !streamed || !refused || !g.unread() || resends >= maxExpiredResends {
			if g != nil {
				g.release()
			}
			return resp, err
		}
	}
}

// hasToken reports whether a comma-separated header holds token.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}

// CloseWrite half-closes the connection, for the bodies of 101 Switching
// Protocols responses (http.Response.Body is then an io.ReadWriteCloser).
func (c *lifetimeConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// asLifetimeConn returns the lifetimeConn under c, if there is one.
func asLifetimeConn(c net.Conn) *lifetimeConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	lc, _ := c.(*lifetimeConn)
	return lc
}

// maxExpiredResends bounds the resends of one request on retired
// connections: each takes an idle connection out of the pool, so the
// bound is only reached if the pool held that many expired connections.
const maxExpiredResends = 64

// unsentBody passes a request body through, noting whether any of it was
// read, and holds back net/http's Close of a body that was never read, so
// the body can be sent again; release lets the Close through.
type unsentBody struct {
	rc io.ReadCloser

	mu       sync.Mutex
	read     bool
	closed   bool // Close was called and held back
	released bool
}

func (b *unsentBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	b.read = true
	b.mu.Unlock()
	return b.rc.Read(p)
}

func (b *unsentBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.read && !b.released {
		b.closed = true
		return nil
	}
	return b.rc.Close()
}

func (b *unsentBody) unread() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.read
}

// release ends the hold: a Close held back happens now, later ones at once.
func (b *unsentBody) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.released = true
	if b.closed {
		b.rc.Close()
	}
}
