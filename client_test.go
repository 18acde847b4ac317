package keepalive

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testServer is an httptest server that counts the connections it accepts
// and the requests it serves.
type testServer struct {
	*httptest.Server
	conns atomic.Int64
	reqs  atomic.Int64
}

// newServer starts an HTTP/1 server on loopback running h; with useTLS it
// serves TLS with HTTP/2 on, and opts trust its certificate.
func newServer(t testing.TB, useTLS bool, h http.HandlerFunc) (s *testServer, opts []Option) {
	t.Helper()
	s = &testServer{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.reqs.Add(1)
		h(w, r)
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	if useTLS {
		s.EnableHTTP2 = true
		s.StartTLS()
		opts = append(opts, WithTLSConfig(s.Client().Transport.(*http.Transport).TLSClientConfig))
	} else {
		s.Start()
	}
	t.Cleanup(s.Close)
	return s, opts
}

// protos runs f over HTTP/1.1 and over HTTP/2 (with TLS), as net/http's own
// tests do.
func protos(t *testing.T, f func(t *testing.T, useTLS bool)) {
	t.Run("http1", func(t *testing.T) { f(t, false) })
	t.Run("http2", func(t *testing.T) { f(t, true) })
}

// script answers the n-th request (from 1) with statuses[n-1], and the last
// status after that; the body says which attempt it was.
func script(statuses ...int) http.HandlerFunc {
	var n atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		i := int(n.Add(1))
		code := statuses[min(i, len(statuses))-1]
		w.WriteHeader(code)
		fmt.Fprintf(w, "attempt %d: %d", i, code)
	}
}

func readBody(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// fastRetries makes backoff waits negligible so tests measure behaviour,
// not time.
var fastRetries = WithBackoff(time.Millisecond, 2*time.Millisecond)

func TestOptionsReportEveryInvalidOption(t *testing.T) {
	_, err := NewTransport(WithMaxRetries(-1), WithReadTimeout(-1))
	require.Error(t, err)
	var oe *OptionError
	require.ErrorAs(t, err, &oe)
	assert.Contains(t, err.Error(), "WithMaxRetries")
	assert.Contains(t, err.Error(), "WithReadTimeout")
}

func TestOptionsAcceptZeroValues(t *testing.T) {
	tr := newTestTransport(t,
		WithMaxIdleConns(0), WithMaxIdleConnsPerHost(0), WithMaxConnsPerHost(0),
		WithIdleConnTimeout(0), WithConnectTimeout(0), WithReadTimeout(0),
		WithTLSHandshakeTimeout(0), WithMaxRetries(0), WithRetryStatuses(),
		WithRetryMethods(), WithBackoff(0, 0), WithMaxRetryAfter(0), WithBodyBuffer(0), WithResponseBuffer(0),
		WithTLSConfig(nil), WithLogger(nil), WithProxy(nil))
	assert.Equal(t, defaultMaxIdleConnsPerHost, tr.base.MaxIdleConnsPerHost, "zero means the default")
	assert.Zero(t, tr.base.ResponseHeaderTimeout)
}

func TestDefaultsAreTunedAndKeepWhatDefaultTransportGives(t *testing.T) {
	tr := newTestTransport(t)
	b := tr.base
	assert.Equal(t, defaultMaxIdleConns, b.MaxIdleConns)
	assert.Equal(t, defaultMaxIdleConnsPerHost, b.MaxIdleConnsPerHost)
	assert.Equal(t, defaultIdleConnTimeout, b.IdleConnTimeout)
	assert.Less(t, b.IdleConnTimeout, 60*time.Second, "below the idle timeouts of ALB (60 s) and nginx (75 s)")
	assert.Equal(t, defaultReadTimeout, b.ResponseHeaderTimeout)
	assert.Equal(t, defaultTLSHandshakeTimeout, b.TLSHandshakeTimeout)
	assert.True(t, b.ForceAttemptHTTP2, "a custom dialer must not turn HTTP/2 off")
	require.NotNil(t, b.HTTP2)
	assert.Equal(t, http2PingInterval, b.HTTP2.SendPingTimeout)
	assert.Equal(t, http2PingTimeout, b.HTTP2.PingTimeout)
	assert.Equal(t, reflect.ValueOf(http.ProxyFromEnvironment).Pointer(), reflect.ValueOf(b.Proxy).Pointer(),
		"proxy from the environment, as http.DefaultTransport")
	assert.Equal(t, defaultMaxRetries, tr.policy.maxRetries)
	for _, c := range []int{429, 500, 501, 502, 503, 504} {
		assert.True(t, tr.policy.statuses.has(c), "status %d", c)
	}
	assert.False(t, tr.policy.statuses.has(404))
}

// TestDefaultsReuseConnectionsAt64Concurrent is the project's reason to
// exist: http.DefaultTransport opens thousands of connections here.
func TestDefaultsReuseConnectionsAt64Concurrent(t *testing.T) {
	const workers = 64
	perWorker := 625 // 40,000 requests
	if testing.Short() {
		t.Skip("40,000 requests; skipped with -short")
	}
	if raceEnabled {
		perWorker = 160 // 10,240 requests find the races; the count is the normal run's
	}
	srv, _ := newServer(t, false, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
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
	assert.EqualValues(t, workers*perWorker, srv.reqs.Load())
	assert.LessOrEqual(t, srv.conns.Load(), int64(1.25*workers), "connections opened at the server")
	assert.Equal(t, srv.conns.Load(), tr.Stats().Dials, "the dial counter sees every connection")
	t.Logf("%d GETs from 64 goroutines: %d connections", workers*perWorker, srv.conns.Load())
}

func TestHTTP2IsUsedWhenTheServerOffersIt(t *testing.T) {
	srv, opts := newServer(t, true, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.Proto)
	})
	c, tr := newTestClient(t, opts...)
	resp, err := c.Get(srv.URL)
	require.NoError(t, err)
	assert.Equal(t, "HTTP/2.0", readBody(t, resp))
	assert.Equal(t, 2, resp.ProtoMajor)
	assert.EqualValues(t, 1, tr.Stats().Dials, "our dialer made the connection")
}

