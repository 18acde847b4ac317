// This file holds the dial gate: it keeps a burst of requests from opening
// more connections than it has requests.
//
// net/http dials a new connection for every request that finds no idle
// one, and lets the request take whichever connection comes first: one
// that another request just finished with, or its own dial. The dial is
// not cancelled when it loses; its connection joins the pool. While a pool
// warms up, connections handed to waiting requests race their dials, and
// 64 concurrent requests end up with 80 to 100 connections (measured:
// TestDefaultsReuseConnectionsAt64Concurrent, and an http.Transport with 64
// idle connections per host opened 83 in ANCHORS.md).
//
// The gate counts, per host, the requests using or waiting for a
// connection (busy) and the connections open or being dialed (conns). When
// a dial starts while conns already exceeds busy, some connection is idle
// or about to come free, so the dial waits (at most dialHoldMax) for its
// request to get one; if it does, the dial is dropped before it connects.
// Only requests that start while a dial to their host is in progress are
// watched (with an httptrace.GotConn hook); in steady state no dial is in
// progress and a request pays two atomic adds and one map lookup.

package keepalive

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// dialHoldMax bounds the wait of a dial whose request may be served by a
// connection coming free; dialHoldStep is how often the wait re-checks
// whether that is still likely.
const (
	dialHoldMax  = 10 * time.Millisecond
	dialHoldStep = time.Millisecond
)

// maxGateHosts bounds the hosts the gate tracks; past it, new hosts are
// dialed as net/http does, without the gate.
const maxGateHosts = 4096

// errDialNotNeeded ends a dial whose request took another connection. It
// reaches no caller: net/http drops the result of a dial whose request was
// already served.
var errDialNotNeeded = errors.New("keepalive: dial not needed: the request got another connection")

// gateHost is the gate's view of one host (host:port).
type gateHost struct {
	busy    atomic.Int64 // attempts from their start until their response body is done
	conns   atomic.Int64 // connections open, and dials in progress
	dialing atomic.Int64 // dials in progress
}

// gateTable finds a host's gateHost without a lock or an allocation once
// the host is known: the maps are immutable, replaced whole when a host is
// added, at most maxGateHosts times.
type gateTable struct {
	maps    atomic.Pointer[gateMaps]
	mu      sync.Mutex    // serialises adding hosts
	n       int           // hosts tracked, under mu
	holdMax time.Duration // dialHoldMax; tests lengthen it
}

type gateMaps struct {
	addr  map[string]*gateHost // "host:port", and URL hosts with a port
	http  map[string]*gateHost // URL hosts without a port, http: port 80
	https map[string]*gateHost // URL hosts without a port, https: port 443
}

func newGateTable() *gateTable {
	g := &gateTable{holdMax: dialHoldMax}
	g.maps.Store(&gateMaps{addr: map[string]*gateHost{}, http: map[string]*gateHost{}, https: map[string]*gateHost{}})
	return g
}

// forURL returns the gateHost of u's host, or nil if the table is full.
func (g *gateTable) forURL(u *url.URL) *gateHost {
	m := g.maps.Load()
	byHost, port := m.addr, u.Port()
	if port == "" {
		byHost, port = m.http, "80"
		if u.Scheme == "https" {
			byHost, port = m.https, "443"
		}
	}
	if h := byHost[u.Host]; h != nil {
		return h
	}
	return g.add(u.Scheme, u.Host, net.JoinHostPort(u.Hostname(), port))
}

// forAddr returns the gateHost of a dialed address, or nil if the table
// is full.
func (g *gateTable) forAddr(addr string) *gateHost {
	if h := g.maps.Load().addr[addr]; h != nil {
		return h
	}
	return g.add("", addr, addr)
}

