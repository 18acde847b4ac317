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
// progress and a request pays three atomic operations.

package keepalive

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
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

// errDialNotNeeded ends a dial whose request took another connection. It
// reaches no caller: net/http drops the result of a dial whose request was
// already served.
var errDialNotNeeded = errors.New("keepalive: dial not needed: the request got another connection")

// gateHost is the gate's view of one host (host:port), kept in its state
// (host.go). Hosts past HostStatsLimit share a state, so they are dialed
// without the gate, as net/http does.
type gateHost struct {
	busy    atomic.Int64 // attempts from their start until their response body is done
	conns   atomic.Int64 // connections open, and dials in progress
	dialing atomic.Int64 // dials in progress
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

// enter counts r as busy on its host (h, nil if ungated) and returns r to
// send: watched for its connection when a dial to its host is in progress.
func (h *gateHost) enter(r *http.Request) *http.Request {
	if h == nil {
		return r
	}
	h.busy.Add(1)
	if h.dialing.Load() == 0 {
		return r
	}
	m := &gateMark{done: make(chan struct{})}
	ctx := context.WithValue(r.Context(), gateKey{}, m)
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: m.gotConn})
	return r.WithContext(ctx)
}

// leave ends a busy attempt: when it failed, or when its response body is
// done with (see respBody in body.go).
func (h *gateHost) leave() {
	if h != nil {
		h.busy.Add(-1)
	}
}

// dial runs the gate (h, nil if ungated) around connect: it counts the
// dial and the connection it makes, and drops the dial if its request got
// another connection while it waited, at most holdMax.
func (h *gateHost) dial(ctx context.Context, holdMax time.Duration, connect func() (net.Conn, error)) (net.Conn, error) {
	if h == nil {
		return connect()
	}
	m, _ := ctx.Value(gateKey{}).(*gateMark)
	// A request that had a connection before its dial started dials again
	// only when net/http retries it on a new one: that dial is needed.
	// Read before the dial counts, so that a connection that comes free
	// once the dial is counted is one the dial may wait for.
	needed := m == nil || m.got.Load()
	h.conns.Add(1)
	h.dialing.Add(1)
	defer h.dialing.Add(-1)
	if !needed && h.hold(ctx, m, holdMax) {
		h.conns.Add(-1)
		return nil, errDialNotNeeded
	}
	c, err := connect()
	if err != nil {
		h.conns.Add(-1)
		return nil, err
	}
	return &conn{Conn: c, gate: h}, nil // its Close leaves the count (transport.go)
}

// hold waits, up to max, while a connection is likely to come free for the
// watched request the dial is for (m); it reports whether the request got
// one.
func (h *gateHost) hold(ctx context.Context, m *gateMark, max time.Duration) bool {
	if h.conns.Load() <= h.busy.Load() {
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
