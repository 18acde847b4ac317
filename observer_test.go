package keepalive

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorder is an Observer that keeps every event.
type recorder struct {
	mu       sync.Mutex
	starts   []AttemptStartEvent
	ends     []AttemptEndEvent
	retries  []RetryEvent
	giveUps  []GiveUpEvent
	budget   []BudgetRefusedEvent
	breakers []BreakerChangeEvent
	dials    []DialEvent
	order    []string
}

func (r *recorder) observer(traceConns bool) Observer {
	return Observer{
		OnAttemptStart:  func(e AttemptStartEvent) { r.add("start", func() { r.starts = append(r.starts, e) }) },
		OnAttemptEnd:    func(e AttemptEndEvent) { r.add("end", func() { r.ends = append(r.ends, e) }) },
		OnRetry:         func(e RetryEvent) { r.add("retry", func() { r.retries = append(r.retries, e) }) },
		OnGiveUp:        func(e GiveUpEvent) { r.add("giveup", func() { r.giveUps = append(r.giveUps, e) }) },
		OnBudgetRefused: func(e BudgetRefusedEvent) { r.add("budget", func() { r.budget = append(r.budget, e) }) },
		OnBreakerChange: func(e BreakerChangeEvent) { r.add("breaker", func() { r.breakers = append(r.breakers, e) }) },
		OnDial:          func(e DialEvent) { r.add("dial", func() { r.dials = append(r.dials, e) }) },
		TraceConns:      traceConns,
	}
}

func (r *recorder) add(name string, f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.order = append(r.order, name)
	f()
}

func TestObserverSeesEveryAttemptOfARetriedRequest(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(503), keepalivetest.Status(502), keepalivetest.Status(200).Body("ok"))
	var rec recorder
	c, _ := newTestClient(t, WithBackoff(time.Millisecond, time.Millisecond), WithObserver(rec.observer(false)))

	resp, err := c.Get(s.URL + "/path?token=secret")
	require.NoError(t, err)
	assert.Equal(t, "ok", readBody(t, resp))

	host := hostOf(t, s.URL)
	assert.Equal(t, []string{"start", "dial", "end", "retry", "start", "end", "retry", "start", "end"}, rec.order)
	for i, e := range rec.starts {
		assert.Equal(t, i+1, e.Attempt)
		assert.Equal(t, host, e.Host)
		assert.Equal(t, "/path", e.Request.URL.Path)
	}
	wantStatus := []int{503, 502, 200}
	for i, e := range rec.ends {
		assert.Equal(t, i+1, e.Attempt)
		assert.Equal(t, wantStatus[i], e.Status)
		assert.Equal(t, wantStatus[i], e.Response.StatusCode)
		assert.NoError(t, e.Err)
		assert.Positive(t, e.Duration)
		assert.Equal(t, ConnUnknown, e.Conn, "not traced")
	}
	for i, e := range rec.retries {
		assert.Equal(t, i+1, e.Attempt)
		assert.Equal(t, RetryOnStatus, e.Reason)
		assert.Equal(t, wantStatus[i], e.Status)
		assert.True(t, e.Wait > 0 && e.Wait <= time.Millisecond, "jittered backoff, capped: %v", e.Wait)
		assert.False(t, e.RetryAfter)
		assert.Equal(t, host, e.Host)
	}
	assert.Empty(t, rec.giveUps, "the request succeeded")
	require.Len(t, rec.dials, 1)
	assert.Equal(t, DialEvent{Host: host}, rec.dials[0])
}

func TestObserverRetryCarriesRetryAfterAndErrors(t *testing.T) {
	t.Parallel() // waits out a Retry-After
	// The reset comes first: on a reused connection net/http would resend
	// the GET by itself, within the attempt.
	s := keepalivetest.NewServer(t, keepalivetest.Reset(), keepalivetest.Status(503).RetryAfter("1"), keepalivetest.Status(200))
	var rec recorder
	c, _ := newTestClient(t, WithBackoff(time.Millisecond, time.Millisecond), WithObserver(rec.observer(false)))

	resp, err := c.Get(s.URL)
	require.NoError(t, err)
	readBody(t, resp)

	require.Len(t, rec.retries, 2)
	assert.Equal(t, RetryOnError, rec.retries[0].Reason)
	assert.Error(t, rec.retries[0].Err)
	assert.Zero(t, rec.retries[0].Status)
	assert.False(t, rec.retries[0].RetryAfter)
	assert.Equal(t, RetryOnStatus, rec.retries[1].Reason)
	assert.Equal(t, time.Second, rec.retries[1].Wait)
	assert.True(t, rec.retries[1].RetryAfter)
	require.Len(t, rec.ends, 3)
	assert.Error(t, rec.ends[0].Err)
	assert.Nil(t, rec.ends[0].Response)
}

