// This file holds Transport and its construction: the tuned http.Transport
// underneath (pool, dialer, timeouts, HTTP/2 health checks), the dialer
// that counts connections, runs the dial gate and wraps each connection
// (conn.go), and the Transport's Stats. A request's path through the
// Transport starts at RoundTrip, in retry.go.

package keepalive

import (
	"context"
	"crypto/tls"
	"errors"
	"hash/maphash"
	"net"
	"net/http"
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
	budget *retryBudget // nil: off
	hosts  *hostTable   // the state of each host: counters, budget, breaker, dial gate, idle timeout, pause
	hostc  hostConfig   // what every host shares
	reads  *readWatch   // the read timeout of response bodies; nil: none
	dialer *net.Dialer  // the tuned dialer, unless WithDialContext

	resolve      resolveFunc   // resolves the names of balanced hosts; nil: balancing is off
	resolveEvery time.Duration // how often a balanced name is resolved again; tests shorten it

	inner http.RoundTripper // what attempts are sent through when WithAttemptTransport wraps roundTripInner; nil: roundTripBase
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
	t.hostc = hostConfig{
		noPause:       o.noHostPause,
		maxRetryAfter: o.maxRetryAfter,
		rateLimitKey:  o.rateLimitKey,
		seed:          maphash.MakeSeed(),
		tel:           &t.opts.tel,
	}
	if !o.noBalancing && (o.resolve != nil || o.dial == nil) {
		t.resolve, t.resolveEvery = o.resolve, resolveEvery
		if t.resolve == nil {
			t.resolve = defaultResolve
		}
	}
	t.dialer = &net.Dialer{
		Timeout: o.connectTimeout,
		KeepAliveConfig: net.KeepAliveConfig{
			Enable:   true,
			Idle:     tcpKeepAliveIdle,
			Interval: tcpKeepAliveInterval,
			Count:    tcpKeepAliveCount,
		},
	}
	t.hosts = newHostTable(t.newHostState)
	t.base = t.newBase(nil)
	if len(o.attemptWraps) > 0 {
		var rt http.RoundTripper = roundTripperFunc(t.roundTripInner)
		for _, wrap := range o.attemptWraps {
			if rt = wrap(rt); rt == nil {
				return nil, &OptionError{Option: "WithAttemptTransport", Reason: "wrap returned a nil RoundTripper"}
			}
		}
		t.inner = rt
	}
	return t, nil
}

// CloseIdleConnections closes the idle connections of the pool. Connections
// in use are not interrupted. The Transport never calls it by itself.
func (t *Transport) CloseIdleConnections() {
	t.base.CloseIdleConnections()
	for _, h := range t.hosts.maps.Load().canon {
		if h.slot != nil {
			h.slot.cur.Load().rt.CloseIdleConnections()
		}
		if h.bal != nil {
			h.bal.closeIdle()
		}
	}
}

// Private implementation past this point.

// newHostState makes the state of a host the first time it is met.
func (t *Transport) newHostState(key string) *hostState {
	h := &hostState{key: key, cfg: &t.hostc}
	h.idle.learn = !t.opts.noIdleLearning
	if t.opts.noHTTP2 {
		h.gate.proto.Store(protoHTTP1)
	}
	t.budget.init(&h.budget)
	if cfg := t.opts.breaker; cfg != nil {
		h.breaker = newHostBreaker(*cfg, key, t.opts.tel.breakerChange)
	}
	if t.opts.connMaxLifetime > 0 && key != OtherHosts {
		h.slot = newPoolSlot(func() *http.Transport { return t.newBase(nil) })
	}
	if t.resolve != nil {
		h.bal = newBalancer(key, t.resolve, t.opts.resolve != nil, t.resolveEvery, t.newBase, &t.opts.tel)
	}
	return h
}

