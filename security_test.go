// This file holds the security scenarios: no secret of the caller's (URL
// password, Authorization, Proxy-Authorization, Cookie) in any log record
// or error, none carried across a redirect to another host, and no
// server-controlled input that makes the client wait past its bounds or
// read without limit.

package keepalive

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
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

func TestSecurityNoSecretInLogsOrErrors(t *testing.T) {
	const (
		password   = "pw-S3cr3t-0xDEADBEEF"
		authToken  = "authTOKEN-7f3a9c55"
		proxyPass  = "proxyPW-9911aa77"
		cookieVal  = "cookieVALUE-42abcd"
		queryToken = "queryTOKEN-5e5e5e"
	)
	secrets := []string{
		password, authToken, proxyPass, cookieVal,
		url.QueryEscape(password), url.QueryEscape(proxyPass),
		base64.StdEncoding.EncodeToString([]byte("user:" + password)),
		base64.StdEncoding.EncodeToString([]byte("puser:" + proxyPass)),
	}

	logs := captureLogs(slog.LevelDebug, false)
	var errs []string
	var seen struct {
		sync.Mutex
		auth, cookie, proxyAuth bool
	}
	// record notes which secrets reached a server, so the test knows they
	// were in play.
	record := func(r *faultRequest) {
		seen.Lock()
		defer seen.Unlock()
		seen.auth = seen.auth || r.Header.Get("Authorization") == "Bearer "+authToken
		seen.cookie = seen.cookie || strings.Contains(r.Header.Get("Cookie"), cookieVal)
		seen.proxyAuth = seen.proxyAuth || strings.Contains(r.Header.Get("Proxy-Authorization"),
			base64.StdEncoding.EncodeToString([]byte("puser:"+proxyPass)))
	}
	scenarios := []struct {
		name  string
		serve func(fc *faultConn, r *faultRequest) bool
		opts  []Option
		proxy bool
		ctx   time.Duration
	}{
		{name: "connection closed without an answer", serve: func(fc *faultConn, r *faultRequest) bool { return false }},
		{name: "503 until retries run out", serve: func(fc *faultConn, r *faultRequest) bool {
			return fc.reply(http.StatusServiceUnavailable, "busy") == nil
		}},
		{name: "Retry-After past the cap", serve: func(fc *faultConn, r *faultRequest) bool {
			return fc.reply(http.StatusServiceUnavailable, "busy", "Retry-After: 86400") == nil
		}},
		{name: "Retry-After past the context deadline", ctx: 2 * time.Second, serve: func(fc *faultConn, r *faultRequest) bool {
			return fc.reply(http.StatusTooManyRequests, "slow down", "Retry-After: 20") == nil
		}},
		{name: "stall past the read timeout", opts: []Option{WithReadTimeout(100 * time.Millisecond)},
			serve: func(fc *faultConn, r *faultRequest) bool { fc.waitClosed(); return false }},
		{name: "malformed status line", serve: func(fc *faultConn, r *faultRequest) bool {
			_ = fc.writeString("HTTP/1.1 xyz " + password + "\r\n\r\n")
			return false
		}},
		{name: "a proxy with credentials that hangs up", proxy: true, serve: func(fc *faultConn, r *faultRequest) bool { return false }},
		{name: "a proxy with credentials that answers 502", proxy: true, serve: func(fc *faultConn, r *faultRequest) bool {
			return fc.reply(http.StatusBadGateway, "upstream down") == nil
		}},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
				record(r)
				return sc.serve(fc, r)
			}))
			target := "http://user:" + url.QueryEscape(password) + "@" + srv.addr + "/path?token=" + queryToken
			opts := append([]Option{logs.option(), WithMaxRetries(2), WithBackoff(time.Millisecond, 2*time.Millisecond)}, sc.opts...)
			if sc.proxy {
				proxyURL := &url.URL{Scheme: "http", User: url.UserPassword("puser", proxyPass), Host: srv.addr}
				target = "http://user:" + url.QueryEscape(password) + "@upstream.invalid/path?token=" + queryToken
				opts = append(opts, WithProxy(http.ProxyURL(proxyURL)))
			} else {
				opts = append(opts, WithProxy(nil))
			}
			c, _ := newTestClient(t, opts...)
			ctx := context.Background()
			if sc.ctx > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, sc.ctx)
				defer cancel()
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+authToken)
			req.Header.Set("Cookie", cookieVal)
			resp, err := c.Do(req)
			if err != nil {
				errs = append(errs, err.Error(), fmt.Sprintf("%+v", err))
				return
			}
			resp.Body.Close()
		})
	}
	t.Run("a refused connection", func(t *testing.T) {
		srv := newFaultServer(t, faultServe(faultOK))
		srv.stopListening()
		c, _ := newTestClient(t, logs.option(), WithMaxRetries(2), WithBackoff(time.Millisecond, 2*time.Millisecond), WithProxy(nil))
		req, err := http.NewRequest(http.MethodPut, "http://user:"+url.QueryEscape(password)+"@"+srv.addr+"/", strings.NewReader("x"))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+authToken)
		_, err = c.Do(req)
		require.Error(t, err)
		errs = append(errs, err.Error(), fmt.Sprintf("%+v", err))
	})

	seen.Lock()
	assert.True(t, seen.auth && seen.cookie && seen.proxyAuth, "the secrets must have been sent to matter: auth %v cookie %v proxy %v",
		seen.auth, seen.cookie, seen.proxyAuth)
	seen.Unlock()
	logText := logs.String()
	require.Contains(t, logText, "keepalive: retrying", "the logger captured the retries")
	assert.GreaterOrEqual(t, len(errs), 10, "errors were captured")
	all := logText + "\n" + strings.Join(errs, "\n")
	for _, s := range secrets {
		assert.NotContains(t, all, s, "a secret leaked into a log record or an error")
	}
	assert.NotContains(t, logText, queryToken, "a query value leaked into a log record")
	if t.Failed() || testing.Verbose() {
		t.Logf("logs:\n%s\nerrors:\n%s", logText, strings.Join(errs, "\n"))
	}
}

