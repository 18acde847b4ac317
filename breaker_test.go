package keepalive

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/sony/gobreaker/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// statusServer answers with the status in *code.
func statusServer(t *testing.T, code *atomic.Int64) *keepalivetest.Server {
	return handlerServer(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(int(code.Load())) })
}

func TestBreakerStateNamesGobreakersStates(t *testing.T) {
	tests := []struct {
		give gobreaker.State
		want BreakerState
	}{
		{gobreaker.StateClosed, BreakerClosed},
		{gobreaker.StateOpen, BreakerOpen},
		{gobreaker.StateHalfOpen, BreakerHalfOpen},
	}
	for _, tt := range tests {
		t.Run("gobreaker's "+tt.give.String()+" is "+tt.want.String(), func(t *testing.T) {
			assert.Equal(t, tt.want, breakerState(tt.give))
			assert.Equal(t, tt.give.String(), tt.want.String(), "the logged strings are gobreaker's")
		})
	}
	assert.Equal(t, "unknown", BreakerState(9).String())
}

func TestCircuitBreakerOpensAfterConsecutiveFailures(t *testing.T) {
	var code atomic.Int64
	code.Store(http.StatusServiceUnavailable)
	srv := statusServer(t, &code)
	c, tr := newTestClient(t, WithBackoff(0, 0),
		WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 3, OpenTimeout: time.Hour}))

	// Attempts 1-3 fail and open the circuit; the 4th is refused.
	_, _, err := get(t, c, srv.URL)
	require.ErrorIs(t, err, ErrCircuitOpen)
	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 4, re.Attempts)
	assert.Equal(t, 3, srv.Requests())

	// While open, requests fail at once, without reaching the server.
	_, _, err = get(t, c, srv.URL)
	require.ErrorIs(t, err, ErrCircuitOpen)
	var coe *CircuitOpenError
	require.ErrorAs(t, err, &coe)
	assert.Equal(t, hostOf(t, srv.URL), coe.Host)
	assert.Contains(t, err.Error(), "keepalive: circuit open for "+coe.Host)
	assert.Equal(t, 3, srv.Requests())
	assert.Equal(t, int64(2), tr.Stats().CircuitOpen)
}

func TestCircuitBreakerHalfOpensAndCloses(t *testing.T) {
	const openFor = 50 * time.Millisecond
	var code atomic.Int64
	code.Store(http.StatusBadGateway)
	srv := statusServer(t, &code)
	c, _ := newTestClient(t, WithMaxRetries(0),
		WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 2, OpenTimeout: openFor}))

	for range 2 {
		resp, _, err := get(t, c, srv.URL)
		require.NoError(t, err)
		assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	}
	_, _, err := get(t, c, srv.URL)
	require.ErrorIs(t, err, ErrCircuitOpen)

	waitOut(2 * openFor) // the condition under test: the open period ends
	// The probe fails: open again.
	resp, _, err := get(t, c, srv.URL)
	require.NoError(t, err)
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	_, _, err = get(t, c, srv.URL)
	require.ErrorIs(t, err, ErrCircuitOpen)
	assert.Equal(t, 3, srv.Requests())

	waitOut(2 * openFor)
	code.Store(http.StatusOK) // the host recovered: the probe closes the circuit
	for i := range 5 {
		resp, _, err := get(t, c, srv.URL)
		require.NoError(t, err, "request %d after recovery", i)
		assert.Equal(t, http.StatusOK, resp.StatusCode)
	}
	assert.Equal(t, 8, srv.Requests())
}

