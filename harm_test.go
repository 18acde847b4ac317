package keepalive

// The tests of this file hold the default Transport to its first promise:
// with traffic its on-by-default features were not built for (a streamed
// upload, Expect: 100-continue, a 101 upgrade, a CONNECT proxy, a name in
// Unicode, a body read late, a host that hangs, per-credential quotas, a
// server restarting), it does no worse than a bare http.Transport. Each
// scenario runs both, and logs them side by side.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
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

// harmClients runs f with keepalive's client (default options plus opts)
// and with a bare http.Transport tuned the same way, as parallel subtests,
// and logs what each returned, side by side. f must not share a server
// between the two: each meets its own.
func harmClients(t *testing.T, scenario string, f func(t *testing.T, c *http.Client, keep bool) string, opts ...Option) {
	t.Helper()
	var mu sync.Mutex
	lines := map[bool]string{}
	t.Cleanup(func() { // once both subtests are done
		mu.Lock()
		defer mu.Unlock()
		t.Logf("%s\n\t%s\n\t%s", scenario, lines[true], lines[false])
	})
	for _, keep := range []bool{true, false} {
		name := map[bool]string{true: "keepalive", false: "bare http.Transport"}[keep]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var c *http.Client
			if keep {
				c, _ = newTestClient(t, opts...)
			} else {
				c = &http.Client{Transport: cbBare(t, defaultReadTimeout)}
			}
			line := fmt.Sprintf("%s: %s", name, f(t, c, keep))
			mu.Lock()
			lines[keep] = line
			mu.Unlock()
		})
	}
}

// transportOf returns the *Transport of c, or nil for the bare one.
func transportOf(c *http.Client) *Transport {
	tr, _ := c.Transport.(*Transport)
	return tr
}

// announcingServer answers every request with "Keep-Alive: timeout=1",
// which teaches keepalive a 1 s idle timeout, but never closes an idle
// connection itself: a connection refused for its idle age is refused for
// the announcement alone. /warm waits until warm requests are in flight
// at once, so that the pool holds that many connections.
type announcingServer struct {
	*keepalivetest.Server
	bodies chan string // the bodies of /upload, whole
}

func newAnnouncingServer(t *testing.T, warm int) *announcingServer {
	s := &announcingServer{bodies: make(chan string, 16)}
	round := newBarrier(warm)
	s.Server = keepalivetest.NewServer(t, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/warm":
			round.wait(r.Context())
		case "/upload":
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			s.bodies <- string(b)
		}
	}).Header("Keep-Alive", "timeout=1"))
	return s
}

// warm sends n concurrent GETs to /warm, which the server answers once all
// n are in flight: the pool then holds n idle connections.
func (s *announcingServer) warm(t *testing.T, c *http.Client, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			resp, err := c.Get(s.URL + "/warm")
			if assert.NoError(t, err) {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
}

// A (issue 15): a body net/http cannot rewind (a pipe, a multipart stream)
// sent after a quiet period past the learned idle timeout, with more stale
// connections in the pool than any fixed number of resends: each refuses
// the write before a byte, and the upload still goes out, once.
func TestHarmStreamedUploadAfterQuiet(t *testing.T) {
	t.Parallel() // sleeps through a quiet period; no server here closes on its own
	const stale = 6
	harmClients(t, "A. a streamed upload after a quiet period, 6 stale connections in the pool", func(t *testing.T, c *http.Client, keep bool) string {
		srv := newAnnouncingServer(t, stale)
		srv.warm(t, c, stale)
		waitOut(900 * time.Millisecond) // the quiet period: past the announced 1 s less the margin

		pr, pw := io.Pipe()
		go func() {
			io.WriteString(pw, "streamed upload")
			pw.Close()
		}()
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/upload", pr)
		require.NoError(t, err)
		require.Nil(t, req.GetBody, "a body net/http cannot rewind")
		resp, err := c.Do(req)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "streamed upload", <-srv.bodies)
		assert.Len(t, srv.bodies, 0, "the body was received once")
		if tr := transportOf(c); tr != nil {
			assert.EqualValues(t, stale, tr.Stats().ConnsRetiredIdle, "every stale connection refused the write")
			return fmt.Sprintf("200, body received once, %d stale connections retired", tr.Stats().ConnsRetiredIdle)
		}
		return "200, body received once"
	})
}

