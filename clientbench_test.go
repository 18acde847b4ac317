package keepalive

// Client-side whole-request benchmark, as a user sees it:
// http.Client{Transport: X}.Get(url), the body read to the end and closed,
// against an HTTP/1 httptest.Server that answers 128 bytes, at 64
// goroutines and at 1. X is a default keepalive.Transport
// (NewTransport(WithProxy(nil))) or a bare *http.Transport tuned the
// same way (pool sizes, idle timeout, ResponseHeaderTimeout = the default
// read timeout, ForceAttemptHTTP2, same dialer, no proxy).
//
// Round-based comparison (the numbers to quote on a shared, noisy machine):
// each round runs every client once, the order rotated each round and
// runtime.GC() before each client; it logs requests/s per client and round,
// the ratio of each client to bare per round, and the median ratio:
//
//	KA_CLIENTBENCH=1 go test -run '^TestClientBench$' -v -count 1 .
//
// It also logs CPU µs per request (Linux, /proc/self/task/*/schedstat) and
// the bare/client CPU ratio, allocations per request (MemStats, client and
// server), and DialContext calls and connections per client. On a loaded
// machine many short rounds resolve more than few long ones, e.g.
// KA_CLIENTBENCH_ROUNDS=80 KA_CLIENTBENCH_N64=5000 KA_CLIENTBENCH_NSEQ=2500.
//
// Knobs (all optional):
//
//	KA_CLIENTBENCH_ROUNDS=8            rounds
//	KA_CLIENTBENCH_N64=40000           GETs per round and client at 64 goroutines
//	KA_CLIENTBENCH_NSEQ=20000          GETs per round and client at 1 goroutine
//	KA_CLIENTBENCH_MODES=64,seq        which concurrencies
//	KA_CLIENTBENCH_CLIENTS=keepalive,bare
//	    any of the names in cbClients, e.g. ka-nobudget, ka-nobodytimer,
//	    ka-noreadtimeout, ka-noretries, ka-lean, bare-nohdrtimeout
//
// Profile one client alone at 64 concurrent requests:
//
//	KA_CLIENTBENCH=1 KA_CLIENTBENCH_CLIENTS=keepalive KA_CLIENTBENCH_MODES=64 \
//	  go test -run '^TestClientBench$' -count 1 -cpuprofile ka.cpu -memprofile ka.mem .
//	go tool pprof -top -cum ka.cpu
//
// Go benchmarks (allocs/op and B/op; the sub-benchmark order alternates
// between invocations, so -count runs interleave the clients):
//
//	go test -run '^$' -bench 'BenchmarkClientGet(64|Seq)$' -benchmem -count 10 . | tee new.txt
//	sed -E 's#/([a-z-]+)-([0-9]+)#/client=\1-\2#' new.txt > cols.txt
//	benchstat -col '/client@(bare keepalive)' cols.txt   # keepalive vs bare
//
// KA_CLIENTBENCH_CLIENTS also selects the benchmarks' clients.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const cbConcurrency = 64

// cbResponse is the server's answer: small, so that the client's own costs
// are not hidden behind copying.
var cbResponse = bytes.Repeat([]byte("k"), 128)

// cbClients are the clients the benchmark knows, by name.
var cbClients = map[string]func(tb testing.TB) http.RoundTripper{
	// The two compared by default.
	"keepalive": func(tb testing.TB) http.RoundTripper { return cbKeepalive(tb) },
	"bare":      func(tb testing.TB) http.RoundTripper { return cbBare(tb, defaultReadTimeout) },

	// Variants, to see where keepalive's time goes.
	"ka-nobudget": func(tb testing.TB) http.RoundTripper { return cbKeepalive(tb, WithoutRetryBudget()) },
	// No read timeout at all: no body timer, and no ResponseHeaderTimeout
	// either (so it is compared with a bare transport that has one).
	"ka-noreadtimeout": func(tb testing.TB) http.RoundTripper { return cbKeepalive(tb, WithReadTimeout(0)) },
	// No body timer, but the header timeout kept, as bare has it.
	"ka-nobodytimer": func(tb testing.TB) http.RoundTripper {
		tr := cbKeepalive(tb, WithReadTimeout(0))
		tr.base.ResponseHeaderTimeout = defaultReadTimeout
		return tr
	},
	"ka-noretries": func(tb testing.TB) http.RoundTripper { return cbKeepalive(tb, WithMaxRetries(0)) },
	// No body timer, no budget: the dial gate's body wrapper and counting.
	"ka-lean": func(tb testing.TB) http.RoundTripper {
		tr := cbKeepalive(tb, WithReadTimeout(0), WithoutRetryBudget())
		tr.base.ResponseHeaderTimeout = defaultReadTimeout
		return tr
	},
	"bare-nohdrtimeout": func(tb testing.TB) http.RoundTripper { return cbBare(tb, 0) },
}

