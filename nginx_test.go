// This file holds the scenarios against a real nginx: a reverse proxy in
// front of a Go upstream that records every request it receives, with the
// client driving mixed traffic through idle-timeout races, an upstream that
// dies and comes back, and configuration reloads. They skip when no nginx
// binary is installed (CI installs nginx-light).

package keepalive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ngxBinary returns the nginx binary, or skips the test (fails it in CI:
// realBinary).
func ngxBinary(t testing.TB) string {
	t.Helper()
	return realBinary(t, "nginx", "nginx-light")
}

// ngxServer is an nginx master process, a child of the test, with its
// prefix, pid file, logs and temp paths in a temp dir.
type ngxServer struct {
	bin, dir, conf, errLog string
	addr                   string
	proc                   *realProc
}

// ngxConfig is the nginx.conf template: %[1]s is the temp dir, %[2]s the
// user line, %[3]s the http block's directives (see ngxProxyHTTP).
const ngxConfig = `
daemon off;
master_process on;
worker_processes 1;
%[2]s
pid %[1]s/nginx.pid;
error_log %[1]s/error.log notice;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	%[3]s
}
`

// ngxProxyHTTP is the http block of ngxStart: %[1]s is the listen address,
// %[2]s the upstream address, %[3]s extra http directives.
const ngxProxyHTTP = `%[3]s
	upstream recorder {
		server %[2]s max_fails=0;
		keepalive 64;
	}
	server {
		listen %[1]s;
		location / {
			proxy_pass http://recorder;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
		}
	}`

// ngxStart starts nginx in front of upstream with extra http directives.
func ngxStart(t testing.TB, upstream, extra string) *ngxServer {
	t.Helper()
	return ngxLaunch(t, func(addr string) string { return fmt.Sprintf(ngxProxyHTTP, addr, upstream, extra) })
}

// ngxLaunch starts nginx with the http block that httpBlock makes for the
// listen address.
func ngxLaunch(t testing.TB, httpBlock func(addr string) string) *ngxServer {
	t.Helper()
	bin := ngxBinary(t)
	dir := t.TempDir()
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // workers must reach the 0700 temp dir
	}
	s := &ngxServer{bin: bin, dir: dir, conf: filepath.Join(dir, "nginx.conf"), errLog: filepath.Join(dir, "error.log")}
	s.proc = realLaunch(t, "nginx", func(addr string) (*exec.Cmd, []string) {
		s.addr = addr
		conf := fmt.Sprintf(ngxConfig, dir, user, httpBlock(addr))
		require.NoError(t, os.WriteFile(s.conf, []byte(conf), 0o600))
		out, err := exec.Command(bin, s.args("-t")...).CombinedOutput()
		require.NoError(t, err, "nginx rejects the test config:\n%s", out)
		return exec.Command(bin, s.args()...), []string{s.errLog}
	})
	return s
}

func (s *ngxServer) args(extra ...string) []string {
	return append([]string{"-p", s.dir + "/", "-c", s.conf, "-e", s.errLog}, extra...)
}

func (s *ngxServer) logCount(substr string) int {
	b, _ := os.ReadFile(s.errLog)
	return bytes.Count(b, []byte(substr))
}

// ngxUpstream is the Go server behind nginx. It records how often each
// request (by method and X-Req-Id) arrived, and answers with the body's
// checksum so the client can tell its own answer from another's.
type ngxUpstream struct {
	addr string
	idle time.Duration // the http.Server's IdleTimeout; 0: none (its ReadTimeout, none either)

	mu       sync.Mutex
	arrivals map[string]int
	srv      *http.Server
	served   chan struct{}
	total    atomic.Int64

	// at, when reached by total, closes reached: a scenario's cue to act
	// mid-run, counted by the server rather than timed.
	at      int64
	reached chan struct{}
}

func ngxStartUpstream(t testing.TB) *ngxUpstream {
	t.Helper()
	return realStartUpstream(t, 0)
}

func (u *ngxUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	if _, err := io.Copy(h, r.Body); err != nil {
		return // nginx gave up on the request; nothing was processed
	}
	id := r.Header.Get("X-Req-Id")
	u.mu.Lock()
	u.arrivals[r.Method+" "+id]++
	u.mu.Unlock()
	if u.total.Add(1) == u.at {
		close(u.reached)
	}
	_, _ = io.WriteString(w, faultEcho(r.Method, id, hex.EncodeToString(h.Sum(nil))))
}

// cue returns a channel closed when the upstream has processed n requests.
// Call it before traffic starts.
func (u *ngxUpstream) cue(n int64) <-chan struct{} {
	u.at, u.reached = n, make(chan struct{})
	return u.reached
}

func (u *ngxUpstream) start(t testing.TB) {
	t.Helper()
	require.NoError(t, u.listen())
}

