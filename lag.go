// This file holds the scheduling lag: how late the goroutines of this
// process have run lately. A read that returns data late by that much
// makes a connection look younger than its server counts it, so the idle
// check of the connection wrapper widens its margin by it.

package keepalive

import (
	"math"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// schedLagEvery is how often the lag is read from the runtime: a reading
// costs about half a microsecond, and is taken by the first idle check
// after the last one is this old.
const schedLagEvery = time.Second

// schedLag is the longest wait, among those the runtime sampled since the
// reading before, of a goroutine between becoming runnable and running
// (runtime/metrics "/sched/latencies:seconds"): on a busy machine, the
// read loop of a connection can run that late after its response arrived.
// The process has one, as the runtime measures the process.
type schedLag struct {
	at  atomic.Int64 // monotonic() of the last reading; 0: none yet
	lag atomic.Int64 // in ns

	mu     sync.Mutex // one reader at a time
	prev   []uint64   // the histogram's counts at the last reading
	sample [1]metrics.Sample
}

var processLag schedLag

// get returns the lag as of the monotonic reading now, read afresh if the
// last reading is older than schedLagEvery.
func (s *schedLag) get(now int64) time.Duration {
	if now-s.at.Load() < int64(schedLagEvery) || !s.mu.TryLock() {
		return time.Duration(s.lag.Load())
	}
	defer s.mu.Unlock()
	s.sample[0].Name = "/sched/latencies:seconds"
	metrics.Read(s.sample[:])
	s.at.Store(now)
	if s.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := s.sample[0].Value.Float64Histogram()
	lag := 0.0
	for i := len(h.Counts) - 1; i >= 0; i-- {
		var before uint64
		if i < len(s.prev) {
			before = s.prev[i]
		}
		if h.Counts[i] > before { // the slowest bucket sampled since the last reading
			lag = h.Buckets[i+1]
			if math.IsInf(lag, 1) {
				lag = h.Buckets[i]
			}
			break
		}
	}
	s.prev = append(s.prev[:0], h.Counts...)
	d := time.Duration(min(lag, float64(time.Hour)/float64(time.Second)) * float64(time.Second))
	s.lag.Store(int64(d))
	return d
}
