// This file holds Transport and its construction: the tuned http.Transport
// underneath (pool, dialer, timeouts, HTTP/2 health checks) and the dialer
// that counts connections and runs the dial gate and the lifetime stamp.
// A request's path through the Transport starts at RoundTrip, in retry.go.

package keepalive

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

// Transport is an http.RoundTripper that sends requests over a tuned,
// pooled http.Transport and retries the ones that failed and may safely be
// sent again (see the package documentation for the rules).
//
// A Transport holds a pool of connections: create one and reuse it, rather
// than one per request. It is safe for concurrent use by multiple
// goroutines. The zero value is not usable; call NewTransport.
type Transport struct {
	base   *http.Transport
	policy policy
	opts   options
	budget *retryBudget // budget.go; nil: off
	hosts  *hostTable   // host.go: counters, budget, breaker and dial gate of each host
	reads  *readWatch   // readwatch.go: the read timeout of response bodies; nil: none

	inner        http.RoundTripper // what attempts are sent through when WithAttemptTransport wraps roundTripBase; nil: roundTripBase
	contextHooks bool              // attempts carry their number or a connection trace in their context
}

var _ http.RoundTripper = (*Transport)(nil)

// NewTransport returns a Transport configured by opts over the defaults. It
// returns an error, naming each invalid option, if any option is invalid.
func NewTransport(opts ...Option) (*Transport, error) {
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	t := &Transport{opts: o, policy: newPolicy(o), budget: newRetryBudget(o.budget), reads: newReadWatch(o.readTimeout)}
	t.hosts = newHostTable(t.newHostState)
	t.base = t.newBase()
	if len(o.attemptWraps) > 0 {
		var rt http.RoundTripper = roundTripperFunc(t.roundTripBase) // lifetime.go
		for _, wrap := range o.attemptWraps {
			if rt = wrap(rt); rt == nil {
				return nil, &OptionError{Option: "WithAttemptTransport", Reason: "wrap returned a nil RoundTripper"}
			}
		}
		t.inner = rt
	}
	t.contextHooks = len(o.attemptWraps) > 0 || o.observer.TraceConns
	return t, nil
}

// CloseIdleConnections closes the idle connections of the pool. Connections
// in use are not interrupted. The Transport never calls it by itself.
func (t *Transport) CloseIdleConnections() { t.base.CloseIdleConnections() }

// Private implementation past this point.

// newHostState makes the state of a host the first time it is met.
func (t *Transport) newHostState(key string) *hostState {
	h := &hostState{key: key}
	if t.opts.noHTTP2 {
		h.gate.proto.Store(protoHTTP1)
	}
	t.budget.init(&h.budget)
	if cfg := t.opts.breaker; cfg != nil {
		h.breaker = newHostBreaker(*cfg, key, t.observeBreakerChange)
	}
	return h
}

func (t *Transport) newBase() *http.Transport {
	o := &t.opts
	dialer := &net.Dialer{
		Timeout: o.connectTimeout,
		KeepAliveConfig: net.KeepAliveConfig{
			Enable:   true,
			Idle:     tcpKeepAliveIdle,
			Interval: tcpKeepAliveInterval,
			Count:    tcpKeepAliveCount,
		},
	}
	var protocols *http.Protocols
	if o.noHTTP2 {
		protocols = new(http.Protocols)
		protocols.SetHTTP1(true)
	}
	return &http.Transport{
		Protocols: protocols, // nil: HTTP/1 and HTTP/2
		Proxy:     o.proxy,
		// Counting in the dialer costs two atomic adds per connection, where
		// an httptrace.ClientTrace would cost allocations on every request.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			h := t.hosts.forAddr(addr)
			c, err := h.gateHost().dial(ctx, dialHoldMax, func() (net.Conn, error) { // dialgate.go
				if o.dial == nil {
					return dialer.DialContext(ctx, network, addr)
				}
				dctx := ctx
				if o.connectTimeout > 0 {
					var cancel context.CancelFunc
					dctx, cancel = context.WithTimeout(ctx, o.connectTimeout)
					defer cancel()
				}
				return o.dial(dctx, network, addr)
			})
			if err == errDialNotNeeded {
				return nil, err
			}
			wc := t.wrapConn(c, h)
			t.observeDial(h, addr, err, wc) // events.go
			if err != nil {
				return nil, &dialError{err: err}
			}
			return wc, nil
		},
		// A custom DialContext or TLS config turns HTTP/2 off unless forced.
		ForceAttemptHTTP2:     true,
		TLSClientConfig:       o.tlsConfig,
		TLSHandshakeTimeout:   o.tlsHandshakeTimeout,
		MaxIdleConns:          o.maxIdleConns,
		MaxIdleConnsPerHost:   o.maxIdleConnsPerHost,
		MaxConnsPerHost:       o.maxConnsPerHost,
		IdleConnTimeout:       o.idleConnTimeout,
		ResponseHeaderTimeout: o.readTimeout,
		ExpectContinueTimeout: time.Second,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: http2PingInterval,
			PingTimeout:     http2PingTimeout,
		},
	}
}

