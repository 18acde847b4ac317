// This file holds the scenarios of issue 10 against real servers, each
// started by the test on a random loopback port with its own config in a
// temp dir: nginx, HAProxy and Caddy in front of a Go upstream that records
// every request it receives (ngxUpstream, nginx_test.go), and a Go
// http.Server alone. TestIdleCloseRealServers reuses pooled connections
// right when each server's idle timeout closes them; TestCaddyReloadGETs
// reloads Caddy under a stream of GETs. A test skips when a server's binary
// is missing, except in CI (env CI set; .ci/run installs them all), where
// that fails it. Plain HTTP/1.1 throughout.

package keepalive

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// realInCI reports whether the tests run in CI, where a missing server
// binary is a failure, not a skip.
func realInCI() bool { return os.Getenv("CI") != "" }

// realBinary returns the path of the server binary name, looked up on PATH
// and in /usr/sbin. When it is missing it skips the test, or fails it in CI;
// pkg is the Debian package that has it.
func realBinary(t testing.TB, name, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := filepath.Join("/usr/sbin", name); fileExists(p) {
		return p
	}
	if realInCI() {
		t.Fatalf("%s not installed, and CI is set: CI must run the real-server scenarios (apt-get install -y %s)", name, pkg)
	}
	t.Skipf("%s not installed (apt-get install -y %s): skipping the real-server scenario", name, pkg)
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// realFreeAddr returns a loopback address with a port that was free a
// moment ago.
func realFreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// realProc is a server process, a child of the test, that listens on addr.
type realProc struct {
	name   string
	addr   string
	cmd    *exec.Cmd
	exited chan struct{}
	logs   []string // files shown when the test fails: the output, and any log the server writes
}

// realLaunch starts a server on a fresh loopback port and waits until it
// accepts connections; it is stopped when the test ends. setup gets the
// listen address, writes the config and returns the command and the log
// files the server writes. Another process may take the port between
// choosing and binding it, so a server that exits or does not listen is
// tried again on another port, three times in all.
func realLaunch(t testing.TB, name string, setup func(addr string) (*exec.Cmd, []string)) *realProc {
	t.Helper()
	out := filepath.Join(t.TempDir(), name+".out")
	for attempt := 1; ; attempt++ {
		addr := realFreeAddr(t)
		cmd, logs := setup(addr)
		f, err := os.Create(out)
		require.NoError(t, err)
		cmd.Stdout, cmd.Stderr = f, f
		p := &realProc{name: name, addr: addr, cmd: cmd, exited: make(chan struct{}), logs: append([]string{out}, logs...)}
		err = cmd.Start()
		f.Close() // the child has its own copy
		require.NoError(t, err, "starting %s", name)
		go func() {
			_ = cmd.Wait()
			close(p.exited)
		}()
		if p.waitListening(20 * time.Second) {
			t.Cleanup(func() { p.stop(t) })
			return p
		}
		p.stop(t)
		require.Less(t, attempt, 3, "%s did not start:\n%s", name, p.logText())
	}
}

// waitListening reports whether the server accepted a connection within
// limit, before it exited. nginx and HAProxy signal readiness in no other
// way than listening.
func (p *realProc) waitListening(limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return false
		default:
		}
		if c, err := net.DialTimeout("tcp", p.addr, time.Second); err == nil {
			c.Close()
			return true
		}
		select {
		case <-p.exited:
			return false
		case <-time.After(10 * time.Millisecond): // polling an external process
		}
	}
	return false
}

func (p *realProc) logText() string {
	var b strings.Builder
	for _, f := range p.logs {
		text, _ := os.ReadFile(f)
		fmt.Fprintf(&b, "--- %s\n%s", filepath.Base(f), text)
	}
	return b.String()
}

// stop ends the server with SIGTERM (a fast shutdown for nginx, HAProxy
// and Caddy), or SIGKILL if it is still there 20 s later.
func (p *realProc) stop(t testing.TB) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	if t.Failed() {
		t.Logf("%s logs:\n%s", p.name, p.logText())
	}
}

// realStartUpstream starts the recording Go server (ngxUpstream) with
// IdleTimeout idle (0: none); it is stopped when the test ends.
func realStartUpstream(t testing.TB, idle time.Duration) *ngxUpstream {
	t.Helper()
	u := &ngxUpstream{addr: "127.0.0.1:0", idle: idle, arrivals: map[string]int{}}
	u.start(t)
	t.Cleanup(u.stop)
	return u
}