// B (issue 15): an Expect: 100-continue POST whose body comes after the
// learned idle timeout: net/http writes the head, reads the 100 Continue,
// then writes the body. Only a request's first write on a connection back
// from the pool is checked, so the body is written, and the POST reaches
// the server once.
func TestHarmExpectContinueSlowBody(t *testing.T) {
	t.Parallel() // waits for a slow body; no server here closes on its own
	harmClients(t, "B. Expect: 100-continue with a body that starts 1 s after the 100", func(t *testing.T, c *http.Client, keep bool) string {
		srv := newAnnouncingServer(t, 1)
		srv.warm(t, c, 1) // a connection in the pool; keepalive learns the 1 s timeout
		const payload = "a body that comes late"
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/upload", newSlowBody(time.Second, strings.NewReader(payload)))
		require.NoError(t, err)
		req.GetBody = func() (io.ReadCloser, error) {
			return io.NopCloser(newSlowBody(time.Second, strings.NewReader(payload))), nil
		}
		req.ContentLength = int64(len(payload))
		req.Header.Set("Expect", "100-continue")
		before := srv.Requests()
		resp, err := c.Do(req)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, payload, <-srv.bodies)
		arrivals := srv.Requests() - before
		assert.EqualValues(t, 1, arrivals, "the POST's head reached the server once")
		return fmt.Sprintf("200, %d arrival", arrivals)
	})
}

// C (issue 15): a connection that switched protocols (a WebSocket) is the
// caller's: a quiet period past the host's learned idle timeout, or data
// the peer sent that the caller has not read yet, never refuses its
// writes, with idle learning on or off.
func TestHarmUpgradedConnection(t *testing.T) {
	t.Parallel() // sleeps through a quiet period; no server here closes on its own
	t.Run("quiet past the learned timeout", func(t *testing.T) {
		t.Parallel()
		harmClients(t, "C. a 101 upgrade, quiet for 1 s on a host with a learned 1 s timeout", func(t *testing.T, c *http.Client, keep bool) string {
			srv := upgradeServer(t, nil, nil)
			resp, err := c.Get(srv.URL) // keepalive learns the 1 s timeout; the connection goes to the pool
			require.NoError(t, err)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			rw := upgrade(t, c, srv.URL) // on the pooled connection
			got, err := echo(rw, "ping")
			require.NoError(t, err)
			require.Equal(t, "ping", got)
			waitOut(time.Second) // quiet, past the learned timeout
			got, err = echo(rw, "pong")
			require.NoError(t, err, "a write after a quiet period")
			assert.Equal(t, "pong", got)
			return "both messages echoed"
		})
	})
	for _, learn := range []bool{true, false} {
		t.Run(fmt.Sprintf("unread data from the peer, learning %v", learn), func(t *testing.T) {
			t.Parallel()
			var opts []Option
			if !learn {
				opts = append(opts, WithoutIdleLearning())
			}
			harmClients(t, "C. a 101 upgrade whose server greets first; the caller writes before reading", func(t *testing.T, c *http.Client, keep bool) string {
				greet, greeted := make(chan struct{}), make(chan struct{})
				srv := upgradeServer(t, greet, greeted)
				resp, err := c.Get(srv.URL)
				require.NoError(t, err)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				rw := upgrade(t, c, srv.URL)
				close(greet) // the greeting comes after the 101 was read: it waits in the socket
				<-greeted
				waitOut(100 * time.Millisecond) // past the 50 ms after which a pooled connection is checked
				_, err = io.WriteString(rw, "ping")
				require.NoError(t, err, "a write with the greeting unread")
				buf := make([]byte, 8)
				_, err = io.ReadFull(rw, buf)
				require.NoError(t, err)
				assert.Equal(t, "heloping", string(buf))
				return "greeting and echo read"
			}, opts...)
		})
	}
}

