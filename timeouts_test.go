// This file holds the tests of the timeouts: the read timeout (response
// headers, a body that stalls, an upload the server stops reading), the
// attempt timeout, and the caller's own deadline, which is neither.

package keepalive

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAttemptTimeoutRetriesAStalledAttempt(t *testing.T) {
	forEachProto(t, func(t *testing.T, p proto) {
		var hits atomic.Int64
		srv, tlsOpt := newServer(t, p, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
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
	t.Parallel() // waits out attempt timeouts
	forEachProto(t, func(t *testing.T, p proto) {
		t.Parallel()
		// Long enough for the headers to come back on a loaded machine
		// under -race; the test waits past it once.
		const d = time.Second
		release := make(chan struct{})
		var once sync.Once
		srv, tlsOpt := newServer(t, p, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				io.WriteString(w, "head ")
				w.(http.Flusher).Flush()
				<-release
			}
			io.WriteString(w, "tail")
		}))
		t.Cleanup(func() { once.Do(func() { close(release) }) }) // before the server closes, should the test fail early
		c, _ := newTestClient(t, tlsOpt, WithAttemptTimeout(d))

		resp, err := c.Get(srv.URL + "/slow")
		require.NoError(t, err)
		head := make([]byte, len("head "))
		_, err = io.ReadFull(resp.Body, head)
		require.NoError(t, err)
		<-time.After(2 * d) // the condition under test: the attempt deadline is long past
		once.Do(func() { close(release) })
		rest, err := io.ReadAll(resp.Body)
		require.NoError(t, err, "the body outlives the attempt deadline")
		resp.Body.Close()
		assert.Equal(t, "head tail", string(head)+string(rest))

		// The attempt's context ended only after EOF, so the connection
		// went back to the pool and the next request's first attempt
		// reuses it.
		var first *httptrace.GotConnInfo
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			if first == nil {
				first = &info
			}
		}})
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/fast", nil)
		require.NoError(t, err)
		resp, err = c.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.NotNil(t, first)
		assert.True(t, first.Reused, "the first attempt reused the connection")
	})
}

func TestAttemptTimeoutDoesNotResendAnUnsafeRequest(t *testing.T) {
	srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // the server notices a closed connection only past the body
		<-r.Context().Done()
	})
	c, tr := newTestClient(t, WithAttemptTimeout(50*time.Millisecond), WithBackoff(0, 0))

	_, err := c.Post(srv.URL, "text/plain", strings.NewReader("once"))

	require.ErrorIs(t, err, ErrAttemptTimeout)
	assert.NotErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, context.DeadlineExceeded)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout())
	assert.Equal(t, 1, srv.Requests(), "a POST without Idempotency-Key is sent once")
	assert.Equal(t, int64(1), tr.Stats().AttemptTimeouts)
}

func TestAttemptTimeoutGivesUpWithRetryError(t *testing.T) {
	srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	c, tr := newTestClient(t, WithAttemptTimeout(20*time.Millisecond), WithBackoff(0, 0), WithMaxRetries(2))

	_, err := c.Get(srv.URL)

	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 3, re.Attempts)
	assert.ErrorIs(t, err, ErrAttemptTimeout)
	// An attempt can time out before its request reaches the server on a
	// loaded machine: the server sees at most one request per attempt.
	assert.LessOrEqual(t, srv.Requests(), 3)
	assert.Equal(t, int64(3), tr.Stats().AttemptTimeouts)
}