// haproxyConfig is the haproxy.cfg template: %[1]s is the listen address,
// %[2]s the upstream, %[3]d the keep-alive timeout in milliseconds.
const haproxyConfig = `
global
	maxconn 4096
defaults
	mode http
	timeout connect 5s
	timeout client 30s
	timeout server 30s
	timeout http-request 10s
	timeout http-keep-alive %[3]dms
frontend fe
	bind %[1]s
	default_backend up
backend up
	server s1 %[2]s
`

// haproxyStart starts HAProxy in front of upstream, closing client
// connections idle for keepAlive.
func haproxyStart(t testing.TB, upstream string, keepAlive time.Duration) *realProc {
	t.Helper()
	bin := realBinary(t, "haproxy", "haproxy")
	conf := filepath.Join(t.TempDir(), "haproxy.cfg")
	return realLaunch(t, "haproxy", func(addr string) (*exec.Cmd, []string) {
		cfg := fmt.Sprintf(haproxyConfig, addr, upstream, keepAlive.Milliseconds())
		require.NoError(t, os.WriteFile(conf, []byte(cfg), 0o600))
		out, err := exec.Command(bin, "-c", "-f", conf).CombinedOutput()
		require.NoError(t, err, "haproxy rejects the test config:\n%s", out)
		return exec.Command(bin, "-db", "-f", conf), nil // -db: in the foreground
	})
}

// caddyServer is a Caddy process with its admin endpoint on loopback, so
// that the test can reload it.
type caddyServer struct {
	*realProc
	bin, dir, conf string
	listen, admin  string        // loopback addresses of the site and of the admin endpoint
	idle           time.Duration // 0: Caddy's default (5 min)
	global         string        // more global options, such as grace_period
}

// caddyConfig is the Caddyfile template: %[1]s is the admin address,
// %[2]s the temp dir, %[3]s the server options, %[4]s the listen port,
// %[5]s the site's directives, %[6]s more global options.
const caddyConfig = `{
	%[6]s
	admin %[1]s
	auto_https off
	storage file_system %[2]s/data
	servers {
		%[3]s
	}
}
:%[4]s {
	bind 127.0.0.1
	%[5]s
}
`

// caddyStart starts Caddy with the site directives site, closing
// connections idle for idle (0: Caddy's default). Its config, data and
// autosave stay in a temp dir.
func caddyStart(t testing.TB, idle time.Duration, site string, global ...string) *caddyServer {
	t.Helper()
	s := &caddyServer{bin: realBinary(t, "caddy", "caddy"), dir: t.TempDir(), idle: idle, global: strings.Join(global, "\n\t")}
	s.conf = filepath.Join(s.dir, "Caddyfile")
	s.realProc = realLaunch(t, "caddy", func(addr string) (*exec.Cmd, []string) {
		s.listen, s.admin = addr, realFreeAddr(t)
		require.NoError(t, s.write(site))
		cmd := exec.Command(s.bin, "run", "--config", s.conf, "--adapter", "caddyfile")
		cmd.Env = s.env()
		return cmd, nil
	})
	return s
}

func (s *caddyServer) env() []string {
	return append(os.Environ(), "HOME="+s.dir, "XDG_CONFIG_HOME="+s.dir+"/config", "XDG_DATA_HOME="+s.dir+"/data")
}

// write writes the Caddyfile with the site directives site. It may not
// call require: reload runs beside the test's goroutine.
func (s *caddyServer) write(site string) error {
	opts := ""
	if s.idle > 0 {
		opts = "timeouts {\n\t\t\tidle " + s.idle.String() + "\n\t\t}"
	}
	_, port, err := net.SplitHostPort(s.listen)
	if err != nil {
		return err
	}
	return os.WriteFile(s.conf, []byte(fmt.Sprintf(caddyConfig, s.admin, s.dir, opts, port, site, s.global)), 0o600)
}

// reload makes the running Caddy load a Caddyfile with the site
// directives site, through its admin endpoint.
func (s *caddyServer) reload(site string) error {
	if err := s.write(site); err != nil {
		return err
	}
	cmd := exec.Command(s.bin, "reload", "--config", s.conf, "--adapter", "caddyfile", "--address", s.admin)
	cmd.Env = s.env()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("caddy reload: %v: %s", err, out)
	}
	return nil
}

