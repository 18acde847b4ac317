// This file holds hedging (WithHedging): it decides only when to start
// another attempt pipeline (attempt.go) for the same request, and which
// outcome wins. Every attempt, hedged or not, goes through the same
// pipeline, so the breaker, the deadline, the counters and the body
// wrapper apply to each alike.

package keepalive

import (
	"context"
	"errors"
	"net/http"
	"time"
)

type hedgeResult struct {
	resp *http.Response
	err  error
	i    int // index into the attempts' cancel funcs
}

// hedged sends first, attempt number n of req to host h, and hedges of it
// (each with a fresh body from rp) every hedgeDelay until an outcome not worth a retry arrives or every
// attempt has ended; it returns that outcome, or the last one when all
// were worth a retry. While the host is paused, no hedge
// starts: the next may start hedgeDelay after the pause ends. A hedge
// refused by the circuit breaker, the host's pause or the retry budget is
// not an outcome: it ends the hedging and nothing else. Every
// other attempt is cancelled, and its response closed, before
// hedged returns, so no goroutine outlives the call. On a balanced host,
// every attempt avoids *addr, the address of the outcome before, and
// *addr gets the address of the outcome returned.
func (t *Transport) hedged(req, first *http.Request, rp *replay, n int, h *hostState, addr **backend) (*http.Response, error) {
	ctx := req.Context()
	results := make(chan hedgeResult, 1+t.opts.maxHedges)
	cancels := make([]context.CancelCauseFunc, 0, 1+t.opts.maxHedges)
	var backends []*backend // each attempt's address, written by its goroutine before its result
	if h.bal != nil {
		backends = make([]*backend, 1+t.opts.maxHedges)
	}
	launch := func(r *http.Request) {
		actx, cancel := context.WithCancelCause(ctx)
		i := len(cancels)
		cancels = append(cancels, cancel)
		var slot **backend
		if backends != nil {
			backends[i] = *addr // avoided, then overwritten with the attempt's own
			slot = &backends[i]
		}
		go func() {
			resp, err := t.attempt(r.WithContext(actx), n, h, i > 0, cancel, slot) // hedges share their attempt's number
			results <- hedgeResult{resp: resp, err: err, i: i}
		}()
	}
	launch(first)
	running := 1
	timer := time.NewTimer(t.opts.hedgeDelay)
	defer timer.Stop()
	stopHedging := false

	var last *hedgeResult // the latest outcome worth a retry
	var win *hedgeResult
	for running > 0 && win == nil {
		select {
		case <-timer.C:
			if stopHedging || len(cancels) > t.opts.maxHedges || ctx.Err() != nil {
				continue
			}
			if p := h.pauseLeft(req, monotonic()); p > 0 { // the attempts wait for it, so the hedge does not start yet
				timer.Reset(p + t.opts.hedgeDelay)
				continue
			}
			if !t.budget.withdraw(&h.budget, unixSec(monotonic())) {
				h.count(budgetRefusalsCounter)
				t.opts.tel.budgetRefused(req, h.key, n)
				stopHedging = true
				continue
			}
			r, err := rp.next()
			if err != nil {
				stopHedging = true
				continue
			}
			launch(r)
			running++
			timer.Reset(t.opts.hedgeDelay)
		case res := <-results:
			running--
			if res.i > 0 && (errors.Is(res.err, ErrCircuitOpen) || errors.Is(res.err, ErrHostPaused)) {
				stopHedging = true // the breaker or the host's pause refused the hedge: the others run on
				continue
			}
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
	if backends != nil {
		*addr = backends[win.i]
	}
	return win.resp, win.err // the winner's context ends with its body
}

// discard ends a hedged attempt that lost: its context first, then its
// response is closed unread (after the cancel there is nothing to drain).
func (t *Transport) discard(res *hedgeResult, cancels []context.CancelCauseFunc) {
	cancels[res.i](errHedgeLost)
	if res.resp != nil {
		res.resp.Body.Close()
	}
}
