// This file holds Transport.RoundTrip: the retry loop. Each turn sends one
// attempt (attempt.go), or a hedged set of them (hedge.go), asks the pure
// policy (policy.go) whether and when to send the next, and does what only
// the loop can: the retry budget, the report of each outcome, the
// discarded response and the wait.

package keepalive

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// RoundTrip sends req, and sends it again while the outcome is worth a retry
// and the request may safely be repeated. It implements http.RoundTripper.
// A malformed request (no URL, no host, a port out of range) fails at once,
// without an attempt.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := checkRequest(req); err != nil {
		if req != nil && req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	h := t.hosts.forURL(req.URL) // the one lookup of the request
	h.count(requestsCounter)
	if t.policy.maxRetries == 0 {
		resp, err := t.attempt(req, 1, h, false, nil)
		if err != nil {
			return nil, err
		}
		return t.finish(req, resp), nil
	}
	return t.retryLoop(req, h)
}

// Private implementation past this point.

// retryLoop runs the attempts of req, whose host is h.
func (t *Transport) retryLoop(req *http.Request, h *hostState) (*http.Response, error) {
	ctx := req.Context()
	rp := newReplay(req, t.opts.bodyBuffer, &t.policy)
	defer rp.done()
	r := rp.first
	start := monotonic()   // of the current attempt
	var hedge, buffer bool // WithHedging, WithResponseBuffer: for requests that may be repeated
	if t.opts.hedgeDelay > 0 || t.opts.responseBuffer > 0 {
		repeatable := rp.replayable() && t.policy.mayRepeat(req)
		hedge = t.opts.hedgeDelay > 0 && repeatable && req.Header.Get("Upgrade") == ""
		buffer = t.opts.responseBuffer > 0 && repeatable
	}
	var bo backoff.BackOff // made on the first outcome that needs a decision: most requests never do
	for n := 1; ; n++ {
		var (
			resp *http.Response
			err  error
		)
		if hedge {
			resp, err = t.hedged(req, r, &rp, n, h)
		} else {
			resp, err = t.attempt(r, n, h, false, nil)
		}
		if buffer && err == nil {
			resp, err = bufferBody(resp, t.opts.responseBuffer)
		}
		if err == nil && t.policy.check == nil && !t.policy.statuses.has(resp.StatusCode) {
			// The success path: nothing more to decide. A success earns the
			// host retries, dated when its attempt was sent,
			// which saves a clock reading.
			t.budget.deposit(&h.budget, unixSec(start))
			return t.finish(req, resp), nil
		}

		if bo == nil {
			bo = t.policy.newBackoff()
		}
		mono, now := monotonic(), time.Now()
		d := t.policy.decide(attemptOutcome{
			ctx: ctx, req: req, resp: resp, err: err, attempt: n,
			replayable: rp.replayable(), took: time.Duration(mono - start),
			paused: h.pauseLeft(req, mono), // its end is the earliest next attempt
		}, now, bo)
		if d.verdict != verdictRetry {
			if d.verdict == verdictReturn && err == nil && ctx.Err() == nil {
				// A response the CheckRetry policy does not retry: a
				// success, as on the success path. (verdictReturn on a
				// live context is an outcome not worth a retry.)
				t.budget.deposit(&h.budget, unixSec(start))
			}
			return t.giveUp(req, h, resp, err, n, d)
		}
		if !t.budget.withdraw(&h.budget, unixSec(mono)) {
			h.count(budgetRefusalsCounter)
			t.opts.tel.budgetRefused(req, h.key, n)
			return t.giveUp(req, h, resp, err, n, decision{verdict: verdictGiveUp, reason: GiveUpBudget, wait: d.wait, policyErr: d.policyErr})
		}

		t.opts.tel.retry(req, h.key, resp, err, n, d.wait, d.retryAfter)
		status := 0
		if resp != nil {
			status = resp.StatusCode
			discard(resp) // drained off the caller's time
		}
		if serr := sleep(ctx, d.wait); serr != nil {
			t.reportGiveUp(req, h, resp, err, n, GiveUpCanceled, d.wait)
			return nil, t.retryError(req, n, status, err, serr)
		}
		start = monotonic()
		var berr error
		if r, berr = rp.next(); berr != nil {
			t.reportGiveUp(req, h, resp, berr, n, GiveUpBody, 0)
			return nil, t.retryError(req, n, status, err, berr)
		}
		h.count(retriesCounter)
	}
}

// finish returns the response of the last attempt to the caller.
func (t *Transport) finish(req *http.Request, resp *http.Response) *http.Response {
	resp.Request = req
	return resp
}

// giveUp ends a request with the outcome of its last attempt, as d says,
// and reports it when it was worth a retry. A response is returned intact,
// an error as it is after one attempt and in a RetryError after more; when
// the CheckRetry policy gave an error, that error is returned instead, in
// a RetryError, and the response is closed.
func (t *Transport) giveUp(req *http.Request, h *hostState, resp *http.Response, err error, attempts int, d decision) (*http.Response, error) {
	if d.verdict == verdictGiveUp {
		t.reportGiveUp(req, h, resp, err, attempts, d.reason, d.wait)
	}
	if d.policyErr != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
			resp.Body.Close()
		}
		return nil, t.retryError(req, attempts, status, err, d.policyErr)
	}
	if err == nil {
		return t.finish(req, resp), nil
	}
	if attempts == 1 {
		return nil, err
	}
	return nil, t.retryError(req, attempts, 0, nil, err)
}

// reportGiveUp counts and reports that the outcome (resp or err) of the
// last of attempts is returned to the caller although it was worth a
// retry; wait is the refused wait, if any.
func (t *Transport) reportGiveUp(req *http.Request, h *hostState, resp *http.Response, err error, attempts int, reason GiveUpReason, wait time.Duration) {
	if reason.counted() {
		h.count(gaveUpCounter)
	}
	t.opts.tel.giveUp(req, h.key, resp, err, attempts, reason, wait)
}

// retryError builds the error of a request that ended with err after
// attempts, the last of which answered status or failed with last.
func (t *Transport) retryError(req *http.Request, attempts, status int, last, err error) *RetryError {
	e := &RetryError{
		Method:   req.Method,
		URL:      redactURL(req.URL),
		Attempts: attempts,
		Status:   status,
		Err:      err,
		secret:   urlPassword(req.URL),
	}
	if last != nil && last != err {
		e.last = last
	}
	return e
}

// checkRequest rejects what no attempt could send: net/http would fail it
// too, but some failures (a bad port) would look like a failed dial and be
// retried.
func checkRequest(req *http.Request) error {
	switch {
	case req == nil:
		return &badRequestError{reason: "nil *http.Request"}
	case req.URL == nil:
		return &badRequestError{reason: "nil Request.URL"}
	case req.URL.Host == "":
		return &badRequestError{reason: "no Host in request URL"}
	}
	// URL.Port hides a port that is not digits; net/http would then dial
	// it and fail, which looks like a failed dial.
	host := req.URL.Host
	if i := strings.LastIndexByte(host, ':'); i > strings.LastIndexByte(host, ']') {
		if p := host[i+1:]; p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 || strings.Trim(p, "0123456789") != "" {
				return &badRequestError{reason: "invalid port " + strconv.Quote(p) + " in request URL"}
			}
		}
	}
	return nil
}
