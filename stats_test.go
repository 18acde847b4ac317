package keepalive

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"sync"
	"testing"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHostStatsCountEachHostApart(t *testing.T) {
	a := keepalivetest.NewServer(t, keepalivetest.Status(503), keepalivetest.Status(200))
	b := keepalivetest.NewServer(t)
	c, tr := newTestClient(t, WithBackoff(0, 0))
	for range 3 {
		mustGet(t, c, a.URL)
	}
	for range 2 {
		mustGet(t, c, b.URL)
	}

	hs := tr.HostStats()
	require.Len(t, hs, 2)
	wantA := Stats{Requests: 3, Attempts: 4, Retries: 1, Dials: 1}
	wantB := Stats{Requests: 2, Attempts: 2, Dials: 1}
	assert.Equal(t, wantA, hs[hostOf(t, a.URL)])
	assert.Equal(t, wantB, hs[hostOf(t, b.URL)])
	assert.Equal(t, Stats{Requests: 5, Attempts: 6, Retries: 1, Dials: 2}, tr.Stats())
	assert.Equal(t, int64(3), hs[hostOf(t, a.URL)].Reused())
	assert.Equal(t, int64(4), tr.Stats().Reused())
	assert.InDelta(t, 0.75, hs[hostOf(t, a.URL)].ReuseRatio(), 1e-9)
	assert.InDelta(t, 4.0/6, tr.Stats().ReuseRatio(), 1e-9)
	assert.Equal(t, a.Connections()+b.Connections(), int(tr.Stats().Dials), "the dial counter agrees with the servers")
}

func TestReuseRatioOfNothingIsZero(t *testing.T) {
	assert.Zero(t, Stats{}.ReuseRatio())
	assert.Zero(t, Stats{Attempts: 1, Dials: 1, DialErrors: 1}.Reused(), "never below zero")
	tr := newTestTransport(t)
	assert.Empty(t, tr.HostStats())
	assert.Equal(t, Stats{}, tr.Stats())
}

func TestReusedMatchesTraceConnsOverManyRequests(t *testing.T) {
	s := keepalivetest.NewServer(t)
	var mu sync.Mutex
	traced := 0
	c, tr := newTestClient(t, WithObserver(Observer{TraceConns: true, OnAttemptEnd: func(e AttemptEndEvent) {
		if e.Conn == ConnReused {
			mu.Lock()
			traced++
			mu.Unlock()
		}
	}}))
	mustGet(t, c, s.URL)
	mustGet(t, c, s.URL)
	require.Equal(t, 1, traced, "one after another, they agree exactly")
	require.Equal(t, int64(1), tr.Stats().Reused())

	const workers, each = 8, 25
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				mustGet(t, c, s.URL)
			}
		})
	}
	wg.Wait()
	st := tr.Stats()
	assert.Equal(t, int64(workers*each+2), st.Attempts)
	assert.Equal(t, int64(s.Connections()), st.Dials)
	// The dial counter and the trace agree but for connections dialed for
	// a request that took another one that came free first, and that no
	// request used since: the counter counts them, the trace never sees
	// them.
	unusedDials := int64(traced) - st.Reused()
	assert.GreaterOrEqual(t, unusedDials, int64(0))
	assert.Less(t, unusedDials, st.Dials, "at least one dialed connection was used")
	assert.Greater(t, st.Reused(), int64(workers*each/2), "the pool works")
}

func TestStatsAreSafeToReadDuringRequests(t *testing.T) {
	a := keepalivetest.NewServer(t)
	b := keepalivetest.NewServer(t, keepalivetest.Status(500), keepalivetest.Status(200))
	c, tr := newTestClient(t, WithBackoff(0, 0))
	const n = 40
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				_ = tr.Stats()
				_ = tr.HostStats()
			}
		}
	})
	for i := range n {
		wg.Go(func() {
			if i%2 == 0 {
				mustGet(t, c, a.URL)
			} else {
				mustGet(t, c, b.URL)
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()

	total := tr.Stats()
	var sum Stats
	for _, s := range tr.HostStats() {
		sum.Requests += s.Requests
		sum.Attempts += s.Attempts
		sum.Retries += s.Retries
		sum.GaveUp += s.GaveUp
		sum.Dials += s.Dials
		sum.DialErrors += s.DialErrors
		sum.BudgetRefusals += s.BudgetRefusals
	}
	assert.Equal(t, total, sum, "the hosts add up to the total")
	assert.Equal(t, int64(n), total.Requests)
	assert.Equal(t, int64(n+1), total.Attempts, "one 500 retried")
}

func TestHostKeysAreTheDialedAddress(t *testing.T) {
	tests := []struct {
		give string
		want string
	}{
		{"https://example.com/a", "example.com:443"},
		{"http://example.com/a", "example.com:80"},
		{"http://example.com:8080/", "example.com:8080"},
		{"https://example.com:443/", "example.com:443"},
		{"http://[::1]:9/", "[::1]:9"},
		{"https://[::1]/", "[::1]:443"},
		{"http://127.0.0.1/", "127.0.0.1:80"},
	}
	h := newTestHostTable()
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			u, err := url.Parse(tt.give)
			require.NoError(t, err)
			c := h.forURL(u)
			assert.Equal(t, tt.want, c.key)
			assert.Same(t, c, h.forAddr(tt.want), "a dial to the address counts for the same host")
			assert.Same(t, c, h.forURL(u), "found again")
		})
	}
	assert.NotSame(t, h.forURL(mustParseURL(t, "http://example.com/")), h.forURL(mustParseURL(t, "https://example.com/")),
		"the same host name over http and https are two hosts")
}