func TestWithProxySendsThroughTheProxy(t *testing.T) {
	var proxied atomic.Int64
	proxy, _ := newServer(t, false, func(w http.ResponseWriter, r *http.Request) {
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
	proxy, _ := newServer(t, false, func(w http.ResponseWriter, r *http.Request) { proxied.Add(1) })
	srv, _ := newServer(t, false, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "direct") })
	pu, err := url.Parse(proxy.URL)
	require.NoError(t, err)
	c, tr := newTestClient(t, WithProxy(http.ProxyURL(pu)), WithProxy(nil))
	assert.Nil(t, tr.base.Proxy, "as a nil http.Transport.Proxy")
	resp, err := c.Get(srv.URL)
	require.NoError(t, err)
	assert.Equal(t, "direct", readBody(t, resp))
	assert.Zero(t, proxied.Load(), "the later WithProxy(nil) overrides the proxy")
}

func TestReadTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	protos(t, func(t *testing.T, useTLS bool) {
		t.Run("a stall before headers fails the attempt and is retried", func(t *testing.T) {
			release := make(chan struct{})
			srv, opts := newServer(t, useTLS, func(w http.ResponseWriter, r *http.Request) {
				<-release
			})
			t.Cleanup(func() { close(release) }) // runs before srv.Close
			c, tr := newTestClient(t, append(opts, WithReadTimeout(timeout), WithMaxRetries(1), fastRetries)...)
			_, err := c.Get(srv.URL)
			require.Error(t, err)
			var ne net.Error
			require.ErrorAs(t, err, &ne)
			assert.True(t, ne.Timeout(), "%v", err)
			assert.Contains(t, err.Error(), "timeout awaiting response headers")
			assert.EqualValues(t, 2, tr.Stats().Attempts)
		})
		t.Run("a body that keeps trickling is not cut off", func(t *testing.T) {
			srv, opts := newServer(t, useTLS, func(w http.ResponseWriter, r *http.Request) {
				// Writes spaced by timeout/3: the whole body takes over
				// twice the read timeout, no gap comes near it.
				for i := range 8 {
					fmt.Fprint(w, i)
					w.(http.Flusher).Flush()
					time.Sleep(timeout / 3)
				}
			})
			c, _ := newTestClient(t, append(opts, WithReadTimeout(timeout))...)
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			assert.Equal(t, "01234567", readBody(t, resp))
		})
		t.Run("a stall in the body fails the read and says so", func(t *testing.T) {
			release := make(chan struct{})
			srv, opts := newServer(t, useTLS, func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, "partial")
				w.(http.Flusher).Flush()
				<-release
			})
			t.Cleanup(func() { close(release) })
			c, _ := newTestClient(t, append(opts, WithReadTimeout(timeout))...)
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			assert.Equal(t, "partial", string(got))
			require.ErrorIs(t, err, ErrReadTimeout)
			var ne net.Error
			require.ErrorAs(t, err, &ne)
			assert.True(t, ne.Timeout())
			assert.Contains(t, err.Error(), "no response body data for 300ms")
		})
	})
}