// postsAfterQuiet sends n unkeyed POSTs to url, each after a quiet period
// of quiet, and returns how many failed.
func postsAfterQuiet(t *testing.T, c *http.Client, url string, n int, quiet time.Duration) int {
	t.Helper()
	failed := 0
	for i := range n {
		if i > 0 {
			waitOut(quiet)
		}
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader("post "+strconv.Itoa(i)))
		require.NoError(t, err)
		resp, err := c.Do(req)
		if err != nil {
			failed++
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return failed
}

// D (issue 15): behind a CONNECT proxy, and for a name in Unicode, every
// connection is judged by the idle timeout of the server at its far end
// (the target, through the tunnel), from its own TLS handshake, and the
// host has one key: no unkeyed POST is lost to an idle close it could have
// seen coming.
func TestHarmProxyAndIDN(t *testing.T) {
	t.Parallel() // sleeps through quiet periods; no server here closes on its own
	const posts = 6
	t.Run("CONNECT proxy", func(t *testing.T) {
		t.Parallel()
		// For each client an HTTPS server, HTTP/1.1 alone, that drops what
		// arrives on a connection idle for 800 ms and announces a 1 s
		// timeout, but never closes an idle connection itself, and a proxy.
		type target struct {
			srv     *idleServer
			proxy   *url.URL
			tunnels *atomic.Int64
		}
		targets := map[bool]target{}
		for _, keep := range []bool{true, false} {
			proxy, tunnels := connectProxy(t)
			targets[keep] = target{newIdleServer(t, https1, 800*time.Millisecond, 0, "timeout=1"), mustParseURL(t, proxy.URL), tunnels}
		}
		ka := targets[true]
		harmClients(t, "D. 6 unkeyed POSTs through a CONNECT proxy, each after 850 ms quiet, to a server that drops what arrives after 800 ms idle", func(t *testing.T, c *http.Client, keep bool) string {
			tg := targets[keep]
			if !keep {
				bare := c.Transport.(*http.Transport)
				bare.Proxy = http.ProxyURL(tg.proxy)
				bare.TLSClientConfig = tg.srv.TLSConfig()
			}
			failed := postsAfterQuiet(t, c, tg.srv.URL, posts, 850*time.Millisecond)
			if keep {
				assert.Zero(t, failed, "POSTs lost")
				assert.Zero(t, tg.srv.dropped())
				tr := transportOf(c)
				assert.Positive(t, tr.Stats().ConnsRetiredIdle)
				assert.Len(t, tr.HostStats(), 1, "the target's key alone")
			}
			return fmt.Sprintf("%d of %d POSTs lost (%d tunnels)", failed, posts, tg.tunnels.Load())
		}, WithProxy(http.ProxyURL(ka.proxy)), WithTLSConfig(ka.srv.TLSConfig()))
	})
	t.Run("a name in Unicode", func(t *testing.T) {
		t.Parallel()
		// For each client a server as above, which every name dials.
		type target struct {
			port string
			dial func(ctx context.Context, network, addr string) (net.Conn, error)
		}
		targets := map[bool]target{}
		for _, keep := range []bool{true, false} {
			addr := hostOf(t, newIdleServer(t, https1, 800*time.Millisecond, 0, "timeout=1").URL)
			_, port, _ := net.SplitHostPort(addr)
			targets[keep] = target{port, func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			}}
		}
		// The test certificate names no Unicode host. Each client gets a
		// configuration of its own: net/http writes to the one it is given.
		tlsConf := func() *tls.Config { return &tls.Config{InsecureSkipVerify: true} }
		harmClients(t, "D. 6 unkeyed POSTs to https://bücher.test, each after 850 ms quiet, to a server that drops what arrives after 800 ms idle", func(t *testing.T, c *http.Client, keep bool) string {
			tg := targets[keep]
			if !keep {
				bare := c.Transport.(*http.Transport)
				bare.DialContext = tg.dial
				bare.TLSClientConfig = tlsConf()
			}
			failed := postsAfterQuiet(t, c, "https://bücher.test:"+tg.port+"/", posts, 850*time.Millisecond)
			if keep {
				assert.Zero(t, failed, "POSTs lost")
				tr := transportOf(c)
				assert.Equal(t, []string{"bücher.test:" + tg.port}, keysOf(tr.HostStats()), "one key for the host")
				st := tr.Stats()
				assert.Positive(t, st.ConnsRetiredIdle)
				assert.EqualValues(t, st.Dials, tr.HostStats()["bücher.test:"+tg.port].Dials, "its dials counted under its key")
			}
			return fmt.Sprintf("%d of %d POSTs lost", failed, posts)
		}, WithDialContext(targets[true].dial), WithTLSConfig(tlsConf()))
	})
}