func TestTraceConnsTellsNewFromReusedConnections(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(200), keepalivetest.Status(200),
		keepalivetest.Drop(), keepalivetest.Status(200))
	var rec recorder
	c, _ := newTestClient(t, WithObserver(rec.observer(true)))

	for range 2 {
		resp, err := c.Get(s.URL)
		require.NoError(t, err)
		readBody(t, resp)
	}
	// The drop fails a reused connection; net/http retries a GET on a new
	// one by itself, inside the same attempt.
	resp, err := c.Get(s.URL)
	require.NoError(t, err)
	readBody(t, resp)

	require.Len(t, rec.ends, 3)
	assert.Equal(t, ConnNew, rec.ends[0].Conn)
	assert.Equal(t, ConnReused, rec.ends[1].Conn)
	assert.Equal(t, ConnNew, rec.ends[2].Conn, "the last conn obtained was the new one")
	assert.Equal(t, "reused", ConnReused.String())
	assert.Equal(t, 2, s.Connections())
}

func TestObserverGiveUpReasons(t *testing.T) {
	failingBody := func(t *testing.T, url string) *http.Request {
		req, err := http.NewRequest(http.MethodPut, url, strings.NewReader("x"))
		require.NoError(t, err)
		req.GetBody = func() (io.ReadCloser, error) { return nil, errors.New("no rewind") }
		return req
	}
	tests := []struct {
		name     string
		script   []keepalivetest.Step
		opts     []Option
		req      func(t *testing.T, url string) *http.Request
		want     GiveUpReason
		attempts int
		status   int
		wait     time.Duration
		gaveUp   int64
	}{
		{
			name:   "a request that keeps failing runs out of retries",
			script: []keepalivetest.Step{keepalivetest.Status(503)},
			opts:   []Option{WithMaxRetries(2)},
			want:   GiveUpExhausted, attempts: 3, status: 503, gaveUp: 1,
		},
		{
			name:   "a POST without a key is not replayable",
			script: []keepalivetest.Step{keepalivetest.Status(503)},
			req: func(t *testing.T, url string) *http.Request {
				req, err := http.NewRequest(http.MethodPost, url, nil)
				require.NoError(t, err)
				return req
			},
			want: GiveUpNotReplayable, attempts: 1, status: 503,
		},
		{
			name:   "a Retry-After past the limit is refused",
			script: []keepalivetest.Step{keepalivetest.Status(429).RetryAfter("3600")},
			want:   GiveUpRetryAfter, attempts: 1, status: 429, wait: time.Hour, gaveUp: 1,
		},
		{
			name:   "a policy error ends the request",
			script: []keepalivetest.Step{keepalivetest.Status(500)},
			opts: []Option{WithCheckRetry(func(context.Context, *http.Response, error) (bool, error) {
				return false, errors.New("policy says no")
			})},
			want: GiveUpPolicy, attempts: 1, status: 500,
		},
		{
			name:   "a body that cannot be rewound ends the request",
			script: []keepalivetest.Step{keepalivetest.Status(503), keepalivetest.Status(200)},
			req:    failingBody,
			want:   GiveUpBody, attempts: 1, status: 0, // Err is GetBody's
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := keepalivetest.NewServer(t, tt.script...)
			var rec recorder
			opts := append([]Option{WithBackoff(0, 0), WithObserver(rec.observer(false))}, tt.opts...)
			c, tr := newTestClient(t, opts...)
			req, err := http.NewRequest(http.MethodGet, s.URL, nil)
			require.NoError(t, err)
			if tt.req != nil {
				req = tt.req(t, s.URL)
			}
			resp, err := c.Do(req)
			if err == nil {
				readBody(t, resp)
			}
			require.Len(t, rec.giveUps, 1)
			e := rec.giveUps[0]
			assert.Equal(t, tt.want, e.Reason, e.Reason.String())
			assert.Equal(t, tt.attempts, e.Attempts)
			assert.Equal(t, tt.status, e.Status)
			assert.Equal(t, tt.wait, e.Wait)
			assert.Equal(t, hostOf(t, s.URL), e.Host)
			assert.Same(t, req, e.Request)
			assert.Equal(t, tt.gaveUp, tr.Stats().GaveUp)
			assert.Equal(t, tt.gaveUp, tr.HostStats()[e.Host].GaveUp, "per host as in total")
		})
	}
}

