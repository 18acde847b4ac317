package keepalive

import (
	"bytes"
	"io"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// The benchmarks compare a default *keepalive.Transport with a bare
// http.Transport tuned the same way (cbKeepalive and cbBare), on the
// success path over loopback. The difference between the two is the cost
// of the retry layer and of the read-timeout body wrapper. Compare with
//
//	go test -run '^$' -bench 'BenchmarkTransport$' -benchmem -count 10 | tee new.txt
//	benchstat -col /impl new.txt
//	go test -run '^$' -bench BenchmarkTransportPaired -count 10 | tee paired.txt
//	benchstat paired.txt
//
// The peers (go-retryablehttp, resty, failsafe-go) are measured by the
// separate module in bench/, so that they stay out of this go.mod. The
// scaffold they share with the whole-request comparison (servers,
// transports, requests, CPU time, medians) is in clientbench_test.go.

// benchBody is the request body of the POST benchmarks.
var benchBody = bytes.Repeat([]byte("k"), 1<<10)

// benchImpls are the transports the benchmarks compare.
var benchImpls = []struct {
	name string
	new  func(tb testing.TB) http.RoundTripper
}{
	{"bare", func(tb testing.TB) http.RoundTripper { return cbBare(tb, defaultReadTimeout) }},
	{"keepalive", func(tb testing.TB) http.RoundTripper { return cbKeepalive(tb) }},
}

// benchModes are the concurrencies of the benchmarks: one request at a
// time, and 4 goroutines per CPU, enough to keep several pooled
// connections busy at once on a small machine.
var benchModes = []struct {
	name string
	g    func() int
}{
	{"seq", func() int { return 1 }},
	{"par", func() int { return 4 * runtime.GOMAXPROCS(0) }},
}

// BenchmarkTransport runs each case once per transport, as sub-benchmarks
// impl=bare and impl=keepalive, and reports allocations and the process
// CPU time per request (cpu-ns/op, client and server together).
func BenchmarkTransport(b *testing.B) {
	for _, op := range []string{http.MethodGet, http.MethodPost} {
		for _, mode := range benchModes {
			for _, impl := range benchImpls {
				b.Run("op="+op+"/mode="+mode.name+"/impl="+impl.name, func(b *testing.B) {
					srv := cbServer(b)
					client := &http.Client{Transport: impl.new(b)}
					cpu0, cpuOK := cbCPU()
					cbLoop(b, mode.g(), func() error { return benchRequest(client, op, srv.URL) })
					if cpu1, _ := cbCPU(); cpuOK && b.N > 0 {
						b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
					}
				})
			}
		}
	}
}

// BenchmarkTransportPaired sends the same requests through both transports
// alternately, one request each in turn, and reports the median time of a
// request through each (bare-ns/req, keepalive-ns/req) and the difference
// of the medians (overhead-%). Load from other processes falls on both
// alike, and the median ignores the requests that a descheduling stretched
// by milliseconds, so the difference stays measurable on a busy machine
// where the separate benchmarks above vary by tens of percent.
func BenchmarkTransportPaired(b *testing.B) {
	for _, op := range []string{http.MethodGet, http.MethodPost} {
		for _, mode := range benchModes {
			b.Run("op="+op+"/mode="+mode.name, func(b *testing.B) {
				srv := cbServer(b)
				var clients [2]*http.Client
				for i, impl := range benchImpls {
					clients[i] = &http.Client{Transport: impl.new(b)}
				}
				var (
					mu    sync.Mutex
					times [2][]time.Duration // per transport, one per request
					n     int
				)
				// Each call sends a pair, alternating which transport goes
				// first, and keeps the times.
				cbLoop(b, mode.g(), func() error {
					mu.Lock()
					n++
					first := n % 2
					mu.Unlock()
					var took [2]time.Duration
					for k := range 2 {
						i := (first + k) % 2
						start := time.Now()
						if err := benchRequest(clients[i], op, srv.URL); err != nil {
							return err
						}
						took[i] = time.Since(start)
					}
					mu.Lock()
					times[0], times[1] = append(times[0], took[0]), append(times[1], took[1])
					mu.Unlock()
					return nil
				})
				bare, ka := median(times[0]), median(times[1])
				if bare == 0 {
					return
				}
				b.ReportMetric(float64(bare), "bare-ns/req")
				b.ReportMetric(float64(ka), "keepalive-ns/req")
				b.ReportMetric(100*(float64(ka)/float64(bare)-1), "overhead-%")
			})
		}
	}
}

// benchRequest sends one request and reads and closes the whole response,
// so that its connection goes back to the pool. A POST carries benchBody,
// from a bytes.Reader: it has a GetBody, so it is replayable and the
// retry layer needs no buffer.
func benchRequest(client *http.Client, method, url string) error {
	var body io.Reader
	if method == http.MethodPost {
		body = bytes.NewReader(benchBody)
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	if cerr := resp.Body.Close(); err == nil {
		err = cerr
	}
	if err == nil && resp.StatusCode != http.StatusOK {
		err = &statusError{resp.StatusCode}
	}
	return err
}

type statusError struct{ code int }

func (e *statusError) Error() string { return "unexpected status " + http.StatusText(e.code) }

// median returns the middle of xs, the mean of the two middle values for
// an even count, and zero for none; xs is not modified.
func median[T ~int64 | ~float64](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	var zero T
	switch n := len(s); {
	case n == 0:
		return zero
	case n%2 == 1:
		return s[n/2]
	default:
		return s[n/2-1] + (s[n/2]-s[n/2-1])/2
	}
}
