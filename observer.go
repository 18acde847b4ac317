// This file holds what a Transport tells about itself while it works: the
// Observer hooks (WithObserver), the per-attempt RoundTripper wrapper
// (WithAttemptTransport), the per-host counters behind HostStats, and the
// structured logging of retries and give-ups (WithLogger). Stats, the
// totals, is in transport.go; the retry loop that fires the events is in
// retry.go.

package keepalive

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// Observer receives the events of a Transport, for metrics, tracing or
// logs. Every field is optional. A nil hook costs one comparison per event
// and no allocation: a Transport without observers, or with hooks that do
// not themselves allocate, adds no allocation to a request.
//
// Hooks run synchronously on the goroutine of the request, possibly on many
// goroutines at once: they must be safe for concurrent use, quick, and must
// not block. They must not modify the requests they are given, nor read or
// close response bodies. Requests carry the URL as the caller wrote it,
// credentials and query included: redact before logging it.
type Observer struct {
	// OnAttemptStart is called before each attempt is sent, retries and
	// hedges (WithHedging) included; a hedge has the number of the attempt
	// it hedges. An attempt refused by an open circuit is not sent and
	// has no events.
	OnAttemptStart func(AttemptStartEvent)

	// OnAttemptEnd is called when an attempt got its response headers, or
	// failed.
	OnAttemptEnd func(AttemptEndEvent)

	// OnRetry is called when an attempt's outcome will be retried, before
	// the wait.
	OnRetry func(RetryEvent)

	// OnGiveUp is called when an outcome that was worth a retry is
	// returned to the caller instead (see GiveUpReason).
	OnGiveUp func(GiveUpEvent)

	// OnBudgetRefused is called when the retry budget (WithRetryBudget)
	// refuses a retry, and the request then gives up with GiveUpBudget, or
	// refuses a hedge (WithHedging).
	OnBudgetRefused func(BudgetRefusedEvent)

	// OnBreakerChange is called when a circuit breaker changes state
	// (WithCircuitBreaker), while the breaker holds its lock: it must
	// not send requests.
	OnBreakerChange func(BreakerChangeEvent)

	// OnDial is called after each TCP connect, whether it succeeded or not.
	OnDial func(DialEvent)

	// TraceConns makes AttemptEndEvent.Conn tell whether each attempt
	// went over a new or a reused connection. It installs an
	// httptrace.ClientTrace on every attempt, which costs 5 allocations
	// (about 500 bytes) per attempt; without it Conn is ConnUnknown, and
	// Stats.Reused still counts reuse from the dial counter for free.
	TraceConns bool
}

// AttemptStartEvent is an attempt about to be sent.
type AttemptStartEvent struct {
	Request *http.Request // the request of this attempt
	Host    string        // its HostStats key, "host:port"
	Attempt int           // 1 for the first attempt of a request
}

// AttemptEndEvent is an attempt that got its response headers, or failed.
type AttemptEndEvent struct {
	Request  *http.Request  // the request of this attempt
	Host     string         // its HostStats key, "host:port"
	Attempt  int            // 1 for the first attempt of a request
	Response *http.Response // nil when Err is set; its body belongs to the retry layer or the caller
	Status   int            // Response.StatusCode, or 0 when Err is set
	Err      error          // why the attempt failed, or nil
	Duration time.Duration  // from sending the attempt to its headers or its error
	Conn     ConnReuse      // ConnUnknown unless Observer.TraceConns is set
}

// ConnReuse says whether an attempt went over a new connection.
type ConnReuse uint8

const (
	ConnUnknown ConnReuse = iota // not traced (Observer.TraceConns unset), or no connection was obtained
	ConnNew                      // a connection never used before: dialed for this attempt or pooled fresh
	ConnReused                   // a connection that carried an earlier request
)

func (c ConnReuse) String() string {
	switch c {
	case ConnNew:
		return "new"
	case ConnReused:
		return "reused"
	}
	return "unknown"
}