func cbKeepalive(tb testing.TB, opts ...Option) *Transport {
	tr, err := NewTransport(append([]Option{WithProxy(nil)}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(tr.CloseIdleConnections)
	cbCountDials(tr.base)
	return tr
}

// cbDials counts, per underlying http.Transport, the calls of its
// DialContext (net/http asks for a connection when a request finds none
// idle) and the connections they opened: keepalive's dial gate drops the
// calls whose request got another connection meanwhile.
type cbDialCount struct{ calls, conns atomic.Int64 }

var cbDials sync.Map // *http.Transport -> *cbDialCount

func cbCountDials(tr *http.Transport) {
	dc := new(cbDialCount)
	cbDials.Store(tr, dc)
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dc.calls.Add(1)
		c, err := dial(ctx, network, addr)
		if err == nil {
			dc.conns.Add(1)
		}
		return c, err
	}
}

// cbDialsOf returns the dial counts of rt (a *Transport or an
// *http.Transport), or nil.
func cbDialsOf(rt http.RoundTripper) *cbDialCount {
	if t, ok := rt.(*Transport); ok {
		rt = t.base
	}
	if v, ok := cbDials.Load(rt); ok {
		return v.(*cbDialCount)
	}
	return nil
}

// cbBare is an http.Transport with the settings of a default keepalive
// Transport and nothing on top; headerTimeout is its ResponseHeaderTimeout.
func cbBare(tb testing.TB, headerTimeout time.Duration) *http.Transport {
	dialer := &net.Dialer{
		Timeout: defaultConnectTimeout,
		KeepAliveConfig: net.KeepAliveConfig{
			Enable:   true,
			Idle:     tcpKeepAliveIdle,
			Interval: tcpKeepAliveInterval,
			Count:    tcpKeepAliveCount,
		},
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   defaultTLSHandshakeTimeout,
		MaxIdleConns:          defaultMaxIdleConns,
		MaxIdleConnsPerHost:   defaultMaxIdleConnsPerHost,
		MaxConnsPerHost:       defaultMaxConnsPerHost,
		IdleConnTimeout:       defaultIdleConnTimeout,
		ResponseHeaderTimeout: headerTimeout,
		ExpectContinueTimeout: time.Second,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: http2PingInterval,
			PingTimeout:     http2PingTimeout,
		},
	}
	tb.Cleanup(tr.CloseIdleConnections)
	cbCountDials(tr)
	return tr
}

// cbServer is the server of every benchmark: it reads the request body
// and answers cbResponse.
func cbServer(tb testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(cbResponse)
	}))
	tb.Cleanup(srv.Close) // registered first: runs after the transports' cleanups
	return srv
}

// cbGet is one request as a user sends it.
func cbGet(c *http.Client, url string) error { return benchRequest(c, http.MethodGet, url) }

// cbRun sends n GETs from g goroutines (each takes the next request from a
// shared counter) and returns the time it took.
func cbRun(c *http.Client, url string, n, g int) (time.Duration, error) {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	start := time.Now()
	for range min(g, n) {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := cbGet(c, url); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start), firstErr
}

// cbCPU returns the CPU time the process has used so far, summed over its
// threads from /proc/self/task/*/schedstat (Linux; ns precision), and false
// elsewhere. Time spent waiting for a CPU taken by other jobs is not in it,
// so per-request CPU time holds still on a shared machine where requests/s
// does not.
func cbCPU() (time.Duration, bool) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, false
	}
	var sum int64
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/schedstat")
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, false
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		sum += ns
	}
	return time.Duration(sum), true
}

func cbEnvInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return n
		}
	}
	return def
}

