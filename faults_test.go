// This file holds the fault-server scenarios: each fault a production peer
// commits on a keep-alive connection, and the outcome the client must give
// for it (a retry, a clear typed error, or the response), within a known
// number of attempts counted on both sides. The server is in
// faultserver_test.go.

package keepalive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// faultFastRetries makes retries cheap in time: the scenarios count
// attempts, not backoff.
func faultFastRetries(n int) []Option {
	return []Option{WithMaxRetries(n), WithBackoff(time.Millisecond, 5*time.Millisecond), WithProxy(nil)}
}

func TestFaultCloseAfterRequestOnFreshConnections(t *testing.T) {
	srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
		return false // read the request, close without a word
	}))

	t.Run("a GET is retried until its retries run out, then fails with a RetryError", func(t *testing.T) {
		c, tr := newTestClient(t, faultFastRetries(3)...)
		before := srv.requests.Load()
		_, _, err := get(t, c, srv.url("/get"))
		var re *RetryError
		require.ErrorAs(t, err, &re)
		assert.Equal(t, 4, re.Attempts)
		assert.ErrorIs(t, err, io.EOF)
		assert.Equal(t, int64(4), srv.requests.Load()-before, "server-side attempts")
		st := tr.Stats()
		assert.Equal(t, Stats{Requests: 1, Attempts: 4, Retries: 3, GaveUp: 1, Dials: 4}, st)
	})

	t.Run("a POST without a key reaches the server once and fails", func(t *testing.T) {
		c, tr := newTestClient(t, faultFastRetries(3)...)
		before := srv.requests.Load()
		resp, err := c.Post(srv.url("/post"), "text/plain", strings.NewReader("once"))
		if resp != nil {
			resp.Body.Close()
		}
		require.Error(t, err)
		assert.NotErrorAs(t, err, new(*RetryError), "one attempt is not a retry")
		assert.Equal(t, int64(1), srv.requests.Load()-before, "server-side attempts")
		assert.Equal(t, int64(1), tr.Stats().Attempts)
	})

	t.Run("a POST with an Idempotency-Key is retried like a GET", func(t *testing.T) {
		c, tr := newTestClient(t, faultFastRetries(2)...)
		before := srv.requests.Load()
		req, err := http.NewRequest(http.MethodPost, srv.url("/post"), strings.NewReader("keyed"))
		require.NoError(t, err)
		req.Header.Set("Idempotency-Key", "k1")
		_, _, err = send(t, c, req)
		var re *RetryError
		require.ErrorAs(t, err, &re)
		assert.Equal(t, 3, re.Attempts)
		assert.Equal(t, int64(3), srv.requests.Load()-before, "server-side attempts")
		assert.Equal(t, int64(2), tr.Stats().Retries)
	})
}

// faultSecondRequestCloses answers the first request of each connection
// and closes the connection after reading the second, as a server that
// timed out the idle connection just as the request arrived.
func faultSecondRequestCloses(fc *faultConn, r *faultRequest) bool {
	if r.onConn >= 2 {
		return false
	}
	return faultOK(fc, r)
}

func TestFaultCloseAfterRequestOnReusedConnection(t *testing.T) {
	tests := []struct {
		name         string
		method       string
		key          bool
		wantErr      bool
		wantArrivals int64 // of the second request, at the server
		wantRetries  int64 // by the retry layer (net/http retries GETs itself)
	}{
		{name: "a GET is resent on a new connection by net/http", method: http.MethodGet, wantArrivals: 2},
		{name: "a PUT is resent by the retry layer", method: http.MethodPut, wantArrivals: 2, wantRetries: 1},
		{name: "a POST with a key is resent", method: http.MethodPost, key: true, wantArrivals: 2},
		{name: "a POST without a key fails and arrives once", method: http.MethodPost, wantErr: true, wantArrivals: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFaultServer(t, faultServe(faultSecondRequestCloses))
			c, tr := newTestClient(t, faultFastRetries(3)...)
			_, _, err := get(t, c, srv.url("/warm"))
			require.NoError(t, err)

			req := faultNewRequest(context.Background(), tt.method, srv.url("/second"), 4096, 7)
			req.Header.Set("X-Req-Id", "second")
			if tt.key {
				req.Header.Set("Idempotency-Key", "second")
			}
			_, body, err := send(t, c, req)
			if tt.wantErr {
				require.Error(t, err)
			} else {
				require.NoError(t, err)
				assert.Equal(t, faultEcho(tt.method, "second", faultBodySum(4096, 7)), body,
					"the replayed body arrives byte-identical")
			}
			assert.Equal(t, 1+tt.wantArrivals, srv.requests.Load(), "server-side attempts")
			st := tr.Stats()
			assert.Equal(t, tt.wantRetries, st.Retries)
			assert.Equal(t, tt.wantArrivals, st.Dials, "a new connection per resend")
		})
	}
}

