// This file holds the connection lifetime of WithConnMaxLifetime: the
// dialer (transport.go) stamps each connection with its expiry, and a
// request that is given an expired connection asks for it to be closed
// after its response, with "Connection: close". That is how HTTP/1 ends a
// connection without losing a request: the server and the client close it
// once the response is read. A server that leaves it open anyway (it does
// not echo the header) gets no further request on it: the next request
// given the connection writes nothing on it and goes to a new one.

package keepalive

import (
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"
)

// connLifetimeJitter spreads connection lifetimes over +-10% of
// WithConnMaxLifetime, so that connections dialed together (at start,
// after an outage) do not all expire together and redial in a burst.
const connLifetimeJitter = 0.1

// Private implementation past this point.

// lifetimeConn is a connection stamped with its expiry.
type lifetimeConn struct {
	net.Conn
	expires time.Time
	retired atomic.Bool // a request asked for the connection to close
	refused atomic.Bool // a request was given it after that: its writes fail
}

// Write refuses the request of a connection that already carried its last
// one: a server that does not echo "Connection: close" leaves the
// connection open, and net/http pools it. Nothing is written, so net/http
// sends the request again on a new connection (its nothingWrittenError
// path), or, for a body it cannot rewind, the retry loop may (neverSent in
// policy.go).
func (c *lifetimeConn) Write(p []byte) (int, error) {
	if c.refused.Load() {
		return 0, errConnRetired // net/http closes the connection on a write error
	}
	return c.Conn.Write(p)
}

// withLifetime stamps a new connection when WithConnMaxLifetime is set.
func (t *Transport) withLifetime(c net.Conn) net.Conn {
	d := t.opts.connMaxLifetime
	if d <= 0 {
		return c
	}
	jitter := (rand.Float64()*2 - 1) * connLifetimeJitter
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

// roundTripBase sends r on the tuned http.Transport; with a lifetime set,
// a GotConn trace adds "Connection: close" when r is given an expired
// connection, and refuses to write r on a connection that was retired by
// an earlier request. The header is r's own copy, made before the call:
// net/http copies a request with a body before it picks a connection, and
// the copies share the header map, not the Close field. GotConn runs
// before the request is written, in the goroutine that hands it to the
// writer.
//
// net/http sends a refused request again on another connection when it
// can rewind the body (no body, or GetBody). A body it cannot rewind is
// still unread when the write is refused (net/http flushes the headers of
// such a body before reading it), so it is sent again from here, at most
// maxRefusals times.
func (t *Transport) roundTripBase(r *http.Request) (*http.Response, error) {
	if t.opts.connMaxLifetime <= 0 || r.Header.Get("Upgrade") != "" {
		return t.base.RoundTrip(r)
	}
	orig := r.Header["Connection"]
	hdr := r.Header.Clone()
	if hdr == nil {
		hdr = make(http.Header, 1)
	}
	var refused atomic.Bool // the last connection r was given refused it
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		c := asLifetimeConn(info.Conn)
		h1 := c != nil && !isHTTP2(info.Conn)
		refused.Store(false)
		switch {
		case h1 && c.retired.Load() && info.Reused:
			c.refused.Store(true)
			refused.Store(true)
		case h1 && !time.Now().Before(c.expires):
			hdr.Set("Connection", "close")
			if !c.retired.Swap(true) {
				t.count(t.hosts.forURL(r.URL), connExpiredCounter)
			}
		case orig != nil: // net/http moved on to a live connection
			hdr["Connection"] = orig
		default:
			delete(hdr, "Connection")
		}
	}}
	rr := r.WithContext(httptrace.WithClientTrace(r.Context(), trace))
	rr.Header = hdr
	if r.Body == nil || r.Body == http.NoBody || r.GetBody != nil {
		return t.base.RoundTrip(rr)
	}
	guard := &unreadGuard{rc: r.Body}
	for try := 0; ; try++ {
		rr.Body = guard.next()
		resp, err := t.base.RoundTrip(rr)
		if err == nil || !refused.Load() || try == maxRefusals || !guard.unread() {
			guard.finish()
			return resp, err
		}
	}
}

// maxRefusals bounds the resends of an unrewindable body whose
// connections were retired: each refusal closes one such connection.
const maxRefusals = 3

// unreadGuard lends an unrewindable request body to one write at a time.
// A write that was refused before it read a byte hands the body, still
// whole, to the next; only the last write's Close reaches the body.
type unreadGuard struct {
	rc      io.ReadCloser
	mu      sync.Mutex
	current *guardedBody
	final   bool // no write will follow the current one
	read    bool // a write has read from rc
	closed  bool // rc was closed
}

type guardedBody struct {
	g      *unreadGuard
	closed bool // net/http is done with this write's body
}

func (g *unreadGuard) next() io.ReadCloser {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.current = &guardedBody{g: g}
	return g.current
}

func (g *unreadGuard) unread() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.read
}

// finish makes the current write the last: its Close, or one that came
// already, closes the body.
func (g *unreadGuard) finish() {
	g.mu.Lock()
	g.final = true
	closeNow := g.current.closed && !g.closed
	g.closed = g.closed || closeNow
	g.mu.Unlock()
	if closeNow {
		g.rc.Close()
	}
}

func (b *guardedBody) Read(p []byte) (int, error) {
	g := b.g
	g.mu.Lock()
	if g.current != b || b.closed {
		g.mu.Unlock()
		return 0, errConnRetired
	}
	g.read = true
	g.mu.Unlock()
	return g.rc.Read(p)
}

func (b *guardedBody) Close() error {
	g := b.g
	g.mu.Lock()
	b.closed = true
	closeNow := g.final && g.current == b && !g.closed
	g.closed = g.closed || closeNow
	g.mu.Unlock()
	if closeNow {
		return g.rc.Close()
	}
	return nil
}
