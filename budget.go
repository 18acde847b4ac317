// This file holds the retry budget: per host, retries may add at most a
// share of the requests of a sliding window, plus a small floor per second.
// The retry loop that asks it is in retry.go; the option is WithRetryBudget.

package keepalive

import (
	"sync"
	"time"
)

// Retry budget defaults, those of Finagle's RetryBudget (Envoy and gRPC
// throttle retries the same way). A retry budget caps what retries add to a
// host's load when it fails: a fleet whose every client retries 3 times
// multiplies the load on a failing upstream by 4 just when it can least take
// it; with the budget the multiplier stays near 1.2.
const (
	// DefaultRetryBudgetRatio is the share of requests that retries may add:
	// 0.2 lets 2 retries through for every 10 requests in the window.
	DefaultRetryBudgetRatio = 0.2

	// DefaultRetryBudgetWindow is the sliding window over which requests
	// and retries are counted.
	DefaultRetryBudgetWindow = 10 * time.Second

	// DefaultRetryBudgetMinPerSecond is the floor: retries per second
	// always allowed (over the window: 10/s x 10 s = 100), so a client that
	// sends few requests can still retry them.
	DefaultRetryBudgetMinPerSecond = 10

	// MaxRetryBudgetWindow is the longest window WithRetryBudget accepts.
	MaxRetryBudgetWindow = 5 * time.Minute
)

// WithRetryBudget sets the retry budget, kept for each host (the request
// URL's host:port): within any window, retries to a host may number at most
// ratio x the requests sent to it in that window, plus minPerSecond x the
// window's seconds. A retry the budget refuses is not sent: the request
// ends at once with the outcome of its last attempt (its response, or its
// error, in a *RetryError after more than one attempt), and
// Stats.BudgetRefusals counts it. The window slides by whole seconds. Hedged
// attempts (WithHedging) draw from the same budget.
//
// The budget is on by default: DefaultRetryBudgetRatio,
// DefaultRetryBudgetWindow, DefaultRetryBudgetMinPerSecond. Ratio zero
// means only the floor; minPerSecond zero means no floor; both zero means
// no retries at all. The window must be a whole number of seconds from 1 s
// to MaxRetryBudgetWindow, ratio between 0 and 10 (Finagle allows up to
// 1000%), minPerSecond not negative; anything else is an error. Turn the
// budget off with WithoutRetryBudget.
func WithRetryBudget(ratio float64, window time.Duration, minPerSecond int) Option {
	return optionFunc(func(o *options) {
		o.budget = budgetConfig{ratio: ratio, window: window, minPerSecond: minPerSecond}
		o.check("WithRetryBudget", ratio >= 0 && ratio <= 10, "ratio must be between 0 and 10, got %v", ratio)
		o.check("WithRetryBudget", window >= time.Second && window <= MaxRetryBudgetWindow && window%time.Second == 0,
			"window must be whole seconds from 1s to %v, got %v", MaxRetryBudgetWindow, window)
		o.check("WithRetryBudget", minPerSecond >= 0, "minPerSecond must not be negative, got %d", minPerSecond)
	})
}

// WithoutRetryBudget turns the retry budget off: every retry that the policy
// allows is sent, up to WithMaxRetries per request, as in urllib3 or
// go-retryablehttp. Against a host that fails every request, each request
// then reaches it 1+WithMaxRetries times.
func WithoutRetryBudget() Option {
	return optionFunc(func(o *options) { o.budget = budgetConfig{} })
}

// Private implementation past this point.

// budgetConfig is the budget of WithRetryBudget; the zero value is "off".
type budgetConfig struct {
	ratio        float64
	window       time.Duration
	minPerSecond int
}

func defaultBudgetConfig() budgetConfig {
	return budgetConfig{
		ratio:        DefaultRetryBudgetRatio,
		window:       DefaultRetryBudgetWindow,
		minPerSecond: DefaultRetryBudgetMinPerSecond,
	}
}

