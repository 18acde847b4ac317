// This file holds the retry budget: per host, retries may number at most a
// share of the requests that succeeded in a sliding window, plus a small
// floor per window. Its configuration (RetryBudget) and defaults are here,
// its option (WithRetryBudget) in options.go; each host's window lives in
// the host's state (host.go), and the retry loop (retry.go) deposits a
// success and withdraws a retry; hedges (hedge.go) withdraw too.

package keepalive

import (
	"sync"
	"sync/atomic"
	"time"
)

// Retry budget defaults. A retry budget caps what retries add to a host's
// load when it fails: a fleet whose every client retries 3 times
// multiplies the load on a failing upstream by 4 just when it can least
// take it. The window and its numbers are Finagle's RetryBudget; what
// earns retries is the requests that succeeded, as in gRPC's retry
// throttling (gRFC A6) and the AWS SDKs' retry quota, not every request
// sent: a host that fails everything earns nothing and gets the floor
// alone (10,000 requests within a window reach it at most 10,100 times),
// while a host that fails 5% of requests at random earns far more retries
// than it needs.
const (
	// defaultRetryBudgetRatio is the retries that each success earns: 0.2
	// lets one retry through for every 5 requests that succeeded in the
	// window. A host that fails up to about 1 attempt in 6 at random so
	// keeps all its retries (it needs f/(1-f) retries per success when
	// it fails a share f of attempts); past that, retries are held to 0.2
	// per success, plus the floor.
	defaultRetryBudgetRatio = 0.2

	// defaultRetryBudgetWindow is the sliding window over which successes
	// and retries are counted.
	defaultRetryBudgetWindow = 10 * time.Second

	// defaultRetryBudgetMinPerSecond is the floor: 10 retries per second of
	// the window (10/s x 10 s = 100 per window) always allowed, so a client
	// that sends few requests can still retry them. The floor is bounded:
	// it is a fixed count per window, MinPerSecond x the window's seconds,
	// however the retries bunch up within it and whatever the traffic, and
	// in a full outage it is all the budget holds. So a client that sends
	// 10,000 requests to a dead host within one window retries at most 100
	// of them (1.01 attempts per request), one that keeps sending 1,000
	// requests per second retries 1% of them, and one that sends 1 per
	// second retries them all.
	defaultRetryBudgetMinPerSecond = 10

	// maxBudgetWindow is the longest window WithRetryBudget accepts.
	maxBudgetWindow = 5 * time.Minute
)

// RetryBudget configures WithRetryBudget: per host, within any Window,
// retries may number at most Ratio x the requests to the host that
// succeeded in that window, plus the floor, MinPerSecond x the window's
// seconds. A request succeeded when it ended on an outcome not worth a
// retry: a response whose status is not retried (a 404 counts; a 503
// does not), or that the WithCheckRetry policy does not retry; errors,
// cancelled requests and requests that gave up never count. Zero fields
// take the defaults stated on each, so RetryBudget{} is the default budget.
type RetryBudget struct {
	// Ratio is the retries that each success earns. Zero means 0.2: one
	// retry for every 5 requests that succeeded in the window, so a host
	// that fails up to about 1 attempt in 6 at random keeps all its
	// retries. A negative value means none: retries draw on the floor
	// only. It must not exceed 10 (Finagle allows up to 1000%).
	Ratio float64

	// Window is the sliding window over which successes and retries are
	// counted; it slides by whole seconds. Zero means 10 s; otherwise it
	// must be a whole number of seconds from 1 s to 5 minutes.
	Window time.Duration

	// MinPerSecond is the floor: retries per second of the window always
	// allowed, so a client that sends few requests can still retry them.
	// It is a count per window, MinPerSecond x the window's seconds, not a
	// rate: the whole count may be spent at once. Zero means 10 (100 per
	// 10 s window); a negative value means no floor.
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
		c.ratio = defaultRetryBudgetRatio
	case c.ratio < 0:
		c.ratio = 0
	}
	if c.window == 0 {
		c.window = defaultRetryBudgetWindow
	}
	switch {
	case c.minPerSecond == 0:
		c.minPerSecond = defaultRetryBudgetMinPerSecond
	case c.minPerSecond < 0:
		c.minPerSecond = 0
	}
	return c
}

// retryBudget is the budget's configuration; each host keeps its window in
// its hostBudget. A nil *retryBudget allows every retry and
// records no success.
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

// deposit records a success of the host whose window is h, dated the Unix
// second sec (that of the attempt that succeeded). It runs on every request
// that succeeds, so it is cheap: one atomic add, and a lock only on the
// first deposit or withdrawal of a second. A deposit dated a lap of the
// ring or more before the second its bucket now counts is outside every
// window from now on, and is dropped.
func (b *retryBudget) deposit(h *hostBudget, sec int64) {
	if b == nil || h.ring == nil {
		return
	}
	bk := &h.ring[int(uint64(sec)%uint64(len(h.ring)))]
	if bk.sec.Load() != sec {
		h.mu.Lock()
		bk = h.bucket(sec)
		h.mu.Unlock()
		if bk == nil {
			return
		}
	}
	bk.deposits.Add(1)
}

// withdraw takes one retry from the budget of the host whose window is h,
// at the Unix second sec, if it has one; it reports whether the retry may
// be sent.
func (b *retryBudget) withdraw(h *hostBudget, sec int64) bool {
	if b == nil || h.ring == nil {
		return true // off, or a host past HostStatsLimit
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	deposits, withdrawals := h.sums(sec)
	if b.cfg.ratio*float64(deposits)+b.reserve-float64(withdrawals) < 1 {
		return false
	}
	bk := h.bucket(sec)
	if bk == nil {
		return false // a clock reading a lap stale: refused, not counted in a newer second
	}
	bk.withdrawals.Add(1)
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

// bucket returns the bucket of second sec, reset if it held an older one,
// or nil if it holds a newer one (sec is then a lap of the ring or more
// before it, outside every window from now on); h.mu is held. The counts
// are cleared before the second is stored, so a deposit that sees the new
// second counts in the new bucket (one that raced the reset may count in
// the old second's: the budget is a rate, and one success more or less
// does not change it).
func (h *hostBudget) bucket(sec int64) *budgetBucket {
	bk := &h.ring[int(uint64(sec)%uint64(len(h.ring)))]
	switch cur := bk.sec.Load(); {
	case cur > sec:
		return nil
	case cur < sec:
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
