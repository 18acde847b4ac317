// This file holds the tests of how connections are made: the dialer and
// its TCP keep-alive probes, WithDialContext, proxies, the protocol spoken,
// connection reuse under load, and dials that the dial gate or
// CloseIdleConnections end.

package keepalive

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A Transport dials through WithDialContext, here to a unix socket, and
// still pools, counts and retries its connections.
func TestWithDialContextDialsAUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "app.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "over "+r.Host)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	var dials, failures atomic.Int64
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		if dials.Add(1) == 1 {
			failures.Add(1)
			return nil, errors.New("refused, once") // a failed dial is retried
		}
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	c, tr := newTestClient(t, WithDialContext(dial), WithProxy(nil), WithBackoff(time.Millisecond, time.Millisecond))
	for range 5 {
		resp, err := c.Get("http://app.test/x")
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, "over app.test", string(b))
	}
	st := tr.Stats()
	assert.Equal(t, int64(1), st.Dials, "one connection, reused")
	assert.Equal(t, int64(1), st.DialErrors)
	assert.Equal(t, int64(1), st.Retries)
	assert.Equal(t, int64(2), dials.Load())
}

// The connect timeout bounds a dial of WithDialContext through its context.
func TestWithDialContextHasTheConnectTimeout(t *testing.T) {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done() // a dial that never connects
		return nil, ctx.Err()
	}
	c, _ := newTestClient(t, WithDialContext(dial), WithConnectTimeout(50*time.Millisecond), WithMaxRetries(0), WithProxy(nil))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://app.test/", nil)
	require.NoError(t, err)
	_, err = c.Do(req)
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded, "the dial's deadline, not the caller's")
	assert.NoError(t, ctx.Err())
}

// WithoutHTTP2 keeps a Transport on HTTP/1.1 against a server that offers
// HTTP/2; by default it takes HTTP/2.
func TestWithoutHTTP2SpeaksHTTP1(t *testing.T) {
	srv, tlsOpt := newServer(t, http2, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto)
	}))
	for _, tt := range []struct {
		name string
		opts []Option
		want string
	}{
		{"by default HTTP/2", nil, "HTTP/2.0"},
		{"WithoutHTTP2: HTTP/1.1", []Option{WithoutHTTP2()}, "HTTP/1.1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newTestClient(t, append(tt.opts, tlsOpt, WithProxy(nil))...)
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			assert.Equal(t, tt.want, string(b))
			assert.Equal(t, tt.want, resp.Proto)
		})
	}
}

// TestDefaultsReuseConnectionsAt64Concurrent is the project's reason to
// exist: http.DefaultTransport opens thousands of connections here.
func TestDefaultsReuseConnectionsAt64Concurrent(t *testing.T) {
	const workers = 64
	perWorker := 625 // 40,000 requests
	if testing.Short() {
		t.Skip("40,000 requests; skipped with -short")
	}
	t.Parallel() // a server of its own; counts connections, not times
	if raceEnabled {
		perWorker = 160 // 10,240 requests find the races; the count is the normal run's
	}
	srv := keepalivetest.NewServer(t, keepalivetest.Status(200).Body("ok"))
	c, tr := newTestClient(t)
	var wg sync.WaitGroup
	var failures atomic.Int64
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perWorker {
				resp, err := c.Get(srv.URL)
				if err != nil {
					failures.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	assert.Zero(t, failures.Load())
	assert.Equal(t, workers*perWorker, srv.Requests())
	assert.LessOrEqual(t, srv.Connections(), int(1.25*workers), "connections opened at the server")
	assert.EqualValues(t, srv.Connections(), tr.Stats().Dials, "the dial counter sees every connection")
	t.Logf("%d GETs from 64 goroutines: %d connections", workers*perWorker, srv.Connections())
}

func TestHTTP2IsUsedWhenTheServerOffersIt(t *testing.T) {
	srv, tlsOpt := newServer(t, http2, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.Proto)
	}))
	c, tr := newTestClient(t, tlsOpt)
	resp, err := c.Get(srv.URL)
	require.NoError(t, err)
	assert.Equal(t, "HTTP/2.0", readBody(t, resp))
	assert.Equal(t, 2, resp.ProtoMajor)
	assert.EqualValues(t, 1, tr.Stats().Dials, "our dialer made the connection")
}

func TestWithProxySendsThroughTheProxy(t *testing.T) {
	var proxied atomic.Int64
	proxy := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		proxied.Add(1)
		fmt.Fprint(w, "via proxy for ", r.URL.Host) // a proxy sees the absolute URL
	})
	pu, err := url.Parse(proxy.URL)
	require.NoError(t, err)
	c, _ := newTestClient(t, WithProxy(http.ProxyURL(pu)))
	resp, err := c.Get("http://upstream.invalid/x")
	require.NoError(t, err)
	assert.Equal(t, "via proxy for upstream.invalid", readBody(t, resp))
	assert.EqualValues(t, 1, proxied.Load())
}

func TestWithProxyNilSendsDirectly(t *testing.T) {
	var proxied atomic.Int64
	proxy := handlerServer(t, func(w http.ResponseWriter, r *http.Request) { proxied.Add(1) })
	srv := keepalivetest.NewServer(t, keepalivetest.Status(200).Body("direct"))
	pu, err := url.Parse(proxy.URL)
	require.NoError(t, err)
	c, tr := newTestClient(t, WithProxy(http.ProxyURL(pu)), WithProxy(nil))
	assert.Nil(t, tr.base.Proxy, "as a nil http.Transport.Proxy")
	resp, err := c.Get(srv.URL)
	require.NoError(t, err)
	assert.Equal(t, "direct", readBody(t, resp))
	assert.Zero(t, proxied.Load(), "the later WithProxy(nil) overrides the proxy")
}