func TestStatusRetries(t *testing.T) {
	protos(t, func(t *testing.T, useTLS bool) {
		t.Run("retried statuses end in the success", func(t *testing.T) {
			srv, opts := newServer(t, useTLS, script(503, 502, 200))
			c, tr := newTestClient(t, append(opts, fastRetries)...)
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			assert.Equal(t, 200, resp.StatusCode)
			assert.Equal(t, "attempt 3: 200", readBody(t, resp))
			want := Stats{Requests: 1, Attempts: 3, Retries: 2, Dials: 1}
			if useTLS {
				want.TLSHandshakes = 1
			}
			assert.Equal(t, want, tr.Stats(), "drained bodies let every attempt reuse the one connection")
		})
		t.Run("exhausted retries return the last response with its body", func(t *testing.T) {
			srv, opts := newServer(t, useTLS, script(500))
			c, tr := newTestClient(t, append(opts, fastRetries, WithMaxRetries(2))...)
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			assert.Equal(t, 500, resp.StatusCode)
			assert.Equal(t, "attempt 3: 500", readBody(t, resp))
			assert.EqualValues(t, 3, srv.reqs.Load())
			assert.EqualValues(t, 1, tr.Stats().GaveUp)
		})
	})
	t.Run("every status of the default list is retried, others are not", func(t *testing.T) {
		for _, code := range []int{429, 500, 501, 502, 503, 504, 400, 404, 505} {
			srv, _ := newServer(t, false, script(code, 200))
			c, _ := newTestClient(t, fastRetries)
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			resp.Body.Close()
			retried := code == 429 || (code >= 500 && code <= 504)
			assert.Equal(t, retried, resp.StatusCode == 200, "status %d", code)
		}
	})
	t.Run("WithRetryStatuses drops 501", func(t *testing.T) {
		srv, _ := newServer(t, false, script(501, 200))
		c, _ := newTestClient(t, fastRetries, WithRetryStatuses(429, 500, 502, 503, 504))
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, 501, resp.StatusCode)
		resp.Body.Close()
	})
	t.Run("WithMaxRetries(0) sends once", func(t *testing.T) {
		srv, _ := newServer(t, false, script(503, 200))
		c, tr := newTestClient(t, WithMaxRetries(0))
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode)
		resp.Body.Close()
		assert.EqualValues(t, 1, tr.Stats().Attempts)
	})
}

func TestIdempotency(t *testing.T) {
	tests := []struct {
		name    string
		method  string
		header  string
		opts    []Option
		retried bool
	}{
		{name: "GET is retried", method: "GET", retried: true},
		{name: "HEAD is retried", method: "HEAD", retried: true},
		{name: "OPTIONS is retried", method: "OPTIONS", retried: true},
		{name: "TRACE is retried", method: "TRACE", retried: true},
		{name: "PUT is retried", method: "PUT", retried: true},
		{name: "DELETE is retried", method: "DELETE", retried: true},
		{name: "POST is not retried", method: "POST"},
		{name: "PATCH is not retried", method: "PATCH"},
		{name: "POST with Idempotency-Key is retried", method: "POST", header: "Idempotency-Key", retried: true},
		{name: "PATCH with X-Idempotency-Key is retried", method: "PATCH", header: "X-Idempotency-Key", retried: true},
		{name: "POST is retried when WithRetryMethods allows it", method: "POST", opts: []Option{WithRetryMethods("POST")}, retried: true},
		{name: "GET is not retried when WithRetryMethods leaves it out", method: "GET", opts: []Option{WithRetryMethods("PUT")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := newServer(t, false, script(503, 200))
			c, _ := newTestClient(t, append(tt.opts, fastRetries)...)
			req, err := http.NewRequest(tt.method, srv.URL, strings.NewReader("payload"))
			require.NoError(t, err)
			if tt.header != "" {
				req.Header.Set(tt.header, "key-1")
			}
			resp, err := c.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			want := map[bool]int{true: 200, false: 503}[tt.retried]
			assert.Equal(t, want, resp.StatusCode)
			assert.EqualValues(t, map[bool]int64{true: 2, false: 1}[tt.retried], srv.reqs.Load(), "requests at the server")
		})
	}
}

// rawServer is a net.Listener server whose handler gets each raw
// connection; it counts connections and stops its goroutines on cleanup.
type rawServer struct {
	ln    net.Listener
	conns atomic.Int64
	wg    sync.WaitGroup
}

