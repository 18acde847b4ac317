package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// loadResult is one client's run in one cell.
type loadResult struct {
	requests       int64 // requests the caller completed (with or without error)
	errors         int64 // requests that returned an error
	non200         int64 // requests that returned a response other than 200
	elapsed        time.Duration
	newConns       int64 // connections the server accepted during the run
	serverRequests int64 // requests the server answered, retries included
	mallocs        uint64
	cpu            time.Duration // CPU time of this process during the run
	goroutinesLeft int           // goroutines above the start, after closing idle connections
	firstErr       error
}

// warmups numbers the warm-ups, so that the server can tell them apart.
var warmups atomic.Int64

// measureLoad runs GETs to url from c workers of a new instance of p for
// d, then waits for the requests in flight. Before the run, c concurrent
// requests, which the server holds until all c have arrived, open c
// connections, and the pool keeps as many as the client keeps: new
// connections then count churn, not the first dials.
func measureLoad(srv *server, p peer, url string, c int, d time.Duration) (loadResult, error) {
	var r loadResult
	inst := p.new()
	// Each worker's requests carry a context of the worker's own (one
	// shared parent would be a lock all workers contend for), cancelled
	// after the run: a client that never closes a response body holds that
	// connection until then, and over many runs would run out of file
	// descriptors.
	ctxs := make([]context.Context, c)
	cancels := make([]context.CancelFunc, c)
	for i := range c {
		ctxs[i], cancels[i] = context.WithCancel(context.Background())
	}
	defer func() {
		for _, cancel := range cancels {
			cancel()
		}
	}()
	warmURL := fmt.Sprintf("%s/warm?id=%d&n=%d", srv.base, warmups.Add(1), c)
	var warm sync.WaitGroup
	for i := range c {
		warm.Go(func() { _, _ = inst.get(ctxs[i], warmURL) })
	}
	warm.Wait()

	nc0, rq0, err := srv.stats()
	if err != nil {
		return r, err
	}
	runtime.GC()
	g0 := runtime.NumGoroutine()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0, _ := processCPU()

	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := range c {
		wg.Go(func() {
			var n, errs, non200 int64
			var firstErr error
			for time.Since(start) < d {
				status, err := inst.get(ctxs[i], url)
				n++
				switch {
				case err != nil:
					errs++
					if firstErr == nil {
						firstErr = err
					}
				case status != 200:
					non200++
				}
			}
			mu.Lock()
			r.requests += n
			r.errors += errs
			r.non200 += non200
			if r.firstErr == nil {
				r.firstErr = firstErr
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	r.elapsed = time.Since(start)
	cpu1, _ := processCPU()
	r.cpu = cpu1 - cpu0
	runtime.ReadMemStats(&m1)
	r.mallocs = m1.Mallocs - m0.Mallocs

	nc1, rq1, err := srv.stats()
	if err != nil {
		return r, err
	}
	r.newConns, r.serverRequests = nc1-nc0, rq1-rq0
	inst.close()
	r.goroutinesLeft = settleGoroutines(g0)
	return r, nil
}

// settleGoroutines gives the goroutines of closed connections a moment to
// exit and returns how many remain above base: those of connections the
// client still holds, such as ones whose response body was never closed.
func settleGoroutines(base int) int {
	deadline := time.Now().Add(300 * time.Millisecond)
	for {
		n := runtime.NumGoroutine() - base
		if n <= 0 {
			return 0
		}
		if time.Now().After(deadline) {
			return n
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
}

type cellKey struct {
	scenario string
	conc     int
	client   string
}

// cellResult sums a client's runs in one cell over the rounds.
type cellResult struct {
	loadResult
	rates []float64 // requests/s of each run, by round
}

func (c *cellResult) add(r loadResult) {
	c.rates = append(c.rates, float64(r.requests)/r.elapsed.Seconds())
	c.requests += r.requests
	c.errors += r.errors
	c.non200 += r.non200
	c.elapsed += r.elapsed
	c.newConns += r.newConns
	c.serverRequests += r.serverRequests
	c.mallocs += r.mallocs
	c.cpu += r.cpu
	c.goroutinesLeft = max(c.goroutinesLeft, r.goroutinesLeft)
	if c.firstErr == nil {
		c.firstErr = r.firstErr
	}
}

func (c *cellResult) rate() float64 { return float64(c.requests) / c.elapsed.Seconds() }

func printLoadTable(cfg config, scenario string, cells map[cellKey]*cellResult) {
	switch scenario {
	case "healthy":
		fmt.Println("## Healthy server: GET, 200 with a 3-byte body")
	case "flaky":
		fmt.Println("## Flaky server: GET, every 4th request answered 503 with an 8 KiB body")
	}
	fmt.Println()
	fmt.Println("| conc | client | req/s | vs keepalive | range | 200s/s | client CPU µs/req | new conns / 1k req | allocs / req | errors | 5xx returned | server hits / req | goroutines left |")
	fmt.Println("|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, c := range cfg.conc {
		ours := cells[cellKey{scenario, c, "keepalive"}]
		for _, p := range cfg.peers {
			r := cells[cellKey{scenario, c, p.name}]
			if r == nil || r.requests == 0 {
				continue
			}
			ratio, spread := "-", "-"
			if ours != nil && len(ours.rates) == len(r.rates) {
				// Paired by round: a client and ours ran seconds apart.
				var rs []float64
				for i := range r.rates {
					rs = append(rs, r.rates[i]/ours.rates[i])
				}
				slices.Sort(rs)
				ratio = fmt.Sprintf("%.2fx", rs[len(rs)/2])
				spread = fmt.Sprintf("%.2f-%.2f", rs[0], rs[len(rs)-1])
			}
			req := float64(r.requests)
			ok := float64(r.requests-r.errors-r.non200) / r.elapsed.Seconds()
			fmt.Printf("| %d | %s | %.0f | %s | %s | %.0f | %.1f | %.1f | %.1f | %d | %d | %.3f | %d |\n",
				c, p.name, r.rate(), ratio, spread, ok,
				float64(r.cpu.Microseconds())/req,
				1000*float64(r.newConns)/req, float64(r.mallocs)/req,
				r.errors, r.non200, float64(r.serverRequests)/req, r.goroutinesLeft)
		}
	}
	fmt.Println()
	for _, c := range cfg.conc {
		for _, p := range cfg.peers {
			if r := cells[cellKey{scenario, c, p.name}]; r != nil && r.firstErr != nil {
				msg := r.firstErr.Error()
				if len(msg) > 160 {
					msg = msg[:160] + "..."
				}
				fmt.Printf("- c=%d %s, first error: %s\n", c, p.name, msg)
			}
		}
	}
	fmt.Println()
}

// putResult is one client's large PUT.
type putResult struct {
	peakHeap  uint64 // highest heap objects bytes above the start
	allocated uint64 // bytes allocated during the request
	status    int
	err       error
	attempts  int64 // requests the server answered
	elapsed   time.Duration
}

// heapMetrics are read while a PUT runs. The first is live and unswept
// heap objects: what the process holds, garbage not yet collected
// included. Reading runtime/metrics does not stop the world, so sampling
// every 500 µs barely disturbs the request.
var heapMetrics = []string{"/memory/classes/heap/objects:bytes", "/gc/heap/allocs:bytes"}

func readHeap(s []metrics.Sample) (inUse, allocs uint64) {
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}

// measurePut sends one PUT of size bytes that the server answers 503 on
// its first attempt, and samples the heap while it runs.
func measurePut(srv *server, p peer, url string, size int64) (putResult, error) {
	var r putResult
	inst := p.new()
	_, rq0, err := srv.stats()
	if err != nil {
		return r, err
	}
	samples := make([]metrics.Sample, len(heapMetrics))
	for i, name := range heapMetrics {
		samples[i].Name = name
	}
	runtime.GC()
	base, alloc0 := readHeap(samples)

	stop := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		s := make([]metrics.Sample, len(heapMetrics))
		copy(s, samples)
		var hi uint64
		tick := time.NewTicker(500 * time.Microsecond)
		defer tick.Stop()
		for {
			inUse, _ := readHeap(s)
			hi = max(hi, inUse)
			select {
			case <-stop:
				peak <- hi
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	r.status, r.err = inst.put(url, size)
	r.elapsed = time.Since(start)
	close(stop)
	hi := <-peak
	_, alloc1 := readHeap(samples)
	if hi > base {
		r.peakHeap = hi - base
	}
	r.allocated = alloc1 - alloc0

	_, rq1, err := srv.stats()
	if err != nil {
		return r, err
	}
	r.attempts = rq1 - rq0
	inst.close()
	return r, nil
}

func printPutTable(cfg config, puts map[string][]putResult) {
	fmt.Printf("## %s PUT, streamed from a generator, answered 503 once then 200\n\n", mib(uint64(cfg.putSize)))
	fmt.Println("| client | peak heap (median) | peak heap (max) | bytes allocated (median) | caller saw | attempts | time (median) |")
	fmt.Println("|---|---:|---:|---:|---|---:|---:|")
	for _, p := range cfg.peers {
		rs := puts[p.name]
		if len(rs) == 0 {
			continue
		}
		peaks := collect(rs, func(r putResult) uint64 { return r.peakHeap })
		allocs := collect(rs, func(r putResult) uint64 { return r.allocated })
		times := collect(rs, func(r putResult) uint64 { return uint64(r.elapsed) })
		var saw, attempts []string
		for _, r := range rs {
			s := fmt.Sprint(r.status)
			if r.err != nil {
				s = "error: " + r.err.Error()
			}
			if !slices.Contains(saw, s) {
				saw = append(saw, s)
			}
			a := fmt.Sprint(r.attempts)
			if !slices.Contains(attempts, a) {
				attempts = append(attempts, a)
			}
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %v |\n", p.name,
			mib(median(peaks)), mib(slices.Max(peaks)), mib(median(allocs)),
			strings.Join(saw, ", "), strings.Join(attempts, ", "),
			time.Duration(median(times)).Round(time.Millisecond))
	}
	fmt.Println()
}

func collect(rs []putResult, f func(putResult) uint64) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

func median(xs []uint64) uint64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
