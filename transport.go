// This file holds Transport: the tuned http.Transport underneath (pool,
// dialer, timeouts, HTTP/2 health checks), the dial counter, the read
// timeout on response bodies, and Stats. The retry layer that Transport's
// RoundTrip runs is in retry.go; options are in options.go.

package keepalive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
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
	base     *http.Transport
	policy   policy
	opts     options
	stats    counters
	budget   *retryBudget // budget.go; nil: off
	breakers *breakers    // breaker.go; nil: off

	hosts           *hostTable        // per-host counters: observer.go
	inner           http.RoundTripper // what attempts are sent through: the live transport, maybe wrapped
	observeAttempts bool              // attempts need more than counting
}

var _ http.RoundTripper = (*Transport)(nil)

// NewTransport returns a Transport configured by opts over the defaults. It
// returns an error, naming each invalid option, if any option is invalid.
func NewTransport(opts ...Option) (*Transport, error) {
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	t := &Transport{opts: o, policy: newPolicy(o), budget: newRetryBudget(o.budget), hosts: newHostTable()}
	if o.breaker != nil {
		t.breakers = newBreakers(*o.breaker, o.retryStatuses, t.observeBreakerChange)
	}
	t.base = t.newBase()
	if err := t.initObserving(); err != nil {
		return nil, err
	}
	return t, nil
}

// Stats are counters of a Transport, or of one host of it (HostStats),
// since it was created. They only grow. Reused and ReuseRatio derive
// connection reuse from them.
type Stats struct {
	Requests   int64 // calls to RoundTrip
	Attempts   int64 // requests sent to the underlying transport, retries included
	Retries    int64 // attempts after the first of their request
	GaveUp     int64 // requests that ran out of retries, or whose wait for the next attempt was refused
	Dials      int64 // new connections opened (TCP connect succeeded)
	DialErrors int64 // TCP connects that failed

	BudgetRefusals  int64 // retries and hedges not sent because the retry budget was spent
	AttemptTimeouts int64 // attempts abandoned by WithAttemptTimeout
	CircuitOpen     int64 // attempts refused by an open circuit (WithCircuitBreaker)
	Hedges          int64 // hedged attempts sent (WithHedging), counted in Attempts too
	ConnsExpired    int64 // connections retired by WithConnMaxLifetime
}

// Stats returns the counters of all hosts so far. It is safe to call
// concurrently with requests; each counter is read atomically, the set as
// a whole is not a snapshot.
func (t *Transport) Stats() Stats { return t.stats.snapshot() }

// CloseIdleConnections closes the idle connections of the pool. Connections
// in use are not interrupted. The Transport never calls it by itself.
func (t *Transport) CloseIdleConnections() { t.base.CloseIdleConnections() }

// ErrReadTimeout is matched, with errors.Is, by the error of a response body
// read that waited for data longer than the read timeout.
var ErrReadTimeout = errors.New("keepalive: read timeout")

// ReadTimeoutError is returned by a response body read that waited longer
// than the read timeout (WithReadTimeout) for data. The body is closed and
// its connection discarded. It is a net.Error whose Timeout() is true.
type ReadTimeoutError struct {
	Limit time.Duration // the read timeout that passed
}

var _ net.Error = (*ReadTimeoutError)(nil)

func (e *ReadTimeoutError) Error() string {
	return fmt.Sprintf("keepalive: read timeout: no response body data for %v", e.Limit)
}

// Is reports whether target is ErrReadTimeout.
func (e *ReadTimeoutError) Is(target error) bool { return target == ErrReadTimeout }

// Timeout is true: the error is a timeout.
func (e *ReadTimeoutError) Timeout() bool { return true }

// Temporary is true, as for other timeouts; net.Error requires it.
func (e *ReadTimeoutError) Temporary() bool { return true }

// Private implementation past this point.

type counters struct {
	requests, attempts, retries, gaveUp atomic.Int64
	dials, dialErrors                   atomic.Int64

	budgetRefusals, attemptTimeouts, circuitOpen, hedges, connsExpired atomic.Int64
}