func newRawServer(t testing.TB, handle func(c net.Conn, n int64)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &rawServer{ln: ln}
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := s.conns.Add(1)
			mu.Lock()
			open[c] = true
			mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					mu.Lock()
					delete(open, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c, n)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *rawServer) URL() string { return "http://" + s.ln.Addr().String() }

// hangUpServer reads each request whole and closes the connection without
// answering; it counts requests and the bodies' checksums.
func hangUpServer(t testing.TB) (*rawServer, *atomic.Int64) {
	var reqs atomic.Int64
	s := newRawServer(t, func(c net.Conn, _ int64) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		reqs.Add(1)
	})
	return s, &reqs
}

func TestTransportErrors(t *testing.T) {
	t.Run("a connection closed without an answer is retried for GET", func(t *testing.T) {
		s, reqs := hangUpServer(t)
		c, tr := newTestClient(t, fastRetries, WithMaxRetries(2))
		_, err := c.Get(s.URL())
		require.Error(t, err)
		assert.EqualValues(t, 3, reqs.Load())
		var re *RetryError
		require.ErrorAs(t, err, &re)
		assert.Equal(t, 3, re.Attempts)
		assert.ErrorIs(t, err, io.EOF, "the last attempt's error is reachable")
		assert.Equal(t, Stats{Requests: 1, Attempts: 3, Retries: 2, GaveUp: 1, Dials: 3}, tr.Stats())
	})
	t.Run("a POST without a key is never sent twice", func(t *testing.T) {
		s, reqs := hangUpServer(t)
		c, _ := newTestClient(t, fastRetries)
		_, err := c.Post(s.URL(), "text/plain", strings.NewReader("charge the card"))
		require.Error(t, err)
		assert.EqualValues(t, 1, reqs.Load())
	})
	t.Run("a POST with an Idempotency-Key is retried", func(t *testing.T) {
		s, reqs := hangUpServer(t)
		c, _ := newTestClient(t, fastRetries, WithMaxRetries(2))
		req, err := http.NewRequest("POST", s.URL(), strings.NewReader("charge the card"))
		require.NoError(t, err)
		req.Header.Set("Idempotency-Key", "k-42")
		_, err = c.Do(req)
		require.Error(t, err)
		assert.EqualValues(t, 3, reqs.Load())
	})
	t.Run("a refused connection is retried even for a POST, which never left", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		require.NoError(t, ln.Close()) // nothing listens there now
		c, tr := newTestClient(t, fastRetries, WithMaxRetries(2))
		_, err = c.Post("http://"+addr, "text/plain", strings.NewReader("x"))
		require.Error(t, err)
		assert.ErrorIs(t, err, syscall.ECONNREFUSED)
		var oe *net.OpError
		assert.ErrorAs(t, err, &oe)
		var re *RetryError
		require.ErrorAs(t, err, &re)
		assert.Equal(t, "POST", re.Method)
		assert.Equal(t, 3, re.Attempts)
		assert.EqualValues(t, 3, tr.Stats().DialErrors)
		assert.Equal(t, "http://"+addr, re.URL)
		// http.Client's *url.Error names the method and URL; the RetryError
		// inside does not repeat them.
		assert.True(t, strings.HasPrefix(err.Error(),
			`Post "http://`+addr+`": keepalive: gave up after 3 attempts: dial tcp `+addr+": "), err.Error())
		assert.Equal(t, 1, strings.Count(err.Error(), "http://"+addr), err.Error())
		assert.Equal(t, 1, strings.Count(strings.ToUpper(err.Error()), "POST"), err.Error())
	})
}

