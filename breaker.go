// This file holds the circuit breaker of WithCircuitBreaker: one
// github.com/sony/gobreaker/v2 breaker per host, asked before each attempt
// by the attempt runner (hedge.go) and told each attempt's outcome.

package keepalive

import (
	"context"
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

// WithCircuitBreaker puts a circuit breaker in front of each host (the
// request URL's host:port). An attempt fails when it ends with a transport
// error or with a status in the retry list (WithRetryStatuses; 429 and 5xx
// by default); any other response is a success; an attempt cancelled by
// its caller, or a hedge cancelled because another attempt won, is not
// counted. When the failures reach the configured limits the circuit
// opens: attempts to that host fail at once, without a connection, with an
// error that matches ErrCircuitOpen (a *CircuitOpenError; in a *RetryError
// when earlier attempts were made), and are not retried. After
// OpenTimeout it half-opens and lets HalfOpenProbes attempts through to
// decide whether to close again.
//
// Default: no circuit breaker. Negative durations, or a FailureRatio
// outside 0..1, are an error.
func WithCircuitBreaker(cfg CircuitBreaker) Option {
	return optionFunc(func(o *options) {
		c := cfg.withDefaults()
		o.breaker = &c
		o.check("WithCircuitBreaker", cfg.FailureRatio >= 0 && cfg.FailureRatio <= 1,
			"FailureRatio must be between 0 and 1, got %v", cfg.FailureRatio)
		o.check("WithCircuitBreaker", cfg.Interval >= 0, "negative Interval %v", cfg.Interval)
		o.check("WithCircuitBreaker", cfg.OpenTimeout >= 0, "negative OpenTimeout %v", cfg.OpenTimeout)
	})
}

// ErrCircuitOpen is matched, with errors.Is, by the error of an attempt
// refused because its host's circuit is open or half-open and busy.
var ErrCircuitOpen = errors.New("keepalive: circuit open")

// CircuitOpenError is the error of an attempt refused by the circuit
// breaker of its host (WithCircuitBreaker).
type CircuitOpenError struct {
	Host string // the request URL's host:port
}

func (e *CircuitOpenError) Error() string {
	return "keepalive: circuit open for " + e.Host
}

// Is reports whether target is ErrCircuitOpen.
func (e *CircuitOpenError) Is(target error) bool { return target == ErrCircuitOpen }

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

type breakers struct {
	hosts    hostMap[hostBreaker]
	statuses statusSet
}

// Outcomes as told to gobreaker: its IsSuccessful and IsExcluded sort them.
var (
	errBreakerFailure  = errors.New("failure")
	errBreakerExcluded = errors.New("not counted")
)

func newBreakers(cfg CircuitBreaker, statuses statusSet) *breakers {
	b := &breakers{statuses: statuses}
	b.hosts.newValue = func(host string) *hostBreaker {
		return gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
			Name:         host,
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
		})
	}
	b.hosts.idle = func(cb *hostBreaker, _ time.Time) bool {
		return cb.State() == gobreaker.StateClosed && cb.Counts().Requests == 0
	}
	return b
}

// allow asks host's breaker for an attempt; done must be called with the
// attempt's outcome (see outcome).
func (b *breakers) allow(host string, now time.Time) (done func(error), err error) {
	done, err = b.hosts.get(host, now).Allow()
	if err != nil {
		return nil, &CircuitOpenError{Host: host}
	}
	return done, nil
}

// outcome sorts an attempt's result for its breaker.
func (b *breakers) outcome(ctx context.Context, resp *http.Response, err error) error {
	switch {
	case err != nil && ctx.Err() != nil:
		return errBreakerExcluded // the caller, or a winning hedge, ended it
	case err != nil, b.statuses.has(resp.StatusCode):
		return errBreakerFailure
	}
	return nil
}
