// This file holds Option, every With* constructor, the defaults of the
// pool, timeouts and retries, and the validation of the finished options.
// The features configured by a struct keep the struct and its defaults in
// their own file: CircuitBreaker in breaker.go, RetryBudget in budget.go.

package keepalive

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// Pool and timeout defaults. Each one is what NewClient uses when the
// matching option is not given.
const (
	// defaultMaxIdleConns is the idle connections kept across all hosts.
	defaultMaxIdleConns = 1024

	// defaultMaxIdleConnsPerHost is the idle connections kept per host.
	// http.DefaultTransport keeps 2, so at any concurrency above 2 it closes
	// finished connections and dials new ones (thousands for 20,000
	// requests at 64 concurrent). 256 covers every realistic concurrency
	// towards one host; idle connections past IdleConnTimeout are closed
	// anyway, so a burst does not pin them.
	defaultMaxIdleConnsPerHost = 256

	// defaultMaxConnsPerHost is 0: no limit on connections per host, as in
	// net/http. A limit makes callers queue for a connection instead.
	defaultMaxConnsPerHost = 0

	// defaultIdleConnTimeout is how long an idle connection stays pooled.
	// It sits below the idle timeouts of the servers a client meets (AWS
	// ALB 60 s, nginx keepalive_timeout 75 s) so that the client, not the
	// server, closes an idle connection: a server that closes first races
	// the next request written on that connection, which then fails with
	// EOF or a reset.
	defaultIdleConnTimeout = 50 * time.Second

	// defaultConnectTimeout bounds the TCP connect, as urllib3's connect=5.
	defaultConnectTimeout = 5 * time.Second

	// defaultReadTimeout is urllib3's read=10: the longest wait for response
	// headers, and the longest wait for any one read of the body.
	defaultReadTimeout = 10 * time.Second

	// defaultTLSHandshakeTimeout bounds the TLS handshake, as in
	// http.DefaultTransport.
	defaultTLSHandshakeTimeout = 10 * time.Second
)

// Fixed tuning, which no option changes.
const (
	// tcpKeepAliveIdle, tcpKeepAliveInterval and tcpKeepAliveCount
	// configure TCP keep-alive probes on every connection: after 30 s idle,
	// a probe every 15 s, dead after 3 missed. They find peers that
	// vanished without a FIN (a rebooted host, a NAT that dropped the
	// mapping) while a connection sits in the pool.
	tcpKeepAliveIdle     = 30 * time.Second
	tcpKeepAliveInterval = 15 * time.Second
	tcpKeepAliveCount    = 3

	// http2PingInterval and http2PingTimeout configure HTTP/2 health
	// checks: a ping after 30 s without a frame, and the connection is
	// closed if the ping is not answered within 15 s. Without them a dead
	// HTTP/2 connection keeps taking requests until the OS gives up.
	http2PingInterval = 30 * time.Second
	http2PingTimeout  = 15 * time.Second
)

// Retry defaults.
const (
	// defaultMaxRetries is urllib3's Retry.DEFAULT: 3 retries, 4 attempts.
	defaultMaxRetries = 3

	// defaultBackoffInitial and defaultBackoffMax bound the exponential
	// backoff between attempts: 100 ms, 200 ms, 400 ms... up to 5 s, each
	// randomised by +-50% so that clients that failed together do not
	// retry together.
	defaultBackoffInitial = 100 * time.Millisecond
	defaultBackoffMax     = 5 * time.Second

	// defaultMaxRetryAfter is the longest Retry-After the client waits for.
	// A server that asks for more gets its response returned to the caller
	// at once: no request sleeps for an hour because a header said so.
	defaultMaxRetryAfter = 30 * time.Second

	// defaultMaxHedges is the hedges per attempt that WithHedging(delay, 0)
	// means: one extra attempt.
	defaultMaxHedges = 1

	// maxHedgesLimit is the most hedges per attempt WithHedging accepts.
	maxHedgesLimit = 10
)

