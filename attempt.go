// This file holds the attempt pipeline: one attempt of a request, from the
// host's pause and the circuit breaker's admission to the wrapped
// response, in the order things happen, in one function (attempt). The
// retry loop (retry.go) and hedging (hedge.go) run it; what it calls is
// named at each step.

package keepalive

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"
)

// attempt sends r, attempt number n of its request, to the host h, and
// returns exactly one of a response and an error. hedge marks a hedged
// attempt (WithHedging); cancel, if not nil, is the cancel function of r's
// context, which hedging made so that it can end the attempt. last, if not
// nil, holds the backend of the request's attempt before (a retry avoids
// it) and gets this attempt's.
func (t *Transport) attempt(r *http.Request, n int, h *hostState, hedge bool, cancel context.CancelCauseFunc, last **backend) (*http.Response, error) {
	// 0. The host's pause, or that of the request's rate-limit key, if
	// one was asked for: wait for its end, or fail unsent when the
	// context's deadline comes first.
	if h.pausedUntil.Load() != 0 || h.keyPauses.latest.Load() != 0 {
		if until := h.pauseEnd(r, monotonic()); until != 0 {
			if err := h.awaitPause(r, until); err != nil {
				return nil, refuse(r, cancel, err)
			}
		}
	}

	// 1. The circuit breaker admits the attempt, or refuses it unsent.
	var report func(error)
	if h.breaker != nil {
		var err error
		if report, err = h.breaker.Allow(); err != nil {
			h.count(circuitOpenCounter)
			return nil, refuse(r, cancel, &CircuitOpenError{Host: h.key})
		}
	}
	outer := r.Context() // the caller's, or hedging's: what ends the attempt from outside

	// 2. Count it, and pick the address it goes to when its host is
	// balanced; its own context carries what the hooks, the attempt's
	// limits (the attempt deadline, the upload watch) and its connection
	// (a) need, and the dial gate and its backend count it busy until its
	// body is done.
	h.count(attemptsCounter)
	if hedge {
		h.count(hedgeCounter)
	}
	var b *backend
	var probe bool
	if h.bal != nil {
		var avoid *backend
		if last != nil {
			avoid = *last
		}
		if b, probe = h.bal.pick(r, t.opts.proxy, avoid); b != nil {
			b.begin()
		}
		if last != nil {
			*last = b
		}
	}
	slot := h.slot
	if b != nil {
		slot = b.slot
	}
	r, ctl, a := t.attemptContext(r, n, h, cancel, b, probe, slot)
	t.opts.tel.attemptStart(r, h.key, n)

	// 3. The round trip: through WithAttemptTransport's wraps, if any, to
	// the tuned http.Transport. net/http tells a which connection carries
	// the request (its GotConn), and a tells the connection.
	var start time.Time
	if t.opts.tel.observer.OnAttemptEnd != nil { // the event's Duration: no clock read otherwise
		start = time.Now()
	}
	var (
		resp *http.Response
		err  error
	)
	if t.inner != nil {
		resp, err = t.inner.RoundTrip(r)
	} else {
		resp, err = t.roundTripBase(r, a)
	}
	resp, err = t.settle(h, ctl, outer, resp, err)
	if a.backend != nil {
		a.backendOutcome(err, outer)
	}

	// 4. What the response says of its connection (it left HTTP, or is
	// done) and of its host (a pause, a Keep-Alive timeout).
	if err == nil {
		a.responded(resp)
		h.setPause(r, resp)
	}
	t.opts.tel.attemptEnd(r, h.key, n, resp, err, start, ConnReuse(a.reuse.Load()))

	// 5. The response gets the attempt's one body wrapper; a
	// failed attempt releases what it held now.
	if err != nil {
		a.leave()
		ctl.release()
	} else {
		resp = t.wrapBody(resp, a, ctl)
	}

	// 6. The breaker hears the outcome.
	if report != nil {
		outcome := breakerOutcome(&t.policy.statuses, endedOutside(outer), resp, err)
		if err != nil && outcome == errBreakerFailure && a.backend != nil && h.bal.healthyOthers(a.backend) {
			outcome = errBreakerExcluded // one address failed, not the host
		}
		report(outcome)
	}
	return resp, err
}

