package keepalive

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRetryBudgetWindow(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	const host = "example.test:80"

	t.Run("a quiet host gets the floor, then is refused", func(t *testing.T) {
		b := newTestBudget(budgetConfig{ratio: 0.2, window: 10 * time.Second, minPerSecond: 10})
		for i := range 100 {
			require.True(t, b.withdraw(host, t0), "retry %d within the floor of 10/s x 10 s", i+1)
		}
		assert.False(t, b.withdraw(host, t0), "the 101st retry is past the floor")
	})

	t.Run("a full outage gets the floor per window, and no more", func(t *testing.T) {
		// No success to earn retries: 10,000 failed requests 1 ms apart,
		// all in one window, get the floor of 10/s x 10 s and no more.
		b := newTestBudget(defaultBudgetConfig())
		allowed := 0
		for i := range 10_000 {
			if b.withdraw(host, t0.Add(time.Duration(i)*time.Millisecond)) {
				allowed++
			}
		}
		assert.Equal(t, 100, allowed, "10,000 requests, 100 retries: 1.01 attempts per request")
		// The next window gets the floor again, however its retries bunch
		// up: all at once here.
		allowed = 0
		for range 10_000 {
			if b.withdraw(host, t0.Add(10*time.Second)) {
				allowed++
			}
		}
		assert.Equal(t, 100, allowed)
	})

	t.Run("successes earn a fifth of a retry each", func(t *testing.T) {
		b := newTestBudget(budgetConfig{ratio: 0.2, window: 10 * time.Second})
		for range 100 {
			b.deposit(host, t0)
		}
		for i := range 20 {
			require.True(t, b.withdraw(host, t0.Add(time.Duration(i)*100*time.Millisecond)), "retry %d", i+1)
		}
		assert.False(t, b.withdraw(host, t0.Add(2*time.Second)), "21 retries for 100 successes is past 20%")
	})

	t.Run("an outage after a healthy spell spends what the window's successes earned, then stops", func(t *testing.T) {
		b := newTestBudget(budgetConfig{ratio: 0.2, window: 10 * time.Second}) // no floor
		for range 1000 {
			b.deposit(host, t0) // healthy: 1,000 successes
		}
		allowed := 0
		for i := range 5000 { // then the host fails everything, from t0+1s
			if b.withdraw(host, t0.Add(time.Second+time.Duration(i)*time.Millisecond)) {
				allowed++
			}
		}
		assert.Equal(t, 200, allowed, "a fifth of the successes still in the window")
		assert.False(t, b.withdraw(host, t0.Add(10*time.Second)), "the successes of t0 have left the window")
		assert.False(t, b.withdraw(host, t0.Add(time.Hour)), "no success, no floor: no retry, ever")
	})

	t.Run("deposits leave the window after it", func(t *testing.T) {
		b := newTestBudget(budgetConfig{ratio: 1, window: 2 * time.Second})
		for range 5 {
			b.deposit(host, t0)
		}
		assert.True(t, b.withdraw(host, t0.Add(1999*time.Millisecond)), "still within 2 s")
		assert.False(t, b.withdraw(host, t0.Add(2*time.Second)), "the deposits of t0 have left the window")
		// The retry at 1.999 s is still in the window: two new deposits
		// pay for it and for one more.
		b.deposit(host, t0.Add(2*time.Second))
		b.deposit(host, t0.Add(2*time.Second))
		assert.True(t, b.withdraw(host, t0.Add(2*time.Second)), "new deposits earn new retries")
		assert.False(t, b.withdraw(host, t0.Add(2*time.Second)))
	})

	t.Run("withdrawals leave the window too", func(t *testing.T) {
		b := newTestBudget(budgetConfig{window: 3 * time.Second, minPerSecond: 1}) // floor 3
		for range 3 {
			require.True(t, b.withdraw(host, t0))
		}
		assert.False(t, b.withdraw(host, t0.Add(2*time.Second)))
		assert.True(t, b.withdraw(host, t0.Add(3*time.Second)), "the withdrawals of t0 expired")
	})

	t.Run("hosts have separate budgets", func(t *testing.T) {
		b := newTestBudget(budgetConfig{window: time.Second, minPerSecond: 1})
		assert.True(t, b.withdraw("a.test:80", t0))
		assert.False(t, b.withdraw("a.test:80", t0))
		assert.True(t, b.withdraw("b.test:80", t0))
	})

	t.Run("a lap of the ring later a bucket is stale, not counted", func(t *testing.T) {
		b := newTestBudget(budgetConfig{ratio: 1, window: 2 * time.Second})
		b.deposit(host, t0)
		later := t0.Add(time.Hour) // same ring slot, another second
		assert.False(t, b.withdraw(host, later))
	})

	t.Run("a deposit a lap older than its bucket is dropped, not counted over the newer second", func(t *testing.T) {
		// Deposits are dated when the attempt that succeeded was sent; one
		// that took a lap of the ring finds its bucket counting a newer
		// second, which must keep its counts.
		b := newTestBudget(budgetConfig{ratio: 1, window: 2 * time.Second})
		now := t0.Add(2 * time.Second) // the bucket of t0, a lap later
		b.deposit(host, now)
		b.deposit(host, now)
		b.deposit(host, t0) // a success sent at t0
		assert.True(t, b.withdraw(host, now))
		assert.True(t, b.withdraw(host, now), "the two deposits of now are still counted")
		assert.False(t, b.withdraw(host, now), "the deposit dated t0 is outside the window")

		// A withdrawal dated a lap stale is refused, and leaves the newer
		// second's count alone.
		b = newTestBudget(budgetConfig{window: 2 * time.Second, minPerSecond: 1}) // floor 2
		require.True(t, b.withdraw(host, now))
		assert.False(t, b.withdraw(host, t0), "a withdrawal dated a lap before its bucket")
		assert.True(t, b.withdraw(host, now))
		assert.False(t, b.withdraw(host, now), "the floor of 2 is spent: the stale withdrawal reset nothing")
	})

	t.Run("off allows every retry", func(t *testing.T) {
		b := newTestBudget(budgetConfig{})
		require.Nil(t, b.b)
		b.deposit(host, t0)
		for range 1000 {
			require.True(t, b.withdraw(host, t0))
		}
	})
}