// realBareClient is keepalive's pool without its retry layer: a plain
// http.Transport with keepalive's pool settings, as a program that tuned
// its own transport would have. Its idle connections are closed when the
// test ends.
func realBareClient(t testing.TB) *http.Client {
	tr := &http.Transport{
		MaxIdleConns:        defaultMaxIdleConns,
		MaxIdleConnsPerHost: defaultMaxIdleConnsPerHost,
		IdleConnTimeout:     defaultIdleConnTimeout,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// realEnvSeconds returns the duration in seconds set by the environment
// variable name, or def.
func realEnvSeconds(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.ParseFloat(v, 64)
	require.NoError(t, err, "%s=%q: want a number of seconds", name, v)
	require.Positive(t, n, "%s=%q: want a positive number of seconds", name, v)
	return time.Duration(n * float64(time.Second))
}

// realMethods is the mix of the idle test: the idempotent methods, which a
// client may send again, and POST without an Idempotency-Key, which it may
// only send again if it provably never left.
var realMethods = [...]string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPost}

const realPost = 3 // index of POST in realMethods

// realTally counts a client's outcomes per method.
type realTally struct {
	ok, failed [len(realMethods)]atomic.Int64
	mu         sync.Mutex
	failedIDs  [len(realMethods)][]string
	firstErrs  []string
}

func (tl *realTally) fail(m int, id, msg string) {
	tl.failed[m].Add(1)
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.failedIDs[m] = append(tl.failedIDs[m], id)
	if len(tl.firstErrs) < 8 {
		tl.firstErrs = append(tl.firstErrs, realMethods[m]+" "+id+": "+msg)
	}
}

func (tl *realTally) String() string {
	var b strings.Builder
	for m, name := range realMethods {
		fmt.Fprintf(&b, "%s %d ok %d failed; ", name, tl.ok[m].Load(), tl.failed[m].Load())
	}
	return strings.TrimSuffix(b.String(), "; ")
}

func (tl *realTally) requests() int64 {
	var n int64
	for m := range realMethods {
		n += tl.ok[m].Load() + tl.failed[m].Load()
	}
	return n
}

// realSend sends one request of method realMethods[m] with id and checks
// that the answer is the echo of it.
func realSend(ctx context.Context, c *http.Client, base string, m int, id string, tl *realTally) {
	method := realMethods[m]
	size := int64(0)
	if method == http.MethodPut || method == http.MethodPost {
		size = 256 + int64(len(id))*37%2048
	}
	seed := byte(len(id))
	req := faultNewRequest(ctx, method, base+"/r/"+id, size, seed)
	req.Header.Set("X-Req-Id", id)
	resp, err := c.Do(req)
	if err != nil {
		tl.fail(m, id, err.Error())
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	switch want := faultEcho(method, id, faultBodySum(size, seed)); {
	case err != nil:
		tl.fail(m, id, "reading body: "+err.Error())
	case resp.StatusCode != http.StatusOK:
		tl.fail(m, id, fmt.Sprintf("status %d", resp.StatusCode))
	case string(b) != want:
		tl.fail(m, id, fmt.Sprintf("answer %q, want %q", b, want))
	default:
		tl.ok[m].Add(1)
	}
}

// realIdleRun sends rounds of requests until the time until: in each round
// workers goroutines send one request each at once, so that the pool holds
// as many connections, all last used within a few milliseconds; then the
// client sits idle for pause(), counted from the first answer of the
// round, and the next round picks those connections up again. The methods
// rotate through realMethods by worker and round. It returns the rounds.
func realIdleRun(ctx context.Context, c *http.Client, base, prefix string, workers int, until time.Time,
	pause func() time.Duration, tl *realTally) int {
	rounds := 0
	for ; time.Now().Before(until) && ctx.Err() == nil; rounds++ {
		var wg sync.WaitGroup
		var first atomic.Int64 // UnixNano of the round's earliest answer
		for w := range workers {
			wg.Go(func() {
				realSend(ctx, c, base, (rounds+w)%len(realMethods), fmt.Sprintf("%s-r%d-w%d", prefix, rounds, w), tl)
				now := time.Now().UnixNano()
				for old := first.Load(); (old == 0 || now < old) && !first.CompareAndSwap(old, now); old = first.Load() {
				}
			})
		}
		wg.Wait()
		// A real idle period, not synchronisation: the pooled connections
		// age towards the server's idle timeout.
		idle := time.NewTimer(time.Until(time.Unix(0, first.Load()).Add(pause())))
		select {
		case <-ctx.Done():
		case <-idle.C:
		}
		idle.Stop()
	}
	return rounds
}

// realIdlePause returns the pauses of a client's rounds against a server
// that closes connections idle for idle, from a seeded generator. Three
// rounds in four pause within 4 ms either side of idle: a connection is
// lost to the race only when it is reused within about a millisecond of
// the server closing it, before the client has read the server's FIN. The
// fourth pauses anywhere in 0.6x..1.4x idle, as traffic that knows nothing
// of the timeout would.
func realIdlePause(idle time.Duration, seed string) func() time.Duration {
	h := fnv.New64a()
	_, _ = io.WriteString(h, seed)
	rng := rand.New(rand.NewPCG(h.Sum64(), 10))
	return func() time.Duration {
		if rng.IntN(4) == 0 {
			return time.Duration(float64(idle) * (0.6 + 0.8*rng.Float64()))
		}
		return idle + time.Duration(rng.Int64N(int64(8*time.Millisecond))) - 4*time.Millisecond
	}
}

// realTwice returns the requests whose id starts with prefix that reached
// the upstream more than once.
func realTwice(up *ngxUpstream, prefix string) []string {
	up.mu.Lock()
	defer up.mu.Unlock()
	var twice []string
	for key, n := range up.arrivals {
		if _, id, _ := strings.Cut(key, " "); n > 1 && strings.HasPrefix(id, prefix+"-") {
			twice = append(twice, fmt.Sprintf("%s (%d times)", key, n))
		}
	}
	slices.Sort(twice)
	return twice
}

// realReached counts the ids of method that reached the upstream.
func realReached(up *ngxUpstream, method string, ids []string) int {
	n := 0
	for _, id := range ids {
		if up.arrived(method+" "+id) > 0 {
			n++
		}
	}
	return n
}

// realIdleServer is a server of the idle test: start returns the base URL
// of a server that closes connections idle for idle, with up behind it (or
// up itself).
type realIdleServer struct {
	name  string
	idle  time.Duration
	start func(t *testing.T, idle time.Duration) (base string, up *ngxUpstream)
}

var realIdleServers = []realIdleServer{
	{"nginx", time.Second, func(t *testing.T, idle time.Duration) (string, *ngxUpstream) {
		up := realStartUpstream(t, 0)
		ngx := ngxStart(t, up.addr, fmt.Sprintf("keepalive_timeout %dms;", idle.Milliseconds()))
		return "http://" + ngx.addr, up
	}},
	{"haproxy", time.Second, func(t *testing.T, idle time.Duration) (string, *ngxUpstream) {
		up := realStartUpstream(t, 0)
		return "http://" + haproxyStart(t, up.addr, idle).addr, up
	}},
	{"caddy", 2 * time.Second, func(t *testing.T, idle time.Duration) (string, *ngxUpstream) {
		up := realStartUpstream(t, 0)
		return "http://" + caddyStart(t, idle, "reverse_proxy "+up.addr).addr, up
	}},
	{"go", time.Second, func(t *testing.T, idle time.Duration) (string, *ngxUpstream) {
		up := realStartUpstream(t, idle) // the Go http.Server itself closes idle connections
		return "http://" + up.addr, up
	}},
}

// TestIdleCloseRealServers is issue 10's measurement: clients that keep
// connections idle far longer (50 s) than the server (1-2 s) reuse them
// right when the server closes them. keepalive must lose nothing, and send
// nothing twice; a bare http.Transport with the same pool is run beside it
// for comparison, and loses POSTs. KA_IDLE_SECONDS sets how long each
// server runs (default 8 s; the figures are for 30 s).
func TestIdleCloseRealServers(t *testing.T) {
	if testing.Short() {
		t.Skip("real-server idle-timeout races, seconds per server: skipped with -short")
	}
	t.Parallel() // servers of its own; the time goes to their idle timeouts
	d := realEnvSeconds(t, "KA_IDLE_SECONDS", 8*time.Second)
	const workers = 32
	for _, srv := range realIdleServers {
		t.Run(srv.name, func(t *testing.T) {
			t.Parallel() // the load is light, the time is idle
			base, up := srv.start(t, srv.idle)
			ka, tr := newTestClient(t)
			clients := []struct {
				name string
				c    *http.Client
				tl   *realTally
			}{
				{"keepalive", ka, &realTally{}},
				{"bare", realBareClient(t), &realTally{}},
			}
			ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
			defer cancel()
			until := time.Now().Add(d)
			rounds := make([]int, len(clients))
			var wg sync.WaitGroup
			for i, cl := range clients {
				wg.Go(func() {
					rounds[i] = realIdleRun(ctx, cl.c, base, cl.name, workers, until,
						realIdlePause(srv.idle, srv.name+"/"+cl.name), cl.tl)
				})
			}
			wg.Wait()
			require.NoError(t, ctx.Err(), "the run outlasted its deadline")

			for i, cl := range clients {
				failedPosts := cl.tl.failedIDs[realPost]
				t.Logf("%s vs %s (idle %v), %d rounds of %d: %s; failed POSTs that reached the upstream: %d of %d; sent twice: %v; first errors: %q",
					cl.name, srv.name, srv.idle, rounds[i], workers, cl.tl, realReached(up, http.MethodPost, failedPosts),
					len(failedPosts), realTwice(up, cl.name), cl.tl.firstErrs)
				assert.Positive(t, rounds[i], "%s: no round ran", cl.name)
				assert.Equal(t, int64(rounds[i]*workers), cl.tl.requests(), "%s: requests sent", cl.name)
			}
			t.Logf("keepalive stats %+v; host stats %+v", tr.Stats(), tr.HostStats())

			tl := clients[0].tl
			for m, method := range realMethods {
				assert.Zero(t, tl.failed[m].Load(), "keepalive: %s requests failed: %q", method, tl.firstErrs)
			}
			assert.Empty(t, realTwice(up, "keepalive"), "keepalive: requests that reached the upstream twice")
		})
	}
}

// caddyReloadSite is the site of TestCaddyReloadGETs: a file server that
// names its configuration's generation in a header, so each reload changes
// the config (Caddy skips a load of an identical one).
func caddyReloadSite(root string, gen int) string {
	return fmt.Sprintf("header X-Gen %d\n\troot * %s\n\tfile_server", gen, root)
}

// realGetTally counts a client's GETs in TestCaddyReloadGETs.
type realGetTally struct {
	ok, failed, midBody atomic.Int64 // midBody: failed after the response's headers
	gens                sync.Map     // X-Gen values seen
	lastSent            atomic.Int64 // UnixNano when the latest GET that was answered was sent
	mu                  sync.Mutex
	firstErrs           []string
}

func (tl *realGetTally) fail(mid bool, msg string) {
	tl.failed.Add(1)
	if mid {
		tl.midBody.Add(1)
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if len(tl.firstErrs) < 8 {
		tl.firstErrs = append(tl.firstErrs, msg)
	}
}

// realGetFile sends GETs for url until the time until, checking the body
// against its length and checksum.
func realGetFile(ctx context.Context, c *http.Client, url string, size int64, sum string, until time.Time, tl *realGetTally) {
	for time.Now().Before(until) && ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			tl.fail(false, err.Error())
			return
		}
		sent := time.Now().UnixNano()
		resp, err := c.Do(req)
		if err != nil {
			tl.fail(false, err.Error())
			continue
		}
		for last := tl.lastSent.Load(); sent > last && !tl.lastSent.CompareAndSwap(last, sent); last = tl.lastSent.Load() {
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		resp.Body.Close()
		tl.gens.Store(resp.Header.Get("X-Gen"), true)
		switch {
		case err != nil:
			tl.fail(true, fmt.Sprintf("after %d of %d bytes: %v", n, size, err))
		case resp.StatusCode != http.StatusOK:
			tl.fail(false, fmt.Sprintf("status %d", resp.StatusCode))
		case n != size || hex.EncodeToString(h.Sum(nil)) != sum:
			tl.fail(true, fmt.Sprintf("body of %d bytes, want %d, or wrong checksum", n, size))
		default:
			tl.ok.Add(1)
		}
	}
}

// TestCaddyReloadGETs reloads Caddy every 3 s under 32 goroutines of GETs
// per client for a 1 MiB file, over HTTP/1.1 and over HTTPS with HTTP/2,
// and counts the GETs each client fails. Caddy is given a grace period of
// 50 ms (global option grace_period): a reload then closes the connections
// of the old config 50 ms after telling them (HTTP/2: a GOAWAY), cutting
// off the bodies still being sent. keepalive's retries cannot mend a body
// cut after its headers arrived; with WithResponseBuffer they do, and that
// client must fail no GET. KA_RELOAD_SECONDS sets each run's length
// (default 8 s, two reloads; the figures are for 30 s),
// KA_RELOAD_SIZE the file's size, KA_CADDY_GLOBAL Caddy's global options.
//
// Without a grace period (Caddy's default is eternal), a reload lets the
// active requests finish and closes only idle connections: then no client
// fails a GET, and over HTTP/2 keepalive retries the requests a GOAWAY left
// unprocessed.
func TestCaddyReloadGETs(t *testing.T) {
	if testing.Short() {
		t.Skip("real Caddy reloads under load: skipped with -short")
	}
	t.Parallel() // a Caddy of its own for each protocol; the time goes to its reloads
	for _, overTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "http", true: "https-h2"}[overTLS], func(t *testing.T) {
			t.Parallel()
			caddyReloadGETs(t, overTLS)
		})
	}
}

