package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestMain fails the run if any test leaves a goroutine behind: every
// client kabench builds must have its idle connections closed, and every
// server and nginx must be stopped, by run itself.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testDeadline bounds every call of run: a hang fails the test instead of
// the whole package timing out.
const testDeadline = 60 * time.Second

type result struct {
	code           int
	stdout, stderr string
}

// runKabench calls run with args under ctx (the test's if nil), also
// writing stdout to tee if it is not nil.
func runKabench(t *testing.T, ctx context.Context, tee io.Writer, args ...string) result {
	t.Helper()
	if ctx == nil {
		ctx = t.Context()
	}
	ctx, cancel := context.WithTimeoutCause(ctx, testDeadline, errTestDeadline)
	defer cancel()
	var stdout, stderr bytes.Buffer
	var w io.Writer = &stdout
	if tee != nil {
		w = io.MultiWriter(&stdout, tee)
	}
	code := run(ctx, args, w, &stderr)
	require.NotErrorIs(t, context.Cause(ctx), errTestDeadline, "run did not finish in time; stderr:\n%s", stderr.String())
	return result{code, stdout.String(), stderr.String()}
}

var errTestDeadline = errors.New("test deadline")

func decode(t *testing.T, s string) report {
	t.Helper()
	var r report
	require.NoError(t, json.Unmarshal([]byte(s), &r), "stdout is not JSON:\n%s", s)
	return r
}

func find(t *testing.T, r report, setup, client string) clientResult {
	t.Helper()
	for _, res := range r.Results {
		if res.Setup == setup && res.Client == client {
			return res
		}
	}
	require.Failf(t, "no result", "%s, %s not in %+v", setup, client, r.Results)
	return clientResult{}
}

func TestDefaultRunPrintsATablePerClientAndASummary(t *testing.T) {
	r := runKabench(t, nil, nil, "-n", "200", "-c", "4", "-runs", "1")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	for _, client := range allClients {
		assert.Contains(t, r.stdout, "direct, "+client+": "+describe[client])
	}
	assert.Equal(t, 3, strings.Count(r.stdout, "Test run 1"))
	assert.Equal(t, 3, strings.Count(r.stdout, "Average"))
	assert.Contains(t, r.stdout, "Summary (averages; difference in requests/s to nokeepalive (direct))")
	assert.Contains(t, r.stdout, "baseline")
	assert.Empty(t, r.stderr, "no progress line when stderr is not a terminal")
}

