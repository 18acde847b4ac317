// Package headers parses the response fields with which a server asks a
// client to wait or tells it how long it keeps idle connections:
// Retry-After (RFC 9110 section 10.2.3), the RateLimit fields of
// draft-ietf-httpapi-ratelimit-headers, the common X-RateLimit-Remaining
// and X-RateLimit-Reset, and Keep-Alive (RFC 2068 section 19.7.1). Each
// parser is lenient: what it cannot read it reports as absent, and it
// never fails on input.
package headers

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxDelaySeconds keeps delay-seconds * time.Second from overflowing.
const maxDelaySeconds = math.MaxInt64 / int64(time.Second)

// RetryAfter returns the positive wait that a Retry-After value asks
// for at now: delay-seconds, or an HTTP-date in any of the three formats of
// RFC 9110 section 5.6.7. It reports false for an empty, malformed or
// negative value, zero, or a date not after now: the backoff applies then.
// A wait too long for a time.Duration is the longest one.
func RetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if isDigits(v) {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n > maxDelaySeconds { // only overflow fails here
			return time.Duration(math.MaxInt64), true
		}
		return time.Duration(n) * time.Second, n > 0
	}
	at, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := at.Sub(now) // time.Time.Sub saturates
	return d, d > 0
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// NoneLeft reports whether a Remaining field, v, says no quota is left.
func NoneLeft(v string) bool { return strings.TrimSpace(v) == "0" }

// ResetSeconds parses a reset given in seconds to wait: a positive
// integer, as Retry-After's delay-seconds (and saturating as it does).
func ResetSeconds(v string) (time.Duration, bool) {
	if !isDigits(strings.TrimSpace(v)) {
		return 0, false
	}
	return RetryAfter(v, time.Time{})
}

// unixResetThreshold tells the two meanings of X-RateLimit-Reset apart:
// a value at or above it (about 2001-09-09) is a Unix time in seconds, as
// GitHub and Twitter send; a value below it is seconds to wait, as others
// send. No rate-limit window lasts 31 years, and no reset time is before
// 2001.
const unixResetThreshold = 1_000_000_000

// XRateLimitReset parses X-RateLimit-Reset: seconds, with an optional
// fraction ("1.5", "1470173023.123"), to wait or, from unixResetThreshold
// up, the Unix time of the reset, compared with now(). It reports false
// for anything else, or a reset not after now.
func XRateLimitReset(v string, now func() time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	whole, frac, _ := strings.Cut(v, ".")
	if !isDigits(whole) || frac != "" && !isDigits(frac) || strings.HasSuffix(v, ".") {
		return 0, false
	}
	secs, err := strconv.ParseFloat(v, 64)
	if err != nil { // only a value out of range fails here
		return 0, false
	}
	if secs >= unixResetThreshold {
		secs -= float64(now().UnixNano()) / float64(time.Second)
	}
	switch {
	case secs <= 0:
		return 0, false
	case secs >= float64(maxDelaySeconds):
		return time.Duration(math.MaxInt64), true
	}
	d := time.Duration(secs * float64(time.Second))
	return d, d > 0
}

// RateLimit parses the RateLimit field of the current
// draft-ietf-httpapi-ratelimit-headers (since draft 08): a Structured
// Fields list of policies, each a string or token with parameters, among
// them r (remaining quota units) and t (seconds until the quota is
// restored), as in
//
//	RateLimit: "default";r=0;t=5, "daily";r=100;t=3600
//
// and of draft 07, a dictionary, "limit=10, remaining=0, reset=5". It
// returns the longest t of the policies whose r is 0 (draft 07: reset
// when remaining is 0). It is lenient: what it cannot read it skips, and
// it never fails on input.
func RateLimit(lines []string) (time.Duration, bool) {
	var (
		longest          time.Duration
		found            bool
		remaining, reset string // draft 07's members
	)
	for _, line := range lines {
		for member := range splitOutside(line, ',') {
			item, params, _ := cutOutside(member, ';')
			item = strings.TrimSpace(item)
			if k, v, ok := strings.Cut(item, "="); ok && !strings.HasPrefix(item, `"`) { // draft 07
				switch strings.TrimSpace(k) {
				case "remaining":
					remaining = strings.TrimSpace(v)
				case "reset":
					reset = strings.TrimSpace(v)
				}
				continue
			}
			var r, tv string
			haveR := false
			for p := range splitOutside(params, ';') {
				k, v, _ := strings.Cut(p, "=")
				switch strings.TrimSpace(k) {
				case "r":
					r, haveR = strings.TrimSpace(v), true
				case "t":
					tv = strings.TrimSpace(v)
				}
			}
			if !haveR || r != "0" {
				continue
			}
			if d, ok := ResetSeconds(tv); ok && d > longest {
				longest, found = d, true
			}
		}
	}
	if remaining == "0" {
		if d, ok := ResetSeconds(reset); ok && d > longest {
			longest, found = d, true
		}
	}
	return longest, found
}

// splitOutside yields the parts of s between seps that are outside double
// quotes (a backslash escapes the next character inside them), as
// Structured Fields quote strings.
func splitOutside(s string, sep byte) func(func(string) bool) {
	return func(yield func(string) bool) {
		for s != "" {
			part, rest, found := cutOutside(s, sep)
			if !yield(part) || !found {
				return
			}
			s = rest
		}
	}
}

// cutOutside is strings.Cut at the first sep outside double quotes.
func cutOutside(s string, sep byte) (before, after string, found bool) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == sep:
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// KeepAliveTimeout returns the timeout of a Keep-Alive header value,
// "timeout=5, max=100": whole seconds, at least 1 and at most a day.
func KeepAliveTimeout(v string) (time.Duration, bool) {
	for len(v) > 0 {
		var p string
		p, v, _ = strings.Cut(v, ",")
		name, val, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(name), "timeout") {
			continue
		}
		n, err := strconv.Atoi(strings.Trim(strings.TrimSpace(val), `"`))
		if err != nil || n < 1 || n > 86400 {
			return 0, false
		}
		return time.Duration(n) * time.Second, true
	}
	return 0, false
}