func TestObserverGiveUpWhenTheContextEndsOrIsTooShort(t *testing.T) {
	t.Run("the wait would pass the deadline", func(t *testing.T) {
		s := keepalivetest.NewServer(t, keepalivetest.Status(503).RetryAfter("20"))
		var rec recorder
		c, _ := newTestClient(t, WithObserver(rec.observer(false)))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		readBody(t, resp)
		require.Len(t, rec.giveUps, 1)
		assert.Equal(t, GiveUpDeadline, rec.giveUps[0].Reason)
		assert.Equal(t, 20*time.Second, rec.giveUps[0].Wait)
	})
	t.Run("the caller cancels during the wait", func(t *testing.T) {
		s := keepalivetest.NewServer(t, keepalivetest.Status(503).RetryAfter("20"))
		var rec recorder
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		o := rec.observer(false)
		o.OnRetry = func(RetryEvent) { cancel() } // cancel once the wait is decided
		c, _ := newTestClient(t, WithObserver(o))
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
		require.NoError(t, err)
		_, err = c.Do(req)
		require.ErrorIs(t, err, context.Canceled)
		require.Len(t, rec.giveUps, 1)
		assert.Equal(t, GiveUpCanceled, rec.giveUps[0].Reason)
		assert.Equal(t, 503, rec.giveUps[0].Status)
	})
}

func TestObserversAccumulateAndRunInOrder(t *testing.T) {
	s := keepalivetest.NewServer(t)
	var mu sync.Mutex
	var calls []string
	mark := func(s string) func(AttemptStartEvent) {
		return func(AttemptStartEvent) { mu.Lock(); calls = append(calls, s); mu.Unlock() }
	}
	c, _ := newTestClient(t,
		WithObserver(Observer{OnAttemptStart: mark("first")}),
		WithObserver(Observer{}),
		WithObserver(Observer{OnAttemptStart: mark("second")}),
	)
	resp, err := c.Get(s.URL)
	require.NoError(t, err)
	readBody(t, resp)
	assert.Equal(t, []string{"first", "second"}, calls)
}

func TestObserverSeesFailedDials(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens: connects are refused

	var rec recorder
	c, tr := newTestClient(t, WithMaxRetries(1), WithBackoff(0, 0), WithObserver(rec.observer(false)))
	_, err = c.Get("http://" + addr + "/")
	require.Error(t, err)
	require.Len(t, rec.dials, 2)
	for _, d := range rec.dials {
		assert.Equal(t, addr, d.Host)
		assert.ErrorIs(t, d.Err, syscall.ECONNREFUSED)
	}
	hs := tr.HostStats()[addr]
	assert.Equal(t, int64(2), hs.DialErrors)
	assert.Equal(t, int64(2), hs.Attempts)
	assert.Zero(t, hs.Reused(), "no attempt got a connection")
	require.Len(t, rec.giveUps, 1)
	assert.Equal(t, GiveUpExhausted, rec.giveUps[0].Reason)
}

func TestBudgetRefusalIsObserved(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(503), keepalivetest.Status(200))
	var rec recorder
	logs := captureLogs(slog.LevelDebug, true)
	c, tr := newTestClient(t, WithRetryBudget(noRetryBudget), // no retries at all
		WithObserver(rec.observer(false)),
		logs.option())
	resp, err := c.Get(s.URL)
	require.NoError(t, err)
	assert.Equal(t, 503, resp.StatusCode)
	readBody(t, resp)

	host := hostOf(t, s.URL)
	require.Len(t, rec.budget, 1)
	assert.Equal(t, host, rec.budget[0].Host)
	assert.Equal(t, 1, rec.budget[0].Attempt)
	require.Len(t, rec.giveUps, 1)
	assert.Equal(t, GiveUpBudget, rec.giveUps[0].Reason)
	assert.Equal(t, 503, rec.giveUps[0].Status)
	assert.Equal(t, []string{"start", "dial", "end", "budget", "giveup"}, rec.order)
	for _, st := range []Stats{tr.Stats(), tr.HostStats()[host]} {
		assert.Equal(t, int64(1), st.BudgetRefusals)
		assert.Equal(t, int64(1), st.GaveUp)
	}
	recs := logs.records(t)
	require.Len(t, recs, 2)
	assert.Equal(t, "keepalive: retry budget refused a retry", recs[0]["msg"])
	assert.Equal(t, "budget refused", recs[1]["reason"])
}