func TestSecurityRedirectToAnotherHostDropsCredentials(t *testing.T) {
	type got struct{ auth, cookie string }
	landed := make(chan got, 1)
	dest := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		landed <- got{r.Header.Get("Authorization"), r.Header.Get("Cookie")}
	})
	port := hostOf(t, dest.URL)
	port = port[strings.LastIndex(port, ":")+1:]

	tests := []struct {
		name, to string
		wantKept bool
	}{
		// The contrast shows the check can fail: the same host keeps them.
		{name: "a redirect to the same host keeps them", to: "http://127.0.0.1:" + port + "/landing", wantKept: true},
		{name: "a redirect to another host drops them", to: "http://localhost:" + port + "/landing", wantKept: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from := handlerServer(t, http.RedirectHandler(tt.to, http.StatusFound).ServeHTTP)
			c, _ := newTestClient(t, WithProxy(nil))
			req, err := http.NewRequest(http.MethodGet, from.URL+"/start", nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer redirect-secret")
			req.Header.Set("Cookie", "session=redirect-cookie")
			resp, err := c.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			g := <-landed
			if tt.wantKept {
				assert.Equal(t, got{"Bearer redirect-secret", "session=redirect-cookie"}, g)
			} else {
				assert.Equal(t, got{}, g)
			}
		})
	}
}