func TestDialerSetsTCPKeepAliveProbes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	tr := newTestTransport(t)
	c, err := tr.base.DialContext(context.Background(), "tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	for { // the dialer's wrappers (dial gate, write deadline) each give NetConn
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	tcp := c.(*net.TCPConn)
	raw, err := tcp.SyscallConn()
	require.NoError(t, err)
	opt := func(level, name int) int {
		var v int
		var serr error
		require.NoError(t, raw.Control(func(fd uintptr) { v, serr = syscall.GetsockoptInt(int(fd), level, name) }))
		require.NoError(t, serr)
		return v
	}
	assert.Equal(t, 1, opt(syscall.SOL_SOCKET, syscall.SO_KEEPALIVE))
	assert.Equal(t, int(tcpKeepAliveIdle/time.Second), opt(syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE))
	assert.Equal(t, int(tcpKeepAliveInterval/time.Second), opt(syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL))
	assert.Equal(t, tcpKeepAliveCount, opt(syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT))
	assert.EqualValues(t, 1, tr.Stats().Dials)
}

// A dial that CloseIdleConnections cancels because its request was
// already served by another connection is not a failed dial.
//
// The server listens with a backlog of 0 and accepts one connection only;
// a second connection (the filler) fills its accept queue, so the next
// connect hangs in SYN_SENT. Request A holds the one accepted connection
// while request B dials; A then finishes and its connection serves B, and
// CloseIdleConnections cancels B's dial, still hanging.
func TestCancelledDialsAreNotDialErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	rc, err := ln.(*net.TCPListener).SyscallConn()
	require.NoError(t, err)
	var lerr error
	require.NoError(t, rc.Control(func(fd uintptr) { lerr = syscall.Listen(int(fd), 0) }))
	require.NoError(t, lerr)
	addr := ln.Addr().String()

	aArrived, releaseA := make(chan struct{}), make(chan struct{})
	var (
		serverWG     sync.WaitGroup
		serverMu     sync.Mutex
		serverConn   net.Conn
		serverClosed bool
	)
	serverWG.Go(func() {
		c, err := ln.Accept() // the one connection ever accepted
		if err != nil {
			return
		}
		defer c.Close()
		serverMu.Lock()
		serverConn = c
		closed := serverClosed
		serverMu.Unlock()
		if closed {
			return
		}
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/a" {
				close(aArrived)
				<-releaseA
			}
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	})
	t.Cleanup(func() {
		ln.Close()
		serverMu.Lock()
		serverClosed = true
		if serverConn != nil {
			serverConn.Close()
		}
		serverMu.Unlock()
		serverWG.Wait()
	})

	dials := make(chan DialEvent, 4)
	tr := newTestTransport(t, WithProxy(nil), WithMaxRetries(0),
		WithObserver(Observer{OnDial: func(e DialEvent) {
			select {
			case dials <- e:
			default:
			}
		}}))

	type result struct {
		resp *http.Response
		err  error
	}
	send := func(ctx context.Context, path string) <-chan result {
		ch := make(chan result, 1)
		go func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
			if err != nil {
				ch <- result{err: err}
				return
			}
			resp, err := tr.RoundTrip(req)
			if resp != nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			ch <- result{resp, err}
		}()
		return ch
	}
	release := sync.OnceFunc(func() { close(releaseA) })
	t.Cleanup(release)

	t.Run("a dial cancelled by CloseIdleConnections after its request was served is not a failed dial", func(t *testing.T) {
		a := send(context.Background(), "/a")
		recv(t, aArrived, "request A to reach the server")
		require.NoError(t, recv(t, dials, "A's dial").Err, "A's dial")

		filler, err := net.Dial("tcp", addr) // queued, never accepted: the queue is full
		require.NoError(t, err)
		t.Cleanup(func() { filler.Close() })

		bConnecting, bConnectDone := make(chan struct{}), make(chan struct{})
		closeBConnecting := sync.OnceFunc(func() { close(bConnecting) })
		closeBConnectDone := sync.OnceFunc(func() { close(bConnectDone) })
		var bReused atomic.Bool
		bTrace := &httptrace.ClientTrace{
			ConnectStart: func(string, string) { closeBConnecting() },
			ConnectDone:  func(string, string, error) { closeBConnectDone() },
			GotConn:      func(i httptrace.GotConnInfo) { bReused.Store(i.Reused) },
		}
		b := send(httptrace.WithClientTrace(context.Background(), bTrace), "/b")
		recv(t, bConnecting, "request B to start its dial") // which hangs: its SYN is dropped

		release()
		require.NoError(t, recv(t, a, "request A").err, "request A")
		require.NoError(t, recv(t, b, "request B").err, "request B")
		require.True(t, bReused.Load(), "B must have been served by A's connection, its own dial still hanging")

		tr.CloseIdleConnections() // cancels B's dial, no longer needed
		recv(t, bConnectDone, "B's dial to end")
		// The dial has ended; the current code counts it and reports it to
		// OnDial within microseconds. Whether a fixed Transport reports a
		// cancelled dial at all is up to it, so wait for the report a bounded
		// time only.
		grace := time.NewTimer(250 * time.Millisecond)
		defer grace.Stop()
		select {
		case <-dials:
		case <-grace.C:
		}

		st := tr.Stats()
		assert.Equal(t, int64(2), st.Requests)
		assert.Zero(t, st.DialErrors, "a dial cancelled because its request was served counted as a failed dial")
	})
}
