package keepalive

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/hashicorp/go-retryablehttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// policyBackoff is the fixed backoff of the policy tables: every wait is
// 100 ms, so a row's wait is known.
const policyBackoff = 100 * time.Millisecond

// policyNow is the fixed instant of a policy table: an hour from now, so
// that the contexts whose deadlines the rows set from it have not ended
// by the real clock (a context ends by the real clock, decide reads the
// deadline against now).
func policyNow() time.Time { return time.Now().Truncate(time.Second).Add(time.Hour) }

// decideAt asks p about o at now, with a backoff of policyBackoff; o's
// context is its request's unless set.
func decideAt(p *policy, o attemptOutcome, now time.Time) decision {
	if o.ctx == nil {
		o.ctx = o.req.Context()
	}
	return p.decide(o, now, backoff.NewConstantBackOff(policyBackoff))
}

func policyRequest(t *testing.T, ctx context.Context, method string, hdr ...string) *http.Request {
	t.Helper()
	var body *strings.Reader
	if method == http.MethodPost || method == http.MethodPut {
		body = strings.NewReader("x")
	}
	var req *http.Request
	var err error
	if body != nil {
		req, err = http.NewRequestWithContext(ctx, method, "http://example.test/p", body)
	} else {
		req, err = http.NewRequestWithContext(ctx, method, "http://example.test/p", nil)
	}
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return req
}

func status(code int, hdr ...string) *http.Response {
	r := &http.Response{StatusCode: code, Status: strconv.Itoa(code) + " " + http.StatusText(code), Header: http.Header{}, Body: http.NoBody}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	return r
}

// TestPolicyDecides is the policy's whole table: each row an outcome at a
// fixed instant, and the verdict, reason and wait it must get.
func TestPolicyDecides(t *testing.T) {
	now := policyNow()
	bg := context.Background()
	dl := func(d time.Duration) context.Context {
		ctx, cancel := context.WithDeadline(bg, now.Add(d))
		t.Cleanup(cancel)
		return ctx
	}
	cancelled, cancel := context.WithCancel(bg)
	cancel()
	p := newPolicy(defaultOptions())

	tests := []struct {
		name       string
		ctx        context.Context
		method     string
		hdr        []string
		resp       *http.Response
		err        error
		attempt    int
		unreplay   bool
		took       time.Duration
		wantV      verdict
		wantReason GiveUpReason
		wantWait   time.Duration
	}{
		{name: "a 200 is returned", resp: status(200), wantV: verdictReturn},
		{name: "a 404 is returned", resp: status(404), wantV: verdictReturn},
		{name: "a 503 on a GET is retried after the backoff", resp: status(503), wantV: verdictRetry, wantWait: policyBackoff},
		{name: "a 503 on the last allowed attempt gives up exhausted", resp: status(503), attempt: 4, wantV: verdictGiveUp, wantReason: GiveUpExhausted},
		{name: "a 503 on an unkeyed POST is not resent", method: http.MethodPost, resp: status(503), wantV: verdictGiveUp, wantReason: GiveUpNotReplayable},
		{name: "a 503 on a keyed POST is retried", method: http.MethodPost, hdr: []string{"Idempotency-Key", "k"}, resp: status(503), wantV: verdictRetry, wantWait: policyBackoff},
		{name: "a body that cannot be sent again is not resent", method: http.MethodPut, resp: status(503), unreplay: true, wantV: verdictGiveUp, wantReason: GiveUpNotReplayable},
		{name: "Retry-After within the cap is the wait", resp: status(429, "Retry-After", "2"), wantV: verdictRetry, wantWait: 2 * time.Second},
		{name: "Retry-After past the cap gives up", resp: status(503, "Retry-After", "31"), wantV: verdictGiveUp, wantReason: GiveUpRetryAfter, wantWait: 31 * time.Second},
		{name: "a huge Retry-After gives up without overflowing", resp: status(503, "Retry-After", "99999999999999999999"), wantV: verdictGiveUp, wantReason: GiveUpRetryAfter, wantWait: math.MaxInt64},
		{name: "Retry-After on a 500 is ignored", resp: status(500, "Retry-After", "20"), wantV: verdictRetry, wantWait: policyBackoff},
		{name: "a reset on a GET is retried", err: errors.New("read: connection reset by peer"), wantV: verdictRetry, wantWait: policyBackoff},
		{name: "a failed dial on an unkeyed POST is retried", method: http.MethodPost, err: &dialError{err: errors.New("refused")}, wantV: verdictRetry, wantWait: policyBackoff},
		{name: "a malformed request is never retried", err: &badRequestError{reason: "no Host"}, wantV: verdictReturn},
		{name: "a host name that does not exist is never retried", err: &dialError{err: &net.OpError{Op: "dial", Net: "tcp",
			Err: &net.DNSError{Err: "no such host", Name: "typo.invalid", IsNotFound: true}}}, wantV: verdictReturn},
		{name: "a DNS timeout is retried", err: &dialError{err: &net.OpError{Op: "dial", Net: "tcp",
			Err: &net.DNSError{Err: "i/o timeout", Name: "api.example", IsTimeout: true}}}, wantV: verdictRetry, wantWait: policyBackoff},
		{name: "an open circuit is never retried", err: &CircuitOpenError{Host: "a:80"}, wantV: verdictReturn},
		{name: "the caller's cancellation ends it", ctx: cancelled, resp: status(503), wantV: verdictReturn},
		{name: "a deadline that covers wait and attempt allows the retry", ctx: dl(time.Second), resp: status(503), took: 100 * time.Millisecond, wantV: verdictRetry, wantWait: policyBackoff},
		{name: "a deadline that cannot cover wait and attempt gives up", ctx: dl(time.Second), resp: status(503), took: 950 * time.Millisecond, wantV: verdictGiveUp, wantReason: GiveUpDeadline, wantWait: policyBackoff},
		{name: "a Retry-After past the deadline gives up", ctx: dl(time.Second), resp: status(503, "Retry-After", "5"), wantV: verdictGiveUp, wantReason: GiveUpDeadline, wantWait: 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = bg
			}
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			attempt := tt.attempt
			if attempt == 0 {
				attempt = 1
			}
			req := policyRequest(t, ctx, method, tt.hdr...)
			d := decideAt(&p, attemptOutcome{ctx: ctx, req: req, resp: tt.resp, err: tt.err, attempt: attempt, replayable: !tt.unreplay, took: tt.took}, now)
			assert.Equal(t, tt.wantV, d.verdict, "verdict")
			assert.Equal(t, tt.wantReason, d.reason, "reason")
			assert.Equal(t, tt.wantWait, d.wait, "wait")
		})
	}
}