func keysOf[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}

// E (issue 15): a response body read 600 ms after its headers arrived
// (a handler that decodes later), then an unkeyed POST 350 ms later: 350
// ms idle as the client's reads go, 950 ms as the server counts. The idle
// age is counted from when the response arrived, not from the late read.
func TestHarmLateBodyRead(t *testing.T) {
	t.Parallel() // sleeps through quiet periods; no server here closes on its own
	const rounds = 5
	harmClients(t, "E. a GET body read 600 ms late, then an unkeyed POST 350 ms later, against a server that drops what arrives after 900 ms idle", func(t *testing.T, c *http.Client, keep bool) string {
		srv := newIdleServer(t, http1, 900*time.Millisecond, 0, "timeout=1")
		srv.getBody = 64 << 10 // arrives whole in the socket's buffer before the caller reads it
		failed := 0
		for i := range rounds {
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			waitOut(600 * time.Millisecond) // the caller reads the body late
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			require.Len(t, b, srv.getBody)
			waitOut(350 * time.Millisecond)
			if idlePost(t, c, srv.URL, strconv.Itoa(i)) != nil {
				failed++
			}
		}
		if keep {
			assert.Zero(t, failed, "POSTs lost")
			assert.Zero(t, srv.dropped())
		}
		return fmt.Sprintf("%d of %d POSTs lost", failed, rounds)
	})
}

// F (issue 15): a WebSocket handshake to an HTTP/2 host goes over HTTP/1.1
// (net/http asks for it alone), and that does not make the host, or its
// HTTP/2 connection, HTTP/1: a burst still shares one HTTP/2 connection,
// and a stream on it survives a quiet period past an HTTP/1 idle timeout.
func TestHarmUpgradeOnHTTP2Host(t *testing.T) {
	// Not parallel: that the burst shares one connection rests on the dial
	// gate's wait for the first connection, which a loaded machine can
	// outlast.
	srv, tlsOpt := newServer(t, http2, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get("Upgrade") == "websocket":
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			io.Copy(io.Discard, brw) // until the client closes
			conn.Close()
		case r.URL.Path == "/events": // a server-sent event stream, one event per request to /tick
			w.Header().Set("Content-Type", "text/event-stream")
			rc := http.NewResponseController(w)
			for i := 0; ; i++ {
				fmt.Fprintf(w, "data: %d\n\n", i)
				if rc.Flush() != nil {
					return
				}
				select {
				case <-r.Context().Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		default:
			io.WriteString(w, r.Proto)
		}
	}))
	c, tr := newTestClient(t, tlsOpt)

	req, err := http.NewRequest(http.MethodGet, srv.URL, nil)
	require.NoError(t, err)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	resp, err := c.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	defer resp.Body.Close()

	burst(t, c, srv.URL, 32)
	assert.Equal(t, 2, srv.Connections(), "TLS connections: the upgrade's, and one HTTP/2 for the burst")

	// As if the host had shown a 1 s idle timeout over HTTP/1.
	tr.hosts.forURL(req.URL).idle.set(int64(time.Second), monotonic())
	events, err := c.Get(srv.URL + "/events")
	require.NoError(t, err)
	defer events.Body.Close()
	require.Equal(t, 2, events.ProtoMajor)
	lines := bufio.NewReader(events.Body)
	waitOut(time.Second) // quiet for the client, past the HTTP/1 timeout
	resp, err = c.Get(srv.URL)
	require.NoError(t, err, "a request on the HTTP/2 connection")
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for range 4 { // the stream lives on
		_, err := lines.ReadString('\n')
		require.NoError(t, err)
	}
	assert.Equal(t, 2, srv.Connections())
	assert.Zero(t, tr.Stats().ConnsRetiredIdle)
}