// RetryEvent is an outcome that will be retried after Wait.
type RetryEvent struct {
	Request    *http.Request // the caller's request
	Host       string        // its HostStats key, "host:port"
	Attempt    int           // the attempt that failed; the next one is Attempt+1
	Reason     RetryReason
	Status     int   // the failed attempt's status, or 0 when Err is set
	Err        error // the failed attempt's error, or nil
	Wait       time.Duration
	RetryAfter bool // Wait is the server's Retry-After rather than the backoff
}

// RetryReason says why an attempt is retried.
type RetryReason uint8

const (
	RetryOnStatus RetryReason = iota + 1 // its status is in the retry list, or WithCheckRetry said so
	RetryOnError                         // it failed with a transport error worth retrying
)

func (r RetryReason) String() string {
	switch r {
	case RetryOnStatus:
		return "status"
	case RetryOnError:
		return "error"
	}
	return "unknown"
}

// GiveUpEvent is an outcome worth a retry that is returned to the caller
// instead, as a response (Status) or as an error.
type GiveUpEvent struct {
	Request  *http.Request // the caller's request
	Host     string        // its HostStats key, "host:port"
	Attempts int           // attempts made
	Reason   GiveUpReason
	Status   int           // the last attempt's status, or 0 when Err is set
	Err      error         // the last attempt's error (for GiveUpBody, GetBody's), or nil
	Wait     time.Duration // the wait that was refused, for GiveUpRetryAfter and GiveUpDeadline
}

// GiveUpReason says why a request was not retried.
type GiveUpReason uint8

const (
	GiveUpExhausted     GiveUpReason = iota + 1 // no retries left (WithMaxRetries)
	GiveUpNotReplayable                         // the method is not idempotent and has no Idempotency-Key, or the body cannot be sent again
	GiveUpRetryAfter                            // the server's Retry-After is past WithMaxRetryAfter
	GiveUpDeadline                              // the wait and another attempt as long as the last would pass the context's deadline
	GiveUpCanceled                              // the context ended during the wait
	GiveUpPolicy                                // the WithCheckRetry policy returned an error
	GiveUpBody                                  // GetBody failed to rewind the request body
	GiveUpBudget                                // the retry budget refused the retry
)

func (r GiveUpReason) String() string {
	switch r {
	case GiveUpExhausted:
		return "retries exhausted"
	case GiveUpNotReplayable:
		return "not replayable"
	case GiveUpRetryAfter:
		return "retry-after too long"
	case GiveUpDeadline:
		return "deadline too close"
	case GiveUpCanceled:
		return "canceled"
	case GiveUpPolicy:
		return "policy error"
	case GiveUpBody:
		return "body not rewound"
	case GiveUpBudget:
		return "budget refused"
	}
	return "unknown"
}

// counted reports whether Stats.GaveUp counts a give-up for r: the
// requests that ran out of retries or whose wait was refused.
func (r GiveUpReason) counted() bool {
	switch r {
	case GiveUpExhausted, GiveUpRetryAfter, GiveUpDeadline, GiveUpCanceled, GiveUpBudget:
		return true
	}
	return false
}

// BudgetRefusedEvent is a retry that the retry budget refused.
type BudgetRefusedEvent struct {
	Request *http.Request // the caller's request
	Host    string        // its HostStats key, "host:port"
	Attempt int           // the attempt whose retry was refused
}

// BreakerChangeEvent is a circuit breaker that changed state.
type BreakerChangeEvent struct {
	Host     string // the host the breaker guards: the request URL's host, with its port if the URL names one
	From, To string // "closed", "open" or "half-open"
}

// DialEvent is a TCP connect that ended.
type DialEvent struct {
	Host string // the address dialed, "host:port": the proxy's behind a proxy
	Err  error  // nil if the connection was opened
}

// AttemptFromContext returns the number of the attempt (1 for the first)
// whose request carries ctx. It reports false outside a RoundTripper
// installed with WithAttemptTransport: only then does a Transport put the
// number in the context, which costs 2 allocations (about 370 bytes) per
// attempt.
func AttemptFromContext(ctx context.Context) (int, bool) {
	n, ok := ctx.Value(attemptKey{}).(int)
	return n, ok
}