func TestNeverRetried(t *testing.T) {
	t.Run("an untrusted certificate", func(t *testing.T) {
		srv, _ := newServer(t, true, script(200))
		c, tr := newTestClient(t, fastRetries) // system roots do not trust httptest
		_, err := c.Get(srv.URL)
		var cv *tls.CertificateVerificationError
		require.ErrorAs(t, err, &cv)
		assert.EqualValues(t, 1, tr.Stats().Attempts)
	})
	t.Run("an unsupported scheme", func(t *testing.T) {
		c, tr := newTestClient(t, fastRetries)
		_, err := c.Get("ftp://127.0.0.1/x")
		require.ErrorContains(t, err, "unsupported protocol scheme")
		assert.EqualValues(t, 1, tr.Stats().Attempts)
	})
	t.Run("a malformed request", func(t *testing.T) {
		srv, _ := newServer(t, false, script(200))
		c, tr := newTestClient(t, fastRetries)
		req, err := http.NewRequest("GET", srv.URL, nil)
		require.NoError(t, err)
		req.Header["Bad Header"] = []string{"x"}
		_, err = c.Do(req)
		require.ErrorContains(t, err, "invalid header")
		assert.EqualValues(t, 1, tr.Stats().Attempts)
		assert.Zero(t, srv.reqs.Load())
	})
	t.Run("a host name that does not exist", func(t *testing.T) {
		// A DNS server of the test's own: the system resolver may time out
		// (a sandbox, a flaky network), which is worth a retry.
		dns := nxdomainServer(t)
		d := &net.Dialer{Resolver: &net.Resolver{PreferGo: true,
			Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "udp", dns)
			}}}
		c, tr := newTestClient(t, fastRetries, WithDialContext(d.DialContext))
		_, err := c.Get("http://no-such-host.invalid/")
		var de *net.DNSError
		require.ErrorAs(t, err, &de)
		assert.True(t, de.IsNotFound, "%v", err)
		assert.NotErrorAs(t, err, new(*RetryError), "one attempt is not a retry")
		s := tr.Stats()
		assert.EqualValues(t, 1, s.Attempts)
		assert.EqualValues(t, 0, s.Retries)
		assert.EqualValues(t, 1, s.DialErrors)
	})
	t.Run("a context the caller cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		srv, _ := newServer(t, false, func(w http.ResponseWriter, r *http.Request) {
			cancel()
			<-r.Context().Done() // the client went away
		})
		c, tr := newTestClient(t, fastRetries)
		req, err := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
		require.NoError(t, err)
		_, err = c.Do(req)
		require.ErrorIs(t, err, context.Canceled)
		assert.EqualValues(t, 1, tr.Stats().Attempts)
	})
}

// nxdomainServer starts a DNS server on loopback UDP that answers every
// query "no such name" (RCODE 3), and returns its address. It runs until
// the test ends.
func nxdomainServer(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed by the cleanup
			}
			if n < 12 {
				continue
			}
			// The reply is the query with the header's flags set: a
			// response (QR), recursion available (RA), RCODE NXDOMAIN. The
			// question stays; the additional section (EDNS) is dropped.
			q := buf[:n]
			end := 12
			for end < n && q[end] != 0 { // QNAME labels
				end += 1 + int(q[end])
			}
			end += 1 + 4 // the root label, QTYPE, QCLASS
			if end > n {
				continue
			}
			resp := append([]byte(nil), q[:end]...)
			resp[2] = 0x80 | resp[2]&0x01 // QR, RD echoed
			resp[3] = 0x80 | 3            // RA, NXDOMAIN
			copy(resp[4:12], []byte{0, 1, 0, 0, 0, 0, 0, 0})
			pc.WriteTo(resp, addr)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().String()
}

// checksumServer answers statuses in turn and records the checksum of every
// body it receives.
type checksumServer struct {
	*testServer
	mu   sync.Mutex
	sums [][32]byte
	lens []int
}

func newChecksumServer(t *testing.T, useTLS bool, statuses ...int) (*checksumServer, []Option) {
	cs := &checksumServer{}
	next := script(statuses...)
	var opts []Option
	cs.testServer, opts = newServer(t, useTLS, func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		cs.mu.Lock()
		cs.sums = append(cs.sums, sha256.Sum256(b))
		cs.lens = append(cs.lens, len(b))
		cs.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(nil))
		next(w, r)
	})
	return cs, opts
}

// onceReader hides bytes.Reader so http.NewRequest sets no GetBody.
type onceReader struct{ r io.Reader }