func TestFaultResetHalfwayThroughResponseBody(t *testing.T) {
	srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
		_ = fc.writeString("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + strings.Repeat("x", 500))
		fc.reset()
		return false
	}))
	c, tr := newTestClient(t, faultFastRetries(3)...)

	resp, body, err := get(t, c, srv.url("/half"))
	require.Error(t, err, "a truncated body must never read as complete")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Less(t, len(body), 1000)
	assert.True(t, errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF), "got %v", err)
	assert.Equal(t, int64(1), srv.requests.Load(), "headers were answered: the body error is the caller's")
	assert.Equal(t, int64(0), tr.Stats().Retries)
}

func TestFaultResetHalfwayThroughUpload(t *testing.T) {
	const size = 1 << 20
	for _, tt := range []struct {
		name, method string
		key          bool
	}{
		{name: "a PUT is replayed byte-identical", method: http.MethodPut},
		{name: "a POST with a key is replayed byte-identical", method: http.MethodPost, key: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFaultServer(t, func(fc *faultConn) {
				r, err := fc.readHead()
				if err != nil {
					return
				}
				if r.n == 1 {
					_, _ = io.CopyN(io.Discard, r.Body, size/2)
					fc.reset()
					return
				}
				fc.readBody(r)
				faultOK(fc, r)
			})
			c, tr := newTestClient(t, faultFastRetries(3)...)
			req := faultNewRequest(context.Background(), tt.method, srv.url("/upload"), size, 3)
			req.Header.Set("X-Req-Id", "up")
			if tt.key {
				req.Header.Set("Idempotency-Key", "up")
			}
			resp, body, err := send(t, c, req)
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, faultEcho(tt.method, "up", faultBodySum(size, 3)), body)
			assert.Equal(t, int64(2), srv.requests.Load(), "server-side attempts")
			assert.Equal(t, int64(1), tr.Stats().Retries)
		})
	}
}

func TestFaultStallBeforeHeaders(t *testing.T) {
	const readTimeout = 200 * time.Millisecond

	t.Run("a GET whose first attempt stalls succeeds on the second", func(t *testing.T) {
		t.Parallel()
		srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
			if r.n == 1 {
				fc.waitClosed() // hold the connection until the client gives up on it
				return false
			}
			return faultOK(fc, r)
		}))
		c, tr := newTestClient(t, append(faultFastRetries(3), WithReadTimeout(readTimeout))...)
		_, body, err := get(t, c, srv.url("/stall"))
		require.NoError(t, err)
		assert.True(t, strings.HasPrefix(body, "GET "))
		assert.Equal(t, int64(2), srv.requests.Load())
		assert.Equal(t, int64(1), tr.Stats().Retries)
	})

	t.Run("a server that always stalls ends in a timeout error after the retries", func(t *testing.T) {
		t.Parallel()
		srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
			fc.waitClosed()
			return false
		}))
		c, tr := newTestClient(t, append(faultFastRetries(1), WithReadTimeout(readTimeout))...)
		_, _, err := get(t, c, srv.url("/stall"))
		var re *RetryError
		require.ErrorAs(t, err, &re)
		assert.Equal(t, 2, re.Attempts)
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		assert.True(t, ne.Timeout(), "the error says it was a timeout: %v", err)
		assert.Equal(t, int64(2), srv.requests.Load())
		assert.Equal(t, Stats{Requests: 1, Attempts: 2, Retries: 1, GaveUp: 1, Dials: 2}, tr.Stats())
	})

	t.Run("a POST without a key that stalls is not resent", func(t *testing.T) {
		t.Parallel()
		srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
			fc.waitClosed()
			return false
		}))
		c, _ := newTestClient(t, append(faultFastRetries(3), WithReadTimeout(readTimeout))...)
		resp, err := c.Post(srv.url("/stall"), "text/plain", strings.NewReader("once"))
		if resp != nil {
			resp.Body.Close()
		}
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		assert.True(t, ne.Timeout())
		assert.Equal(t, int64(1), srv.requests.Load())
	})
}