// testBudget is a retryBudget with the hosts' windows kept by name, as the
// host table (host.go) keeps them in each host's state.
type testBudget struct {
	b     *retryBudget
	hosts map[string]*hostBudget
}

func newTestBudget(cfg budgetConfig) *testBudget {
	return &testBudget{b: newRetryBudget(cfg), hosts: map[string]*hostBudget{}}
}

func (tb *testBudget) host(name string) *hostBudget {
	h := tb.hosts[name]
	if h == nil {
		h = new(hostBudget)
		tb.b.init(h)
		tb.hosts[name] = h
	}
	return h
}

func (tb *testBudget) deposit(host string, now time.Time) { tb.b.deposit(tb.host(host), now.Unix()) }
func (tb *testBudget) withdraw(host string, now time.Time) bool {
	return tb.b.withdraw(tb.host(host), now.Unix())
}

// noRetryBudget affords no retry at all: no share of requests, no floor.
var noRetryBudget = RetryBudget{Ratio: -1, Window: time.Second, MinPerSecond: -1}

func TestRetryBudgetZeroFieldsTakeDefaults(t *testing.T) {
	assert.Equal(t, defaultBudgetConfig(), RetryBudget{}.config())
	assert.Equal(t, budgetConfig{ratio: 0, window: 3 * time.Second, minPerSecond: 0},
		RetryBudget{Ratio: -1, Window: 3 * time.Second, MinPerSecond: -1}.config())
}

