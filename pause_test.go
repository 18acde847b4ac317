package keepalive

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pauseServer answers its first request with status and the fields
// header returns for its arrival, and every other with 200. It records
// when the first request arrived, before its answer was written, and the
// arrival of every other request with the instant its client sent it
// (X-Sent). The client can only pause the host after that first answer,
// so a request sent once it has arrives at least the pause after it.
type pauseServer struct {
	*keepalivetest.Server
	status int
	header func(arrived time.Time) http.Header

	mu       sync.Mutex
	asked    time.Time // arrival of the first request, before its answer
	arrivals []arrival
}

type arrival struct {
	sent, at time.Time
}

// pauseTestEpoch is the origin of X-Sent: client and server share the
// process's monotonic clock.
var pauseTestEpoch = time.Now()

func newPauseServer(t *testing.T, status int, header func(time.Time) http.Header, pause time.Duration) *pauseServer {
	s := &pauseServer{status: status, header: header}
	s.Server = keepalivetest.NewServer(t, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		s.mu.Lock()
		if s.asked.IsZero() {
			s.asked = now
			s.mu.Unlock()
			for k, v := range s.header(now) {
				w.Header()[k] = v
			}
			w.WriteHeader(s.status)
			return
		}
		sent, _ := strconv.ParseInt(r.Header.Get("X-Sent"), 10, 64)
		s.arrivals = append(s.arrivals, arrival{sent: pauseTestEpoch.Add(time.Duration(sent)), at: now})
		after := now.Sub(s.asked) >= pause
		s.mu.Unlock()
		if after {
			w.Header().Set("X-After-Pause", "1")
		}
	}))
	return s
}

// fixed is a pauseServer's header func for fields that do not depend on
// the time.
func fixed(h http.Header) func(time.Time) http.Header {
	return func(time.Time) http.Header { return h }
}

// during returns the arrivals within pause of the first answer, and how
// many of them were sent after knew, when the client had read it.
func (s *pauseServer) during(pause time.Duration, knew time.Time) (total, late int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.arrivals {
		if a.at.Sub(s.asked) < pause {
			total++
			if a.sent.After(knew) {
				late++
			}
		}
	}
	return total, late
}

// runWorkers runs n workers, each sending requests one after another
// until one arrives after the pause; it returns the requests that failed
// or did not answer 200, and the requests sent.
func runWorkers(t *testing.T, client *http.Client, url string, n int) (failed, sent int64) {
	var wg sync.WaitGroup
	var nFailed, nSent atomic.Int64
	deadline := time.Now().Add(30 * time.Second)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				req, err := http.NewRequest(http.MethodGet, url, nil)
				if err != nil {
					nFailed.Add(1)
					return
				}
				req.Header.Set("X-Sent", strconv.FormatInt(int64(time.Since(pauseTestEpoch)), 10))
				nSent.Add(1)
				resp, _, err := send(t, client, req)
				if err != nil {
					nFailed.Add(1)
					return
				}
				if resp.StatusCode != http.StatusOK {
					nFailed.Add(1)
					return
				}
				if resp.Header.Get("X-After-Pause") != "" {
					return
				}
			}
			nFailed.Add(1) // never got past the pause
		}()
	}
	wg.Wait()
	return nFailed.Load(), nSent.Load()
}

