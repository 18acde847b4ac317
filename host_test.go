package keepalive

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// One host, however its URL spells it, has one state: one set of
// counters, one budget, one breaker, one dial gate (defect: the budget and
// the breaker keyed by URL.Host, the stats by host:port).
func TestHostStateIsOneForEverySpellingOfAHost(t *testing.T) {
	tr := newTestTransport(t, WithCircuitBreaker(CircuitBreaker{}))
	h := tr.hosts
	plain := h.forURL(mustParseURL(t, "http://example.test/x"))
	require.NotNil(t, plain.breaker)
	for _, s := range []string{"http://example.test:80/y", "http://EXAMPLE.test/", "http://Example.Test:80/"} {
		assert.Same(t, plain, h.forURL(mustParseURL(t, s)), s)
	}
	assert.Same(t, plain, h.forAddr("example.test:80"), "the dial address")
	assert.Equal(t, "example.test:80", plain.key)

	tls := h.forURL(mustParseURL(t, "https://example.test/"))
	assert.NotSame(t, plain, tls)
	assert.Same(t, tls, h.forURL(mustParseURL(t, "https://example.test:443/")))
	assert.Same(t, tls, h.forAddr("example.test:443"))
	assert.Equal(t, "example.test:443", tls.key)
}

// Past HostStatsLimit, hosts share the overflow state: the table stays
// bounded, nothing is swept, and the overflow state has no breaker and no
// retry budget (one host's failures must not refuse another's requests or
// spend its retries) and no dial gate.
func TestHostStatesAreBoundedWithoutASweep(t *testing.T) {
	tr := newTestTransport(t, WithCircuitBreaker(CircuitBreaker{}))
	h := tr.hosts
	seen := map[*hostState]bool{}
	for i := range 3 * HostStatsLimit {
		seen[h.forURL(mustParseURL(t, "http://h"+strconv.Itoa(i)+".test/"))] = true
	}
	assert.Len(t, seen, HostStatsLimit+1, "the known hosts and the overflow state")
	assert.Len(t, h.maps.Load().canon, HostStatsLimit)
	over := h.forURL(mustParseURL(t, "http://past-the-limit.test/"))
	assert.Same(t, h.overflow, over)
	assert.Nil(t, over.breaker)
	assert.Nil(t, over.gateHost())
	assert.Nil(t, over.budget.ring, "the overflow hosts have no budget: one's failures must not spend another's retries")
	first := h.forURL(mustParseURL(t, "http://h0.test/"))
	assert.Equal(t, "h0.test:80", first.key, "known hosts keep their state")
}

// A host spelled many ways (names are case-insensitive; a crawler's links
// or a server redirecting to new-cased spellings of itself do this) is one
// state, found in O(1), and the table keeps at most maxHostAliases
// spellings of it, whatever their number.
func TestHostSpellingsAreBounded(t *testing.T) {
	h := newTestHostTable()
	want := h.forURL(mustParseURL(t, "http://api.example-service.test/"))
	const spellings = 20000
	start := time.Now()
	for i := range spellings {
		host := []byte("api.example-service.test")
		bit := 0
		for j := range host { // the i-th case spelling (2^20 of them), and a port half the time
			if host[j] >= 'a' && host[j] <= 'z' {
				if i>>bit&1 == 1 {
					host[j] -= 'a' - 'A'
				}
				bit++
			}
		}
		u := "http://" + string(host) + "/"
		if i%2 == 1 {
			u = "http://" + string(host) + ":80/"
		}
		require.Same(t, want, h.forURL(mustParseURL(t, u)), u)
	}
	t.Logf("%d spellings of one host looked up in %v", spellings, time.Since(start))
	m := h.maps.Load()
	assert.Len(t, m.canon, 1)
	assert.LessOrEqual(t, len(m.alias)+len(m.aliasHTTPS), 2*maxHostAliases, "spellings kept")
}

// BenchmarkCrawlerNewHosts is a crawler's request path past HostStatsLimit:
// every request goes to a host never seen before (through a proxy on
// loopback, so no name is resolved), with the default retry budget and a
// circuit breaker. Each request must cost the same at any number of hosts
// (before the per-host state was one table, the budget and the breaker
// swept every host of the last window under a global lock for each new
// host).
//
//	go test -run '^$' -bench CrawlerNewHosts -benchmem
func BenchmarkCrawlerNewHosts(b *testing.B) {
	srv := cbServer(b)
	proxy := mustParseURL(b, srv.URL)
	for _, warm := range []int{2 * HostStatsLimit, 8 * HostStatsLimit} {
		b.Run("hosts="+strconv.Itoa(warm), func(b *testing.B) {
			tr := newTestTransport(b, WithProxy(http.ProxyURL(proxy)), WithCircuitBreaker(CircuitBreaker{}))
			get := func(i int) {
				req, err := http.NewRequest(http.MethodGet, "http://h"+strconv.Itoa(i)+".crawl.test/", nil)
				if err != nil {
					b.Fatal(err)
				}
				resp, err := tr.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			for i := range warm {
				get(i)
			}
			n := warm
			start := time.Now()
			b.ReportAllocs()
			for b.Loop() {
				get(n)
				n++
			}
			b.ReportMetric(float64(n-warm)/time.Since(start).Seconds(), "newhosts/s")
		})
	}
}

// A URL that names the default port and one that leaves it out are the
// same host: one retry budget, one breaker, one HostStats key.
func TestDefaultPortIsTheSameHost(t *testing.T) {
	srv := keepalivetest.NewServer(t, keepalivetest.Status(http.StatusServiceUnavailable).Body("down"))
	// Both URLs go through the server as a proxy: nothing leaves the
	// machine, and the Transport still sees two spellings of one host.
	viaServer := WithProxy(func(*http.Request) (*url.URL, error) { return url.Parse(srv.URL) })
	const bare, withPort = "http://example.test/x", "http://example.test:80/x"
	get := func(t *testing.T, c *http.Client, u string) (*http.Response, error) {
		t.Helper()
		resp, err := c.Get(u)
		if resp != nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}

	t.Run("a breaker opened through one spelling refuses the other", func(t *testing.T) {
		c, tr := newTestClient(t, viaServer, WithMaxRetries(0),
			WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 3, OpenTimeout: time.Minute}))
		before := srv.Requests()
		for range 3 {
			resp, err := get(t, c, bare)
			require.NoError(t, err)
			require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		}
		_, err := get(t, c, withPort)
		assert.ErrorIs(t, err, ErrCircuitOpen)
		assert.Equal(t, 3, srv.Requests()-before, "requests that reached the server")

		hs := tr.HostStats()
		assert.Equal(t, int64(4), hs["example.test:80"].Requests, "both spellings counted under one key")
		assert.NotContains(t, hs, "example.test")
	})

	t.Run("a retry budget spent through one spelling is spent for the other", func(t *testing.T) {
		// Only the floor: 1 retry a second over 2 s, 2 retries in all.
		c, tr := newTestClient(t, viaServer, WithMaxRetries(3), WithBackoff(0, 0),
			WithRetryBudget(RetryBudget{Ratio: -1, Window: 2 * time.Second, MinPerSecond: 1}))
		before := srv.Requests()
		resp, err := get(t, c, bare)
		require.NoError(t, err)
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.Equal(t, 3, srv.Requests()-before, "the first request and the 2 retries the budget holds")

		resp, err = get(t, c, withPort)
		require.NoError(t, err)
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		assert.Equal(t, 4, srv.Requests()-before, "the budget is spent: no retry of the second request")
		assert.Equal(t, int64(2), tr.Stats().BudgetRefusals)
	})
}