// retryBudget holds one hostBudget per host. A nil *retryBudget allows every
// retry.
type retryBudget struct {
	cfg     budgetConfig
	seconds int     // window in whole seconds: the ring's length
	reserve float64 // the floor over the window
	hosts   hostMap[hostBudget]
}

func newRetryBudget(cfg budgetConfig) *retryBudget {
	if cfg.window <= 0 {
		return nil
	}
	s := int(cfg.window / time.Second)
	b := &retryBudget{cfg: cfg, seconds: s, reserve: float64(cfg.minPerSecond) * float64(s)}
	b.hosts.newValue = func(string) *hostBudget { return &hostBudget{ring: make([]budgetBucket, s)} }
	b.hosts.idle = (*hostBudget).idle
	return b
}

// deposit records a request to host at now. It runs on every request, so it
// takes one lock and allocates nothing once the host is known.
func (b *retryBudget) deposit(host string, now time.Time) {
	if b == nil {
		return
	}
	h := b.hosts.get(host, now)
	h.mu.Lock()
	h.bucket(now.Unix()).deposits++
	h.mu.Unlock()
}

// withdraw takes one retry from host's budget at now, if the budget has
// one; it reports whether the retry may be sent.
func (b *retryBudget) withdraw(host string, now time.Time) bool {
	if b == nil {
		return true
	}
	h := b.hosts.get(host, now)
	h.mu.Lock()
	defer h.mu.Unlock()
	sec := now.Unix()
	deposits, withdrawals := h.sums(sec)
	if b.cfg.ratio*float64(deposits)+b.reserve-float64(withdrawals) < 1 {
		return false
	}
	h.bucket(sec).withdrawals++
	return true
}

// hostBudget is one host's window: a ring of one-second buckets, each
// tagged with the Unix second it counts, so a bucket from a lap ago is
// recognised as stale and reset instead of being swept by a timer.
type hostBudget struct {
	mu   sync.Mutex
	ring []budgetBucket
}

type budgetBucket struct {
	sec                   int64
	deposits, withdrawals int64
}

// bucket returns the bucket of second sec, reset if it held an older one.
func (h *hostBudget) bucket(sec int64) *budgetBucket {
	bk := &h.ring[int(uint64(sec)%uint64(len(h.ring)))]
	if bk.sec != sec {
		*bk = budgetBucket{sec: sec}
	}
	return bk
}

// sums returns the deposits and withdrawals of the window ending at sec.
func (h *hostBudget) sums(sec int64) (deposits, withdrawals int64) {
	oldest := sec - int64(len(h.ring)) + 1
	for i := range h.ring {
		if bk := &h.ring[i]; bk.sec >= oldest && bk.sec <= sec {
			deposits += bk.deposits
			withdrawals += bk.withdrawals
		}
	}
	return deposits, withdrawals
}

// idle reports whether h counted nothing in the window ending at now.
func (h *hostBudget) idle(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, w := h.sums(now.Unix())
	return d == 0 && w == 0
}

// hostMapSweepAt is the number of hosts past which adding one first drops
// the hosts that have been idle: a client that talks to many hosts (a
// crawler) does not keep state for every host it ever met.
const hostMapSweepAt = 1024

// hostMap maps hosts to per-host state, created on first use. A lookup of a
// known host takes a read lock and allocates nothing.
type hostMap[V any] struct {
	mu       sync.RWMutex
	m        map[string]*V
	newValue func(host string) *V
	idle     func(*V, time.Time) bool // may be dropped; nil: never
}

func (hm *hostMap[V]) get(host string, now time.Time) *V {
	hm.mu.RLock()
	v, ok := hm.m[host]
	hm.mu.RUnlock()
	if ok {
		return v
	}
	hm.mu.Lock()
	defer hm.mu.Unlock()
	if v, ok := hm.m[host]; ok {
		return v
	}
	if hm.m == nil {
		hm.m = make(map[string]*V)
	}
	if len(hm.m) >= hostMapSweepAt && hm.idle != nil {
		for k, old := range hm.m {
			if hm.idle(old, now) {
				delete(hm.m, k)
			}
		}
	}
	v = hm.newValue(host)
	hm.m[host] = v
	return v
}
