// This file holds the retry budget: per host, retries may add at most a
// share of the requests of a sliding window, plus a small floor per second.
// Its configuration (RetryBudget) and defaults are here, its option
// (WithRetryBudget) in options.go; each host's window lives in the host's
// state (host.go), and the retry loop (retry.go) deposits and withdraws.

package keepalive

import (
	"sync"
	"sync/atomic"
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

// RetryBudget configures WithRetryBudget: per host, within any Window,
// retries may number at most Ratio x the requests sent to the host in that
// window, plus MinPerSecond x the window's seconds. Zero fields take the
// defaults named on each, so RetryBudget{} is the default budget.
type RetryBudget struct {
	// Ratio is the share of requests that retries may add. Zero means
	// DefaultRetryBudgetRatio; a negative value means none: retries draw
	// on the floor only. It must not exceed 10 (Finagle allows up to
	// 1000%).
	Ratio float64

	// Window is the sliding window over which requests and retries are
	// counted; it slides by whole seconds. Zero means
	// DefaultRetryBudgetWindow; otherwise it must be a whole number of
	// seconds from 1 s to MaxRetryBudgetWindow.
	Window time.Duration

	// MinPerSecond is the floor: retries per second always allowed, so a
	// client that sends few requests can still retry them. Zero means
	// DefaultRetryBudgetMinPerSecond; a negative value means no floor.
	MinPerSecond int
}

// Private implementation past this point.

// budgetConfig is a RetryBudget with its defaults filled in; the zero
// value is "off".
type budgetConfig struct {
	ratio        float64
	window       time.Duration
	minPerSecond int
}

func defaultBudgetConfig() budgetConfig { return RetryBudget{}.config() }

func (b RetryBudget) config() budgetConfig {
	c := budgetConfig{ratio: b.Ratio, window: b.Window, minPerSecond: b.MinPerSecond}
	switch {
	case c.ratio == 0:
		c.ratio = DefaultRetryBudgetRatio
	case c.ratio < 0:
		c.ratio = 0
	}
	if c.window == 0 {
		c.window = DefaultRetryBudgetWindow
	}
	switch {
	case c.minPerSecond == 0:
		c.minPerSecond = DefaultRetryBudgetMinPerSecond
	case c.minPerSecond < 0:
		c.minPerSecond = 0
	}
	return c
}

// retryBudget is the budget's configuration; each host keeps its window in
// its hostBudget (host.go). A nil *retryBudget allows every retry.
type retryBudget struct {
	cfg     budgetConfig
	seconds int     // window in whole seconds: the ring's length
	reserve float64 // the floor over the window
}

func newRetryBudget(cfg budgetConfig) *retryBudget {
	if cfg.window <= 0 {
		return nil
	}
	s := int(cfg.window / time.Second)
	return &retryBudget{cfg: cfg, seconds: s, reserve: float64(cfg.minPerSecond) * float64(s)}
}

// init readies a host's window; the ring is made with the host.
func (b *retryBudget) init(h *hostBudget) {
	if b != nil {
		h.ring = make([]budgetBucket, b.seconds)
	}
}

// deposit records a request to the host whose window is h, at the Unix
// second sec. It runs on every request: one atomic add, and a lock only on
// the first request of a second.
func (b *retryBudget) deposit(h *hostBudget, sec int64) {
	if b == nil {
		return
	}
	bk := &h.ring[int(uint64(sec)%uint64(len(h.ring)))]
	if bk.sec.Load() != sec {
		h.mu.Lock()
		bk = h.bucket(sec)
		h.mu.Unlock()
	}
	bk.deposits.Add(1)
}

// withdraw takes one retry from the budget of the host whose window is h,
// at the Unix second sec, if it has one; it reports whether the retry may
// be sent.
func (b *retryBudget) withdraw(h *hostBudget, sec int64) bool {
	if b == nil {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	deposits, withdrawals := h.sums(sec)
	if b.cfg.ratio*float64(deposits)+b.reserve-float64(withdrawals) < 1 {
		return false
	}
	h.bucket(sec).withdrawals.Add(1)
	return true
}

// hostBudget is one host's window: a ring of one-second buckets, each
// tagged with the Unix second it counts, so a bucket from a lap ago is
// recognised as stale and reset instead of being swept by a timer.
// Deposits are lock-free while their bucket is current; mu serialises the
// resets of buckets, and withdrawals.
type hostBudget struct {
	mu   sync.Mutex
	ring []budgetBucket
}

type budgetBucket struct {
	sec                   atomic.Int64
	deposits, withdrawals atomic.Int64
}

// bucket returns the bucket of second sec, reset if it held an older one;
// h.mu is held. The counts are cleared before the second is stored, so a
// deposit that sees the new second counts in the new bucket (one that
// raced the reset may count in the old second's: the budget is a rate,
// and one request more or less does not change it).
func (h *hostBudget) bucket(sec int64) *budgetBucket {
	bk := &h.ring[int(uint64(sec)%uint64(len(h.ring)))]
	if bk.sec.Load() != sec {
		bk.deposits.Store(0)
		bk.withdrawals.Store(0)
		bk.sec.Store(sec)
	}
	return bk
}

// sums returns the deposits and withdrawals of the window ending at sec.
func (h *hostBudget) sums(sec int64) (deposits, withdrawals int64) {
	oldest := sec - int64(len(h.ring)) + 1
	for i := range h.ring {
		bk := &h.ring[i]
		if s := bk.sec.Load(); s >= oldest && s <= sec {
			deposits += bk.deposits.Load()
			withdrawals += bk.withdrawals.Load()
		}
	}
	return deposits, withdrawals
}