// conn is a connection the Transport dialed, with all it attaches to one,
// in one wrapper: the dial gate's count and serial dial (gate; dialgate.go),
// the write deadline (d), the lifetime (expires; lifetime.go) and the idle
// age (idle.go). A connection that needs none of them is not wrapped.
type conn struct {
	net.Conn
	gate   *gateHost // nil: ungated
	closed atomic.Bool

	// The dial gate's serial dial of an https host (dialgate.go): the
	// connection ends it once its TLS handshake is done, or when closed;
	// it is counted in Stats.Dials once it carries a request, and in
	// Stats.DiscardedDials if it is closed before.
	serialGate atomic.Pointer[gateHost] // nil: none, or ended
	uncounted  atomic.Bool

	// Idle-timeout learning (idle.go); host is nil when off. The times are
	// monotonic() readings: the last two reads that returned data, and the
	// last write. proto is what the connection speaks, as far as known
	// (protoHTTP1: plain text, or TLS that negotiated it; dialgate.go).
	t                      *Transport
	host                   *hostState
	readAt, prevRead, wrAt atomic.Int64
	proto                  atomic.Int32

	// The write deadline bounds every write by the read timeout: a write
	// that makes no progress for it (the server stopped reading an HTTP/1
	// upload, or any HTTP/2 frame) fails with a *WriteTimeoutError, and
	// net/http closes the connection. net/http's header timeout starts
	// only once the request is written, so nothing else bounds a write. An
	// idle connection only reads, so the deadline never fails one. An
	// HTTP/2 stream that the server gives no flow-control window never
	// reaches the connection: the upload watch of attempt.go covers that.
	//
	// The deadline is moved only when less than d of it is left, to d+d/8
	// from now: a write gets between d and d+d/8, and a busy connection
	// pays a clock reading per write and a poller update per d/8, not per
	// write.
	d     time.Duration // 0: no write deadline
	until atomic.Int64  // the deadline set, as a monotonic() reading; 0: none

	expires time.Time   // zero: no lifetime
	retired atomic.Bool // a request asked for the connection to close
	refused atomic.Bool // a request was given it after that: its writes fail
}

// wrapConn gives a new connection of host h the write deadline, the
// lifetime and the idle age, in the gate's wrapper if the dial gate made
// one. nc may be nil (a failed dial).
func (t *Transport) wrapConn(nc net.Conn, h *hostState) net.Conn {
	if nc == nil {
		return nil
	}
	d, life := t.opts.readTimeout, t.opts.connMaxLifetime
	c, ok := nc.(*conn)
	if !ok {
		c = &conn{Conn: nc}
	}
	c.d = d
	c.t = t
	if !h.overflow { // the overflow state mixes hosts: nothing to learn
		c.host = h
		if h.gate.proto.Load() == protoHTTP1 {
			// WithoutHTTP2, or a host whose connections negotiated
			// HTTP/1: TLS or not, it speaks HTTP/1.
			c.proto.Store(protoHTTP1)
		}
	}
	if life > 0 {
		jitter := (rand.Float64()*2 - 1) * connLifetimeJitter
		c.expires = time.Now().Add(life + time.Duration(jitter*float64(life)))
	}
	return c
}

// Write refuses the request of a connection that already carried its last
// one (lifetime.go): nothing is written, so net/http sends the request
// again on a new connection (its nothingWrittenError path), or
// roundTripBase or the retry loop does (neverSent in policy.go).
//
// It also refuses the first write of a request on an HTTP/1 connection
// idle for longer than its host's learned idle timeout allows (idle.go),
// the same way: the server is about to close it, or has.
func (c *conn) Write(p []byte) (int, error) {
	if c.refused.Load() {
		return 0, errConnRetired // net/http closes the connection on a write error
	}
	now := monotonic()
	if c.host != nil {
		if c.idleTooLong(p, now) {
			return 0, errConnRetired
		}
		c.wrAt.Store(now)
	}
	if c.d <= 0 {
		return c.Conn.Write(p)
	}
	if c.until.Load()-now < int64(c.d) {
		until := now + int64(c.d+c.d/8)
		if err := c.SetWriteDeadline(clockStart.Add(time.Duration(until))); err != nil {
			return 0, err
		}
		c.until.Store(until)
	}
	n, err := c.Conn.Write(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = &WriteTimeoutError{Limit: c.d}
	}
	return n, err
}