// G (issue 15): N concurrent requests to an https host whose TLS handshake
// hangs fail in about one handshake timeout, not one after another: the
// requests waiting for the dial gate's one dial fail with it.
func TestHarmHangingHTTPSHost(t *testing.T) {
	const n = 8
	const timeout = 500 * time.Millisecond
	harmClients(t, "G. 8 concurrent GETs to an https host whose TLS handshake hangs (handshake timeout 500 ms)", func(t *testing.T, c *http.Client, keep bool) string {
		srv := newFaultServer(t, func(fc *faultConn) { fc.waitClosed() }) // accepts, never answers: a TLS handshake hangs
		addr, accepted := srv.addr, &srv.accepted
		if !keep {
			c.Transport.(*http.Transport).TLSHandshakeTimeout = timeout
		}
		var wg sync.WaitGroup
		took := make([]time.Duration, n)
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				start := time.Now()
				resp, err := c.Get("https://" + addr + "/")
				if err == nil {
					resp.Body.Close()
				}
				took[i], errs[i] = time.Since(start), err
			})
		}
		wg.Wait()
		slowest := time.Duration(0)
		for i := range n {
			require.Error(t, errs[i])
			slowest = max(slowest, took[i])
		}
		if keep {
			assert.EqualValues(t, 1, accepted.Load(), "connections the server saw: the gate's one dial")
			assert.Less(t, slowest, 4*timeout, "the slowest request")
			var sde *serialDialError
			found := 0
			for _, err := range errs {
				if errors.As(err, &sde) {
					found++
				}
			}
			assert.Equal(t, n-1, found, "the requests that waited fail with the dial they waited for")
		}
		return fmt.Sprintf("all %d failed, the slowest after %v; the server saw %d connections", n, slowest.Round(time.Millisecond), accepted.Load())
	}, WithMaxRetries(0), WithTLSHandshakeTimeout(timeout))
}

// H (issue 15): rate limits are kept per credential. One tenant's 429
// pauses that tenant's requests, not another's; a 503 with Retry-After, an
// overloaded server, still pauses the host; WithRateLimitKey names the key.
func TestHarmRateLimitPerCredential(t *testing.T) {
	srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/overloaded":
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(http.StatusServiceUnavailable)
		case r.Header.Get("Authorization") == "Bearer tenant-a" || r.Header.Get("X-Api-Key") == "a":
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	// send sends a GET with hdr, with a deadline shorter than any pause.
	send := func(c *http.Client, path string, hdr ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
		require.NoError(t, err)
		for i := 0; i < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil
	}
	t.Run("Authorization", func(t *testing.T) {
		c, tr := newTestClient(t, WithMaxRetries(0))
		require.NoError(t, send(c, "/", "Authorization", "Bearer tenant-a")) // the 429, returned
		require.NoError(t, send(c, "/", "Authorization", "Bearer tenant-b"), "another tenant is not held")
		require.NoError(t, send(c, "/"), "nor a request without credentials")
		assert.ErrorIs(t, send(c, "/", "Authorization", "Bearer tenant-a"), ErrHostPaused, "the tenant that ran out waits")
		st := tr.Stats()
		assert.EqualValues(t, 1, st.Pauses)
		assert.EqualValues(t, 1, st.PauseWaits)
	})
	t.Run("a 503 pauses the host", func(t *testing.T) {
		c, _ := newTestClient(t, WithMaxRetries(0))
		require.NoError(t, send(c, "/overloaded", "Authorization", "Bearer tenant-b"))
		assert.ErrorIs(t, send(c, "/", "Authorization", "Bearer tenant-c"), ErrHostPaused)
	})
	t.Run("WithRateLimitKey", func(t *testing.T) {
		c, _ := newTestClient(t, WithMaxRetries(0), WithRateLimitKey(func(r *http.Request) string { return r.Header.Get("X-Api-Key") }))
		require.NoError(t, send(c, "/", "X-Api-Key", "a", "Authorization", "Bearer shared"))
		require.NoError(t, send(c, "/", "X-Api-Key", "b", "Authorization", "Bearer shared"))
		assert.ErrorIs(t, send(c, "/", "X-Api-Key", "a"), ErrHostPaused)
	})
}

// I (issue 15): past HostStatsLimit, hosts share a state; one dead host
// among them must not spend the retries of the others.
func TestHarmOverflowHostsKeepTheirRetries(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Host]++
		n := seen[r.Host]
		mu.Unlock()
		if strings.HasPrefix(r.Host, "dead.") || n == 1 { // the dead host fails everything, the others once
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	addr := hostOf(t, srv.URL)
	c, tr := newTestClient(t, WithBackoff(0, 0), WithDialContext(func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}))
	for i := range HostStatsLimit { // fill the table
		tr.hosts.forURL(mustParseURL(t, "http://known"+strconv.Itoa(i)+".test/"))
	}
	get := func(host string) int {
		resp, err := c.Get("http://" + host + "/")
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for range 200 { // 600 retries: six times the budget's floor per window
		require.Equal(t, http.StatusServiceUnavailable, get("dead.test"))
	}
	for i := range 50 {
		assert.Equal(t, http.StatusOK, get("other"+strconv.Itoa(i)+".test"), "a transient 503 is retried")
	}
	assert.Zero(t, tr.HostStats()[OtherHosts].BudgetRefusals)
}

