// This file holds the dial gate: it keeps a burst of requests from opening
// more connections than it has requests.
//
// net/http dials a new connection for every request that finds no idle
// one, and lets the request take whichever connection comes first: one
// that another request just finished with, or its own dial. The dial is
// not cancelled when it loses; its connection joins the pool. While a pool
// warms up, connections handed to waiting requests race their dials, and
// 64 concurrent requests end up with 80 to 100 connections (measured:
// TestDefaultsReuseConnectionsAt64Concurrent, and an http.Transport with 64
// idle connections per host opened 83 in ANCHORS.md).
//
// The gate counts, per host, the requests using or waiting for a
// connection (busy) and the connections open or being dialed (conns). When
// a dial starts while conns already exceeds busy, some connection is idle
// or about to come free, so the dial waits (at most dialHoldMax) for its
// request to get one; if it does, the dial is dropped before it connects.
// Only requests that start while a dial to their host is in progress are
// watched (with an httptrace.GotConn hook); in steady state no dial is in
// progress and a request pays three atomic operations.
//
// HTTP/2 needs the opposite: one connection serves every request, yet
// net/http dials for every request waiting while the first connection of a
// host negotiates its protocol (and again after each GOAWAY), then closes
// all but one: 32 concurrent requests to a new HTTPS host made 32 TLS
// handshakes. So while the protocol of an https host is unknown or known
// to be HTTP/2, its dials go one at a time (serial): the others wait for
// the one in progress to finish its TLS handshake, and are dropped if it
// gave their request an HTTP/2 connection. Requests to such hosts are
// always watched, which costs HTTP/2 requests a few allocations (they make
// dozens anyway); HTTP/1 hosts, http:// hosts and WithoutHTTP2 keep the
// steady state above. Serial dials are kept apart per address as net/http
// dials it, so spellings of a host, each with a pool of its own in
// net/http, do not wait for each other; a request that upgrades (a
// WebSocket, which net/http sends over HTTP/1.1 alone) is never serial.
// A serial dial that fails (a host that does not answer its connect or
// its TLS handshake) fails the requests waiting for it too, so that N
// requests to such a host fail after one timeout, not after N in turn.

package keepalive

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"
)

// dialHoldMax bounds the wait of a dial whose request may be served by a
// connection coming free; dialHoldStep is how often the wait re-checks
// whether that is still likely.
const (
	dialHoldMax  = 10 * time.Millisecond
	dialHoldStep = time.Millisecond
)

// serialGrace is how long a serial dial waits, once the dial before it
// made an HTTP/2 connection, for its request to be given that connection
// (net/http hands a new HTTP/2 connection to every waiting request at
// once, but sets up each request's stream, and calls its GotConn, in a
// goroutine of its own: late, on a busy machine) before it dials itself.
// A request waits this long only when the connection cannot take it: its
// server's stream limit is reached.
const serialGrace = time.Second

// serialRetryHold is how long a dial waits, in place of serialGrace, for a
// request that a new HTTP/2 connection turned away: net/http sometimes
// turns a request away from a connection it has not finished setting up,
// and serves it on that connection a moment later; a connection at its
// stream limit keeps turning it away, and the dial goes ahead.
const serialRetryHold = 50 * time.Millisecond

// errDialNotNeeded ends a dial whose request took another connection. It
// reaches no caller: net/http drops the result of a dial whose request was
// already served.
var errDialNotNeeded = errors.New("keepalive: dial not needed: the request got another connection")

// gateHost is the gate's view of one host (host:port), kept in its state. Hosts past HostStatsLimit share a state, so they are dialed
// without the gate, as net/http does.
type gateHost struct {
	busy    atomic.Int64 // attempts from their start until their response body is done
	conns   atomic.Int64 // connections open, and dials in progress
	dialing atomic.Int64 // dials in progress
	proto   atomic.Int32 // protoUnknown, protoHTTP1 or protoHTTP2

	mu     sync.Mutex
	serial map[string]*serialDial // the serial dial in progress, by address as dialed
	madeH2 map[string]int64       // when a serial dial to the address last made an HTTP/2 connection (monotonic)
}

// serialDial is a host's serial dial in progress to one address, as
// net/http dials it (which keeps a host's spellings apart, each with a
// pool and an HTTP/2 connection of its own): done is closed when it ends,
// and err says how (nil: its connection finished its TLS handshake).
type serialDial struct {
	done chan struct{}
	err  error
}

