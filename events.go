// This file holds the events a Transport tells about itself while it
// works: the Observer hooks and their events (WithObserver), the states
// and reasons they name, and AttemptFromContext for per-attempt middleware
// (WithAttemptTransport). telemetry.go fires them and logs them.

package keepalive

import (
	"context"
	"net/http"
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

	// OnHostPause is called when a host asks for a pause and gets it (see
	// WithoutHostPause): a Retry-After, or rate-limit fields that say no
	// quota is left, paused a host that was not paused. A response that
	// moves a running pause's end later is not reported.
	OnHostPause func(HostPauseEvent)

	// OnDial is called after each TCP connect, whether it succeeded or not;
	// a dial abandoned because no request needed it any more is not a
	// connect. Every call is counted in Stats.Dials or Stats.DialErrors.
	OnDial func(DialEvent)

	// OnAddrChange is called when an address of a balanced host (see
	// WithResolver) joins or leaves its name, is ejected after failures,
	// or is restored by a probe that got a response.
	OnAddrChange func(AddrEvent)

	// TraceConns makes AttemptEndEvent.Conn tell whether each attempt
	// went over a new or a reused connection, from the
	// httptrace.ClientTrace every attempt carries for its connection; it
	// costs nothing more. Without it Conn is ConnUnknown, and
	// Stats.Reused still counts reuse from the dial counter.
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
	RetryAfter bool // Wait is the server's: its Retry-After, or what is left of its host's pause (WithoutHostPause), rather than the backoff
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
	Host     string // the host the breaker guards: its HostStats key, "host:port"
	From, To BreakerState
}

// HostPauseEvent is a host that asked for a pause: every attempt to it,
// or with PerKey every attempt with the same rate-limit key, waits until
// Wait has passed (see the package documentation, Cooperating with
// servers).
type HostPauseEvent struct {
	Host   string        // its HostStats key, "host:port"
	Status int           // the status of the response that asked
	Wait   time.Duration // the pause asked for, from when the response arrived
	Source PauseSource   // the fields that asked for it
	PerKey bool          // a quota ran out (a 429, rate-limit fields): only requests with the same WithRateLimitKey wait
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

// Private implementation past this point.

// merge returns o with n's hooks called after o's.
func (o Observer) merge(n Observer) Observer {
	o.OnAttemptStart = chain(o.OnAttemptStart, n.OnAttemptStart)
	o.OnAttemptEnd = chain(o.OnAttemptEnd, n.OnAttemptEnd)
	o.OnRetry = chain(o.OnRetry, n.OnRetry)
	o.OnGiveUp = chain(o.OnGiveUp, n.OnGiveUp)
	o.OnBudgetRefused = chain(o.OnBudgetRefused, n.OnBudgetRefused)
	o.OnBreakerChange = chain(o.OnBreakerChange, n.OnBreakerChange)
	o.OnHostPause = chain(o.OnHostPause, n.OnHostPause)
	o.OnDial = chain(o.OnDial, n.OnDial)
	o.OnAddrChange = chain(o.OnAddrChange, n.OnAddrChange)
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

// attemptKey is the context key of AttemptFromContext.
type attemptKey struct{}

// PauseSource says which response fields set a host pause.
type PauseSource uint8

const (
	// PauseRetryAfter is the Retry-After of a 429 or 503 response.
	PauseRetryAfter PauseSource = iota + 1
	// PauseRateLimit is draft-ietf-httpapi-ratelimit-headers: a RateLimit
	// field with a policy whose r (remaining) is 0, waiting for its t
	// (reset, seconds); or, in the older drafts, RateLimit-Remaining: 0
	// with RateLimit-Reset (seconds).
	PauseRateLimit
	// PauseXRateLimit is X-RateLimit-Remaining: 0 with X-RateLimit-Reset,
	// read as seconds to wait below 10^9 and as a Unix time from there.
	PauseXRateLimit
)

func (s PauseSource) String() string {
	switch s {
	case PauseRetryAfter:
		return "retry-after"
	case PauseRateLimit:
		return "ratelimit"
	case PauseXRateLimit:
		return "x-ratelimit"
	}
	return "unknown"
}

// AddrEvent is a change of one address of a balanced host.
type AddrEvent struct {
	Host   string     // its HostStats key, "host:port"
	Addr   string     // the address, "ip:port"
	Change AddrChange // what happened to it
}

// AddrChange is what happened to an address of a balanced host.
type AddrChange uint8

const (
	AddrAdded    AddrChange = iota + 1 // it joined the name
	AddrRemoved                        // it left the name: drained, no new attempt
	AddrEjected                        // it failed in a row: no attempt until its ejection ends
	AddrRestored                       // a probe after its ejection got a response
)

func (c AddrChange) String() string {
	switch c {
	case AddrAdded:
		return "added"
	case AddrRemoved:
		return "removed"
	case AddrEjected:
		return "ejected"
	case AddrRestored:
		return "restored"
	}
	return "unknown"
}

// BreakerState is the state of a host's circuit breaker.
type BreakerState uint8

const (
	BreakerClosed   BreakerState = iota // attempts go through and are counted
	BreakerOpen                         // attempts fail at once, with a *CircuitOpenError
	BreakerHalfOpen                     // HalfOpenProbes attempts go through, to decide whether to close
)

// String returns "closed", "open" or "half-open", as logged.
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return "unknown"
}
