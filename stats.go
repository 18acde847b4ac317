// This file holds Stats, the counters of a Transport or of one of its
// hosts, the derived reuse figures, and the atomics behind them.

package keepalive

import "sync/atomic"

// Stats are counters of a Transport, or of one host of it (HostStats),
// since it was created. They only grow. Reused and ReuseRatio derive
// connection reuse from them.
type Stats struct {
	Requests   int64 // calls to RoundTrip
	Attempts   int64 // requests sent to the underlying transport, retries and hedges included
	Retries    int64 // attempts after the first of their request
	GaveUp     int64 // requests that ran out of retries, or whose wait for the next attempt was refused
	Dials      int64 // new connections opened (TCP connect succeeded); of an https host not known to speak HTTP/1, those that carried a request
	DialErrors int64 // TCP connects that failed; dials cancelled because no request needed them are not counted

	BudgetRefusals  int64 // retries and hedges not sent because the retry budget was spent
	AttemptTimeouts int64 // attempts abandoned by WithAttemptTimeout
	WriteTimeouts   int64 // attempts whose upload stalled for the read timeout
	CircuitOpen     int64 // attempts refused by an open circuit (WithCircuitBreaker)
	Hedges          int64 // hedged attempts sent (WithHedging), counted in Attempts too
	ConnsExpired    int64 // connections retired by WithConnMaxLifetime

	// IdleCloses are connections their server closed while they were
	// idle in the pool; ConnsRetiredIdle are connections not reused
	// because they had been idle for longer than their host's learned
	// idle timeout allows (see the package documentation, Cooperating
	// with servers): each is an idle close that no request ran into.
	IdleCloses       int64
	ConnsRetiredIdle int64

	// DiscardedDials are connections dialed that carried no request: the
	// extra connections of an HTTP/2 host that lost the race to the one
	// it shares (the dial gate keeps them few), or whose TLS handshake
	// failed. They are not in Dials.
	DiscardedDials int64
	// Pauses counts the pauses a host asked for (see the package
	// documentation, Cooperating with servers): responses that paused a
	// host that was not paused. A response that moves the end of a
	// running pause later is not counted.
	Pauses int64
	// PauseWaits counts the attempts held back by a pause: they waited
	// for its end, or failed at once with a HostPausedError.
	PauseWaits int64
	// TLSHandshakes counts the TLS connections that carried a request;
	// TLSResumed, those of them whose handshake resumed a session (a
	// fraction of a full handshake's cost: see WithTLSConfig).
	TLSHandshakes, TLSResumed int64
}

// Reused returns the attempts that did not open a connection: Attempts -
// Dials - DialErrors, never below zero. It is counted from the dialer, free
// of any per-request cost. Once no request is in flight it is exact but
// for two rare cases: a connection dialed and never used (its request took
// another one that came free first) lowers it by one, and an attempt that
// failed before it got a connection, other than by a failed dial, raises
// it by one. For each attempt's own answer, use Observer.TraceConns.
func (s Stats) Reused() int64 { return max(0, s.Attempts-s.Dials-s.DialErrors) }

// ReuseRatio is Reused / Attempts: the share of attempts sent over a
// connection that was already open. It is 0 before the first attempt.
func (s Stats) ReuseRatio() float64 {
	if s.Attempts == 0 {
		return 0
	}
	return float64(s.Reused()) / float64(s.Attempts)
}

// AddrStats are the counters of one address of a balanced host (see
// WithResolver), since it joined the name.
type AddrStats struct {
	Addr        string // "ip:port"
	Attempts    int64  // attempts sent to it
	Outstanding int64  // attempts sent whose response is not done with yet
	Failures    int64  // connect failures, and attempts that failed on a connection to it
	Ejections   int64  // its ejections counted towards the length of the next
	Ejected     bool   // it takes no attempt until its ejection ends
}

// Private implementation past this point.

// counter names one of the counters behind Stats.
type counter uint8

const (
	requestsCounter counter = iota
	attemptsCounter
	retriesCounter
	gaveUpCounter
	dialsCounter
	dialErrorsCounter
	budgetRefusalsCounter
	attemptTimeoutCounter
	writeTimeoutCounter
	circuitOpenCounter
	hedgeCounter
	connExpiredCounter
	idleClosesCounter
	connsRetiredIdleCounter
	discardedDialsCounter
	pausesCounter
	pauseWaitsCounter
	tlsHandshakesCounter
	tlsResumedCounter
	numCounters
)

// counters are the atomics behind Stats, kept per host, by counter.
type counters [numCounters]atomic.Int64

// add returns the field-wise sum of s and o.
func (s Stats) add(o Stats) Stats {
	s.Requests += o.Requests
	s.Attempts += o.Attempts
	s.Retries += o.Retries
	s.GaveUp += o.GaveUp
	s.Dials += o.Dials
	s.DialErrors += o.DialErrors
	s.BudgetRefusals += o.BudgetRefusals
	s.AttemptTimeouts += o.AttemptTimeouts
	s.WriteTimeouts += o.WriteTimeouts
	s.CircuitOpen += o.CircuitOpen
	s.Hedges += o.Hedges
	s.ConnsExpired += o.ConnsExpired
	s.IdleCloses += o.IdleCloses
	s.ConnsRetiredIdle += o.ConnsRetiredIdle
	s.DiscardedDials += o.DiscardedDials
	s.Pauses += o.Pauses
	s.PauseWaits += o.PauseWaits
	s.TLSHandshakes += o.TLSHandshakes
	s.TLSResumed += o.TLSResumed
	return s
}

// snapshot reads the counters into Stats.
func (c *counters) snapshot() Stats {
	return Stats{
		Requests:         c[requestsCounter].Load(),
		Attempts:         c[attemptsCounter].Load(),
		Retries:          c[retriesCounter].Load(),
		GaveUp:           c[gaveUpCounter].Load(),
		Dials:            c[dialsCounter].Load(),
		DialErrors:       c[dialErrorsCounter].Load(),
		BudgetRefusals:   c[budgetRefusalsCounter].Load(),
		AttemptTimeouts:  c[attemptTimeoutCounter].Load(),
		WriteTimeouts:    c[writeTimeoutCounter].Load(),
		CircuitOpen:      c[circuitOpenCounter].Load(),
		Hedges:           c[hedgeCounter].Load(),
		ConnsExpired:     c[connExpiredCounter].Load(),
		IdleCloses:       c[idleClosesCounter].Load(),
		ConnsRetiredIdle: c[connsRetiredIdleCounter].Load(),
		DiscardedDials:   c[discardedDialsCounter].Load(),
		Pauses:           c[pausesCounter].Load(),
		PauseWaits:       c[pauseWaitsCounter].Load(),
		TLSHandshakes:    c[tlsHandshakesCounter].Load(),
		TLSResumed:       c[tlsResumedCounter].Load(),
	}
}