// backendOutcome tells the attempt's backend how it ended: a response, or
// a failure of its own (not the caller's: a cancellation says nothing of
// the address; a failed connect was told by the dialer).
func (a *attemptConn) backendOutcome(err error, outer context.Context) {
	b := a.backend
	var de *dialError
	switch {
	case err == nil:
		b.succeeded(a.probe)
	case endedOutside(outer):
		if a.probe {
			b.probing.Store(false) // the next request probes it
		}
	case errors.As(err, &de):
		if a.probe {
			b.eject(true)
		}
	default:
		b.failed(a.probe)
	}
}

// leave ends the attempt's hold on its host's dial gate, its backend and
// its pool.
func (a *attemptConn) leave() {
	a.gate.leave()
	if a.backend != nil {
		a.backend.end()
	}
	if a.pool != nil {
		a.pool.end()
	}
}

// refuse ends an attempt that is not sent, with err: a RoundTripper closes
// the body, sent or not, and hedging's context of the attempt is released.
func refuse(r *http.Request, cancel context.CancelCauseFunc, err error) error {
	if cancel != nil {
		cancel(nil)
	}
	if r.Body != nil {
		r.Body.Close()
	}
	return err
}

// attemptContext returns r with the context of its attempt, the
// attempt's control when something but the caller may end it (the attempt
// deadline of WithAttemptTimeout, the upload watch of a body when there is
// a read timeout, or hedging's cancel), and the attempt's view of its
// connection.
func (t *Transport) attemptContext(r *http.Request, n int, h *hostState, cancel context.CancelCauseFunc, b *backend, probe bool, slot *poolSlot) (*http.Request, *attemptCtl, *attemptConn) {
	o := &t.opts
	hasBody := r.Body != nil && r.Body != http.NoBody
	// HTTP/1 writes are bounded on the connection; an HTTP/2
	// stream can stall on flow control with its connection idle, so a
	// body that may go over HTTP/2 (https) is watched instead.
	watch := hasBody && o.readTimeout > 0 && r.URL.Scheme == "https"
	ctx := r.Context()
	var ctl *attemptCtl
	if cancel != nil || o.attemptTimeout > 0 || watch {
		ctl = &attemptCtl{cancel: cancel}
		if cancel == nil {
			ctx, ctl.cancel = context.WithCancelCause(ctx)
		}
		if d := o.attemptTimeout; d > 0 {
			ctl.deadline = d
			ctl.timer = time.AfterFunc(d, func() { ctl.end(attemptTimedOut, errAttemptTimedOut) })
		}
	}
	a := &attemptConn{Context: ctx, host: h, n: n, wraps: len(o.attemptWraps) > 0, backend: b, probe: probe}
	if slot != nil {
		a.slot, a.pool = slot, slot.cur.Load()
		a.pool.begin()
	}
	a.connect = r.Method == http.MethodConnect
	a.upgrade = a.connect || r.Header["Upgrade"] != nil
	a.trace.GotConn = a.gotConn
	if b != nil {
		b.gate.enter(&a.gateWatch, &a.trace, r)
	} else {
		h.gateHost().enter(&a.gateWatch, &a.trace, r)
	}
	if o.connMaxLifetime > 0 && !a.upgrade {
		a.lifetime(r)
	}
	var upload *uploadWatch
	if watch {
		// The upload watch lasts from the body's first Read until net/http
		// has written the whole request (its header timeout takes over
		// from there).
		upload = &uploadWatch{d: o.readTimeout, ctl: ctl}
		ctl.upload = upload
		a.trace.WroteRequest = upload.wroteRequest
	}
	var ctx2 context.Context = a
	if a.ownTrace = traceKey != nil && httptrace.ContextClientTrace(ctx) == nil; !a.ownTrace {
		ctx2 = httptrace.WithClientTrace(a, &a.trace) // composed with the caller's hooks
	}
	r = r.WithContext(ctx2)
	if a.hdr != nil {
		r.Header = a.hdr
	}
	if upload != nil {
		r.Body = upload.wrap(r.Body)
		if getBody := r.GetBody; getBody != nil { // net/http rewinds with it on a new connection
			r.GetBody = func() (io.ReadCloser, error) {
				b, err := getBody()
				if err != nil || b == nil || b == http.NoBody {
					return b, err
				}
				return upload.wrap(b), nil
			}
		}
	}
	return r, ctl, a
}