func TestCircuitBreakerFailureRatio(t *testing.T) {
	var n atomic.Int64
	srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%2 == 0 { // every other request fails: never 2 in a row
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	c, _ := newTestClient(t, WithMaxRetries(0), WithCircuitBreaker(CircuitBreaker{
		ConsecutiveFailures: 1000, FailureRatio: 0.5, MinRequests: 10, OpenTimeout: time.Hour,
	}))

	var opened int
	for i := range 20 {
		if _, _, err := get(t, c, srv.URL); err != nil {
			require.ErrorIs(t, err, ErrCircuitOpen)
			opened = i
			break
		}
	}
	assert.Equal(t, 10, opened, "opens once 10 attempts were counted, half failed")
	assert.Equal(t, 10, srv.Requests())
}

func TestCircuitBreakerCountsOnlyFailures(t *testing.T) {
	tests := []struct {
		name string
		give int
	}{
		{"a 404 is an answer, not a failure", http.StatusNotFound},
		{"a 200 is a success", http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var code atomic.Int64
			code.Store(int64(tt.give))
			srv := statusServer(t, &code)
			c, _ := newTestClient(t, WithMaxRetries(0),
				WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 1, OpenTimeout: time.Hour}))
			for range 5 {
				resp, _, err := get(t, c, srv.URL)
				require.NoError(t, err)
				assert.Equal(t, tt.give, resp.StatusCode)
			}
			assert.Equal(t, 5, srv.Requests())
		})
	}
}

func TestCircuitBreakerIsPerHost(t *testing.T) {
	var bad, good atomic.Int64
	bad.Store(http.StatusServiceUnavailable)
	good.Store(http.StatusOK)
	badSrv := statusServer(t, &bad)
	goodSrv := statusServer(t, &good)
	c, _ := newTestClient(t, WithMaxRetries(0),
		WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 1, OpenTimeout: time.Hour}))

	_, _, err := get(t, c, badSrv.URL)
	require.NoError(t, err)
	_, _, err = get(t, c, badSrv.URL)
	require.ErrorIs(t, err, ErrCircuitOpen)

	resp, _, err := get(t, c, goodSrv.URL)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
}

// A request its caller cancelled says nothing about the host.
func TestCircuitBreakerIgnoresCallerCancellation(t *testing.T) {
	var hits atomic.Int64
	arrived := make(chan struct{}, 1)
	srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			arrived <- struct{}{}
			<-r.Context().Done()
		}
	})
	c, _ := newTestClient(t, WithMaxRetries(0),
		WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 1, OpenTimeout: time.Hour}))

	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	require.NoError(t, err)
	go func() { <-arrived; cancel() }()
	_, err = c.Do(req)
	require.ErrorIs(t, err, context.Canceled)

	resp, _, err := get(t, c, srv.URL)
	require.NoError(t, err, "the circuit stayed closed")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
}

// A hedge refused by a half-open breaker must not win over the probe it
// hedges: the probe's success is what closes the breaker again.
func TestHedgedProbeClosesTheBreaker(t *testing.T) {
	const (
		openFor    = 50 * time.Millisecond
		hedgeDelay = 10 * time.Millisecond
		latency    = 40 * time.Millisecond // above the hedge delay: every probe is hedged
	)
	var healthy atomic.Bool
	srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		timer := time.NewTimer(latency)
		defer timer.Stop()
		select {
		case <-timer.C:
			_, _ = io.WriteString(w, "ok")
		case <-r.Context().Done():
		}
	})
	c, _ := newTestClient(t, WithProxy(nil), WithHedging(hedgeDelay, 1), WithMaxRetries(1),
		WithBackoff(0, 0), WithoutRetryBudget(),
		WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 2, OpenTimeout: openFor}))

	get := func() (int, error) {
		resp, err := c.Get(srv.URL)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	t.Run("a failing host trips the breaker", func(t *testing.T) {
		tripped := false
		for range 5 {
			if _, err := get(); errors.Is(err, ErrCircuitOpen) {
				tripped = true
				break
			}
		}
		require.True(t, tripped, "the breaker never opened")
	})

	t.Run("once the host recovers, hedged requests close the breaker and succeed", func(t *testing.T) {
		healthy.Store(true)
		const requests = 20
		ok := 0
		var lastErr error
		for range requests {
			status, err := get()
			if err == nil && status == http.StatusOK {
				ok++
				continue
			}
			lastErr = err
			if errors.Is(err, ErrCircuitOpen) {
				waitOut(openFor) // the breaker's open timeout passing is the behaviour under test
			}
		}
		assert.GreaterOrEqual(t, ok, 15, "%d of %d requests succeeded after the host recovered; last error: %v",
			ok, requests, lastErr)
	})
}
