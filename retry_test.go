// This file holds the tests of what is retried: statuses, methods and
// idempotency keys, transport errors, what is never retried, and
// WithCheckRetry, each end to end against a server. The rules themselves
// are tables of the pure policy in policy_test.go.

package keepalive

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStatusRetries(t *testing.T) {
	forEachProto(t, func(t *testing.T, p proto) {
		t.Run("retried statuses end in the success", func(t *testing.T) {
			srv, tlsOpt := newServer(t, p, script(503, 502, 200)...)
			c, tr := newTestClient(t, tlsOpt, fastRetries, drainedFirst())
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			assert.Equal(t, 200, resp.StatusCode)
			assert.Equal(t, "attempt 3: 200", readBody(t, resp))
			want := Stats{Requests: 1, Attempts: 3, Retries: 2, Dials: 1}
			if p != http1 {
				want.TLSHandshakes = 1
			}
			assert.Equal(t, want, tr.Stats(), "drained bodies let every attempt reuse the one connection")
		})
		t.Run("exhausted retries return the last response with its body", func(t *testing.T) {
			srv, tlsOpt := newServer(t, p, script(500)...)
			c, tr := newTestClient(t, tlsOpt, fastRetries, WithMaxRetries(2))
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			assert.Equal(t, 500, resp.StatusCode)
			assert.Equal(t, "attempt 3: 500", readBody(t, resp))
			assert.Equal(t, 3, srv.Requests())
			assert.EqualValues(t, 1, tr.Stats().GaveUp)
		})
	})
	t.Run("WithRetryStatuses drops 501", func(t *testing.T) {
		srv, _ := newServer(t, http1, script(501, 200)...)
		c, _ := newTestClient(t, fastRetries, WithRetryStatuses(429, 500, 502, 503, 504))
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, 501, resp.StatusCode)
		resp.Body.Close()
	})
	t.Run("WithMaxRetries(0) sends once", func(t *testing.T) {
		srv, _ := newServer(t, http1, script(503, 200)...)
		c, tr := newTestClient(t, WithMaxRetries(0))
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode)
		resp.Body.Close()
		assert.EqualValues(t, 1, tr.Stats().Attempts)
	})
}

// TestIdempotency sends one request of each rule family of what may be
// sent again end to end; the rules, row by row, are in
// TestPolicyRetriesOnlyWhatMayBeSentAgain.
func TestIdempotency(t *testing.T) {
	tests := []struct {
		name    string
		method  string
		header  string
		opts    []Option
		retried bool
	}{
		{name: "GET is retried", method: "GET", retried: true},
		{name: "POST is not retried", method: "POST"},
		{name: "POST with Idempotency-Key is retried", method: "POST", header: "Idempotency-Key", retried: true},
		{name: "POST is retried when WithRetryMethods allows it", method: "POST", opts: []Option{WithRetryMethods("POST")}, retried: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := newServer(t, http1, script(503, 200)...)
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
			assert.Equal(t, map[bool]int{true: 2, false: 1}[tt.retried], srv.Requests(), "requests at the server")
		})
	}
}