// DefaultRetryStatuses returns the statuses retried by default: urllib3's
// status_forcelist of the project's origin, [429, 500, 501, 502, 503, 504].
// 501 Not Implemented rarely heals on a retry; drop it with
// WithRetryStatuses(429, 500, 502, 503, 504).
func DefaultRetryStatuses() []int {
	return []int{
		http.StatusTooManyRequests,
		http.StatusInternalServerError,
		http.StatusNotImplemented,
		http.StatusBadGateway,
		http.StatusServiceUnavailable,
		http.StatusGatewayTimeout,
	}
}

// DefaultRetryMethods returns the methods retried by default: the idempotent
// methods of RFC 9110 section 9.2.2.
func DefaultRetryMethods() []string {
	return []string{
		http.MethodGet,
		http.MethodHead,
		http.MethodOptions,
		http.MethodTrace,
		http.MethodPut,
		http.MethodDelete,
	}
}

// An Option configures NewClient and NewTransport. Options are applied in
// order; a later option overrides an earlier one of the same kind.
type Option interface {
	apply(*options)
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithMaxIdleConns sets the idle connections kept across all hosts.
// Default 1024; zero means no limit; negative is an error.
func WithMaxIdleConns(n int) Option {
	return optionFunc(func(o *options) {
		o.maxIdleConns = n
		o.check("WithMaxIdleConns", n >= 0, "must not be negative, got %d", n)
	})
}

// WithMaxIdleConnsPerHost sets the idle connections kept per host. Default
// 256 (http.DefaultTransport keeps 2); zero means the default (as in
// net/http, where zero means 2); negative is an error. Set it at least to
// the concurrency you send to one host, or finished connections are closed
// and redialed.
func WithMaxIdleConnsPerHost(n int) Option {
	return optionFunc(func(o *options) {
		o.maxIdleConnsPerHost = n
		if n == 0 {
			o.maxIdleConnsPerHost = defaultMaxIdleConnsPerHost
		}
		o.check("WithMaxIdleConnsPerHost", n >= 0, "must not be negative, got %d", n)
	})
}

// WithMaxConnsPerHost limits the connections per host, dialing, active and
// idle together; requests past the limit wait for a connection. Default
// and zero: no limit, as in net/http; negative is an error.
func WithMaxConnsPerHost(n int) Option {
	return optionFunc(func(o *options) {
		o.maxConnsPerHost = n
		o.check("WithMaxConnsPerHost", n >= 0, "must not be negative, got %d", n)
	})
}

// WithIdleConnTimeout sets how long an idle connection stays pooled. Default
// 50 s, below the idle timeouts of AWS ALB (60 s) and nginx (75 s), so that
// the client, not the server, closes an idle connection; zero means idle
// connections are never closed by age; negative is an error. Keep it below
// the server's idle timeout.
func WithIdleConnTimeout(d time.Duration) Option {
	return durationOption("WithIdleConnTimeout", d, func(o *options) { o.idleConnTimeout = d })
}

// WithConnectTimeout bounds the TCP connect. Default 5 s, as urllib3's
// connect=5; zero means no limit but the operating system's; negative is
// an error.
func WithConnectTimeout(d time.Duration) Option {
	return durationOption("WithConnectTimeout", d, func(o *options) { o.connectTimeout = d })
}

// WithReadTimeout bounds the wait for response headers after the request is
// written, and the wait for each read of the response body; a body that
// keeps trickling is never cut off, a stall longer than d fails the read
// with an error that wraps ErrReadTimeout. Default 10 s, as urllib3's
// read=10; zero means no limit; negative is an error. It is urllib3's
// Timeout(read=).
func WithReadTimeout(d time.Duration) Option {
	return durationOption("WithReadTimeout", d, func(o *options) { o.readTimeout = d })
}

// WithTLSHandshakeTimeout bounds the TLS handshake. Default 10 s, as in
// http.DefaultTransport; zero means no limit; negative is an error.
func WithTLSHandshakeTimeout(d time.Duration) Option {
	return durationOption("WithTLSHandshakeTimeout", d, func(o *options) { o.tlsHandshakeTimeout = d })
}

// WithTLSConfig sets the TLS configuration of new connections; it is cloned,
// so later changes to c have no effect. Default and nil: the system roots
// and Go's defaults. HTTP/2 stays on with a custom configuration. Sessions
// are resumed: without a ClientSessionCache of c's, the Transport keeps
// the last 100 sessions (Go keeps none, so every redial pays a full
// handshake); Stats.TLSResumed counts the handshakes that resumed one.
func WithTLSConfig(c *tls.Config) Option {
	return optionFunc(func(o *options) {
		o.tlsConfig = nil
		if c != nil {
			o.tlsConfig = c.Clone()
		}
	})
}

// WithProxy sets the function that picks the proxy of a request. Default
// http.ProxyFromEnvironment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), as in
// http.DefaultTransport; nil means no proxy, as a nil http.Transport.Proxy
// does: every request is sent directly.
func WithProxy(proxy func(*http.Request) (*url.URL, error)) Option {
	return optionFunc(func(o *options) { o.proxy = proxy })
}

// WithDialContext sets the function that opens connections, in place of
// a net.Dialer with the connect timeout and TCP keep-alive probes: to dial
// a unix socket, through a custom resolver, or from a given address. The
// Transport still counts, gates and bounds (read timeout on writes,
// lifetime) the connections it returns, and it is called with a context
// that ends after the connect timeout (WithConnectTimeout). Default: the
// tuned net.Dialer; nil is an error.
func WithDialContext(dial func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return optionFunc(func(o *options) {
		o.dial = dial
		o.check("WithDialContext", dial != nil, "nil dial func")
	})
}

// WithoutHTTP2 makes the Transport speak HTTP/1.1 only, over TLS too: no
// "h2" in ALPN. Use it against servers whose HTTP/2 misbehaves, or to
// measure HTTP/1 connection pooling. Default: HTTP/2 is used when a TLS
// server offers it, as with http.DefaultTransport.
func WithoutHTTP2() Option {
	return optionFunc(func(o *options) { o.noHTTP2 = true })
}

// WithoutIdleLearning turns off idle-timeout learning: by default the
// Transport learns each host's idle timeout (from the connections its
// server closes while idle and from "Keep-Alive: timeout=N") and hands no
// request to an HTTP/1 connection about to be closed by its server (see the
// package documentation, Cooperating with servers). Without it, only
// WithIdleConnTimeout bounds the reuse of idle connections.
func WithoutIdleLearning() Option {
	return optionFunc(func(o *options) { o.noIdleLearning = true })
}

// WithMaxRetries sets how many times a request may be retried after its
// first attempt. Default 3 (4 attempts), urllib3's Retry.DEFAULT; zero
// disables retries; negative is an error.
func WithMaxRetries(n int) Option {
	return optionFunc(func(o *options) {
		o.maxRetries = n
		o.check("WithMaxRetries", n >= 0, "must not be negative, got %d", n)
	})
}

// WithRetryStatuses replaces the response statuses that are retried.
// Default DefaultRetryStatuses(): 429, 500, 501, 502, 503, 504; no codes
// means no status is retried; a code outside 100-599 is an error. It has
// no effect with WithCheckRetry, whose policy decides instead.
func WithRetryStatuses(codes ...int) Option {
	return optionFunc(func(o *options) {
		o.retryStatuses = statusSet{}
		for _, c := range codes {
			if !o.check("WithRetryStatuses", c >= 100 && c <= 599, "status %d outside 100-599", c) {
				continue
			}
			o.retryStatuses.add(c)
		}
	})
}

// WithRetryMethods replaces the methods that may be retried after the
// request may have reached the server. Default DefaultRetryMethods(); no
// methods means only keyed requests (Idempotency-Key) and requests whose
// connection was never made are retried; an empty or malformed method is
// an error, and so is a standard method not in upper case ("post"): methods
// are case-sensitive, so no request would match it. Extension methods are
// taken as written. Add a method only if every request your program sends
// with it is idempotent: a retried POST may be processed twice.
func WithRetryMethods(methods ...string) Option {
	return optionFunc(func(o *options) {
		o.retryMethods = map[string]bool{}
		for _, m := range methods {
			if !o.check("WithRetryMethods", validMethod(m), "malformed method %q", m) {
				continue
			}
			if std := strings.ToUpper(m); std != m && standardMethods[std] {
				o.check("WithRetryMethods", false, "method %q matches no request: methods are case-sensitive, use %q", m, std)
				continue
			}
			o.retryMethods[m] = true
		}
	})
}

// WithBackoff sets the exponential backoff between attempts: the first
// wait is about initial, each next one doubles, none exceeds max. Each wait
// is jittered by +-50%, so that clients that failed together do not retry
// together. Default 100 ms and 5 s; zero initial means retries are sent
// without waiting; negative values, or initial above max, are an error.
func WithBackoff(initial, max time.Duration) Option {
	return optionFunc(func(o *options) {
		o.backoffInitial, o.backoffMax = initial, max
		o.check("WithBackoff", initial >= 0 && max >= 0, "negative duration (initial %v, max %v)", initial, max)
		o.check("WithBackoff", initial <= max, "initial %v above max %v", initial, max)
	})
}

// WithMaxRetryAfter sets the longest Retry-After (on 429 and 503) the client
// waits for; if a server asks for longer, the response is returned to the
// caller at once instead: no request sleeps for an hour because a header
// said so. Default 30 s; zero means any positive Retry-After ends the
// retries; negative is an error.
func WithMaxRetryAfter(d time.Duration) Option {
	return durationOption("WithMaxRetryAfter", d, func(o *options) { o.maxRetryAfter = d })
}

// WithBodyBuffer lets a request whose body has no GetBody be retried: the
// body is recorded, up to maxBytes, as the first attempt streams it, and
// later attempts send the recording and then the rest; a longer body is
// sent once (see the package documentation, Retries). Default: off; zero
// means no buffering; any positive limit works, the memory used being at
// most the body's length; negative is an error.
func WithBodyBuffer(maxBytes int64) Option {
	return optionFunc(func(o *options) {
		o.bodyBuffer = maxBytes
		o.check("WithBodyBuffer", maxBytes >= 0, "must not be negative, got %d", maxBytes)
	})
}

// WithResponseBuffer lets a response whose body fails part-way be retried:
// for a request that may be sent again, a body of known length up to
// maxBytes is read whole before the response is returned, so a failure
// while reading it is a failed attempt, retried like any other (see the
// package documentation, Opt-in features). Other bodies stream as usual.
// Default: off; zero means no buffering; negative is an error.
func WithResponseBuffer(maxBytes int64) Option {
	return optionFunc(func(o *options) {
		o.responseBuffer = maxBytes
		o.check("WithResponseBuffer", maxBytes >= 0, "must not be negative, got %d", maxBytes)
	})
}

// WithCheckRetry replaces the retry policy with a go-retryablehttp one,
// such as retryablehttp.DefaultRetryPolicy: it decides whether an outcome
// is worth a retry, and sees transport errors wrapped in *url.Error, as
// inside go-retryablehttp. The safety rules still hold (only idempotent or
// keyed requests, replayable bodies, the retry and Retry-After limits, the
// caller's context). If it returns an error, the response is closed and
// the error returned. Default: the status list and the rules of
// retryablehttp.ErrorPropagatedRetryPolicy; nil is an error.
func WithCheckRetry(check retryablehttp.CheckRetry) Option {
	return optionFunc(func(o *options) {
		o.checkRetry = check
		o.check("WithCheckRetry", check != nil, "nil CheckRetry")
	})
}

// WithLogger sets the logger of the Transport's events: at Warn, a request
// that gave up although its outcome was worth a retry, a circuit breaker
// that opened, a host that asked for a pause; at Info, a breaker's steps
// back to closed; at Debug, retries, refused retries and the give-up of a
// request its caller cancelled. Records carry the fields of the matching
// Observer event, never a credential, query value or header value (see the
// package documentation, Logs). Default and nil: silent.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) { o.tel.logger = l })
}

