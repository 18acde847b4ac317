// This file holds the host pause (on by default; WithoutHostPause): when a
// host asks for quiet, every attempt to it waits until then, from any
// goroutine: for a 503's Retry-After, every attempt to the host; for a
// 429's, or rate-limit fields that say no quota is left, the attempts with
// the same rate-limit key (WithRateLimitKey), since quotas are kept per
// credential. The host's pause is one atomic in its state (host.go), its
// keys' pauses a small map behind another; both are set from the response
// of an attempt (attempt.go) and waited for at the top of every attempt,
// first attempts and hedges included; the retry loop (retry.go) folds them
// into its own wait, so a request waits once.

package keepalive

import (
	"hash/maphash"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keepalive-go/keepalive/internal/headers"
)

// Private implementation past this point.

// setPause records the pause that resp, the response to r, asks for, if
// any, on its host h: the end of the pause moves to now+wait unless it is
// already later. A 503's Retry-After (an overloaded server) pauses the
// host; a 429's, or rate-limit fields that say no quota is left, pause
// only the requests with r's rate-limit key (WithRateLimitKey: by default
// its Authorization and Cookie), since quotas are kept per credential. A
// pause longer than the Retry-After cap (WithMaxRetryAfter) is not set;
// the hosts past HostStatsLimit share one state and are never paused, so
// that one host's quota never holds back another's requests. With
// WithoutHostPause it does nothing.
func (t *Transport) setPause(h *hostState, r *http.Request, resp *http.Response) {
	if h.overflow || t.opts.noHostPause {
		return
	}
	wait, src := pauseOf(resp, time.Now)
	if src == 0 || wait > t.policy.maxRetryAfter {
		return
	}
	now := monotonic()
	until := now + int64(wait) // wait is at most the cap, which may be any duration
	if until < now {
		until = math.MaxInt64
	}
	perKey := src != PauseRetryAfter || resp.StatusCode != http.StatusServiceUnavailable
	var started bool
	if perKey {
		started = h.keyPauses.set(t.pauseKey(r), until, now)
	} else {
		started = extend(&h.pausedUntil, until, now)
	}
	if started {
		h.count(pausesCounter)
		t.opts.tel.hostPause(h.key, resp.StatusCode, wait, src, perKey)
	}
}

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

// pauseKey returns the hash of r's rate-limit key: its credentials are
// never kept, only compared.
func (t *Transport) pauseKey(r *http.Request) uint64 {
	var k string
	if t.opts.rateLimitKey != nil {
		k = t.opts.rateLimitKey(r)
	} else {
		k = r.Header.Get("Authorization") + "\x00" + r.Header.Get("Cookie")
	}
	return maphash.String(t.pauseSeed, k)
}

// pauseEnd returns the monotonic() reading at which the pause that holds r
// on h ends, the host's or r's key's, whichever is later; 0: none.
func (t *Transport) pauseEnd(h *hostState, r *http.Request, now int64) int64 {
	until := h.pausedUntil.Load()
	if h.keyPauses.latest.Load() > now {
		until = max(until, h.keyPauses.get(t.pauseKey(r)))
	}
	if until <= now {
		return 0
	}
	return until
}

// pauseLeft returns how long the pause that holds r on h lasts after now
// (a monotonic() reading), 0 if none does.
func (t *Transport) pauseLeft(h *hostState, r *http.Request, now int64) time.Duration {
	if u := t.pauseEnd(h, r, now); u > now {
		return time.Duration(u - now)
	}
	return 0
}

// awaitPause waits for the pause that holds r on h, which lasts until
// until (a monotonic() reading), to end before r is sent. It fails at
// once with a HostPausedError when r's context has a deadline before the
// pause ends, and with the context's error when the context ends during
// the wait. A pause moved on during the wait is waited for too.
func (t *Transport) awaitPause(r *http.Request, h *hostState, until int64) error {
	ctx := r.Context()
	counted := false
	for {
		now := monotonic()
		left := time.Duration(until - now)
		if left <= 0 {
			h.pausedUntil.CompareAndSwap(until, 0) // over: the next request pays one load
			return nil
		}
		if !counted {
			h.count(pauseWaitsCounter)
			counted = true
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < left {
			return &HostPausedError{Host: h.key, Wait: left}
		}
		if err := sleep(ctx, left); err != nil {
			return err
		}
		if until = t.pauseEnd(h, r, monotonic()); until == 0 {
			return nil
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