func TestJSONCountsConnectionsAtClientAndServer(t *testing.T) {
	const n, c = 200, 4
	r := runKabench(t, nil, nil, "-n", "200", "-c", "4", "-runs", "2", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	require.Len(t, rep.Results, 3)
	assert.True(t, rep.Embedded)
	assert.Equal(t, "nokeepalive (direct)", rep.Baseline)

	for _, res := range rep.Results {
		require.Len(t, res.Runs, 2, res.Client)
		for _, run := range res.Runs {
			assert.EqualValues(t, n, run.Requests, res.Client)
			assert.Zero(t, run.Errors, res.Client)
			assert.Positive(t, run.RPS, res.Client)
			assert.Positive(t, run.P99Ms, res.Client)
			assert.GreaterOrEqual(t, run.P99Ms, run.P50Ms, res.Client)
			require.NotNil(t, run.ServerConns, res.Client)
		}
	}
	nokeep := find(t, rep, "direct", clientNoKeepAlive)
	assert.Nil(t, nokeep.VsBaseline, "the baseline has no difference to itself")
	for _, run := range nokeep.Runs {
		assert.EqualValues(t, n, run.NewConns, "a new connection per request")
		assert.EqualValues(t, n, *run.ServerConns, "a new connection per request")
	}
	keep := find(t, rep, "direct", clientKeepAlive)
	require.NotNil(t, keep.VsBaseline)
	for _, run := range keep.Runs {
		// A new client per run dials about one connection per worker;
		// twice that allows for dials that raced a returning connection.
		assert.Positive(t, run.NewConns)
		assert.LessOrEqual(t, run.NewConns, int64(2*c))
		assert.LessOrEqual(t, *run.ServerConns, int64(2*c))
		assert.Zero(t, run.Retries)
	}
}

func TestInvalidInputExitsWithAMessageNamingTheFlag(t *testing.T) {
	tests := []usageCase{
		{"zero concurrency", []string{"-c", "0"}, "invalid -c: must be at least 1, got 0"},
		{"negative requests", []string{"-n", "-1"}, "invalid -n: must be at least 1, got -1"},
		{"zero runs", []string{"-runs", "0"}, "invalid -runs"},
		{"negative body", []string{"-body", "-5"}, "invalid -body"},
		{"zero timeout", []string{"-timeout", "0s"}, "invalid -timeout"},
		{"negative max errors", []string{"-max-errors", "-1"}, "invalid -max-errors"},
		{"unknown client", []string{"-clients", "default,curl"}, `invalid -clients: unknown client "curl"`},
		{"no client", []string{"-clients", ","}, "invalid -clients: no client given"},
		{"a client twice", []string{"-clients", "default,default"}, `invalid -clients: client "default" given twice`},
		{"method with a space", []string{"-method", "GET X"}, "invalid -method"},
		{"lower-case GET", []string{"-method", "get"}, `invalid -method: "get": methods are case-sensitive; did you mean GET?`},
		{"mixed-case Post", []string{"-method", "Post"}, "did you mean POST?"},
		{"unknown proxy", []string{"-proxy", "haproxy"}, `invalid -proxy: unknown proxy "haproxy"`},
		{"nginx with a URL", []string{"-proxy", "nginx", "-url", "http://127.0.0.1:1/"}, "invalid -proxy"},
		{"URL without http", []string{"-url", "ftp://127.0.0.1/"}, "invalid -url: scheme must be http or https"},
		{"URL without host", []string{"-url", "http:///x"}, "invalid -url: no host"},
		{"not a number", []string{"-n", "many"}, `invalid value "many" for flag -n`},
		{"unknown flag", []string{"-k"}, "flag provided but not defined: -k"},
		{"stray argument", []string{"http://127.0.0.1:1/"}, "invalid -url: unexpected argument"},
	}
	checkUsageErrors(t, tests)
}

func TestHelpExitsZero(t *testing.T) {
	r := runKabench(t, nil, nil, "-h")
	assert.Equal(t, exitOK, r.code)
	assert.Contains(t, r.stderr, "Usage: kabench")
	assert.Contains(t, r.stderr, "-proxy")
}

func TestRefusedURLExitsNonZero(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens there now

	r := runKabench(t, nil, nil, "-url", "http://"+addr+"/")
	assert.Equal(t, exitFailure, r.code)
	assert.Contains(t, r.stderr, "kabench: cannot reach http://"+addr+"/")
	assert.Contains(t, r.stderr, "connection refused")
	assert.Empty(t, r.stdout)
}

// A server that accepts connections and never answers must not hang
// kabench: the probe gives up after -timeout.
func TestSilentURLExitsNonZeroAfterTheTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})

	r := runKabench(t, nil, nil, "-url", "http://"+ln.Addr().String()+"/", "-timeout", "300ms")
	assert.Equal(t, exitFailure, r.code)
	assert.Contains(t, r.stderr, "cannot reach")
	assert.Contains(t, r.stderr, "Client.Timeout exceeded")
}

func TestServerAnswering5xxExitsNonZero(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)

	r := runKabench(t, nil, nil, "-url", srv.URL, "-method", "POST", "-body", "10")
	assert.Equal(t, exitFailure, r.code)
	assert.Contains(t, r.stderr, `answered "503 Service Unavailable" to a probe POST request; kabench measures endpoints that work: point -url at one that answers 2xx, such as a health endpoint (http://HOST/health)`)
	assert.EqualValues(t, 1, hits.Load(), "nothing is measured past the failed probe")
}

// A server that fails every 4th request after the probe: the clients without
// retries report those errors, keepalive retries them away, and the exit
// status says that requests failed.
func TestFailedRequestsAreReportedAndRetriesCounted(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1)%4 == 0 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)

	// One worker makes the order of requests, and so which fail, fixed.
	r := runKabench(t, nil, nil, "-url", srv.URL, "-n", "40", "-c", "1", "-runs", "1", "-json", "-max-errors", "0")
	assert.Equal(t, exitFailure, r.code)
	assert.Contains(t, r.stderr, "kabench: 20 requests failed")
	rep := decode(t, r.stdout)
	assert.False(t, rep.Embedded)
	assert.EqualValues(t, 20, rep.Errors)
	for _, client := range []string{clientNoKeepAlive, clientDefault} {
		run := find(t, rep, "direct", client).Runs[0]
		assert.EqualValues(t, 10, run.Errors, client)
		assert.EqualValues(t, 30, run.Requests, client)
		assert.Contains(t, run.FirstError, "503 Service Unavailable", client)
		assert.Nil(t, run.ServerConns, "no server count for -url")
	}
	keep := find(t, rep, "direct", clientKeepAlive).Runs[0]
	assert.Zero(t, keep.Errors)
	assert.EqualValues(t, 40, keep.Requests)
	assert.GreaterOrEqual(t, keep.Retries, int64(10))
	for _, client := range []string{clientNoKeepAlive, clientDefault} {
		res := find(t, rep, "direct", client)
		assert.Equal(t, map[string]int64{"503 Service Unavailable": 10}, res.Runs[0].ErrorKinds, client)
		assert.Equal(t, map[string]int64{"503 Service Unavailable": 10}, res.ErrorKinds, client)
		assert.Contains(t, rep.Notes, client+": 10 failed requests in 1 run (10 x 503 Service Unavailable).")
	}
	assert.Nil(t, find(t, rep, "direct", clientKeepAlive).ErrorKinds)

	r = runKabench(t, nil, nil, "-url", srv.URL, "-n", "40", "-c", "1", "-runs", "1", "-max-errors", "0", "-clients", "default")
	assert.Equal(t, exitFailure, r.code)
	assert.Contains(t, r.stdout, "\nrun 1: 10 errors (10 x 503 Service Unavailable); the first: GET "+srv.URL+": 503 Service Unavailable\n")
	assert.Contains(t, r.stdout, "\nNote: default: 10 failed requests in 1 run (10 x 503 Service Unavailable).\n")
}

