// This file holds the logging of WithLogger: the level of each event, the
// attributes, and the redaction of what is logged or put in errors: URLs
// lose their credentials and query values, errors the URL's password, and
// no header value is ever logged. The events logged are fired in events.go.

package keepalive

import (
	"context"
	"log/slog"
	"net/http"
	"time"
)

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