// connKey is the context key under which an attempt's context holds its
// attemptConn, for the dialer.
type connKey struct{}

// attemptConn is what an attempt knows of its connection, and tells it:
// net/http's GotConn says which connection carries the request, and
// whether it comes back from the pool; the end of the response body says
// the connection is idle in the pool again; a 101 or a CONNECT hands it
// to the caller. It is also the attempt's context (the request's, which
// the dialer finds it in), its dial gate's watch and its
// response body wrapper: one allocation for all of them.
type attemptConn struct {
	context.Context
	gateWatch // the dial gate's watch of the attempt
	trace     httptrace.ClientTrace
	host      *hostState
	n         int       // the attempt's number, for AttemptFromContext
	wraps     bool      // WithAttemptTransport: AttemptFromContext answers
	ownTrace  bool      // no trace of the caller's: the context answers for trace itself
	connect   bool      // a CONNECT
	backend   *backend  // the address of a balanced host it is sent to; nil: none
	probe     bool      // it probes its backend after an ejection
	slot      *poolSlot // the pool of its host or backend, if it has one of its own
	pool      *pool     // the generation of slot it is sent on; nil: the Transport's pool

	conn atomic.Pointer[conn] // the connection net/http gave the request last
	seq  atomic.Uint64        // the request's number on it (conn.begin)
	h1   atomic.Bool          // conn speaks HTTP/1

	// WithConnMaxLifetime: the request's own copy of its header, where a
	// connection past its lifetime asks for "Connection: close", and the
	// caller's value of that header.
	hdr     http.Header
	connHdr []string

	reuse atomic.Uint32 // Observer.TraceConns: a ConnReuse
	body  respBody      // the response body wrapper, when the response gets one
	ctl   *attemptCtl   // released with the body
}

// Value answers for the attempt's own keys: the dialer's,
// AttemptFromContext's, and httptrace's when the caller set no trace.
func (a *attemptConn) Value(key any) any {
	switch key {
	case connKey{}:
		return a
	case attemptKey{}:
		if a.wraps {
			return a.n
		}
	case traceKey:
		if a.ownTrace {
			return &a.trace
		}
	}
	return a.Context.Value(key)
}

// traceKey is the context key under which net/http/httptrace keeps a
// ClientTrace. It is not exported: it is learned once, by asking
// ContextClientTrace, and checked. An attempt whose caller set no trace
// answers it itself, which saves WithClientTrace's context per attempt;
// nil if the check fails, and then WithClientTrace is used.
var traceKey = probeTraceKey()

func probeTraceKey() any {
	var p traceKeyProbe
	httptrace.ContextClientTrace(&p)
	check := &traceKeyProbe{key: p.key, trace: new(httptrace.ClientTrace)}
	if p.key == nil || httptrace.ContextClientTrace(check) != check.trace {
		return nil
	}
	return p.key
}

// traceKeyProbe records the key it is asked for, and answers trace for it.
type traceKeyProbe struct {
	context.Context
	key   any
	trace *httptrace.ClientTrace
}

func (p *traceKeyProbe) Value(key any) any {
	if p.key == nil {
		p.key = key
	}
	if key == p.key && p.trace != nil {
		return p.trace
	}
	return nil
}