// TestHostPauseHoldsEveryGoroutine is the measurement of issue 10: 64
// goroutines send requests in a loop to a server that answers the first
// 429 Retry-After: 1. During that second the server sees no request sent
// after the client read the 429, only those already in flight then (at
// most one per goroutine), and every request succeeds. Without the pause,
// the other 63 goroutines keep sending.
func TestHostPauseHoldsEveryGoroutine(t *testing.T) {
	const workers = 64
	const pause = time.Second
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("pause=%v", on), func(t *testing.T) {
			t.Parallel() // a server and a client of its own
			srv := newPauseServer(t, http.StatusTooManyRequests, fixed(http.Header{"Retry-After": {"1"}}), pause)
			var (
				mu     sync.Mutex
				events []HostPauseEvent
				knew   time.Time // the 429 was read, and the host paused
			)
			opts := []Option{WithObserver(Observer{
				OnHostPause: func(e HostPauseEvent) {
					mu.Lock()
					events = append(events, e)
					mu.Unlock()
				},
				OnAttemptEnd: func(e AttemptEndEvent) { // after the pause is set
					if e.Status == http.StatusTooManyRequests {
						mu.Lock()
						knew = time.Now()
						mu.Unlock()
					}
				},
			})}
			if !on {
				opts = append(opts, WithoutHostPause())
			}
			client, tr := newTestClient(t, opts...)

			failed, sent := runWorkers(t, client, srv.URL, workers)
			mu.Lock()
			require.False(t, knew.IsZero(), "no 429")
			total, late := srv.during(pause, knew)
			mu.Unlock()
			t.Logf("requests sent %d; the server saw %d during the pause, %d of them sent after the client read the 429", sent, total, late)
			require.Zero(t, failed, "every request succeeds")

			st := tr.HostStats()[hostKeyOf(t, srv.URL)]
			if !on {
				assert.Greater(t, late, workers, "without the pause the goroutines keep sending")
				assert.Zero(t, st.Pauses)
				assert.Empty(t, events)
				return
			}
			assert.Zero(t, late, "a request sent after the 429 was read arrived during the pause")
			assert.EqualValues(t, 1, st.Pauses)
			assert.Positive(t, st.PauseWaits)
			require.Len(t, events, 1)
			// A 429 pauses the requests with the same rate-limit key:
			// these carry no credentials, so all of them.
			assert.Equal(t, HostPauseEvent{Host: hostKeyOf(t, srv.URL), Status: http.StatusTooManyRequests, Wait: pause, Source: PauseRetryAfter, PerKey: true}, events[0])
		})
	}
}

func hostKeyOf(t *testing.T, rawURL string) string {
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	require.NoError(t, err)
	return hostKey(req.URL)
}

// TestHostPauseDeadline: a request whose deadline ends before the host's
// pause fails at once with a HostPausedError, unsent; the request that
// got the 429 gets it back; a cancelled wait ends at once.
func TestHostPauseDeadline(t *testing.T) {
	srv := newPauseServer(t, http.StatusTooManyRequests, fixed(http.Header{"Retry-After": {"10"}}), 10*time.Second)
	client, tr := newTestClient(t)
	get := func(ctx context.Context) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		require.NoError(t, err)
		return client.Do(req)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	resp, err := get(ctx) // 10 s does not fit its deadline: the 429 comes back at once
	require.NoError(t, err)
	readBody(t, resp)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)

	_, err = get(ctx)
	require.ErrorIs(t, err, ErrHostPaused)
	var pe *HostPausedError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, hostKeyOf(t, srv.URL), pe.Host)
	assert.True(t, pe.Wait > 5*time.Second && pe.Wait <= 10*time.Second, "wait %v", pe.Wait)
	assert.NotErrorIs(t, err, context.DeadlineExceeded, "it did not wait for the deadline")
	assert.EqualValues(t, 1, srv.Requests(), "the server saw nothing more")

	// No deadline: it waits, until cancelled.
	cctx, ccancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := get(cctx)
		done <- err
	}()
	key := hostKeyOf(t, srv.URL)
	require.True(t, poll(10*time.Second, func() bool { return tr.HostStats()[key].PauseWaits >= 2 }), "the request never waited")
	ccancel()
	require.ErrorIs(t, <-done, context.Canceled)
	assert.EqualValues(t, 1, srv.Requests())
	st := tr.HostStats()[key]
	assert.EqualValues(t, 1, st.Pauses)
	assert.EqualValues(t, 2, st.PauseWaits)
	assert.EqualValues(t, 1, st.Attempts)
}

// TestHostPauseOptOut: without the pause, the request after a 429 is sent.
func TestHostPauseOptOut(t *testing.T) {
	srv := newPauseServer(t, http.StatusTooManyRequests, fixed(http.Header{"Retry-After": {"10"}}), 10*time.Second)
	client, tr := newTestClient(t, WithoutHostPause(), WithMaxRetries(0))
	requireStatuses(t, client, srv.URL, http.StatusTooManyRequests, http.StatusOK)
	assert.EqualValues(t, 2, srv.Requests())
	assert.Zero(t, tr.Stats().Pauses)
	assert.Zero(t, tr.Stats().PauseWaits)
}

