// This file holds the errors a Transport returns: the give-up error of the
// retry loop, the timeouts of attempts, reads and writes, the circuit
// breaker's refusal, and the errors of malformed requests. Every one is a
// type reachable with errors.As, and the timeouts and the refusal also
// match a sentinel with errors.Is.

package keepalive

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// RetryError is returned when a request failed after more than one attempt:
// its retries ran out on errors, or the caller's context ended while it
// waited to retry, or when the WithCheckRetry policy returned an error.
// Err is why it ended (the last attempt's error, the policy's, or the
// context's); errors.Is and errors.As reach Err and the last attempt's
// error. A request whose retries ran out on a status returns that response,
// not an error, as http.Client does for any status. A request that failed
// on its only attempt returns the error as net/http gave it.
//
// Like the errors of http.Transport, its message names neither the method
// nor the URL: http.Client wraps it in a *url.Error that does, as in
//
//	Get "http://api.example/items": keepalive: gave up after 4 attempts: dial tcp ...: connection refused
//
// Method and URL hold them, the URL without credentials or query values;
// *url.Error masks only the URL's password.
type RetryError struct {
	Method   string
	URL      string // with credentials and query values redacted
	Attempts int    // attempts made
	Status   int    // status of the last attempt, or 0 if it failed with an error
	Err      error

	last   error  // the last attempt's error, if it is not Err
	secret string // URL password, scrubbed from the message
}

func (e *RetryError) Error() string {
	var b strings.Builder
	plural := "s"
	if e.Attempts == 1 {
		plural = ""
	}
	fmt.Fprintf(&b, "keepalive: gave up after %d attempt%s", e.Attempts, plural)
	if e.Status != 0 {
		fmt.Fprintf(&b, " (last status %d)", e.Status)
	}
	if e.last != nil {
		fmt.Fprintf(&b, " (last error: %v)", e.last)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return scrub(b.String(), e.secret)
}

// Timeout reports whether the request ended on a timeout: a read, write,
// attempt or connect timeout of its last attempt, or the context's
// deadline. It keeps the net.Error idiom working through *url.Error after
// retries, as it does for a request that failed on its first attempt.
func (e *RetryError) Timeout() bool {
	for _, err := range e.Unwrap() {
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			return true
		}
	}
	return false
}

// Unwrap returns Err and, if different, the last attempt's error.
func (e *RetryError) Unwrap() []error {
	if e.last != nil {
		return []error{e.Err, e.last}
	}
	return []error{e.Err}
}

// ErrReadTimeout is matched, with errors.Is, by the error of a response body
// read that waited for data longer than the read timeout: a *TimeoutError
// whose Op is "read".
var ErrReadTimeout = errors.New("keepalive: read timeout")

// ErrWriteTimeout is matched, with errors.Is, by the error of an attempt
// whose request body made no progress for the read timeout: a
// *TimeoutError whose Op is "write".
var ErrWriteTimeout = errors.New("keepalive: write timeout")

// ErrAttemptTimeout is matched, with errors.Is, by the error of an attempt
// abandoned by WithAttemptTimeout: a *TimeoutError whose Op is "attempt".
var ErrAttemptTimeout = errors.New("keepalive: attempt timeout")

// TimeoutError is the error of a limit of the Transport's own that passed;
// Op says which:
//
//   - "read": a response body read waited longer than the read timeout
//     (WithReadTimeout) for data. The body is closed and its connection
//     discarded.
//   - "write": an attempt's request could not be sent: for the read
//     timeout, a write to the connection made no progress (HTTP/1: the
//     server stopped reading), or the request body was not taken from the
//     caller (HTTP/2: the server gave the stream no flow-control window).
//     Time the caller's body spends producing data is not counted. The
//     attempt's connection or stream is closed, and the attempt is retried
//     only if the request may be sent again.
//   - "attempt": an attempt had no response headers within the attempt
//     timeout (WithAttemptTimeout). The error does not match
//     context.Canceled or context.DeadlineExceeded: the caller's context
//     did not end.
//
// errors.Is matches it to the sentinel of its Op: ErrReadTimeout,
// ErrWriteTimeout or ErrAttemptTimeout. It is a net.Error whose Timeout()
// is true.
type TimeoutError struct {
	Op    string        // "read", "write" or "attempt"
	Limit time.Duration // the timeout that passed: the read timeout, or the attempt timeout for "attempt"
}