// WithObserver adds o to the observers of the Transport. Unlike other
// options it accumulates: every observer given gets every event, in the
// order the options were given. Default: none; a zero Observer does
// nothing.
func WithObserver(o Observer) Option {
	return optionFunc(func(opts *options) { opts.tel.observer = opts.tel.observer.merge(o) })
}

// WithAttemptTransport wraps the RoundTripper that each attempt is sent
// through, for middleware that must see attempts rather than requests,
// such as otelhttp.NewTransport (AttemptFromContext gives the attempt
// number). wrap is called once, by NewTransport, with the RoundTripper of
// the tuned http.Transport; its result sends every attempt, retries and
// hedges alike, inside the circuit breaker and the attempt deadline. Given
// more than once, each wraps the previous. Default: none; a nil wrap, or
// one that returns nil, is an error.
func WithAttemptTransport(wrap func(http.RoundTripper) http.RoundTripper) Option {
	return optionFunc(func(o *options) {
		if o.check("WithAttemptTransport", wrap != nil, "nil wrap func") {
			o.attemptWraps = append(o.attemptWraps, wrap)
		}
	})
}

// WithRetryBudget sets the retry budget of each host (see RetryBudget and
// the package documentation, Retry budget): the requests to a host that
// succeeded earn it Ratio retries each within a sliding Window, on top of
// a floor of MinPerSecond per second of the window; a retry or hedge the
// budget refuses is not sent. Default: on, as RetryBudget{}; zero fields
// take their defaults; a negative Ratio or MinPerSecond means none; a
// Ratio above 10, or a Window that is not whole seconds from 1 s to 5
// minutes, is an error.
func WithRetryBudget(b RetryBudget) Option {
	return optionFunc(func(o *options) {
		o.budget = b.config()
		o.check("WithRetryBudget", b.Ratio <= 10, "Ratio must not exceed 10, got %v", b.Ratio)
		o.check("WithRetryBudget", b.Window == 0 ||
			b.Window >= time.Second && b.Window <= maxBudgetWindow && b.Window%time.Second == 0,
			"Window must be whole seconds from 1s to %v, got %v", maxBudgetWindow, b.Window)
	})
}