func TestHostStatsStopAtTheLimit(t *testing.T) {
	h := newTestHostTable()
	for i := range HostStatsLimit {
		h.forURL(mustParseURL(t, "http://h"+strconv.Itoa(i)+".test/")).count(requestsCounter)
	}
	over := h.forURL(mustParseURL(t, "http://one-too-many.test/"))
	assert.Equal(t, OtherHosts, over.key)
	over.count(requestsCounter)
	assert.Same(t, over, h.forAddr("another.test:80"))

	m := h.maps.Load()
	assert.Len(t, m.canon, HostStatsLimit)
	assert.LessOrEqual(t, len(m.alias)+len(m.aliasHTTPS), 3*HostStatsLimit, "the lookup maps stay bounded too")

	tr := &Transport{hosts: h}
	hs := tr.HostStats()
	assert.Len(t, hs, HostStatsLimit+1)
	assert.Equal(t, int64(1), hs[OtherHosts].Requests)
}

// zeroAllocServer answers each request on a connection with a fixed "200 ok",
// allocating nothing per request, so that allocation counts (which are
// process-wide) measure the client alone. It expects bodiless requests.
func zeroAllocServer(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				var buf [4096]byte
				n := 0
				for {
					m, err := c.Read(buf[n:])
					if err != nil {
						return
					}
					n += m
					if bytes.Contains(buf[:n], []byte("\r\n\r\n")) {
						n = 0
						if _, err := c.Write(resp); err != nil {
							return
						}
					} else if n == len(buf) {
						return
					}
				}
			})
		}
	})
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "http://" + ln.Addr().String() + "/"
}

// roundTrips returns a function that sends req through rt and reads and
// closes the response, as a caller does.
func roundTrips(tb testing.TB, rt func(*http.Request) (*http.Response, error), req *http.Request) func() {
	return func() {
		resp, err := rt(req)
		if err != nil {
			tb.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// quietObserver has hooks that allocate nothing themselves.
func quietObserver() Observer {
	return Observer{
		OnAttemptStart: func(AttemptStartEvent) {},
		OnAttemptEnd:   func(AttemptEndEvent) {},
		OnRetry:        func(RetryEvent) {},
		OnGiveUp:       func(GiveUpEvent) {},
		OnDial:         func(DialEvent) {},
	}
}

// TestSuccessPathAllocations: a successful GET allocates, beyond the tuned
// http.Transport with its body wrapped (the attempt's one object), only
// what tells each connection where its requests begin: the request's copy
// that carries the attempt's context, and the GotConn hook. Neither the
// retry layer nor the observer's hooks add any.
func TestSuccessPathAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes allocation counts vary")
	}
	url := zeroAllocServer(t)
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	// Without GC, sync.Pools are never emptied, so counts repeat exactly.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))

	const connTracking = 2 // the request's copy, and the GotConn hook
	plain := newTestTransport(t)
	base := func(r *http.Request) (*http.Response, error) { // the tuned http.Transport, body wrapped
		resp, err := plain.base.RoundTrip(r)
		if err != nil {
			return nil, err
		}
		return plain.wrapBody(resp, &attemptConn{Context: r.Context()}, nil), nil
	}
	none := newTestTransport(t)
	hooks := newTestTransport(t, WithObserver(quietObserver()))
	noRetries := newTestTransport(t, WithMaxRetries(0))

	const runs = 300
	want := testing.AllocsPerRun(runs, roundTrips(t, base, req))
	for _, c := range []struct {
		name string
		tr   *Transport
	}{
		{"no observer", none},
		{"hooks that do not allocate", hooks},
		{"retries off", noRetries},
	} {
		got := testing.AllocsPerRun(runs, roundTrips(t, c.tr.RoundTrip, req))
		t.Logf("%s: %v allocations per request, http.Transport %v", c.name, got, want)
		assert.LessOrEqual(t, got, want+connTracking, c.name)
	}
}

// BenchmarkObserverCost measures a successful GET over a kept-alive
// connection: the tuned http.Transport alone, then the Transport without
// observer, with hooks, with TraceConns, and with an attempt transport.
//
//	go test -run '^$' -bench ObserverCost -benchmem
func BenchmarkObserverCost(b *testing.B) {
	url := zeroAllocServer(b)
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(b, err)
	plain := newTestTransport(b)
	passThrough := func(rt http.RoundTripper) http.RoundTripper { return rt }
	cases := []struct {
		name string
		rt   func(*http.Request) (*http.Response, error)
	}{
		{"http.Transport", func(r *http.Request) (*http.Response, error) {
			resp, err := plain.base.RoundTrip(r)
			if err != nil {
				return nil, err
			}
			return plain.wrapBody(resp, &attemptConn{Context: r.Context()}, nil), nil
		}},
		{"no observer", newTestTransport(b).RoundTrip},
		{"hooks", newTestTransport(b, WithObserver(quietObserver())).RoundTrip},
		{"hooks+TraceConns", newTestTransport(b, WithObserver(Observer{TraceConns: true, OnAttemptEnd: func(AttemptEndEvent) {}})).RoundTrip},
		{"AttemptTransport", newTestTransport(b, WithAttemptTransport(passThrough)).RoundTrip},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			do := roundTrips(b, c.rt, req)
			for b.Loop() {
				do()
			}
		})
	}
}