// gotConn is net/http's GotConn: the request was given info.Conn. It runs
// before the request is written, and again for each connection net/http
// retries the request on.
func (a *attemptConn) gotConn(info httptrace.GotConnInfo) {
	if info.Reused {
		a.reuse.Store(uint32(ConnReused))
	} else {
		a.reuse.Store(uint32(ConnNew))
	}
	c := asConn(info.Conn)
	p := protoUnknown
	if c != nil {
		var first, handshake, resumed bool
		if p, first, handshake, resumed = c.learnProto(info.Conn); first && handshake {
			a.host.count(tlsHandshakesCounter)
			if resumed {
				a.host.count(tlsResumedCounter)
			}
		}
	}
	if a.watched() {
		a.gateWatch.gotConn(p)
		if a.serial && c != nil {
			c.carry()
		}
	}
	if c == nil || p != protoHTTP1 {
		if c != nil && a.slot != nil && p == protoHTTP2 {
			a.gotConnHTTP2Lifetime(c)
		}
		return
	}
	a.conn.Store(c)
	a.h1.Store(true)
	if a.hdr != nil {
		a.gotConnLifetime(c, info.Reused)
	}
	a.seq.Store(c.begin(info.Reused))
}

// responded tells the connection what the response means for it: a 101
// (or a CONNECT's 2xx) hands it to the caller; a response without a body
// is read whole already.
func (a *attemptConn) responded(resp *http.Response) {
	c := a.conn.Load()
	if c == nil {
		return
	}
	if a.upgrade && (resp.StatusCode == http.StatusSwitchingProtocols || a.connect && resp.StatusCode/100 == 2) {
		c.hijack()
		return
	}
	if h, ok := c.far().(*hostState); ok {
		h.keepAliveAnnounced(resp) // what the server at the far end announced
	}
	if resp.Body == nil || resp.Body == http.NoBody {
		a.done()
	}
}

// bodyDone releases what the attempt held until its response body ended
// (the dial gate's count, its context), and tells the connection if the
// body was read whole.
func (a *attemptConn) bodyDone(eof bool) {
	if eof {
		a.done()
	}
	a.leave()
	a.ctl.release()
}

// done tells the connection that the response was read whole.
func (a *attemptConn) done() {
	if c := a.conn.Load(); c != nil {
		c.done(a.seq.Load())
	}
}

// settle makes the round trip's result the attempt's outcome: exactly one
// of a response and an error. An attempt the Transport ended (ctl) gets
// its timeout error and loses a response that came too late; a
// RoundTripper that broke its contract gets an error of its own.
func (t *Transport) settle(h *hostState, ctl *attemptCtl, outer context.Context, resp *http.Response, err error) (*http.Response, error) {
	if err != nil && resp != nil {
		resp.Body.Close()
		resp = nil
	}
	if err == nil && resp == nil {
		err = errNilNil
	}
	if err != nil && isWriteTimeout(err) { // a connection's write deadline
		h.count(writeTimeoutCounter)
	}
	if ctl == nil {
		return resp, err
	}
	ctl.stopTimers()
	if ctl.state.CompareAndSwap(attemptRunning, attemptSettled) {
		return resp, err
	}
	if resp != nil { // too late: its context is cancelled, its body cut off
		resp.Body.Close()
		resp = nil
	}
	if endedOutside(outer) { // the caller, or hedging, ended it too: theirs is the reason
		if err == nil {
			err = outer.Err()
		}
		return nil, err
	}
	switch ctl.state.Load() {
	case attemptTimedOut:
		h.count(attemptTimeoutCounter)
		// Not wrapped: the transport's error is context.Canceled, which
		// would read as the caller's cancellation and end the retries.
		return nil, &TimeoutError{Op: opAttempt, Limit: ctl.deadline}
	default: // attemptUploadStalled
		h.count(writeTimeoutCounter)
		return nil, &TimeoutError{Op: opWrite, Limit: ctl.upload.d}
	}
}