// WithoutRetryBudget turns the retry budget off: every retry that the policy
// allows is sent, up to WithMaxRetries per request, as in urllib3 or
// go-retryablehttp. Against a host that fails every request, each request
// then reaches it 1+WithMaxRetries times. Default: the budget is on.
func WithoutRetryBudget() Option {
	return optionFunc(func(o *options) { o.budget = budgetConfig{} })
}

// WithCircuitBreaker puts a circuit breaker in front of each host (see
// CircuitBreaker, and the package documentation, Opt-in features): when a
// host's failed attempts reach the limits, its circuit opens, and attempts
// to it fail at once with a *CircuitOpenError (ErrCircuitOpen), not
// retried, until OpenTimeout passes and HalfOpenProbes attempts decide.
// Default: off; zero fields take their defaults; negative durations, or a
// FailureRatio outside 0..1, are an error.
func WithCircuitBreaker(cfg CircuitBreaker) Option {
	return optionFunc(func(o *options) {
		c := cfg.withDefaults()
		o.breaker = &c
		o.check("WithCircuitBreaker", cfg.FailureRatio >= 0 && cfg.FailureRatio <= 1,
			"FailureRatio must be between 0 and 1, got %v", cfg.FailureRatio)
		o.check("WithCircuitBreaker", cfg.Interval >= 0, "negative Interval %v", cfg.Interval)
		o.check("WithCircuitBreaker", cfg.OpenTimeout >= 0, "negative OpenTimeout %v", cfg.OpenTimeout)
	})
}