// A CheckRetry policy's error is kept whatever the verdict, so that giving
// up returns it (go-retryablehttp does).
func TestPolicyKeepsTheCheckRetryError(t *testing.T) {
	now := policyNow()
	o := defaultOptions()
	o.checkRetry = retryablehttp.ErrorPropagatedRetryPolicy
	p := newPolicy(o)
	req := policyRequest(t, context.Background(), http.MethodGet)

	d := decideAt(&p, attemptOutcome{req: req, resp: status(500), attempt: 1, replayable: true}, now)
	assert.Equal(t, verdictRetry, d.verdict)
	require.Error(t, d.policyErr, "retried, and the error kept")

	d = decideAt(&p, attemptOutcome{req: req, resp: status(500), attempt: 4, replayable: true}, now)
	assert.Equal(t, verdictGiveUp, d.verdict)
	assert.Equal(t, GiveUpExhausted, d.reason)
	assert.ErrorContains(t, d.policyErr, "500")
}

// Every duration the policy computes saturates: huge backoffs and
// Retry-After values never wrap to a negative wait.
func TestPolicySaturates(t *testing.T) {
	now := policyNow()
	o := defaultOptions()
	o.backoffInitial, o.backoffMax = math.MaxInt64, math.MaxInt64
	o.maxRetryAfter = math.MaxInt64
	p := newPolicy(o)
	req := policyRequest(t, context.Background(), http.MethodGet)

	for range 50 {
		w := p.backoffWait(p.newBackoff())
		require.GreaterOrEqual(t, w, time.Duration(0))
		require.LessOrEqual(t, w, p.max)
	}

	ctx, cancel := context.WithDeadline(context.Background(), now.Add(time.Second))
	defer cancel()
	req = req.WithContext(ctx)
	d := p.decide(attemptOutcome{ctx: ctx, req: req, resp: status(503), attempt: 1, replayable: true, took: time.Millisecond}, now, p.newBackoff())
	assert.Equal(t, verdictGiveUp, d.verdict, "a backoff of MaxInt64 does not fit a 1 s deadline")
	assert.Equal(t, GiveUpDeadline, d.reason)

	d = decideAt(&p, attemptOutcome{ctx: ctx, req: req, resp: status(503, "Retry-After", "99999999999"), attempt: 1, replayable: true, took: time.Millisecond}, now)
	assert.Equal(t, verdictGiveUp, d.verdict, "a Retry-After of 3,000 years does not fit a 1 s deadline")
	assert.Equal(t, GiveUpDeadline, d.reason)

	assert.Equal(t, time.Duration(math.MaxInt64), satAdd(math.MaxInt64, 1))
	assert.Equal(t, time.Duration(math.MinInt64), satAdd(math.MinInt64, -1))
	assert.Equal(t, time.Duration(math.MinInt64), satSub(-2, math.MaxInt64))
	assert.Equal(t, time.Duration(math.MaxInt64), satSub(0, math.MinInt64))
}