var _ net.Error = (*TimeoutError)(nil)

func (e *TimeoutError) Error() string {
	switch e.Op {
	case opRead:
		return fmt.Sprintf("keepalive: read timeout: no response body data for %v", e.Limit)
	case opWrite:
		return fmt.Sprintf("keepalive: write timeout: no progress sending the request for %v", e.Limit)
	case opAttempt:
		return fmt.Sprintf("keepalive: attempt timeout: no response headers within %v", e.Limit)
	}
	return fmt.Sprintf("keepalive: %s timeout after %v", e.Op, e.Limit)
}

// Is reports whether target is the sentinel of e.Op: ErrReadTimeout,
// ErrWriteTimeout or ErrAttemptTimeout.
func (e *TimeoutError) Is(target error) bool {
	switch e.Op {
	case opRead:
		return target == ErrReadTimeout
	case opWrite:
		return target == ErrWriteTimeout
	case opAttempt:
		return target == ErrAttemptTimeout
	}
	return false
}

// Timeout is true: the error is a timeout.
func (e *TimeoutError) Timeout() bool { return true }

// Temporary is true, as for other timeouts: another attempt may succeed;
// net.Error requires it.
func (e *TimeoutError) Temporary() bool { return true }

// ErrCircuitOpen is matched, with errors.Is, by the error of an attempt
// refused because its host's circuit is open or half-open and busy.
var ErrCircuitOpen = errors.New("keepalive: circuit open")

// CircuitOpenError is the error of an attempt refused by the circuit
// breaker of its host (WithCircuitBreaker).
type CircuitOpenError struct {
	Host string // the host's key, "host:port" as in HostStats
}

func (e *CircuitOpenError) Error() string {
	return "keepalive: circuit open for " + e.Host
}

// Is reports whether target is ErrCircuitOpen.
func (e *CircuitOpenError) Is(target error) bool { return target == ErrCircuitOpen }

// Private implementation past this point.

// The Ops of a TimeoutError.
const (
	opRead    = "read"
	opWrite   = "write"
	opAttempt = "attempt"
)

// badRequestError is the error of a request that cannot be sent as it is
// (no URL, no host, a port that is not one): it is never retried.
type badRequestError struct{ reason string }

func (e *badRequestError) Error() string { return "keepalive: malformed request: " + e.reason }

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

// errConnRetired refuses to write a request on a connection that already
// carried the request meant to be its last, or that has been
// idle for longer than its server keeps connections: nothing was
// written, so net/http, or the retry loop, sends the request on another
// connection.
var errConnRetired = errors.New("keepalive: connection retired before use (lifetime or learned idle timeout)")

// Causes of an attempt's context being cancelled by the Transport itself.
var (
	errAttemptTimedOut = errors.New("keepalive: attempt deadline passed")
	errUploadStalled   = errors.New("keepalive: request body not taken")
	errHedgeLost       = errors.New("keepalive: another hedged attempt won")
)

// errNilNil replaces the (nil, nil) of a RoundTripper given to
// WithAttemptTransport that broke its contract.
var errNilNil = errors.New("keepalive: RoundTripper returned a nil *Response with a nil error")

// ErrHostPaused is matched, with errors.Is, by the error of a request that
// was not sent because its host asked for a pause that the request's
// context deadline ends before.
var ErrHostPaused = errors.New("keepalive: host paused")

// HostPausedError is the error of an attempt not sent because its host is
// paused (see the package documentation, Cooperating with servers) until
// after the deadline of the request's context: waiting could only end in
// the deadline. The host answered an earlier request, maybe another
// goroutine's, with a Retry-After or with rate-limit fields that said no
// quota was left. A request that received such a response itself gets
// that response back instead.
type HostPausedError struct {
	Host string        // the host's key, "host:port" as in HostStats
	Wait time.Duration // how much of the pause was left
}

func (e *HostPausedError) Error() string {
	return "keepalive: " + e.Host + " asked for a pause of " + e.Wait.String() + " more, past the context's deadline"
}

// Is reports whether target is ErrHostPaused.
func (e *HostPausedError) Is(target error) bool { return target == ErrHostPaused }