func TestFaultTrickledBody(t *testing.T) {
	const readTimeout = 300 * time.Millisecond

	t.Run("a body trickled a byte at a time under the read timeout arrives whole", func(t *testing.T) {
		t.Parallel()
		srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
			if fc.writeString("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n") != nil {
				return false
			}
			// The gaps are the fault itself, not synchronisation: a real
			// slow peer, each gap well under the read timeout.
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for i := range 10 {
				<-tick.C
				if fc.writeString(string(rune('0'+i))) != nil {
					return false
				}
			}
			return true
		}))
		c, tr := newTestClient(t, append(faultFastRetries(3), WithReadTimeout(readTimeout))...)
		_, body, err := get(t, c, srv.url("/trickle"))
		require.NoError(t, err)
		assert.Equal(t, "0123456789", body)
		assert.Equal(t, int64(1), tr.Stats().Attempts)
	})

	t.Run("a body that stops mid-way fails with ErrReadTimeout", func(t *testing.T) {
		t.Parallel()
		srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
			if fc.writeString("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234") != nil {
				return false
			}
			fc.waitClosed()
			return false
		}))
		c, tr := newTestClient(t, append(faultFastRetries(3), WithReadTimeout(readTimeout))...)
		_, body, err := get(t, c, srv.url("/stop"))
		require.ErrorIs(t, err, ErrReadTimeout)
		var te *TimeoutError
		require.ErrorAs(t, err, &te)
		assert.Equal(t, TimeoutError{Op: "read", Limit: readTimeout}, *te)
		assert.Equal(t, "01234", body)
		assert.Equal(t, int64(1), tr.Stats().Attempts)
	})
}

func TestFaultRefusedThenBack(t *testing.T) {
	srv := newFaultServer(t, faultServe(faultOK))
	c, tr := newTestClient(t, WithMaxRetries(100), WithBackoff(5*time.Millisecond, 20*time.Millisecond), WithProxy(nil))
	srv.stopListening()

	// A POST without a key is safe to resend when its connection was never
	// made: nothing can have reached the server.
	type result struct {
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		req := faultNewRequest(context.Background(), http.MethodPost, srv.url("/back"), 100, 1)
		req.Header.Set("X-Req-Id", "back")
		_, body, err := send(t, c, req)
		res <- result{body, err}
	}()
	require.True(t, poll(10*time.Second, func() bool { return tr.Stats().DialErrors >= 3 }), "the client keeps trying while the port refuses")
	srv.listenAgain(t)

	r := <-res
	require.NoError(t, r.err)
	assert.Equal(t, faultEcho(http.MethodPost, "back", faultBodySum(100, 1)), r.body)
	st := tr.Stats()
	assert.GreaterOrEqual(t, st.DialErrors, int64(3))
	assert.Equal(t, st.DialErrors, st.Retries, "every refused connect cost exactly one retry")
	assert.Equal(t, int64(1), st.Dials)
	assert.Equal(t, int64(1), srv.requests.Load(), "the request reached the server once")
}

func TestFaultHuge503BodyIsNotDrained(t *testing.T) {
	const huge = 100 << 20
	var firstSent atomic.Int64
	firstDone := make(chan struct{})
	srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
		if r.n > 1 {
			return faultOK(fc, r)
		}
		defer close(firstDone)
		if fc.writeString("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 104857600\r\n\r\n") != nil {
			return false
		}
		chunk := make([]byte, 64<<10)
		for sent := int64(0); sent < huge; sent += int64(len(chunk)) {
			n, err := fc.Conn.Write(chunk)
			firstSent.Add(int64(n))
			if err != nil {
				return false
			}
		}
		return false
	}))
	c, tr := newTestClient(t, faultFastRetries(1)...)
	_, body, err := get(t, c, srv.url("/huge"))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(body, "GET "))
	<-firstDone // the server's writes fail once the client has closed the connection
	t.Logf("server sent %d bytes of a %d byte 503 body before the client closed it", firstSent.Load(), huge)
	assert.Less(t, firstSent.Load(), int64(16<<20), "the discarded body is not read to the end")
	assert.Equal(t, int64(1), tr.Stats().Retries)
}