// J (issue 15): closes that are not idle timeouts are not learned: a
// server that closes every connection at once (a graceful restart), at
// scattered idle ages, and responses cut off mid-body, leave connections
// reused as before.
func TestHarmRestartAndCutStreamsNotLearned(t *testing.T) {
	t.Parallel() // sleeps through quiet periods; the servers close only when told
	t.Run("a graceful restart", func(t *testing.T) {
		t.Parallel()
		const conns = 8
		var (
			mu      sync.Mutex
			open    []net.Conn
			arrived int
		)
		release := make(chan struct{})
		srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
			if r.URL.Path == "/warm" {
				mu.Lock()
				open = append(open, fc.Conn)
				i := arrived
				if arrived++; arrived == conns {
					close(release)
				}
				mu.Unlock()
				<-release
				// Answer the i-th after i x 100 ms: the connections go idle
				// 100 ms apart, so the restart finds them at ages 100 ms apart.
				select {
				case <-time.After(time.Duration(i) * 100 * time.Millisecond):
				case <-fc.srv.done:
					return false
				}
			}
			return faultOK(fc, r)
		}))
		c, tr := newTestClient(t)
		var wg sync.WaitGroup
		for range conns {
			wg.Go(func() {
				resp, err := c.Get(srv.url("/warm"))
				if assert.NoError(t, err) {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		}
		wg.Wait()
		waitOut(300 * time.Millisecond) // every connection idle for 300 ms or more
		mu.Lock()
		for _, c := range open { // the restart: every connection closed at once
			c.Close()
		}
		mu.Unlock()
		require.True(t, poll(5*time.Second, func() bool { return tr.Stats().IdleCloses == conns }), "the closes seen")
		dials := tr.Stats().Dials
		for range 5 { // requests 400 ms apart: longer than the shortest age the restart showed
			waitOut(400 * time.Millisecond)
			resp, err := c.Get(srv.url("/"))
			require.NoError(t, err)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		assert.EqualValues(t, 1, tr.Stats().Dials-dials, "the 5 requests share one new connection")
		assert.Zero(t, tr.Stats().ConnsRetiredIdle)
	})
	t.Run("responses cut off mid-body", func(t *testing.T) {
		t.Parallel()
		srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
			if r.URL.Path == "/cut" { // half the body, a pause, then the close
				fc.writeString("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf ")
				select {
				case <-time.After(300 * time.Millisecond):
				case <-fc.srv.done:
				}
				return false
			}
			return faultOK(fc, r)
		}))
		c, tr := newTestClient(t, WithMaxRetries(0))
		for range 2 {
			resp, err := c.Get(srv.url("/cut"))
			require.NoError(t, err)
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Error(t, err, "the body was cut off")
		}
		dials := tr.Stats().Dials
		for range 5 { // requests 200 ms apart: longer than the pause before each cut, less the margin
			waitOut(200 * time.Millisecond)
			resp, err := c.Get(srv.url("/"))
			require.NoError(t, err)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		assert.EqualValues(t, 1, tr.Stats().Dials-dials, "the 5 requests share one connection")
		assert.Zero(t, tr.Stats().ConnsRetiredIdle)
	})
}

// L (issue 15): a long announced timeout decays without overflowing: past
// every doubling that fits, there is no limit, never a negative one.
func TestIdleDecaySaturates(t *testing.T) {
	var h hostIdle
	h.learn = true
	t0 := int64(time.Hour)
	h.announce(86400*time.Second, t0) // the longest Keep-Alive: timeout=N the parser accepts
	for m := int64(0); m <= 120; m++ {
		now := t0 + m*int64(time.Minute)
		assert.GreaterOrEqual(t, h.limit(now), int64(0), "%d minutes on", m)
	}
	assert.Zero(t, h.limit(t0+int64(30*time.Minute)), "past the doublings that fit: no limit")
}

