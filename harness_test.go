// This file holds the harness every test of the package uses: the
// Transports and clients tests make, the servers they run against (built
// on keepalivetest; the raw server that commits the faults net/http's
// server cannot is in faultserver_test.go), the protocol matrix, the
// request helpers, the one poller, the one wait for a period under test,
// and the one log capture.

package keepalive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newTestTransport returns a Transport built from opts whose idle
// connections are closed when the test ends, so goleak sees no pool
// goroutines.
func newTestTransport(t testing.TB, opts ...Option) *Transport {
	t.Helper()
	tr, err := NewTransport(opts...)
	require.NoError(t, err)
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// newTestClient is newTestTransport in an http.Client.
func newTestClient(t testing.TB, opts ...Option) (*http.Client, *Transport) {
	t.Helper()
	tr := newTestTransport(t, opts...)
	return &http.Client{Transport: tr}, tr
}

// newTestHostTable is a host table whose states have no budget or breaker.
func newTestHostTable() *hostTable {
	return newHostTable(func(key string) *hostState { return &hostState{key: key} })
}

// fastRetries makes backoff waits negligible so tests measure behaviour,
// not time.
var fastRetries = WithBackoff(time.Millisecond, 2*time.Millisecond)

// proto is what a test server speaks.
type proto int

const (
	http1  proto = iota // HTTP/1.1 in clear text
	http2               // HTTPS offering HTTP/2, which a Transport takes
	https1              // HTTPS that speaks HTTP/1.1 alone
)

func (p proto) String() string { return [...]string{"HTTP1", "HTTP2", "HTTPS1"}[p] }

// forEachProto runs f as two subtests, over HTTP/1.1 and over HTTP/2, as
// net/http's own tests do.
func forEachProto(t *testing.T, f func(t *testing.T, p proto)) {
	for _, p := range []proto{http1, http2} {
		t.Run(p.String(), func(t *testing.T) { f(t, p) })
	}
}

// newServer starts a keepalivetest server that speaks p and answers with
// script; it is closed when the test ends. opt makes a Transport trust
// its certificate (over HTTP/1.1, it sets nothing).
func newServer(t testing.TB, p proto, script ...keepalivetest.Step) (s *keepalivetest.Server, opt Option) {
	t.Helper()
	if p == http1 {
		s = keepalivetest.NewServer(t, script...)
	} else {
		s = keepalivetest.NewTLSServer(t, script...)
		if p == https1 {
			s.DisableHTTP2()
		}
	}
	return s, WithTLSConfig(s.TLSConfig())
}

// idleServer is a server whose connections close like a real server's on
// its idle timeout, with the race that loses requests to it made certain:
// a request that arrives on a connection idle for dropAfter or longer is
// read and the connection closed without an answer, as if the server's
// idle close had crossed it on the wire (keepalivetest's IdleDrop); a
// connection idle for closeAfter is closed (IdleClose; 0: never).
// announce, if set, is sent as a Keep-Alive header. It answers a request
// with faultEcho of it, or a GET with getBody bytes if that is set.
type idleServer struct {
	*keepalivetest.Server
	getBody int
	served  atomic.Int64
}

func newIdleServer(t *testing.T, p proto, dropAfter, closeAfter time.Duration, announce string) *idleServer {
	s := &idleServer{}
	step := keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		_, _ = io.Copy(h, r.Body)
		s.served.Add(1)
		if r.Method == http.MethodGet && s.getBody > 0 {
			_, _ = io.WriteString(w, strings.Repeat("x", s.getBody))
			return
		}
		_, _ = io.WriteString(w, faultEcho(r.Method, r.Header.Get("X-Req-Id"), hex.EncodeToString(h.Sum(nil))))
	}).IdleDrop(dropAfter).IdleClose(closeAfter)
	if announce != "" {
		step = step.Header("Keep-Alive", announce)
	}
	s.Server, _ = newServer(t, p, step)
	return s
}

// dropped returns how many requests the server dropped.
func (s *idleServer) dropped() int { return s.Requests() - int(s.served.Load()) }

// handlerServer starts an HTTP/1.1 server on which h answers every request.
func handlerServer(t testing.TB, h http.HandlerFunc) *keepalivetest.Server {
	t.Helper()
	s, _ := newServer(t, http1, keepalivetest.Handle(h))
	return s
}

// script answers the n-th request (from 1) with statuses[n-1], and the
// last status after that, with a body that says which attempt it was:
// "attempt n: status". The tests that use it send at most 16 attempts.
func script(statuses ...int) []keepalivetest.Step {
	steps := make([]keepalivetest.Step, 16)
	for i := range steps {
		code := statuses[min(i, len(statuses)-1)]
		steps[i] = keepalivetest.Status(code).Body(fmt.Sprintf("attempt %d: %d", i+1, code))
	}
	return steps
}