// WithAttemptTimeout bounds each attempt's wait for response headers: an
// attempt without headers after d is abandoned (its connection closed) and
// retried if the request may be retried, or ends with an error that wraps
// ErrAttemptTimeout. It never cuts off a body: the read timeout governs
// that (see the package documentation, Opt-in features). Default: off;
// zero means no attempt deadline (the read timeout already bounds the
// wait for headers); negative is an error.
func WithAttemptTimeout(d time.Duration) Option {
	return durationOption("WithAttemptTimeout", d, func(o *options) { o.attemptTimeout = d })
}

// WithHedging sends hedged attempts: if an attempt has no response after
// delay, another attempt of the same request is sent, up to maxHedges more,
// each delay after the previous one; the first response that is not worth
// a retry wins and the others are cancelled. Only requests that may be
// retried are hedged, each hedge drawing on the retry budget (see the
// package documentation, Opt-in features). Default: off; zero delay means
// no hedging; zero maxHedges means 1; a negative delay, or maxHedges
// outside 0..10, is an error.
func WithHedging(delay time.Duration, maxHedges int) Option {
	return optionFunc(func(o *options) {
		o.hedgeDelay, o.maxHedges = delay, maxHedges
		if maxHedges == 0 {
			o.maxHedges = defaultMaxHedges
		}
		o.check("WithHedging", delay >= 0, "delay must not be negative, got %v", delay)
		o.check("WithHedging", maxHedges >= 0 && maxHedges <= maxHedgesLimit,
			"maxHedges must be between 0 and %d, got %d", maxHedgesLimit, maxHedges)
	})
}

