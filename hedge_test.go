package keepalive

import (
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The first attempt stalls; the hedge answers, and streams the rest of its
// body only once the stalled attempt has been cancelled: the winner's body
// must survive the cancellation of the loser.
func TestHedgingWinsOverAStalledAttempt(t *testing.T) {
	forEachProto(t, func(t *testing.T, p proto) {
		var hits atomic.Int64
		loserGone := make(chan struct{})
		srv, tlsOpt := newServer(t, p, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
			if hits.Add(1) == 1 {
				<-r.Context().Done() // stalls until the client cancels it
				close(loserGone)
				return
			}
			io.WriteString(w, "hedge ")
			w.(http.Flusher).Flush()
			select {
			case <-loserGone:
			case <-r.Context().Done():
				return
			}
			io.WriteString(w, "won")
		}))
		c, tr := newTestClient(t, tlsOpt, WithHedging(20*time.Millisecond, 1))

		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)

		assert.Equal(t, "hedge won", string(body))
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		st := tr.Stats()
		assert.Equal(t, int64(1), st.Hedges)
		assert.Equal(t, int64(2), st.Attempts)
		assert.Zero(t, st.Retries)
		assert.Equal(t, int64(2), hits.Load())
	})
}

// The first answer wins even when it is the first attempt's: the hedge is
// cancelled.
func TestHedgingCancelsTheHedgeWhenTheFirstAnswers(t *testing.T) {
	var hits atomic.Int64
	hedgeArrived := make(chan struct{})
	hedgeGone := make(chan struct{})
	srv, _ := newServer(t, http1, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 2 {
			close(hedgeArrived)
			<-r.Context().Done()
			close(hedgeGone)
			return
		}
		<-hedgeArrived // the first attempt answers only once the hedge is out
		io.WriteString(w, "first")
	}))
	c, tr := newTestClient(t, WithHedging(20*time.Millisecond, 1))

	resp, err := c.Get(srv.URL)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, "first", string(body))
	<-hedgeGone // the hedge was cancelled: the server saw its connection end
	assert.Equal(t, int64(1), tr.Stats().Hedges)
}

func TestHedgingOnlyForRequestsThatMayBeRetried(t *testing.T) {
	tests := []struct {
		name   string
		method string
		header string
		hedges int64
	}{
		{"a GET is hedged", http.MethodGet, "", 1},
		{"a POST with Idempotency-Key is hedged", http.MethodPost, "Idempotency-Key", 1},
		{"a POST without key is not", http.MethodPost, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hits atomic.Int64
			srv, _ := newServer(t, http1, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				if hits.Add(1) == 1 {
					select { // the first attempt answers late, well past the hedge delay
					case <-time.After(200 * time.Millisecond):
					case <-r.Context().Done():
					}
				}
			}))
			c, tr := newTestClient(t, WithHedging(10*time.Millisecond, 1))
			req, err := http.NewRequest(tt.method, srv.URL, strings.NewReader("body"))
			require.NoError(t, err)
			if tt.header != "" {
				req.Header.Set(tt.header, "k1")
			}

			resp, err := c.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, tt.hedges, tr.Stats().Hedges)
		})
	}
}

func TestHedgesDrawFromTheRetryBudget(t *testing.T) {
	srv, _ := newServer(t, http1, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(100 * time.Millisecond):
		case <-r.Context().Done():
		}
	}))
	c, tr := newTestClient(t, WithHedging(5*time.Millisecond, 3), WithRetryBudget(noRetryBudget))

	resp, err := c.Get(srv.URL)
	require.NoError(t, err)
	resp.Body.Close()
	st := tr.Stats()
	assert.Zero(t, st.Hedges)
	assert.Equal(t, int64(1), st.BudgetRefusals, "refused once, then no more hedges asked for")
	assert.Equal(t, int64(1), st.Attempts)
}

// BenchmarkHedgingTail is the measure: 5% of requests stall 1 s;
// the p99 latency with and without hedging at 50 ms, and the load hedging
// adds. Run it with
//
//	go test -run '^$' -bench HedgingTail -benchtime 1x .
func BenchmarkHedgingTail(b *testing.B) {
	const (
		requests = 1000
		workers  = 16
		stall    = time.Second
	)
	for _, bc := range []struct {
		name string
		opts []Option
	}{
		{"hedging=off", nil},
		{"hedging=50ms", []Option{WithHedging(50*time.Millisecond, 1)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var (
				mu   sync.Mutex
				rng  = rand.New(rand.NewPCG(5, 5))
				hits atomic.Int64
			)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				mu.Lock()
				slow := rng.Float64() < 0.05
				mu.Unlock()
				if slow {
					select {
					case <-time.After(stall):
					case <-r.Context().Done():
					}
				}
			}))
			b.Cleanup(srv.Close)
			c, _ := newTestClient(b, bc.opts...)

			var latencies []time.Duration
			var sent int64
			for b.Loop() {
				hits.Store(0)
				var (
					next atomic.Int64
					wg   sync.WaitGroup
					lmu  sync.Mutex
				)
				for range workers {
					wg.Go(func() {
						for next.Add(1) <= requests {
							start := time.Now()
							resp, err := c.Get(srv.URL)
							if err != nil {
								b.Error(err)
								return
							}
							_, _ = io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
							lmu.Lock()
							latencies = append(latencies, time.Since(start))
							lmu.Unlock()
						}
					})
				}
				wg.Wait()
				sent += hits.Load()
			}
			slices.Sort(latencies)
			q := func(p float64) float64 {
				return float64(latencies[int(p*float64(len(latencies)-1))]) / float64(time.Millisecond)
			}
			b.ReportMetric(q(0.50), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
			b.ReportMetric(100*float64(sent-int64(len(latencies)))/float64(len(latencies)), "extra-load-%")
		})
	}
}

// An outcome worth a retry does not end a hedged attempt while another
// attempt may still answer better.
func TestHedgingWaitsForABetterAnswer(t *testing.T) {
	var hits atomic.Int64
	hedgeArrived, firstDone := make(chan struct{}), make(chan struct{})
	srv, _ := newServer(t, http1, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			<-hedgeArrived
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "first fails")
			close(firstDone)
			return
		}
		close(hedgeArrived)
		select {
		case <-firstDone:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "hedge answers")
	}))
	c, tr := newTestClient(t, WithHedging(10*time.Millisecond, 1))

	resp, err := c.Get(srv.URL)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "hedge answers", string(body))
	st := tr.Stats()
	assert.Equal(t, int64(1), st.Hedges)
	assert.Zero(t, st.Retries, "the hedge answered: no retry needed")
}

// With hedging, an attempt's own deadline cancels the context hedging made
// for it: that must read as an attempt timeout, retried, and counted as a
// failure by the breaker, not as the caller's cancellation.
func TestHedgedAttemptTimeoutIsRetried(t *testing.T) {
	forEachProto(t, func(t *testing.T, p proto) {
		var hits atomic.Int64
		srv, tlsOpt := newServer(t, p, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
			if hits.Add(1) == 1 {
				<-r.Context().Done() // the first attempt stalls until it is abandoned
				return
			}
			_, _ = io.WriteString(w, "ok")
		}))
		c, tr := newTestClient(t, tlsOpt, WithAttemptTimeout(200*time.Millisecond),
			WithHedging(time.Minute, 1), fastRetries, WithProxy(nil),
			WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 100}))
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, "ok", string(b))
		st := tr.Stats()
		assert.Positive(t, st.AttemptTimeouts, "the stalled attempt was abandoned")
		assert.Equal(t, st.AttemptTimeouts, st.Retries, "and each abandoned attempt retried")
	})
}
