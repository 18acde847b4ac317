package keepalive

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// idleServer is a fault server whose connections close like a real
// server's idle timeout, with the race that loses requests made certain:
// a request arriving on a connection idle for dropAfter or longer is read
// and the connection closed without an answer, as if the server's close
// had crossed it on the wire; a connection idle for closeAfter is closed.
// announce, if set, is sent as a Keep-Alive header.
type idleServer struct {
	*faultServer
	dropped atomic.Int64 // requests read and not answered
	getBody int          // the length of the body of a GET's response; 0: an echo, as for other methods
}

func newIdleServer(t *testing.T, dropAfter, closeAfter time.Duration, announce string) *idleServer {
	s := &idleServer{}
	s.faultServer = newFaultServer(t, func(fc *faultConn) {
		var idleSince time.Time
		for {
			if !idleSince.IsZero() {
				fc.Conn.SetReadDeadline(idleSince.Add(closeAfter))
			}
			r, err := fc.readRequest()
			if err != nil {
				return // the idle close (or the client's)
			}
			if !idleSince.IsZero() && time.Since(idleSince) >= dropAfter {
				s.dropped.Add(1)
				return
			}
			var hdr []string
			if announce != "" {
				hdr = append(hdr, "Keep-Alive: "+announce)
			}
			body := faultEcho(r.Method, r.Header.Get("X-Req-Id"), r.bodySum)
			if r.Method == http.MethodGet && s.getBody > 0 {
				body = strings.Repeat("x", s.getBody)
			}
			if fc.reply(http.StatusOK, body, hdr...) != nil {
				return
			}
			idleSince = time.Now()
		}
	})
	return s
}

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
	forLearning(t, func(t *testing.T, learn bool) {
		srv := newIdleServer(t, 760*time.Millisecond, time.Second, "")
		c, tr := idleClient(t, learn)

		// The server closes each idle connection after 1 s: once is not
		// enough to act on, twice confirms it.
		for i, id := range []string{"1", "2"} {
			require.NoError(t, idlePost(t, c, srv.url("/"), id))
			require.True(t, pollUntil(5*time.Second, func() bool { return tr.Stats().IdleCloses == int64(i+1) }), "idle close seen")
		}
		require.NoError(t, idlePost(t, c, srv.url("/"), "3"))
		time.Sleep(850 * time.Millisecond) // the idle age under test: past 1 s less the margin, and past dropAfter
		err := idlePost(t, c, srv.url("/"), "4")
		if learn {
			require.NoError(t, err)
			assert.EqualValues(t, 0, srv.dropped.Load(), "requests crossed by a close")
			assert.EqualValues(t, 1, tr.Stats().ConnsRetiredIdle)
			assert.EqualValues(t, 4, tr.Stats().Dials)
		} else if srv.dropped.Load() == 1 {
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

// pollUntil checks cond every millisecond until it holds or limit passes.
func pollUntil(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// A "Keep-Alive: timeout=N" header is honoured before any close: the
// server announces 2 s, and a connection idle for longer than 2 s less
// the margin is not written on, even though nothing was ever closed.
func TestIdleTimeoutAnnouncedByKeepAlive(t *testing.T) {
	t.Parallel() // sleeps through idle periods; no server here closes on its own
	forLearning(t, func(t *testing.T, learn bool) {
		// Requests arriving after 1 s of idleness cross the close;
		// the server never closes an idle connection by itself.
		srv := newIdleServer(t, time.Second, time.Hour, "timeout=2, max=100")
		c, tr := idleClient(t, learn)

		require.NoError(t, idlePost(t, c, srv.url("/"), "1"))
		time.Sleep(1800 * time.Millisecond) // past 2 s less the margin, and past the server's 1 s
		err := idlePost(t, c, srv.url("/"), "2")
		if learn {
			require.NoError(t, err)
			assert.EqualValues(t, 0, srv.dropped.Load())
			assert.EqualValues(t, 1, tr.Stats().ConnsRetiredIdle)
		} else {
			require.Error(t, err)
			assert.EqualValues(t, 1, srv.dropped.Load())
		}
	})
}

// A connection used again within the learned timeout is reused: learning
// retires only what the server is about to close.
func TestIdleTimeoutKeepsFreshConnections(t *testing.T) {
	srv := newIdleServer(t, time.Hour, time.Hour, "timeout=2")
	tr, err := NewTransport()
	require.NoError(t, err)
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr}
	for i := range 20 {
		require.NoError(t, idlePost(t, c, srv.url("/"), strings.Repeat("x", i+1)))
	}
	s := tr.Stats()
	assert.EqualValues(t, 1, s.Dials)
	assert.EqualValues(t, 0, s.ConnsRetiredIdle)
	assert.EqualValues(t, 1, srv.accepted.Load())
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
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "HTTP/1.1", true: "HTTP/2"}[h2], func(t *testing.T) {
			srv, conns, tlsOpt := tlsCountingServer(t, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, r.Proto)
			}))
			tr, err := NewTransport(tlsOpt)
			require.NoError(t, err)
			t.Cleanup(tr.CloseIdleConnections)
			c := &http.Client{Transport: tr}
			get := func() string {
				resp, err := c.Get(srv.URL)
				require.NoError(t, err)
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				require.NoError(t, err)
				return string(b)
			}
			want := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]
			require.Equal(t, want, get())
			// As if the server had been seen to close idle connections
			// after 1 s (Go's HTTP/2 server sends no Keep-Alive header).
			u, _ := url.Parse(srv.URL)
			tr.hosts.forURL(u).idle.set(int64(time.Second), monotonic())
			time.Sleep(800 * time.Millisecond) // past 1 s less the margin
			require.Equal(t, want, get())
			if h2 {
				assert.EqualValues(t, 1, conns.Load(), "the HTTP/2 connection is kept")
				assert.EqualValues(t, 0, tr.Stats().ConnsRetiredIdle)
			} else {
				assert.EqualValues(t, 2, conns.Load(), "the idle HTTP/1 connection is retired")
				assert.EqualValues(t, 1, tr.Stats().ConnsRetiredIdle)
			}
		})
	}
}