// hostOf returns the host and port of a URL, the HostStats key of a test
// server's URL.
func hostOf(t testing.TB, rawURL string) string {
	t.Helper()
	return mustParseURL(t, rawURL).Host
}

func mustParseURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

// send sends req on c and reads the whole response body, which it closes.
// resp is nil if no response came; err is the error of the request or of
// the body's read.
func send(t testing.TB, c *http.Client, req *http.Request) (resp *http.Response, body string, err error) {
	t.Helper()
	resp, err = c.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// get is send for a GET of url.
func get(t testing.TB, c *http.Client, url string) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	return send(t, c, req)
}

// mustGet is get for a request that must succeed; it returns the status.
func mustGet(t testing.TB, c *http.Client, url string) int {
	t.Helper()
	resp, _, err := get(t, c, url)
	require.NoError(t, err)
	return resp.StatusCode
}

// readBody reads resp's body to the end and closes it; a read error fails
// the test.
func readBody(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// burst sends n concurrent GETs, released together, and reads their
// bodies; every one must succeed.
func burst(t *testing.T, c *http.Client, url string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			<-start
			resp, err := c.Get(url)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if err != nil {
				errs <- err
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// poll checks cond every millisecond until it holds, and reports whether
// it did before limit passed: a bound on the wait for something the test
// cannot be told of, such as a counter, never a timing.
func poll(limit time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			return cond()
		case <-tick.C:
		}
	}
	return true
}

// recv returns what ch delivers (the zero value once it is closed), and
// fails the test if nothing comes within 10 s: a bound on a hang, not a
// timing.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out waiting for %s", what)
	}
	panic("unreachable")
}

// waitOut waits d on a timer: a period that the behaviour under test needs
// to pass (a connection's idle age, a breaker's open timeout, a late
// read), never a stand-in for synchronisation.
func waitOut(d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	<-timer.C
}

// logCapture keeps what a Transport logs, through slog's text or JSON
// handler, and is safe for concurrent use. onRecord, if set before the
// logger is used, sees each record as it is logged.
type logCapture struct {
	handler  slog.Handler
	onRecord func(slog.Record)

	mu  sync.Mutex
	buf bytes.Buffer
}

// captureLogs returns a capture of the records at level and above, as JSON
// or as text.
func captureLogs(level slog.Level, asJSON bool) *logCapture {
	c := &logCapture{}
	opts := &slog.HandlerOptions{Level: level}
	if asJSON {
		c.handler = slog.NewJSONHandler(c, opts)
	} else {
		c.handler = slog.NewTextHandler(c, opts)
	}
	return c
}

// option is WithLogger with the capture's logger.
func (c *logCapture) option() Option { return WithLogger(slog.New(captureHandler{c, c.handler})) }

// Write takes one record from the handler.
func (c *logCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

// String returns the records logged so far.
func (c *logCapture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// records decodes the JSON records logged so far.
func (c *logCapture) records(t testing.TB) []map[string]any {
	t.Helper()
	var out []map[string]any
	dec := json.NewDecoder(bytes.NewReader([]byte(c.String())))
	for dec.More() {
		var m map[string]any
		require.NoError(t, dec.Decode(&m))
		out = append(out, m)
	}
	return out
}

// captureHandler passes each record to the capture's handler, then to its
// onRecord.
type captureHandler struct {
	c *logCapture
	h slog.Handler
}

func (h captureHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

func (h captureHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.h.Handle(ctx, r)
	if h.c.onRecord != nil {
		h.c.onRecord(r)
	}
	return err
}

func (h captureHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return captureHandler{h.c, h.h.WithAttrs(as)}
}

func (h captureHandler) WithGroup(name string) slog.Handler {
	return captureHandler{h.c, h.h.WithGroup(name)}
}

// onceReader hides bytes.Reader so http.NewRequest sets no GetBody.
type onceReader struct{ r io.Reader }

func (o *onceReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// barrier releases its waiters n at a time.
type barrier struct {
	mu    sync.Mutex
	n     int
	count int
	ch    chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, ch: make(chan struct{})} }

func (b *barrier) wait(ctx context.Context) {
	b.mu.Lock()
	ch := b.ch
	if b.count++; b.count == b.n {
		close(b.ch)
		b.ch, b.count = make(chan struct{}), 0
	}
	b.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// upgradeServer answers "Upgrade: echo" with 101 Switching Protocols and
// then echoes 4-byte messages. With greet not nil, it first sends "helo"
// unasked, as a WebSocket server's greeting does, when greet is closed,
// and closes greeted once it has. Plain requests get "Keep-Alive:
// timeout=1", so keepalive learns a 1 s idle timeout for the host.
func upgradeServer(t *testing.T, greet <-chan struct{}, greeted chan<- struct{}) *keepalivetest.Server {
	return handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			w.Header().Set("Keep-Alive", "timeout=1")
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		if greet != nil {
			<-greet
			brw.WriteString("helo")
			brw.Flush()
			close(greeted)
		}
		buf := make([]byte, 4)
		for {
			if _, err := io.ReadFull(brw, buf); err != nil {
				return
			}
			conn.Write(buf)
		}
	})
}

// upgrade sends an "Upgrade: echo" request on c and returns the switched
// connection.
func upgrade(t *testing.T, c *http.Client, url string) io.ReadWriteCloser {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	resp, err := c.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	rw, ok := resp.Body.(io.ReadWriteCloser)
	require.True(t, ok, "the body of a 101 is writable")
	t.Cleanup(func() { rw.Close() })
	return rw
}

func echo(rw io.ReadWriter, msg string) (string, error) {
	if _, err := io.WriteString(rw, msg); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(rw, buf)
	return string(buf), err
}

// connectProxy is an HTTP proxy that serves CONNECT only, tunnelling to the
// address asked for.
func connectProxy(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var tunnels atomic.Int64
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		target, err := net.Dial("tcp", r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			target.Close()
			return
		}
		tunnels.Add(1)
		brw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n")
		brw.Flush()
		wg.Go(func() {
			io.Copy(target, brw)
			target.Close()
		})
		io.Copy(conn, target)
		conn.Close()
	}))
	t.Cleanup(func() { srv.Close(); wg.Wait() })
	return srv, &tunnels
}

