package keepalive_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive"
)

// The benchmarks compare a default *keepalive.Transport with a bare
// http.Transport tuned the same way, on the success path over loopback. The
// difference between the two is the cost of the retry layer and of the
// read-timeout body wrapper. Compare with
//
//	go test -run '^$' -bench 'BenchmarkTransport$' -benchmem -count 10 | tee new.txt
//	benchstat -col /impl new.txt
//	go test -run '^$' -bench BenchmarkTransportPaired -count 10 | tee paired.txt
//	benchstat paired.txt
//
// The peers (go-retryablehttp, resty, failsafe-go) are measured by the
// separate module in bench/, so that they stay out of this go.mod.

// benchBody is the request body of the POST benchmarks.
var benchBody = bytes.Repeat([]byte("k"), 1<<10)

// benchResponse is what the server answers: small, so that the client's
// own costs are not hidden behind copying.
var benchResponse = []byte("ok\n")

// BenchmarkTransport runs each case once per transport, as sub-benchmarks
// impl=bare and impl=keepalive, and reports allocations and the process
// CPU time per request (cpu-ns/op, client and server together).
func BenchmarkTransport(b *testing.B) {
	impls := []struct {
		name string
		new  func(b *testing.B) http.RoundTripper
	}{
		{"bare", newBareTransport},
		{"keepalive", newKeepaliveTransport},
	}
	for _, op := range []string{http.MethodGet, http.MethodPost} {
		for _, mode := range []string{"seq", "par"} {
			for _, impl := range impls {
				b.Run("op="+op+"/mode="+mode+"/impl="+impl.name, func(b *testing.B) {
					srv := newBenchServer(b)
					client := &http.Client{Transport: impl.new(b)}
					if mode == "seq" {
						benchSequential(b, client, op, srv.URL)
					} else {
						benchParallel(b, client, op, srv.URL)
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
		for _, mode := range []string{"seq", "par"} {
			b.Run("op="+op+"/mode="+mode, func(b *testing.B) {
				srv := newBenchServer(b)
				clients := [2]*http.Client{
					{Transport: newBareTransport(b)},
					{Transport: newKeepaliveTransport(b)},
				}
				var (
					mu    sync.Mutex
					times [2][]time.Duration // per transport, one per request
				)
				// run sends n pairs, alternating which transport goes first,
				// and keeps the times.
				run := func(next func() bool) error {
					var local [2][]time.Duration
					defer func() {
						mu.Lock()
						defer mu.Unlock()
						for i := range local {
							times[i] = append(times[i], local[i]...)
						}
					}()
					for n := 0; next(); n++ {
						for k := range 2 {
							i := (n + k) % 2
							start := time.Now()
							if err := benchRequest(clients[i], op, srv.URL); err != nil {
								return err
							}
							local[i] = append(local[i], time.Since(start))
						}
					}
					return nil
				}
				b.ReportAllocs()
				if mode == "seq" {
					if err := run(b.Loop); err != nil {
						b.Fatal(err)
					}
				} else {
					b.SetParallelism(4)
					b.RunParallel(func(pb *testing.PB) {
						if err := run(pb.Next); err != nil {
							b.Error(err)
						}
					})
				}
				bare, ka := medianDuration(times[0]), medianDuration(times[1])
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

func medianDuration(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func benchSequential(b *testing.B, client *http.Client, method, url string) {
	b.ReportAllocs()
	cpu := startCPU()
	for b.Loop() {
		if err := benchRequest(client, method, url); err != nil {
			b.Fatal(err)
		}
	}
	cpu.report(b)
}

func benchParallel(b *testing.B, client *http.Client, method, url string) {
	b.ReportAllocs()
	// 4 goroutines per CPU: enough to keep several pooled connections busy
	// at once on a small machine.
	b.SetParallelism(4)
	cpu := startCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := benchRequest(client, method, url); err != nil {
				b.Error(err)
				return
			}
		}
	})
	cpu.report(b)
}

// cpuMeter reports the process CPU time per operation, client and server
// together, as the metric cpu-ns/op.
type cpuMeter struct {
	start time.Duration
	ok    bool
}

func startCPU() cpuMeter {
	d, ok := processCPU()
	return cpuMeter{start: d, ok: ok}
}

func (m cpuMeter) report(b *testing.B) {
	end, ok := processCPU()
	if !m.ok || !ok || b.N == 0 {
		return
	}
	b.ReportMetric(float64(end-m.start)/float64(b.N), "cpu-ns/op")
}

// benchRequest sends one request and reads and closes the whole response,
// so that its connection goes back to the pool.
func benchRequest(client *http.Client, method, url string) error {
	var body io.Reader
	if method == http.MethodPost {
		// A bytes.Reader gives the request a GetBody, so it is replayable
		// and the retry layer needs no buffer.
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

func newBenchServer(b *testing.B) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(benchResponse)
	}))
	b.Cleanup(srv.Close)
	return srv
}

func newKeepaliveTransport(b *testing.B) http.RoundTripper {
	tr, err := keepalive.NewTransport()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(tr.CloseIdleConnections)
	return tr
}

// newBareTransport is an http.Transport with the settings of a default
// keepalive.Transport (the values its options' docs state), and nothing on
// top.
func newBareTransport(b *testing.B) http.RoundTripper {
	dialer := &net.Dialer{
		Timeout: 5 * time.Second,
		KeepAliveConfig: net.KeepAliveConfig{
			Enable:   true,
			Idle:     30 * time.Second, // keepalive's fixed TCP keep-alive tuning
			Interval: 15 * time.Second,
			Count:    3,
		},
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		MaxConnsPerHost:       0,
		IdleConnTimeout:       50 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		ExpectContinueTimeout: time.Second, // as keepalive sets it
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: 30 * time.Second, // keepalive's fixed HTTP/2 health checks
			PingTimeout:     15 * time.Second,
		},
	}
	b.Cleanup(tr.CloseIdleConnections)
	return tr
}
