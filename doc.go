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
// http.NewRequest sets GetBody for in-memory bodies; other bodies are sent
// once, unless WithBodyBuffer allows a bounded recording as it streams.
// Bodies are never read whole into memory by default. An upload that the
// server stops taking for the read timeout fails with ErrWriteTimeout.
//
// Between attempts the client waits with exponential backoff and jitter, or
// for the Retry-After of a 429 or 503 when it is no longer than
// WithMaxRetryAfter allows and the context's deadline leaves time for it;
// otherwise it returns the last response at once. A discarded response is
// drained (up to 64 KiB) so its connection is reused, and
// the pool is never flushed. When retries run out on a status, the last
// response is returned with its body intact; on errors, a *RetryError that
// wraps the last error. Cancelling the context stops a wait at once.
//
// Retries are budgeted per host, on by default (WithRetryBudget): each
// request that succeeded in the last 10 s earns 0.2 retries, and a floor of
// 100 per 10 s lets a quiet client retry, so an upstream that fails
// everything sees about 1.01 attempts per request instead of 4, from every
// client instance at once, while one that fails 5% of attempts keeps all
// its retries. A retry starts only when the context's
// deadline leaves room for the wait and another attempt. Opt-in:
// WithAttemptTimeout, WithConnMaxLifetime, WithCircuitBreaker, WithHedging,
// WithResponseBuffer.
//
// Each host's idle timeout is learned (from the connections its server
// closes while idle, and from Keep-Alive: timeout=N), and an HTTP/1
// connection about to be closed by its server is not reused, so that no
// request, an unkeyed POST least of all, is written into a closing
// connection (WithoutIdleLearning turns it off). A close teaches only
// when its connection sat in the pool with its last response read whole,
// and a shorter timeout only once a second close confirms it; a burst of
// closes at scattered ages, a server restarting, teaches nothing. The
// check runs only at the first write of a request on a connection back
// from the pool: never on a body (Expect: 100-continue), on HTTP/2, or on
// a connection the caller took over (a WebSocket after its 101, a tunnel
// of the caller's CONNECT). Through a proxy's tunnel, a connection is
// judged by the server at its far end.
//
// Logs (WithLogger) and errors never contain URL credentials, query values,
// or header values.
//
// A host that asks for quiet gets it from the whole Transport: after a 503
// with a Retry-After within WithMaxRetryAfter, every attempt to that host,
// from any goroutine, waits until the time asked for, or fails at once
// with a HostPausedError when the context's deadline comes first. After a
// 429 with a Retry-After, or a response whose rate-limit fields
// (RateLimit, X-RateLimit-Remaining) say no quota is left, the requests
// with the same credentials wait the same way, and no others: quotas are
// kept per API key or tenant (WithRateLimitKey names the key;
// WithoutHostPause turns pauses off).
package keepalive