// echoOverUpgrade switches protocols with upgradeServer and exchanges
// messages, each write after a read.
func echoOverUpgrade(t *testing.T, c *http.Client, url string) {
	t.Helper()
	rw := upgrade(t, c, url)
	defer rw.Close()

	buf := make([]byte, 4)
	for _, msg := range []string{"ping", "pong", "last"} { // each write follows a read
		_, err := io.WriteString(rw, msg)
		require.NoError(t, err, "write %q", msg)
		_, err = io.ReadFull(rw, buf)
		require.NoError(t, err)
		assert.Equal(t, msg, string(buf))
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// slowBody is a request body whose first Read waits for delay: an upload
// whose first bytes come late (read from disk, produced by a pipeline).
type slowBody struct {
	delay   time.Duration
	r       io.Reader
	started bool
}

func newSlowBody(delay time.Duration, r io.Reader) *slowBody {
	return &slowBody{delay: delay, r: r}
}

func (b *slowBody) Read(p []byte) (int, error) {
	if !b.started {
		b.started = true
		waitOut(b.delay)
	}
	return b.r.Read(p)
}

// drainedFirst is WithAttemptTransport holding each attempt until the
// response body of the attempt before it was closed. keepalive drains a
// discarded body on a goroutine of its own, and a retry that outran the
// drain would dial a new connection; held, it finds the drained
// connection back in the pool, whatever the scheduler does. For requests
// sent one at a time.
func drainedFirst() Option {
	return WithAttemptTransport(func(next http.RoundTripper) http.RoundTripper {
		var mu sync.Mutex
		var closed chan struct{} // of the last attempt's body
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			mu.Lock()
			prev := closed
			mu.Unlock()
			if prev != nil {
				timer := time.NewTimer(10 * time.Second) // a bound on a hang, not a timing
				defer timer.Stop()
				select {
				case <-prev:
				case <-timer.C:
					return nil, errors.New("the body of the attempt before was never closed")
				}
			}
			resp, err := next.RoundTrip(r)
			if resp != nil && resp.Body != http.NoBody {
				done := make(chan struct{})
				resp.Body = &closeNotifier{ReadCloser: resp.Body, close: sync.OnceFunc(func() { close(done) })}
				mu.Lock()
				closed = done
				mu.Unlock()
			}
			return resp, err
		})
	})
}

// closeNotifier calls close when its body is closed.
type closeNotifier struct {
	io.ReadCloser
	close func()
}

func (b *closeNotifier) Close() error {
	defer b.close()
	return b.ReadCloser.Close()
}

// listenLoopbacks listens on n loopback addresses, 127.0.0.from onwards,
// all on one port, chosen at random (Linux answers on all of
// 127.0.0.0/8): the first address's, which another address may hold, so
// it tries again, at most 20 times.
func listenLoopbacks(t testing.TB, from, n int) []net.Listener {
	t.Helper()
	for try := 0; ; try++ {
		lns, err := listenOnOnePort(from, n)
		if err == nil {
			return lns
		}
		if try == 20 {
			t.Fatalf("listening on %d loopback addresses on one port: %v", n, err)
		}
	}
}

func listenOnOnePort(from, n int) ([]net.Listener, error) {
	first, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:0", from))
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(first.Addr().String())
	lns := []net.Listener{first}
	for i := 1; i < n; i++ {
		ln, err := net.Listen("tcp", net.JoinHostPort(fmt.Sprintf("127.0.0.%d", from+i), port))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
	}
	return lns, nil
}