// HostStatsLimit is the most hosts HostStats keeps apart; the requests to
// hosts past it are counted together under the key OtherHosts, so a client
// that meets unboundedly many hosts (a crawler) holds bounded memory.
const HostStatsLimit = 1024

// OtherHosts is the HostStats key of the hosts past HostStatsLimit, and of
// requests without a URL.
const OtherHosts = "other"

// HostStats returns Stats per host, keyed by "host:port" as the connection
// is dialed: "example.com:443" for https://example.com/, "[::1]:8080" for
// http://[::1]:8080/. Like Stats, it is safe to call concurrently with
// requests, and each counter is read atomically. Behind a proxy, Dials,
// DialErrors and so Reused are counted under the proxy's address.
func (t *Transport) HostStats() map[string]Stats {
	m := t.hosts.maps.Load()
	out := make(map[string]Stats, len(m.canon)+1)
	for k, c := range m.canon {
		out[k] = c.snapshot()
	}
	if s := t.hosts.other.snapshot(); s != (Stats{}) {
		out[OtherHosts] = s
	}
	return out
}

// Reused returns the attempts that did not open a connection: Attempts -
// Dials - DialErrors, never below zero. It is counted from the dialer, free
// of any per-request cost. Once no request is in flight it is exact but
// for two rare cases: a connection dialed and never used (its request took
// another one that came free first) lowers it by one, and an attempt that
// failed before it got a connection, other than by a failed dial, raises
// it by one. For each attempt's own answer, use Observer.TraceConns.
func (s Stats) Reused() int64 { return max(0, s.Attempts-s.Dials-s.DialErrors) }

// ReuseRatio is Reused / Attempts: the share of attempts sent over a
// connection that was already open. It is 0 before the first attempt.
func (s Stats) ReuseRatio() float64 {
	if s.Attempts == 0 {
		return 0
	}
	return float64(s.Reused()) / float64(s.Attempts)
}

// Private implementation past this point.

// merge returns o with n's hooks called after o's.
func (o Observer) merge(n Observer) Observer {
	o.OnAttemptStart = chain(o.OnAttemptStart, n.OnAttemptStart)
	o.OnAttemptEnd = chain(o.OnAttemptEnd, n.OnAttemptEnd)
	o.OnRetry = chain(o.OnRetry, n.OnRetry)
	o.OnGiveUp = chain(o.OnGiveUp, n.OnGiveUp)
	o.OnBudgetRefused = chain(o.OnBudgetRefused, n.OnBudgetRefused)
	o.OnBreakerChange = chain(o.OnBreakerChange, n.OnBreakerChange)
	o.OnDial = chain(o.OnDial, n.OnDial)
	o.TraceConns = o.TraceConns || n.TraceConns
	return o
}

func chain[E any](a, b func(E)) func(E) {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	return func(e E) { a(e); b(e) }
}

// roundTripperFunc makes a method value a RoundTripper.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// attemptKey is the context key of AttemptFromContext.
type attemptKey struct{}

// initObserving sets up what NewTransport needs for the hooks: the
// RoundTripper attempts go through, and whether attempts need more than a
// count.
func (t *Transport) initObserving() error {
	var rt http.RoundTripper = roundTripperFunc(t.roundTripLive) // lifetime.go
	for _, wrap := range t.opts.attemptWraps {
		if rt = wrap(rt); rt == nil {
			return &OptionError{Option: "WithAttemptTransport", Reason: "wrap returned a nil RoundTripper"}
		}
	}
	t.inner = rt
	o := &t.opts.observer
	t.observeAttempts = o.OnAttemptStart != nil || o.OnAttemptEnd != nil || o.TraceConns ||
		len(t.opts.attemptWraps) > 0
	return nil
}