func TestCheckRequestRejectsMalformedRequests(t *testing.T) {
	tests := []struct {
		name string
		give *http.Request
	}{
		{"a nil request", nil},
		{"a nil URL", &http.Request{Method: http.MethodGet, Header: http.Header{}}},
		{"an empty host", &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: "http", Path: "/"}, Header: http.Header{}}},
		{"a port past 65535", &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: "http", Host: "127.0.0.1:99999"}, Header: http.Header{}}},
		{"a port of letters", &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: "http", Host: "127.0.0.1:abc"}, Header: http.Header{}}},
		{"port zero", &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: "http", Host: "127.0.0.1:0"}, Header: http.Header{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkRequest(tt.give)
			var bad *badRequestError
			require.ErrorAs(t, err, &bad)
			assert.True(t, neverRetry(err))
		})
	}
	ok, err := http.NewRequest(http.MethodGet, "http://[::1]:8080/x", nil)
	require.NoError(t, err)
	assert.NoError(t, checkRequest(ok))
}

// policyOf is the policy of a Transport made with opts.
func policyOf(t *testing.T, opts ...Option) *policy {
	return &newTestTransport(t, opts...).policy
}

// A 503 is retried for the methods RFC 9110 calls idempotent, for any
// request that carries an idempotency key, and for the methods
// WithRetryMethods names instead; other requests are not sent again.
func TestPolicyRetriesOnlyWhatMayBeSentAgain(t *testing.T) {
	now := policyNow()
	tests := []struct {
		name    string
		method  string
		header  string
		opts    []Option
		retried bool
	}{
		{name: "GET is retried", method: "GET", retried: true},
		{name: "HEAD is retried", method: "HEAD", retried: true},
		{name: "OPTIONS is retried", method: "OPTIONS", retried: true},
		{name: "TRACE is retried", method: "TRACE", retried: true},
		{name: "PUT is retried", method: "PUT", retried: true},
		{name: "DELETE is retried", method: "DELETE", retried: true},
		{name: "POST is not retried", method: "POST"},
		{name: "PATCH is not retried", method: "PATCH"},
		{name: "POST with Idempotency-Key is retried", method: "POST", header: "Idempotency-Key", retried: true},
		{name: "PATCH with X-Idempotency-Key is retried", method: "PATCH", header: "X-Idempotency-Key", retried: true},
		{name: "POST is retried when WithRetryMethods allows it", method: "POST", opts: []Option{WithRetryMethods("POST")}, retried: true},
		{name: "GET is not retried when WithRetryMethods leaves it out", method: "GET", opts: []Option{WithRetryMethods("PUT")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr []string
			if tt.header != "" {
				hdr = []string{tt.header, "key-1"}
			}
			req := policyRequest(t, context.Background(), tt.method, hdr...)
			d := decideAt(policyOf(t, tt.opts...), attemptOutcome{req: req, resp: status(503), attempt: 1, replayable: true}, now)
			if tt.retried {
				assert.Equal(t, verdictRetry, d.verdict)
				return
			}
			assert.Equal(t, verdictGiveUp, d.verdict)
			assert.Equal(t, GiveUpNotReplayable, d.reason)
		})
	}
}

// Every status of the default list is retried, others are returned as
// they are.
func TestPolicyRetriesTheDefaultStatuses(t *testing.T) {
	now := policyNow()
	p := policyOf(t)
	for _, code := range []int{429, 500, 501, 502, 503, 504, 400, 404, 505} {
		retried := code == 429 || (code >= 500 && code <= 504)
		t.Run(fmt.Sprintf("%d retried %v", code, retried), func(t *testing.T) {
			req := policyRequest(t, context.Background(), http.MethodGet)
			d := decideAt(p, attemptOutcome{req: req, resp: status(code), attempt: 1, replayable: true}, now)
			assert.Equal(t, map[bool]verdict{true: verdictRetry, false: verdictReturn}[retried], d.verdict)
		})
	}
}