func TestFaultRetryAfter(t *testing.T) {
	t.Parallel() // waits out Retry-After
	future := time.Now().Add(time.Hour).UTC()
	past := time.Now().Add(-time.Hour).UTC()
	tests := []struct {
		name       string
		retryAfter string
		wantStatus int
		wantTries  int64
	}{
		{name: "huge seconds returns the 503 at once", retryAfter: "99999999999999999999999", wantStatus: 503, wantTries: 1},
		{name: "an hour in seconds returns the 503 at once", retryAfter: "3600", wantStatus: 503, wantTries: 1},
		{name: "negative seconds fall back to the backoff", retryAfter: "-5", wantStatus: 200, wantTries: 2},
		{name: "garbage falls back to the backoff", retryAfter: "soon, maybe", wantStatus: 200, wantTries: 2},
		{name: "zero retries after the backoff", retryAfter: "0", wantStatus: 200, wantTries: 2},
		{name: "an IMF-fixdate an hour ahead returns the 503 at once", retryAfter: future.Format(http.TimeFormat), wantStatus: 503, wantTries: 1},
		{name: "an RFC 850 date an hour ahead returns the 503 at once", retryAfter: future.Format(time.RFC850), wantStatus: 503, wantTries: 1},
		{name: "an asctime date an hour ahead returns the 503 at once", retryAfter: future.Format(time.ANSIC), wantStatus: 503, wantTries: 1},
		{name: "a date in the past retries after the backoff", retryAfter: past.Format(http.TimeFormat), wantStatus: 200, wantTries: 2},
		{name: "an RFC 850 date in the past retries after the backoff", retryAfter: past.Format(time.RFC850), wantStatus: 200, wantTries: 2},
		{name: "one second is waited for, then retried", retryAfter: "1", wantStatus: 200, wantTries: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
				if r.n == 1 {
					return fc.reply(http.StatusServiceUnavailable, "busy", "Retry-After: "+tt.retryAfter) == nil
				}
				return faultOK(fc, r)
			}))
			c, tr := newTestClient(t, faultFastRetries(3)...)
			start := time.Now()
			resp, _, err := get(t, c, srv.url("/ra"))
			elapsed := time.Since(start)
			require.NoError(t, err)
			assert.Equal(t, tt.wantStatus, resp.StatusCode)
			assert.Equal(t, tt.wantTries, srv.requests.Load(), "server-side attempts")
			assert.Equal(t, tt.wantTries, tr.Stats().Attempts)
			if tt.retryAfter == "1" {
				assert.GreaterOrEqual(t, elapsed, time.Second, "the server's wait was honoured")
			}
		})
	}
}