// countRequest counts a call to RoundTrip.
// It returns the counters of req's host, for the rest of the request.
func (t *Transport) countRequest(req *http.Request) *hostCounters {
	hc := t.hosts.forURL(req.URL)
	t.stats.requests.Add(1)
	hc.requests.Add(1)
	return hc
}

// sendAttempt sends r, attempt number n of its request to the host whose
// counters are hc, under the attempt
// deadline (sendTimed) and through t.inner, counting it and telling the
// observers. With no observer it costs two atomic adds and a map lookup.
func (t *Transport) sendAttempt(r *http.Request, n int, hc *hostCounters) (*http.Response, error) {
	t.stats.attempts.Add(1)
	hc.attempts.Add(1)
	if !t.observeAttempts {
		return t.sendTimed(r)
	}
	return t.observedAttempt(r, n, hc)
}

func (t *Transport) observedAttempt(r *http.Request, n int, hc *hostCounters) (*http.Response, error) {
	o := &t.opts.observer
	if len(t.opts.attemptWraps) > 0 {
		r = r.WithContext(context.WithValue(r.Context(), attemptKey{}, n))
	}
	var ct *connTrace
	if o.TraceConns {
		ct = new(connTrace)
		r = r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{GotConn: ct.gotConn}))
	}
	if o.OnAttemptStart != nil {
		o.OnAttemptStart(AttemptStartEvent{Request: r, Host: hc.key, Attempt: n})
	}
	if o.OnAttemptEnd == nil {
		return t.sendTimed(r)
	}
	start := time.Now()
	resp, err := t.sendTimed(r) // hedge.go: the attempt deadline, then t.inner
	e := AttemptEndEvent{Request: r, Host: hc.key, Attempt: n, Response: resp, Err: err, Duration: time.Since(start)}
	if err == nil {
		e.Status = resp.StatusCode
	}
	if ct != nil {
		e.Conn = ConnReuse(ct.reuse.Load())
	}
	o.OnAttemptEnd(e)
	return resp, err
}

// connTrace records GotConn, which net/http may call from another
// goroutine than the RoundTrip's.
type connTrace struct{ reuse atomic.Uint32 }

func (c *connTrace) gotConn(info httptrace.GotConnInfo) {
	if info.Reused {
		c.reuse.Store(uint32(ConnReused))
	} else {
		c.reuse.Store(uint32(ConnNew))
	}
}

// countHost adds one to the counter that pick selects, in total and for
// the host of u.
func (t *Transport) countHost(u *url.URL, pick func(*counters) *atomic.Int64) {
	pick(&t.stats).Add(1)
	pick(&t.hosts.forURL(u).counters).Add(1)
}

// Counters for countHost of the features in hedge.go and lifetime.go.
func circuitOpenCounter(c *counters) *atomic.Int64    { return &c.circuitOpen }
func attemptTimeoutCounter(c *counters) *atomic.Int64 { return &c.attemptTimeouts }
func hedgeCounter(c *counters) *atomic.Int64          { return &c.hedges }
func connExpiredCounter(c *counters) *atomic.Int64    { return &c.connsExpired }

// countRetry counts an attempt after the first of its request, to the host
// whose counters are hc.
func (t *Transport) countRetry(hc *hostCounters) {
	t.stats.retries.Add(1)
	hc.retries.Add(1)
}

// countDial counts a TCP connect to addr that ended with err.
func (t *Transport) countDial(addr string, err error) {
	hc := t.hosts.forAddr(addr)
	if err != nil {
		t.stats.dialErrors.Add(1)
		hc.dialErrors.Add(1)
	} else {
		t.stats.dials.Add(1)
		hc.dials.Add(1)
	}
	if f := t.opts.observer.OnDial; f != nil {
		f(DialEvent{Host: hc.keyOr(addr), Err: err})
	}
}

