// This file holds the fuzzers of what a caller or a server controls: the
// waits that response fields lead to (server input; the field parsers
// themselves are fuzzed in internal/headers) and option validation
// (caller input). CI runs each for a fixed number of inputs; plain go test
// runs the seeds.

package keepalive

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fuzzNow is the fixed instant the parser is fuzzed at; dates are seeded
// around it.
var fuzzNow = time.Date(2026, time.November, 28, 8, 0, 0, 0, time.UTC)

// FuzzRetryAfterWait: whatever a Retry-After says, the policy never plans
// a wait past its cap, nor a negative one.
func FuzzRetryAfterWait(f *testing.F) {
	for _, s := range []string{
		"", "0", "1", "120", "3600", "-5", "1e3", "soon", "99999999999999999999", "9223372036854775807",
		fuzzNow.Add(time.Hour).Format(http.TimeFormat), fuzzNow.Add(-time.Hour).Format(http.TimeFormat),
		"Fri, 31 Dec 9999 23:59:59 GMT",
	} {
		f.Add(s)
	}
	p := newPolicy(defaultOptions())
	req, err := http.NewRequest(http.MethodGet, "http://127.0.0.1/", nil)
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, v string) {
		resp := &http.Response{StatusCode: http.StatusServiceUnavailable, Header: http.Header{"Retry-After": {v}}}
		dec := decideAt(&p, attemptOutcome{req: req, resp: resp, attempt: 1, replayable: true}, fuzzNow)
		if dec.verdict == verdictRetry && (dec.wait > p.maxRetryAfter || dec.wait < 0) {
			t.Fatalf("Retry-After %q: plans a wait of %v outside [0, %v]", v, dec.wait, p.maxRetryAfter)
		}
	})
}

func FuzzNewTransportOptions(f *testing.F) {
	f.Add(1, 2, 3, 4, int64(time.Second), int64(time.Second), int64(time.Second), int64(time.Second),
		int64(time.Millisecond), int64(time.Second), int64(time.Second), int64(0), 503, "GET")
	f.Add(-1, -1, -1, -1, int64(-1), int64(-1), int64(-1), int64(-1),
		int64(-1), int64(-1), int64(-1), int64(-1), 99, "")
	f.Add(0, 0, 0, 0, int64(0), int64(0), int64(0), int64(0),
		int64(2), int64(1), int64(0), int64(1<<20), 600, "BAD METHOD")
	f.Add(math.MaxInt, math.MinInt, 0, math.MaxInt, int64(math.MaxInt64), int64(math.MinInt64), int64(0), int64(0),
		int64(math.MaxInt64), int64(math.MaxInt64), int64(math.MaxInt64), int64(math.MaxInt64), 100, "M-SEARCH")
	f.Add(5, 5, 5, 5, int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), 599, "GET\x00")
	f.Add(1, 2, 3, 4, int64(time.Second), int64(time.Second), int64(time.Second), int64(time.Second),
		int64(time.Millisecond), int64(time.Second), int64(time.Second), int64(0), 503, "post")

	f.Fuzz(func(t *testing.T, maxIdle, perHost, maxConns, maxRetries int,
		idle, connect, read, tlsHS, boInit, boMax, maxRA, bodyBuf int64, status int, method string) {
		type opt struct {
			name  string
			o     Option
			valid bool
		}
		dur := func(n int64) time.Duration { return time.Duration(n) }
		_, methodErr := http.NewRequest(method, "http://127.0.0.1/", nil)
		opts := []opt{
			{"WithMaxIdleConns", WithMaxIdleConns(maxIdle), maxIdle >= 0},
			{"WithMaxIdleConnsPerHost", WithMaxIdleConnsPerHost(perHost), perHost >= 0},
			{"WithMaxConnsPerHost", WithMaxConnsPerHost(maxConns), maxConns >= 0},
			{"WithMaxRetries", WithMaxRetries(maxRetries), maxRetries >= 0},
			{"WithIdleConnTimeout", WithIdleConnTimeout(dur(idle)), idle >= 0},
			{"WithConnectTimeout", WithConnectTimeout(dur(connect)), connect >= 0},
			{"WithReadTimeout", WithReadTimeout(dur(read)), read >= 0},
			{"WithTLSHandshakeTimeout", WithTLSHandshakeTimeout(dur(tlsHS)), tlsHS >= 0},
			{"WithBackoff", WithBackoff(dur(boInit), dur(boMax)), boInit >= 0 && boMax >= 0 && boInit <= boMax},
			{"WithMaxRetryAfter", WithMaxRetryAfter(dur(maxRA)), maxRA >= 0},
			{"WithBodyBuffer", WithBodyBuffer(bodyBuf), bodyBuf >= 0},
			{"WithRetryStatuses", WithRetryStatuses(status), status >= 100 && status <= 599},
			// net/http's own check is the oracle; an empty method means
			// GET to net/http but names no method to retry, and a standard
			// method not in upper case matches no request.
			{"WithRetryMethods", WithRetryMethods(method), method != "" && methodErr == nil &&
				(strings.ToUpper(method) == method || !standardMethods[strings.ToUpper(method)])},
		}
		all := make([]Option, len(opts))
		valid := true
		for i, o := range opts {
			all[i] = o.o
			valid = valid && o.valid
		}
		tr, err := NewTransport(all...)
		if valid {
			if err != nil {
				t.Fatalf("valid options rejected: %v", err)
			}
			tr.CloseIdleConnections()
			return
		}
		if err == nil {
			tr.CloseIdleConnections()
			t.Fatalf("invalid options accepted")
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "keepalive: ") {
			t.Fatalf("error without the package prefix: %q", msg)
		}
		for _, o := range opts {
			if named := strings.Contains(msg, o.name+":"); named == o.valid {
				t.Fatalf("%s valid=%v, but error %q names it: %v", o.name, o.valid, msg, named)
			}
		}
	})
}

// FuzzPauseFields: whatever the fields that pause a host say (server
// input), a pause is positive (the parsers are fuzzed in internal/headers).
func FuzzPauseFields(f *testing.F) {
	for _, s := range []string{
		"", "0", "1", "1.5", "0.3", ".5", "5.", "1470173023.123", "99999999999999999999",
		`"default";r=0;t=5`, `"a";r=0;t=5, "b";r=0;t=60`, `"a;b,c";r=0;t=1`, `"x\";r=0;t=9";r=1;t=2`,
		`limit=10, remaining=0, reset=5`, `"default";r=0`, `;;;,,,="`, `"`, `\`, "r=0;t=1",
		strconv.FormatInt(fuzzNow.Add(time.Minute).Unix(), 10),
	} {
		f.Add(s)
	}
	now := func() time.Time { return fuzzNow }
	f.Fuzz(func(t *testing.T, v string) {
		for _, status := range []int{200, 429, 503} {
			resp := &http.Response{StatusCode: status, Header: http.Header{
				"Retry-After": {v}, "Ratelimit": {v}, "Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {v},
				"X-Ratelimit-Remaining": {"0"}, "X-Ratelimit-Reset": {v},
			}}
			if d, src := pauseOf(resp, now); src != 0 && d <= 0 {
				t.Fatalf("pauseOf(%d, %q) = %v, %v: a pause must be positive", status, v, d, src)
			}
		}
	})
}