func caddyReloadGETs(t *testing.T, overTLS bool) {
	d := realEnvSeconds(t, "KA_RELOAD_SECONDS", 8*time.Second)
	size, workers, every := int64(1<<20), 32, 3*time.Second
	if v := os.Getenv("KA_RELOAD_SIZE"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		require.NoError(t, err)
		size = n
	}
	root := t.TempDir()
	body, err := io.ReadAll(&faultBody{n: size, seed: 7})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(root, "body.bin"), body, 0o644))
	sum := faultBodySum(size, 7)

	site := func(gen int) string { return caddyReloadSite(root, gen) }
	scheme, tlsConf := "http", (*tls.Config)(nil)
	if overTLS {
		certFile, keyFile, roots := realTestCert(t)
		site = func(gen int) string { return caddyReloadSite(root, gen) + "\n\ttls " + certFile + " " + keyFile }
		scheme, tlsConf = "https", &tls.Config{RootCAs: roots}
	}
	global := "grace_period 50ms"
	if v, ok := os.LookupEnv("KA_CADDY_GLOBAL"); ok {
		global = v
	}
	caddy := caddyStart(t, 0, site(0), global)

	ka, tr := newTestClient(t, WithTLSConfig(tlsConf))
	kaBuf, _ := newTestClient(t, WithTLSConfig(tlsConf), WithResponseBuffer(size))
	bare := realBareClient(t)
	bare.Transport.(*http.Transport).TLSClientConfig = tlsConf
	bare.Transport.(*http.Transport).ForceAttemptHTTP2 = true
	clients := []struct {
		name   string
		c      *http.Client
		strict bool // assert no failed GET
	}{
		{"keepalive", ka, false},
		{"keepalive+WithResponseBuffer", kaBuf, true},
		{"bare", bare, false},
	}
	tallies := make([]*realGetTally, len(clients))
	ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
	defer cancel()
	until := time.Now().Add(d)
	var wg sync.WaitGroup
	for i, cl := range clients {
		tallies[i] = &realGetTally{}
		for range workers {
			wg.Go(func() { realGetFile(ctx, cl.c, scheme+"://"+caddy.addr+"/body.bin", size, sum, until, tallies[i]) })
		}
	}
	var reloadErrs []error
	reloads := 0
	var lastReload time.Time
	tick := time.NewTicker(every)
	end := time.NewTimer(time.Until(until))
