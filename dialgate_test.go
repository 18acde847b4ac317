package keepalive

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGateIsSharedByAURLHostAndItsDialAddress(t *testing.T) {
	h := newTestHostTable()
	parse := func(s string) *url.URL {
		u, err := url.Parse(s)
		require.NoError(t, err)
		return u
	}
	plain := h.forURL(parse("http://example.com/x")).gateHost()
	require.NotNil(t, plain)
	assert.Same(t, plain, h.forURL(parse("http://example.com:80/y")).gateHost())
	assert.Same(t, plain, h.forAddr("example.com:80").gateHost())
	tls := h.forURL(parse("https://example.com/")).gateHost()
	assert.NotSame(t, plain, tls)
	assert.Same(t, tls, h.forAddr("example.com:443").gateHost())
}

func TestGateLeavesHostsPastTheLimitUngated(t *testing.T) {
	h := newTestHostTable()
	for i := range HostStatsLimit {
		require.NotNil(t, h.forAddr(net.JoinHostPort("10.0.0.1", strconv.Itoa(i+1))).gateHost())
	}
	assert.Nil(t, h.forAddr("10.0.0.2:1").gateHost())
	assert.NotNil(t, h.forAddr("10.0.0.1:1").gateHost(), "known hosts stay gated")
}

// acceptCounter is a server that counts the connections made to it and
// closes each at once.
func acceptCounter(t *testing.T) (addr string, accepted *atomic.Int64) {
	srv := newFaultServer(t, func(*faultConn) {})
	return srv.addr, &srv.accepted
}

func TestGateHold(t *testing.T) {
	dialer := &net.Dialer{}
	setup := func(t *testing.T, busy, open int64) (*gateHost, string, *atomic.Int64) {
		addr, accepted := acceptCounter(t)
		h := &gateHost{}
		h.busy.Store(busy)
		h.conns.Store(open)
		return h, addr, accepted
	}
	dial := func(h *gateHost, holdMax time.Duration, w *gateWatch, addr string) (net.Conn, error) {
		ctx := context.Background()
		c, g, err := h.dial(ctx, w, addr, new(counters), holdMax, func() (net.Conn, error) { return dialer.DialContext(ctx, "tcp", addr) })
		if err != nil {
			return nil, err
		}
		var gate connGate
		if g != nil {
			gate = g
		}
		return newConn(c, gate, addr, nil, nil, 0, 0), nil
	}
	marked := func() *gateWatch { return &gateWatch{note: make(chan struct{}, 1)} }

	t.Run("a dial whose request gets another connection never connects", func(t *testing.T) {
		h, addr, accepted := setup(t, 1, 1) // one request, one connection about to come free
		m := marked()
		errc := make(chan error, 1)
		go func() {
			c, err := dial(h, time.Minute, m, addr) // the wait must not end before gotConn
			if c != nil {
				c.Close()
			}
			errc <- err
		}()
		require.True(t, poll(10*time.Second, func() bool { return h.dialing.Load() != 0 }), "the dial never waited")
		m.gotConn(protoUnknown)
		require.ErrorIs(t, <-errc, errDialNotNeeded)
		assert.Zero(t, accepted.Load())
		assert.EqualValues(t, 1, h.conns.Load(), "the dropped dial is not counted")
	})
	t.Run("a dial that waits in vain connects", func(t *testing.T) {
		h, addr, accepted := setup(t, 1, 1)
		c, err := dial(h, dialHoldMax, marked(), addr)
		require.NoError(t, err)
		assert.EqualValues(t, 2, h.conns.Load())
		require.NoError(t, c.Close())
		_ = c.Close()
		assert.EqualValues(t, 1, h.conns.Load(), "closing twice counts once")
		assert.True(t, poll(10*time.Second, func() bool { return accepted.Load() == 1 }))
	})
	t.Run("a dial when every connection is busy does not wait", func(t *testing.T) {
		h, addr, _ := setup(t, 2, 1)
		m := marked()
		c, err := dial(h, time.Minute, m, addr)
		require.NoError(t, err)
		c.Close()
		assert.Zero(t, m.gots.Load())
		assert.Zero(t, h.dialing.Load())
	})
	t.Run("an unwatched dial does not wait", func(t *testing.T) {
		h, addr, accepted := setup(t, 0, 5)
		c, err := dial(h, time.Minute, nil, addr)
		require.NoError(t, err)
		c.Close()
		assert.True(t, poll(10*time.Second, func() bool { return accepted.Load() == 1 }))
	})
	t.Run("a request that already has a connection dials at once", func(t *testing.T) {
		h, addr, _ := setup(t, 1, 1)
		m := marked()
		m.gotConn(protoUnknown) // net/http retries it on a new connection
		c, err := dial(h, time.Minute, m, addr)
		require.NoError(t, err)
		c.Close()
	})
}

// TestGateCountsReturnToZero checks the gate's bookkeeping over every way
// an attempt ends: a body read to the end, a body closed early, no body,
// a transport error, and discarded retries.
func TestGateCountsReturnToZero(t *testing.T) {
	var n atomic.Int64
	srv := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/flaky":
			if n.Add(1)%2 == 1 {
				w.WriteHeader(503)
				io.WriteString(w, "busy")
				return
			}
		case "/hangup":
			c, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				c.Close()
			}
			return
		}
		io.WriteString(w, strings.Repeat("x", 1000))
	})
	c, tr := newTestClient(t, fastRetries, WithMaxRetries(1))
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 50 {
				switch (i + j) % 5 {
				case 0:
					resp, err := c.Get(srv.URL + "/read")
					if assert.NoError(t, err) {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				case 1:
					resp, err := c.Get(srv.URL + "/close-early")
					if assert.NoError(t, err) {
						resp.Body.Close()
					}
				case 2:
					resp, err := c.Head(srv.URL + "/head")
					if assert.NoError(t, err) {
						resp.Body.Close()
					}
				case 3:
					_, err := c.Get(srv.URL + "/hangup")
					assert.Error(t, err)
				case 4:
					resp, err := c.Get(srv.URL + "/flaky")
					if assert.NoError(t, err) {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}
			}
		}()
	}
	wg.Wait()
	resp, err := c.Get(srv.URL + "/read") // leaves one idle connection
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	h := tr.hosts.forURL(mustParseURL(t, srv.URL)).gateHost()
	assert.Zero(t, h.busy.Load(), "every attempt left")
	assert.Zero(t, h.dialing.Load())
	assert.Positive(t, h.conns.Load())
	tr.CloseIdleConnections()
	assert.True(t, poll(10*time.Second, func() bool { return h.conns.Load() == 0 }), "every connection closed: %d", h.conns.Load())
}

// A serial dial cancelled (CloseIdleConnections cancels dials in
// progress) fails with its error, and lets the next waiter dial: it never
// returns no connection and no error.
func TestGateSerialDialCancelled(t *testing.T) {
	h := &gateHost{}
	w := &gateWatch{gate: h, note: make(chan struct{}, 1), serial: true}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c, g, err := h.dial(ctx, w, "127.0.0.1:1", new(counters), dialHoldMax, func() (net.Conn, error) { return nil, ctx.Err() })
	require.ErrorIs(t, err, context.Canceled)
	assert.Nil(t, c)
	assert.Nil(t, g)
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.Empty(t, h.serial, "the serial dial ended")
}
