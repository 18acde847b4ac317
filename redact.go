// This file holds the redaction of what logs and errors say of a request:
// URLs without credentials or query values.

package keepalive

import (
	"net/url"
	"strings"
)

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
