// This file holds the retry layer that Transport.RoundTrip runs: the policy
// (what is worth retrying, and what may safely be sent again), body replay,
// backoff, Retry-After, draining, the give-up error and redaction.
//
// go-retryablehttp's Client and RoundTripper are deliberately not used on
// the request path: measured, they copy every request body into memory
// (hashicorp/go-retryablehttp#145), flush the whole idle pool on every
// failure, retry a POST like a GET (#169), and sleep for any Retry-After
// (#247). Its CheckRetry type is the policy hook, and its
// ErrorPropagatedRetryPolicy classifies transport errors.

package keepalive

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/hashicorp/go-retryablehttp"
)

// RetryError is returned when a request failed after more than one attempt:
// its retries ran out on errors, or the caller's context ended while it
// waited to retry. Err is why it ended (the last attempt's error, or the
// context's); errors.Is and errors.As reach Err and the last attempt's
// error. A request whose retries ran out on a status returns that response,
// not an error, as http.Client does for any status.
type RetryError struct {
	Method   string
	URL      string // with credentials and query values redacted
	Attempts int    // attempts made
	Status   int    // status of the last attempt, or 0 if it failed with an error
	Err      error

	last   error  // the last attempt's error, if it is not Err
	secret string // URL password, scrubbed from the message
}

func (e *RetryError) Error() string {
	var b strings.Builder
	plural := "s"
	if e.Attempts == 1 {
		plural = ""
	}
	fmt.Fprintf(&b, "keepalive: %s %s: giving up after %d attempt%s", e.Method, e.URL, e.Attempts, plural)
	if e.Status != 0 {
		fmt.Fprintf(&b, " (last status %d)", e.Status)
	}
	if e.last != nil {
		fmt.Fprintf(&b, " (last error: %v)", e.last)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return scrub(b.String(), e.secret)
}

// Timeout reports whether the request ended on a timeout: a read or
// connect timeout of its last attempt, or the context's deadline. It keeps
// the net.Error idiom working through *url.Error after retries, as it does
// for a request that failed on its first attempt.
func (e *RetryError) Timeout() bool {
	for _, err := range e.Unwrap() {
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			return true
		}
	}
	return false
}

// Unwrap returns Err and, if different, the last attempt's error.
func (e *RetryError) Unwrap() []error {
	if e.last != nil {
		return []error{e.Err, e.last}
	}
	return []error{e.Err}
}

// RoundTrip sends req, and sends it again while the outcome is worth a retry
// and the request may safely be repeated. It implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	hc := t.countRequest(req) // observer.go
	if t.policy.maxRetries == 0 {
		resp, err := t.send(req, 1, hc)
		if err != nil {
			return nil, err
		}
		return t.finish(req, resp), nil
	}
	return t.roundTripRetry(req, hc)
}

// Private implementation past this point.

// policy is the retry policy: pure functions of a request and an outcome.
type policy struct {
	maxRetries    int
	statuses      statusSet
	methods       map[string]bool
	maxRetryAfter time.Duration
	check         retryablehttp.CheckRetry // nil: statuses + defaultErrorPolicy
	initial, max  time.Duration
}

func newPolicy(o options) policy {
	return policy{
		maxRetries:    o.maxRetries,
		statuses:      o.retryStatuses,
		methods:       o.retryMethods,
		maxRetryAfter: o.maxRetryAfter,
		check:         o.checkRetry,
		initial:       o.backoffInitial,
		max:           o.backoffMax,
	}
}

type verdict int

const (
	done             verdict = iota // return the outcome as it is
	retry                           // send again after the wait
	exhausted                       // worth a retry, but none are left
	unsafe                          // worth a retry, but the request may not be sent again
	retryAfterTooFar                // the server asked for a wait past the cap
	policyError                     // the CheckRetry policy returned an error
)

// decision is the policy's answer for one attempt's outcome.
type decision struct {
	verdict    verdict
	retryAfter time.Duration // > 0: the server's Retry-After, to wait instead of the backoff
	err        error         // with policyError
}