func cbEnvList(name string, def ...string) []string {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// TestClientBench is the round-based side-by-side comparison; see the top
// of the file.
func TestClientBench(t *testing.T) {
	if os.Getenv("KA_CLIENTBENCH") != "1" {
		t.Skip("set KA_CLIENTBENCH=1 to run the client benchmark")
	}
	rounds := cbEnvInt("KA_CLIENTBENCH_ROUNDS", 8)
	names := cbEnvList("KA_CLIENTBENCH_CLIENTS", "keepalive", "bare")
	for _, n := range names {
		if cbClients[n] == nil {
			t.Fatalf("unknown client %q", n)
		}
	}
	srv := cbServer(t)
	clients := make([]*http.Client, len(names))
	for i, n := range names {
		clients[i] = &http.Client{Transport: cbClients[n](t)}
	}
	t.Logf("GOMAXPROCS=%d, %s, response %d bytes, clients %v", runtime.GOMAXPROCS(0), runtime.Version(), len(cbResponse), names)
	for _, mode := range cbEnvList("KA_CLIENTBENCH_MODES", "64", "seq") {
		var g, n int
		switch mode {
		case "64":
			g, n = cbConcurrency, cbEnvInt("KA_CLIENTBENCH_N64", 40000)
		case "seq":
			g, n = 1, cbEnvInt("KA_CLIENTBENCH_NSEQ", 20000)
		default:
			t.Fatalf("unknown mode %q (64 or seq)", mode)
		}
		// Warm up: fill each pool with g connections and grow the heap.
		for _, c := range clients {
			if _, err := cbRun(c, srv.URL, max(n/10, 2*g), g); err != nil {
				t.Fatal(err)
			}
		}
		res := cbResults{mode: mode, g: g, n: n, names: names}
		dials0 := make([][2]int64, len(clients)) // calls, conns before the rounds
		for i, c := range clients {
			if dc := cbDialsOf(c.Transport); dc != nil {
				dials0[i] = [2]int64{dc.calls.Load(), dc.conns.Load()}
			}
		}
		res.rps = make([][]float64, len(names))
		res.cpu = make([][]float64, len(names))
		res.allocs = make([][]float64, len(names))
		for r := range rounds {
			var order []string
			for k := range names {
				i := (r + k) % len(names)
				order = append(order, names[i])
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				cpu0, cpuOK := cbCPU()
				d, err := cbRun(clients[i], srv.URL, n, g)
				cpu1, _ := cbCPU()
				runtime.ReadMemStats(&after)
				if err != nil {
					t.Fatalf("%s: %v", names[i], err)
				}
				res.rps[i] = append(res.rps[i], float64(n)/d.Seconds())
				if cpuOK {
					res.cpu[i] = append(res.cpu[i], float64(cpu1-cpu0)/float64(n)/1e3)
				}
				res.allocs[i] = append(res.allocs[i], float64(after.Mallocs-before.Mallocs)/float64(n))
			}
			res.orders = append(res.orders, strings.Join(order, ">"))
		}
		for i, c := range clients {
			if dc := cbDialsOf(c.Transport); dc != nil {
				res.dials = append(res.dials, fmt.Sprintf("%s %d calls/%d conns (%d conns in all)", names[i],
					dc.calls.Load()-dials0[i][0], dc.conns.Load()-dials0[i][1], dc.conns.Load()))
			}
		}
		t.Log(res.table())
	}
}

// cbResults are one mode's measurements, [client][round].
type cbResults struct {
	mode             string
	g, n             int
	names, orders    []string
	rps, cpu, allocs [][]float64 // requests/s; CPU µs per request (process, client and server); allocations per request
	dials            []string    // per client: DialContext calls and connections opened over the rounds
}

// table formats the rounds: requests/s per client, the ratio of each
// client to bare, the same for CPU time, and medians.
func (res *cbResults) table() string {
	var b strings.Builder
	names := res.names
	bare := slices.Index(names, "bare")
	others := []int{}
	for i := range names {
		if bare >= 0 && i != bare {
			others = append(others, i)
		}
	}
	hasCPU := len(res.cpu[0]) == len(res.orders)
	fmt.Fprintf(&b, "\n== mode %s: %d goroutine(s), %d GETs per client per round, %d rounds ==\n", res.mode, res.g, res.n, len(res.orders))
	fmt.Fprintf(&b, "req/s per client, and client/bare (>1: faster than bare)\n%-5s", "round")
	for _, nm := range names {
		fmt.Fprintf(&b, " %17s", nm)
	}
	for _, i := range others {
		fmt.Fprintf(&b, " %17s", names[i]+"/bare")
	}
	fmt.Fprintf(&b, "  order\n")
	ratios := make([][]float64, len(names))
	cpuRatios := make([][]float64, len(names))
	for r := range res.orders {
		fmt.Fprintf(&b, "%-5d", r+1)
		for i := range names {
			fmt.Fprintf(&b, " %17.0f", res.rps[i][r])
		}
		for _, i := range others {
			ratio := res.rps[i][r] / res.rps[bare][r]
			ratios[i] = append(ratios[i], ratio)
			fmt.Fprintf(&b, " %17.4f", ratio)
		}
		fmt.Fprintf(&b, "  %s\n", res.orders[r])
		if hasCPU {
			for _, i := range others {
				cpuRatios[i] = append(cpuRatios[i], res.cpu[bare][r]/res.cpu[i][r])
			}
		}
	}
	fmt.Fprintf(&b, "%-5s", "med")
	for i := range names {
		fmt.Fprintf(&b, " %17.0f", median(res.rps[i]))
	}
	for _, i := range others {
		fmt.Fprintf(&b, " %17.4f", median(ratios[i]))
	}
	b.WriteString("\n")
	if hasCPU {
		fmt.Fprintf(&b, "CPU µs/request (process: client+server), median:")
		for i, nm := range names {
			fmt.Fprintf(&b, " %s %.2f;", nm, median(res.cpu[i]))
		}
		fmt.Fprintf(&b, "\nCPU ratio bare/client per round (>1: client cheaper than bare):\n")
		for _, i := range others {
			fmt.Fprintf(&b, "  %-18s median %.4f  rounds %s\n", names[i], median(cpuRatios[i]), cbFmt(cpuRatios[i]))
		}
	}
	fmt.Fprintf(&b, "allocs/request (process: client+server, MemStats), median:")
	for i, nm := range names {
		fmt.Fprintf(&b, " %s %.2f", nm, median(res.allocs[i]))
		if bare >= 0 && i != bare {
			fmt.Fprintf(&b, " (%+.2f)", median(res.allocs[i])-median(res.allocs[bare]))
		}
		b.WriteString(";")
	}
	b.WriteString("\n")
	if len(res.dials) > 0 {
		fmt.Fprintf(&b, "dials during the rounds (after warm-up): %s\n", strings.Join(res.dials, "; "))
	}
	for _, i := range others {
		fmt.Fprintf(&b, "RESULT mode=%s client=%s median_ratio=%.4f", res.mode, names[i], median(ratios[i]))
		if hasCPU {
			fmt.Fprintf(&b, " cpu_ratio=%.4f", median(cpuRatios[i]))
		}
		fmt.Fprintf(&b, " allocs=%+.2f ratios=%s\n", median(res.allocs[i])-median(res.allocs[bare]), cbFmt(ratios[i]))
	}
	return b.String()
}

func cbFmt(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.FormatFloat(x, 'f', 3, 64)
	}
	return strings.Join(s, ",")
}

