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
	// DefaultBreakerConsecutiveFailures opens a host's circuit after 5
	// failed attempts in a row, gobreaker's and Polly's default.
	DefaultBreakerConsecutiveFailures = 5

	// DefaultBreakerMinRequests is the fewest attempts in the interval
	// before FailureRatio may open the circuit: a ratio of 2 failures in 3
	// attempts says little.
	DefaultBreakerMinRequests = 20

	// DefaultBreakerInterval is the rolling window over which the failure
	// ratio is counted, in ten buckets.
	DefaultBreakerInterval = 10 * time.Second

	// DefaultBreakerOpenTimeout is how long a circuit stays open before it
	// half-opens to probe. 10 s, below gobreaker's 60 s: a host that
	// restarted or a deploy that finished is usually back within seconds,
	// and one probe per 10 s costs it nothing.
	DefaultBreakerOpenTimeout = 10 * time.Second

	// DefaultBreakerHalfOpenProbes is the attempts let through while a
	// circuit is half-open; that many successes in a row close it, one
	// failure opens it again.
	DefaultBreakerHalfOpenProbes = 1
)

// CircuitBreaker configures WithCircuitBreaker. Zero fields take the
// defaults named on each, so CircuitBreaker{} is a working configuration.
type CircuitBreaker struct {
	// ConsecutiveFailures opens the circuit after this many failed
	// attempts in a row. Zero means DefaultBreakerConsecutiveFailures.
	ConsecutiveFailures uint32

	// FailureRatio, when above zero, also opens the circuit when at least
	// MinRequests attempts were made within Interval and at least this
	// share of them failed. Zero means the ratio is not used; it must not
	// exceed 1.
	FailureRatio float64

	// MinRequests is the fewest attempts within Interval for FailureRatio
	// to apply. Zero means DefaultBreakerMinRequests.
	MinRequests uint32

	// Interval is the rolling window of the counts while the circuit is
	// closed. Zero means DefaultBreakerInterval; it is rounded to a
	// multiple of a tenth of itself.
	Interval time.Duration

	// OpenTimeout is how long the circuit stays open before it half-opens.
	// Zero means DefaultBreakerOpenTimeout.
	OpenTimeout time.Duration

	// HalfOpenProbes is how many attempts a half-open circuit lets
	// through. Zero means DefaultBreakerHalfOpenProbes.
	HalfOpenProbes uint32
}

// Private implementation past this point.

func (c CircuitBreaker) withDefaults() CircuitBreaker {
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = DefaultBreakerConsecutiveFailures
	}
	if c.MinRequests == 0 {
		c.MinRequests = DefaultBreakerMinRequests
	}
	if c.Interval == 0 {
		c.Interval = DefaultBreakerInterval
	}
	if c.OpenTimeout == 0 {
		c.OpenTimeout = DefaultBreakerOpenTimeout
	}
	if c.HalfOpenProbes == 0 {
		c.HalfOpenProbes = DefaultBreakerHalfOpenProbes
	}
	return c
}

type hostBreaker = gobreaker.TwoStepCircuitBreaker[struct{}]

// Outcomes as told to gobreaker: its IsSuccessful and IsExcluded sort them.
var (
	errBreakerFailure  = errors.New("failure")
	errBreakerExcluded = errors.New("not counted")
)

// newHostBreaker returns the breaker of the host key; onChange (events.go)
// hears of every change of state.
func newHostBreaker(cfg CircuitBreaker, key string, onChange func(host, from, to string)) *hostBreaker {
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
			onChange(name, from.String(), to.String())
		},
	})
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
