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
//   - the connection wrapper (conn.go) knows when a connection is idle in
//     the pool with its last response read whole; a read that then fails
//     with EOF or a reset is the server closing it while idle, and its
//     idle age is that server's timeout (hostState.idleClosed);
//   - a response's "Keep-Alive: timeout=N" (RFC 2068 section 19.7.1, sent
//     by Apache httpd, Node.js and others) announces it before the first
//     close.
//
// Closes that are not idle timeouts are not learned: a response cut off
// mid-body is not an idle connection's close, and a burst of closes at
// scattered ages (a server restarting, closing every connection at once)
// is discarded. A close that would shorten the timeout is acted on only
// once confirmed, by a second close at about the same age; an announced
// timeout is acted on at once.
//
// From then on, the first write of a request on an HTTP/1 connection of
// that host idle for longer than the timeout less idleMargin is refused
// before a byte is written: net/http closes the connection and sends the
// request on another (its "nothing written" path, as for a connection past
// its lifetime), so the caller never sees it. HTTP/2 connections are left
// alone: their servers announce an idle close with GOAWAY, and net/http
// resends what a GOAWAY left unprocessed.
//
// The learned timeout holds for idleTTL after it was last confirmed; from
// then on it doubles each idleTTL, so a server whose timeout grew gets
// longer idle connections back within minutes, and one whose timeout did
// not is relearned at its next idle close. A request pays two atomic
// loads for it, and one clock reading per write.

package keepalive

import (
	"errors"
	"io"
	"math"
	"sync"
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

	// idleBurstWindow gathers the closes of one moment: closes within it
	// of the first are one burst, judged together once it has passed.
	idleBurstWindow = 100 * time.Millisecond

	// idleAgreeMin is the least two idle closes may differ by and still
	// agree on a timeout; above five times it, a fifth of the shorter.
	// Each age is measured from the last read, so a read that ran late
	// shortens it.
	idleAgreeMin = 100 * time.Millisecond

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
	learn    bool         // off with WithoutIdleLearning: closes are counted, not learned
	timeout  atomic.Int64 // the timeout acted on, in ns; 0: none
	at       atomic.Int64 // monotonic() when timeout was last set or confirmed
	settleAt atomic.Int64 // monotonic() after which the burst being gathered is judged; 0: none

	mu        sync.Mutex
	burst     closeBurst // the closes of the moment, while gathered
	candidate int64      // a single close's age that would shorten timeout, waiting for a second; 0: none
}

// closeBurst is the idle closes seen within idleBurstWindow of the first.
type closeBurst struct {
	start  int64 // monotonic() of the first
	n      int
	lo, hi int64 // the shortest and longest idle age, in ns

	// applied: closes of the burst agreed, and the host acts on them
	// already; prev and prevAt are what it acted on before, restored if a
	// later close of the burst disagrees (scattered).
	applied, scattered bool
	prev, prevAt       int64
}

// limit returns the idle age past which a connection of the host is not
// reused, as of the monotonic reading now; 0: no limit.
func (h *hostIdle) limit(now int64) int64 {
	if s := h.settleAt.Load(); s != 0 && now > s {
		h.mu.Lock()
		h.settle(now)
		h.mu.Unlock()
	}
	t := h.timeout.Load()
	if t == 0 {
		return 0
	}
	// Decay: double the timeout for each idleTTL since it was last
	// confirmed, until it no longer fits a time.Duration: then no limit.
	if shift := (now - h.at.Load()) / int64(idleTTL); shift > 0 {
		if shift >= 62 || t > math.MaxInt64>>shift {
			return 0
		}
		t <<= shift
	}
	return t - min(int64(idleMargin), t/2)
}

// announce records an idle timeout that a response announced at now.
func (h *hostIdle) announce(d time.Duration, now int64) {
	if h.learn {
		h.set(int64(d), now)
	}
}

// closed records an idle close at now of a connection idle for age: it
// joins the burst of the moment. Closes of one moment that agree are acted
// on at once, since requests of that same moment need them (a pool whose
// connections went idle together closes them together); a close of the
// burst that disagrees undoes that. A single close is judged once
// idleBurstWindow has passed.
func (h *hostIdle) closed(age time.Duration, now int64) {
	if !h.learn {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.settle(now)
	b := &h.burst
	if b.n == 0 {
		*b = closeBurst{start: now, n: 1, lo: int64(age), hi: int64(age)}
		h.settleAt.Store(now + int64(idleBurstWindow))
		return
	}
	b.n++
	b.lo, b.hi = min(b.lo, int64(age)), max(b.hi, int64(age))
	switch {
	case b.scattered:
	case b.hi-b.lo > agreeWithin(b.lo): // a server closing everything at once
		b.scattered = true
		if b.applied {
			h.timeout.Store(b.prev)
			h.at.Store(b.prevAt)
		}
	case !b.applied:
		b.applied, b.prev, b.prevAt = true, h.timeout.Load(), h.at.Load()
		h.set(b.lo, now)
	default:
		h.set(b.lo, now)
	}
}

// settle ends the burst gathered, if its window has passed by now. A
// burst of several closes was acted on as they came (closed); a single
// close is acted on when it does not shorten the timeout, or when it
// agrees with the single close before it. h.mu is held.
func (h *hostIdle) settle(now int64) {
	b := h.burst
	if b.n == 0 || now-b.start <= int64(idleBurstWindow) {
		return
	}
	h.burst = closeBurst{}
	h.settleAt.Store(0)
	switch {
	case b.n > 1: // acted on, or undone, as it came
	case b.lo >= h.timeout.Load()-agreeWithin(b.lo) && h.timeout.Load() != 0:
		h.set(b.lo, b.start) // confirms the timeout, or replaces a stale one
	case h.candidate != 0 && max(b.lo, h.candidate)-min(b.lo, h.candidate) <= agreeWithin(min(b.lo, h.candidate)):
		h.set(min(b.lo, h.candidate), b.start)
		h.candidate = 0
	default:
		h.candidate = b.lo
	}
}

// agreeWithin is how far apart two idle ages, the shorter d, may be and
// still name one timeout.
func agreeWithin(d int64) int64 { return max(int64(idleAgreeMin), d/5) }

// set records a timeout of d ns at now: the host keeps the shortest, and a
// value at least as short as the one kept confirms it; a value kept for
// longer than idleTTL unconfirmed is replaced.
func (h *hostIdle) set(d, now int64) {
	for {
		cur := h.timeout.Load()
		if cur != 0 && d > cur && now-h.at.Load() < int64(idleTTL) {
			if d-cur <= agreeWithin(cur) {
				h.at.Store(now) // about the value kept: it confirms it
			}
			return // longer than a value still fresh: keep the shortest
		}
		if h.timeout.CompareAndSwap(cur, d) {
			h.at.Store(now)
			return
		}
	}
}

// errPeerClosed is the end of stream a check before a write found.
var errPeerClosed = io.EOF

// closedByPeer reports whether a read error is the peer closing the
// connection: EOF or a reset, not a deadline or the Transport's own close.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}