// cbBenchRuns alternates the order of the sub-benchmarks between
// invocations (-count), so that neither client always runs first.
var cbBenchRuns atomic.Int64

// BenchmarkClientGet64 sends GETs from 64 goroutines (b.RunParallel with
// SetParallelism(64/GOMAXPROCS)).
func BenchmarkClientGet64(b *testing.B) { cbBench(b, cbConcurrency) }

// BenchmarkClientGetSeq sends GETs one at a time (b.Loop).
func BenchmarkClientGetSeq(b *testing.B) { cbBench(b, 1) }

func cbBench(b *testing.B, g int) {
	names := cbEnvList("KA_CLIENTBENCH_CLIENTS", "keepalive", "bare")
	for _, n := range names {
		if cbClients[n] == nil {
			b.Fatalf("unknown client %q", n)
		}
	}
	srv := cbServer(b)
	clients := make([]*http.Client, len(names))
	for i, n := range names {
		clients[i] = &http.Client{Transport: cbClients[n](b)}
	}
	shift := int(cbBenchRuns.Add(1) - 1)
	for k := range names {
		i := (k + shift) % len(names)
		c := clients[i]
		b.Run(names[i], func(b *testing.B) {
			if _, err := cbRun(c, srv.URL, 4*g, g); err != nil { // warm the pool
				b.Fatal(err)
			}
			cbLoop(b, g, func() error { return cbGet(c, srv.URL) })
		})
	}
}

// cbLoop runs do b.N times, one call at a time (b.Loop) when g is 1, and
// otherwise from g goroutines (b.RunParallel with SetParallelism of g per
// GOMAXPROCS), and reports allocations; the first error fails b.
func cbLoop(b *testing.B, g int, do func() error) {
	b.ReportAllocs()
	if g == 1 {
		for b.Loop() {
			if err := do(); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((g + procs - 1) / procs)
	var failed atomic.Bool
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := do(); err != nil {
				if !failed.Swap(true) {
					b.Error(err)
				}
				return
			}
		}
	})
}