// TestHostPauseRetryAfterPastCap: a Retry-After past WithMaxRetryAfter
// pauses nothing: the next request is sent at once.
func TestHostPauseRetryAfterPastCap(t *testing.T) {
	srv := newPauseServer(t, http.StatusServiceUnavailable, fixed(http.Header{"Retry-After": {"5"}}), 5*time.Second)
	client, tr := newTestClient(t, WithMaxRetryAfter(time.Second))
	requireStatuses(t, client, srv.URL, http.StatusServiceUnavailable, http.StatusOK)
	assert.EqualValues(t, 2, srv.Requests())
	assert.Zero(t, tr.Stats().Pauses)
	assert.Zero(t, tr.Stats().PauseWaits)
	assert.Zero(t, tr.Stats().Retries)
}

// TestHostPauseQuotaFields: a successful response whose rate-limit fields
// say no quota is left pauses the host for the reset it names; the next
// request, with retries or without, arrives no earlier.
func TestHostPauseQuotaFields(t *testing.T) {
	t.Parallel() // waits out the pauses
	cases := []struct {
		name   string
		header func(arrived time.Time) http.Header
		pause  time.Duration // the least the next request waits
		src    PauseSource
		opts   []Option
	}{
		{"RateLimit", func(time.Time) http.Header {
			return http.Header{"Ratelimit": {`"burst";r=5;t=9, "default";r=0;t=1`}, "Ratelimit-Policy": {`"default";q=10;w=1`}}
		}, time.Second, PauseRateLimit, nil},
		{"RateLimit draft 07", func(time.Time) http.Header {
			return http.Header{"Ratelimit": {"limit=10, remaining=0, reset=1"}}
		}, time.Second, PauseRateLimit, []Option{WithMaxRetries(0)}},
		{"RateLimit-Remaining", func(time.Time) http.Header {
			return http.Header{"Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {"1"}}
		}, time.Second, PauseRateLimit, nil},
		{"X-RateLimit seconds", func(time.Time) http.Header {
			return http.Header{"X-Ratelimit-Remaining": {"0"}, "X-Ratelimit-Reset": {"0.3"}}
		}, 300 * time.Millisecond, PauseXRateLimit, nil},
		// A reset at a Unix time already past when the response reaches
		// the client pauses nothing; 3 s leaves room for a loaded machine.
		{"X-RateLimit Unix time", func(arrived time.Time) http.Header {
			at := float64(arrived.Add(3*time.Second).UnixNano()) / 1e9
			return http.Header{"X-Ratelimit-Remaining": {"0"}, "X-Ratelimit-Reset": {strconv.FormatFloat(at, 'f', 3, 64)}}
		}, 2995 * time.Millisecond, PauseXRateLimit, []Option{WithMaxRetries(0)}},
		{"X-RateLimit quota left", func(time.Time) http.Header {
			return http.Header{"X-Ratelimit-Remaining": {"1"}, "X-Ratelimit-Reset": {"5"}}
		}, 0, 0, nil},
		{"RateLimit quota left", func(time.Time) http.Header {
			return http.Header{"Ratelimit": {`"default";r=1;t=5`}}
		}, 0, 0, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := newPauseServer(t, http.StatusOK, c.header, c.pause)
			var events []HostPauseEvent
			client, tr := newTestClient(t, append(c.opts, WithObserver(Observer{OnHostPause: func(e HostPauseEvent) { events = append(events, e) }}))...)
			for range 2 {
				resp, _, err := get(t, client, srv.URL)
				require.NoError(t, err)
				require.Equal(t, http.StatusOK, resp.StatusCode)
			}
			srv.mu.Lock()
			waited := srv.arrivals[0].at.Sub(srv.asked)
			srv.mu.Unlock()
			st := tr.Stats()
			if c.src == 0 {
				assert.Zero(t, st.Pauses)
				assert.Zero(t, st.PauseWaits)
				assert.Empty(t, events)
				return
			}
			assert.GreaterOrEqual(t, waited, c.pause, "the second request came too early")
			assert.EqualValues(t, 1, st.Pauses)
			assert.EqualValues(t, 1, st.PauseWaits)
			require.Len(t, events, 1)
			assert.Equal(t, c.src, events[0].Source)
			assert.Equal(t, http.StatusOK, events[0].Status)
		})
	}
}

