package keepalive

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// statusServer answers with the status in *code and counts requests.
func statusServer(t *testing.T, code *atomic.Int64) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(int(code.Load()))
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func getStatus(t *testing.T, c *http.Client, url string) (int, error) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
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
	srv, hits := statusServer(t, &code)
	c, tr := newTestClient(t, WithBackoff(0, 0),
		WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 3, OpenTimeout: time.Hour}))

	// Attempts 1-3 fail and open the circuit; the 4th is refused.
	_, err := getStatus(t, c, srv.URL)
	require.ErrorIs(t, err, ErrCircuitOpen)
	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 4, re.Attempts)
	assert.Equal(t, int64(3), hits.Load())

	// While open, requests fail at once, without reaching the server.
	_, err = getStatus(t, c, srv.URL)
	require.ErrorIs(t, err, ErrCircuitOpen)
	var coe *CircuitOpenError
	require.ErrorAs(t, err, &coe)
	assert.Equal(t, srv.Listener.Addr().String(), coe.Host)
	assert.Contains(t, err.Error(), "keepalive: circuit open for "+coe.Host)
	assert.Equal(t, int64(3), hits.Load())
	assert.Equal(t, int64(2), tr.Stats().CircuitOpen)
}

func TestCircuitBreakerHalfOpensAndCloses(t *testing.T) {
	const openFor = 50 * time.Millisecond
	var code atomic.Int64
	code.Store(http.StatusBadGateway)
	srv, hits := statusServer(t, &code)
	c, _ := newTestClient(t, WithMaxRetries(0),
		WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 2, OpenTimeout: openFor}))

	for range 2 {
		status, err := getStatus(t, c, srv.URL)
		require.NoError(t, err)
		assert.Equal(t, http.StatusBadGateway, status)
	}
	_, err := getStatus(t, c, srv.URL)
	require.ErrorIs(t, err, ErrCircuitOpen)

	<-time.After(2 * openFor) // the condition under test: the open period ends
	// The probe fails: open again.
	status, err := getStatus(t, c, srv.URL)
	require.NoError(t, err)
	assert.Equal(t, http.StatusBadGateway, status)
	_, err = getStatus(t, c, srv.URL)
	require.ErrorIs(t, err, ErrCircuitOpen)
	assert.Equal(t, int64(3), hits.Load())

	<-time.After(2 * openFor)
	code.Store(http.StatusOK) // the host recovered: the probe closes the circuit
	for i := range 5 {
		status, err := getStatus(t, c, srv.URL)
		require.NoError(t, err, "request %d after recovery", i)
		assert.Equal(t, http.StatusOK, status)
	}
	assert.Equal(t, int64(8), hits.Load())
}

func TestCircuitBreakerFailureRatio(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%2 == 0 { // every other request fails: never 2 in a row
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	t.Cleanup(srv.Close)
	c, _ := newTestClient(t, WithMaxRetries(0), WithCircuitBreaker(CircuitBreaker{
		ConsecutiveFailures: 1000, FailureRatio: 0.5, MinRequests: 10, OpenTimeout: time.Hour,
	}))

	var opened int
	for i := range 20 {
		if _, err := getStatus(t, c, srv.URL); err != nil {
			require.ErrorIs(t, err, ErrCircuitOpen)
			opened = i
			break
		}
	}
	assert.Equal(t, 10, opened, "opens once 10 attempts were counted, half failed")
	assert.Equal(t, int64(10), n.Load())
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
			srv, hits := statusServer(t, &code)
			c, _ := newTestClient(t, WithMaxRetries(0),
				WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 1, OpenTimeout: time.Hour}))
			for range 5 {
				status, err := getStatus(t, c, srv.URL)
				require.NoError(t, err)
				assert.Equal(t, tt.give, status)
			}
			assert.Equal(t, int64(5), hits.Load())
		})
	}
}

func TestCircuitBreakerIsPerHost(t *testing.T) {
	var bad, good atomic.Int64
	bad.Store(http.StatusServiceUnavailable)
	good.Store(http.StatusOK)
	badSrv, _ := statusServer(t, &bad)
	goodSrv, _ := statusServer(t, &good)
	c, _ := newTestClient(t, WithMaxRetries(0),
		WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 1, OpenTimeout: time.Hour}))

	_, err := getStatus(t, c, badSrv.URL)
	require.NoError(t, err)
	_, err = getStatus(t, c, badSrv.URL)
	require.ErrorIs(t, err, ErrCircuitOpen)

	status, err := getStatus(t, c, goodSrv.URL)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, status)
}

// A request its caller cancelled says nothing about the host.
func TestCircuitBreakerIgnoresCallerCancellation(t *testing.T) {
	var hits atomic.Int64
	arrived := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			arrived <- struct{}{}
			<-r.Context().Done()
		}
	}))
	t.Cleanup(srv.Close)
	c, _ := newTestClient(t, WithMaxRetries(0),
		WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 1, OpenTimeout: time.Hour}))

	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	require.NoError(t, err)
	go func() { <-arrived; cancel() }()
	_, err = c.Do(req)
	require.ErrorIs(t, err, context.Canceled)

	status, err := getStatus(t, c, srv.URL)
	require.NoError(t, err, "the circuit stayed closed")
	assert.Equal(t, http.StatusOK, status)
}
