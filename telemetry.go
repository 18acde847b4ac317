// This file holds telemetry: what a Transport tells while it works, to
// its Observer's hooks (the events are in events.go) and to its logger
// (WithLogger): the level of each event, and its attributes, redacted
// (redact.go). It is a small value, not methods of the Transport: the
// composers and the hosts hold it, and count what they report themselves.

package keepalive

import (
	"context"
	"log/slog"
	"net/http"
	"time"
)

// telemetry is the Observer and the logger of a Transport.
type telemetry struct {
	observer Observer
	logger   *slog.Logger // nil: silent
}

// Levels of the logged events. What an operator must hear of is at Warn,
// so that a logger at the default level (Info, as slog.Default) shows it:
// a request that gave up, a circuit that opened, a host that asked for a
// pause. Per-attempt chatter (retries, refused retries) is at Debug.
const (
	levelRetry     = slog.LevelDebug
	levelHostPause = slog.LevelWarn
)

// levelGiveUp is Warn, but for a request whose own caller ended it: the
// caller knows already.
func levelGiveUp(r GiveUpReason) slog.Level {
	if r == GiveUpCanceled {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}

// levelBreakerChange is Warn for a circuit that opens, Info for the steps
// back to closed.
func levelBreakerChange(to BreakerState) slog.Level {
	if to == BreakerOpen {
		return slog.LevelWarn
	}
	return slog.LevelInfo
}

// durationAttr logs d as text, "1.5s": slog's JSON handler writes a
// time.Duration as an integer of nanoseconds, which nobody reads.
func durationAttr(key string, d time.Duration) slog.Attr {
	return slog.String(key, d.String())
}

// log returns the logger if it logs at level.
func (tel *telemetry) log(ctx context.Context, level slog.Level) *slog.Logger {
	if l := tel.logger; l != nil && l.Enabled(ctx, level) {
		return l
	}
	return nil
}

// eventAttrs returns the attributes common to the logged events, named as
// the fields of the events: the URL redacted, errors scrubbed of the URL's
// password, no header values.
func eventAttrs(req *http.Request, host string, attempt, status int, err error, extra ...slog.Attr) []slog.Attr {
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

// attemptStart tells the observers of attempt n of a request, r, about to
// be sent to host.
func (tel *telemetry) attemptStart(r *http.Request, host string, n int) {
	if f := tel.observer.OnAttemptStart; f != nil {
		f(AttemptStartEvent{Request: r, Host: host, Attempt: n})
	}
}

// attemptEnd tells the observers of the outcome of attempt n of a request,
// r, to host, sent at start, over a connection new or reused.
func (tel *telemetry) attemptEnd(r *http.Request, host string, n int, resp *http.Response, err error, start time.Time, reuse ConnReuse) {
	f := tel.observer.OnAttemptEnd
	if f == nil {
		return
	}
	e := AttemptEndEvent{Request: r, Host: host, Attempt: n, Response: resp, Err: err, Duration: time.Since(start)}
	if err == nil {
		e.Status = resp.StatusCode
	}
	if tel.observer.TraceConns {
		e.Conn = reuse
	}
	f(e)
}

// retry reports that the outcome (resp or err) of attempt will be retried
// after wait.
func (tel *telemetry) retry(req *http.Request, host string, resp *http.Response, err error, attempt int, wait time.Duration, retryAfter bool) {
	f := tel.observer.OnRetry
	l := tel.log(req.Context(), levelRetry)
	if f == nil && l == nil {
		return
	}
	e := RetryEvent{Request: req, Host: host, Attempt: attempt, Reason: RetryOnStatus, Err: err, Wait: wait, RetryAfter: retryAfter}
	if err != nil {
		e.Reason = RetryOnError
	} else if resp != nil {
		e.Status = resp.StatusCode
	}
	if f != nil {
		f(e)
	}
	if l != nil {
		l.LogAttrs(req.Context(), levelRetry, "keepalive: retrying", eventAttrs(req, host, attempt, e.Status, err,
			slog.String("reason", e.Reason.String()), durationAttr("wait", wait), slog.Bool("retry_after", retryAfter))...)
	}
}

// giveUp reports that the outcome (resp or err) of the last of attempts is
// returned to the caller although it was worth a retry. wait is the
// refused wait, if any.
func (tel *telemetry) giveUp(req *http.Request, host string, resp *http.Response, err error, attempts int, reason GiveUpReason, wait time.Duration) {
	e := GiveUpEvent{Request: req, Host: host, Attempts: attempts, Reason: reason, Err: err, Wait: wait}
	if err == nil && resp != nil {
		e.Status = resp.StatusCode
	}
	if f := tel.observer.OnGiveUp; f != nil {
		f(e)
	}
	level := levelGiveUp(reason)
	if l := tel.log(req.Context(), level); l != nil {
		extra := []slog.Attr{slog.String("reason", reason.String())}
		if wait != 0 { // the refused wait, of GiveUpRetryAfter and GiveUpDeadline
			extra = append(extra, durationAttr("wait", wait))
		}
		l.LogAttrs(req.Context(), level, "keepalive: giving up", eventAttrs(req, host, attempts, e.Status, err, extra...)...)
	}
}

// budgetRefused reports a retry of req, after attempt, that the retry
// budget refused.
func (tel *telemetry) budgetRefused(req *http.Request, host string, attempt int) {
	if f := tel.observer.OnBudgetRefused; f != nil {
		f(BudgetRefusedEvent{Request: req, Host: host, Attempt: attempt})
	}
	if l := tel.log(req.Context(), levelRetry); l != nil {
		l.LogAttrs(req.Context(), levelRetry, "keepalive: retry budget refused a retry",
			eventAttrs(req, host, attempt, 0, nil)...)
	}
}

// breakerChange reports that the circuit breaker of host went from one
// state to another.
func (tel *telemetry) breakerChange(host string, from, to BreakerState) {
	if f := tel.observer.OnBreakerChange; f != nil {
		f(BreakerChangeEvent{Host: host, From: from, To: to})
	}
	ctx := context.Background()
	level := levelBreakerChange(to)
	if l := tel.log(ctx, level); l != nil {
		l.LogAttrs(ctx, level, "keepalive: circuit breaker changed state",
			slog.String("host", host), slog.String("from", from.String()), slog.String("to", to.String()))
	}
}

// hostPause reports a pause of wait that a response of status, through
// the fields of src, started on host.
func (tel *telemetry) hostPause(host string, status int, wait time.Duration, src PauseSource, perKey bool) {
	if f := tel.observer.OnHostPause; f != nil {
		f(HostPauseEvent{Host: host, Status: status, Wait: wait, Source: src, PerKey: perKey})
	}
	ctx := context.Background()
	if l := tel.log(ctx, levelHostPause); l != nil {
		l.LogAttrs(ctx, levelHostPause, "keepalive: host asked for a pause",
			slog.String("host", host), slog.Int("status", status), durationAttr("wait", wait), slog.String("source", src.String()))
	}
}

// dial tells the observers of a TCP connect to host that ended with err.
func (tel *telemetry) dial(host string, err error) {
	if f := tel.observer.OnDial; f != nil {
		f(DialEvent{Host: host, Err: err})
	}
}

// addrChange reports a change of the address addr of the balanced host.
// An ejection is logged at Warn, what the name does at Info.
func (tel *telemetry) addrChange(host, addr string, change AddrChange) {
	if f := tel.observer.OnAddrChange; f != nil {
		f(AddrEvent{Host: host, Addr: addr, Change: change})
	}
	ctx := context.Background()
	level := slog.LevelInfo
	if change == AddrEjected {
		level = slog.LevelWarn
	}
	if l := tel.log(ctx, level); l != nil {
		l.LogAttrs(ctx, level, "keepalive: address "+change.String(),
			slog.String("host", host), slog.String("addr", addr))
	}
}
