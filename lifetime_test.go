package keepalive

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// streamBody is a request body that cannot be rewound: http.NewRequest sets
// no GetBody for it.
type streamBody struct{ r io.Reader }

func (b *streamBody) Read(p []byte) (int, error) { return b.r.Read(p) }

// lifetimeRequest builds the request kinds a lifetime must not break: no
// body, a rewindable body, and a body that cannot be rewound, each without
// Idempotency-Key.
func lifetimeRequest(t testing.TB, kind int, url, payload string) *http.Request {
	t.Helper()
	var (
		req *http.Request
		err error
	)
	switch kind % 3 {
	case 0:
		req, err = http.NewRequest(http.MethodGet, url, nil)
	case 1:
		req, err = http.NewRequest(http.MethodPost, url, strings.NewReader(payload))
	default:
		req, err = http.NewRequest(http.MethodPost, url, &streamBody{strings.NewReader(payload)})
		require.Nil(t, req.GetBody)
	}
	require.NoError(t, err)
	return req
}

// echoOnce answers each request with its body and fails the test if a body
// arrives twice: a POST must never be processed twice.
func echoOnce(t *testing.T) http.Handler {
	var mu sync.Mutex
	seen := map[string]bool{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if !assert.NoError(t, err) {
			return
		}
		if len(b) > 0 {
			mu.Lock()
			dup := seen[string(b)]
			seen[string(b)] = true
			mu.Unlock()
			assert.False(t, dup, "request body %q processed twice", b)
		}
		w.Write(b)
	})
}

// With a lifetime of 1 ns every connection has expired by its second
// request: each request must then go out on a new connection, without an
// error, whatever its method and body.
func TestConnMaxLifetimeRetiresEveryReusedConnection(t *testing.T) {
	srv := httptest.NewServer(echoOnce(t))
	t.Cleanup(srv.Close)
	c, tr := newTestClient(t, WithConnMaxLifetime(time.Nanosecond))
	const n = 30

	for i := range n {
		payload := fmt.Sprintf("request %d", i)
		resp, err := c.Do(lifetimeRequest(t, i, srv.URL, payload))
		require.NoError(t, err, "request %d", i)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		if i%3 != 0 {
			assert.Equal(t, payload, string(b))
		}
	}

	st := tr.Stats()
	assert.Equal(t, int64(n), st.Dials, "one connection per request")
	assert.Equal(t, int64(n-1), st.ConnsExpired, "every connection but the last was retired")
	assert.Equal(t, int64(n), st.Attempts, "net/http resent the requests, not the retry layer")
	assert.Zero(t, st.Retries)
}

// The measure: lifetime 200 ms, 5 s of steady traffic from 8
// goroutines; every connection is replaced, no request fails, no POST is
// processed twice.
func TestConnMaxLifetimeUnderSteadyTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("5 s of traffic")
	}
	const (
		lifetime = 200 * time.Millisecond
		traffic  = 5 * time.Second
		workers  = 8
		// Time between the client's age check at its write and the
		// server reading the request: generous, for loaded machines.
		slack = 2 * time.Second
	)
	type connKey struct{}
	var (
		mu      sync.Mutex
		born    = map[net.Conn]time.Time{}
		maxAge  time.Duration
		handled atomic.Int64
	)
	echo := echoOnce(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		maxAge = max(maxAge, time.Since(born[r.Context().Value(connKey{}).(net.Conn)]))
		mu.Unlock()
		handled.Add(1)
		echo.ServeHTTP(w, r)
	}))
	srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		mu.Lock()
		born[c] = time.Now()
		mu.Unlock()
		return context.WithValue(ctx, connKey{}, c)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, tr := newTestClient(t, WithConnMaxLifetime(lifetime))

	var (
		wg       sync.WaitGroup
		failures atomic.Int64
		sent     atomic.Int64
	)
	stop := time.Now().Add(traffic)
	for w := range workers {
		wg.Go(func() {
			for i := 0; time.Now().Before(stop); i++ {
				payload := fmt.Sprintf("worker %d request %d", w, i)
				sent.Add(1)
				resp, err := c.Do(lifetimeRequest(t, i, srv.URL, payload))
				if err != nil {
					failures.Add(1)
					t.Errorf("request %q: %v", payload, err)
					continue
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || i%3 != 0 && string(b) != payload {
					failures.Add(1)
					t.Errorf("request %q: body %q, %v", payload, b, err)
				}
			}
		})
	}
	wg.Wait()

	st := tr.Stats()
	mu.Lock()
	conns, oldest := len(born), maxAge
	mu.Unlock()
	t.Logf("%d requests (1/3 GET, 1/3 POST with GetBody, 1/3 streamed POST) in %v over %d connections; "+
		"%d retired by age; oldest connection at a request: %v; %d failures",
		sent.Load(), traffic, conns, st.ConnsExpired, oldest.Round(time.Millisecond), failures.Load())
	assert.Zero(t, failures.Load())
	assert.Equal(t, sent.Load(), handled.Load(), "every request processed once")
	assert.Equal(t, int64(conns), st.Dials)
	// Each connection took its last request within its lifetime (+10%
	// jitter) plus the slack: all were replaced, over and over.
	assert.Less(t, oldest, lifetime*11/10+slack)
	assert.GreaterOrEqual(t, st.ConnsExpired, int64(3*workers), "several generations of connections")
}

