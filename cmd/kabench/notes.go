// This file says what happened in a measurement beyond its numbers: the
// errors by kind, runs stopped by -max-errors, keepalive's waits for a
// server's Retry-After or a host pause, a server that closes every
// connection, and what HTTP/2 does to the comparison. The notes follow
// the summary, and are in the JSON and the -plot page.

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/keepalive-go/keepalive"
)

// statusError is the error of a response whose status counts as a
// failure.
type statusError struct {
	method, url, status string
}

func (e *statusError) Error() string { return e.method + " " + e.url + ": " + e.status }

// readError is the error of a response whose body could not be read.
type readError struct {
	method, url string
	err         error
}

func (e *readError) Error() string {
	return e.method + " " + e.url + ": reading the response: " + e.err.Error()
}
func (e *readError) Unwrap() error { return e.err }

// errorKind sorts a failed request into a few kinds a reader can act on.
func errorKind(err error, timeout time.Duration) string {
	var se *statusError
	var re *readError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var dns *net.DNSError
	var rec tls.RecordHeaderError
	prefix := ""
	if errors.As(err, &re) {
		prefix = "reading the response: "
	}
	switch {
	case errors.As(err, &se):
		return se.status
	case errors.Is(err, keepalive.ErrHostPaused):
		return prefix + "host paused past the deadline"
	case errors.Is(err, context.DeadlineExceeded):
		return prefix + "timeout (-timeout " + timeout.String() + ")"
	case errors.Is(err, syscall.ECONNREFUSED):
		return prefix + "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return prefix + "connection reset"
	case errors.Is(err, syscall.EPIPE):
		return prefix + "broken pipe"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return prefix + "connection closed by the server"
	case errors.As(err, &ua):
		return prefix + "unknown certificate authority"
	case errors.As(err, &he):
		return prefix + "certificate not for this host"
	case errors.As(err, &rec):
		return prefix + "not a TLS server"
	case errors.As(err, &dns):
		return prefix + "DNS: " + dns.Err
	}
	// Past the kinds above, the innermost message without the method
	// and URL, which the report names already.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if re != nil {
		err = re.err
	}
	msg := err.Error()
	if len(msg) > 80 {
		msg = msg[:77] + "..."
	}
	return prefix + msg
}

// writeErrors writes, under a client's table, how many requests of each
// run failed, of which kinds, and the first error.
func (r *report) writeErrors(w io.Writer, res *clientResult) {
	for i, run := range res.Runs {
		if run.Errors == 0 {
			continue
		}
		stopped := ""
		if run.Stopped == stoppedMaxErrors {
			stopped = fmt.Sprintf(", stopped by -max-errors %d", r.MaxErrors)
		}
		fmt.Fprintf(w, "run %d: %s%s (%s); the first: %s\n", i+1, plural(int(run.Errors), "error"), stopped, kinds(run.ErrorKinds), run.FirstError)
	}
}