reloading:
	for {
		select {
		case <-tick.C:
			// The last reload leaves the clients a second to see it.
			if time.Until(until) < time.Second {
				break reloading
			}
			if err := caddy.reload(site(reloads + 1)); err != nil {
				reloadErrs = append(reloadErrs, err)
			} else {
				reloads++
				lastReload = time.Now()
			}
		case <-end.C:
			break reloading
		}
	}
	tick.Stop()
	end.Stop()
	wg.Wait()
	require.NoError(t, ctx.Err(), "the run outlasted its deadline")

	require.Empty(t, reloadErrs)
	require.Positive(t, reloads, "no reload happened")
	for i, cl := range clients {
		tl := tallies[i]
		var gens []string
		tl.gens.Range(func(k, _ any) bool { gens = append(gens, k.(string)); return true })
		slices.Sort(gens)
		t.Logf("%s: %d reloads in %v: %d GETs ok, %d failed (%d mid-body); configs seen %v; first errors %q",
			cl.name, reloads, d, tl.ok.Load(), tl.failed.Load(), tl.midBody.Load(), gens, tl.firstErrs)
		assert.Positive(t, tl.ok.Load(), "%s: no GET succeeded", cl.name)
		// A GET sent a second after the last reload meets the last
		// config; on a loaded machine a client's GETs of 1 MiB can all
		// have been sent before it.
		if time.Unix(0, tl.lastSent.Load()).After(lastReload.Add(time.Second)) {
			assert.Contains(t, gens, strconv.Itoa(reloads), "%s: never saw the last config: the reloads did not take effect", cl.name)
		}
		if cl.strict {
			assert.Zero(t, tl.failed.Load(), "%s: GETs failed: %q", cl.name, tl.firstErrs)
		}
	}
	t.Logf("keepalive stats %+v; host stats %+v", tr.Stats(), tr.HostStats())
}