func TestSecurityServerCannotStretchWaitsOrMemory(t *testing.T) {
	opts := func(extra ...Option) []Option {
		return append([]Option{WithMaxRetries(1), WithBackoff(time.Millisecond, 2*time.Millisecond), WithProxy(nil)}, extra...)
	}

	t.Run("a Retry-After under the cap but past the context deadline returns at once", func(t *testing.T) {
		srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
			return fc.reply(http.StatusServiceUnavailable, "busy", "Retry-After: 25") == nil
		}))
		c, tr := newTestClient(t, opts()...)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.url("/"), nil)
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		assert.Equal(t, int64(1), tr.Stats().Attempts, "no attempt was planned past the deadline")
		require.NoError(t, ctx.Err(), "returned well before the deadline")
	})

	t.Run("a retryable answer whose body stalls is drained for a bounded time", func(t *testing.T) {
		srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
			if r.n > 1 {
				return faultOK(fc, r)
			}
			_ = fc.writeString("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000\r\n\r\nab")
			fc.waitClosed() // only the client's drain bound ends this
			return false
		}))
		c, tr := newTestClient(t, opts()...)
		start := time.Now()
		_, body, err := get(t, c, srv.url("/"))
		require.NoError(t, err)
		assert.True(t, strings.HasPrefix(body, "GET "))
		assert.Less(t, time.Since(start), 10*drainTimeout, "the drain gave up on the stalled body")
		assert.Equal(t, int64(1), tr.Stats().Retries)
	})

	t.Run("an endless chunked 503 body is not read to the end", func(t *testing.T) {
		var sent atomic.Int64
		firstDone := make(chan struct{})
		srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
			if r.n > 1 {
				return faultOK(fc, r)
			}
			defer close(firstDone)
			if fc.writeString("HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n") != nil {
				return false
			}
			chunk := []byte(fmt.Sprintf("%x\r\n%s\r\n", 32<<10, bytes.Repeat([]byte("z"), 32<<10)))
			for range 1 << 16 { // 2 GiB at most; the client's close ends it long before
				n, err := fc.Conn.Write(chunk)
				sent.Add(int64(n))
				if err != nil {
					return false
				}
			}
			return false
		}))
		c, _ := newTestClient(t, opts()...)
		_, _, err := get(t, c, srv.url("/"))
		require.NoError(t, err)
		<-firstDone
		t.Logf("server sent %d bytes of an endless body", sent.Load())
		assert.Less(t, sent.Load(), int64(16<<20))
	})

	t.Run("endless response headers are cut off by net/http's header limit", func(t *testing.T) {
		var sent atomic.Int64
		srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
			if fc.writeString("HTTP/1.1 200 OK\r\n") != nil {
				return false
			}
			line := []byte("X-Filler: " + strings.Repeat("h", 1000) + "\r\n")
			for range 1 << 17 { // 128 MiB at most
				n, err := fc.Conn.Write(line)
				sent.Add(int64(n))
				if err != nil {
					return false
				}
			}
			return false
		}))
		c, tr := newTestClient(t, opts()...)
		_, _, err := get(t, c, srv.url("/"))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "headers exceeded")
		srv.close() // wait for the writers to see the client's close
		t.Logf("server sent %d bytes of headers over %d attempts", sent.Load(), tr.Stats().Attempts)
		assert.Equal(t, int64(2), tr.Stats().Attempts)
		assert.Less(t, sent.Load(), int64(2*(10<<20+16<<20)), "each attempt stops near the 10 MiB limit")
	})
}

func TestLogsAndErrorsCarryNoCredentials(t *testing.T) {
	const (
		password = "hunter2-secret"
		token    = "tok-5f3a9c"
		bearer   = "Bearer abc.def.ghi"
		cookie   = "session=9b8c7d"
	)
	s := keepalivetest.NewServer(t, keepalivetest.Drop())
	logs := captureLogs(slog.LevelDebug, false)
	c, tr := newTestClient(t, fastRetries, logs.option())
	u, err := url.Parse(s.URL)
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
	require.Contains(t, logs.String(), "keepalive: retrying", "there were logs to check")
	for _, secret := range []string{password, token, bearer, cookie, "alice"} {
		assert.NotContains(t, logs.String(), secret)
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
