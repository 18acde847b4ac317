package keepalive

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func idlePost(t *testing.T, c *http.Client, url, id string) error {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, url, bytes.NewReader([]byte("body "+id)))
	require.NoError(t, err)
	req.Header.Set("X-Req-Id", id)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if !strings.Contains(string(b), " "+id+" ") {
		t.Errorf("request %s got the answer %q", id, b)
	}
	return nil
}

// A server's idle close, seen twice at about the same idle age, is
// learned, and a connection idle for nearly as long is not written on
// again: the unkeyed POST that would have crossed the close goes to a new
// connection. Without learning, it is lost.
func TestIdleTimeoutLearnedFromClose(t *testing.T) {
	t.Parallel() // sleeps through idle periods; each server closes only its own connections
	forLearning(t, func(t *testing.T, learn bool) {
		srv := newIdleServer(t, http1, 760*time.Millisecond, time.Second, "")
		c, tr := idleClient(t, learn)

		// The server closes each idle connection after 1 s: once is not
		// enough to act on, twice confirms it.
		for i, id := range []string{"1", "2"} {
			require.NoError(t, idlePost(t, c, srv.URL, id))
			require.True(t, poll(5*time.Second, func() bool { return tr.Stats().IdleCloses == int64(i+1) }), "idle close seen")
		}
		require.NoError(t, idlePost(t, c, srv.URL, "3"))
		waitOut(850 * time.Millisecond) // the idle age under test: past 1 s less the margin, and past dropAfter
		err := idlePost(t, c, srv.URL, "4")
		if learn {
			require.NoError(t, err)
			assert.EqualValues(t, 0, srv.dropped(), "requests crossed by a close")
			assert.EqualValues(t, 4, tr.Stats().Dials)
			if st := tr.Stats(); st.ConnsRetiredIdle == 0 {
				// A loaded machine ran the POST after the server's 1 s:
				// its close came first, and was seen before the write.
				assert.EqualValues(t, 3, st.IdleCloses, "the connection neither retired nor seen closed")
			} else {
				assert.EqualValues(t, 1, st.ConnsRetiredIdle)
			}
		} else if srv.dropped() == 1 {
			require.Error(t, err, "the POST crossed the close")
			assert.EqualValues(t, 0, tr.Stats().ConnsRetiredIdle)
		} else {
			// The sleep outlasted the server's timeout: the close came
			// first, and the check before the write saw it.
			require.NoError(t, err)
			assert.EqualValues(t, 3, tr.Stats().IdleCloses, "every close seen, by net/http or before the write")
		}
	})
}

// A "Keep-Alive: timeout=N" header is honoured before any close: the
// server announces 2 s, and a connection idle for longer than 2 s less
// the margin is not written on, even though nothing was ever closed.
func TestIdleTimeoutAnnouncedByKeepAlive(t *testing.T) {
	t.Parallel() // sleeps through idle periods; no server here closes on its own
	forLearning(t, func(t *testing.T, learn bool) {
		// Requests arriving after 1 s of idleness cross the close;
		// the server never closes an idle connection by itself.
		srv := newIdleServer(t, http1, time.Second, 0, "timeout=2, max=100")
		c, tr := idleClient(t, learn)

		require.NoError(t, idlePost(t, c, srv.URL, "1"))
		waitOut(1800 * time.Millisecond) // past 2 s less the margin, and past the server's 1 s
		err := idlePost(t, c, srv.URL, "2")
		if learn {
			require.NoError(t, err)
			assert.EqualValues(t, 0, srv.dropped())
			assert.EqualValues(t, 1, tr.Stats().ConnsRetiredIdle)
		} else {
			require.Error(t, err)
			assert.EqualValues(t, 1, srv.dropped())
		}
	})
}

