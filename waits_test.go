// This file holds the tests of how long the client waits before it sends
// again: the backoff, Retry-After, and the caller's deadline, which no
// wait and no attempt may outlast.

package keepalive

import (
	"context"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBackoffIsJitteredAndBounded(t *testing.T) {
	p := policy{initial: 100 * time.Millisecond, max: 400 * time.Millisecond}
	b := p.newBackoff()
	var waits []time.Duration
	for range 6 {
		waits = append(waits, p.backoffWait(b))
	}
	intervals := []time.Duration{100, 200, 400, 400, 400, 400}
	for i, w := range waits {
		base := intervals[i] * time.Millisecond
		assert.GreaterOrEqual(t, w, base/2, "wait %d", i)
		assert.LessOrEqual(t, w, min(base*3/2, p.max), "wait %d", i)
	}
	// Jitter: 200 draws of the first wait are not all the same.
	seen := map[time.Duration]bool{}
	for range 200 {
		seen[p.backoffWait(p.newBackoff())] = true
	}
	assert.Greater(t, len(seen), 10)
}

func TestRetryAfter(t *testing.T) {
	t.Parallel() // waits out Retry-After
	retryAfter := func(v string) keepalivetest.Step { return keepalivetest.Status(503).RetryAfter(v) }
	ok := keepalivetest.Status(200).Body("ok")
	t.Run("the client waits as asked", func(t *testing.T) {
		t.Parallel()
		srv := keepalivetest.NewServer(t, retryAfter("1"), ok)
		c, _ := newTestClient(t, fastRetries)
		start := time.Now()
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, "ok", readBody(t, resp))
		assert.GreaterOrEqual(t, time.Since(start), time.Second)
	})
	t.Run("an HTTP-date is honoured", func(t *testing.T) {
		t.Parallel()
		srv := keepalivetest.NewServer(t, retryAfter(time.Now().Add(2*time.Second).UTC().Format(http.TimeFormat)), ok)
		c, _ := newTestClient(t, fastRetries)
		start := time.Now()
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, "ok", readBody(t, resp))
		assert.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond) // the date has second precision
	})
	t.Run("garbage falls back to backoff", func(t *testing.T) {
		srv := keepalivetest.NewServer(t, retryAfter("tomorrow-ish"), ok)
		c, _ := newTestClient(t, fastRetries)
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, "ok", readBody(t, resp))
	})
	t.Run("past the cap the response is returned at once", func(t *testing.T) {
		srv := keepalivetest.NewServer(t, retryAfter("3600"), ok)
		c, tr := newTestClient(t, fastRetries)
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode)
		assert.Equal(t, "3600", resp.Header.Get("Retry-After"))
		resp.Body.Close()
		assert.EqualValues(t, 1, tr.Stats().Attempts)
		assert.EqualValues(t, 1, tr.Stats().GaveUp)
	})
	t.Run("past the context deadline the response is returned at once", func(t *testing.T) {
		srv := keepalivetest.NewServer(t, retryAfter("20"), ok)
		c, tr := newTestClient(t, fastRetries)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode)
		resp.Body.Close()
		assert.EqualValues(t, 1, tr.Stats().Attempts)
		assert.Equal(t, 1, srv.Requests())
		assert.NoError(t, ctx.Err(), "returned well before the deadline")
	})
	t.Run("a cap of zero returns any Retry-After at once", func(t *testing.T) {
		srv := keepalivetest.NewServer(t, retryAfter("1"), ok)
		c, tr := newTestClient(t, fastRetries, WithMaxRetryAfter(0))
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode)
		resp.Body.Close()
		assert.EqualValues(t, 1, tr.Stats().Attempts)
	})
}

func TestCancelDuringBackoffReturnsAtOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := keepalivetest.NewServer(t, keepalivetest.Status(503))
	// The client logs the decision to retry before it waits: cancel there.
	logs := captureLogs(slog.LevelDebug, false)
	logs.onRecord = func(r slog.Record) {
		if r.Message == "keepalive: retrying" {
			cancel()
		}
	}
	c, tr := newTestClient(t, WithBackoff(time.Hour, time.Hour), logs.option())
	req, err := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := c.Do(req)
		done <- err
	}()
	err = recv(t, done, "the end of an hour-long backoff that was cancelled")
	require.ErrorIs(t, err, context.Canceled)
	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 503, re.Status)
	assert.EqualValues(t, 1, tr.Stats().Attempts)
}

func TestRetryAfterOnlyOn429And503(t *testing.T) {
	for _, code := range []int{429, 503, 500} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			srv := keepalivetest.NewServer(t, keepalivetest.Status(code).RetryAfter("3600"), keepalivetest.Status(200))
			c, tr := newTestClient(t, fastRetries)
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			resp.Body.Close()
			if code == 500 { // Retry-After means nothing here: the backoff applies
				assert.Equal(t, 200, resp.StatusCode)
				assert.EqualValues(t, 2, tr.Stats().Attempts)
				return
			}
			assert.Equal(t, code, resp.StatusCode, "an hour is past the cap: returned at once")
			assert.EqualValues(t, 1, tr.Stats().Attempts)
		})
	}
}

// Waits of absurd length neither overflow nor outlast the deadline: a
// wait that cannot fit the caller's deadline returns the response at once.
func TestHugeWaitsDoNotOverflow(t *testing.T) {
	tests := []struct {
		name string
		step keepalivetest.Step
		opt  Option
	}{
		{"a Retry-After past any duration under WithMaxRetryAfter(MaxInt64) returns the 503",
			keepalivetest.Status(http.StatusServiceUnavailable).RetryAfter("99999999999"), WithMaxRetryAfter(math.MaxInt64)},
		{"WithBackoff(MaxInt64, MaxInt64) does not retry at once but returns the 503",
			keepalivetest.Status(http.StatusServiceUnavailable), WithBackoff(math.MaxInt64, math.MaxInt64)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := keepalivetest.NewServer(t, tt.step)
			c, _ := newTestClient(t, WithProxy(nil), tt.opt)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			require.NoError(t, err)
			resp, err := c.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
			assert.Equal(t, 1, srv.Requests(), "requests the server saw")
		})
	}
}

// A retry is sent only if the deadline leaves time for the wait and another
// attempt as long as the last one: a 503 that took 600 ms, with 400 ms left,
// comes back at once instead of a DeadlineExceeded 400 ms later.
func TestNoAttemptThatTheCallerDeadlineCannotCover(t *testing.T) {
	srv := keepalivetest.NewServer(t, keepalivetest.Status(http.StatusServiceUnavailable).Delay(600*time.Millisecond)) // a slow failure
	c, tr := newTestClient(t, WithBackoff(0, 0))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	require.NoError(t, err)

	resp, err := c.Do(req)

	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, 1, srv.Requests())
	assert.Zero(t, tr.Stats().Retries)
	assert.NoError(t, ctx.Err(), "returned before the deadline")
}