// kinds lists error counts by kind, the most frequent first:
// "10 x 503 Service Unavailable, 2 x timeout (-timeout 10s)".
func kinds(m map[string]int64) string {
	keys := slices.SortedFunc(maps.Keys(m), func(a, b string) int {
		if m[a] != m[b] {
			return int(m[b] - m[a])
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = commas(float64(m[k]), 0) + " x " + k
	}
	return strings.Join(parts, ", ")
}

// notes are what the summary adds in words, in the order written.
func (r *report) notes() []string {
	var out []string
	out = append(out, r.errorNotes()...)
	out = append(out, r.waitNotes()...)
	out = append(out, r.closeNotes()...)
	out = append(out, r.backendNotes()...) // backends.go
	return append(out, r.http2Notes()...)
}

// name is a result's name in a note: its client, and its setup when
// there are several.
func (r *report) name(res *clientResult) string {
	if r.Results[0].Setup == r.Results[len(r.Results)-1].Setup {
		return res.Client
	}
	return res.Setup + ", " + res.Client
}

// errorNotes count the failed requests of each client by kind, and the
// runs -max-errors stopped.
func (r *report) errorNotes() []string {
	var out []string
	for i := range r.Results {
		res := &r.Results[i]
		var errs int64
		stopped := 0
		for _, run := range res.Runs {
			errs += run.Errors
			if run.Stopped == stoppedMaxErrors {
				stopped++
			}
		}
		if errs == 0 {
			continue
		}
		s := fmt.Sprintf("%s: %s in %s (%s)", r.name(res), plural(int(errs), "failed request"), plural(len(res.Runs), "run"), kinds(res.ErrorKinds))
		if stopped > 0 {
			s += fmt.Sprintf("; %s stopped after %d errors (-max-errors)", plural(stopped, "run"), r.MaxErrors)
		}
		out = append(out, s+".")
	}
	return out
}

// waitNotes say when keepalive waited for the server, which the clients
// without retries never do: its requests/s then measure the server's
// Retry-After, not keep-alive.
func (r *report) waitNotes() []string {
	var out []string
	for i := range r.Results {
		res := &r.Results[i]
		var waits, pauses, held int64
		var waited float64
		for _, run := range res.Runs {
			waits, pauses, held = waits+run.RetryAfterWaits, pauses+run.HostPauses, held+run.PauseWaits
			waited += run.RetryAfterMs
		}
		if waits == 0 && held == 0 {
			continue
		}
		var what []string
		if waits > 0 {
			what = append(what, fmt.Sprintf("%s waited %s in all for the server's Retry-After (or its host's pause)",
				plural(int(waits), "retry"), time.Duration(waited*float64(time.Millisecond)).Round(time.Millisecond)))
		}
		if held > 0 {
			what = append(what, fmt.Sprintf("%s held back %s until the pause ended",
				plural(int(pauses), "host pause"), plural(int(held), "request")))
		}
		out = append(out, fmt.Sprintf("%s waited for the server in %s: %s. Its requests/s count those waits; the clients without retries fail such requests at once instead (see their errors).",
			r.name(res), plural(len(res.Runs), "run"), strings.Join(what, ", and ")))
	}
	return out
}

// closeNotes say when every client opened a connection per request: the
// server (an HTTP/1.0 one, or one that answers Connection: close) keeps
// no connection alive, and the clients differ in other costs only.
func (r *report) closeNotes() []string {
	var out []string
	for _, setup := range r.setups() {
		var reqs, conns int64
		keeper, all := false, true
		for i := range r.Results {
			res := &r.Results[i]
			if res.Setup != setup || res.Average.Requests == 0 {
				continue
			}
			keeper = keeper || res.Client != clientNoKeepAlive
			all = all && res.Average.NewConns >= res.Average.Requests
			reqs, conns = max(reqs, res.Average.Requests+res.Average.Errors), max(conns, res.Average.NewConns)
		}
		if !keeper || !all {
			continue
		}
		where := ""
		if len(r.setups()) > 1 {
			where = " (" + setup + ")"
		}
		out = append(out, fmt.Sprintf("every client opened a new connection for every request%s (%s for %s sent per run): the server does not keep connections alive (an HTTP/1.0 server, or one that answers Connection: close), so keep-alive cannot help, and the clients differ in other costs only.",
			where, plural(int(conns), "connection"), plural(int(reqs), "request")))
	}
	return out
}

// http2Notes explain, for each setup where the default client and
// keepalive spoke HTTP/2, whether they look alike: both multiplex their
// requests, but they may open very different numbers of connections.
func (r *report) http2Notes() []string {
	var out []string
	for _, setup := range r.setups() {
		var def, ka *clientResult
		for i := range r.Results {
			res := &r.Results[i]
			if res.Setup != setup || res.Average.Protocol != "HTTP/2" {
				continue
			}
			switch res.Client {
			case clientDefault:
				def = res
			case clientKeepAlive:
				ka = res
			}
		}
		if def == nil || ka == nil || def.Average.Requests == 0 || ka.Average.Requests == 0 {
			continue
		}
		where := ""
		if len(r.setups()) > 1 {
			where = " (" + setup + ")"
		}
		d, k := def.Average.NewConns, ka.Average.NewConns
		if max(d, k) <= 2*min(d, k) {
			out = append(out, fmt.Sprintf("over HTTP/2%s the default client and keepalive both multiplex every request over the connections they opened first (%s and %s per run), so they look alike; -http1 compares their HTTP/1.1 connection pools.",
				where, commas(float64(d), 0), commas(float64(k), 0)))
			continue
		}
		shares := "one at a time and shares the first"
		if len(r.Backends) > 1 {
			shares = "one at a time per address of the name and shares the first of each"
		}
		out = append(out, fmt.Sprintf("over HTTP/2%s the default client opened %s per run and keepalive %s: net/http dials for every request that waits while a host's first connection negotiates its protocol, and keepalive dials %s. Both multiplex their requests over the connections they have; -http1 compares their HTTP/1.1 connection pools.",
			where, plural(int(d), "connection"), commas(float64(k), 0), shares))
	}
	return out
}

// setups lists the setups of the results, in order.
func (r *report) setups() []string {
	var out []string
	for _, res := range r.Results {
		if !slices.Contains(out, res.Setup) {
			out = append(out, res.Setup)
		}
	}
	return out
}

// writeNotes writes the notes under the summary.
func writeNotes(w io.Writer, notes []string) {
	for _, n := range notes {
		fmt.Fprintln(w, "Note: "+n)
	}
}
