// This file holds the retry policy: a pure function, decide, that answers
// whether the outcome of an attempt is retried and after how long, given
// everything it depends on (time and the backoff's randomness included) as
// arguments. The loop that acts on its answers is in retry.go.
//
// go-retryablehttp's Client and RoundTripper are deliberately not used on
// the request path: measured, they copy every request body into memory
// (hashicorp/go-retryablehttp#145), flush the whole idle pool on every
// failure, retry a POST like a GET (#169), and sleep for any Retry-After
// (#247). Its CheckRetry type is the policy hook, and its
// ErrorPropagatedRetryPolicy classifies transport errors.

package keepalive

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/hashicorp/go-retryablehttp"
	"github.com/keepalive-go/keepalive/internal/headers"
)

// backoffJitter is the randomization factor of the backoff: each wait is
// drawn uniformly from [w*(1-j), w*(1+j)], capped at the maximum backoff.
const backoffJitter = 0.5

// policy is the retry configuration that decide applies.
type policy struct {
	maxRetries    int
	statuses      statusSet
	methods       map[string]bool
	maxRetryAfter time.Duration
	check         retryablehttp.CheckRetry // nil: statuses + ErrorPropagatedRetryPolicy
	initial, max  time.Duration
}

// verdict is what decide says to do with an outcome.
type verdict uint8

const (
	verdictReturn verdict = iota // not worth a retry: return the outcome as it is
	verdictRetry                 // wait, send again
	verdictGiveUp                // worth a retry, but none may be sent: see decision.reason
)

// decision is decide's answer for one attempt's outcome.
type decision struct {
	verdict    verdict
	reason     GiveUpReason  // with verdictGiveUp
	wait       time.Duration // before the next attempt; for GiveUpRetryAfter and GiveUpDeadline, the refused wait
	retryAfter bool          // wait is the server's Retry-After rather than the backoff
	policyErr  error         // the CheckRetry policy's error: returned instead of the outcome on giving up
}

// attemptOutcome is what decide knows of one attempt and its request.
type attemptOutcome struct {
	ctx        context.Context // the caller's: CheckRetry gets it, and a cancelled one ends the request
	req        *http.Request   // method, header and URL: never sent from here
	resp       *http.Response  // nil when err is set
	err        error
	attempt    int           // 1 for the first
	replayable bool          // the request's body can be sent again
	took       time.Duration // from sending the attempt to its outcome
	paused     time.Duration // what is left of the host's pause; 0: none
}

// decide says what to do with an attempt's outcome at now. bo is the
// request's backoff; it is asked for a wait only when the backoff applies.
// In order: the caller's context; whether the outcome is worth a retry
// (the CheckRetry policy, or the status list and the error rules); the
// retries left; whether the request may be sent again; the wait
// (Retry-After within its cap, or the backoff, or what is left of the
// host's pause if that is longer); and whether the caller's
// deadline covers the wait and another attempt as long as this one. The
// discarded response is drained off the caller's time, so it
// takes none of the deadline.
func (p *policy) decide(o attemptOutcome, now time.Time, bo backoff.BackOff) decision {
	if o.ctx.Err() != nil {
		return decision{verdict: verdictReturn}
	}
	worth, checkErr := p.worthRetry(o.ctx, o.req, o.resp, o.err)
	if !worth {
		if checkErr != nil {
			return decision{verdict: verdictGiveUp, reason: GiveUpPolicy, policyErr: checkErr}
		}
		return decision{verdict: verdictReturn}
	}
	giveUp := func(r GiveUpReason, wait time.Duration) decision {
		return decision{verdict: verdictGiveUp, reason: r, wait: wait, policyErr: checkErr}
	}
	if o.attempt > p.maxRetries {
		return giveUp(GiveUpExhausted, 0)
	}
	if !o.replayable || !p.mayResend(o.req, o.err) {
		return giveUp(GiveUpNotReplayable, 0)
	}
	d := decision{verdict: verdictRetry, policyErr: checkErr}
	if ra, ok := retryAfterOf(o.resp, now); ok {
		if ra > p.maxRetryAfter {
			return giveUp(GiveUpRetryAfter, ra)
		}
		d.wait, d.retryAfter = ra, true
	} else {
		d.wait = p.backoffWait(bo)
	}
	if o.paused > d.wait { // one wait, for the host's pause too: the next attempt would wait for it anyway
		d.wait, d.retryAfter = o.paused, true
	}
	if dl, ok := o.ctx.Deadline(); ok {
		if satSub(satSub(dl.Sub(now), d.wait), o.took) <= 0 {
			return giveUp(GiveUpDeadline, d.wait)
		}
	}
	return d
}

