// This file holds the attempt runner that the retry loop (retry.go) calls
// for each attempt: the circuit breaker check (breaker.go), the attempt
// deadline, and hedged attempts. With none of them configured an attempt
// is a plain call of the underlying http.Transport.

package keepalive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Attempt deadline and hedging defaults: both are off unless asked for,
// because the right values are latency targets of the service called (a
// p95 or p99), which no library can know.
const (
	// DefaultAttemptTimeout is 0: no deadline per attempt beyond the read
	// timeout, which already bounds the wait for response headers.
	DefaultAttemptTimeout time.Duration = 0

	// DefaultHedgeDelay is 0: no hedged attempts.
	DefaultHedgeDelay time.Duration = 0

	// DefaultMaxHedges is the hedges per attempt that WithHedging(delay, 0)
	// means: one extra attempt.
	DefaultMaxHedges = 1

	// MaxHedges is the most hedges per attempt WithHedging accepts.
	MaxHedges = 10
)

// WithAttemptTimeout bounds each attempt's wait for response headers: an
// attempt without headers after d is abandoned (its connection closed) and
// retried if the request may be retried, or ends with an error that wraps
// ErrAttemptTimeout. Once headers arrive the deadline is over: the body of
// the response returned is never cut off by it (the read timeout governs
// the body). Default DefaultAttemptTimeout; zero means no attempt deadline;
// negative is an error. It costs a timer and a context per attempt, only
// when set.
func WithAttemptTimeout(d time.Duration) Option {
	return durationOption("WithAttemptTimeout", d, func(o *options) { o.attemptTimeout = d })
}

// WithHedging sends hedged attempts: if an attempt has no response after
// delay, another attempt of the same request is sent, up to maxHedges more,
// each delay after the previous one; the first response that is not worth
// a retry wins, and the other attempts are cancelled, their responses
// closed. The winner's body is never cut off by the cancellation of the
// others.
//
// Only requests that may be retried are hedged: idempotent methods or an
// Idempotency-Key header, with a replayable body, and WithMaxRetries above
// zero. Each hedge draws one retry from the retry budget (WithRetryBudget);
// when the budget refuses, no further hedge is sent. A hedge counts in
// Stats.Attempts and Stats.Hedges, not in Stats.Retries.
//
// Default DefaultHedgeDelay: off. Zero delay means no hedging; zero
// maxHedges means DefaultMaxHedges. A negative delay, or maxHedges outside
// 0..MaxHedges, is an error. Choose delay near the service's p95 latency:
// hedging then adds about 5% load and cuts the tail past it.
func WithHedging(delay time.Duration, maxHedges int) Option {
	return optionFunc(func(o *options) {
		o.hedgeDelay, o.maxHedges = delay, maxHedges
		if maxHedges == 0 {
			o.maxHedges = DefaultMaxHedges
		}
		o.check("WithHedging", delay >= 0, "delay must not be negative, got %v", delay)
		o.check("WithHedging", maxHedges >= 0 && maxHedges <= MaxHedges,
			"maxHedges must be between 0 and %d, got %d", MaxHedges, maxHedges)
	})
}

// ErrAttemptTimeout is matched, with errors.Is, by the error of an attempt
// abandoned by WithAttemptTimeout.
var ErrAttemptTimeout = errors.New("keepalive: attempt timeout")

// AttemptTimeoutError is the error of an attempt that had no response
// headers within the attempt timeout (WithAttemptTimeout). It is a
// net.Error whose Timeout() is true. It does not match context.Canceled or
// context.DeadlineExceeded: the caller's context did not end.
type AttemptTimeoutError struct {
	Limit time.Duration // the attempt timeout
}

func (e *AttemptTimeoutError) Error() string {
	return fmt.Sprintf("keepalive: attempt timeout: no response headers within %v", e.Limit)
}

// Is reports whether target is ErrAttemptTimeout.
func (e *AttemptTimeoutError) Is(target error) bool { return target == ErrAttemptTimeout }

// Timeout reports true: the error is a timeout, for net.Error.
func (e *AttemptTimeoutError) Timeout() bool { return true }

// Temporary reports true, for net.Error: another attempt may succeed.
func (e *AttemptTimeoutError) Temporary() bool { return true }

// Private implementation past this point.

var (
	errAttemptTimedOut = errors.New("keepalive: attempt deadline passed") // context cause
	errHedgeLost       = errors.New("keepalive: another hedged attempt won")
)

// attempt sends attempt number n of req: r, hedged when r may be sent
// more than once (its body is replayable and its method safe to repeat)
// and does not ask to switch protocols. hc are the counters of req's host.
func (t *Transport) attempt(req, r *http.Request, replayable bool, n int, hc *hostCounters) (*http.Response, error) {
	if t.opts.hedgeDelay > 0 && replayable && t.policy.mayResend(req, nil) && req.Header.Get("Upgrade") == "" {
		return t.hedged(req, r, n, hc)
	}
	return t.send(r, n, hc)
}

// send makes one call of the underlying transport, attempt number n of its
// request to the host whose counters are hc, through the circuit breaker
// and under the attempt deadline when they are configured.
func (t *Transport) send(r *http.Request, n int, hc *hostCounters) (*http.Response, error) {
	var done func(error)
	if t.breakers != nil {
		var err error
		if done, err = t.breakers.allow(r.URL.Host, time.Now()); err != nil {
			t.countHost(r.URL, circuitOpenCounter) // observer.go
			return nil, err
		}
	}
	gh := t.hosts.gateFor(hc)
	r = gh.enter(r)                      // dialgate.go
	resp, err := t.sendAttempt(r, n, hc) // observer.go: counts, hooks, then sendTimed
	if err != nil {
		gh.leave()
	} else {
		resp = t.wrapBody(resp, gh)
	}
	if done != nil {
		done(t.breakers.outcome(r.Context(), resp, err))
	}
	return resp, err
}