// The caller's own deadline is not an attempt timeout: it ends the request
// with context.DeadlineExceeded, and is not retried.
func TestCallerDeadlineBeforeAttemptTimeout(t *testing.T) {
	srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	c, tr := newTestClient(t, WithAttemptTimeout(time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	require.NoError(t, err)

	_, err = c.Do(req)

	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, ErrAttemptTimeout)
	assert.Equal(t, 1, srv.Requests())
	assert.Zero(t, tr.Stats().AttemptTimeouts)
}

// The attempt deadline keeps the body of a 101 writable, and does not cut
// the connection the caller now owns.
func TestAttemptTimeoutKeepsUpgradedConnections(t *testing.T) {
	srv := upgradeServer(t, nil, nil)
	c, _ := newTestClient(t, WithAttemptTimeout(time.Minute), WithHedging(time.Minute, 1))
	echoOverUpgrade(t, c, srv.URL)
}

func TestReadTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	forEachProto(t, func(t *testing.T, p proto) {
		t.Run("a stall before headers fails the attempt and is retried", func(t *testing.T) {
			t.Parallel()
			srv, tlsOpt := newServer(t, p, keepalivetest.Status(200).Delay(time.Hour))
			c, tr := newTestClient(t, tlsOpt, WithReadTimeout(timeout), WithMaxRetries(1), fastRetries)
			_, err := c.Get(srv.URL)
			require.Error(t, err)
			var ne net.Error
			require.ErrorAs(t, err, &ne)
			assert.True(t, ne.Timeout(), "%v", err)
			assert.Contains(t, err.Error(), "timeout awaiting response headers")
			assert.EqualValues(t, 2, tr.Stats().Attempts)
		})
		t.Run("a body that keeps trickling is not cut off", func(t *testing.T) {
			t.Parallel()
			// Bytes spaced by timeout/3: the whole body takes over twice
			// the read timeout, no gap comes near it.
			srv, tlsOpt := newServer(t, p, keepalivetest.Status(200).Body("01234567").Trickle(timeout/3))
			c, _ := newTestClient(t, tlsOpt, WithReadTimeout(timeout))
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			assert.Equal(t, "01234567", readBody(t, resp))
		})
		t.Run("a stall in the body fails the read and says so", func(t *testing.T) {
			t.Parallel()
			srv, tlsOpt := newServer(t, p, keepalivetest.Status(200).Body("partial, and the rest").Stall(len("partial")))
			c, _ := newTestClient(t, tlsOpt, WithReadTimeout(timeout))
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

// endlessBody is a request body that never ends.
type endlessBody struct{}

var endlessChunk = make([]byte, 32<<10)

func (endlessBody) Read(p []byte) (int, error) { return copy(p, endlessChunk), nil }

// An attempt whose headers arrive just as the attempt timer fires must
// still end with a response or an error, never with neither: the code
// that follows dereferences the response (and, under hedging, does so on
// a goroutine of its own, so the whole process dies). The race is narrow:
// the test sends requests whose latency is drawn around the attempt
// timeout, for at most 750 ms or 2,000 requests per case.
func TestAttemptTimeoutNeverNilNil(t *testing.T) {
	const (
		timeout  = 2 * time.Millisecond
		requests = 2000
		budget   = 750 * time.Millisecond
		workers  = 2
	)
	tests := []struct {
		name string
		opts []Option
	}{
		{"every outcome under WithAttemptTimeout is a response or an error", []Option{
			WithAttemptTimeout(timeout), WithMaxRetries(0)}},
		{"every outcome under WithAttemptTimeout and WithHedging is a response or an error", []Option{
			WithAttemptTimeout(timeout), WithHedging(timeout/2, 1), WithMaxRetries(1),
			WithBackoff(0, 0), WithoutRetryBudget()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // a server and a Transport of its own
			srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
				// Latency drawn from [timeout/2, 3*timeout/2): many answers
				// arrive just as the attempt timer fires.
				timer := time.NewTimer(timeout/2 + rand.N(timeout))
				defer timer.Stop()
				select {
				case <-timer.C:
					_, _ = io.WriteString(w, "ok")
				case <-r.Context().Done():
				}
			})
			tr := newTestTransport(t, append([]Option{WithProxy(nil)}, tt.opts...)...)

			deadline := time.Now().Add(budget)
			var next, failed atomic.Int64
			var wg sync.WaitGroup
			for range workers {
				wg.Go(func() {
					for failed.Load() == 0 && time.Now().Before(deadline) {
						i := next.Add(1)
						if i > requests {
							return
						}
						if msg := roundTripOnce(tr, srv.URL); msg != "" {
							failed.Add(1)
							t.Errorf("request %d: %s", i, msg)
							return
						}
					}
				})
			}
			wg.Wait()
			t.Logf("%d requests", min(next.Load(), requests))
		})
	}
}

// roundTripOnce sends one GET and describes what was wrong with its
// outcome, or returns "".
func roundTripOnce(tr *Transport, u string) (msg string) {
	defer func() {
		if p := recover(); p != nil {
			msg = fmt.Sprintf("RoundTrip panicked: %v", p)
		}
	}()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return err.Error()
	}
	resp, err := tr.RoundTrip(req)
	if resp != nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	switch {
	case resp == nil && err == nil:
		return "RoundTrip returned neither a response nor an error"
	case resp != nil && err != nil:
		return fmt.Sprintf("RoundTrip returned both a response and an error (%v)", err)
	}
	return ""
}

// The read timeout bounds every wait, the upload included: a request
// body write that makes no progress for the read timeout fails with a
// timeout error of its own, not the caller's deadline.
func TestStalledUploadTimesOut(t *testing.T) {
	const readTimeout = 300 * time.Millisecond
	check := func(t *testing.T, c *http.Client, u string) {
		t.Helper()
		// The safety deadline only keeps a failing run finite.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, endlessBody{})
		require.NoError(t, err)
		resp, err := c.Do(req)
		if resp != nil {
			resp.Body.Close()
		}
		require.Error(t, err)
		assert.NotErrorIs(t, err, context.DeadlineExceeded,
			"the upload was bounded by the caller's deadline, not by the read timeout")
		var ne net.Error
		if assert.ErrorAs(t, err, &ne) {
			assert.True(t, ne.Timeout(), "not a timeout: %v", err)
		}
		assert.ErrorIs(t, err, ErrWriteTimeout)
	}

	t.Run("an HTTP/1 upload the server stops reading fails with a timeout", func(t *testing.T) {
		t.Parallel()
		srv := keepalivetest.NewServer(t, keepalivetest.Status(200).Delay(time.Hour)) // reads no body and never answers
		c, _ := newTestClient(t, WithProxy(nil), WithReadTimeout(readTimeout))
		check(t, c, srv.URL+"/upload")
	})

	t.Run("an HTTP/2 upload the server stops reading fails with a timeout", func(t *testing.T) {
		t.Parallel()
		// /ready is answered, then the upload meets a server that reads
		// no body and never answers.
		srv, tlsOpt := newServer(t, http2, keepalivetest.Status(200), keepalivetest.Status(200).Delay(time.Hour))
		c, _ := newTestClient(t, WithProxy(nil), WithReadTimeout(readTimeout), tlsOpt)
		resp, err := c.Get(srv.URL + "/ready")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 2, resp.ProtoMajor, "the client must speak HTTP/2 to this server")
		check(t, c, srv.URL+"/upload")
	})
}