func (o *onceReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func TestBodies(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	want := sha256.Sum256(payload)
	protos(t, func(t *testing.T, useTLS bool) {
		t.Run("a body with GetBody is replayed byte-identical", func(t *testing.T) {
			cs, opts := newChecksumServer(t, useTLS, 503, 500, 200)
			c, _ := newTestClient(t, append(opts, fastRetries)...)
			req, err := http.NewRequest("PUT", cs.URL, bytes.NewReader(payload))
			require.NoError(t, err)
			resp, err := c.Do(req)
			require.NoError(t, err)
			assert.Equal(t, "attempt 3: 200", readBody(t, resp))
			require.Len(t, cs.sums, 3)
			for i, s := range cs.sums {
				assert.Equal(t, want, s, "attempt %d", i+1)
			}
		})
	})
	t.Run("a body without GetBody is sent once", func(t *testing.T) {
		cs, _ := newChecksumServer(t, false, 503, 200)
		c, _ := newTestClient(t, fastRetries)
		req, err := http.NewRequest("PUT", cs.URL, &onceReader{bytes.NewReader(payload)})
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode, "not retried: the body is gone")
		resp.Body.Close()
		assert.Equal(t, [][32]byte{want}, cs.sums)
	})
	t.Run("WithBodyBuffer replays a body that fits", func(t *testing.T) {
		cs, _ := newChecksumServer(t, false, 503, 200)
		c, _ := newTestClient(t, fastRetries, WithBodyBuffer(int64(len(payload))))
		req, err := http.NewRequest("PUT", cs.URL, &onceReader{bytes.NewReader(payload)})
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		assert.Equal(t, 200, resp.StatusCode)
		resp.Body.Close()
		assert.Equal(t, [][32]byte{want, want}, cs.sums)
		assert.Nil(t, req.GetBody, "the caller's request is not modified")
	})
	t.Run("WithBodyBuffer streams a body that does not fit, once and whole", func(t *testing.T) {
		cs, _ := newChecksumServer(t, false, 503, 200)
		c, _ := newTestClient(t, fastRetries, WithBodyBuffer(1000))
		req, err := http.NewRequest("PUT", cs.URL, &onceReader{bytes.NewReader(payload)})
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode)
		resp.Body.Close()
		assert.Equal(t, [][32]byte{want}, cs.sums)
	})
}

func TestDiscardedResponses(t *testing.T) {
	t.Run("a small body is drained so the connection is reused", func(t *testing.T) {
		srv, _ := newServer(t, false, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(503)
			_, _ = w.Write(bytes.Repeat([]byte("x"), 8<<10))
		})
		c, tr := newTestClient(t, fastRetries, WithMaxRetries(3))
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		resp.Body.Close()
		assert.EqualValues(t, 4, srv.reqs.Load())
		assert.EqualValues(t, 1, srv.conns.Load())
		assert.EqualValues(t, 1, tr.Stats().Dials)
	})
	t.Run("a large body is closed unread", func(t *testing.T) {
		var sent atomic.Int64
		srv, _ := newServer(t, false, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(64<<20))
			w.WriteHeader(503)
			chunk := make([]byte, 32<<10)
			for range (64 << 20) / len(chunk) {
				n, err := w.Write(chunk)
				sent.Add(int64(n))
				if err != nil {
					return
				}
			}
		})
		c, _ := newTestClient(t, fastRetries, WithMaxRetries(2))
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		resp.Body.Close() // the last one, unread too
		assert.EqualValues(t, 3, srv.conns.Load(), "a connection per attempt: none was drained")
		srv.Close() // waits for the handlers: sent is final
		assert.Less(t, sent.Load(), int64(3*16<<20), "the client stopped reading early")
	})
	t.Run("a failure does not flush the pool", func(t *testing.T) {
		const n = 6
		round := newBarrier(n)
		srv, _ := newServer(t, false, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/fail" {
				w.WriteHeader(503)
				return
			}
			round.wait(r.Context()) // n requests at once: n connections, no fewer
		})
		c, tr := newTestClient(t, fastRetries)
		fetchConcurrently := func() {
			var wg sync.WaitGroup
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := c.Get(srv.URL + "/ok")
					if assert.NoError(t, err) {
						resp.Body.Close()
					}
				}()
			}
			wg.Wait()
		}
		fetchConcurrently()
		require.EqualValues(t, n, srv.conns.Load())
		resp, err := c.Get(srv.URL + "/fail")
		require.NoError(t, err)
		resp.Body.Close()
		assert.EqualValues(t, 4, srv.reqs.Load()-n, "the failing request was retried")
		fetchConcurrently()
		assert.EqualValues(t, n, srv.conns.Load(), "the idle connections survived the failure")
		assert.EqualValues(t, n, tr.Stats().Dials)
	})
}

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

func TestBackoffIsJitteredAndBounded(t *testing.T) {
	p := policy{initial: 100 * time.Millisecond, max: 400 * time.Millisecond}
	b := p.newBackoff()
	var waits []time.Duration
	for range 6 {
		waits = append(waits, p.backoffWait(b))
	}
	intervals := []time.Duration{100, 200, 400, 400, 400, 400}
	for i, w := range waits {
		base := intervals[i] * time.Millisecond
		assert.GreaterOrEqual(t, w, base/2, "wait %d", i)
		assert.LessOrEqual(t, w, min(base*3/2, p.max), "wait %d", i)
	}
	// Jitter: 200 draws of the first wait are not all the same.
	seen := map[time.Duration]bool{}
	for range 200 {
		seen[p.backoffWait(p.newBackoff())] = true
	}
	assert.Greater(t, len(seen), 10)
}