// TestClientBenchPaired is the side-by-side form of the comparison, for a
// machine too noisy for rounds (other jobs take the CPU for tens of
// milliseconds at a time, which swings a round's ratio by +-30%): 64
// goroutines each send GETs through keepalive and bare in turn, one
// request each, starting with either by parity, so both clients meet the
// same moments of noise; the ratio of the medians of their latencies,
// bare over keepalive, is keepalive's throughput relative to bare at the
// same concurrency. With KA_CLIENTBENCH_PAIRED=seq it runs one goroutine.
//
//	KA_CLIENTBENCH=1 go test -run '^TestClientBenchPaired$' -v -count 5 .
func TestClientBenchPaired(t *testing.T) {
	if os.Getenv("KA_CLIENTBENCH") == "" {
		t.Skip("set KA_CLIENTBENCH=1 to run the client benchmark")
	}
	g, perG := cbConcurrency, cbEnvInt("KA_CLIENTBENCH_PAIRS", 40_000)/cbConcurrency
	if os.Getenv("KA_CLIENTBENCH_PAIRED") == "seq" {
		g, perG = 1, cbEnvInt("KA_CLIENTBENCH_PAIRS", 20_000)
	}
	srv := cbServer(t)
	clients := [2]*http.Client{{Transport: cbKeepalive(t)}, {Transport: cbBare(t, defaultReadTimeout)}}
	for _, c := range clients { // warm both pools to the concurrency
		if _, err := cbRun(c, srv.URL, 4*g, g); err != nil {
			t.Fatal(err)
		}
	}
	lat := [2][]time.Duration{make([]time.Duration, 0, g*perG), make([]time.Duration, 0, g*perG)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	runtime.GC()
	for i := range g {
		wg.Go(func() {
			var mine [2][]time.Duration
			for j := range perG {
				for k := range 2 {
					which := (i + j + k) % 2
					start := time.Now()
					if err := cbGet(clients[which], srv.URL); err != nil {
						t.Error(err)
						return
					}
					mine[which] = append(mine[which], time.Since(start))
				}
			}
			mu.Lock()
			lat[0] = append(lat[0], mine[0]...)
			lat[1] = append(lat[1], mine[1]...)
			mu.Unlock()
		})
	}
	wg.Wait()
	ka, bare := median(lat[0]), median(lat[1])
	t.Logf("PAIRED goroutines=%d requests=%d median keepalive=%v bare=%v ratio=%.4f",
		g, len(lat[0]), ka, bare, float64(bare)/float64(ka))
}

// TestClientBenchTogether measures throughput side by side: keepalive and
// bare each run 64 goroutines at the same time, against the same server,
// for a fixed time, and the ratio of the requests each completed is
// keepalive's throughput relative to bare under exactly the same noise
// and contention (whichever costs more CPU per request completes fewer).
//
//	KA_CLIENTBENCH=1 go test -run '^TestClientBenchTogether$' -v -count 5 .
func TestClientBenchTogether(t *testing.T) {
	if os.Getenv("KA_CLIENTBENCH") == "" {
		t.Skip("set KA_CLIENTBENCH=1 to run the client benchmark")
	}
	g := cbConcurrency
	if os.Getenv("KA_CLIENTBENCH_PAIRED") == "seq" {
		g = 1
	}
	dur := time.Duration(cbEnvInt("KA_CLIENTBENCH_MS", 4000)) * time.Millisecond
	srv := cbServer(t)
	clients := [2]*http.Client{{Transport: cbKeepalive(t)}, {Transport: cbBare(t, defaultReadTimeout)}}
	for _, c := range clients {
		if _, err := cbRun(c, srv.URL, 4*g, g); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	var done [2]atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for i := range 2 * g {
		which := i % 2
		wg.Go(func() {
			for !stop.Load() {
				if err := cbGet(clients[which], srv.URL); err != nil {
					t.Error(err)
					return
				}
				done[which].Add(1)
			}
		})
	}
	timer := time.NewTimer(dur)
	<-timer.C
	stop.Store(true)
	wg.Wait()
	ka, bare := done[0].Load(), done[1].Load()
	t.Logf("TOGETHER goroutines=%d each, %v: keepalive=%d bare=%d ratio=%.4f", g, dur, ka, bare, float64(ka)/float64(bare))
}