// decide says what to do with the outcome (resp or err) of attempt number
// attempt (1 for the first) of req, at time now. replayable reports whether
// the request's body can be sent again.
func (p *policy) decide(req *http.Request, resp *http.Response, err error, attempt int, replayable bool, now time.Time) decision {
	ctx := req.Context()
	if ctx.Err() != nil {
		return decision{verdict: done}
	}
	if worth, checkErr := p.worthRetry(ctx, req, resp, err); !worth {
		if checkErr != nil {
			return decision{verdict: policyError, err: checkErr}
		}
		return decision{verdict: done}
	}
	if attempt > p.maxRetries {
		return decision{verdict: exhausted}
	}
	if !replayable || !p.mayResend(req, err) {
		return decision{verdict: unsafe}
	}
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if ra, ok := parseRetryAfter(resp.Header.Get("Retry-After"), now); ok {
			if ra > p.maxRetryAfter {
				return decision{verdict: retryAfterTooFar, retryAfter: ra}
			}
			return decision{verdict: retry, retryAfter: ra}
		}
	}
	return decision{verdict: retry}
}

// worthRetry reports whether the outcome is worth another attempt, before
// asking whether the request may be sent again.
func (p *policy) worthRetry(ctx context.Context, req *http.Request, resp *http.Response, err error) (bool, error) {
	if err != nil && neverRetry(err) {
		return false, nil
	}
	if p.check != nil {
		if err != nil {
			err = &url.Error{Op: req.Method, URL: redactURL(req.URL), Err: err}
		}
		return p.check(ctx, resp, err)
	}
	if err == nil {
		return p.statuses.has(resp.StatusCode), nil
	}
	// The retryablehttp rules (no retry on a redirect loop, a bad scheme, an
	// invalid header or an untrusted certificate) see errors as http.Client
	// returns them: in a *url.Error.
	worth, _ := retryablehttp.ErrorPropagatedRetryPolicy(ctx, nil,
		&url.Error{Op: req.Method, URL: redactURL(req.URL), Err: err})
	return worth, nil
}

// neverRetry reports errors no policy may retry: the caller's cancellation,
// an open circuit (breaker.go), and TLS failures that a new attempt would
// only repeat.
func neverRetry(err error) bool {
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verification     *tls.CertificateVerificationError
		recordHeader     tls.RecordHeaderError
	)
	return errors.Is(err, context.Canceled) || errors.Is(err, ErrCircuitOpen) ||
		errors.As(err, &unknownAuthority) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &verification) ||
		errors.As(err, &recordHeader)
}

// mayResend reports whether req may be sent again after an outcome of err:
// its method is idempotent (or allowed by WithRetryMethods), it carries an
// idempotency key, or it provably never left: the dial failed, or the
// server had closed the pooled connection before the request was written.
func (p *policy) mayResend(req *http.Request, err error) bool {
	m := req.Method
	if m == "" {
		m = http.MethodGet
	}
	if p.methods[m] || hasIdempotencyKey(req.Header) {
		return true
	}
	var de *dialError
	return err != nil && (errors.As(err, &de) || isServerClosedIdle(err))
}

// errServerClosedIdleText is the text of net/http's unexported
// errServerClosedIdle. The HTTP/1 transport returns that error, undecorated,
// only when its read loop saw the server close an idle connection before
// the request was handed to the connection: it closes the connection under
// the same lock that hands requests over, so not one byte of the request
// reached the server. net/http resends such requests only when they are
// idempotent; any request with a replayable body is as safe to resend. A
// POST that loses the same race after being written fails with another
// error (EOF, a reset) and is not resent.
const errServerClosedIdleText = "http: server closed idle connection"

func isServerClosedIdle(err error) bool { return err.Error() == errServerClosedIdleText }

// hasIdempotencyKey follows net/http's isReplayable: the header's presence
// makes any method safe to repeat.
func hasIdempotencyKey(h http.Header) bool {
	if _, ok := h["Idempotency-Key"]; ok {
		return true
	}
	_, ok := h["X-Idempotency-Key"]
	return ok
}

// maxRetryAfterSeconds keeps delay-seconds * time.Second from overflowing.
const maxRetryAfterSeconds = math.MaxInt64 / int64(time.Second)

