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
// context, which hedging made so that it can end the attempt.
func (t *Transport) attempt(r *http.Request, n int, h *hostState, hedge bool, cancel context.CancelCauseFunc) (*http.Response, error) {
	// 0. The host's pause, if it asked for one: wait for its end, or fail
	// unsent when the context's deadline comes first (pause.go).
	if until := h.pausedUntil.Load(); until != 0 {
		if err := t.awaitPause(r, h, until); err != nil {
			return nil, refuse(r, cancel, err)
		}
	}

	// 1. The circuit breaker admits the attempt, or refuses it unsent.
	var report func(error)
	if h.breaker != nil {
		var err error
		if report, err = h.breaker.Allow(); err != nil {
			t.count(h, circuitOpenCounter)
			return nil, refuse(r, cancel, &CircuitOpenError{Host: h.key})
		}
	}
	outer := r.Context() // the caller's, or hedging's: what ends the attempt from outside

	// 2. Count it; its own context carries what the hooks and the
	// attempt's limits need (the attempt deadline, the upload watch).
	t.count(h, attemptsCounter)
	if hedge {
		t.count(h, hedgeCounter)
	}
	r, ctl, trace := t.attemptContext(r, n, cancel)
	t.observeAttemptStart(r, h, n) // events.go

	// 3. The dial gate counts it busy until its body is done (dialgate.go).
	gate := h.gateHost()
	r = gate.enter(r)

	// 4. The round trip: through WithAttemptTransport's wraps, if any, to
	// the lifetime rule (lifetime.go) and the tuned http.Transport.
	var start time.Time
	if t.opts.observer.OnAttemptEnd != nil { // the event's Duration: no clock read otherwise
		start = time.Now()
	}
	var (
		resp *http.Response
		err  error
	)
	if t.inner != nil {
		resp, err = t.inner.RoundTrip(r)
	} else {
		resp, err = t.roundTripBase(r)
	}
	resp, err = t.settle(h, ctl, outer, resp, err)
	if err == nil { // what the response says of its host
		t.setPause(h, resp)         // pause.go: did the host ask for quiet?
		t.observeKeepAlive(h, resp) // idle.go: a Keep-Alive: timeout=N
	}
	t.observeAttemptEnd(r, h, n, resp, err, start, trace) // events.go

	// 5. The response gets the attempt's one body wrapper (body.go); a
	// failed attempt releases what it held now.
	if err != nil {
		gate.leave()
		ctl.release()
	} else {
		resp = t.wrapBody(resp, gate, ctl)
	}

	// 6. The breaker hears the outcome (breaker.go).
	if report != nil {
		report(breakerOutcome(&t.policy.statuses, endedOutside(outer), resp, err))
	}
	return resp, err
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

// attemptContext returns r with the context of its attempt, and the
// attempt's control when something but the caller may end it: the attempt
// deadline (WithAttemptTimeout), the upload watch (a body and a read
// timeout), or hedging (cancel). With none of them and no hooks that need
// the context, r is returned as it is and nothing is allocated.
func (t *Transport) attemptContext(r *http.Request, n int, cancel context.CancelCauseFunc) (*http.Request, *attemptCtl, *connTrace) {
	o := &t.opts
	hasBody := r.Body != nil && r.Body != http.NoBody
	// HTTP/1 writes are bounded on the connection (writeDeadlineConn); an
	// HTTP/2 stream can stall on flow control with its connection idle, so
	// a body that may go over HTTP/2 (https) is watched instead.
	watch := hasBody && o.readTimeout > 0 && r.URL.Scheme == "https"
	if cancel == nil && o.attemptTimeout <= 0 && !watch && !t.contextHooks {
		return r, nil, nil
	}
	ctx := r.Context()
	if len(o.attemptWraps) > 0 {
		ctx = context.WithValue(ctx, attemptKey{}, n)
	}
	// One trace for the hooks of the attempt: Observer.TraceConns's, and
	// the upload watch's, which lasts from the body's first Read until
	// net/http has written the whole request (its header timeout takes
	// over from there).
	var (
		trace  *connTrace
		upload *uploadWatch
		ct     *httptrace.ClientTrace
	)
	if o.observer.TraceConns {
		trace = new(connTrace)
		ct = &httptrace.ClientTrace{GotConn: trace.gotConn}
	}
	if watch {
		upload = &uploadWatch{d: o.readTimeout}
		if ct == nil {
			ct = new(httptrace.ClientTrace)
		}
		ct.WroteRequest = upload.wroteRequest
	}
	if ct != nil {
		ctx = httptrace.WithClientTrace(ctx, ct)
	}
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
	r = r.WithContext(ctx)
	if watch {
		w := upload
		w.ctl, ctl.upload = ctl, w
		r.Body = w.wrap(r.Body)
		if getBody := r.GetBody; getBody != nil { // net/http rewinds with it on a new connection
			r.GetBody = func() (io.ReadCloser, error) {
				b, err := getBody()
				if err != nil || b == nil || b == http.NoBody {
					return b, err
				}
				return w.wrap(b), nil
			}
		}
	}
	return r, ctl, trace
}

// attemptCtl is the control of one attempt that something but its caller
// may end. Whoever moves state from attemptRunning first decides the
// outcome: the round trip returning (settle), or the attempt deadline or
// the upload watch ending it. So headers that arrive as the deadline
// passes are either returned intact or discarded for a timeout error,
// never both and never neither.
type attemptCtl struct {
	cancel   context.CancelCauseFunc
	state    atomic.Int32
	deadline time.Duration // WithAttemptTimeout; 0: none
	timer    *time.Timer   // of the deadline
	upload   *uploadWatch  // nil: no body, or no read timeout
}

const (
	attemptRunning       int32 = iota
	attemptSettled             // the round trip returned first: its outcome stands
	attemptTimedOut            // the attempt deadline passed first
	attemptUploadStalled       // the upload watch saw the body not taken for the read timeout
)

// end ends a running attempt with state, unless it has settled.
func (c *attemptCtl) end(state int32, cause error) {
	if c.state.CompareAndSwap(attemptRunning, state) {
		c.cancel(cause)
	}
}

// release ends the attempt's context once nothing needs it: the attempt
// failed, or its response body is done with. c may be nil.
func (c *attemptCtl) release() {
	if c != nil {
		c.cancel(nil)
	}
}

func (c *attemptCtl) stopTimers() {
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.upload != nil {
		c.upload.stop()
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
	if err != nil && isWriteTimeout(err) { // a connection's write deadline (transport.go)
		t.count(h, writeTimeoutCounter)
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
		t.count(h, attemptTimeoutCounter)
		// Not wrapped: the transport's error is context.Canceled, which
		// would read as the caller's cancellation and end the retries.
		return nil, &AttemptTimeoutError{Limit: ctl.deadline}
	default: // attemptUploadStalled
		t.count(h, writeTimeoutCounter)
		return nil, &WriteTimeoutError{Limit: ctl.upload.d}
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
	var wte *WriteTimeoutError
	return errors.As(err, &wte)
}