// A connection used again within the learned timeout is reused: learning
// retires only what the server is about to close.
func TestIdleTimeoutKeepsFreshConnections(t *testing.T) {
	srv := newIdleServer(t, http1, time.Hour, 0, "timeout=2")
	c, tr := newTestClient(t)
	for i := range 20 {
		require.NoError(t, idlePost(t, c, srv.URL, strings.Repeat("x", i+1)))
	}
	s := tr.Stats()
	assert.EqualValues(t, 1, s.Dials)
	assert.EqualValues(t, 0, s.ConnsRetiredIdle)
	assert.Equal(t, 1, srv.Connections())
}

// The learned timeout keeps the shortest value seen while it is fresh,
// takes a longer one once stale, and doubles back after idleTTL.
func TestHostIdleLearnsShortestAndDecays(t *testing.T) {
	var h hostIdle
	t0 := int64(time.Hour) // a monotonic reading
	assert.Zero(t, h.limit(t0))
	h.set(int64(2*time.Second), t0)
	assert.Equal(t, int64(2*time.Second-idleMargin), h.limit(t0))
	h.set(int64(5*time.Second), t0+int64(time.Second)) // longer, while fresh: ignored
	assert.Equal(t, int64(2*time.Second-idleMargin), h.limit(t0+int64(time.Second)))
	h.set(int64(time.Second), t0+int64(2*time.Second)) // shorter: kept
	t1 := t0 + int64(2*time.Second)
	assert.Equal(t, int64(time.Second-idleMargin), h.limit(t1))
	h.set(int64(400*time.Millisecond), t1) // under twice the margin: half of it
	assert.Equal(t, int64(200*time.Millisecond), h.limit(t1))

	// Unconfirmed, it holds for idleTTL; from then on it doubles each
	// idleTTL, until it no longer fits a time.Duration.
	assert.Equal(t, int64(200*time.Millisecond), h.limit(t1+int64(idleTTL)-1))
	assert.Equal(t, int64(800*time.Millisecond-idleMargin), h.limit(t1+int64(idleTTL)))
	assert.Equal(t, int64(1600*time.Millisecond-idleMargin), h.limit(t1+int64(2*idleTTL)+1))
	assert.Zero(t, h.limit(t1+int64(40*idleTTL)), "long unconfirmed: no limit")

	// Stale, a longer value is taken as it is.
	h.set(int64(3*time.Second), t1+int64(2*idleTTL))
	assert.Equal(t, int64(3*time.Second-idleMargin), h.limit(t1+int64(2*idleTTL)))
}

// Over TLS, an HTTP/1 connection is retired like a plain one; an HTTP/2
// connection never is: its server announces an idle close with GOAWAY,
// and a refused write would fail the streams it carries.
func TestIdleTimeoutOverTLS(t *testing.T) {
	t.Parallel() // sleeps through idle periods; no server here closes on its own
	for _, p := range []proto{https1, http2} {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			srv, tlsOpt := newServer(t, p, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, r.Proto)
			}))
			c, tr := newTestClient(t, tlsOpt)
			spoken := func() string {
				_, body, err := get(t, c, srv.URL)
				require.NoError(t, err)
				return body
			}
			want := map[proto]string{https1: "HTTP/1.1", http2: "HTTP/2.0"}[p]
			require.Equal(t, want, spoken())
			// As if the server had been seen to close idle connections
			// after 1 s (Go's HTTP/2 server sends no Keep-Alive header).
			tr.hosts.forURL(mustParseURL(t, srv.URL)).idle.set(int64(time.Second), monotonic())
			waitOut(800 * time.Millisecond) // past 1 s less the margin
			require.Equal(t, want, spoken())
			if p == http2 {
				assert.Equal(t, 1, srv.Connections(), "the HTTP/2 connection is kept")
				assert.EqualValues(t, 0, tr.Stats().ConnsRetiredIdle)
			} else {
				assert.Equal(t, 2, srv.Connections(), "the idle HTTP/1 connection is retired")
				assert.EqualValues(t, 1, tr.Stats().ConnsRetiredIdle)
			}
		})
	}
}

