// This file holds the logging of WithLogger: the level of each event, the
// attributes, and the redaction of what is logged or put in errors: URLs
// lose their credentials and query values, errors the URL's password, and
// no header value is ever logged. The events logged are fired in events.go.

package keepalive

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
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

const redacted = "xxxxx"

// redactURL returns u for logs and errors: user info and query values
// replaced by "xxxxx" (a query often carries a token), fragment dropped.
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	ru := *u
	ru.Fragment, ru.RawFragment = "", ""
	if ru.User != nil {
		if _, ok := ru.User.Password(); ok {
			ru.User = url.UserPassword(redacted, redacted)
		} else {
			ru.User = url.User(redacted)
		}
	}
	if ru.RawQuery != "" {
		q, err := url.ParseQuery(ru.RawQuery)
		if err != nil {
			ru.RawQuery = redacted
		} else {
			for k := range q {
				q[k] = []string{redacted}
			}
			ru.RawQuery = q.Encode()
		}
	}
	return ru.String()
}

func urlPassword(u *url.URL) string {
	if u == nil || u.User == nil {
		return ""
	}
	p, _ := u.User.Password()
	return p
}

// scrub removes secret from s: an error from a policy or a proxy may quote
// the URL it was given.
func scrub(s, secret string) string {
	if len(secret) < 4 { // too short to tell from ordinary text
		return s
	}
	return strings.ReplaceAll(s, secret, redacted)
}