func TestRetryAfter(t *testing.T) {
	retryAfter := func(v string) http.HandlerFunc {
		var n atomic.Int64
		return func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) == 1 {
				w.Header().Set("Retry-After", v)
				w.WriteHeader(503)
				return
			}
			fmt.Fprint(w, "ok")
		}
	}
	t.Run("the client waits as asked", func(t *testing.T) {
		srv, _ := newServer(t, false, retryAfter("1"))
		c, _ := newTestClient(t, fastRetries)
		start := time.Now()
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, "ok", readBody(t, resp))
		assert.GreaterOrEqual(t, time.Since(start), time.Second)
	})
	t.Run("an HTTP-date is honoured", func(t *testing.T) {
		srv, _ := newServer(t, false, retryAfter(time.Now().Add(2*time.Second).UTC().Format(http.TimeFormat)))
		c, _ := newTestClient(t, fastRetries)
		start := time.Now()
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, "ok", readBody(t, resp))
		assert.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond) // the date has second precision
	})
	t.Run("garbage falls back to backoff", func(t *testing.T) {
		srv, _ := newServer(t, false, retryAfter("tomorrow-ish"))
		c, _ := newTestClient(t, fastRetries)
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, "ok", readBody(t, resp))
	})
	t.Run("past the cap the response is returned at once", func(t *testing.T) {
		srv, _ := newServer(t, false, retryAfter("3600"))
		c, tr := newTestClient(t, fastRetries)
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode)
		assert.Equal(t, "3600", resp.Header.Get("Retry-After"))
		resp.Body.Close()
		assert.EqualValues(t, 1, tr.Stats().Attempts)
		assert.EqualValues(t, 1, tr.Stats().GaveUp)
	})
	t.Run("past the context deadline the response is returned at once", func(t *testing.T) {
		srv, _ := newServer(t, false, retryAfter("20"))
		c, tr := newTestClient(t, fastRetries)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode)
		resp.Body.Close()
		assert.EqualValues(t, 1, tr.Stats().Attempts)
		assert.NoError(t, ctx.Err(), "returned well before the deadline")
	})
	t.Run("a cap of zero returns any Retry-After at once", func(t *testing.T) {
		srv, _ := newServer(t, false, retryAfter("1"))
		c, tr := newTestClient(t, fastRetries, WithMaxRetryAfter(0))
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode)
		resp.Body.Close()
		assert.EqualValues(t, 1, tr.Stats().Attempts)
	})
}

func TestCancelDuringBackoffReturnsAtOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, _ := newServer(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(503)
	})
	// The client logs the decision to retry before it waits: cancel there.
	logger := slog.New(&hookHandler{onRecord: func(r slog.Record) {
		if r.Message == "keepalive: retrying" {
			cancel()
		}
	}})
	c, tr := newTestClient(t, WithBackoff(time.Hour, time.Hour), WithLogger(logger))
	req, err := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := c.Do(req)
		done <- err
	}()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
		var re *RetryError
		require.ErrorAs(t, err, &re)
		assert.Equal(t, 503, re.Status)
	case <-time.After(30 * time.Second): // a bound on a hang, not a timing
		t.Fatal("the wait for an hour-long backoff ignored the cancel")
	}
	assert.EqualValues(t, 1, tr.Stats().Attempts)
}

// hookHandler is a slog.Handler that keeps every record and calls onRecord.
type hookHandler struct {
	mu       sync.Mutex
	records  []slog.Record
	onRecord func(slog.Record)
}

func (h *hookHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *hookHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.records = append(h.records, r.Clone())
	h.mu.Unlock()
	if h.onRecord != nil {
		h.onRecord(r)
	}
	return nil
}
func (h *hookHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *hookHandler) WithGroup(string) slog.Handler      { return h }

func (h *hookHandler) text() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for _, r := range h.records {
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			return true
		})
		b.WriteByte('\n')
	}
	return b.String()
}