// serialDialError is the error of a dial that waited for the host's serial
// dial, which failed: each request waiting for a host that does not
// answer fails after one connect or handshake timeout, not one each.
type serialDialError struct{ err error }

func (e *serialDialError) Error() string {
	return "keepalive: the dial this request waited for failed: " + e.err.Error()
}

func (e *serialDialError) Unwrap() error { return e.err }

// errSerialClosed ends a serial dial whose connection closed before its
// TLS handshake began (a proxy refused the tunnel, or the dial was
// discarded).
var errSerialClosed = errors.New("keepalive: connection closed before its TLS handshake")

// gateWatch is the gate's watch of one attempt: which host's gate counts
// it busy, and, when watched (note not nil), the connections its request
// gets, which a held dial of its waits for. The attempt embeds it.
type gateWatch struct {
	gate     *gateHost     // nil: ungated
	upgrade  bool          // the request may upgrade: it speaks HTTP/1 whatever its host does
	note     chan struct{} // a token sent each time the request gets a connection; nil: unwatched
	ended    <-chan struct{}
	serial   bool                      // its dials go one at a time
	gots     atomic.Int64              // connections the request got: net/http may retry it on another
	getConns atomic.Int64              // net/http's asks for a connection for the request (serial)
	dialed   atomic.Pointer[gatedConn] // the connection of the serial dial in progress for the request
}

// watched reports whether the gate watches w for the connection it gets.
func (w *gateWatch) watched() bool { return w != nil && w.note != nil }

// gotConn is the gate's part of GotConn: it tells a held dial that its
// request got a connection, which speaks p, and teaches a serial host its
// protocol.
func (w *gateWatch) gotConn(p int32) {
	w.gots.Add(1)
	select {
	case w.note <- struct{}{}:
	default:
	}
	if w.serial && p != protoUnknown && !w.upgrade {
		w.gate.proto.Store(p)
	}
}

// getConn counts net/http's asks for a connection for the request: a
// second means a connection it was handed turned it away (an HTTP/2
// connection at its stream limit, or gone), so its dial is needed.
func (w *gateWatch) getConn(string) { w.getConns.Add(1) }

// tlsStart marks the connection of the request's serial dial as in its
// TLS handshake: the handshake's outcome, not a close, ends the serial
// dial.
func (w *gateWatch) tlsStart() {
	if c := w.dialed.Load(); c != nil {
		c.handshaking.Store(true)
	}
}

// tlsDone ends the serial dial of the request (its TLS handshake done) and
// learns the host's protocol from it.
func (w *gateWatch) tlsDone(cs tls.ConnectionState, err error) {
	c := w.dialed.Swap(nil)
	if c == nil {
		return
	}
	if err == nil {
		p := protoHTTP1
		if cs.NegotiatedProtocol == http2NextProto {
			p = protoHTTP2
		}
		w.gate.proto.Store(p)
		if p == protoHTTP1 {
			c.carried() // an HTTP/1 connection is dialed for its request
		}
	}
	c.endSerial(err)
}

// gatedConn is the gate's record of a connection it let through: its
// count in the host's connections, and, for the host's serial dial, the
// end of that dial and the count of the dial in Stats once the connection
// carries a request. The connection tells it.
type gatedConn struct {
	gate        *gateHost
	addr        string
	counts      *counters // the host's: Dials, DiscardedDials
	closedOnce  atomic.Bool
	serial      atomic.Bool // its dial is the host's serial dial to addr, not yet ended
	handshaking atomic.Bool // its TLS handshake is running: its outcome ends the serial dial
	uncounted   atomic.Bool // counted in Stats.Dials once it carries a request
	madeH2      atomic.Bool // its serial dial made an HTTP/2 connection: the gate waits for it a moment
}

// carried counts a connection of a serial dial in Stats.Dials the first
// time it carries a request.
func (c *gatedConn) carried() {
	if c.uncounted.CompareAndSwap(true, false) {
		c.counts[dialsCounter].Add(1)
	}
}

// closed leaves the gate's count once; a connection of a serial dial that
// never carried a request is counted as discarded. An HTTP/2 connection
// that a serial dial made is no longer waited for.
func (c *gatedConn) closed() {
	if !c.closedOnce.CompareAndSwap(false, true) {
		return
	}
	c.gate.conns.Add(-1)
	if c.madeH2.Load() {
		c.gate.forgetH2(c.addr)
	}
	if !c.handshaking.Load() {
		c.endSerial(errSerialClosed)
	}
	if c.uncounted.CompareAndSwap(true, false) {
		c.counts[discardedDialsCounter].Add(1)
	}
}

