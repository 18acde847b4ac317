// This file holds the tests of bodies: request bodies replayed byte for
// byte or sent once (GetBody, WithBodyBuffer), and responses the retry
// layer discards (drained for reuse, or closed unread).

package keepalive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
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

// bodySums returns the SHA-256 of each request body the server received.
func bodySums(s *keepalivetest.Server) [][32]byte {
	var sums [][32]byte
	for _, b := range s.Bodies() {
		sums = append(sums, sha256.Sum256(b))
	}
	return sums
}

func TestBodies(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	want := sha256.Sum256(payload)
	forEachProto(t, func(t *testing.T, p proto) {
		t.Run("a body with GetBody is replayed byte-identical", func(t *testing.T) {
			cs, tlsOpt := newServer(t, p, script(503, 500, 200)...)
			c, _ := newTestClient(t, tlsOpt, fastRetries)
			req, err := http.NewRequest("PUT", cs.URL, bytes.NewReader(payload))
			require.NoError(t, err)
			resp, err := c.Do(req)
			require.NoError(t, err)
			assert.Equal(t, "attempt 3: 200", readBody(t, resp))
			sums := bodySums(cs)
			require.Len(t, sums, 3)
			for i, s := range sums {
				assert.Equal(t, want, s, "attempt %d", i+1)
			}
		})
	})
	t.Run("a body without GetBody is sent once", func(t *testing.T) {
		cs, _ := newServer(t, http1, script(503, 200)...)
		c, _ := newTestClient(t, fastRetries)
		req, err := http.NewRequest("PUT", cs.URL, &onceReader{bytes.NewReader(payload)})
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode, "not retried: the body is gone")
		resp.Body.Close()
		assert.Equal(t, [][32]byte{want}, bodySums(cs))
	})
	t.Run("WithBodyBuffer replays a body that fits", func(t *testing.T) {
		cs, _ := newServer(t, http1, script(503, 200)...)
		c, _ := newTestClient(t, fastRetries, WithBodyBuffer(int64(len(payload))))
		req, err := http.NewRequest("PUT", cs.URL, &onceReader{bytes.NewReader(payload)})
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		assert.Equal(t, 200, resp.StatusCode)
		resp.Body.Close()
		assert.Equal(t, [][32]byte{want, want}, bodySums(cs))
		assert.Nil(t, req.GetBody, "the caller's request is not modified")
	})
	t.Run("WithBodyBuffer streams a body that does not fit, once and whole", func(t *testing.T) {
		cs, _ := newServer(t, http1, script(503, 200)...)
		c, _ := newTestClient(t, fastRetries, WithBodyBuffer(1000))
		req, err := http.NewRequest("PUT", cs.URL, &onceReader{bytes.NewReader(payload)})
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		assert.Equal(t, 503, resp.StatusCode)
		resp.Body.Close()
		assert.Equal(t, [][32]byte{want}, bodySums(cs))
	})
}

func TestDiscardedResponses(t *testing.T) {
	t.Run("a small body is drained so the connection is reused", func(t *testing.T) {
		srv := keepalivetest.NewServer(t, keepalivetest.Status(503).Body(strings.Repeat("x", 8<<10)))
		c, tr := newTestClient(t, fastRetries, WithMaxRetries(3), drainedFirst())
		resp, err := c.Get(srv.URL)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, 4, srv.Requests())
		assert.Equal(t, 1, srv.Connections())
		assert.EqualValues(t, 1, tr.Stats().Dials)
	})
	t.Run("a large body is closed unread", func(t *testing.T) {
		var sent atomic.Int64
		srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
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
		assert.Equal(t, 3, srv.Connections(), "a connection per attempt: none was drained")
		srv.Close() // waits for the handlers: sent is final
		assert.Less(t, sent.Load(), int64(3*16<<20), "the client stopped reading early")
	})
	t.Run("a failure does not flush the pool", func(t *testing.T) {
		const n = 6
		round := newBarrier(n)
		srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
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
		require.Equal(t, n, srv.Connections())
		resp, err := c.Get(srv.URL + "/fail")
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, 4, srv.Requests()-n, "the failing request was retried")
		fetchConcurrently()
		assert.Equal(t, n, srv.Connections(), "the idle connections survived the failure")
		assert.EqualValues(t, n, tr.Stats().Dials)
	})
}

// openBody returns a request body that yields "partial" and then neither
// ends nor yields more until the test ends, or ctx ends (so that a
// RoundTrip that wrongly waits for the whole body returns, with an error,
// instead of hanging the test).
func openBody(t *testing.T, ctx context.Context) io.Reader {
	pr, pw := io.Pipe()
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = pw.Write([]byte("partial"))
	}()
	stop := context.AfterFunc(ctx, func() {
		pw.CloseWithError(errors.New("the request context ended while its body was still open"))
	})
	t.Cleanup(func() {
		stop()
		pw.CloseWithError(errors.New("the test ended"))
		<-wrote
	})
	return pr
}