func (t *Transport) newBase() *http.Transport {
	o := &t.opts
	dialer := &net.Dialer{
		Timeout: o.connectTimeout,
		KeepAliveConfig: net.KeepAliveConfig{
			Enable:   true,
			Idle:     DefaultTCPKeepAliveIdle,
			Interval: DefaultTCPKeepAliveInterval,
			Count:    DefaultTCPKeepAliveCount,
		},
	}
	return &http.Transport{
		Proxy: o.proxy,
		// Counting in the dialer costs two atomic adds per connection, where
		// an httptrace.ClientTrace would cost allocations on every request.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			gh := t.hosts.gateFor(t.hosts.forAddr(addr))
			c, err := gh.dial(ctx, dialHoldMax, func() (net.Conn, error) { // dialgate.go
				return dialer.DialContext(ctx, network, addr)
			})
			if err == errDialNotNeeded {
				return nil, err
			}
			t.countDial(addr, err)
			if err != nil {
				return nil, &dialError{err: err}
			}
			return t.withLifetime(c), nil // lifetime.go
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
			SendPingTimeout: DefaultHTTP2PingInterval,
			PingTimeout:     DefaultHTTP2PingTimeout,
		},
	}
}

// dialError marks an error of the dialer: the request it was for was never
// written, so it may be sent again whatever its method.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// Timeout keeps a dial timeout a net.Error timeout, as the dialer's own
// error is.
func (e *dialError) Timeout() bool {
	var ne net.Error
	return errors.As(e.err, &ne) && ne.Timeout()
}

// wrapBody puts the read timeout on resp's body, and makes it leave the dial
// gate's busy count (gh, nil if untracked) once done with. A read deadline
// on the connection would do the timeout for HTTP/1 only, and a deadline
// left on a pooled connection fails its next request; a timer per body
// read works for both protocols and ends with the body. Every attempt's
// response gets it, so a discarded response is drained under the read
// timeout too.
func (t *Transport) wrapBody(resp *http.Response, gh *gateHost) *http.Response {
	d := t.opts.readTimeout
	if resp.Body == nil || resp.Body == http.NoBody ||
		resp.StatusCode == http.StatusSwitchingProtocols { // its body is an io.ReadWriteCloser
		gh.leave() // the connection is back in the pool, or no longer the pool's
		return resp
	}
	if d <= 0 && gh == nil {
		return resp
	}
	resp.Body = &body{rc: resp.Body, d: d, gate: gh}
	return resp
}

// clockStart anchors body's monotonic clock: time.Since(clockStart) is a
// monotonic reading that fits an atomic int64.
var clockStart = time.Now()

// body is a response body with the read timeout, and the dial gate's
// release at its end (an error or EOF from Read, or Close).
//
// The timeout is one timer per body, armed at the first Read. Each Read
// stores when it started; when the timer fires it closes the body (which
// unblocks a Read on both HTTP/1 and HTTP/2) if a Read has waited d, and
// otherwise re-arms for the time left. A Read costs a clock reading and two
// atomic stores, not a timer reset and stop. Time between Reads (the
// caller processing) is not counted, so a slow but steady body is never cut
// off.
type body struct {
	rc        io.ReadCloser
	d         time.Duration // 0: no read timeout, and no timer
	timer     atomic.Pointer[time.Timer]
	readStart atomic.Int64 // time.Since(clockStart) when the Read in progress began; 0: none
	fired     atomic.Bool  // the timer closed the body
	done      atomic.Bool  // EOF, an error or Close: the timer stops for good
	gate      *gateHost
}

func (b *body) Read(p []byte) (int, error) {
	if b.d <= 0 {
		n, err := b.rc.Read(p)
		if err != nil {
			b.end()
		}
		return n, err
	}
	if b.fired.Load() {
		return 0, &ReadTimeoutError{Limit: b.d}
	}
	b.readStart.Store(max(int64(time.Since(clockStart)), 1))
	if b.timer.Load() == nil {
		b.timer.Store(time.AfterFunc(b.d, b.expire))
	}
	n, err := b.rc.Read(p)
	b.readStart.Store(0)
	if err != nil {
		b.end()
		if b.fired.Load() {
			return n, &ReadTimeoutError{Limit: b.d}
		}
	}
	return n, err
}

// expire runs when the timer fires: it fails a Read that has waited d, and
// otherwise waits again for as long as a Read could still take.
func (b *body) expire() {
	if b.done.Load() {
		return
	}
	wait := b.d
	if start := b.readStart.Load(); start != 0 {
		waited := time.Duration(int64(time.Since(clockStart)) - start)
		if waited >= b.d {
			b.fired.Store(true)
			b.rc.Close()
			return
		}
		wait = b.d - waited
	}
	t := b.timer.Load()
	for t == nil { // fired before Read stored it: only for timeouts of microseconds
		runtime.Gosched()
		t = b.timer.Load()
	}
	t.Reset(wait)
}

func (b *body) Close() error {
	err := b.rc.Close()
	b.end()
	return err
}

// end stops the timer and leaves the dial gate, once.
func (b *body) end() {
	if b.done.Swap(true) {
		return
	}
	if t := b.timer.Load(); t != nil {
		t.Stop()
	}
	b.gate.leave()
}