func TestFaultMalformedResponses(t *testing.T) {
	tests := []struct {
		name, raw, wantMsg string
	}{
		{name: "a status code that is not a number", raw: "HTTP/1.1 abc OK\r\n\r\n", wantMsg: "malformed HTTP status code"},
		{name: "a status line that is not HTTP", raw: "garbage\r\n\r\n", wantMsg: "malformed HTTP response"},
		{name: "an unknown protocol version", raw: "HTTP/one 200 OK\r\nContent-Length: 0\r\n\r\n", wantMsg: "malformed HTTP version"},
		{name: "a header line without a colon", raw: "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", wantMsg: "malformed MIME header"},
		{name: "a negative Content-Length", raw: "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", wantMsg: "Content-Length"},
		{name: "two different Content-Lengths", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", wantMsg: "Content-Length"},
	}
	for _, tt := range tests {
		t.Run(tt.name+" fails a GET with a RetryError after bounded attempts", func(t *testing.T) {
			srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
				_ = fc.writeString(tt.raw)
				return false
			}))
			c, tr := newTestClient(t, faultFastRetries(2)...)
			_, _, err := get(t, c, srv.url("/bad"))
			var re *RetryError
			require.ErrorAs(t, err, &re)
			assert.Equal(t, 3, re.Attempts)
			assert.Contains(t, err.Error(), tt.wantMsg)
			assert.Equal(t, int64(3), srv.requests.Load(), "server-side attempts")
			assert.Equal(t, Stats{Requests: 1, Attempts: 3, Retries: 2, GaveUp: 1, Dials: 3}, tr.Stats())
		})
		t.Run(tt.name+" fails a POST without a key after one attempt", func(t *testing.T) {
			srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
				_ = fc.writeString(tt.raw)
				return false
			}))
			c, _ := newTestClient(t, faultFastRetries(2)...)
			resp, err := c.Post(srv.url("/bad"), "text/plain", strings.NewReader("once"))
			if resp != nil {
				resp.Body.Close()
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantMsg)
			assert.Equal(t, int64(1), srv.requests.Load())
		})
	}

	t.Run("a malformed answer that heals is retried into a success", func(t *testing.T) {
		srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
			if r.n == 1 {
				_ = fc.writeString("HTTP/1.1 abc OK\r\n\r\n")
				return false
			}
			return faultOK(fc, r)
		}))
		c, tr := newTestClient(t, faultFastRetries(2)...)
		_, body, err := get(t, c, srv.url("/heal"))
		require.NoError(t, err)
		assert.True(t, strings.HasPrefix(body, "GET "))
		assert.Equal(t, int64(1), tr.Stats().Retries)
	})
}

func TestFaultPolicyResendsAnUnkeyedPOSTOnlyWhenItProvablyNeverLeft(t *testing.T) {
	p := newPolicy(defaultOptions())
	req, err := http.NewRequest(http.MethodPost, "http://127.0.0.1:1/p", strings.NewReader("x"))
	require.NoError(t, err)
	tests := []struct {
		name string
		err  error
		want verdict
	}{
		{name: "the dial failed", err: &dialError{err: syscall.ECONNREFUSED}, want: verdictRetry},
		{name: "net/http saw the idle connection closed before writing", err: errors.New(errServerClosedIdleText), want: verdictRetry},
		{name: "a retired connection refused the write", err: errConnRetired, want: verdictRetry},
		{name: "the connection broke after the request was written", err: io.EOF, want: verdictGiveUp},
		{name: "a reset after writing", err: syscall.ECONNRESET, want: verdictGiveUp},
		{name: "the closed-idle text inside another error", err: errors.New("read: " + errServerClosedIdleText), want: verdictGiveUp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decideAt(&p, attemptOutcome{req: req, err: tt.err, attempt: 1, replayable: true}, time.Now())
			assert.Equal(t, tt.want, d.verdict)
			if tt.want == verdictGiveUp {
				assert.Equal(t, GiveUpNotReplayable, d.reason)
			}
		})
	}
}

// faultCountReads wraps the dialer of tr so that the bytes read from every
// connection are added to the returned counter.
func faultCountReads(tr *Transport) *atomic.Int64 {
	n := new(atomic.Int64)
	dial := tr.base.DialContext
	tr.base.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &faultReadCounter{Conn: c, n: n}, nil
	}
	return n
}

type faultReadCounter struct {
	net.Conn
	n *atomic.Int64
}

func (c *faultReadCounter) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func TestFaultDiscardedBodyLongerThanTheDrainLimitIsNotRead(t *testing.T) {
	const declared = 1 << 20
	srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
		if r.n > 1 {
			return faultOK(fc, r)
		}
		// All of it sent at once: only the client's choice limits what it reads.
		_ = fc.writeString(fmt.Sprintf("HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s",
			declared, strings.Repeat("d", declared)))
		fc.waitClosed()
		return false
	}))
	c, tr := newTestClient(t, faultFastRetries(1)...)
	read := faultCountReads(tr)
	_, body, err := get(t, c, srv.url("/long"))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(body, "GET "))
	assert.Equal(t, int64(1), tr.Stats().Retries)
	assert.Less(t, read.Load(), int64(maxDrain), "a body declared longer than the drain limit was read")
}