// realTestCert writes the matrix's certificate (mxCert: ECDSA, valid for
// 127.0.0.1) as PEM files for a real server, and returns their paths and a
// pool that trusts it.
func realTestCert(t testing.TB) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	cert := mxCert()
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600))
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	require.NoError(t, err)
	roots = x509.NewCertPool()
	roots.AddCert(leaf)
	return certFile, keyFile, roots
}

// ngxTLSHTTP is the http block of ngxStartTLS: %[1]s is the listen
// address, %[2]s and %[3]s the certificate and key files, %[4]d
// keepalive_requests.
const ngxTLSHTTP = `keepalive_requests %[4]d;
	server {
		listen %[1]s ssl http2;
		ssl_certificate %[2]s;
		ssl_certificate_key %[3]s;
		location / { return 200 "ok\n"; }
	}`

// ngxStartTLS starts nginx serving HTTPS with HTTP/2 on a loopback port,
// ending each connection after keepaliveRequests requests (HTTP/2: with a
// GOAWAY). It returns the server and a pool that trusts its certificate.
func ngxStartTLS(t testing.TB, keepaliveRequests int) (*ngxServer, *x509.CertPool) {
	t.Helper()
	certFile, keyFile, roots := realTestCert(t)
	return ngxLaunch(t, func(addr string) string {
		return fmt.Sprintf(ngxTLSHTTP, addr, certFile, keyFile, keepaliveRequests)
	}), roots
}