// Over TLS the Transport runs the handshake itself to see the protocol;
// HTTP/1 connections are retired as in clear text.
func TestConnMaxLifetimeOverTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(echoOnce(t))
	srv.StartTLS() // HTTP/1 only: EnableHTTP2 is false
	t.Cleanup(srv.Close)
	tlsOpt := WithTLSConfig(srv.Client().Transport.(*http.Transport).TLSClientConfig)
	c, tr := newTestClient(t, tlsOpt, WithConnMaxLifetime(time.Nanosecond))
	const n = 9

	for i := range n {
		resp, err := c.Do(lifetimeRequest(t, i, srv.URL, fmt.Sprintf("tls request %d", i)))
		require.NoError(t, err, "request %d", i)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		assert.Equal(t, 1, resp.ProtoMajor)
	}
	st := tr.Stats()
	assert.Equal(t, int64(n), st.Dials)
	assert.Equal(t, int64(n-1), st.ConnsExpired)
}

// HTTP/2 connections carry concurrent streams and are left alone.
func TestConnMaxLifetimeLeavesHTTP2Alone(t *testing.T) {
	srv, tlsOpt := fleetServer(t, true, echoOnce(t))
	c, tr := newTestClient(t, tlsOpt, WithConnMaxLifetime(time.Nanosecond))
	const n = 9

	for i := range n {
		resp, err := c.Do(lifetimeRequest(t, i, srv.URL, fmt.Sprintf("h2 request %d", i)))
		require.NoError(t, err, "request %d", i)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		assert.Equal(t, 2, resp.ProtoMajor)
	}
	st := tr.Stats()
	assert.Equal(t, int64(1), st.Dials)
	assert.Zero(t, st.ConnsExpired)
}

func TestUnsentBodyHoldsCloseUntilReleased(t *testing.T) {
	rc := &closeCounter{Reader: strings.NewReader("x")}
	b := &unsentBody{rc: rc}
	require.NoError(t, b.Close())
	assert.Zero(t, rc.closes.Load(), "an unread body's Close is held back")
	assert.True(t, b.unread())
	b.release()
	assert.Equal(t, int32(1), rc.closes.Load())

	rc = &closeCounter{Reader: strings.NewReader("x")}
	b = &unsentBody{rc: rc}
	_, _ = b.Read(make([]byte, 1))
	require.NoError(t, b.Close())
	assert.Equal(t, int32(1), rc.closes.Load(), "a read body closes at once")
	assert.False(t, b.unread())
}

type closeCounter struct {
	io.Reader
	closes atomic.Int32
}

func (c *closeCounter) Close() error { c.closes.Add(1); return nil }

func TestWithConnMaxLifetimeValidation(t *testing.T) {
	_, err := NewTransport(WithConnMaxLifetime(-time.Second))
	var oe *OptionError
	require.ErrorAs(t, err, &oe)
	assert.Equal(t, "WithConnMaxLifetime", oe.Option)
}

// A connection that switched protocols (a WebSocket) belongs to the caller:
// its writes after reads are the caller's stream, never refused.
func TestConnMaxLifetimeLeavesUpgradedConnectionsAlone(t *testing.T) {
	srv := upgradeEchoServer(t)
	c, _ := newTestClient(t, WithConnMaxLifetime(time.Nanosecond))

	// A request first, so the upgrade goes out on a reused, expired
	// connection... which is refused, and the upgrade takes a new one.
	resp, err := c.Get(srv.URL)
	require.NoError(t, err)
	resp.Body.Close()
	echoOverUpgrade(t, c, srv.URL)
}

// upgradeEchoServer switches to an echo protocol of 4-byte messages on
// "Upgrade: echo", and answers 200 otherwise.
func upgradeEchoServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if !assert.NoError(t, err) {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		buf := make([]byte, 4)
		for {
			if _, err := io.ReadFull(brw, buf); err != nil {
				return
			}
			conn.Write(buf)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// echoOverUpgrade switches protocols with upgradeEchoServer and exchanges
// messages, each write after a read.
func echoOverUpgrade(t *testing.T, c *http.Client, url string) {
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

func TestSniffProtocol(t *testing.T) {
	tests := []struct {
		name string
		give string
		want int32
	}{
		{"an HTTP/1 request", "GET / HTTP/1.1\r\n", connHTTP1},
		{"a request to a proxy", "POST http://example.test/ HTTP/1.1\r\n", connHTTP1},
		{"a TLS ClientHello", "\x16\x03\x01\x02\x00", connOpaque},
		{"a proxy tunnel", "CONNECT example.test:443 HTTP/1.1\r\n", connOpaque},
		{"the HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", connOpaque},
		{"nothing yet", "", connUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, sniffProtocol([]byte(tt.give)))
		})
	}
}

// With Expect: 100-continue the body is written after the 100 response is
// read, which looks like the start of the next request: the connection,
// pinned to its request, must not refuse the body (with a 1 ns lifetime
// every write after a read would otherwise be refused).
func TestConnMaxLifetimeExpectContinue(t *testing.T) {
	srv := httptest.NewServer(echoOnce(t))
	t.Cleanup(srv.Close)
	c, tr := newTestClient(t, WithConnMaxLifetime(time.Nanosecond))
	const n = 6

	for i := range n {
		payload := fmt.Sprintf("continued %d", i)
		req := lifetimeRequest(t, 1+i%2, srv.URL, payload) // rewindable and streamed POSTs
		req.Header.Set("Expect", "100-continue")
		resp, err := c.Do(req)
		require.NoError(t, err, "request %d", i)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, payload, string(b))
	}
	assert.Equal(t, int64(n), tr.Stats().Dials)
}