// WithConnMaxLifetime retires connections older than d, +-10%: the first
// request given an expired connection asks to close it (HTTP/1) or moves
// its host to a new pool (HTTP/2: the old connection closes once its
// streams ended), and later requests go to a new connection; callers see
// no error and nothing is sent twice. Stats.ConnsExpired counts the
// connections retired. Default: off, as in net/http; zero means
// connections are never retired by age; negative is an error. 1 to 5
// minutes is typical (see the package documentation, Opt-in features).
func WithConnMaxLifetime(d time.Duration) Option {
	return durationOption("WithConnMaxLifetime", d, func(o *options) { o.connMaxLifetime = d })
}

// WithoutHostPause turns the host pause off: each request then waits only
// for the Retry-After of its own 429 or 503. Default: a 503's Retry-After
// within WithMaxRetryAfter pauses every attempt to its host, and a 429's,
// or rate-limit fields that say no quota is left, the attempts with the
// same rate-limit key (see the package documentation, Cooperating with
// servers); Stats.Pauses and Observer.OnHostPause report the pauses.
func WithoutHostPause() Option {
	return optionFunc(func(o *options) { o.noHostPause = true })
}

// WithRateLimitKey sets what tells the callers of one host apart for its
// rate limits: a 429, or rate-limit fields that say no quota is left, pause
// only the requests whose key equals that of the request that got the
// response; a 503 still pauses the whole host. Default: the Authorization
// and Cookie headers together (requests with neither share one key). Keys
// are hashed, never kept or logged. key is called for each attempt to a
// host while one of its keys is paused, and for each response that pauses
// one; nil is an error.
func WithRateLimitKey(key func(*http.Request) string) Option {
	return optionFunc(func(o *options) {
		if o.check("WithRateLimitKey", key != nil, "nil key func") {
			o.rateLimitKey = key
		}
	})
}

// WithResolver sets how a host's name is resolved for balancing: a host
// whose name resolves to more than one address gets a pool of connections
// per address, and each attempt goes to the less loaded of two of them
// picked at random, by attempts outstanding (see the package
// documentation, Balancing). resolve is called with a name, never an IP
// address, at the host's first request and again every 30 s; for service
// discovery of your own (Consul, Kubernetes endpoints) or for tests.
// Default: net.DefaultResolver; nil is an error.
func WithResolver(resolve func(ctx context.Context, host string) ([]netip.Addr, error)) Option {
	return optionFunc(func(o *options) {
		if o.check("WithResolver", resolve != nil, "nil resolve func") {
			o.resolve = resolve
		}
	})
}

// WithoutBalancing turns balancing off: each host has one pool, whose
// connections net/http dials to the first address of its name that
// answers, as http.Transport does. Default: balancing is on for names
// with more than one address, unless WithDialContext is given without
// WithResolver (the dialer resolves then).
func WithoutBalancing() Option {
	return optionFunc(func(o *options) { o.noBalancing = true })
}

// Private implementation past this point.

