// Package keepalive builds HTTP clients that keep their connections alive,
// and retry what failed only when that is safe.
//
// # Why
//
// Reusing a connection is the cheapest speed-up an HTTP client has, and Go's
// default client mostly does not: http.DefaultTransport keeps 2 idle
// connections per host, so at 64 concurrent requests to one host it closes
// nearly every connection it finishes with and dials a new one (5,645
// connections for 20,000 requests, at 0.4x the speed of a tuned transport).
// Retry libraries fix failures and add their own: go-retryablehttp copies
// every request body into memory, flushes the connection pool on every
// failure, sends a POST that got a 503 five times, and sleeps for whatever
// Retry-After a server sends.
//
// NewClient returns a standard *http.Client that does neither. It is the Go
// counterpart of urllib3's
//
//	PoolManager(retries=Retry(status_forcelist=[429, 500, 501, 502, 503, 504]),
//	            timeout=Timeout(connect=5, read=10))
//
// # The transport
//
// Connections are pooled per host (256 idle ones each), closed when idle
// before servers close them (after 50 s), probed with TCP keep-alives and,
// over HTTP/2, with pings. The connect timeout (5 s) bounds the TCP
// connect; the read timeout (10 s) bounds the wait for response headers and
// every read of the body, as urllib3's read= does: a slow but steady
// download is never cut off, a stalled one fails with ErrReadTimeout.
// Proxies come from the environment and HTTP/2 is used when the server
// offers it, as with http.DefaultTransport.
//
// A burst of requests opens no more connections than it has requests: a
// dial that starts while a connection is about to come free waits (at most
// 10 ms) for it, and is dropped before it connects if its request got one.
// net/http alone lets such dials connect and join the pool, which made 64
// concurrent requests open up to 97 connections.
//
// # Balancing
//
// A pool pins its traffic to whichever servers its connections were
// opened to: net/http dials the first address of a name that answers,
// and keep-alive then reuses those connections, so a name with eight
// replicas behind it (DNS round robin, a Kubernetes headless service)
// sends everything to the first. A Transport resolves each host's name
// instead, and when it has more than one address (of the family of the
// first), keeps a pool per address and sends each attempt to the less
// loaded of two addresses picked at random, by attempts outstanding: a
// slow replica holds its attempts longer and gets fewer. The Host header,
// SNI and certificate checks stay those of the name; an HTTP/2 host gets
// one connection per address.
//
// The name is resolved again every 30 s, in the background of a request,
// and a second after a connect fails: an address that joins takes its
// share, one that leaves takes no new attempt, finishes those in flight
// and closes its connections. A connect that fails sent nothing, so the
// attempt goes to another address at once, whatever its method. Five
// failures in a row (connect failures, resets, timeouts, never a status)
// eject an address for 30 s times its count of ejections, at most 5 min,
// while at most half of the addresses are ejected; then one request
// probes it. A retry goes to another address than the attempt that
// failed, and a failure of one address while others are usable does not
// count towards the host's circuit breaker. AddrStats and
// Observer.OnAddrChange show it at work.
//
// Balancing stays off for IP addresses, for requests a proxy carries
// (the proxy balances), with WithoutBalancing, and with WithDialContext
// unless WithResolver is given too (the dialer resolves then; with both,
// it is called with the chosen "ip:port"). A name with one address is
// sent as net/http sends it, unless WithResolver gave that address.
// Limits such as WithMaxConnsPerHost apply per address.
//
// # Retries
//
// A request is retried when its outcome is worth it: a status in the retry
// list (DefaultRetryStatuses), or a transport error such as a refused or
// reset connection, an EOF or a timeout. Certificate errors, malformed
// requests, unsupported schemes, host names that do not exist and the
// caller's own cancellation are never retried.
//
// A request is sent again only when that is safe: its method is idempotent
// (GET, HEAD, OPTIONS, TRACE, PUT, DELETE; RFC 9110 section 9.2.2), it
// carries an Idempotency-Key or X-Idempotency-Key header, or it provably
// never left: its connection was never made, or net/http found the pooled
// connection closed by the server before writing a byte of it. A POST
// without a key is never sent twice. Its body must be replayable:
// http.NewRequest sets GetBody for in-memory bodies (a bytes.Buffer,
// bytes.Reader or strings.Reader); other bodies are sent once. Bodies are
// never read whole into memory by default. An upload that the server stops
// taking for the read timeout fails with ErrWriteTimeout.
//
// WithBodyBuffer lets a body without GetBody be retried: it is recorded, up
// to a limit, as the first attempt streams it to the server, and later
// attempts send the recording and then the rest. Nothing is read before
// the first attempt reads it, so the upload starts at once and honours the
// request's context. Only requests that may be sent again are recorded; a
// body known to be longer than the limit (ContentLength) is not recorded,
// and one that turns out longer is sent once and not retried.
//
// Between attempts the client waits with exponential backoff and jitter, or
// for the Retry-After of a 429 or 503 when it is no longer than
// WithMaxRetryAfter allows and the context's deadline leaves time for it;
// otherwise it returns the last response at once. A retry starts only when
// the context's deadline leaves room for the wait and another attempt. A
// discarded response is drained (up to 64 KiB) so its connection is
// reused, and the pool is never flushed. When retries run out on a status,
// the last response is returned with its body intact; on errors, a
// *RetryError that wraps the last error. Cancelling the context stops a
// wait at once.
//
// # Retry budget
//
// Retries are budgeted per host, on by default (WithRetryBudget): each
// request that succeeded in the last 10 s earns 0.2 retries, and a floor of
// 100 per 10 s lets a quiet client retry, so an upstream that fails
// everything sees about 1.01 attempts per request instead of 4, from every
// client instance at once, while one that fails 5% of attempts keeps all
// its retries. A retry the budget refuses is not sent: the request ends at
// once with the outcome of its last attempt (its response, or its error,
// in a *RetryError after more than one attempt), and Stats.BudgetRefusals
// counts it. Hedged attempts draw from the same budget. WithoutRetryBudget
// turns it off: every retry the policy allows is sent, up to WithMaxRetries
// per request, as in urllib3 or go-retryablehttp.
//
// # Cooperating with servers
//
// A host that asks for quiet gets it from the whole Transport. After a 503
// with a Retry-After no longer than WithMaxRetryAfter, every attempt to
// that host (its HostStats key) from any goroutine of the Transport, first
// attempts, retries and hedges alike, waits until the time asked for
// before it is sent. After a 429 with a Retry-After, the attempts with the
// same rate-limit key wait the same way, and no others: rate limits are
// kept per API key, user or tenant, and one tenant's exhausted quota must
// not hold back another's requests. The key is the Authorization and
// Cookie headers together unless WithRateLimitKey says otherwise; keys are
// hashed, never kept or logged.
//
// The request that got the response waits once, for the longer of its own
// wait and the pause. An attempt whose context has a deadline before the
// pause ends is not sent and fails at once with a *HostPausedError
// (errors.Is(err, ErrHostPaused)); a request that got the 429 itself gets
// that response back instead, as when its own Retry-After does not fit the
// deadline. A Retry-After past the cap sets no pause, and cancelling a
// context ends its wait at once.
//
// Responses that say no quota is left pause the requests with their key
// the same way, whatever their status, for as long as they say, within the
// same cap: the RateLimit field of draft-ietf-httpapi-ratelimit-headers (a
// policy with r=0 waits for its t; the draft-07 dictionary "remaining=0,
// reset=N" too), the older drafts' RateLimit-Remaining: 0 with
// RateLimit-Reset (seconds), and the common X-RateLimit-Remaining: 0 with
// X-RateLimit-Reset, read as seconds to wait below 10^9 (a fraction
// allowed) and as a Unix time in seconds from there, as GitHub sends it. A
// response with none of these fields costs three map lookups; a request to
// a host that is not paused, one atomic load. Stats.Pauses and
// Stats.PauseWaits count the pauses and the attempts they held back, and
// Observer.OnHostPause reports each pause. The hosts past HostStatsLimit
// are never paused. WithoutHostPause turns pauses off: each request then
// waits only for the Retry-After of its own 429 or 503.
//
// Each host's idle timeout is learned, from the connections its server
// closes while idle and from a "Keep-Alive: timeout=N" response header,
// and an HTTP/1 connection idle for longer than that timeout less a margin
// (250 ms, or half a timeout under 500 ms) is not handed a request, so
// that no request is written into a connection its server is closing:
// net/http sends it on another connection, and an unkeyed POST, which
// nothing may resend once written, is not lost. A close teaches only when
// its connection sat in the pool with its last response read whole, and a
// shorter timeout only once a second close confirms it; a burst of closes
// at scattered ages, a server restarting, teaches nothing. The check runs
// only at the first write of a request on a connection back from the
// pool: never on a body (Expect: 100-continue), on HTTP/2, or on a
// connection the caller took over (a WebSocket after its 101, a tunnel of
// the caller's CONNECT). Through a proxy's tunnel, a connection is judged
// by the server at its far end. Stats.IdleCloses and Stats.ConnsRetiredIdle
// count the closes seen and the connections not reused.
// WithoutIdleLearning turns it off: only WithIdleConnTimeout then bounds
// the reuse of idle connections.
//
// An HTTP/2 server that closes an idle connection says, in its GOAWAY,
// which streams it did not process; net/http sends those again on a new
// connection, but only when it can rewind the body. A body it cannot
// rewind (no GetBody) is kept while it streams, its first 64 KiB, so that
// a stream refused unprocessed is sent again too: a small unkeyed POST is
// not lost to a GOAWAY that crossed it. A larger one that was read past
// 64 KiB fails with an error that says so.
//
// # Opt-in features
//
// WithAttemptTimeout bounds each attempt's wait for response headers. It is
// off by default because the right value is a latency target of the
// service called (a p99), which no library can know. Once headers arrive
// the deadline is over: the body is governed by the read timeout alone.
// Headers that arrive just as the deadline passes are either returned
// intact or discarded for the timeout error. It costs a timer and a
// context per attempt, only when set.
//
// WithHedging sends another attempt of a request that has no response
// after a delay; the first response that is not worth a retry wins, and
// the other attempts are cancelled, their responses closed. The winner's
// body is never cut off by the cancellation of the others. Only requests
// that may be retried are hedged: an idempotent method or an
// Idempotency-Key header, a replayable body, and WithMaxRetries above
// zero. Each hedge draws one retry from the retry budget; when the budget
// or the host's circuit breaker refuses a hedge, no further hedge is sent,
// and the attempts in flight run on. A hedge counts in Stats.Attempts and
// Stats.Hedges, not in Stats.Retries. Choose the delay near the service's
// p95 latency: hedging then adds about 5% load and cuts the tail past it.
//
// WithCircuitBreaker puts a circuit breaker in front of each host, keyed
// as in HostStats ("host:port"); the hosts past HostStatsLimit have none,
// so that one host's failures never refuse another's requests. An attempt
// fails when it ends with a transport error or with a status in the retry
// list (429 and 5xx by default); any other response is a success; an
// attempt cancelled by its caller, or a hedge cancelled because another
// attempt won, is not counted. When the failures reach the configured
// limits the circuit opens: attempts to that host fail at once, without a
// connection, with an error that matches ErrCircuitOpen (a
// *CircuitOpenError; in a *RetryError when earlier attempts were made),
// and are not retried. After OpenTimeout it half-opens and lets
// HalfOpenProbes attempts through to decide whether to close again; a
// hedge the half-open circuit refuses never cancels the probe.
//
// WithConnMaxLifetime makes traffic follow DNS changes and rebalance
// behind L4 load balancers (a Kubernetes Service spreads connections, not
// requests), at the price of a new connection (a TCP and often a TLS
// handshake) per lifetime per connection, and, per request, a copy of the
// request's header map and an httptrace.ClientTrace. Pick the lifetime to
// match how fast the deployment scales: 1 to 5 minutes is typical. It is
// off by default, as in net/http, Envoy (max_connection_duration unset)
// and Finagle (maxLifeTime unbounded). Lifetimes are jittered by +-10%, so
// that connections dialed together do not all expire together. The first
// request given a connection past its lifetime carries "Connection:
// close", so the connection ends once that response is read, and later
// requests go to a new connection. If the server leaves the connection
// open anyway (it does not echo the header), the next request given it
// writes nothing on it and goes to a new connection. Callers see no error
// and nothing is sent twice, whatever the method and body (a POST without
// Idempotency-Key, a streamed body, Expect: 100-continue). A request that
// asks to switch protocols (Upgrade, as a WebSocket does) is left alone.
// An expired connection that stays idle is closed by the idle timeout.
// An HTTP/2 connection keeps the streams it carries: net/http has no way
// to close one connection gracefully, so with a lifetime each host (and
// each address of a balanced host) has a pool of its own, and the first
// request given a connection past its lifetime moves its host to a new
// pool. New requests go there and dial; the old pool takes no new
// request, and closes its connection once the last stream on it ended.
// Against nginx, 32 goroutines for 30 s with a lifetime of 1 s lost no
// request, streamed POSTs included.
//
// WithResponseBuffer lets a response whose body fails part-way be retried:
// for a request that may be sent again (an idempotent method or an
// Idempotency-Key header, with a body that can be replayed), a body of
// known length (Content-Length) up to the limit is read whole before the
// response is returned, so a failure while reading it (a reset, an HTTP/2
// GOAWAY that closed the connection, the read timeout) is an attempt that
// failed, retried like any other, rather than an error from the caller's
// Read. The response then carries the body in memory and its connection
// is back in the pool at once. Bodies of unknown length (chunked, or
// decompressed by net/http) and longer ones are streamed as usual.
//
// # Logs, observers and statistics
//
// Logs (WithLogger) and errors never contain URL credentials, query values,
// or header values: logged URLs have their credentials and query values
// redacted. Events are logged at Warn, so that a logger at the default
// level (slog.Default logs Info and above) shows them: a request that gave
// up although its outcome was worth a retry ("keepalive: giving up"; at
// Debug when its caller cancelled it), a circuit breaker that opened, a
// host that asked for a pause, an address ejected ("keepalive: address
// ejected"). At Info, a circuit breaker's steps back to closed, and the
// addresses that join, leave or are restored to a balanced name. At Debug, each retry ("keepalive: retrying") and each retry the
// budget refused. Each record carries the fields of the matching Observer
// event as attributes: method, url, host, attempt, status, error, reason,
// wait (of a give-up, only the wait it refused), and retry_after for
// retries; a breaker's from and to; a pause's source; an address's addr. Durations are text,
// such as "1.5s".
//
// Observer hooks (WithObserver) see the same events as values, and
// Transport.Stats and Transport.HostStats count them. WithAttemptTransport
// wraps each attempt for middleware that must see attempts rather than
// requests, such as otelhttp.NewTransport for a client span per attempt.
package keepalive

// The package stands on three floors, to which TestLayering holds it. On
// top, the composers: the Transport and its options, RoundTrip's retry
// loop, hedging, and the attempt. In the middle, the host: everything kept
// per host, reached through its methods. On the ground, the mechanisms,
// which never see the Transport or a host's state and tell them what they
// must through interfaces of their own: the connection wrapper, the dial
// gate, bodies and their watches, idle learning, the policy, the budget,
// the breaker, telemetry, errors and the clock. The header parsers, pure
// leaves, are in internal/headers, where the compiler keeps them below.