func (t *Transport) newBase(b *backend) *http.Transport {
	o := &t.opts
	var protocols *http.Protocols
	if o.noHTTP2 {
		protocols = new(http.Protocols)
		protocols.SetHTTP1(true)
	}
	proxy := o.proxy
	if b != nil {
		proxy = nil // a balanced host's requests are sent direct
	}
	return &http.Transport{
		Protocols: protocols, // nil: HTTP/1 and HTTP/2
		Proxy:     proxy,
		// Counting in the dialer costs two atomic adds per connection, where
		// an httptrace.ClientTrace would cost allocations on every request.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return t.dial(ctx, network, addr, b)
		},
		// A custom DialContext or TLS config turns HTTP/2 off unless forced.
		ForceAttemptHTTP2:     true,
		TLSClientConfig:       withSessionCache(o.tlsConfig),
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

// dial opens a connection to addr for the request whose context is ctx,
// through the dial gate of its host; to the backend b's address, if b is
// not nil.
func (t *Transport) dial(ctx context.Context, network, addr string, b *backend) (net.Conn, error) {
	o := &t.opts
	// The dial is for the host of the request that started it (also
	// behind a proxy, and for a name net/http dials in punycode).
	a, _ := ctx.Value(connKey{}).(*attemptConn)
	var h *hostState
	if a != nil {
		h = a.host
	} else {
		h = t.hosts.forAddr(addr)
	}
	var w *gateWatch
	if a != nil {
		w = &a.gateWatch
	}
	// The gate keeps serial dials apart by the address as net/http dials
	// it (a spelling of the host has a pool of its own), the backend's
	// address, and the pool's generation.
	gate, key := h.gateHost(), addr
	if b != nil {
		key = addr + "@" + b.dial
		addr, gate = b.dial, &b.gate
	}
	if a != nil {
		key = a.pool.gateKey(key)
	}
	c, g, err := gate.dial(ctx, w, key, &h.counters, dialHoldMax, func() (net.Conn, error) {
		if o.dial == nil {
			return t.dialer.DialContext(ctx, network, addr)
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
	t.reportDial(h, addr, err, g)
	if err != nil {
		if b != nil && ctx.Err() == nil {
			b.failed(false)
			b.bal.resolveSoon()
		}
		return nil, &dialError{err: err}
	}
	var cg connGate
	if g != nil {
		cg = g
	}
	return newConn(c, cg, addr, h.connHost(), t.proxyHost, o.readTimeout, o.connMaxLifetime), nil
}

// reportDial counts a TCP connect to the host h, at addr, that ended with
// err, and tells the observers. A dial cancelled because no request needed
// it any more (CloseIdleConnections cancels them) neither connected nor
// failed to: it is neither counted nor told. A connection of the dial
// gate's serial dial is counted once it carries a request instead.
func (t *Transport) reportDial(h *hostState, addr string, err error, g *gatedConn) {
	switch {
	case err == nil:
		if g == nil || !g.uncounted.Load() {
			h.count(dialsCounter)
		}
	case errors.Is(err, context.Canceled):
		return
	default:
		h.count(dialErrorsCounter)
	}
	host := h.key
	if h.overflow {
		host = addr
	}
	t.opts.tel.dial(host, err)
}

// Stats returns the counters of all hosts so far: the sum of HostStats.
// It is safe to call concurrently with requests; each counter is read
// atomically, the set as a whole is not a snapshot. It costs a pass over
// the hosts (at most HostStatsLimit+1): a request adds to its host's
// counters only, so that concurrent requests to different hosts share no
// counter.
func (t *Transport) Stats() Stats {
	m := t.hosts.maps.Load()
	s := t.hosts.overflow.snapshot()
	for _, h := range m.canon {
		s = s.add(h.snapshot())
	}
	return s
}

// HostStats returns Stats per host, keyed by "host:port" with the
// scheme's default port filled in and the name in lower case:
// "example.com:443" for https://example.com/ and https://Example.com:443/
// alike, "[::1]:8080" for http://[::1]:8080/. The same key names the host
// of the retry budget, the circuit breaker and the events. Like Stats, it
// is safe to call concurrently with requests, and each counter is read
// atomically. A connection's dial is counted under the host of the
// request it was dialed for, behind a proxy too (not under the proxy's
// address), and a name in Unicode has one key, its own spelling in lower
// case, though net/http dials it in punycode. Behind a plain HTTP proxy
// (http:// URLs through WithProxy), whose connections carry the requests
// of every host, IdleCloses and ConnsRetiredIdle are counted under the
// proxy's address: its idle timeout judges them.
func (t *Transport) HostStats() map[string]Stats {
	m := t.hosts.maps.Load()
	out := make(map[string]Stats, len(m.canon)+1)
	for k, c := range m.canon {
		out[k] = c.snapshot()
	}
	if s := t.hosts.overflow.snapshot(); s != (Stats{}) {
		out[OtherHosts] = s
	}
	return out
}

// AddrStats returns, per balanced host (keyed as in HostStats), the
// counters of each address its name resolves to, in the order the
// resolver gave them. A host whose name has one address, or that is not
// balanced (WithoutBalancing, a proxy, an IP address), is not listed.
func (t *Transport) AddrStats() map[string][]AddrStats {
	m := t.hosts.maps.Load()
	out := make(map[string][]AddrStats)
	for k, h := range m.canon {
		if h.bal == nil {
			continue
		}
		if s := h.bal.stats(); s != nil {
			out[k] = s
		}
	}
	return out
}

// proxyHost is the host of a plain HTTP proxy at addr, whose connections
// carry the requests of every host: its idle timeout judges them.
func (t *Transport) proxyHost(addr string) connHost { return t.hosts.forAddr(addr).connHost() }

// tlsSessionCacheSize is how many TLS sessions a Transport keeps to resume,
// as undici does: a resumed handshake costs a fraction of a full one, and
// a pool redials for lifetimes, idle closes and failures.
const tlsSessionCacheSize = 100

// withSessionCache returns a copy of c (net/http adds its protocols to the
// configuration of each http.Transport, and a Transport may have several),
// or a new configuration, with a session cache of its own when c brings
// none.
func withSessionCache(c *tls.Config) *tls.Config {
	if c == nil {
		c = new(tls.Config)
	} else {
		c = c.Clone()
	}
	if c.ClientSessionCache == nil {
		c.ClientSessionCache = tls.NewLRUClientSessionCache(tlsSessionCacheSize)
	}
	return c
}
