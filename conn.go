// This file holds the connection wrapper: what the Transport attaches to
// every connection it dials. The wrapper does not guess where a request
// begins or which protocol it speaks: the request path tells it, through
// begin and done (from an httptrace.GotConn hook and the end of the
// response body), and the protocol comes from the connection's own TLS
// handshake. What it learns about its server it reports to the state of
// the host at its far end (hostState), never to the Transport.

package keepalive

import (
	"bytes"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

// The protocol a connection speaks, from its own ALPN.
const (
	protoUnknown int32 = iota
	protoHTTP1
	protoHTTP2
)

// The phases of a connection, in the low bits of conn.state; the high
// bits count the requests given it (begin), so that the end of one
// request's response cannot be taken for the end of the next one's.
const (
	phaseNew      uint64 = iota // no request yet
	phaseBusy                   // a request has it
	phaseIdle                   // its last response was read whole: it waits in the pool
	phaseHijacked               // it left HTTP with a 101 or a CONNECT: the caller's now
	phaseBits     = 2
	phaseMask     = 1<<phaseBits - 1
)

// connHost is the host at the far end of a connection, as the connection
// sees it: the idle age past which it must not carry another request, and
// what the connection tells it.
type connHost interface {
	idleLimit(now int64) int64                          // in ns; 0: none
	idleClosed(age time.Duration, err error, now int64) // its server closed it, idle for age
	retiredIdle()                                       // it was not reused: idle too long, or closed underneath
}

// connGate is the dial gate's record of a connection: told when the
// connection first carries a request, and when it closes.
type connGate interface {
	carried()
	closed()
}

// conn is a connection the Transport dialed, with all that it attaches to
// one: the dial gate's record, the write deadline, the lifetime, and the
// idle check of idle-timeout learning.
type conn struct {
	net.Conn
	addr string   // as dialed: a proxy's, behind one
	gate connGate // nil: ungated

	// host is the host at the far end, whose idle timeout judges the
	// connection (a hostHolder): the requested host, also through a
	// CONNECT tunnel; a plain HTTP proxy (proxyHost) when the connection
	// sends it absolute URLs. None: no idle check (the hosts past
	// HostStatsLimit share a state, and their timeouts differ).
	host      atomic.Value
	proxyHost func(addr string) connHost
	sniffed   atomic.Bool // the first write was looked at

	proto atomic.Int32  // protoUnknown until the first request given it
	state atomic.Uint64 // phase | requests<<phaseBits
	armed atomic.Bool   // the next write is the first of a request given the connection from the pool

	// Times, as monotonic() readings. readAt is the latest read that
	// returned data, prevRead the one before: the server's idle timer
	// started no later, so an idle close is learned from them. idleFrom
	// is the earliest the last data read can have arrived: the first read
	// after a write (a read was waiting for the response), or the end of a
	// read that emptied the socket before it (drainAt). A read that ran
	// late, the caller reading a body long after it arrived, moves
	// readAt, not idleFrom; the idle check counts from idleFrom.
	readAt, prevRead  atomic.Int64
	idleFrom, drainAt atomic.Int64
	awaitResp         atomic.Bool // a write since the last read: the next read is a response's first

	// The write deadline bounds every write by the read timeout: a write
	// that makes no progress for it (the server stopped reading an HTTP/1
	// upload, or any HTTP/2 frame) fails with a *TimeoutError (Op "write"), and
	// net/http closes the connection. net/http's header timeout starts
	// only once the request is written, so nothing else bounds a write. An
	// idle connection only reads, so the deadline never fails one. An
	// HTTP/2 stream that the server gives no flow-control window never
	// reaches the connection: the upload watch of attempt.go covers that.
	//
	// The deadline is moved only when less than d of it is left, to d+d/8
	// from now: a write gets between d and d+d/8, and a busy connection
	// pays a clock reading per write and a poller update per d/8, not per
	// write.
	d     time.Duration // 0: no write deadline
	until atomic.Int64  // the deadline set, as a monotonic() reading; 0: none

	expires time.Time   // zero: no lifetime
	retired atomic.Bool // a request asked for the connection to close
	refused atomic.Bool // a request's first write was refused: nothing of it was written
}

// connLifetimeJitter spreads connection lifetimes over +-10% of
// WithConnMaxLifetime, so that connections dialed together (at start,
// after an outage) do not all expire together and redial in a burst.
const connLifetimeJitter = 0.1

// hostHolder holds a conn's host in an atomic.Value, nil or not.
type hostHolder struct{ h connHost }

// far returns the host at the far end of c, nil if none.
func (c *conn) far() connHost {
	v, _ := c.host.Load().(hostHolder)
	return v.h
}

// newConn wraps nc, dialed at addr for a request to host (nil: no idle
// check); gate is the dial gate's record of it (nil: ungated).
func newConn(nc net.Conn, gate connGate, addr string, host connHost, proxyHost func(string) connHost, writeTimeout, lifetime time.Duration) *conn {
	c := &conn{Conn: nc, gate: gate, addr: addr, d: writeTimeout, proxyHost: proxyHost}
	c.host.Store(hostHolder{host})
	if lifetime > 0 {
		jitter := (rand.Float64()*2 - 1) * connLifetimeJitter
		c.expires = time.Now().Add(lifetime + time.Duration(jitter*float64(lifetime)))
	}
	return c
}

// learnProto sets the protocol of c from nc, the connection net/http
// handed a request (c itself, or TLS over it), once, and returns it; the
// first time, it also says how nc's TLS handshake went (handshake: there
// was one; resumed: it resumed a session).
func (c *conn) learnProto(nc net.Conn) (p int32, first, handshake, resumed bool) {
	if p := c.proto.Load(); p != protoUnknown {
		return p, false, false, false
	}
	p = protoHTTP1 // the Transport speaks no HTTP/2 in clear text
	if tc, ok := nc.(*tls.Conn); ok {
		cs := tc.ConnectionState()
		if cs.NegotiatedProtocol == http2NextProto {
			p = protoHTTP2
		}
		handshake, resumed = cs.HandshakeComplete, cs.DidResume
	}
	if !c.proto.CompareAndSwap(protoUnknown, p) {
		return c.proto.Load(), false, false, false
	}
	return p, true, handshake, resumed
}

// http2NextProto is HTTP/2's ALPN name.
const http2NextProto = "h2"

// begin tells an HTTP/1 connection that a request was given it, and
// returns the request's number on it, for done. A connection that comes
// back from the pool (reused) checks, at the request's first write, that
// its server is not closing it.
func (c *conn) begin(reused bool) uint64 {
	for {
		s := c.state.Load()
		if s&phaseMask == phaseHijacked {
			return 0
		}
		next := (s>>phaseBits+1)<<phaseBits | phaseBusy
		if c.state.CompareAndSwap(s, next) {
			if reused {
				c.armed.Store(true)
			}
			return next
		}
	}
}

// done tells c that the response of its request seq (from begin) was read
// whole: it is idle in the pool from now, and a close is its server's idle
// timeout.
func (c *conn) done(seq uint64) {
	c.state.CompareAndSwap(seq, seq&^phaseMask|phaseIdle)
}

// hijack tells c that it left HTTP: a 101 Switching Protocols, or a
// CONNECT, handed it to the caller. It is never refused or checked again,
// and its close is not learned.
func (c *conn) hijack() {
	c.armed.Store(false)
	for {
		s := c.state.Load()
		if c.state.CompareAndSwap(s, s&^phaseMask|phaseHijacked) {
			return
		}
	}
}

// Write refuses the first write of a request on a connection that must
// not carry it: one retired by its lifetime, or one idle for
// longer than its host's learned idle timeout allows, or found closed by
// its server. Nothing of the request is written, so net/http
// sends it again on another connection (its nothingWrittenError path), or
// roundTripBase or the retry loop does (neverSent). No other
// write is ever refused: the body of an Expect: 100-continue request, the
// rest of an upload, a hijacked connection's.
func (c *conn) Write(p []byte) (int, error) {
	if c.refused.Load() {
		return 0, errConnRetired // net/http closes the connection on a write error
	}
	if !c.sniffed.Load() {
		c.sniff(p)
	}
	now := monotonic()
	if c.armed.Load() && c.armed.CompareAndSwap(true, false) && c.idleTooLong(now) {
		return 0, errConnRetired
	}
	c.awaitResp.Store(true)
	if c.d <= 0 {
		return c.Conn.Write(p)
	}
	if c.until.Load()-now < int64(c.d) {
		until := now + int64(c.d+c.d/8)
		if err := c.SetWriteDeadline(clockStart.Add(time.Duration(until))); err != nil {
			return 0, err
		}
		c.until.Store(until)
	}
	n, err := c.Conn.Write(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = &TimeoutError{Op: opWrite, Limit: c.d}
	}
	return n, err
}

// sniff reads the first write of c, which says what is at its far end: a
// CONNECT opens a tunnel to the requested host, which stays c's host; a
// request line with an absolute URL goes to a plain HTTP proxy, whose idle
// timeout judges c from then on.
func (c *conn) sniff(p []byte) {
	if !c.sniffed.CompareAndSwap(false, true) || len(p) == 0 || p[0] == tlsHandshakeRecord {
		return
	}
	if bytes.HasPrefix(p, []byte("CONNECT ")) {
		return
	}
	if sp := bytes.IndexByte(p, ' '); sp > 0 && bytes.HasPrefix(p[sp+1:], []byte("http://")) && c.proxyHost != nil {
		c.host.Store(hostHolder{c.proxyHost(c.addr)})
	}
}

// tlsHandshakeRecord is the first byte a TLS client writes.
const tlsHandshakeRecord = 0x16

// idleTooLong reports whether the request about to be written at now on
// c, back from the pool, must go to another connection: c has been idle
// for longer than its host's learned idle timeout allows, or its server
// has closed it already. It retires c if so.
func (c *conn) idleTooLong(now int64) bool {
	h := c.far()
	if h == nil {
		return false
	}
	age := now - c.idleFrom.Load()
	limit := h.idleLimit(now)
	if limit != 0 {
		// The read that saw the response arrive may have run late, on a
		// busy machine: the server has counted the idle time for longer.
		limit = max(limit-int64(processLag.get(now)), 1)
	}
	if limit == 0 || age <= limit {
		// Within the learned timeout, or none learned: the server may
		// still have closed it, a moment ago. Over TLS the close comes
		// after an alert, which the check sees as data: retired too.
		if age <= int64(idlePeekAfter) {
			return false
		}
		closed, err := closedUnderneath(c.Conn)
		if !closed {
			return false
		}
		if err != nil { // an idle close, seen before net/http saw it
			h.idleClosed(time.Duration(now-c.readAt.Load()), err, now)
		}
	}
	if !c.refused.Swap(true) {
		h.retiredIdle()
	}
	return true
}

// Read notes when the connection read data, and learns its host's idle
// timeout when its server closes it while idle.
//
// A connection that refused a write (Write) has had nothing of its request
// written. net/http closes it on the refusal, and its read loop, waiting
// for the response, then fails with net.ErrClosed; that error can reach
// the request before the write's does, so it says the same: without it, a
// request whose body cannot be rewound would fail with "use of closed
// network connection" instead of being sent again.
func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && c.refused.Load() && errors.Is(err, net.ErrClosed) {
		err = errConnRetired
	}
	if c.far() == nil {
		return n, err
	}
	now := monotonic()
	if n > 0 {
		if c.awaitResp.Load() {
			c.awaitResp.Store(false)
			c.idleFrom.Store(now)
		} else if d := c.drainAt.Load(); d > c.idleFrom.Load() {
			c.idleFrom.Store(d)
		}
		if n < len(p) {
			c.drainAt.Store(now)
		}
		c.prevRead.Store(c.readAt.Swap(now))
	} else if err != nil {
		c.readFailed(err, now)
	}
	return n, err
}