// dialTally counts what a client dialed and which connections carried a
// request, as the client sees them (GotConn).
type dialTally struct {
	dials   atomic.Int64
	mu      sync.Mutex
	carried map[net.Conn]bool
}

func (d *dialTally) trace(ctx context.Context) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		d.mu.Lock()
		d.carried[info.Conn] = true
		d.mu.Unlock()
	}})
}

// TestNginxHTTP2GoawayDials sends GETs from 32 goroutines to real nginx
// over HTTPS with HTTP/2, which ends each connection with a GOAWAY after
// 100 requests, and compares the connections each client dialed with
// those that carried a request. net/http dials for every request waiting
// when a GOAWAY comes and keeps one of the connections; keepalive's dial
// gate dials one at a time for an HTTP/2 host. KA_GOAWAY_SECONDS sets the
// run's length (default 4 s).
func TestNginxHTTP2GoawayDials(t *testing.T) {
	if testing.Short() {
		t.Skip("real nginx under load: skipped with -short")
	}
	t.Parallel() // an nginx of its own; counts dials, not times
	d := realEnvSeconds(t, "KA_GOAWAY_SECONDS", 4*time.Second)
	const workers, perConn = 32, 100
	srv, roots := ngxStartTLS(t, perConn)
	url := "https://" + srv.addr + "/"
	tlsConf := &tls.Config{RootCAs: roots}

	for _, name := range []string{"keepalive", "bare"} {
		tally := &dialTally{carried: map[net.Conn]bool{}}
		var c *http.Client
		var tr *Transport
		if name == "keepalive" {
			c, tr = newTestClient(t, WithTLSConfig(tlsConf))
		} else {
			bare := realBareClient(t)
			bt := bare.Transport.(*http.Transport)
			bt.TLSClientConfig, bt.ForceAttemptHTTP2 = tlsConf, true
			dialer := &net.Dialer{}
			bt.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				tally.dials.Add(1)
				return dialer.DialContext(ctx, network, addr)
			}
			c = bare
		}
		var ok, failed atomic.Int64
		until := time.Now().Add(d)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for time.Now().Before(until) {
					req, err := http.NewRequestWithContext(tally.trace(context.Background()), http.MethodGet, url, nil)
					if err != nil {
						failed.Add(1)
						return
					}
					resp, err := c.Do(req)
					if err != nil {
						failed.Add(1)
						continue
					}
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err != nil || resp.ProtoMajor != 2 {
						failed.Add(1)
						continue
					}
					ok.Add(1)
				}
			})
		}
		wg.Wait()
		carried := int64(len(tally.carried))
		goaways := ok.Load() / perConn
		if tr != nil {
			s := tr.Stats()
			t.Logf("keepalive: %d GETs ok, %d failed; %d connections carried requests (GotConn), Stats: Dials %d, DiscardedDials %d, Retries %d; about %d GOAWAYs",
				ok.Load(), failed.Load(), carried, s.Dials, s.DiscardedDials, s.Retries, goaways)
			assert.Equal(t, carried, s.Dials, "Dials counts the connections that carried requests")
			// Quiet, about one discarded dial per ten connections used; a
			// loaded machine outlasts the gate's short hold now and then
			// (4 for 9 in a stress run). A bare transport discards about 30
			// per connection used.
			assert.LessOrEqual(t, s.DiscardedDials, carried, "dials discarded: at most one per connection used")
			assert.Zero(t, failed.Load())
			assert.Zero(t, s.Retries, "a dial the gate drops never fails a request")
		} else {
			t.Logf("bare: %d GETs ok, %d failed; dialed %d connections, %d carried requests; about %d GOAWAYs",
				ok.Load(), failed.Load(), tally.dials.Load(), carried, goaways)
		}
		assert.Positive(t, ok.Load())
	}
}