// endSerial ends the host's serial dial that made c, once, with the
// outcome of c's TLS handshake.
func (c *gatedConn) endSerial(err error) {
	if c.serial.CompareAndSwap(true, false) {
		c.madeH2.Store(err == nil && c.gate.proto.Load() == protoHTTP2)
		c.gate.endSerial(c.addr, err)
	}
}

// forgetH2 forgets that a serial dial to addr made an HTTP/2 connection:
// it closed, and no request will be handed it.
func (h *gateHost) forgetH2(addr string) {
	h.mu.Lock()
	delete(h.madeH2, addr)
	h.mu.Unlock()
}

// enter counts the attempt a, of r, as busy on its host (h, nil if
// ungated), and watches it for its connection when a dial to its host is
// in progress, or when its host is an https host not known to speak
// HTTP/1: then its dials go one at a time (serial). A request that
// upgrades (a WebSocket) speaks HTTP/1 whatever its host does: it is
// never serial, and does not teach the host its protocol.
func (h *gateHost) enter(a *gateWatch, trace *httptrace.ClientTrace, r *http.Request) {
	if h == nil {
		return
	}
	a.gate = h
	h.busy.Add(1)
	p := h.proto.Load()
	if p == protoUnknown && r.URL.Scheme != "https" {
		h.proto.CompareAndSwap(protoUnknown, protoHTTP1) // no HTTP/2 in clear text
		p = protoHTTP1
	}
	if a.upgrade {
		p = protoHTTP1
	}
	if h.dialing.Load() == 0 && p == protoHTTP1 {
		return
	}
	a.note = make(chan struct{}, 1)
	a.ended = r.Context().Done()
	a.serial = p != protoHTTP1
	if a.serial {
		trace.GetConn = a.getConn
		trace.TLSHandshakeStart = a.tlsStart
		trace.TLSHandshakeDone = a.tlsDone
	}
}

// leave ends a busy attempt: when it failed, or when its response body is
// done with (respBody).
func (h *gateHost) leave() {
	if h != nil {
		h.busy.Add(-1)
	}
}

// dial runs the gate (h, nil if ungated) around connect, for the attempt
// watched by a (nil: unknown): it counts the dial and the connection it
// makes, and drops the dial if its request got another connection while
// it waited, at most holdMax. It returns the gate's record of the
// connection, which the connection tells when it carries a request and
// when it closes (nil if ungated); counts are the host's.
func (h *gateHost) dial(ctx context.Context, a *gateWatch, addr string, counts *counters, holdMax time.Duration, connect func() (net.Conn, error)) (net.Conn, *gatedConn, error) {
	if h == nil {
		c, err := connect()
		return c, nil, err
	}
	if !a.watched() {
		a = nil
	}
	// Serial dials are counted on the request's host (a.gate).
	var sg *gateHost
	if a != nil && a.serial && a.gate.proto.Load() != protoHTTP1 {
		sg = a.gate
		if err := sg.awaitSerial(ctx, a, addr); err != nil {
			return nil, nil, err
		}
		if sg.proto.Load() == protoHTTP1 { // the dial before found HTTP/1
			sg.endSerial(addr, nil)
			sg = nil
		}
	}
	serial := sg != nil
	// A request that had a connection before its dial started dials again
	// only when net/http retries it on a new one: that dial is needed.
	// Read before the dial counts, so that a connection that comes free
	// once the dial is counted is one the dial may wait for.
	needed := a == nil || a.gots.Load() > 0
	h.conns.Add(1)
	h.dialing.Add(1)
	defer h.dialing.Add(-1)
	if !serial && !needed && h.hold(ctx, a, holdMax) {
		h.conns.Add(-1)
		return nil, nil, errDialNotNeeded
	}
	c, err := connect()
	if err != nil {
		h.conns.Add(-1)
		if serial {
			failed := err
			if ctx.Err() != nil {
				failed = nil // cancelled, not failed: the next waiter dials
			}
			sg.endSerial(addr, failed)
		}
		return nil, nil, err
	}
	g := &gatedConn{gate: h, addr: addr, counts: counts} // its closed leaves the count
	if serial {
		g.serial.Store(true)    // its TLS handshake, or its close, ends the serial dial
		g.uncounted.Store(true) // counted once it carries a request (carried)
		a.dialed.Store(g)
	}
	return c, g, nil
}