// options is the finished configuration. errs collects what was wrong with
// the options as they were applied; NewTransport reports them all.
type options struct {
	maxIdleConns        int
	maxIdleConnsPerHost int
	maxConnsPerHost     int
	idleConnTimeout     time.Duration
	connectTimeout      time.Duration
	readTimeout         time.Duration
	tlsHandshakeTimeout time.Duration
	tlsConfig           *tls.Config
	proxy               func(*http.Request) (*url.URL, error)
	dial                func(ctx context.Context, network, addr string) (net.Conn, error) // nil: the tuned net.Dialer
	noHTTP2             bool
	noIdleLearning      bool
	resolve             resolveFunc // nil: net.DefaultResolver, unless dial is set
	noBalancing         bool

	maxRetries     int
	retryStatuses  statusSet
	retryMethods   map[string]bool
	backoffInitial time.Duration
	backoffMax     time.Duration
	maxRetryAfter  time.Duration
	bodyBuffer     int64
	responseBuffer int64 // zero: off
	checkRetry     retryablehttp.CheckRetry

	budget          budgetConfig  // zero: off
	attemptTimeout  time.Duration // zero: off
	hedgeDelay      time.Duration // zero: off
	maxHedges       int
	breaker         *CircuitBreaker            // nil: off
	connMaxLifetime time.Duration              // zero: off
	noHostPause     bool                       // false: on
	rateLimitKey    func(*http.Request) string // nil: Authorization and Cookie

	tel          telemetry // WithObserver, WithLogger
	attemptWraps []func(http.RoundTripper) http.RoundTripper

	errs []error
}

func defaultOptions() options {
	o := options{
		maxIdleConns:        defaultMaxIdleConns,
		maxIdleConnsPerHost: defaultMaxIdleConnsPerHost,
		maxConnsPerHost:     defaultMaxConnsPerHost,
		idleConnTimeout:     defaultIdleConnTimeout,
		connectTimeout:      defaultConnectTimeout,
		readTimeout:         defaultReadTimeout,
		tlsHandshakeTimeout: defaultTLSHandshakeTimeout,
		proxy:               http.ProxyFromEnvironment,
		maxRetries:          defaultMaxRetries,
		retryMethods:        map[string]bool{},
		backoffInitial:      defaultBackoffInitial,
		backoffMax:          defaultBackoffMax,
		maxRetryAfter:       defaultMaxRetryAfter,
		budget:              defaultBudgetConfig(),
	}
	for _, c := range DefaultRetryStatuses() {
		o.retryStatuses.add(c)
	}
	for _, m := range DefaultRetryMethods() {
		o.retryMethods[m] = true
	}
	return o
}

// buildOptions applies opts over the defaults and returns every problem
// found, each naming its option.
func buildOptions(opts []Option) (options, error) {
	o := defaultOptions()
	for i, opt := range opts {
		if opt == nil {
			o.errs = append(o.errs, fmt.Errorf("keepalive: option %d is nil", i))
			continue
		}
		opt.apply(&o)
	}
	if len(o.errs) > 0 {
		return o, errors.Join(o.errs...)
	}
	return o, nil
}

// check records an error naming option unless ok; it returns ok.
func (o *options) check(option string, ok bool, format string, args ...any) bool {
	if !ok {
		o.errs = append(o.errs, &OptionError{Option: option, Reason: fmt.Sprintf(format, args...)})
	}
	return ok
}

// OptionError reports an invalid option passed to NewClient or NewTransport.
type OptionError struct {
	Option string // the constructor, such as "WithMaxRetries"
	Reason string
}

func (e *OptionError) Error() string {
	return "keepalive: invalid " + e.Option + ": " + e.Reason
}

func durationOption(name string, d time.Duration, set func(*options)) Option {
	return optionFunc(func(o *options) {
		set(o)
		o.check(name, d >= 0, "must not be negative, got %v", d)
	})
}

// standardMethods are the methods of RFC 9110 and RFC 5789 (PATCH), which
// senders write in upper case.
var standardMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true,
	http.MethodPut: true, http.MethodPatch: true, http.MethodDelete: true,
	http.MethodConnect: true, http.MethodOptions: true, http.MethodTrace: true,
}

// validMethod reports whether m is an RFC 9110 token, as net/http requires.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c < 0x80 && isTokenPunct(c):
		default:
			return false
		}
	}
	return true
}

func isTokenPunct(c byte) bool {
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

func newPolicy(o options) policy {
	return policy{
		maxRetries:    o.maxRetries,
		statuses:      o.retryStatuses,
		methods:       o.retryMethods,
		maxRetryAfter: o.maxRetryAfter,
		check:         o.checkRetry,
		initial:       o.backoffInitial,
		max:           o.backoffMax,
	}
}