// TestNginxHTTP2Lifetime sends GETs and unkeyed streamed POSTs from 32
// goroutines to real nginx over HTTPS with HTTP/2, with
// WithConnMaxLifetime(1s): each expired connection hands its host to a
// new one and closes once its streams ended, and no request fails.
// KA_LIFETIME_SECONDS sets the run's length (default 4 s).
func TestNginxHTTP2Lifetime(t *testing.T) {
	if testing.Short() {
		t.Skip("real nginx under load: skipped with -short")
	}
	t.Parallel() // an nginx of its own; counts failures, not times
	d := realEnvSeconds(t, "KA_LIFETIME_SECONDS", 4*time.Second)
	srv, roots := ngxStartTLS(t, 1_000_000)
	url := "https://" + srv.addr + "/"
	c, tr := newTestClient(t, WithTLSConfig(&tls.Config{RootCAs: roots}), WithConnMaxLifetime(time.Second))
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	until := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			for i := 0; time.Now().Before(until); i++ {
				var body io.Reader
				method := http.MethodGet
				if i%4 == w%4 { // an unkeyed POST whose body cannot be rewound
					method, body = http.MethodPost, &onceReader{strings.NewReader("payload")}
				}
				req, err := http.NewRequest(method, url, body)
				if err != nil {
					failed.Add(1)
					return
				}
				resp, err := c.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && (resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2) {
						err = fmt.Errorf("%s: status %d over HTTP/%d", method, resp.StatusCode, resp.ProtoMajor)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	st := tr.Stats()
	t.Logf("%d requests ok, %d failed (first: %v); Stats: %d dials, %d expired, %d discarded dials, %d retries",
		ok.Load(), failed.Load(), firstErr.Load(), st.Dials, st.ConnsExpired, st.DiscardedDials, st.Retries)
	assert.Zero(t, failed.Load(), "first: %v", firstErr.Load())
	assert.GreaterOrEqual(t, st.ConnsExpired, int64(d/time.Second)-2, "a connection retired about every second")
	assert.LessOrEqual(t, st.Dials, st.ConnsExpired+2, "a new connection for each expired one")
}