// endedOutside reports whether the context an attempt was given has ended
// for a reason of its caller's or of hedging's: not by the attempt's own
// limits, which cancel that very context when hedging made it.
func endedOutside(ctx context.Context) bool {
	if ctx.Err() == nil {
		return false
	}
	cause := context.Cause(ctx)
	return cause != errAttemptTimedOut && cause != errUploadStalled
}

// isWriteTimeout is apart so that the success path does not pay for
// errors.As's target escaping to the heap.
func isWriteTimeout(err error) bool {
	var te *TimeoutError
	return errors.As(err, &te) && te.Op == opWrite
}

// The connection lifetime of WithConnMaxLifetime: the dialer stamps each
// connection with its expiry, and a request that is given an
// expired HTTP/1 connection asks for it to be closed after its response,
// with "Connection: close". That is how HTTP/1 ends a connection without
// losing a request: the server and the client close it once the response
// is read. A server that leaves it open anyway (it does not echo the
// header) gets no further request on it: the next request given the
// connection writes nothing on it and goes to a new one.
//
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

// gotConnHTTP2Lifetime applies the lifetime to the HTTP/2 connection c
// given the request: once c is past it, its pool's generation is renewed.
// The request keeps c, as do the others in flight on it; new attempts go
// to the new generation, which dials, and the old one closes once its
// last attempt ended (pool.go). net/http offers no way to stop one
// HTTP/2 connection from taking new streams.
func (a *attemptConn) gotConnHTTP2Lifetime(c *conn) {
	if c.expires.IsZero() || time.Now().Before(c.expires) || c.retired.Swap(true) {
		return
	}
	a.host.count(connExpiredCounter)
	a.slot.renew(a.pool)
}

// roundTripBase sends r on the tuned http.Transport. net/http sends a
// request refused by a retired connection (by its lifetime, or by
// idle-timeout learning in idle.go) again on another connection when it
// can rewind the body (no body, or GetBody). A body it cannot rewind is
// still unread when the write is refused (net/http flushes the headers of
// such a body before reading it), so it is sent again from here.
//
// An attempt (a) with a pool of its own (balancing, WithConnMaxLifetime)
// is sent on it. A connect to a balanced address that fails sent nothing:
// the request goes to another address at once, as net/http's dialer tries
// a name's next address.
func (t *Transport) roundTripBase(r *http.Request, a *attemptConn) (*http.Response, error) {
	if a != nil && a.pool == nil {
		a = nil // the Transport's pool
	}
	if r.Body != nil && r.Body != http.NoBody && r.GetBody == nil {
		return t.resendRefused(r, a)
	}
	for {
		resp, err := t.pool(a).RoundTrip(r)
		if err == nil || a == nil || !a.failover(r, err) {
			return resp, err
		}
		if r.GetBody != nil {
			body, gerr := r.GetBody()
			if gerr != nil {
				return nil, err
			}
			r2 := *r
			r2.Body = body
			r = &r2
		}
	}
}

// roundTripInner is roundTripBase under WithAttemptTransport's wraps, which
// pass the attempt's request on, its context derived from the attempt's.
func (t *Transport) roundTripInner(r *http.Request) (*http.Response, error) {
	a, ok := r.Context().(*attemptConn)
	if !ok {
		a, _ = r.Context().Value(connKey{}).(*attemptConn)
	}
	return t.roundTripBase(r, a)
}

// pool returns the pool of the attempt a: its backend's, or the
// Transport's own (a nil).
func (t *Transport) pool(a *attemptConn) *http.Transport {
	if a != nil && a.pool != nil {
		return a.pool.rt
	}
	return t.base
}