// worthRetry reports whether the outcome is worth another attempt, before
// asking whether the request may be sent again, and the CheckRetry
// policy's error, if it gave one.
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
// an open circuit, a host paused past the deadline,
// a malformed request, a host name the resolver says does not exist (a
// typo, which a retry only makes slower to report; a DNS timeout or a
// server failure is still retried), and TLS failures that a new attempt
// would only repeat.
func neverRetry(err error) bool {
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verification     *tls.CertificateVerificationError
		recordHeader     tls.RecordHeaderError
		bad              *badRequestError
		dns              *net.DNSError
	)
	return errors.Is(err, context.Canceled) || errors.Is(err, ErrCircuitOpen) || errors.Is(err, ErrHostPaused) ||
		errors.As(err, &bad) ||
		errors.As(err, &dns) && dns.IsNotFound ||
		errors.As(err, &unknownAuthority) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &verification) ||
		errors.As(err, &recordHeader)
}

// mayResend reports whether req may be sent again after an outcome of err:
// its method is idempotent (or allowed by WithRetryMethods), it carries an
// idempotency key, or it provably never left: the dial failed, the server
// had closed the pooled connection before the request was written, or the
// connection was retired before it was written.
func (p *policy) mayResend(req *http.Request, err error) bool {
	if p.methods[methodOf(req)] || hasIdempotencyKey(req.Header) {
		return true
	}
	return err != nil && neverSent(err)
}

// mayRepeat reports whether req may be sent more than once whatever
// happens to it: what hedging and the body buffer need.
func (p *policy) mayRepeat(req *http.Request) bool {
	return p.methods[methodOf(req)] || hasIdempotencyKey(req.Header)
}

func methodOf(req *http.Request) string {
	if req.Method == "" {
		return http.MethodGet
	}
	return req.Method
}

// neverSent reports errors of attempts that wrote nothing to any server.
func neverSent(err error) bool {
	var de *dialError
	return errors.As(err, &de) || errors.Is(err, errConnRetired) || isServerClosedIdle(err)
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

// retryAfterOf returns the Retry-After wait of a 429 or 503 response.
func retryAfterOf(resp *http.Response, now time.Time) (time.Duration, bool) {
	if resp == nil || resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return 0, false
	}
	return headers.RetryAfter(resp.Header.Get("Retry-After"), now)
}

// newBackoff returns the schedule of one request: cenkalti/backoff's
// ExponentialBackOff. It is not safe for concurrent use, so each request
// that needs one gets its own.
func (p *policy) newBackoff() backoff.BackOff {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     p.initial,
		RandomizationFactor: backoffJitter,
		Multiplier:          2,
		MaxInterval:         p.max,
		MaxElapsedTime:      0, // attempts are bounded by maxRetries instead
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	b.Reset()
	return b
}

// backoffWait draws the next wait from bo, within [0, max]: jitter may push
// a wait past MaxInterval, and with intervals near math.MaxInt64 the
// backoff's float arithmetic overflows to a negative wait.
func (p *policy) backoffWait(bo backoff.BackOff) time.Duration {
	w := bo.NextBackOff()
	if w < 0 || w > p.max {
		return p.max
	}
	return w
}

// satAdd and satSub add and subtract durations, saturating at the limits
// of time.Duration instead of wrapping around.
func satAdd(a, b time.Duration) time.Duration {
	s := a + b
	switch {
	case a > 0 && b > 0 && s < 0:
		return math.MaxInt64
	case a < 0 && b < 0 && s >= 0:
		return math.MinInt64
	}
	return s
}

func satSub(a, b time.Duration) time.Duration {
	if b == math.MinInt64 {
		return satAdd(satAdd(a, math.MaxInt64), 1)
	}
	return satAdd(a, -b)
}

// statusSet is a bitmap of the statuses 100-599: a lookup on every response
// costs a shift, not a map access.
type statusSet [10]uint64

func (s *statusSet) add(code int) { s[code/64] |= 1 << (code % 64) }

func (s *statusSet) has(code int) bool {
	return code >= 0 && code < 640 && s[code/64]&(1<<(code%64)) != 0
}
