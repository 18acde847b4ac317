package keepalive

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fleetServer starts h over HTTP/1 or, with h2, over HTTP/2 with TLS, and
// returns it with the option that makes a Transport trust it.
func fleetServer(t *testing.T, h2 bool, h http.Handler) (*httptest.Server, Option) {
	t.Helper()
	if !h2 {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		return srv, WithTLSConfig(nil)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	return srv, WithTLSConfig(&tls.Config{RootCAs: roots})
}

// forBothProtocols runs f as two subtests, over HTTP/1 and HTTP/2.
func forBothProtocols(t *testing.T, f func(t *testing.T, h2 bool)) {
	t.Run("HTTP/1", func(t *testing.T) { f(t, false) })
	t.Run("HTTP/2", func(t *testing.T) { f(t, true) })
}

func TestAttemptTimeoutRetriesAStalledAttempt(t *testing.T) {
	forBothProtocols(t, func(t *testing.T, h2 bool) {
		var hits atomic.Int64
		srv, tlsOpt := fleetServer(t, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if hits.Add(1) == 1 {
				<-r.Context().Done() // stalls until the client abandons the attempt
				return
			}
			io.WriteString(w, "second")
		}))
		c, tr := newTestClient(t, tlsOpt, WithAttemptTimeout(100*time.Millisecond), WithBackoff(0, 0))

		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)

		assert.Equal(t, "second", string(body))
		assert.Equal(t, int64(2), hits.Load())
		st := tr.Stats()
		assert.Equal(t, int64(1), st.AttemptTimeouts)
		assert.Equal(t, int64(1), st.Retries)
	})
}

// failsafe-go #123: the deadline of the attempt that is returned must not
// cut off its body. The server sends headers at once and the body only
// after several attempt timeouts have passed.
func TestAttemptTimeoutNeverCutsOffTheBody(t *testing.T) {
	forBothProtocols(t, func(t *testing.T, h2 bool) {
		const d = 200 * time.Millisecond
		release := make(chan struct{})
		srv, tlsOpt := fleetServer(t, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				io.WriteString(w, "head ")
				w.(http.Flusher).Flush()
				<-release
			}
			io.WriteString(w, "tail")
		}))
		c, tr := newTestClient(t, tlsOpt, WithAttemptTimeout(d))

		resp, err := c.Get(srv.URL + "/slow")
		require.NoError(t, err)
		head := make([]byte, len("head "))
		_, err = io.ReadFull(resp.Body, head)
		require.NoError(t, err)
		<-time.After(3 * d) // the condition under test: the attempt deadline is long past
		close(release)
		rest, err := io.ReadAll(resp.Body)
		require.NoError(t, err, "the body outlives the attempt deadline")
		resp.Body.Close()
		assert.Equal(t, "head tail", string(head)+string(rest))

		// The attempt's context ended only after EOF, so the connection
		// went back to the pool and is reused.
		dials := tr.Stats().Dials
		resp, err = c.Get(srv.URL + "/fast")
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		assert.Equal(t, dials, tr.Stats().Dials)
	})
}

func TestAttemptTimeoutDoesNotResendAnUnsafeRequest(t *testing.T) {
	var hits atomic.Int64
	srv, _ := fleetServer(t, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body) // the server notices a closed connection only past the body
		<-r.Context().Done()
	}))
	c, tr := newTestClient(t, WithAttemptTimeout(50*time.Millisecond), WithBackoff(0, 0))

	_, err := c.Post(srv.URL, "text/plain", strings.NewReader("once"))

	require.ErrorIs(t, err, ErrAttemptTimeout)
	assert.NotErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, context.DeadlineExceeded)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout())
	assert.Equal(t, int64(1), hits.Load(), "a POST without Idempotency-Key is sent once")
	assert.Equal(t, int64(1), tr.Stats().AttemptTimeouts)
}

func TestAttemptTimeoutGivesUpWithRetryError(t *testing.T) {
	var hits atomic.Int64
	srv, _ := fleetServer(t, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		<-r.Context().Done()
	}))
	c, tr := newTestClient(t, WithAttemptTimeout(20*time.Millisecond), WithBackoff(0, 0), WithMaxRetries(2))

	_, err := c.Get(srv.URL)

	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 3, re.Attempts)
	assert.ErrorIs(t, err, ErrAttemptTimeout)
	assert.Equal(t, int64(3), hits.Load())
	assert.Equal(t, int64(3), tr.Stats().AttemptTimeouts)
}

// The caller's own deadline is not an attempt timeout: it ends the request
// with context.DeadlineExceeded, and is not retried.
func TestCallerDeadlineBeforeAttemptTimeout(t *testing.T) {
	var hits atomic.Int64
	srv, _ := fleetServer(t, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		<-r.Context().Done()
	}))
	c, tr := newTestClient(t, WithAttemptTimeout(time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	require.NoError(t, err)

	_, err = c.Do(req)

	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, ErrAttemptTimeout)
	assert.Equal(t, int64(1), hits.Load())
	assert.Zero(t, tr.Stats().AttemptTimeouts)
}

// A wait the caller's deadline cannot cover is not started: the last
// response comes back at once rather than a context.DeadlineExceeded after
// sleeping into it.
func TestNoWaitPastTheCallerDeadline(t *testing.T) {
	var hits atomic.Int64
	srv, _ := fleetServer(t, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Retry-After", "20")
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	c, _ := newTestClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	require.NoError(t, err)

	resp, err := c.Do(req)

	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, int64(1), hits.Load())
	assert.NoError(t, ctx.Err(), "returned long before the deadline")
}

// The attempt deadline keeps the body of a 101 writable, and does not cut
// the connection the caller now owns.
func TestAttemptTimeoutKeepsUpgradedConnections(t *testing.T) {
	srv := upgradeEchoServer(t)
	c, _ := newTestClient(t, WithAttemptTimeout(time.Minute), WithHedging(time.Minute, 1))
	echoOverUpgrade(t, c, srv.URL)
}

// A retry is sent only if the deadline leaves time for the wait and another
// attempt as long as the last one: a 503 that took 600 ms, with 400 ms left,
// comes back at once instead of a DeadlineExceeded 400 ms later.
func TestNoAttemptThatTheCallerDeadlineCannotCover(t *testing.T) {
	var hits atomic.Int64
	srv, _ := fleetServer(t, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select { // the condition under test: a slow failure
		case <-time.After(600 * time.Millisecond):
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	c, tr := newTestClient(t, WithBackoff(0, 0))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	require.NoError(t, err)

	resp, err := c.Do(req)

	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, int64(1), hits.Load())
	assert.Zero(t, tr.Stats().Retries)
	assert.NoError(t, ctx.Err(), "returned before the deadline")
}
