// This file holds the connection lifetime of WithConnMaxLifetime: the
// dialer (transport.go) stamps each connection with its expiry, and a
// request that is given an expired connection asks for it to be closed
// after its response, with "Connection: close". That is how HTTP/1 ends a
// connection without losing a request: the server and the client close it
// once the response is read, and no request is ever refused or resent.

package keepalive

import (
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"
)

const (
	// DefaultConnMaxLifetime is 0: connections live as long as they are
	// used, as in net/http, Envoy (max_connection_duration unset) and
	// Finagle (maxLifeTime unbounded). A lifetime makes traffic follow DNS
	// changes and rebalance behind L4 load balancers (a Kubernetes Service
	// spreads connections, not requests), at the price of a new connection
	// (a TCP and often a TLS handshake) per lifetime per connection, and of
	// a few allocations per request; only deployments behind such
	// balancers gain from it, and they should pick it to match how fast
	// they scale: 1 to 5 minutes is typical.
	DefaultConnMaxLifetime time.Duration = 0

	// ConnLifetimeJitter spreads connection lifetimes over +-10% of
	// WithConnMaxLifetime, so that connections dialed together (at start,
	// after an outage) do not all expire together and redial in a burst.
	ConnLifetimeJitter = 0.1
)

// WithConnMaxLifetime retires connections older than d (+-10%,
// ConnLifetimeJitter): the first request given a connection past its
// lifetime carries "Connection: close", so the connection ends once that
// response is read, and later requests go to a new connection. Callers see
// no error and nothing is sent twice, whatever the method and body (a POST
// without Idempotency-Key, a streamed body, Expect: 100-continue): no
// request is refused, no response cut. A request that asks to switch
// protocols (Upgrade, as a WebSocket does) is left alone. An expired
// connection that stays idle is closed by the idle timeout.
// Stats.ConnsExpired counts the connections retired.
//
// HTTP/2 connections are not retired. net/http would stop opening streams
// on one marked so and close it once its streams are done, but a request
// that picked it at that moment fails if its body cannot be rewound
// (measured: "cannot rewind body after connection loss"). Servers that
// need HTTP/2 connections to end send GOAWAY (Envoy's
// max_connection_duration, gRPC's MaxConnectionAge), which net/http
// handles.
//
// Retiring relies on the server closing the connection after a response to
// "Connection: close", as RFC 9112 section 9.6 requires (Go, nginx, Envoy
// and Apache do). It costs, per request, a copy of the request's header
// map and an httptrace.ClientTrace, only when a lifetime is set.
//
// Default DefaultConnMaxLifetime; zero means connections are never retired
// by age; negative is an error.
func WithConnMaxLifetime(d time.Duration) Option {
	return durationOption("WithConnMaxLifetime", d, func(o *options) { o.connMaxLifetime = d })
}

// Private implementation past this point.

// lifetimeConn is a connection stamped with its expiry.
type lifetimeConn struct {
	net.Conn
	expires time.Time
	retired atomic.Bool // a request asked for the connection to close
}

// withLifetime stamps a new connection when WithConnMaxLifetime is set.
func (t *Transport) withLifetime(c net.Conn) net.Conn {
	d := t.opts.connMaxLifetime
	if d <= 0 {
		return c
	}
	jitter := (rand.Float64()*2 - 1) * ConnLifetimeJitter
	return &lifetimeConn{Conn: c, expires: time.Now().Add(d + time.Duration(jitter*float64(d)))}
}

// CloseWrite half-closes the connection, for the bodies of 101 Switching
// Protocols responses (http.Response.Body is then an io.ReadWriteCloser).
func (c *lifetimeConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// isHTTP2 reports whether c speaks HTTP/2: TLS with "h2" chosen by ALPN
// (the Transport does not speak HTTP/2 in clear text).
func isHTTP2(c net.Conn) bool {
	tc, ok := c.(*tls.Conn)
	return ok && tc.ConnectionState().NegotiatedProtocol == "h2"
}

// asLifetimeConn returns the lifetimeConn under c, if there is one: c
// itself, or the connection under TLS.
func asLifetimeConn(c net.Conn) *lifetimeConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	lc, _ := c.(*lifetimeConn)
	return lc
}

// roundTripLive sends r on the underlying transport; with a lifetime set,
// a GotConn trace adds "Connection: close" when r is given an expired
// connection. The header is r's own copy, made before the call: net/http
// copies a request with a body before it picks a connection, and the
// copies share the header map, not the Close field. GotConn runs before
// the request is written, in the goroutine that hands it to the writer.
func (t *Transport) roundTripLive(r *http.Request) (*http.Response, error) {
	if t.opts.connMaxLifetime <= 0 || r.Header.Get("Upgrade") != "" {
		return t.base.RoundTrip(r)
	}
	orig := r.Header["Connection"]
	hdr := r.Header.Clone()
	if hdr == nil {
		hdr = make(http.Header, 1)
	}
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		c := asLifetimeConn(info.Conn)
		switch {
		case c != nil && !time.Now().Before(c.expires) && !isHTTP2(info.Conn):
			hdr.Set("Connection", "close")
			if !c.retired.Swap(true) {
				t.stats.connsExpired.Add(1)
			}
		case orig != nil: // net/http moved on to a live connection
			hdr["Connection"] = orig
		default:
			delete(hdr, "Connection")
		}
	}}
	rr := r.WithContext(httptrace.WithClientTrace(r.Context(), trace))
	rr.Header = hdr
	return t.base.RoundTrip(rr)
}
