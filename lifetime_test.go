package keepalive

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
		req, err = http.NewRequest(http.MethodPost, url, &onceReader{strings.NewReader(payload)})
		require.Nil(t, req.GetBody)
	}
	require.NoError(t, err)
	req.Header.Set("X-Request-Id", payload)
	return req
}

// echoOnce answers each request with its body and fails the test if a
// request (by its X-Request-Id) arrives twice: a POST must never be
// processed twice, and a lifetime must not make net/http resend anything
// that was written.
func echoOnce(t *testing.T) http.HandlerFunc {
	var mu sync.Mutex
	seen := map[string]bool{}
	return func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if !assert.NoError(t, err) {
			return
		}
		if id := r.Header.Get("X-Request-Id"); id != "" {
			mu.Lock()
			dup := seen[id]
			seen[id] = true
			mu.Unlock()
			assert.False(t, dup, "%s %q processed twice", r.Method, id)
		}
		w.Write(b)
	}
}

// With a lifetime of 1 ns every connection has expired when it is given to
// its first request: each request must then close its connection and the
// next go out on a new one, without an error, whatever its method and body.
func TestConnMaxLifetimeRetiresEveryReusedConnection(t *testing.T) {
	srv := handlerServer(t, echoOnce(t))
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
	assert.Equal(t, int64(n), st.ConnsExpired, "every connection was retired")
	assert.Equal(t, int64(n), st.Attempts)
	assert.Zero(t, st.Retries)
}

// The measure: lifetime 200 ms, 5 s of steady traffic from 8
// goroutines; every connection is replaced, no request fails, no POST is
// processed twice.
func TestConnMaxLifetimeUnderSteadyTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("5 s of traffic")
	}
	t.Parallel() // a server of its own; its bound on connection ages has 2 s of slack for a loaded machine
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
	// There was more than one generation, and most connections ended by
	// age: counted from the connections made, not from how many requests
	// a loaded machine fitted into the 5 s. (The last generation, and the
	// spare connections net/http pools when a request it dialed for got
	// another one first, end with the test.)
	assert.Greater(t, conns, workers, "more than one generation of connections")
	assert.GreaterOrEqual(t, st.ConnsExpired, int64(conns/2), "connections retired by age")
}

// Over TLS, HTTP/1 connections are retired as in clear text.
func TestConnMaxLifetimeOverTLS(t *testing.T) {
	srv, tlsOpt := newServer(t, https1, keepalivetest.Handle(echoOnce(t)))
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
	assert.Equal(t, int64(n), st.ConnsExpired)
}

