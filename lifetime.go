// This file holds the connection lifetime of WithConnMaxLifetime, and the
// base hop of every attempt. The dialer stamps each connection with its
// expiry (conn.go), and a request that is given an expired HTTP/1
// connection asks for it to be closed after its response, with
// "Connection: close". That is how HTTP/1 ends a connection without losing
// a request: the server and the client close it once the response is
// read. A server that leaves it open anyway (it does not echo the header)
// gets no further request on it: the next request given the connection
// writes nothing on it and goes to a new one.

package keepalive

import (
	"errors"
	"net/http"
	"time"
)

// lifetime gives r's attempt its own copy of r's header, where GotConn
// asks an expired connection to close (gotConnLifetime). net/http copies a
// request with a body before it picks a connection, and the copies share
// the header map, not the Close field, so the header is the one place to
// ask.
func (a *attemptConn) lifetime(r *http.Request) {
	a.connHdr = r.Header["Connection"]
	a.hdr = r.Header.Clone()
	if a.hdr == nil {
		a.hdr = make(http.Header, 1)
	}
}

// gotConnLifetime applies the lifetime to the HTTP/1 connection c given
// the request: an expired one gets "Connection: close"; one retired by an
// earlier request refuses the request's writes, so that net/http sends it
// on another. GotConn runs before the request is written, in the
// goroutine that hands it to the writer.
func (a *attemptConn) gotConnLifetime(c *conn, reused bool) {
	switch {
	case c.expires.IsZero():
	case c.retired.Load() && reused:
		c.refused.Store(true)
		return
	case !time.Now().Before(c.expires):
		a.hdr.Set("Connection", "close")
		if !c.retired.Swap(true) {
			a.host.count(connExpiredCounter)
		}
		return
	}
	if a.connHdr != nil { // net/http moved on to a live connection
		a.hdr["Connection"] = a.connHdr
	} else {
		delete(a.hdr, "Connection")
	}
}

// roundTripBase sends r on the tuned http.Transport. net/http sends a
// request refused by a retired connection (by its lifetime, or by
// idle-timeout learning in idle.go) again on another connection when it
// can rewind the body (no body, or GetBody). A body it cannot rewind is
// still unread when the write is refused (net/http flushes the headers of
// such a body before reading it), so it is sent again from here.
func (t *Transport) roundTripBase(r *http.Request) (*http.Response, error) {
	if r.Body != nil && r.Body != http.NoBody && r.GetBody == nil {
		return t.resendRefused(r)
	}
	return t.base.RoundTrip(r)
}

// resendRefused sends r, whose body net/http cannot rewind, and sends it
// again while a retired connection refused it before a byte of the body
// was read: each refusal closes a connection that came back from the
// pool, and a new connection is never refused, so it ends, however many
// stale connections the pool holds. A body recorder (body.go) that
// records nothing: each write gets a view of the body, and a view after a
// refusal that read no byte reads the body from its start; the body is
// closed once the last view is.
func (t *Transport) resendRefused(r *http.Request) (*http.Response, error) {
	rec := &bodyRecorder{src: r.Body}
	for {
		r.Body = rec.view()
		resp, err := t.base.RoundTrip(r)
		if err == nil || !errors.Is(err, errConnRetired) || !rec.replayable() || r.Context().Err() != nil {
			rec.finish()
			return resp, err
		}
	}
}