// add makes alias (a URL host of scheme, or a dial address when scheme is
// empty) and addr find the same gateHost.
func (g *gateTable) add(scheme, alias, addr string) *gateHost {
	g.mu.Lock()
	defer g.mu.Unlock()
	old := g.maps.Load()
	h := old.addr[addr]
	if h == nil {
		if g.n >= maxGateHosts {
			return nil
		}
		g.n++
		h = &gateHost{}
	}
	m := &gateMaps{addr: copyGateMap(old.addr), http: old.http, https: old.https}
	m.addr[addr] = h
	switch {
	case alias == addr:
	case scheme == "https":
		m.https = copyGateMap(old.https)
		m.https[alias] = h
	case scheme != "" && alias != "" && !hasPort(alias):
		m.http = copyGateMap(old.http)
		m.http[alias] = h
	default:
		m.addr[alias] = h
	}
	g.maps.Store(m)
	return h
}

func hasPort(hostport string) bool {
	_, port, err := net.SplitHostPort(hostport)
	return err == nil && port != ""
}

func copyGateMap(m map[string]*gateHost) map[string]*gateHost {
	n := make(map[string]*gateHost, len(m)+1)
	for k, v := range m {
		n[k] = v
	}
	return n
}

// gateKey is the context key of a watched request's gateMark.
type gateKey struct{}

// gateMark tells a held dial that its request got a connection.
type gateMark struct {
	got  atomic.Bool
	done chan struct{}
}

func (m *gateMark) gotConn(httptrace.GotConnInfo) {
	if m.got.CompareAndSwap(false, true) {
		close(m.done)
	}
}

// enter counts r as busy on its host and returns the host to leave, and r
// to send: watched for its connection when a dial to its host is in
// progress.
func (g *gateTable) enter(r *http.Request) (*gateHost, *http.Request) {
	h := g.forURL(r.URL)
	if h == nil {
		return nil, r
	}
	h.busy.Add(1)
	if h.dialing.Load() == 0 {
		return h, r
	}
	m := &gateMark{done: make(chan struct{})}
	ctx := context.WithValue(r.Context(), gateKey{}, m)
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: m.gotConn})
	return h, r.WithContext(ctx)
}

// leave ends a busy attempt: when it failed, or when its response body is
// done with (see body in transport.go).
func (h *gateHost) leave() {
	if h != nil {
		h.busy.Add(-1)
	}
}

// dial runs the gate around connect: it counts the dial and the connection
// it makes, and drops the dial if its request got another connection while
// it waited.
func (g *gateTable) dial(ctx context.Context, addr string, connect func() (net.Conn, error)) (net.Conn, error) {
	h := g.forAddr(addr)
	if h == nil {
		return connect()
	}
	h.conns.Add(1)
	h.dialing.Add(1)
	defer h.dialing.Add(-1)
	if h.hold(ctx, g.holdMax) {
		h.conns.Add(-1)
		return nil, errDialNotNeeded
	}
	c, err := connect()
	if err != nil {
		h.conns.Add(-1)
		return nil, err
	}
	return &gateConn{Conn: c, h: h}, nil
}

// hold waits, up to max, while a connection is likely to come free for the
// watched request the dial is for; it reports whether the request got one.
func (h *gateHost) hold(ctx context.Context, max time.Duration) bool {
	m, _ := ctx.Value(gateKey{}).(*gateMark)
	// A request that already has a connection dials again only when
	// net/http retries it on a new one: that dial is needed.
	if m == nil || m.got.Load() || h.conns.Load() <= h.busy.Load() {
		return false
	}
	timer := time.NewTimer(dialHoldStep)
	defer timer.Stop()
	for waited := time.Duration(0); waited < max && h.conns.Load() > h.busy.Load(); waited += dialHoldStep {
		select {
		case <-m.done:
			return true
		case <-ctx.Done():
			return false
		case <-timer.C:
			timer.Reset(dialHoldStep)
		}
	}
	return false
}

// gateConn leaves the gate's connection count once, when closed.
type gateConn struct {
	net.Conn
	h      *gateHost
	closed atomic.Bool
}

func (c *gateConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.h.conns.Add(-1)
	}
	return c.Conn.Close()
}

// NetConn returns the underlying connection, as tls.Conn's NetConn does.
func (c *gateConn) NetConn() net.Conn { return c.Conn }

// CloseWrite half-closes the connection, for the bodies of 101 Switching
// Protocols responses.
func (c *gateConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