// failover moves the balanced attempt a, whose connect failed with err,
// to another address, and reports whether it did: nothing of r was sent.
// With no other address usable, the attempt goes to the Transport's own
// pool, whose dialer tries every address of the name (an address family
// the machine cannot reach, say), once. A probe that failed ejects its
// backend again.
func (a *attemptConn) failover(r *http.Request, err error) bool {
	var de *dialError
	old := a.backend
	if old == nil || !errors.As(err, &de) || r.Context().Err() != nil {
		return false
	}
	if a.probe {
		old.eject(true)
	}
	next, probe := old.bal.pick(r, nil, old)
	if next == old {
		next, probe = nil, false
	}
	a.pool.end()
	a.slot, a.pool = nil, nil
	if next != nil {
		next.begin()
		a.slot, a.pool = next.slot, next.slot.cur.Load()
		a.pool.begin()
	}
	old.end()
	a.backend, a.probe = next, probe
	return true
}

// resendRefused sends r, whose body net/http cannot rewind, and sends it
// again while a retired connection refused it before a byte of the body
// was read: each refusal closes a connection that came back from the
// pool, and a new connection is never refused, so it ends, however many
// stale connections the pool holds. The body's first refusedReplayMax
// bytes are recorded as they stream: each write gets a view of the body,
// which replays them and goes on from the source, and net/http gets them
// as GetBody, so that an HTTP/2 stream its server refused unprocessed (a
// GOAWAY that crossed the request, or REFUSED_STREAM) is sent again too.
// The body is closed once the last view is.
func (t *Transport) resendRefused(r *http.Request, a *attemptConn) (*http.Response, error) {
	rec := &bodyRecorder{src: r.Body, limit: refusedReplayMax}
	r.GetBody = func() (io.ReadCloser, error) {
		if !rec.replayable() {
			return nil, errReplayTooLong
		}
		return rec.view(), nil
	}
	for {
		r.Body = rec.view()
		resp, err := t.pool(a).RoundTrip(r)
		if err == nil || !rec.replayable() || r.Context().Err() != nil ||
			!errors.Is(err, errConnRetired) && (a == nil || !a.failover(r, err)) {
			rec.finish()
			return resp, err
		}
	}
}

// refusedReplayMax is how much of a body that cannot be rewound is kept
// while it streams, to send it again where its server refused it
// unprocessed: a small request whole, never a large upload.
const refusedReplayMax = 64 << 10

// errReplayTooLong is GetBody's error for a body that cannot be rewound
// and was read past refusedReplayMax.
var errReplayTooLong = errors.New("keepalive: the request was refused unprocessed after more than 64 KiB of its body, which cannot be rewound, was read: it was not sent again")

// wrapBody gives resp the one wrapper of its attempt, which owns all that
// ends with the body: the read timeout, the dial gate's
// release and the connection's return to idle (a), and the attempt's
// context (ctl, nil if it has none). A body that is already over,
// http.NoBody or none, is left as it is and its attempt released at once;
// a 101's body stays an io.ReadWriteCloser.
func (t *Transport) wrapBody(resp *http.Response, a *attemptConn, ctl *attemptCtl) *http.Response {
	switch {
	case resp.Body == nil || resp.Body == http.NoBody:
		a.leave()
		ctl.release()
		return resp
	case resp.StatusCode == http.StatusSwitchingProtocols:
		a.leave() // the connection is no longer the pool's
		if ctl != nil {
			if rw, ok := resp.Body.(io.ReadWriteCloser); ok {
				resp.Body = &switchedBody{ReadWriteCloser: rw, ctl: ctl}
				return resp
			}
		}
		ctl.release()
		return resp
	case t.reads == nil && a.gate == nil && ctl == nil && a.backend == nil:
		return resp // a host past HostStatsLimit: nothing ends with its body
	}
	a.ctl = ctl
	b := &a.body
	b.rc, b.watch, b.owner, b.watchNode.body = resp.Body, t.reads, a, resp.Body
	if b.watch != nil {
		b.shard = b.watch.shard()
	}
	resp.Body = b
	return resp
}