// Closes are learned only once confirmed: a single close that would
// shorten the timeout waits for a second that agrees; a burst of closes
// at one moment whose ages agree confirms itself; one whose ages scatter
// teaches nothing.
func TestIdleLearningNeedsConfirmation(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	at := func(base int64, d time.Duration) int64 { return base + int64(d) }
	t0 := int64(time.Hour)
	later := func(d time.Duration) int64 { return at(t0, d) + int64(idleBurstWindow) + 1 }

	var h hostIdle
	h.learn = true
	h.closed(ms(1000), t0)
	assert.Zero(t, h.limit(later(0)), "one close: not yet")
	h.closed(ms(1050), at(t0, 5*time.Second))
	assert.Equal(t, int64(ms(1000)-idleMargin), h.limit(later(5*time.Second)), "a second close that agrees")
	h.closed(ms(300), at(t0, 10*time.Second))
	assert.Equal(t, int64(ms(1000)-idleMargin), h.limit(later(10*time.Second)), "a shorter close alone does not act")

	var burst hostIdle
	burst.learn = true
	burst.closed(ms(2000), t0)
	burst.closed(ms(2010), at(t0, ms(1)))
	assert.Equal(t, int64(ms(2000)-idleMargin), burst.limit(at(t0, ms(2))), "two closes of one moment that agree: at once")
	for i := 2; i < 5; i++ {
		burst.closed(ms(2000+10*i), at(t0, ms(i)))
	}
	assert.Equal(t, int64(ms(2000)-idleMargin), burst.limit(later(ms(5))), "a burst that agrees")

	var undone hostIdle
	undone.learn = true
	undone.announce(5*time.Second, t0)
	undone.closed(ms(300), at(t0, ms(1)))
	undone.closed(ms(310), at(t0, ms(2)))
	assert.Equal(t, int64(ms(300)-ms(150)), undone.limit(at(t0, ms(3))), "two that agree, acted on")
	undone.closed(ms(4000), at(t0, ms(3)))
	assert.Equal(t, int64(5*time.Second-idleMargin), undone.limit(later(ms(3))), "a third that scatters the burst undoes it")

	var restart hostIdle
	restart.learn = true
	for i := range 5 {
		restart.closed(ms(300+500*i), at(t0, ms(i)))
	}
	assert.Zero(t, restart.limit(later(ms(5))), "a burst at scattered ages: a restart")
	restart.closed(ms(1000), at(t0, 10*time.Second))
	assert.Zero(t, restart.limit(later(10*time.Second)), "the restart left no candidate behind")
}

// The scheduling lag follows how late goroutines run: with the CPUs
// oversubscribed by busy goroutines, a goroutine woken by a timer waits
// to run, and the lag read afterwards covers that wait.
func TestSchedLagSeesOversubscription(t *testing.T) {
	var s schedLag
	s.get(int64(time.Hour)) // the first reading: everything so far
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				for i := 0; i < 1e5; i++ { // busy, without a call that yields
				}
			}
		})
	}
	for range 50 { // timer wake-ups, each runnable behind the busy goroutines
		<-time.After(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	lag := s.get(int64(time.Hour) + int64(schedLagEvery))
	t.Logf("scheduling lag: %v", lag)
	assert.Greater(t, lag, time.Duration(0))
	assert.Equal(t, lag, s.get(int64(time.Hour)+int64(schedLagEvery)+1), "read once per schedLagEvery")
}

// TLS sessions are resumed: connections that end after each response
// (the server closes them) are redialed with a resumed handshake, counted
// in Stats.
func TestTLSSessionsResumed(t *testing.T) {
	srv, tlsOpt := newServer(t, https1, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close") // every request on a new connection
		io.WriteString(w, "ok")
	}))
	c, tr := newTestClient(t, tlsOpt)
	const n = 10
	for range n {
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	st := tr.Stats()
	t.Logf("%d connections, %d TLS handshakes, %d resumed", srv.Connections(), st.TLSHandshakes, st.TLSResumed)
	assert.Equal(t, n, srv.Connections())
	assert.EqualValues(t, n, st.TLSHandshakes)
	assert.GreaterOrEqual(t, st.TLSResumed, int64(n-1)*9/10, "at least 90% of the redials resumed")
}