// fleetHammer sends n GETs to url from workers goroutines and returns how many
// got a 200.
func fleetHammer(t *testing.T, c *http.Client, url string, n, workers int) int64 {
	t.Helper()
	var ok atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				resp, err := c.Get(url)
				if !assert.NoError(t, err) {
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return ok.Load()
}

// The measure: against a host that fails everything, retries add at
// most 5% to the load over 10,000 requests (go-retryablehttp's defaults add
// 400%; the budget funded by every request sent, 21%). No request
// succeeds, so the floor alone pays for retries: 100 per 10 s window.
// Backoff is off so that the budget alone limits the retries.
func TestRetryBudgetCapsLoadOnFailingHost(t *testing.T) {
	t.Parallel() // a host of its own; counts, not times
	const requests, workers = 10_000, 16
	srv := keepalivetest.NewServer(t, keepalivetest.Status(http.StatusServiceUnavailable))
	c, tr := newTestClient(t, WithBackoff(0, 0), WithMaxIdleConnsPerHost(workers))

	assert.Zero(t, fleetHammer(t, c, srv.URL, requests, workers))

	st, hits := tr.Stats(), int64(srv.Requests())
	t.Logf("%d requests reached the server %d times (%.3f attempts per request); %d retries, %d refused by the budget",
		requests, hits, float64(hits)/requests, st.Retries, st.BudgetRefusals)
	assert.LessOrEqual(t, hits, int64(requests*105/100))
	assert.Equal(t, hits, st.Attempts, "every attempt reached the server")
	assert.Positive(t, st.BudgetRefusals)
	assert.Equal(t, int64(requests), st.GaveUp, "every request ended on a 503")
}

func TestRetryBudgetOffRetriesEverything(t *testing.T) {
	t.Parallel() // a host of its own; counts, not times
	const requests, workers = 500, 4
	srv := keepalivetest.NewServer(t, keepalivetest.Status(http.StatusServiceUnavailable))
	c, tr := newTestClient(t, WithBackoff(0, 0), WithoutRetryBudget())

	assert.Zero(t, fleetHammer(t, c, srv.URL, requests, workers))
	assert.Equal(t, requests*(1+defaultMaxRetries), srv.Requests())
	assert.Zero(t, tr.Stats().BudgetRefusals)
}

// The budget must not cost a healthy-enough host its retries: with 5% of
// attempts failing at random, 99.9% of calls still succeed, and the budget
// never refuses a retry: the successes earn 0.2 retries each, about 4 times
// what the failures need. The server draws from a seeded PCG, so the
// failures fall on the same attempts, in the order the server gets them,
// in every run. A CheckRetry policy takes another path to the same
// deposit.
func TestRetryBudgetKeepsRetriesOnFlakyHost(t *testing.T) {
	t.Parallel() // hosts of their own; counts, not times
	for _, tc := range []struct {
		name string
		opts []Option
	}{
		{"status list", nil},
		{"CheckRetry policy", []Option{WithCheckRetry(retryablehttp.DefaultRetryPolicy)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const requests, workers = 10_000, 16
			var (
				mu  sync.Mutex
				rng = rand.New(rand.NewPCG(1, 2))
			)
			srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				fail := rng.Float64() < 0.05
				mu.Unlock()
				if fail {
					w.WriteHeader(http.StatusServiceUnavailable)
				}
			})
			opts := append([]Option{WithBackoff(0, 0), WithMaxIdleConnsPerHost(workers)}, tc.opts...)
			c, tr := newTestClient(t, opts...)

			ok := fleetHammer(t, c, srv.URL, requests, workers)

			st, hits := tr.Stats(), int64(srv.Requests())
			t.Logf("%d of %d requests succeeded (%.2f%%); %d attempts (%.4f per request), %d retries, %d budget refusals",
				ok, requests, 100*float64(ok)/requests, hits, float64(hits)/requests, st.Retries, st.BudgetRefusals)
			assert.GreaterOrEqual(t, ok, int64(requests*999/1000))
			assert.Zero(t, st.BudgetRefusals)
			assert.Equal(t, int64(requests)+st.Retries, hits, "every attempt reached the server")
		})
	}
}