func TestBreakerChangesAreObserved(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(503))
	var rec recorder
	logs := captureLogs(slog.LevelDebug, true)
	c, tr := newTestClient(t, WithBackoff(0, 0),
		WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 2, OpenTimeout: time.Hour}),
		WithObserver(rec.observer(false)),
		logs.option())
	_, err := c.Get(s.URL)
	require.ErrorIs(t, err, ErrCircuitOpen)

	host := hostOf(t, s.URL)
	assert.Equal(t, []BreakerChangeEvent{{Host: host, From: BreakerClosed, To: BreakerOpen}}, rec.breakers)
	assert.Len(t, rec.ends, 2, "the refused attempt was never sent")
	hs := tr.HostStats()[host]
	assert.Equal(t, int64(2), hs.Attempts)
	assert.Equal(t, int64(1), hs.CircuitOpen)
	assert.Equal(t, tr.Stats().CircuitOpen, hs.CircuitOpen)
	assert.Contains(t, logs.String(), `"msg":"keepalive: circuit breaker changed state","host":"`+host+`","from":"closed","to":"open"`)
}

func TestAttemptTimeoutsAndHedgesCountPerHost(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(200).Delay(time.Hour), keepalivetest.Status(200))
	var rec recorder
	c, tr := newTestClient(t, WithBackoff(0, 0), WithAttemptTimeout(50*time.Millisecond), WithObserver(rec.observer(false)))
	resp, err := c.Get(s.URL)
	require.NoError(t, err)
	readBody(t, resp)
	hs := tr.HostStats()[hostOf(t, s.URL)]
	assert.Equal(t, int64(1), hs.AttemptTimeouts)
	assert.Equal(t, tr.Stats().AttemptTimeouts, hs.AttemptTimeouts)
	require.Len(t, rec.ends, 2)
	var te *TimeoutError
	require.ErrorAs(t, rec.ends[0].Err, &te, "the hook sees the attempt's own error")
	assert.Equal(t, "attempt", te.Op)

	h := keepalivetest.NewServer(t, keepalivetest.Status(200).Delay(time.Hour), keepalivetest.Status(200))
	rec = recorder{}
	c, tr = newTestClient(t, WithHedging(10*time.Millisecond, 1), WithObserver(rec.observer(false)))
	resp, err = c.Get(h.URL)
	require.NoError(t, err)
	readBody(t, resp)
	hs = tr.HostStats()[hostOf(t, h.URL)]
	assert.Equal(t, int64(1), hs.Hedges)
	assert.Equal(t, int64(2), hs.Attempts)
	require.Len(t, rec.starts, 2)
	assert.Equal(t, 1, rec.starts[1].Attempt, "a hedge shares its attempt's number")
}

func TestLogsCarryTheEventFields(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(503))
	logs := captureLogs(slog.LevelDebug, true)
	c, _ := newTestClient(t, WithMaxRetries(1), WithBackoff(time.Millisecond, time.Millisecond),
		logs.option())
	u := strings.Replace(s.URL, "http://", "http://user:hunter22@", 1) + "/p?token=secret"
	resp, err := c.Get(u)
	require.NoError(t, err)
	readBody(t, resp)

	recs := logs.records(t)
	require.Len(t, recs, 2)
	retry, giveUp := recs[0], recs[1]
	host := hostOf(t, s.URL)
	assert.Equal(t, "DEBUG", retry["level"])
	assert.Equal(t, "keepalive: retrying", retry["msg"])
	assert.Equal(t, "GET", retry["method"])
	assert.Equal(t, "http://xxxxx:xxxxx@"+host+"/p?token=xxxxx", retry["url"])
	assert.Equal(t, host, retry["host"])
	assert.EqualValues(t, 1, retry["attempt"])
	assert.EqualValues(t, 503, retry["status"])
	assert.Equal(t, "status", retry["reason"])
	wait, err := time.ParseDuration(retry["wait"].(string))
	require.NoError(t, err, "a duration as text")
	assert.Positive(t, wait)
	assert.Equal(t, false, retry["retry_after"])

	assert.Equal(t, "WARN", giveUp["level"])
	assert.Equal(t, "keepalive: giving up", giveUp["msg"])
	assert.Equal(t, "retries exhausted", giveUp["reason"])
	assert.EqualValues(t, 2, giveUp["attempt"])
	assert.NotContains(t, logs.String(), "hunter22")
	assert.NotContains(t, logs.String(), "secret")
}