// A body net/http cannot rewind (no GetBody) is sent again, whole, when
// the connection it was given is retired for its idle age.
func TestIdleTimeoutResendsUnrewindableBody(t *testing.T) {
	t.Parallel() // sleeps through idle periods; no server here closes on its own
	srv := newIdleServer(t, time.Second, time.Hour, "timeout=2")
	tr, err := NewTransport()
	require.NoError(t, err)
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr}
	require.NoError(t, idlePost(t, c, srv.url("/"), "1"))
	time.Sleep(1800 * time.Millisecond)
	req, err := http.NewRequest(http.MethodPost, srv.url("/"), io.NopCloser(&faultBody{n: 10000, seed: 7}))
	require.NoError(t, err)
	require.Nil(t, req.GetBody)
	req.Header.Set("X-Req-Id", "2")
	resp, err := c.Do(req)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, faultEcho(http.MethodPost, "2", faultBodySum(10000, 7)), string(b))
	assert.EqualValues(t, 0, srv.dropped.Load())
	assert.EqualValues(t, 1, tr.Stats().ConnsRetiredIdle)
}

// closedUnderneath sees a close, a reset or unasked data that net/http's
// read loop has not read yet, and nothing on an open, quiet connection.
func TestClosedUnderneath(t *testing.T) {
	pair := tcpPairs(t)
	seen := func(c net.Conn) bool {
		return pollUntil(5*time.Second, func() bool { closed, _ := closedUnderneath(c); return closed })
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

// forLearning runs f with idle-timeout learning on and off.
func forLearning(t *testing.T, f func(t *testing.T, learn bool)) {
	t.Run("learning", func(t *testing.T) { f(t, true) })
	t.Run("WithoutIdleLearning", func(t *testing.T) { f(t, false) })
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
