package main

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptrace"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every request without keep-alive dials, inside its own latency; keepalive
// dials a few times for all of them. The dial phases per request say so.
func TestPhasesSayWhereTheTimeGoes(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"over plain HTTP", nil},
		{"over TLS with HTTP/1.1", []string{"-tls", "-http1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-n", "200", "-c", "4", "-runs", "1", "-json"}, tt.args...)
			r := runKabench(t, nil, nil, args...)
			require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
			rep := decode(t, r.stdout)
			tls := len(tt.args) > 0
			for _, res := range rep.Results {
				p := res.Runs[0].Phases
				assert.Zero(t, p.DNS, "%s: no lookup for 127.0.0.1", res.Client)
				assert.Positive(t, p.Wait, res.Client)
				assert.GreaterOrEqual(t, p.Read, 0.0, res.Client)
				assert.Equal(t, p, res.Average.Phases, "%s: the average of one run is that run", res.Client)
				assert.Positive(t, res.Average.MeanMs, res.Client)
				if !tls {
					assert.Zero(t, p.TLS, res.Client)
				}
			}
			nokeep := find(t, rep, "direct", clientNoKeepAlive).Average
			keep := find(t, rep, "direct", clientKeepAlive).Average
			assert.Positive(t, nokeep.Phases.Connect)
			assert.Less(t, keep.Phases.Connect, nokeep.Phases.Connect, "4 dials for 200 requests against 200")
			if tls {
				assert.Positive(t, nokeep.Phases.TLS)
				assert.Less(t, keep.Phases.TLS, nokeep.Phases.TLS)
			}
			// Each request without keep-alive waits for its own dial: its
			// phases fit in its latency.
			p := nokeep.Phases
			assert.LessOrEqual(t, p.Connect+p.TLS+p.Wait+p.Read, nokeep.MeanMs+0.001)

			r = runKabench(t, nil, nil, append([]string{"-n", "20", "-c", "2", "-runs", "1"}, tt.args...)...)
			require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
			head := `\nWhere the time goes \(ms per request, averages\)\n  Setup +Client +DNS +Connect +Wait +Read +Mean latency\n`
			if tls {
				head = `\nWhere the time goes \(ms per request, averages\)\n  Setup +Client +DNS +Connect +TLS +Wait +Read +Mean latency\n`
			}
			assert.Regexp(t, head, r.stdout)
		})
	}
}

func TestPhasesOfAreMeansPerRequest(t *testing.T) {
	workers := make([]worker, 2)
	workers[0].clock.sum[phaseConnect].Store(int64(3 * time.Millisecond))
	workers[1].clock.sum[phaseConnect].Store(int64(1 * time.Millisecond))
	workers[1].clock.sum[phaseWait].Store(int64(8 * time.Millisecond))
	assert.Equal(t, phaseMs{Connect: 1, Wait: 2}, phasesOf(workers, 4))
	assert.Equal(t, phaseMs{}, phasesOf(workers, 0), "no request, no phases")
}

// BenchmarkRequestTrace measures what the phase trace costs a request to
// the embedded server with each client, from 64 goroutines as kabench's
// default -c: compare traced and untraced. On a shared machine, run it
// several times in a row rather than with -count, so that a busy spell
// slows both alike:
//
//	for i in 1 2 3 4 5 6 7 8; do go test -run '^$' -bench RequestTrace -benchtime 20000x ./cmd/kabench/; done
func BenchmarkRequestTrace(b *testing.B) {
	srv, err := startServer(nil, 1)
	require.NoError(b, err)
	b.Cleanup(func() { srv.close(time.Second) })
	cfg := &config{method: http.MethodGet, timeout: 10 * time.Second}
	for _, name := range allClients {
		for _, traced := range []bool{false, true} {
			mode := "untraced"
			if traced {
				mode = "traced"
			}
			b.Run(name+"/"+mode, func(b *testing.B) {
				traceRequests = traced
				b.Cleanup(func() { traceRequests = true })
				c, err := newClient(name, target{url: srv.url}, cfg)
				require.NoError(b, err)
				defer c.close()
				var failures atomic.Int64
				b.ReportAllocs()
				b.SetParallelism(defaultConcurrency / runtime.GOMAXPROCS(0)) // kabench's -c
				b.RunParallel(func(pb *testing.PB) {
					var w worker
					ctx := w.clock.withTrace(context.Background())
					for pb.Next() {
						if _, _, err := doRequest(ctx, c.Client, cfg, srv.url, &w.clock); err != nil {
							failures.Add(1)
						}
					}
				})
				require.Zero(b, failures.Load())
			})
		}
	}
}

// BenchmarkPhaseHooks measures the phase trace's own work for a request
// over a reused connection (the write, first byte and read marks) and for
// one that dials (with connect and TLS marks): what the trace adds to a
// request, apart from net/http's calls of the hooks.
func BenchmarkPhaseHooks(b *testing.B) {
	var w worker
	trace := httptrace.ContextClientTrace(w.clock.withTrace(context.Background()))
	b.Run("reused", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			trace.WroteRequest(httptrace.WroteRequestInfo{})
			trace.GotFirstResponseByte()
			w.clock.bodyRead()
		}
	})
	b.Run("dialed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			trace.ConnectStart("tcp", "127.0.0.1:1")
			trace.ConnectDone("tcp", "127.0.0.1:1", nil)
			trace.TLSHandshakeStart()
			trace.TLSHandshakeDone(tls.ConnectionState{}, nil)
			trace.WroteRequest(httptrace.WroteRequestInfo{})
			trace.GotFirstResponseByte()
			w.clock.bodyRead()
		}
	})
}