// idleTooLong reports whether p, about to be written at now, is the first
// write of a request on an HTTP/1 connection that has been idle for longer
// than its host's learned idle timeout allows (idle.go), and retires the
// connection if so.
func (c *conn) idleTooLong(p []byte, now int64) bool {
	w := c.wrAt.Load()
	if w == 0 { // the first write: a request in plain text, or a TLS handshake
		if len(p) > 0 && p[0] != tlsHandshakeRecord && !bytes.HasPrefix(p, []byte("CONNECT ")) {
			c.proto.Store(protoHTTP1)
		}
		return false
	}
	r := c.readAt.Load()
	if r <= w || c.proto.Load() != protoHTTP1 {
		return false // not the first write since a response, or not HTTP/1
	}
	age := now - r
	if limit := c.host.idle.limit(now); limit == 0 || age <= limit {
		// Within the learned timeout, or none learned: the server may
		// still have closed it, a moment ago. Over TLS the close comes
		// after an alert, which the check sees as data: retired too.
		if age <= int64(idlePeekAfter) {
			return false
		}
		closed, err := closedUnderneath(c.Conn)
		if !closed {
			return false
		}
		if err != nil { // an idle close, seen before net/http saw it
			c.t.observeIdleClose(c.host, time.Duration(age), err)
		}
	}
	if !c.refused.Swap(true) {
		c.host.counters.connsRetiredIdle.Add(1)
	}
	return true
}

// tlsHandshakeRecord is the first byte a TLS client writes.
const tlsHandshakeRecord = 0x16

// Read notes when the connection last read data, and learns its host's
// idle timeout when its server closes it while idle (idle.go).
//
// A connection that refused a write (Write) has had nothing of its request
// written. net/http closes it on the refusal, and its read loop, waiting
// for the response, then fails with net.ErrClosed; that error can reach
// the request before the write's does, so it says the same: without it, a
// request whose body cannot be rewound would fail with "use of closed
// network connection" instead of being sent again (seen in the matrix's
// idleclose cells under load).
func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && c.refused.Load() && errors.Is(err, net.ErrClosed) {
		err = errConnRetired
	}
	if c.host == nil {
		return n, err
	}
	now := monotonic()
	if n > 0 {
		c.prevRead.Store(c.readAt.Swap(now))
	} else if err != nil {
		c.readFailed(err, now)
	}
	return n, err
}

// readFailed learns from a read that failed at now: with nothing written
// since the connection's last response, its server closed it while idle.
func (c *conn) readFailed(err error, now int64) {
	r := c.readAt.Load()
	if now-r < int64(idleAlertGap) {
		r = c.prevRead.Load() // a TLS alert or a GOAWAY came with the close
	}
	if r == 0 || c.wrAt.Load() > r || c.refused.Load() {
		return // nothing read yet, a request was in flight, or the Transport retired it
	}
	c.t.observeIdleClose(c.host, time.Duration(now-r), err)
}

// carry counts a connection of a serial dial in Stats.Dials the first
// time it carries a request.
func (c *conn) carry() {
	if c.uncounted.CompareAndSwap(true, false) && c.host != nil {
		c.host.counters.dials.Add(1)
	}
}

// endSerial ends the host's serial dial that made c, once.
func (c *conn) endSerial() {
	if g := c.serialGate.Swap(nil); g != nil {
		g.endSerial()
	}
}

// Close leaves the dial gate's count once; a connection of a serial dial
// that never carried a request is counted as discarded.
func (c *conn) Close() error {
	if c.gate != nil && c.closed.CompareAndSwap(false, true) {
		c.gate.conns.Add(-1)
		c.endSerial()
		if c.uncounted.CompareAndSwap(true, false) && c.host != nil {
			c.host.counters.discardedDials.Add(1)
		}
	}
	return c.Conn.Close()
}

// NetConn returns the underlying connection, as tls.Conn's NetConn does.
func (c *conn) NetConn() net.Conn { return c.Conn }

// CloseWrite half-closes the connection, for the bodies of 101 Switching
// Protocols responses (http.Response.Body is then an io.ReadWriteCloser).
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// asConn returns the conn under c, if there is one: c itself, or the
// connection under TLS.
func asConn(c net.Conn) *conn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	wc, _ := c.(*conn)
	return wc
}

// roundTripperFunc makes a method value a RoundTripper.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