// A body net/http cannot rewind (no GetBody) is sent again, whole, when
// the connection it was given is retired for its idle age.
func TestIdleTimeoutResendsUnrewindableBody(t *testing.T) {
	t.Parallel() // sleeps through idle periods; no server here closes on its own
	srv := newIdleServer(t, http1, time.Second, 0, "timeout=2")
	c, tr := newTestClient(t)
	require.NoError(t, idlePost(t, c, srv.URL, "1"))
	waitOut(1800 * time.Millisecond)
	req, err := http.NewRequest(http.MethodPost, srv.URL, io.NopCloser(&faultBody{n: 10000, seed: 7}))
	require.NoError(t, err)
	require.Nil(t, req.GetBody)
	req.Header.Set("X-Req-Id", "2")
	resp, err := c.Do(req)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, faultEcho(http.MethodPost, "2", faultBodySum(10000, 7)), string(b))
	assert.EqualValues(t, 0, srv.dropped())
	assert.EqualValues(t, 1, tr.Stats().ConnsRetiredIdle)
}

// closedUnderneath sees a close, a reset or unasked data that net/http's
// read loop has not read yet, and nothing on an open, quiet connection.
func TestClosedUnderneath(t *testing.T) {
	pair := tcpPairs(t)
	seen := func(c net.Conn) bool {
		return poll(5*time.Second, func() bool { closed, _ := closedUnderneath(c); return closed })
	}

	c, s := pair()
	closed, _ := closedUnderneath(c)
	assert.False(t, closed, "open and quiet")
	s.Close()
	assert.True(t, seen(c), "closed by the peer")
	_, err := closedUnderneath(c)
	assert.ErrorIs(t, err, io.EOF)

	c, s = pair()
	_, err = s.Write([]byte("HTTP/1.1 408 Request Timeout\r\n\r\n"))
	require.NoError(t, err)
	assert.True(t, seen(c), "data nobody asked for")

	c, s = pair()
	s.(*net.TCPConn).SetLinger(0)
	s.Close()
	assert.True(t, seen(c), "reset by the peer")
	b := make([]byte, 1)
	_, err = c.Read(b) // the peek left the reset for the reader
	assert.Error(t, err)
}

// forLearning runs f with idle-timeout learning on and off, as parallel
// subtests.
func forLearning(t *testing.T, f func(t *testing.T, learn bool)) {
	for _, learn := range []bool{true, false} {
		t.Run(map[bool]string{true: "learning", false: "WithoutIdleLearning"}[learn], func(t *testing.T) {
			t.Parallel() // each has its own server and client
			f(t, learn)
		})
	}
}

// idleClient is a client with idle-timeout learning on or off.
func idleClient(t *testing.T, learn bool) (*http.Client, *Transport) {
	var opts []Option
	if !learn {
		opts = append(opts, WithoutIdleLearning())
	}
	return newTestClient(t, opts...)
}

// A connection that refused a write reports errConnRetired from the read
// that fails once net/http has closed it, not "use of closed network
// connection": net/http can hand the read loop's error to the request
// before the write's, and resendRefused must still know the request was
// not written.
func TestRefusedConnReadSaysRetired(t *testing.T) {
	pair := tcpPairs(t)
	for _, refused := range []bool{true, false} {
		nc, _ := pair()
		c := &conn{Conn: nc}
		c.refused.Store(refused)
		require.NoError(t, c.Close())
		_, err := c.Read(make([]byte, 1))
		if refused {
			assert.ErrorIs(t, err, errConnRetired)
		} else {
			assert.ErrorIs(t, err, net.ErrClosed)
		}
	}
}

// tcpPairs returns a function that makes connected loopback TCP pairs,
// closed when the test ends.
func tcpPairs(t *testing.T) func() (client, server net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return func() (client, server net.Conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		s, err := ln.Accept()
		require.NoError(t, err)
		t.Cleanup(func() { c.Close(); s.Close() })
		return c, s
	}
}