// WithBodyBuffer accepts any non-negative limit: either NewClient rejects a
// limit, or a body without GetBody reaches the server whole, on the first
// attempt and on a retry.
func TestBodyBufferNeverDropsTheBody(t *testing.T) {
	const size = 64 << 10
	const seed = 3
	want := faultBodySum(size, seed)
	for _, limit := range []int64{math.MaxInt64, math.MaxInt64 - 1} {
		t.Run(fmt.Sprintf("a limit of %d is rejected or works", limit), func(t *testing.T) {
			// The first PUT is answered; the second, its retry.
			srv := keepalivetest.NewServer(t, keepalivetest.Status(http.StatusOK),
				keepalivetest.Status(http.StatusServiceUnavailable).Body("again"), keepalivetest.Status(http.StatusOK))
			checked := 0 // bodies checked so far
			c, err := NewClient(WithBodyBuffer(limit), WithProxy(nil),
				WithBackoff(time.Millisecond, 5*time.Millisecond))
			if err != nil {
				var oe *OptionError
				require.ErrorAs(t, err, &oe, "a rejected limit names its option")
				return
			}
			t.Cleanup(c.CloseIdleConnections)

			put := func(t *testing.T) {
				t.Helper()
				// A *faultBody is not a type http.NewRequest knows: no GetBody.
				req, err := http.NewRequest(http.MethodPut, srv.URL+"/put", &faultBody{n: size, seed: seed})
				require.NoError(t, err)
				require.Nil(t, req.GetBody)
				resp, err := c.Do(req)
				require.NoError(t, err)
				resp.Body.Close()
				assert.Equal(t, http.StatusOK, resp.StatusCode)
			}
			check := func(t *testing.T, wantRequests int) {
				t.Helper()
				seen := srv.Bodies()[checked:]
				require.Len(t, seen, wantRequests)
				for i, b := range seen {
					sum := sha256.Sum256(b)
					assert.Equal(t, size, len(b), "request %d: body length the server received", i+1)
					assert.Equal(t, want, hex.EncodeToString(sum[:]), "request %d: SHA-256 of the body the server received", i+1)
				}
				checked += len(seen)
			}

			t.Run("a PUT without GetBody reaches the server byte-identical", func(t *testing.T) {
				put(t)
				check(t, 1)
			})
			t.Run("a retried PUT without GetBody is resent byte-identical", func(t *testing.T) {
				put(t)
				check(t, 2)
			})
		})
	}
}

// Buffering a body for retries must not hold the request back: the caller
// gets the server's answer while the body is still streaming, within its
// deadline, as with bare net/http.
func TestBodyBufferDoesNotWaitForTheWholeBody(t *testing.T) {
	tests := []struct {
		name   string
		method string
	}{
		{"a streaming POST that cannot be retried gets the server's early answer", http.MethodPost},
		{"a streaming PUT gets the server's early answer", http.MethodPut},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The server answers as soon as it has the head, reading no body
			// (net/http's server reads the body before it answers: a raw
			// one).
			srv := newFaultServer(t, func(fc *faultConn) {
				if _, err := fc.readHead(); err != nil {
					return
				}
				if fc.reply(http.StatusOK, "ok") != nil {
					return
				}
				fc.waitClosed()
			})
			c, _ := newTestClient(t, WithProxy(nil), WithBodyBuffer(1<<20))
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			t.Cleanup(cancel)
			req, err := http.NewRequestWithContext(ctx, tt.method, srv.url("/upload"), openBody(t, ctx))
			require.NoError(t, err)

			resp, err := c.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode)
		})
	}
}

// The deadline check counts the drain of the discarded body: when the
// drain and the wait cannot fit the caller's deadline, the caller gets the
// response it has, not context.DeadlineExceeded.
func TestSlowDrainReturnsTheResponse(t *testing.T) {
	// 300 bytes trickled 15 ms apart: 4.5 s in all.
	srv := keepalivetest.NewServer(t, keepalivetest.Status(http.StatusServiceUnavailable).
		Body(strings.Repeat("x", 300)).Trickle(15*time.Millisecond))
	c, _ := newTestClient(t, WithProxy(nil))

	t.Run("a 503 with a trickling body is returned within a 700ms deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close() // unread: it trickles
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	})
}

// Responses without a body keep http.NoBody whatever the options, as
// net/http gives them.
func TestEmptyBodiesStayNoBody(t *testing.T) {
	srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/204" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		_, _ = io.WriteString(w, "hello")
	})
	options := []struct {
		name string
		opt  Option
	}{
		{"with neither option", WithMaxRetries(defaultMaxRetries)},
		{"under WithAttemptTimeout", WithAttemptTimeout(5 * time.Second)},
		{"under WithHedging", WithHedging(5*time.Second, 1)},
	}
	for _, o := range options {
		c, _ := newTestClient(t, WithProxy(nil), o.opt)
		for _, rq := range []struct{ method, path, what string }{
			{http.MethodHead, "/", "a HEAD response"},
			{http.MethodGet, "/204", "a 204 response"},
		} {
			t.Run(rq.what+" has http.NoBody "+o.name, func(t *testing.T) {
				req, err := http.NewRequest(rq.method, srv.URL+rq.path, nil)
				require.NoError(t, err)
				resp, err := c.Do(req)
				require.NoError(t, err)
				defer resp.Body.Close()
				assert.True(t, resp.Body == http.NoBody, "Body is %T, not http.NoBody", resp.Body)
			})
		}
	}
}
