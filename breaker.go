// This file holds the circuit breaker of WithCircuitBreaker (options.go):
// its configuration and defaults, and one github.com/sony/gobreaker/v2
// breaker per host, kept in the host's state (host.go), asked before each
// attempt and told its outcome by the attempt pipeline (attempt.go).

package keepalive

import (
	"errors"
	"net/http"
	"time"

	"github.com/sony/gobreaker/v2"
)

// Circuit breaker defaults, used for the zero fields of CircuitBreaker.
const (
	// defaultBreakerConsecutiveFailures opens a host's circuit after 5
	// failed attempts in a row, gobreaker's and Polly's default.
	defaultBreakerConsecutiveFailures = 5

	// defaultBreakerMinRequests is the fewest attempts in the interval
	// before FailureRatio may open the circuit: a ratio of 2 failures in 3
	// attempts says little.
	defaultBreakerMinRequests = 20

	// defaultBreakerInterval is the rolling window over which the failure
	// ratio is counted, in ten buckets.
	defaultBreakerInterval = 10 * time.Second

	// defaultBreakerOpenTimeout is how long a circuit stays open before it
	// half-opens to probe. 10 s, below gobreaker's 60 s: a host that
	// restarted or a deploy that finished is usually back within seconds,
	// and one probe per 10 s costs it nothing.
	defaultBreakerOpenTimeout = 10 * time.Second

	// defaultBreakerHalfOpenProbes is the attempts let through while a
	// circuit is half-open; that many successes in a row close it, one
	// failure opens it again.
	defaultBreakerHalfOpenProbes = 1
)

// CircuitBreaker configures WithCircuitBreaker. Zero fields take the
// defaults stated on each, so CircuitBreaker{} is a working configuration.
type CircuitBreaker struct {
	// ConsecutiveFailures opens the circuit after this many failed
	// attempts in a row. Zero means 5, gobreaker's and Polly's default.
	ConsecutiveFailures uint32

	// FailureRatio, when above zero, also opens the circuit when at least
	// MinRequests attempts were made within Interval and at least this
	// share of them failed. Zero means the ratio is not used; it must not
	// exceed 1.
	FailureRatio float64

	// MinRequests is the fewest attempts within Interval for FailureRatio
	// to apply. Zero means 20: a ratio of 2 failures in 3 attempts says
	// little.
	MinRequests uint32

	// Interval is the rolling window of the counts while the circuit is
	// closed. Zero means 10 s; it is rounded to a multiple of a tenth of
	// itself.
	Interval time.Duration

	// OpenTimeout is how long the circuit stays open before it half-opens.
	// Zero means 10 s, below gobreaker's 60 s: a host that restarted is
	// usually back within seconds, and one probe per 10 s costs it nothing.
	OpenTimeout time.Duration

	// HalfOpenProbes is how many attempts a half-open circuit lets
	// through; that many successes in a row close it, one failure opens it
	// again. Zero means 1.
	HalfOpenProbes uint32
}

// Private implementation past this point.

func (c CircuitBreaker) withDefaults() CircuitBreaker {
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = defaultBreakerConsecutiveFailures
	}
	if c.MinRequests == 0 {
		c.MinRequests = defaultBreakerMinRequests
	}
	if c.Interval == 0 {
		c.Interval = defaultBreakerInterval
	}
	if c.OpenTimeout == 0 {
		c.OpenTimeout = defaultBreakerOpenTimeout
	}
	if c.HalfOpenProbes == 0 {
		c.HalfOpenProbes = defaultBreakerHalfOpenProbes
	}
	return c
}

type hostBreaker = gobreaker.TwoStepCircuitBreaker[struct{}]

// Outcomes as told to gobreaker: its IsSuccessful and IsExcluded sort them.
var (
	errBreakerFailure  = errors.New("failure")
	errBreakerExcluded = errors.New("not counted")
)

// newHostBreaker returns the breaker of the host key; onChange
// hears of every change of state.
func newHostBreaker(cfg CircuitBreaker, key string, onChange func(host string, from, to BreakerState)) *hostBreaker {
	return gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:         key,
		MaxRequests:  cfg.HalfOpenProbes,
		Interval:     cfg.Interval,
		BucketPeriod: cfg.Interval / 10,
		Timeout:      cfg.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= cfg.ConsecutiveFailures ||
				cfg.FailureRatio > 0 && c.Requests >= cfg.MinRequests &&
					float64(c.TotalFailures) >= cfg.FailureRatio*float64(c.Requests)
		},
		IsExcluded: func(err error) bool { return err == errBreakerExcluded },
		OnStateChange: func(name string, from, to gobreaker.State) {
			onChange(name, breakerState(from), breakerState(to))
		},
	})
}

// breakerState is gobreaker's state as a BreakerState.
func breakerState(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateOpen:
		return BreakerOpen
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	}
	return BreakerClosed
}

// breakerOutcome sorts an attempt's result for its breaker. ended reports
// whether the attempt was ended from outside: by its caller, or because
// another hedged attempt won.
func breakerOutcome(statuses *statusSet, ended bool, resp *http.Response, err error) error {
	switch {
	case err != nil && ended:
		return errBreakerExcluded
	case err != nil, statuses.has(resp.StatusCode):
		return errBreakerFailure
	}
	return nil
}