// parseRetryAfter returns the positive wait that a Retry-After value asks
// for at now: delay-seconds, or an HTTP-date in any of the three formats of
// RFC 9110 section 5.6.7. It reports false for an empty, malformed or
// negative value, zero, or a date not after now: the backoff applies then.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if isDigits(v) {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n > maxRetryAfterSeconds { // only overflow fails here
			return time.Duration(math.MaxInt64), true
		}
		return time.Duration(n) * time.Second, n > 0
	}
	at, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := at.Sub(now)
	return d, d > 0
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// newBackoff returns the schedule of one request. ExponentialBackOff is not
// safe for concurrent use, so each request that retries gets its own, made
// on its first retry only.
func (p *policy) newBackoff() *backoff.ExponentialBackOff {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     p.initial,
		RandomizationFactor: DefaultBackoffJitter,
		Multiplier:          2,
		MaxInterval:         p.max,
		MaxElapsedTime:      0, // attempts are bounded by maxRetries instead
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	b.Reset()
	return b
}

// nextWait draws the next backoff wait; jitter may push it past MaxInterval,
// so it is capped there.
func (p *policy) nextWait(b *backoff.ExponentialBackOff) time.Duration {
	return min(b.NextBackOff(), p.max)
}

// roundTripRetry runs the retry loop for req, whose host's counters are hc.
func (t *Transport) roundTripRetry(req *http.Request, hc *hostCounters) (*http.Response, error) {
	ctx := req.Context()
	r, replayable, err := t.prepareBody(req)
	if err != nil {
		return nil, err
	}
	started := time.Now() // of the current attempt
	t.budget.deposit(req.URL.Host, started)
	var bo *backoff.ExponentialBackOff
	for attempt := 1; ; attempt++ {
		resp, err := t.attempt(req, r, replayable, attempt, hc) // hedge.go
		if err == nil && t.policy.check == nil && !t.policy.statuses.has(resp.StatusCode) {
			return t.finish(req, resp), nil // the success path: nothing more to decide
		}
		now := time.Now()
		d := t.policy.decide(req, resp, err, attempt, replayable, now)
		switch d.verdict {
		case done:
			return t.giveUp(req, resp, err, attempt)
		case unsafe:
			t.observeGiveUp(req, resp, err, attempt, GiveUpNotReplayable, 0)
			return t.giveUp(req, resp, err, attempt)
		case exhausted:
			t.observeGiveUp(req, resp, err, attempt, GiveUpExhausted, 0)
			return t.giveUp(req, resp, err, attempt)
		case retryAfterTooFar:
			t.observeGiveUp(req, resp, err, attempt, GiveUpRetryAfter, d.retryAfter)
			return t.giveUp(req, resp, err, attempt)
		case policyError:
			t.observeGiveUp(req, resp, err, attempt, GiveUpPolicy, 0)
			status := 0
			if resp != nil {
				status = resp.StatusCode
				resp.Body.Close()
			}
			return nil, t.retryError(req, attempt, status, err, d.err)
		}

		wait := d.retryAfter
		if wait <= 0 {
			if bo == nil {
				bo = t.policy.newBackoff()
			}
			wait = t.policy.nextWait(bo)
		}
		// A retry needs the wait and then about as long as this attempt
		// took; if the deadline cannot cover both, the caller gets this
		// outcome now rather than a DeadlineExceeded later.
		if dl, ok := ctx.Deadline(); ok && wait+now.Sub(started) >= dl.Sub(now) {
			t.observeGiveUp(req, resp, err, attempt, GiveUpDeadline, wait)
			return t.giveUp(req, resp, err, attempt)
		}
		if !t.budget.withdraw(req.URL.Host, now) { // budget.go
			t.observeBudgetRefused(req, attempt)
			t.observeGiveUp(req, resp, err, attempt, GiveUpBudget, wait)
			return t.giveUp(req, resp, err, attempt)
		}
		t.observeRetry(req, resp, err, attempt, wait, d.retryAfter > 0)
		status := 0
		if resp != nil {
			status = resp.StatusCode
			drain(resp)
		}
		if serr := sleep(ctx, wait); serr != nil {
			t.observeGiveUp(req, resp, err, attempt, GiveUpCanceled, wait)
			return nil, t.retryError(req, attempt, status, err, serr)
		}
		started = time.Now()
		if r, err = nextAttempt(req, r); err != nil {
			t.observeGiveUp(req, resp, err, attempt, GiveUpBody, 0)
			return nil, t.retryError(req, attempt, status, nil, err)
		}
		t.countRetry(hc)
	}
}

