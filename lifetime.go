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
	"net"
	"net/http"
	"net/http/httptrace"
	"time"
)

// connLifetimeJitter spreads connection lifetimes over +-10% of
// WithConnMaxLifetime, so that connections dialed together (at start,
// after an outage) do not all expire together and redial in a burst.
const connLifetimeJitter = 0.1

// Private implementation past this point.

// The dialer (transport.go) stamps each connection with its expiry, in
// its conn wrapper, which also refuses the writes of a retired one.

// isHTTP2 reports whether c speaks HTTP/2: TLS with "h2" chosen by ALPN
// (the Transport does not speak HTTP/2 in clear text).
func isHTTP2(c net.Conn) bool {
	tc, ok := c.(*tls.Conn)
	return ok && tc.ConnectionState().NegotiatedProtocol == "h2"
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
// net/http sends a request refused by a retired connection (here, or by
// idle-timeout learning in idle.go) again on another connection when it
// can rewind the body (no body, or GetBody). A body it cannot rewind is
// still unread when the write is refused (net/http flushes the headers of
// such a body before reading it), so it is sent again from here, at most
// maxRefusals times.
func (t *Transport) roundTripBase(r *http.Request) (*http.Response, error) {
	unrewindable := r.Body != nil && r.Body != http.NoBody && r.GetBody == nil
	if t.opts.connMaxLifetime <= 0 || r.Header.Get("Upgrade") != "" {
		if unrewindable {
			return t.resendRefused(r)
		}
		return t.base.RoundTrip(r)
	}
	orig := r.Header["Connection"]
	hdr := r.Header.Clone()
	if hdr == nil {
		hdr = make(http.Header, 1)
	}
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		c := asConn(info.Conn)
		h1 := c != nil && !c.expires.IsZero() && !isHTTP2(info.Conn)
		switch {
		case h1 && c.retired.Load() && info.Reused:
			c.refused.Store(true)
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
	if !unrewindable {
		return t.base.RoundTrip(rr)
	}
	return t.resendRefused(rr)
}

// resendRefused sends r, whose body net/http cannot rewind, and sends it
// again while a retired connection refused it before a byte of the body
// was read. A body recorder (body.go) that records nothing: each write
// gets a view of the body, and a view after a refusal that read no byte
// reads the body from its start; the body is closed once the last view
// is.
func (t *Transport) resendRefused(r *http.Request) (*http.Response, error) {
	rec := &bodyRecorder{src: r.Body}
	for try := 0; ; try++ {
		r.Body = rec.view()
		resp, err := t.base.RoundTrip(r)
		if err == nil || !errors.Is(err, errConnRetired) || try == maxRefusals || !rec.replayable() {
			rec.finish()
			return resp, err
		}
	}
}

// maxRefusals bounds the resends of an unrewindable body whose
// connections were retired: each refusal closes one such connection.
const maxRefusals = 3