func TestAttemptTransportSeesEachAttempt(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(503), keepalivetest.Status(503), keepalivetest.Status(200))
	var mu sync.Mutex
	var seen []string
	wrap := func(name string) func(http.RoundTripper) http.RoundTripper {
		return func(next http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				n, ok := AttemptFromContext(r.Context())
				require.True(t, ok)
				mu.Lock()
				seen = append(seen, name+"#"+string(rune('0'+n)))
				mu.Unlock()
				return next.RoundTrip(r)
			})
		}
	}
	c, _ := newTestClient(t, WithBackoff(0, 0), WithAttemptTransport(wrap("inner")), WithAttemptTransport(wrap("outer")))
	resp, err := c.Get(s.URL)
	require.NoError(t, err)
	readBody(t, resp)
	assert.Equal(t, []string{"outer#1", "inner#1", "outer#2", "inner#2", "outer#3", "inner#3"}, seen)

	_, ok := AttemptFromContext(context.Background())
	assert.False(t, ok)
}

func TestAttemptTransportRejectsNil(t *testing.T) {
	_, err := NewTransport(WithAttemptTransport(nil))
	assert.EqualError(t, err, "keepalive: invalid WithAttemptTransport: nil wrap func")
	_, err = NewTransport(WithAttemptTransport(func(http.RoundTripper) http.RoundTripper { return nil }))
	assert.EqualError(t, err, "keepalive: invalid WithAttemptTransport: wrap returned a nil RoundTripper")
}

func TestEventReasonsHaveNames(t *testing.T) {
	for r := GiveUpExhausted; r <= GiveUpBudget; r++ {
		assert.NotEqual(t, "unknown", r.String(), int(r))
	}
	assert.Equal(t, "unknown", GiveUpReason(0).String())
	assert.Equal(t, "error", RetryOnError.String())
	assert.Equal(t, "unknown", RetryReason(0).String())
	assert.Equal(t, "new", ConnNew.String())
	assert.Equal(t, "unknown", ConnUnknown.String())
}

func TestObserverAndHostStatsOverBothProtocols(t *testing.T) {
	forEachProto(t, func(t *testing.T, p proto) {
		s, tlsOpt := newServer(t, p, script(503, 200)...)
		var rec recorder
		c, tr := newTestClient(t, tlsOpt, fastRetries, WithObserver(rec.observer(true)), drainedFirst())
		resp, err := c.Get(s.URL)
		require.NoError(t, err)
		assert.Equal(t, "attempt 2: 200", readBody(t, resp))

		require.Len(t, rec.ends, 2)
		wantProto := map[proto]int{http1: 1, http2: 2}[p]
		assert.Equal(t, wantProto, rec.ends[1].Response.ProtoMajor)
		assert.Equal(t, ConnNew, rec.ends[0].Conn)
		assert.Equal(t, ConnReused, rec.ends[1].Conn)
		require.Len(t, rec.retries, 1)
		assert.Equal(t, 503, rec.retries[0].Status)
		host := hostOf(t, s.URL)
		hs := tr.HostStats()
		require.Contains(t, hs, host)
		want := Stats{Requests: 1, Attempts: 2, Retries: 1, Dials: 1}
		if p != http1 {
			want.TLSHandshakes = 1 // a full handshake: no session to resume yet
		}
		assert.Equal(t, want, hs[host])
		assert.Equal(t, int64(1), hs[host].Reused())
		assert.Equal(t, 1, s.Connections())
	})
}