func TestTransportErrors(t *testing.T) {
	t.Run("a connection closed without an answer is retried for GET", func(t *testing.T) {
		s := keepalivetest.NewServer(t, keepalivetest.Drop())
		c, tr := newTestClient(t, fastRetries, WithMaxRetries(2))
		_, err := c.Get(s.URL)
		require.Error(t, err)
		assert.Equal(t, 3, s.Requests())
		var re *RetryError
		require.ErrorAs(t, err, &re)
		assert.Equal(t, 3, re.Attempts)
		assert.ErrorIs(t, err, io.EOF, "the last attempt's error is reachable")
		assert.Equal(t, Stats{Requests: 1, Attempts: 3, Retries: 2, GaveUp: 1, Dials: 3}, tr.Stats())
	})
	t.Run("a POST without a key is never sent twice", func(t *testing.T) {
		s := keepalivetest.NewServer(t, keepalivetest.Drop())
		c, _ := newTestClient(t, fastRetries)
		_, err := c.Post(s.URL, "text/plain", strings.NewReader("charge the card"))
		require.Error(t, err)
		assert.Equal(t, 1, s.Requests())
	})
	t.Run("a POST with an Idempotency-Key is retried", func(t *testing.T) {
		s := keepalivetest.NewServer(t, keepalivetest.Drop())
		c, _ := newTestClient(t, fastRetries, WithMaxRetries(2))
		req, err := http.NewRequest("POST", s.URL, strings.NewReader("charge the card"))
		require.NoError(t, err)
		req.Header.Set("Idempotency-Key", "k-42")
		_, err = c.Do(req)
		require.Error(t, err)
		assert.Equal(t, 3, s.Requests())
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
		srv, _ := newServer(t, http2, script(200)...)
		c, tr := newTestClient(t, fastRetries) // system roots do not trust the test certificate
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
		srv, _ := newServer(t, http1, script(200)...)
		c, tr := newTestClient(t, fastRetries)
		req, err := http.NewRequest("GET", srv.URL, nil)
		require.NoError(t, err)
		req.Header["Bad Header"] = []string{"x"}
		_, err = c.Do(req)
		require.ErrorContains(t, err, "invalid header")
		assert.EqualValues(t, 1, tr.Stats().Attempts)
		assert.Zero(t, srv.Requests())
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
		srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
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

func TestWithCheckRetry(t *testing.T) {
	t.Run("a retryablehttp policy decides", func(t *testing.T) {
		// DefaultRetryPolicy does not retry 501; ours would.
		srv, _ := newServer(t, http1, script(501, 200)...)
		c, _ := newTestClient(t, fastRetries, WithCheckRetry(retryablehttp.DefaultRetryPolicy))
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		assert.Equal(t, 501, resp.StatusCode)
		resp.Body.Close()
	})
	t.Run("the policy sees transport errors as url.Error", func(t *testing.T) {
		s := keepalivetest.NewServer(t, keepalivetest.Drop())
		var seen atomic.Value
		c, _ := newTestClient(t, fastRetries, WithMaxRetries(1), WithCheckRetry(
			func(ctx context.Context, resp *http.Response, err error) (bool, error) {
				seen.Store(err)
				return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
			}))
		_, err := c.Get(s.URL)
		require.Error(t, err)
		assert.Equal(t, 2, s.Requests())
		var ue *url.Error
		assert.ErrorAs(t, seen.Load().(error), &ue)
	})
	t.Run("a policy error is returned and the response closed", func(t *testing.T) {
		srv, _ := newServer(t, http1, script(418)...)
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
		srv, _ := newServer(t, http1, script(503, 200)...)
		c, _ := newTestClient(t, fastRetries, WithCheckRetry(retryablehttp.DefaultRetryPolicy))
		resp, err := c.Post(srv.URL, "text/plain", strings.NewReader("x"))
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode)
		resp.Body.Close()
		assert.Equal(t, 1, srv.Requests())
	})
}

// A WithCheckRetry policy that returns an error along with a retry
// verdict has its error returned once the retries run out, as
// go-retryablehttp does.
func TestCheckRetryErrorIsReturnedWhenRetriesRunOut(t *testing.T) {
	srv := keepalivetest.NewServer(t, keepalivetest.Status(http.StatusInternalServerError))
	c, _ := newTestClient(t, WithProxy(nil), WithCheckRetry(retryablehttp.ErrorPropagatedRetryPolicy),
		WithMaxRetries(2), WithBackoff(time.Millisecond, 5*time.Millisecond))

	t.Run("ErrorPropagatedRetryPolicy's error on a 500 reaches the caller after 3 attempts", func(t *testing.T) {
		resp, err := c.Get(srv.URL)
		if resp != nil {
			resp.Body.Close()
			t.Errorf("the caller got the %d response instead of the policy's error", resp.StatusCode)
		}
		require.Error(t, err)
		var re *RetryError
		if assert.ErrorAs(t, err, &re) {
			assert.Equal(t, 3, re.Attempts)
		}
		assert.Contains(t, err.Error(), "unexpected HTTP status 500 Internal Server Error")
		assert.Equal(t, 3, srv.Requests(), "requests the server saw")
	})
}

// A malformed request fails at once: it is never retried, and a nil URL is
// an error, not a panic.
func TestMalformedRequestsAreNeverRetried(t *testing.T) {
	tests := []struct {
		name string
		url  *url.URL
	}{
		{"a port out of range is not retried", &url.URL{Scheme: "http", Host: "127.0.0.1:99999", Path: "/"}},
		{"a port that is not a number is not retried", &url.URL{Scheme: "http", Host: "127.0.0.1:abc", Path: "/"}},
		{"an empty host is not retried", &url.URL{Scheme: "http", Host: "", Path: "/"}},
		{"a nil URL is an error, not a panic", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTestTransport(t, WithProxy(nil)) // default backoff: a retry shows in Stats
			req := &http.Request{Method: http.MethodGet, URL: tt.url, Header: http.Header{}, Proto: "HTTP/1.1",
				ProtoMajor: 1, ProtoMinor: 1}

			panicked, resp, err := func() (panicked any, resp *http.Response, err error) {
				defer func() { panicked = recover() }()
				resp, err = tr.RoundTrip(req)
				return nil, resp, err
			}()
			require.Nil(t, panicked, "RoundTrip panicked")
			if resp != nil {
				resp.Body.Close()
			}
			assert.Nil(t, resp)
			assert.Error(t, err)
			st := tr.Stats()
			assert.LessOrEqual(t, st.Attempts, int64(1), "attempts")
			assert.Zero(t, st.Retries, "retries")
		})
	}
}