// TestHostPauseOneWait: the request that got the 429 waits once (its
// Retry-After and the host's pause are the same wait), and a hedged
// request sends no hedge while the host is paused.
func TestHostPauseOneWait(t *testing.T) {
	var (
		n     atomic.Int64
		mu    sync.Mutex
		times [3]time.Time
	)
	srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		if i <= 3 {
			mu.Lock()
			times[i-1] = time.Now()
			mu.Unlock()
		}
		if i == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	var retries []RetryEvent
	client, tr := newTestClient(t, WithHedging(20*time.Millisecond, 1),
		WithObserver(Observer{OnRetry: func(e RetryEvent) { retries = append(retries, e) }}))
	start := time.Now()
	resp, _, err := get(t, client, srv.URL)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	took := time.Since(start)
	require.EqualValues(t, 2, n.Load(), "one retry, and no hedge during the pause")
	mu.Lock()
	assert.GreaterOrEqual(t, times[1].Sub(times[0]), time.Second)
	mu.Unlock()
	assert.Less(t, took, 2*time.Second, "one wait, not two")
	require.Len(t, retries, 1)
	assert.Equal(t, time.Second, retries[0].Wait)
	assert.True(t, retries[0].RetryAfter)
	st := tr.Stats()
	assert.EqualValues(t, 1, st.Pauses)
	assert.Zero(t, st.PauseWaits, "the retry was sent as the pause ended: it did not wait again")
	assert.Zero(t, st.Hedges)
}

// TestHostPauseOverflowNeverPaused: the hosts past HostStatsLimit share a
// state that is never paused.
func TestHostPauseOverflowNeverPaused(t *testing.T) {
	tr := newTestTransport(t)
	req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	resp := &http.Response{StatusCode: http.StatusServiceUnavailable, Header: http.Header{"Retry-After": {"5"}}}
	tr.hosts.overflow.setPause(req, resp)
	assert.Zero(t, tr.hosts.overflow.pausedUntil.Load())
	h := tr.hosts.forAddr("example.com:80")
	h.setPause(req, resp)
	assert.InDelta(t, 5*time.Second, h.pauseLeft(req, monotonic()), float64(100*time.Millisecond))
}

// TestDecideFoldsPause: the policy's wait is the longer of its own and
// what is left of the host's pause, and the deadline check covers it.
func TestDecideFoldsPause(t *testing.T) {
	p := newPolicy(defaultOptions())
	req, err := http.NewRequest(http.MethodGet, "http://127.0.0.1/", nil)
	require.NoError(t, err)
	resp := &http.Response{StatusCode: http.StatusBadGateway, Header: http.Header{}}
	o := attemptOutcome{ctx: context.Background(), req: req, resp: resp, attempt: 1, replayable: true, paused: 3 * time.Second}
	d := p.decide(o, fuzzNow, p.newBackoff())
	assert.Equal(t, verdictRetry, d.verdict)
	assert.Equal(t, 3*time.Second, d.wait)
	assert.True(t, d.retryAfter)

	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(time.Second))
	defer cancel()
	o.ctx = ctx
	d = p.decide(o, time.Now(), p.newBackoff())
	assert.Equal(t, verdictGiveUp, d.verdict)
	assert.Equal(t, GiveUpDeadline, d.reason)
}

func TestPauseOf(t *testing.T) {
	now := func() time.Time { return fuzzNow }
	// Retry-After first, then the quota fields; only on 429 and 503.
	h := http.Header{"Retry-After": {"2"}, "X-Ratelimit-Remaining": {"0"}, "X-Ratelimit-Reset": {"9"}}
	for _, c := range []struct {
		status int
		want   time.Duration
		src    PauseSource
	}{
		{429, 2 * time.Second, PauseRetryAfter},
		{503, 2 * time.Second, PauseRetryAfter},
		{500, 9 * time.Second, PauseXRateLimit},
		{200, 9 * time.Second, PauseXRateLimit},
	} {
		d, src := pauseOf(&http.Response{StatusCode: c.status, Header: h}, now)
		assert.Equal(t, c.src, src, "%d", c.status)
		assert.Equal(t, c.want, d, "%d", c.status)
	}
	d, src := pauseOf(&http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/plain"}}}, now)
	assert.Zero(t, d)
	assert.Zero(t, src)
	_, src = pauseOf(&http.Response{StatusCode: 429}, now) // nil Header
	assert.Zero(t, src)
	assert.True(t, errors.Is(&HostPausedError{Host: "a:80", Wait: time.Second}, ErrHostPaused))
}

// requireStatuses sends a GET to url for each status in want, one after
// the other, and requires each to be answered with it.
func requireStatuses(t *testing.T, client *http.Client, url string, want ...int) {
	t.Helper()
	for _, w := range want {
		resp, _, err := get(t, client, url)
		require.NoError(t, err)
		require.Equal(t, w, resp.StatusCode)
	}
}