// observeRetry reports that the outcome (resp or err) of attempt will be
// retried after wait.
func (t *Transport) observeRetry(req *http.Request, resp *http.Response, err error, attempt int, wait time.Duration, retryAfter bool) {
	e := RetryEvent{Request: req, Attempt: attempt, Reason: RetryOnStatus, Err: err, Wait: wait, RetryAfter: retryAfter}
	if err != nil {
		e.Reason = RetryOnError
	} else if resp != nil {
		e.Status = resp.StatusCode
	}
	f := t.opts.observer.OnRetry
	l := t.logger(req.Context(), slog.LevelDebug)
	if f == nil && l == nil {
		return
	}
	e.Host = t.hosts.forURL(req.URL).key
	if f != nil {
		f(e)
	}
	if l != nil {
		l.LogAttrs(req.Context(), slog.LevelDebug, "keepalive: retrying", t.eventAttrs(req, e.Host, attempt, e.Status, err,
			slog.String("reason", e.Reason.String()), slog.Duration("wait", wait), slog.Bool("retry_after", retryAfter))...)
	}
}

// observeGiveUp reports that the outcome (resp or err) of the last of
// attempts is returned to the caller although it was worth a retry. wait is
// the refused wait, if any.
func (t *Transport) observeGiveUp(req *http.Request, resp *http.Response, err error, attempts int, reason GiveUpReason, wait time.Duration) {
	hc := t.hosts.forURL(req.URL)
	if reason.counted() {
		t.stats.gaveUp.Add(1)
		hc.gaveUp.Add(1)
	}
	e := GiveUpEvent{Request: req, Host: hc.key, Attempts: attempts, Reason: reason, Err: err, Wait: wait}
	if err == nil && resp != nil {
		e.Status = resp.StatusCode
	}
	if f := t.opts.observer.OnGiveUp; f != nil {
		f(e)
	}
	if l := t.logger(req.Context(), slog.LevelDebug); l != nil {
		l.LogAttrs(req.Context(), slog.LevelDebug, "keepalive: giving up", t.eventAttrs(req, e.Host, attempts, e.Status, err,
			slog.String("reason", reason.String()), slog.Duration("wait", wait))...)
	}
}

// observeBudgetRefused counts and reports a retry of req, after attempt,
// that the retry budget refused.
func (t *Transport) observeBudgetRefused(req *http.Request, attempt int) {
	hc := t.hosts.forURL(req.URL)
	t.stats.budgetRefusals.Add(1)
	hc.budgetRefusals.Add(1)
	if f := t.opts.observer.OnBudgetRefused; f != nil {
		f(BudgetRefusedEvent{Request: req, Host: hc.key, Attempt: attempt})
	}
	if l := t.logger(req.Context(), slog.LevelDebug); l != nil {
		l.LogAttrs(req.Context(), slog.LevelDebug, "keepalive: retry budget refused a retry",
			t.eventAttrs(req, hc.key, attempt, 0, nil)...)
	}
}

// observeBreakerChange reports that the circuit breaker of host went from
// one state to another.
func (t *Transport) observeBreakerChange(host, from, to string) {
	if f := t.opts.observer.OnBreakerChange; f != nil {
		f(BreakerChangeEvent{Host: host, From: from, To: to})
	}
	ctx := context.Background()
	if l := t.logger(ctx, slog.LevelDebug); l != nil {
		l.LogAttrs(ctx, slog.LevelDebug, "keepalive: circuit breaker changed state",
			slog.String("host", host), slog.String("from", from), slog.String("to", to))
	}
}

// logger returns the logger if it logs at level.
func (t *Transport) logger(ctx context.Context, level slog.Level) *slog.Logger {
	if l := t.opts.logger; l != nil && l.Enabled(ctx, level) {
		return l
	}
	return nil
}

// eventAttrs returns the attributes common to the logged events, named as
// the fields of the events: the URL redacted, errors scrubbed of the URL's
// password, no header values.
func (t *Transport) eventAttrs(req *http.Request, host string, attempt, status int, err error, extra ...slog.Attr) []slog.Attr {
	attrs := make([]slog.Attr, 0, 6+len(extra))
	attrs = append(attrs,
		slog.String("method", req.Method),
		slog.String("url", redactURL(req.URL)),
		slog.String("host", host),
		slog.Int("attempt", attempt),
	)
	if status != 0 {
		attrs = append(attrs, slog.Int("status", status))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", scrub(err.Error(), urlPassword(req.URL))))
	}
	return append(attrs, extra...)
}