// A server that answers the probe and then stalls: every request ends at
// -timeout, and the runs stop at -max-errors instead of waiting out
// every request.
func TestStalledRequestsEndAtTheTimeout(t *testing.T) {
	var hits atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) > 1 {
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(func() {
		close(release)
		srv.Close()
	})

	r := runKabench(t, nil, nil, "-url", srv.URL, "-n", "1000", "-c", "2", "-runs", "1",
		"-clients", "nokeepalive,keepalive", "-timeout", "300ms", "-max-errors", "4", "-json")
	assert.Equal(t, exitFailure, r.code)
	rep := decode(t, r.stdout)
	for _, client := range []string{clientNoKeepAlive, clientKeepAlive} {
		run := find(t, rep, "direct", client).Runs[0]
		assert.True(t, run.Aborted, client)
		assert.Zero(t, run.Requests, client)
		assert.Contains(t, run.FirstError, "context deadline exceeded", client)
		assert.Zero(t, run.Retries, "a request past its deadline is not retried")
		assert.Equal(t, []string{"timeout (-timeout 300ms)"}, slices.Collect(maps.Keys(run.ErrorKinds)), client)
		assert.Equal(t, stoppedMaxErrors, run.Stopped, client)
	}
}

// probeOnlyServer answers its first request, kabench's probe, and every
// later one with 500. It returns the server and its count of requests.
func probeOnlyServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	hits := new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) > 1 { // only the probe succeeds
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)
	return srv, hits
}

func TestTooManyErrorsStopTheRun(t *testing.T) {
	srv, hits := probeOnlyServer(t)
	r := runKabench(t, nil, nil, "-url", srv.URL, "-n", "100000", "-c", "2", "-runs", "3",
		"-clients", "default", "-max-errors", "5", "-json")
	assert.Equal(t, exitFailure, r.code)
	rep := decode(t, r.stdout)
	runs := find(t, rep, "direct", clientDefault).Runs
	require.Len(t, runs, 3)
	for _, run := range runs {
		assert.True(t, run.Aborted)
		assert.GreaterOrEqual(t, run.Errors, int64(5))
		assert.LessOrEqual(t, run.Errors, int64(5+2), "at most one more per worker in flight")
	}
	assert.Less(t, hits.Load(), int64(100), "the runs stopped long before 100,000 requests")
	assert.Regexp(t, `^default: [0-9]+ failed requests in 3 runs \([0-9]+ x 500 Internal Server Error\); 3 runs stopped after 5 errors \(-max-errors\)\.$`, rep.Notes[0])

	// A server of its own: a request the last run cut off may still reach
	// the first one.
	srv, _ = probeOnlyServer(t)
	r = runKabench(t, nil, nil, "-url", srv.URL, "-n", "100000", "-c", "1", "-runs", "1", "-clients", "default", "-max-errors", "3")
	assert.Equal(t, exitFailure, r.code)
	assert.Contains(t, r.stdout, "\nrun 1: 3 errors, stopped by -max-errors 3 (3 x 500 Internal Server Error); the first: ")
	assert.Contains(t, r.stdout, "\nNote: default: 3 failed requests in 1 run (3 x 500 Internal Server Error); 1 run stopped after 3 errors (-max-errors).\n")
}

