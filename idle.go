// This file holds idle-timeout learning: each host's idle timeout, learned
// from the connections its server closed while they were idle and from the
// Keep-Alive header, so that an HTTP/1 connection about to be closed by
// its server is never handed another request.
//
// Keep-alive has one failure no retry can mend: the server closes an idle
// connection at the moment the client writes a request on it. net/http
// resends a request that may be repeated; an unkeyed POST fails, though
// the server never saw it. The client can know each server's timeout:
//
//   - the connection wrapper (conn in transport.go) records when a
//     connection last read data and last wrote; a read that fails with
//     EOF or a reset, with nothing written since the last response, is the
//     server closing it while idle, and its idle age is that server's
//     timeout (observeIdleClose);
//   - a response's "Keep-Alive: timeout=N" (RFC 2068 section 19.7.1, sent
//     by Apache httpd and others) announces it before the first close
//     (observeKeepAlive, from attempt.go).
//
// A host keeps the shortest timeout seen recently. From then on, the first
// write of a request on an HTTP/1 connection of that host idle for longer
// than the timeout less idleMargin is refused before a byte is written:
// net/http closes the connection and sends the request on another (its
// "nothing written" path, as for the lifetime of lifetime.go), so the
// caller never sees it. HTTP/2 connections are left alone: their servers
// announce an idle close with GOAWAY, and net/http resends what a GOAWAY
// left unprocessed.
//
// The learned timeout holds for idleTTL after it was last confirmed; past
// that it doubles each idleTTL, so a server whose timeout grew gets longer
// idle connections back within minutes, and one whose timeout did not is
// relearned at its next idle close. A host costs three atomics and a
// request O(1): one clock reading and two atomic loads per write.

package keepalive

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Tuning of idle-timeout learning. They are not options: the margin covers
// any network a connection crosses, and the rest only bound what a server
// can teach.
const (
	// idleMargin is how long before a host's idle timeout its connections
	// stop being reused: a request written at idle age a reaches the
	// server at a plus one round trip (the server's clock started half a
	// round trip before ours, and the request takes the other half), so
	// the margin must cover a round trip and the server's timer slop. 250
	// ms covers a loopback round trip (tens of microseconds) and a
	// transcontinental WAN round trip (150-250 ms) alike; retiring a
	// connection early costs one dial. For timeouts under twice the margin
	// the margin is half the timeout.
	idleMargin = 250 * time.Millisecond

	// idleMinLearn is the shortest idle age learned from a close: shorter
	// ones are a server ending a connection after a response (an
	// unannounced close, a cut-off body, a crash), not an idle timeout,
	// and would stop all reuse.
	idleMinLearn = 200 * time.Millisecond

	// idleTTL is how long a learned timeout holds unconfirmed before it
	// starts doubling back towards the pool's own idle timeout.
	idleTTL = time.Minute

	// idlePeekAfter: an HTTP/1 connection idle for longer than
	// this is checked for a close that has arrived but that net/http's
	// read loop has not yet seen (closedUnderneath), before a request is
	// written on it: one system call, where a busy connection pays none.
	idlePeekAfter = 50 * time.Millisecond

	// idleAlertGap: a read that returns data less than this before the
	// read that fails is a TLS close_notify (or an HTTP/2 GOAWAY) sent
	// with the close, not a response: the idle age is measured from the
	// read before it.
	idleAlertGap = 20 * time.Millisecond
)

// hostIdle is one host's learned idle timeout, in the host's state.
type hostIdle struct {
	timeout atomic.Int64 // the shortest idle close seen or announced, in ns; 0: none
	at      atomic.Int64 // monotonic() when timeout was last set or confirmed
}

// limit returns the idle age past which a connection of the host is not
// reused, as of the monotonic reading now; 0: no limit.
func (h *hostIdle) limit(now int64) int64 {
	t := h.timeout.Load()
	if t == 0 {
		return 0
	}
	// Decay: double the timeout for each idleTTL past the first since it
	// was confirmed (the shift is bounded, the result saturates).
	if age := now - h.at.Load(); age > int64(idleTTL) {
		if shift := age/int64(idleTTL) - 1; shift > 0 {
			if shift > 20 {
				return 0
			}
			t <<= uint(shift)
		}
	}
	return t - min(int64(idleMargin), t/2)
}

// observe records an idle timeout of d seen at now: the host keeps the
// shortest, and a value at least as short as the one kept confirms it.
func (h *hostIdle) observe(d time.Duration, now int64) {
	for {
		cur := h.timeout.Load()
		if cur != 0 && int64(d) > cur && now-h.at.Load() <= int64(idleTTL) {
			return // longer than a value still fresh: keep the shortest
		}
		if h.timeout.CompareAndSwap(cur, int64(d)) {
			h.at.Store(now)
			return
		}
	}
}

// observeIdleClose records that a connection of host h, idle for age, was
// closed by its server: its read failed with err.
func (t *Transport) observeIdleClose(h *hostState, age time.Duration, err error) {
	if !closedByPeer(err) || age < idleMinLearn {
		return
	}
	t.count(h, idleClosesCounter)
	if !t.opts.noIdleLearning {
		h.idle.observe(age, monotonic())
	}
}

// observeKeepAlive records the idle timeout a response announced with
// "Keep-Alive: timeout=N".
func (t *Transport) observeKeepAlive(h *hostState, resp *http.Response) {
	v := resp.Header["Keep-Alive"]
	if len(v) == 0 || t.opts.noIdleLearning || h.overflow {
		return
	}
	if d, ok := parseKeepAliveTimeout(v[0]); ok {
		h.idle.observe(d, monotonic())
	}
}

// parseKeepAliveTimeout returns the timeout of a Keep-Alive header value,
// "timeout=5, max=100": whole seconds, at least 1 and at most a day.
func parseKeepAliveTimeout(v string) (time.Duration, bool) {
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

// errPeerClosed is the end of stream a check before a write found.
var errPeerClosed = io.EOF

// closedByPeer reports whether a read error is the peer closing the
// connection: EOF or a reset, not a deadline or the Transport's own close.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}