// listen starts serving on u.addr (the same port after a restart).
func (u *ngxUpstream) listen() error {
	ln, err := net.Listen("tcp", u.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: u, IdleTimeout: u.idle}
	served := make(chan struct{})
	u.mu.Lock()
	u.addr, u.srv, u.served = ln.Addr().String(), srv, served
	u.mu.Unlock()
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	return nil
}

// stop kills the upstream: listener and every connection closed at once.
func (u *ngxUpstream) stop() {
	u.mu.Lock()
	srv, served := u.srv, u.served
	u.srv = nil
	u.mu.Unlock()
	if srv == nil {
		return
	}
	srv.Close()
	<-served
}

func (u *ngxUpstream) arrived(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.arrivals[key]
}

// ngxRaceConn counts, on one client connection, the race this suite is
// about: a request written onto a connection the server had already
// closed. It shows in three ways: the server's FIN is read first and a
// request is written after it (net/http then fails the request with "server
// closed idle connection" or retries it); the request is written first and
// the read ends without a single response byte; or the write itself fails
// on the closed socket (a broken pipe, a reset), and net/http closes the
// connection before its read loop sees the end.
type ngxRaceConn struct {
	net.Conn
	pending atomic.Bool // written since the last response bytes were read
	ended   atomic.Bool // a read saw the server's end of the connection
	counted atomic.Bool
	races   *atomic.Int64
}

func (c *ngxRaceConn) Write(p []byte) (int, error) {
	if len(p) > 0 {
		c.pending.Store(true) // before the write: the answer may be read before Write returns
		if c.ended.Load() {
			c.count()
		}
	}
	n, err := c.Conn.Write(p)
	if err != nil && (errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)) {
		c.count()
	}
	return n, err
}

func (c *ngxRaceConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.pending.Store(false)
	}
	if err != nil && n == 0 && !errors.Is(err, net.ErrClosed) {
		c.ended.Store(true)
		if c.pending.Load() {
			c.count()
		}
	}
	return n, err
}

func (c *ngxRaceConn) count() {
	if c.counted.CompareAndSwap(false, true) {
		c.races.Add(1)
	}
}

// ngxCountRaces wraps the dialer of tr so that every connection counts its
// idle-close race into the returned counter.
func ngxCountRaces(tr *Transport) *atomic.Int64 {
	races := new(atomic.Int64)
	dial := tr.base.DialContext
	tr.base.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &ngxRaceConn{Conn: c, races: races}, nil
	}
	return races
}

// ngxKind is one of the four kinds of request in the mix.
type ngxKind int

const (
	ngxGet ngxKind = iota
	ngxPut
	ngxPostKeyed
	ngxPostUnkeyed
	ngxKinds
)

func (k ngxKind) String() string {
	return [...]string{"GET", "PUT", "POST+key", "POST"}[k]
}

func (k ngxKind) method() string {
	return [...]string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodPost}[k]
}

// ngxTally counts outcomes per kind of request.
type ngxTally struct {
	ok, failed [ngxKinds]atomic.Int64
	// closedIdle counts requests that failed with net/http's "server closed
	// idle connection": the race, lost before any byte was written.
	closedIdle atomic.Int64
	mu         sync.Mutex
	firstErrs  []string
	unkeyed    []string // ids of the POSTs without a key that were sent
}

func (tl *ngxTally) fail(k ngxKind, msg string) {
	tl.failed[k].Add(1)
	if strings.Contains(msg, "server closed idle connection") {
		tl.closedIdle.Add(1)
	}
	tl.mu.Lock()
	if len(tl.firstErrs) < 10 {
		tl.firstErrs = append(tl.firstErrs, k.String()+": "+msg)
	}
	tl.mu.Unlock()
}