func TestLogsAndErrorsCarryNoCredentials(t *testing.T) {
	const (
		password = "hunter2-secret"
		token    = "tok-5f3a9c"
		bearer   = "Bearer abc.def.ghi"
		cookie   = "session=9b8c7d"
	)
	s, _ := hangUpServer(t)
	h := &hookHandler{}
	c, tr := newTestClient(t, fastRetries, WithLogger(slog.New(h)))
	u, err := url.Parse(s.URL())
	require.NoError(t, err)
	u.User = url.UserPassword("alice", password)
	u.RawQuery = "access_token=" + token
	req, err := http.NewRequest("GET", u.String(), nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", bearer)
	req.Header.Set("Proxy-Authorization", bearer)
	req.Header.Set("Cookie", cookie)
	_, err = tr.RoundTrip(req)
	require.Error(t, err)
	logs := h.text()
	require.Contains(t, logs, "keepalive: retrying", "there were logs to check")
	for _, secret := range []string{password, token, bearer, cookie, "alice"} {
		assert.NotContains(t, logs, secret)
		assert.NotContains(t, err.Error(), secret)
	}
	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Contains(t, re.URL, "access_token=xxxxx")

	// Through http.Client, its *url.Error quotes the URL with the password
	// masked (net/http's own redaction, which keeps the user name and the
	// query); the RetryError inside is redacted as above.
	_, err = c.Do(req)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), password)
	require.ErrorAs(t, err, &re)
	assert.NotContains(t, re.Error(), token)
}

func TestWithCheckRetry(t *testing.T) {
	t.Run("a retryablehttp policy decides", func(t *testing.T) {
		// DefaultRetryPolicy does not retry 501; ours would.
		srv, _ := newServer(t, false, script(501, 200))
		c, _ := newTestClient(t, fastRetries, WithCheckRetry(retryablehttp.DefaultRetryPolicy))
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, 501, resp.StatusCode)
		resp.Body.Close()
	})
	t.Run("the policy sees transport errors as url.Error", func(t *testing.T) {
		s, reqs := hangUpServer(t)
		var seen atomic.Value
		c, _ := newTestClient(t, fastRetries, WithMaxRetries(1), WithCheckRetry(
			func(ctx context.Context, resp *http.Response, err error) (bool, error) {
				seen.Store(err)
				return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
			}))
		_, err := c.Get(s.URL())
		require.Error(t, err)
		assert.EqualValues(t, 2, reqs.Load())
		var ue *url.Error
		assert.ErrorAs(t, seen.Load().(error), &ue)
	})
	t.Run("a policy error is returned and the response closed", func(t *testing.T) {
		srv, _ := newServer(t, false, script(418))
		errTeapot := errors.New("no teapots")
		c, _ := newTestClient(t, WithCheckRetry(func(_ context.Context, resp *http.Response, err error) (bool, error) {
			if resp != nil && resp.StatusCode == 418 {
				return false, errTeapot
			}
			return false, nil
		}))
		_, err := c.Get(srv.URL)
		require.ErrorIs(t, err, errTeapot)
	})
	t.Run("the policy cannot make a POST without a key retry", func(t *testing.T) {
		srv, _ := newServer(t, false, script(503, 200))
		c, _ := newTestClient(t, fastRetries, WithCheckRetry(retryablehttp.DefaultRetryPolicy))
		resp, err := c.Post(srv.URL, "text/plain", strings.NewReader("x"))
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode)
		resp.Body.Close()
		assert.EqualValues(t, 1, srv.reqs.Load())
	})
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ give, want string }{
		{"http://h/p", "http://h/p"},
		{"https://user:pw@h:8443/p?a=1&b=2#frag", "https://xxxxx:xxxxx@h:8443/p?a=xxxxx&b=xxxxx"},
		{"https://token@h/p", "https://xxxxx@h/p"},
		{"http://h/p?%zz", "http://h/p?xxxxx"},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.give)
		require.NoError(t, err)
		assert.Equal(t, tt.want, redactURL(u))
	}
	assert.Empty(t, redactURL(nil))
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

func TestRetryAfterOnlyOn429And503(t *testing.T) {
	for _, code := range []int{429, 503, 500} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			var n atomic.Int64
			srv, _ := newServer(t, false, func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) == 1 {
					w.Header().Set("Retry-After", "3600")
					w.WriteHeader(code)
				}
			})
			c, tr := newTestClient(t, fastRetries)
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			resp.Body.Close()
			if code == 500 { // Retry-After means nothing here: the backoff applies
				assert.Equal(t, 200, resp.StatusCode)
				assert.EqualValues(t, 2, tr.Stats().Attempts)
				return
			}
			assert.Equal(t, code, resp.StatusCode, "an hour is past the cap: returned at once")
			assert.EqualValues(t, 1, tr.Stats().Attempts)
		})
	}
}