// finish returns the response of the last attempt to the caller.
func (t *Transport) finish(req *http.Request, resp *http.Response) *http.Response {
	resp.Request = req
	return resp
}

// giveUp ends a request with the outcome of its last attempt: a response is
// returned intact, an error as it is after one attempt and in a RetryError
// after more. Stats.GaveUp is counted by observeGiveUp, with the reason.
func (t *Transport) giveUp(req *http.Request, resp *http.Response, err error, attempt int) (*http.Response, error) {
	if err == nil {
		return t.finish(req, resp), nil
	}
	if attempt == 1 {
		return nil, err
	}
	return nil, t.retryError(req, attempt, 0, nil, err)
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

// prepareBody returns the request to send first, and whether its body can
// be sent again. A body without GetBody is buffered only when
// WithBodyBuffer allows it and it fits; otherwise it streams once.
func (t *Transport) prepareBody(req *http.Request) (*http.Request, bool, error) {
	if req.Body == nil || req.Body == http.NoBody || req.GetBody != nil {
		return req, true, nil
	}
	limit := t.opts.bodyBuffer
	if limit <= 0 || req.ContentLength > limit {
		return req, false, nil
	}
	buf, err := io.ReadAll(io.LimitReader(req.Body, limit+1))
	if err != nil {
		req.Body.Close()
		return nil, false, fmt.Errorf("keepalive: reading request body to buffer it: %w", err)
	}
	r := shallowCopy(req)
	if int64(len(buf)) > limit { // too long: send what was read, then the rest, once
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf), req.Body), req.Body}
		return r, false, nil
	}
	req.Body.Close()
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	r.Body, _ = r.GetBody()
	if r.ContentLength <= 0 {
		r.ContentLength = int64(len(buf))
	}
	if len(buf) == 0 {
		r.Body = http.NoBody
	}
	return r, true, nil
}

// nextAttempt returns the request for the next attempt: prev with a fresh
// body. The caller's request is never modified.
func nextAttempt(req, prev *http.Request) (*http.Request, error) {
	if prev.Body == nil || prev.Body == http.NoBody {
		return prev, nil
	}
	body, err := prev.GetBody()
	if err != nil {
		return nil, fmt.Errorf("keepalive: GetBody for a retry: %w", err)
	}
	r := shallowCopy(prev)
	r.Body = body
	return r, nil
}

func shallowCopy(req *http.Request) *http.Request {
	r := new(http.Request)
	*r = *req
	return r
}

// drainTimeout bounds the time spent draining a discarded body: a slow
// server costs a connection, not the caller's time.
const drainTimeout = time.Second

// drain reads up to DefaultMaxDrain bytes of a discarded response body, so
// that its connection can go back to the pool, then closes it. A body known
// to be longer is closed unread: its connection is lost either way.
func drain(resp *http.Response) {
	body := resp.Body
	defer body.Close()
	if resp.ContentLength > DefaultMaxDrain {
		return
	}
	stop := time.AfterFunc(drainTimeout, func() { body.Close() })
	defer stop.Stop()
	_, _ = io.Copy(io.Discard, io.LimitReader(body, DefaultMaxDrain+1))
}

// sleep waits for d or until ctx ends, whichever is first.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

const redacted = "xxxxx"

// redactURL returns u for logs and errors: user info and query values
// replaced by "xxxxx" (a query often carries a token), fragment dropped.
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	ru := *u
	ru.Fragment, ru.RawFragment = "", ""
	if ru.User != nil {
		if _, ok := ru.User.Password(); ok {
			ru.User = url.UserPassword(redacted, redacted)
		} else {
			ru.User = url.User(redacted)
		}
	}
	if ru.RawQuery != "" {
		q, err := url.ParseQuery(ru.RawQuery)
		if err != nil {
			ru.RawQuery = redacted
		} else {
			for k := range q {
				q[k] = []string{redacted}
			}
			ru.RawQuery = q.Encode()
		}
	}
	return ru.String()
}

func urlPassword(u *url.URL) string {
	if u == nil || u.User == nil {
		return ""
	}
	p, _ := u.User.Password()
	return p
}

// scrub removes secret from s: an error from a policy or a proxy may quote
// the URL it was given.
func scrub(s, secret string) string {
	if len(secret) < 4 { // too short to tell from ordinary text
		return s
	}
	return strings.ReplaceAll(s, secret, redacted)
}