// ngxSend sends one request of kind k and checks that the answer is the
// answer to it.
func ngxSend(ctx context.Context, c *http.Client, base string, k ngxKind, id string, tl *ngxTally) {
	size := int64(0)
	if k != ngxGet {
		size = 256 + int64(len(id))*37%2048
	}
	seed := byte(len(id))
	req := faultNewRequest(ctx, k.method(), base+"/r/"+id, size, seed)
	req.Header.Set("X-Req-Id", id)
	if k == ngxPostKeyed {
		req.Header.Set("Idempotency-Key", id)
	}
	if k == ngxPostUnkeyed {
		tl.mu.Lock()
		tl.unkeyed = append(tl.unkeyed, id)
		tl.mu.Unlock()
	}
	resp, err := c.Do(req)
	if err != nil {
		tl.fail(k, err.Error())
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	switch want := faultEcho(k.method(), id, faultBodySum(size, seed)); {
	case err != nil:
		tl.fail(k, "reading body: "+err.Error())
	case resp.StatusCode != http.StatusOK:
		tl.fail(k, fmt.Sprintf("status %d", resp.StatusCode))
	case string(b) != want:
		tl.fail(k, fmt.Sprintf("answer %q, want %q", b, want))
	default:
		tl.ok[k].Add(1)
	}
}

// ngxCheck asserts the invariants every scenario keeps: no error for an
// idempotent or keyed request, no unkeyed POST processed twice.
func ngxCheck(t *testing.T, up *ngxUpstream, tl *ngxTally) {
	t.Helper()
	for _, k := range []ngxKind{ngxGet, ngxPut, ngxPostKeyed} {
		assert.Zero(t, tl.failed[k].Load(), "%v requests surfaced errors: %v", k, tl.firstErrs)
	}
	twice := 0
	for _, id := range tl.unkeyed {
		if up.arrived(http.MethodPost+" "+id) > 1 {
			twice++
		}
	}
	assert.Zero(t, twice, "POSTs without a key processed more than once")
}

func (tl *ngxTally) String() string {
	var b strings.Builder
	for k := range ngxKinds {
		fmt.Fprintf(&b, "%v ok=%d failed=%d; ", k, tl.ok[k].Load(), tl.failed[k].Load())
	}
	return b.String()
}

// ngxRun sends perPhase requests from workers goroutines, phases times.
// Each phase ends with every worker sending its last request at once, so
// that the pool's connections were all last used within a millisecond or
// two; then the whole client sits idle for pause(phase), counted from the
// first of those last answers. between runs after each phase.
func ngxRun(ctx context.Context, c *http.Client, base string, workers, phases, perPhase int,
	pause func(phase int) time.Duration, between func(phase int), tl *ngxTally) {
	for p := range phases {
		var done, ready sync.WaitGroup
		ready.Add(workers)
		release := make(chan struct{})
		var first atomic.Int64 // UnixNano of the earliest last answer
		for w := range workers {
			done.Go(func() {
				send := func(i int) {
					id := fmt.Sprintf("p%d-w%d-%d", p, w, i)
					ngxSend(ctx, c, base, ngxKind((p+i)%int(ngxKinds)), id, tl)
				}
				last := w
				for i := w; i < perPhase; i += workers {
					last = i
				}
				for i := w; i < last; i += workers {
					send(i)
				}
				ready.Done()
				<-release
				send(last)
				now := time.Now().UnixNano()
				for old := first.Load(); (old == 0 || now < old) && !first.CompareAndSwap(old, now); old = first.Load() {
				}
			})
		}
		ready.Wait()
		close(release)
		done.Wait()
		if between != nil {
			between(p)
		}
		if d := pause(p); d > 0 && p < phases-1 {
			// A real idle period, not synchronisation: the whole client
			// goes quiet so that its pooled connections age towards
			// nginx's keepalive_timeout, and the next phase picks them up
			// just as nginx closes them.
			idle := time.NewTimer(time.Until(time.Unix(0, first.Load()).Add(d)))
			select {
			case <-ctx.Done():
				idle.Stop()
				return
			case <-idle.C:
			}
		}
	}
}

func TestNginxIdleTimeoutRace(t *testing.T) {
	if testing.Short() {
		t.Skip("20,000 requests through nginx: skipped with -short")
	}
	t.Parallel() // an nginx of its own; the time goes to its idle timeouts
	up := ngxStartUpstream(t)
	ngx := ngxStart(t, up.addr, "keepalive_timeout 1s; keepalive_requests 10;")
	// The client keeps idle connections far longer than nginx (the
	// default 50 s against 1 s): the misconfiguration that production
	// meets with short server timeouts, and the race under test.
	c, tr := newTestClient(t, WithProxy(nil), WithBackoff(5*time.Millisecond, 50*time.Millisecond))
	races := ngxCountRaces(tr)

	const phases, perPhase = 20, 1000
	// nginx times out all the connections of a phase's final burst at one
	// instant, 1 s after it answered them; the next phase picks them up
	// 1 s after the first of those answers, give or take the offset. The
	// offsets sweep the millisecond or two of timer jitter on both sides,
	// so that in some phases the pickup lands on the close.
	offsets := []time.Duration{-1500, -1250, -1000, -750, -500, -250, 0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000}
	pause := func(p int) time.Duration { return time.Second + offsets[p%len(offsets)]*time.Microsecond }
	tl := &ngxTally{}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	ngxRun(ctx, c, "http://"+ngx.addr, 32, phases, perPhase, pause, nil, tl)

	st := tr.Stats()
	raced := races.Load() + tl.closedIdle.Load()
	t.Logf("%d requests in %v: %d races (%d seen on the wire, %d failed before writing), %d dials, stats %+v; %v",
		phases*perPhase, time.Since(start).Round(time.Millisecond), raced, races.Load(), tl.closedIdle.Load(), st.Dials, st, tl)
	assert.Equal(t, int64(phases*perPhase), st.Requests)
	ngxCheck(t, up, tl)
	assert.Positive(t, raced, "the idle-close race never happened: the scenario proves nothing")
	assert.LessOrEqual(t, tl.failed[ngxPostUnkeyed].Load(), raced,
		"an unkeyed POST may only fail by losing the race")
}

func TestNginxUpstreamKilledAndRestarted(t *testing.T) {
	if testing.Short() {
		t.Skip("nginx scenario: skipped with -short")
	}
	t.Parallel() // an nginx and an upstream of its own
	up := ngxStartUpstream(t)
	ngx := ngxStart(t, up.addr, "keepalive_timeout 75s;")
	// Enough retries to outlast a restart that takes a few tens of
	// milliseconds: about 1 s of backoff in all.
	c, tr := newTestClient(t, WithProxy(nil), WithMaxRetries(10), WithBackoff(10*time.Millisecond, 200*time.Millisecond))

	const total = 6000
	cue := up.cue(total / 3)
	var retriesWhileDown int64
	var restartErr error
	monitor := make(chan struct{})
	go func() {
		defer close(monitor)
		<-cue
		before := tr.Stats().Retries
		up.stop() // nginx now answers 502 to everything
		// Stay down until the client has retried 502s at least 32 times,
		// counted, not timed; give up waiting after 10 s.
		poll(10*time.Second, func() bool { return tr.Stats().Retries-before >= 32 })
		retriesWhileDown = tr.Stats().Retries - before
		restartErr = up.listen()
	}()

	tl := &ngxTally{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ngxRun(ctx, c, "http://"+ngx.addr, 32, 1, total, func(int) time.Duration { return 0 }, nil, tl)
	<-monitor
	require.NoError(t, restartErr)

	st := tr.Stats()
	t.Logf("%d requests: %d retries while the upstream was down, stats %+v; %v", total, retriesWhileDown, st, tl)
	assert.GreaterOrEqual(t, retriesWhileDown, int64(32), "the upstream was not down long enough to matter")
	ngxCheck(t, up, tl)
	for _, e := range tl.firstErrs {
		assert.Contains(t, e, "status 502", "an unkeyed POST may only fail with nginx's 502")
	}
}

func TestNginxReloadMidRun(t *testing.T) {
	if testing.Short() {
		t.Skip("nginx scenario: skipped with -short")
	}
	t.Parallel() // an nginx and an upstream of its own
	up := ngxStartUpstream(t)
	ngx := ngxStart(t, up.addr, "keepalive_timeout 75s;")
	c, tr := newTestClient(t, WithProxy(nil), WithBackoff(5*time.Millisecond, 50*time.Millisecond))
	races := ngxCountRaces(tr)

	const total, reloads = 8000, 3
	cue := up.cue(total / 4)
	monitor := make(chan struct{})
	var reloadErrs []string
	go func() {
		defer close(monitor)
		<-cue
		for range reloads {
			before := ngx.logCount("(SIGHUP) received")
			out, err := exec.Command(ngx.bin, ngx.args("-s", "reload")...).CombinedOutput()
			if err != nil {
				reloadErrs = append(reloadErrs, fmt.Sprintf("%v: %s", err, out))
				return
			}
			// Next reload once this one has taken effect (the master logs
			// it) and the client has moved on by 500 requests.
			mark := up.total.Load() + 500
			poll(20*time.Second, func() bool {
				return ngx.logCount("(SIGHUP) received") > before && up.total.Load() >= mark
			})
		}
	}()

	tl := &ngxTally{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ngxRun(ctx, c, "http://"+ngx.addr, 32, 1, total, func(int) time.Duration { return 0 }, nil, tl)
	<-monitor
	require.Empty(t, reloadErrs)

	st := tr.Stats()
	raced := races.Load() + tl.closedIdle.Load()
	t.Logf("%d requests, %d reloads (log says %d): %d races (%d on the wire, %d before writing), %d dials, stats %+v; %v",
		total, reloads, ngx.logCount("(SIGHUP) received"), raced, races.Load(), tl.closedIdle.Load(), st.Dials, st, tl)
	assert.Equal(t, reloads, ngx.logCount("(SIGHUP) received"), "every reload took effect mid-run")
	ngxCheck(t, up, tl)
	assert.Zero(t, tl.closedIdle.Load(), "a request found closed before it was written is resent, whatever its method")
	assert.LessOrEqual(t, tl.failed[ngxPostUnkeyed].Load(), raced,
		"an unkeyed POST may only fail by losing a race with a closing worker: %v", tl.firstErrs)
}
