// This file holds the host pause (on by default; WithoutHostPause): when a
// host asks for quiet, every attempt to it waits until then, from any
// goroutine: for a 503's Retry-After, every attempt to the host; for a
// 429's, or rate-limit fields that say no quota is left, the attempts with
// the same rate-limit key (WithRateLimitKey), since quotas are kept per
// credential. This file holds the mechanics: which fields ask for how long
// (pauseOf), and the pauses of a host's keys. The host (host.go) sets and
// waits for them: a response of an attempt sets one, every attempt waits
// for it at its top, and the retry loop folds it into its own wait, so a
// request waits once.

package keepalive

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keepalive-go/keepalive/internal/headers"
)

// Private implementation past this point.

// extend moves the end of a pause, *p, to until unless it is already
// later; it reports whether the pause was over at now (a new one begins).
func extend(p *atomic.Int64, until, now int64) bool {
	for {
		old := p.Load()
		if old >= until {
			return false
		}
		if p.CompareAndSwap(old, until) {
			return old <= now
		}
	}
}

// keyPauses are a host's pauses per rate-limit key, by the key's hash. A
// host keeps at most keyPauseLimit of them; past that a key is not paused
// (its own 429 still waits for its Retry-After). latest is the end of the
// latest pause, so that a request to a host with none running pays one
// atomic load.
type keyPauses struct {
	latest atomic.Int64
	mu     sync.Mutex
	ends   map[uint64]int64
}

// keyPauseLimit bounds the keys a host keeps paused at once.
const keyPauseLimit = 1024

// get returns the end of key's pause, 0 if none.
func (p *keyPauses) get(key uint64) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ends[key]
}

// set moves the end of key's pause to until unless it is already later;
// it reports whether a new pause began.
func (p *keyPauses) set(key uint64, until, now int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ends == nil {
		p.ends = make(map[uint64]int64)
	}
	old, ok := p.ends[key]
	if old >= until {
		return false
	}
	if !ok && len(p.ends) >= keyPauseLimit {
		for k, end := range p.ends {
			if end <= now {
				delete(p.ends, k)
			}
		}
		if len(p.ends) >= keyPauseLimit {
			return false
		}
	}
	p.ends[key] = until
	extend(&p.latest, until, now)
	return old <= now
}

// pauseOf returns the pause that resp asks for and where it comes from, or
// a zero source for none: the Retry-After of a 429 or 503, else the
// rate-limit fields of any response that say no quota is left. It reads
// the clock, now, only for a field that holds a time. A response without
// these fields costs three map lookups.
func pauseOf(resp *http.Response, now func() time.Time) (time.Duration, PauseSource) {
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		if v := resp.Header["Retry-After"]; len(v) > 0 {
			if d, ok := headers.RetryAfter(v[0], now()); ok {
				return d, PauseRetryAfter
			}
		}
	}
	h := resp.Header
	if v := h["Ratelimit"]; len(v) > 0 {
		if d, ok := headers.RateLimit(v); ok {
			return d, PauseRateLimit
		}
	}
	if v := h["Ratelimit-Remaining"]; len(v) > 0 && headers.NoneLeft(v[0]) {
		if d, ok := headers.ResetSeconds(h.Get("Ratelimit-Reset")); ok {
			return d, PauseRateLimit
		}
	}
	if v := h["X-Ratelimit-Remaining"]; len(v) > 0 && headers.NoneLeft(v[0]) {
		if d, ok := headers.XRateLimitReset(h.Get("X-Ratelimit-Reset"), now); ok {
			return d, PauseXRateLimit
		}
	}
	return 0, 0
}
