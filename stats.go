// This file holds the counters of a Transport: Stats for all hosts,
// HostStats for each, and the derived reuse figures. The per-host state
// they live in is in host.go.

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
}

// Stats returns the counters of all hosts so far: the sum of HostStats.
// It is safe to call concurrently with requests; each counter is read
// atomically, the set as a whole is not a snapshot. It costs a pass over
// the hosts (at most HostStatsLimit+1): a request adds to its host's
// counters only, so that concurrent requests to different hosts share no
// counter.
func (t *Transport) Stats() Stats {
	m := t.hosts.maps.Load()
	s := t.hosts.overflow.snapshot()
	for _, h := range m.canon {
		s = s.add(h.snapshot())
	}
	return s
}

// HostStatsLimit is the most hosts a Transport keeps apart, in HostStats
// and for its per-host retry budget, circuit breaker, dial gate, learned
// idle timeout and pause; the hosts past it share one state under the key
// OtherHosts, so a client that meets unboundedly many hosts (a crawler)
// holds bounded memory. Since one such host's failures must not cost the
// others anything, they have no retry budget (WithMaxRetries alone bounds
// their retries), no circuit breaker, no idle timeout and no pause.
const HostStatsLimit = 1024

// OtherHosts is the HostStats key of the hosts past HostStatsLimit.
const OtherHosts = "other"

// HostStats returns Stats per host, keyed by "host:port" with the
// scheme's default port filled in and the name in lower case:
// "example.com:443" for https://example.com/ and https://Example.com:443/
// alike, "[::1]:8080" for http://[::1]:8080/. The same key names the host
// of the retry budget, the circuit breaker and the events. Like Stats, it
// is safe to call concurrently with requests, and each counter is read
// atomically. A connection's dial is counted under the host of the
// request it was dialed for, behind a proxy too (not under the proxy's
// address), and a name in Unicode has one key, its own spelling in lower
// case, though net/http dials it in punycode. Behind a plain HTTP proxy
// (http:// URLs through WithProxy), whose connections carry the requests
// of every host, IdleCloses and ConnsRetiredIdle are counted under the
// proxy's address: its idle timeout judges them.
func (t *Transport) HostStats() map[string]Stats {
	m := t.hosts.maps.Load()
	out := make(map[string]Stats, len(m.canon)+1)
	for k, c := range m.canon {
		out[k] = c.snapshot()
	}
	if s := t.hosts.overflow.snapshot(); s != (Stats{}) {
		out[OtherHosts] = s
	}
	return out
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

// Private implementation past this point.

// counters are the atomics behind Stats, kept per host.
type counters struct {
	requests, attempts, retries, gaveUp atomic.Int64
	dials, dialErrors                   atomic.Int64

	budgetRefusals, attemptTimeouts, writeTimeouts, circuitOpen, hedges, connsExpired atomic.Int64
	idleCloses, connsRetiredIdle, discardedDials                                      atomic.Int64
	pauses, pauseWaits                                                                atomic.Int64
}

// counter picks one counter of a counters.
type counter func(*counters) *atomic.Int64

func requestsCounter(c *counters) *atomic.Int64       { return &c.requests }
func attemptsCounter(c *counters) *atomic.Int64       { return &c.attempts }
func retriesCounter(c *counters) *atomic.Int64        { return &c.retries }
func gaveUpCounter(c *counters) *atomic.Int64         { return &c.gaveUp }
func dialsCounter(c *counters) *atomic.Int64          { return &c.dials }
func dialErrorsCounter(c *counters) *atomic.Int64     { return &c.dialErrors }
func budgetRefusalsCounter(c *counters) *atomic.Int64 { return &c.budgetRefusals }
func attemptTimeoutCounter(c *counters) *atomic.Int64 { return &c.attemptTimeouts }
func writeTimeoutCounter(c *counters) *atomic.Int64   { return &c.writeTimeouts }
func circuitOpenCounter(c *counters) *atomic.Int64    { return &c.circuitOpen }
func hedgeCounter(c *counters) *atomic.Int64          { return &c.hedges }
func pausesCounter(c *counters) *atomic.Int64         { return &c.pauses }
func pauseWaitsCounter(c *counters) *atomic.Int64     { return &c.pauseWaits }

// count adds one to the counter pick selects, for host h (Stats sums the
// hosts).
func (t *Transport) count(h *hostState, pick counter) {
	pick(&h.counters).Add(1)
}

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
	return s
}

// snapshot reads the counters into Stats.
func (c *counters) snapshot() Stats {
	return Stats{
		Requests:       c.requests.Load(),
		Attempts:       c.attempts.Load(),
		Retries:        c.retries.Load(),
		GaveUp:         c.gaveUp.Load(),
		BudgetRefusals: c.budgetRefusals.Load(),
		Dials:          c.dials.Load(),
		DialErrors:     c.dialErrors.Load(),

		AttemptTimeouts: c.attemptTimeouts.Load(),
		WriteTimeouts:   c.writeTimeouts.Load(),
		CircuitOpen:     c.circuitOpen.Load(),
		Hedges:          c.hedges.Load(),
		ConnsExpired:    c.connsExpired.Load(),

		IdleCloses:       c.idleCloses.Load(),
		ConnsRetiredIdle: c.connsRetiredIdle.Load(),
		DiscardedDials:   c.discardedDials.Load(),
		Pauses:           c.pauses.Load(),
		PauseWaits:       c.pauseWaits.Load(),
	}
}