// readFailed learns from a read that failed at now: a connection idle in
// the pool, its last response read whole, was closed by its server.
func (c *conn) readFailed(err error, now int64) {
	if c.state.Load()&phaseMask != phaseIdle || c.refused.Load() {
		return // a request was in flight or cut off, the caller took it over, or the Transport retired it
	}
	r := c.readAt.Load()
	if now-r < int64(idleAlertGap) {
		r = c.prevRead.Load() // a TLS alert came with the close
	}
	if r == 0 {
		return
	}
	if h := c.far(); h != nil {
		h.idleClosed(time.Duration(now-r), err, now)
	}
}

// carry tells the dial gate that c carries a request.
func (c *conn) carry() {
	if c.gate != nil {
		c.gate.carried()
	}
}

// Close tells the dial gate, once, that c is closed.
func (c *conn) Close() error {
	if c.gate != nil {
		c.gate.closed()
	}
	return c.Conn.Close()
}

// NetConn returns the underlying connection, as tls.Conn's NetConn does.
func (c *conn) NetConn() net.Conn { return c.Conn }

// CloseWrite half-closes the connection, for the bodies of 101 Switching
// Protocols responses (http.Response.Body is then an io.ReadWriteCloser).
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// asConn returns the conn under nc, if there is one: nc itself, or the
// connection under TLS, under the TLS of an https proxy too.
func asConn(nc net.Conn) *conn {
	for range 2 {
		tc, ok := nc.(*tls.Conn)
		if !ok {
			break
		}
		nc = tc.NetConn()
	}
	c, _ := nc.(*conn)
	return c
}

// roundTripperFunc makes a method value a RoundTripper.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