// What earns retries is a request that ended on an outcome not worth a
// retry (a 404 counts), by the status list or by a CheckRetry policy; a
// request that failed (a 503, retried or not) earns nothing.
func TestRetryBudgetIsEarnedBySuccesses(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
	}{
		{"status list", nil},
		{"CheckRetry policy", []Option{WithCheckRetry(retryablehttp.DefaultRetryPolicy)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fails, notFounds atomic.Int64
			srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/fail" {
					fails.Add(1)
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				notFounds.Add(1)
				w.WriteHeader(http.StatusNotFound)
			})
			// One retry per success, no floor, a window the test cannot outlast.
			opts := append([]Option{WithBackoff(0, 0),
				WithRetryBudget(RetryBudget{Ratio: 1, Window: time.Minute, MinPerSecond: -1})}, tc.opts...)
			c, tr := newTestClient(t, opts...)
			get := func(path string) int {
				t.Helper()
				resp, err := c.Get(srv.URL + path)
				require.NoError(t, err)
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}

			require.Equal(t, http.StatusServiceUnavailable, get("/fail"))
			assert.Equal(t, int64(1), fails.Load(), "nothing earned yet: no retry")
			require.Equal(t, http.StatusServiceUnavailable, get("/fail"))
			assert.Equal(t, int64(2), fails.Load(), "the failed request earned nothing")
			assert.Equal(t, int64(2), tr.Stats().BudgetRefusals)

			require.Equal(t, http.StatusNotFound, get("/a"))
			require.Equal(t, http.StatusNotFound, get("/b"))
			require.Equal(t, http.StatusServiceUnavailable, get("/fail"))
			assert.Equal(t, int64(5), fails.Load(), "two successes, two retries")
			assert.Equal(t, int64(2), notFounds.Load())
			assert.Equal(t, int64(3), tr.Stats().BudgetRefusals, "the third retry refused")
		})
	}
}

func TestRetryBudgetRefusalReturnsLastResponseAtOnce(t *testing.T) {
	srv := keepalivetest.NewServer(t, keepalivetest.Status(http.StatusServiceUnavailable))
	// No floor, no share: no retry is ever affordable.
	// A retry that slipped past the budget would wait 10 s or more, and the
	// third one would run past the context and fail the request.
	c, tr := newTestClient(t, WithRetryBudget(noRetryBudget), WithBackoff(10*time.Second, 10*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	require.NoError(t, err)

	resp, err := c.Do(req)
	require.NoError(t, err, "a refused retry returns the last response, not an error")
	resp.Body.Close()

	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, 1, srv.Requests())
	st := tr.Stats()
	assert.Equal(t, int64(1), st.BudgetRefusals)
	assert.Zero(t, st.Retries)
}

func TestRetryBudgetRefusalReturnsLastError(t *testing.T) {
	srv := keepalivetest.NewServer(t)
	url := srv.URL
	srv.Close() // connections are refused from now on
	c, tr := newTestClient(t, WithRetryBudget(noRetryBudget))

	_, err := c.Get(url)
	require.Error(t, err)
	var re *RetryError
	assert.False(t, errors.As(err, &re), "one attempt: the error as it is, not a RetryError")
	assert.Equal(t, int64(1), tr.Stats().BudgetRefusals)
	assert.Equal(t, int64(1), tr.Stats().Attempts)
}

// BenchmarkRetryBudgetDeposit is the cost the budget adds to every request.
func BenchmarkRetryBudgetDeposit(b *testing.B) {
	bud := newTestBudget(defaultBudgetConfig())
	h := bud.host("example.test:443")
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		bud.b.deposit(h, now.Unix())
	}
}

func BenchmarkRetryBudgetDepositParallel(b *testing.B) {
	bud := newTestBudget(defaultBudgetConfig())
	h := bud.host("example.test:443")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			bud.b.deposit(h, time.Now().Unix())
		}
	})
}

// BenchmarkRoundTripBudget compares a whole request with the budget on and
// off: the allocations must be the same.
func BenchmarkRoundTripBudget(b *testing.B) {
	srv := cbServer(b)
	for _, bc := range []struct {
		name string
		opts []Option
	}{
		{"budget=on", nil},
		{"budget=off", []Option{WithoutRetryBudget()}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tr := newTestTransport(b, bc.opts...)
			req, err := http.NewRequest(http.MethodGet, srv.URL, nil)
			require.NoError(b, err)
			b.ReportAllocs()
			for b.Loop() {
				resp, err := tr.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}