func TestProxyNginxMeasuresUpstreamKeepAliveOnAndOff(t *testing.T) {
	requireNginx(t)
	const n = 200
	r := runKabench(t, nil, nil, "-proxy", "nginx", "-n", "200", "-c", "4", "-runs", "1", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	require.Len(t, rep.Results, 6)
	assert.Equal(t, "nokeepalive (nginx, upstream keep-alive off)", rep.Baseline)
	for _, client := range allClients {
		off := find(t, rep, "nginx, upstream keep-alive off", client).Runs[0]
		on := find(t, rep, "nginx, upstream keep-alive on", client).Runs[0]
		assert.EqualValues(t, n, off.Requests, client)
		assert.EqualValues(t, n, on.Requests, client)
		// Without upstream keep-alive nginx opens a connection to the
		// server per request; with it, a few that it reuses.
		assert.EqualValues(t, n, *off.ServerConns, client)
		assert.LessOrEqual(t, *on.ServerConns, int64(n/4), client)
	}
	assertNginxStopped(t, rep.URL)
}

func TestProxyNginxStopsWhenInterrupted(t *testing.T) {
	requireNginx(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// Interrupt after the first run, as a Ctrl-C would.
	runDone = cancel
	t.Cleanup(func() { runDone = nil })
	r := runKabench(t, ctx, nil, "-proxy", "nginx", "-n", "300", "-c", "4", "-runs", "2")
	assert.Equal(t, exitFailure, r.code)
	assert.Contains(t, r.stderr, "kabench: interrupted; the results above are partial")
	assert.Equal(t, 1, strings.Count(r.stdout, "Test run 1"), "nothing measured after the interrupt")
	assert.Contains(t, r.stdout, "nginx, upstream keep-alive off, nokeepalive")
	i := strings.Index(r.stdout, "http://")
	require.GreaterOrEqual(t, i, 0)
	assertNginxStopped(t, strings.Fields(r.stdout[i:])[0])
}

func TestProxyNginxWithoutNginxExitsNonZero(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	r := runKabench(t, nil, nil, "-proxy", "nginx")
	assert.Equal(t, exitFailure, r.code)
	assert.Contains(t, r.stderr, "kabench: -proxy nginx: no nginx on PATH")
}

func requireNginx(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Skip("nginx is not on PATH; install nginx (or nginx-light) to test -proxy nginx")
	}
}

// assertNginxStopped checks that nothing accepts connections at the URL
// nginx served.
func assertNginxStopped(t *testing.T, rawURL string) {
	t.Helper()
	host := strings.TrimSuffix(strings.TrimPrefix(rawURL, "http://"), "/")
	c, err := net.DialTimeout("tcp", host, 5*time.Second)
	if err == nil {
		c.Close()
	}
	assert.Error(t, err, "nginx still listens on %s", host)
}

func TestPercentileIsNearestRank(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      int
		want   time.Duration
	}{
		{"no latencies give zero", nil, 50, 0},
		{"one latency is every percentile", ms(7), 99, 7 * time.Millisecond},
		{"p50 of 1..100 is 50", ms(hundred...), 50, 50 * time.Millisecond},
		{"p99 of 1..100 is 99", ms(hundred...), 99, 99 * time.Millisecond},
		{"p99 of four is the largest", ms(1, 2, 3, 4), 99, 4 * time.Millisecond},
		{"p50 of four is the second", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, percentile(tt.sorted, tt.p))
		})
	}
}

func TestCommasGroupsThousands(t *testing.T) {
	tests := []struct {
		give float64
		prec int
		want string
	}{
		{0, 0, "0"},
		{999, 0, "999"},
		{1000, 0, "1,000"},
		{1234567.891, 1, "1,234,567.9"},
		{-20000, 0, "-20,000"},
		{15019.64, 1, "15,019.6"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, commas(tt.give, tt.prec), "%v", tt.give)
	}
}

// usageCase is a command line that kabench must refuse with want in its
// usage error.
type usageCase struct {
	name string
	args []string
	want string
}

// checkUsageErrors runs each case and checks that kabench exits with a
// usage error naming what was wrong, and prints no result.
func checkUsageErrors(t *testing.T, tests []usageCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runKabench(t, nil, nil, tt.args...)
			assert.Equal(t, exitUsage, r.code)
			assert.Contains(t, r.stderr, tt.want)
			assert.Empty(t, r.stdout)
		})
	}
}

// A custom method is sent as given, case and all: only the standard
// methods have an upper-case form to suggest.
func TestCustomMethodKeepsItsCase(t *testing.T) {
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got.Store(r.Method) }))
	t.Cleanup(srv.Close)
	r := runKabench(t, nil, nil, "-url", srv.URL, "-method", "purge", "-n", "2", "-c", "1", "-runs", "1", "-clients", "default")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Equal(t, "purge", got.Load())
}
