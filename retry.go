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
		resp, err := t.attempt(req, 1, h, false, nil, nil)
		return t.end(req, h, ending{resp: resp, err: err, attempts: 1})
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
	var last *backend      // the address of the attempt before, on a balanced host: a retry avoids it
	var bo backoff.BackOff // made on the first outcome that needs a decision: most requests never do
	for n := 1; ; n++ {
		var (
			resp *http.Response
			err  error
		)
		if hedge {
			resp, err = t.hedged(req, r, &rp, n, h, &last)
		} else {
			resp, err = t.attempt(r, n, h, false, nil, &last)
		}
		if buffer && err == nil {
			resp, err = bufferBody(resp, t.opts.responseBuffer)
		}
		if err == nil && t.policy.check == nil && !t.policy.statuses.has(resp.StatusCode) {
			// The success path: nothing more to decide.
			return t.end(req, h, ending{resp: resp, attempts: n, success: true, sent: start})
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
			// verdictReturn on a live context is an outcome not worth a
			// retry: a response is a success then, as on the success path.
			success := d.verdict == verdictReturn && err == nil && ctx.Err() == nil
			return t.end(req, h, ending{resp: resp, err: err, attempts: n, d: d, success: success, sent: start})
		}
		if !t.budget.withdraw(&h.budget, unixSec(mono)) {
			h.count(budgetRefusalsCounter)
			t.opts.tel.budgetRefused(req, h.key, n)
			d = decision{verdict: verdictGiveUp, reason: GiveUpBudget, wait: d.wait, policyErr: d.policyErr}
			return t.end(req, h, ending{resp: resp, err: err, attempts: n, d: d})
		}

		t.opts.tel.retry(req, h.key, resp, err, n, d.wait, d.retryAfter)
		if resp != nil {
			discard(resp) // drained off the caller's time
		}
		if serr := sleep(ctx, d.wait); serr != nil {
			d = decision{verdict: verdictGiveUp, reason: GiveUpCanceled, wait: d.wait}
			return t.end(req, h, ending{resp: resp, err: err, attempts: n, d: d, cause: serr})
		}
		start = monotonic()
		var berr error
		if r, berr = rp.next(); berr != nil {
			d = decision{verdict: verdictGiveUp, reason: GiveUpBody}
			return t.end(req, h, ending{resp: resp, err: err, attempts: n, d: d, cause: berr})
		}
		h.count(retriesCounter)
	}
}

// ending is how a request ends: the outcome of its last attempt, and what
// ended it.
type ending struct {
	resp     *http.Response // the last attempt's response; discarded already when cause is set
	err      error          // the last attempt's error
	attempts int
	d        decision // verdictGiveUp: the outcome was worth a retry, and d.reason says why none was sent
	cause    error    // what ended the request between attempts (the context, GetBody); nil: the outcome
	success  bool     // the request succeeded: it earns its host retries
	sent     int64    // when the last attempt was sent, a monotonic() reading: the success's second
}

// end is the one way out of a request: it deposits a success in the
// host's retry budget, counts and reports a give-up, and returns the
// response, or builds the error. A response is returned intact; an error
// as it is after one attempt and in a RetryError after more; the CheckRetry
// policy's error, or what ended the request between attempts, in a
// RetryError, the response closed.
func (t *Transport) end(req *http.Request, h *hostState, e ending) (*http.Response, error) {
	if e.success {
		t.budget.deposit(&h.budget, unixSec(e.sent)) // dated when its attempt was sent: no clock reading
	}
	if e.d.verdict == verdictGiveUp {
		if e.d.reason.counted() {
			h.count(gaveUpCounter)
		}
		reported := e.err
		if e.d.reason == GiveUpBody {
			reported = e.cause
		}
		t.opts.tel.giveUp(req, h.key, e.resp, reported, e.attempts, e.d.reason, e.d.wait)
	}
	status := 0
	if e.resp != nil {
		status = e.resp.StatusCode
	}
	switch {
	case e.cause != nil:
		return nil, t.retryError(req, e.attempts, status, e.err, e.cause)
	case e.d.policyErr != nil:
		if e.resp != nil {
			e.resp.Body.Close()
		}
		return nil, t.retryError(req, e.attempts, status, e.err, e.d.policyErr)
	case e.err == nil:
		e.resp.Request = req
		return e.resp, nil
	case e.attempts == 1:
		return nil, e.err
	}
	return nil, t.retryError(req, e.attempts, 0, nil, e.err)
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