// awaitSerial waits for the host's serial dial in progress, if any, to
// end, and makes the dial of a's request the one in progress. It returns
// errDialNotNeeded if the request got a connection meanwhile (or ended),
// a *serialDialError if the dial it waited for failed, and nil with the
// serial dial taken, or with the host found to speak HTTP/1 (then the
// caller ends the serial dial it took). A connection the request got
// before this dial does not count: net/http dials again for a request
// whose stream a GOAWAY refused.
func (h *gateHost) awaitSerial(ctx context.Context, a *gateWatch, addr string) error {
	base := a.gots.Load()
	for waited := false; ; {
		h.mu.Lock()
		wait := h.serial[addr]
		if wait == nil {
			// A serial dial made an HTTP/2 connection a moment ago:
			// net/http may not have put it in its pool yet, and then
			// hands it to this request too. Wait for that, once. If
			// net/http already asks again for the request, the new
			// connection turned it away: at its stream limit, or, for a
			// moment, before its pool knew it; wait a little only.
			at, made := h.madeH2[addr]
			if since := time.Duration(monotonic() - at); made && !waited && since < serialGrace && h.proto.Load() == protoHTTP2 {
				h.mu.Unlock()
				waited = true
				wait := serialGrace - since
				if a.getConns.Load() > 1 {
					wait = min(wait, serialRetryHold)
				}
				if err := a.await(ctx, base, nil, wait); err != nil {
					return err
				}
				continue
			}
			if h.serial == nil {
				h.serial = make(map[string]*serialDial)
			}
			h.serial[addr] = &serialDial{done: make(chan struct{})}
			h.mu.Unlock()
			return nil
		}
		h.mu.Unlock()
		if err := a.await(ctx, base, wait.done, 0); err != nil {
			return err
		}
		if wait.err != nil {
			return &serialDialError{err: wait.err}
		}
		if h.proto.Load() != protoHTTP2 {
			continue // the dial found HTTP/1: take the next turn
		}
		// The dial made an HTTP/2 connection: net/http is handing it to
		// every waiting request, this one included unless the
		// connection is full: then net/http asks again for a
		// connection for the request, and that ask dials.
		if err := a.await(ctx, base, nil, serialGrace); err != nil {
			return err
		}
	}
}

// await waits until done is closed (nil: never) or d has passed (0:
// never); it returns errDialNotNeeded if the request got a connection
// after its base-th, or ended, first.
func (a *gateWatch) await(ctx context.Context, base int64, done <-chan struct{}, d time.Duration) error {
	var expired <-chan time.Time
	if d > 0 {
		timer := time.NewTimer(d)
		defer timer.Stop()
		expired = timer.C
	}
	for a.gots.Load() <= base {
		select {
		case <-a.note: // check the count again
		case <-a.ended:
			return errDialNotNeeded
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
			return nil
		case <-expired:
			return nil
		}
	}
	return errDialNotNeeded
}

// endSerial ends the host's serial dial in progress to addr, with the
// outcome err.
func (h *gateHost) endSerial(addr string, err error) {
	h.mu.Lock()
	s := h.serial[addr]
	delete(h.serial, addr)
	if s != nil && err == nil && h.proto.Load() == protoHTTP2 {
		now := monotonic()
		if len(h.madeH2) >= 4 { // spellings of the host: keep the recent
			for k, at := range h.madeH2 {
				if now-at >= int64(serialGrace) {
					delete(h.madeH2, k)
				}
			}
		}
		if h.madeH2 == nil {
			h.madeH2 = make(map[string]int64)
		}
		h.madeH2[addr] = now
	}
	h.mu.Unlock()
	if s != nil {
		s.err = err
		close(s.done)
	}
}

// hold waits, up to max, while a connection is likely to come free for the
// watched attempt the dial is for (a); it reports whether the request got
// one.
func (h *gateHost) hold(ctx context.Context, a *gateWatch, max time.Duration) bool {
	if h.conns.Load() <= h.busy.Load() {
		return false
	}
	timer := time.NewTimer(dialHoldStep)
	defer timer.Stop()
	for waited := time.Duration(0); waited < max && h.conns.Load() > h.busy.Load(); waited += dialHoldStep {
		select {
		case <-a.note: // the request got a connection (it had none when the dial started)
			return true
		case <-ctx.Done():
			return false
		case <-timer.C:
			timer.Reset(dialHoldStep)
		}
	}
	return false
}