// HTTP/2 connections are retired too, without an error: 8 goroutines
// share one connection at a time for many lifetimes; each expired
// connection hands its host to a new one, and closes once its streams
// ended.
func TestConnMaxLifetimeRetiresHTTP2(t *testing.T) {
	srv, tlsOpt := newServer(t, http2, keepalivetest.Handle(echoOnce(t)))
	const lifetime = 50 * time.Millisecond
	c, tr := newTestClient(t, tlsOpt, WithConnMaxLifetime(lifetime))
	resp, err := c.Get(srv.URL) // one connection, before concurrent requests could dial more
	require.NoError(t, err)
	resp.Body.Close()
	var wg sync.WaitGroup
	stop := time.Now().Add(10 * lifetime)
	for w := range 8 {
		wg.Go(func() {
			for i := 0; time.Now().Before(stop); i++ {
				payload := fmt.Sprintf("h2 worker %d request %d", w, i)
				resp, err := c.Do(lifetimeRequest(t, i, srv.URL, payload))
				if !assert.NoError(t, err, payload) {
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				assert.NoError(t, err)
				assert.Equal(t, 2, resp.ProtoMajor)
				if i%3 != 0 {
					assert.Equal(t, payload, string(b))
				}
			}
		})
	}
	wg.Wait()
	st := tr.Stats()
	t.Logf("Stats: %d dials, %d expired, %d discarded dials, %d requests", st.Dials, st.ConnsExpired, st.DiscardedDials, st.Requests)
	// The run lasts 10 lifetimes: a connection lives at least 0.9 of one.
	assert.GreaterOrEqual(t, st.ConnsExpired, int64(2))
	assert.LessOrEqual(t, st.Dials, st.ConnsExpired+1, "a new connection only for an expired one")
	assert.Zero(t, st.Retries)
}

// A retired HTTP/2 connection closes once its streams ended: the server
// sees at most the current connection open once the load stops, however
// many lifetimes it lasted.
func TestConnMaxLifetimeClosesRetiredHTTP2(t *testing.T) {
	var open, opened atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	srv.EnableHTTP2 = true
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
			opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	const lifetime = 30 * time.Millisecond
	c, tr := newTestClient(t, WithTLSConfig(srv.Client().Transport.(*http.Transport).TLSClientConfig), WithConnMaxLifetime(lifetime))
	var wg sync.WaitGroup
	stop := time.Now().Add(10 * lifetime)
	for range 8 {
		wg.Go(func() {
			for time.Now().Before(stop) {
				resp, err := c.Get(srv.URL)
				if !assert.NoError(t, err) {
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	require.GreaterOrEqual(t, tr.Stats().ConnsExpired, int64(2))
	closed := poll(5*time.Second, func() bool { return open.Load() <= 1 })
	assert.True(t, closed, "%d of %d connections still open at the server", open.Load(), opened.Load())
	t.Logf("%d connections opened, %d expired, %d open", opened.Load(), tr.Stats().ConnsExpired, open.Load())
}

// A request that switches protocols (a WebSocket) keeps its Connection
// header, Upgrade, even on an expired connection: the connection becomes
// the caller's, and must stay open.
func TestConnMaxLifetimeLeavesUpgradedConnectionsAlone(t *testing.T) {
	srv := upgradeServer(t, nil, nil)
	c, tr := newTestClient(t, WithConnMaxLifetime(time.Nanosecond))

	echoOverUpgrade(t, c, srv.URL)
	assert.Zero(t, tr.Stats().ConnsExpired)
}

// With Expect: 100-continue the body is written after the 100 response is
// read; a retired connection must still carry it whole.
func TestConnMaxLifetimeExpectContinue(t *testing.T) {
	srv := handlerServer(t, echoOnce(t))
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

// BenchmarkRoundTripLifetime is what WithConnMaxLifetime costs a request:
// a header copy and a trace.
func BenchmarkRoundTripLifetime(b *testing.B) {
	srv := cbServer(b)
	for _, bc := range []struct {
		name string
		opts []Option
	}{
		{"lifetime=off", nil},
		{"lifetime=1m", []Option{WithConnMaxLifetime(time.Minute)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tr := newTestTransport(b, bc.opts...)
			req, err := http.NewRequest(http.MethodGet, srv.URL, nil)
			require.NoError(b, err)
			req.Header.Set("Accept", "application/json")
			b.ReportAllocs()
			for b.Loop() {
				resp, err := tr.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}

// A connection retired by WithConnMaxLifetime never carries another
// request, whatever the server says in its response: here the server does
// not echo "Connection: close", and drops, unanswered, any request sent on
// a connection it was asked to close. Every POST must succeed and reach
// the server exactly once.
func TestRetiredConnectionCarriesNoOtherRequest(t *testing.T) {
	const posts = 500
	var mu sync.Mutex
	seen := map[string]int{}
	var onRetired atomic.Int64
	srv := newFaultServer(t, func(fc *faultConn) {
		closing := false
		for {
			r, err := fc.readRequest()
			if err != nil {
				return // the client closed the connection, as it should after "Connection: close"
			}
			mu.Lock()
			seen[r.Header.Get("X-Req-Id")]++
			mu.Unlock()
			if closing { // a request on a connection the client asked to close
				onRetired.Add(1)
				return
			}
			if fc.reply(http.StatusOK, "ok") != nil { // no Connection header echoed
				return
			}
			closing = r.Close
		}
	})
	c, tr := newTestClient(t, WithProxy(nil), WithConnMaxLifetime(2*time.Millisecond))

	t.Run("every POST succeeds and reaches the server once though the server does not echo Connection: close", func(t *testing.T) {
		failures := 0
		var firstErr error
		for i := range posts {
			req, err := http.NewRequest(http.MethodPost, srv.url("/post"), strings.NewReader("payload"))
			require.NoError(t, err)
			req.Header.Set("X-Req-Id", strconv.Itoa(i))
			resp, err := c.Do(req)
			if err != nil {
				failures++
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}

		require.NotZero(t, tr.Stats().ConnsExpired, "no connection was retired: the test proves nothing")
		assert.Zero(t, failures, "POSTs failed; first error: %v", firstErr)
		assert.Zero(t, onRetired.Load(), "requests written on a retired connection")
		mu.Lock()
		defer mu.Unlock()
		assert.Len(t, seen, posts, "distinct POSTs that reached the server")
		for id, n := range seen {
			if n != 1 {
				t.Errorf("POST %s reached the server %d times", id, n)
			}
		}
	})
}