// snapshot reads the counters into Stats.
func (c *counters) snapshot() Stats {
	return Stats{
		Requests:       c.requests.Load(),
		Attempts:       c.attempts.Load(),
		Retries:        c.retries.Load(),
		GaveUp:         c.gaveUp.Load(),
		BudgetRefusals: c.budgetRefusals.Load(),
		Dials:          c.dials.Load(),
		DialErrors:     c.dialErrors.Load(),

		AttemptTimeouts: c.attemptTimeouts.Load(),
		CircuitOpen:     c.circuitOpen.Load(),
		Hedges:          c.hedges.Load(),
		ConnsExpired:    c.connsExpired.Load(),
	}
}

// hostCounters are the counters of one host.
type hostCounters struct {
	key string // "host:port"
	counters
	gate gateHost // dialgate.go
}

func (c *hostCounters) keyOr(addr string) string {
	if c.key == OtherHosts {
		return addr
	}
	return c.key
}

// hostTable finds the counters of a host without a lock or an allocation
// once the host is known: the maps are immutable, replaced whole (copy on
// write) when a host is added, which happens at most HostStatsLimit times.
type hostTable struct {
	maps  atomic.Pointer[hostMaps]
	mu    sync.Mutex // serialises adding hosts
	other hostCounters
}

type hostMaps struct {
	// addr is keyed by "host:port" as dialed or as written in a URL, and
	// by the bare host of URLs of other schemes than https (http: port
	// 80); https holds the bare hosts of https URLs (port 443). A bare
	// host is never a dial address, which always has a port.
	addr, https map[string]*hostCounters
	canon       map[string]*hostCounters // "host:port" as dialed: the keys of HostStats
}

func newHostTable() *hostTable {
	h := &hostTable{other: hostCounters{key: OtherHosts}}
	h.maps.Store(&hostMaps{addr: map[string]*hostCounters{}, https: map[string]*hostCounters{}, canon: map[string]*hostCounters{}})
	return h
}

// forURL returns the counters of the host of u.
func (h *hostTable) forURL(u *url.URL) *hostCounters {
	if u == nil {
		return &h.other
	}
	bareHTTPS := u.Scheme == "https" && u.Port() == ""
	m := h.maps.Load()
	c := m.addr[u.Host]
	if bareHTTPS {
		c = m.https[u.Host]
	}
	if c != nil {
		return c
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return h.add(u.Host, bareHTTPS, net.JoinHostPort(u.Hostname(), port))
}

// forAddr returns the counters of a dialed address.
func (h *hostTable) forAddr(addr string) *hostCounters {
	if c := h.maps.Load().addr[addr]; c != nil {
		return c
	}
	return h.add(addr, false, addr)
}

// add returns the counters of canon, creating them unless the table is
// full, and makes alias find them.
func (h *hostTable) add(alias string, bareHTTPS bool, canon string) *hostCounters {
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.maps.Load()
	c := old.canon[canon]
	if c == nil {
		if len(old.canon) >= HostStatsLimit {
			return &h.other // not remembered, so the maps stay bounded too
		}
		c = &hostCounters{key: canon}
	}
	m := &hostMaps{addr: clone(old.addr, 2), https: old.https, canon: clone(old.canon, 1)}
	m.canon[canon] = c
	m.addr[canon] = c
	if bareHTTPS {
		m.https = clone(old.https, 1)
		m.https[alias] = c
	} else {
		m.addr[alias] = c
	}
	h.maps.Store(m)
	return c
}

func clone(m map[string]*hostCounters, extra int) map[string]*hostCounters {
	n := make(map[string]*hostCounters, len(m)+extra)
	for k, v := range m {
		n[k] = v
	}
	return n
}