// sendTimed sends r under the attempt deadline. The deadline is a timer
// that cancels the attempt's context only until headers arrive; the
// context itself lives on until the body is closed or read to the end, as
// net/http needs it to read the body.
func (t *Transport) sendTimed(r *http.Request) (*http.Response, error) {
	d := t.opts.attemptTimeout
	if d <= 0 {
		return t.inner.RoundTrip(r) // roundTripLive (lifetime.go), maybe wrapped (WithAttemptTransport)
	}
	parent := r.Context()
	ctx, cancel := context.WithCancelCause(parent)
	timer := time.AfterFunc(d, func() { cancel(errAttemptTimedOut) })
	resp, err := t.inner.RoundTrip(r.WithContext(ctx))
	stopped := timer.Stop()
	if err == nil && stopped {
		resp.Body = withCancel(resp.Body, cancel)
		return resp, nil
	}
	if err == nil { // headers came as the timer fired: the body is cut off
		resp.Body.Close()
	}
	cancel(nil)
	if parent.Err() == nil && context.Cause(ctx) == errAttemptTimedOut {
		t.countHost(r.URL, attemptTimeoutCounter)
		// Not wrapped: the transport's error is context.Canceled, which
		// would read as the caller's cancellation and end the retries.
		return nil, &AttemptTimeoutError{Limit: d}
	}
	return nil, err
}

// withCancel returns body, calling cancel once it is done with. The body of
// a 101 Switching Protocols response stays an io.ReadWriteCloser.
func withCancel(body io.ReadCloser, cancel context.CancelCauseFunc) io.ReadCloser {
	if rw, ok := body.(io.ReadWriteCloser); ok {
		return &cancelRWBody{ReadWriteCloser: rw, cancel: cancel}
	}
	return &cancelBody{rc: body, cancel: cancel}
}

// cancelRWBody is a cancelBody for a connection handed to the caller.
type cancelRWBody struct {
	io.ReadWriteCloser
	cancel context.CancelCauseFunc
}

func (b *cancelRWBody) Close() error {
	err := b.ReadWriteCloser.Close()
	b.cancel(nil)
	return err
}

// cancelBody ends its attempt's context once the body is done with: read
// to EOF (net/http has then returned the connection to the pool) or
// closed.
type cancelBody struct {
	rc     io.ReadCloser
	cancel context.CancelCauseFunc
}

func (b *cancelBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.cancel(nil)
	}
	return n, err
}

func (b *cancelBody) Close() error {
	err := b.rc.Close()
	b.cancel(nil)
	return err
}

type hedgeResult struct {
	resp *http.Response
	err  error
	i    int // index into the attempts' cancel funcs
}

// hedged sends first, and hedges of it every hedgeDelay until an outcome
// not worth a retry arrives or every attempt has ended; it returns that
// outcome, or the last one when all were worth a retry. Every other
// attempt is cancelled and its response closed before it returns, so no
// goroutine outlives the call.
func (t *Transport) hedged(req, first *http.Request, n int, hc *hostCounters) (*http.Response, error) {
	ctx := req.Context()
	results := make(chan hedgeResult, 1+t.opts.maxHedges)
	cancels := make([]context.CancelCauseFunc, 0, 1+t.opts.maxHedges)
	launch := func(r *http.Request) {
		actx, cancel := context.WithCancelCause(ctx)
		i := len(cancels)
		cancels = append(cancels, cancel)
		go func() {
			resp, err := t.send(r.WithContext(actx), n, hc) // hedges share their attempt's number
			results <- hedgeResult{resp: resp, err: err, i: i}
		}()
	}
	launch(first)
	running := 1
	timer := time.NewTimer(t.opts.hedgeDelay)
	defer timer.Stop()

	var last *hedgeResult // the latest outcome worth a retry
	var win *hedgeResult
	for running > 0 && win == nil {
		select {
		case <-timer.C:
			if len(cancels) > t.opts.maxHedges || ctx.Err() != nil {
				continue
			}
			if !t.budget.withdraw(req.URL.Host, time.Now()) {
				t.observeBudgetRefused(req, n)
				continue
			}
			r, err := nextAttempt(req, first)
			if err != nil {
				continue
			}
			t.countHost(req.URL, hedgeCounter)
			launch(r)
			running++
			timer.Reset(t.opts.hedgeDelay)
		case res := <-results:
			running--
			if worth, _ := t.policy.worthRetry(ctx, req, res.resp, res.err); !worth {
				win = &res
			} else {
				if last != nil {
					t.discard(last, cancels)
				}
				last = &res
			}
		}
	}
	if win == nil {
		win = last
	}
	// Losers first: their connections are not worth the wait of a drain.
	for i, cancel := range cancels {
		if i != win.i {
			cancel(errHedgeLost)
		}
	}
	if last != nil && last != win {
		t.discard(last, cancels)
	}
	for ; running > 0; running-- {
		res := <-results
		t.discard(&res, cancels)
	}
	if win.err != nil {
		cancels[win.i](nil)
		return nil, win.err
	}
	win.resp.Body = withCancel(win.resp.Body, cancels[win.i])
	return win.resp, nil
}

// discard closes the response of a hedged attempt that lost and ends its
// context.
func (t *Transport) discard(res *hedgeResult, cancels []context.CancelCauseFunc) {
	if res.resp != nil {
		res.resp.Body.Close()
	}
	cancels[res.i](errHedgeLost)
}
