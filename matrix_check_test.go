// This file holds the checks of a matrix cell once its requests are done:
// what is left behind (connections, request bodies, goroutines), what the
// server saw, and what Stats, the observer and the attempt transport say.

package keepalive

import (
	"fmt"
	"maps"
	"net/http"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// settle waits for the client to let go of everything: first, closing
// idle connections, until the server sees every connection of the client
// closed and every request body was closed (cheap to watch; the server is
// still up, so it closes nothing for the client); then, with the server
// shut down, until no goroutine of the client side runs (from the
// goroutine profile, which is costly: mxLeaks shares each one among the
// cells that wait).
func (c *mxCell) settle() {
	var conns int64
	var open []string
	if !poll(mxSettle, func() bool {
		c.tr.CloseIdleConnections()
		conns, open = c.srv.conns.Load(), c.openBodies()
		return conns == 0 && len(open) == 0
	}) {
		if conns > 0 {
			c.fail(invGoroutines, "the server still has %d connections of the client open %v after its requests ended and its idle connections were closed",
				conns, mxSettle)
		}
		if len(open) > 0 {
			c.fail(invBodyClosed, "request bodies never closed: %s", strings.Join(open, ", "))
		}
	}
	c.srv.shutdown()
	deadline := time.Now().Add(mxSettle)
	for {
		n, stacks := mxLeaks.count(c.label)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.fail(invGoroutines, "%d goroutines of the client still running %v after its requests ended and its idle connections were closed:\n%s",
				n, mxSettle, stacks)
			return
		}
		c.tr.CloseIdleConnections()
	}
}

func (c *mxCell) openBodies() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var open []string
	for _, b := range c.bodies {
		if !b.closed.Load() {
			open = append(open, c.kinds[b.id].String()+" "+b.id)
		}
	}
	return open
}

// mxLeaks counts the client goroutines of the cells that ask.
var mxLeaks mxLeakChecker

// mxLeakChecker takes a goroutine profile (tens of milliseconds under the
// race detector, with every goroutine stopped for part of it) at most
// every mxLeakInterval, while cells wait for one, and answers each cell
// that waited with its goroutines, told apart by their pprof labels.
type mxLeakChecker struct {
	mu      sync.Mutex
	waiting []*mxLeakQuery
	running bool
}

const mxLeakInterval = time.Second

type mxLeakQuery struct {
	cell   string
	n      int
	stacks string
	done   chan struct{}
}

// count returns the number of goroutines labelled as cell's client side
// in a profile taken after the call, and their stacks.
func (lc *mxLeakChecker) count(cell string) (int, string) {
	q := &mxLeakQuery{cell: cell, done: make(chan struct{})}
	lc.mu.Lock()
	lc.waiting = append(lc.waiting, q)
	if !lc.running {
		lc.running = true
		go lc.loop() // unlabelled: the caller cleared its labels
	}
	lc.mu.Unlock()
	<-q.done
	return q.n, q.stacks
}

// loop answers the cells that wait, and ends as soon as none does, so
// that it outlives no test.
func (lc *mxLeakChecker) loop() {
	for {
		waitOut(mxLeakInterval) // gathers the cells that finish meanwhile
		lc.mu.Lock()
		batch := lc.waiting
		lc.waiting = nil
		lc.mu.Unlock()
		found := mxClientGoroutines()
		for _, q := range batch {
			if g, ok := found[q.cell]; ok {
				q.n, q.stacks = g.n, g.stacks.String()
			}
			close(q.done)
		}
		lc.mu.Lock()
		if len(lc.waiting) == 0 {
			lc.running = false
			lc.mu.Unlock()
			return
		}
		lc.mu.Unlock()
	}
}

type mxGoroutineSet struct {
	n      int
	stacks strings.Builder
}

// mxClientGoroutines returns the goroutines labelled as a cell's client
// side, by cell, from the goroutine profile.
func mxClientGoroutines() map[string]*mxGoroutineSet {
	var b strings.Builder
	if err := pprof.Lookup("goroutine").WriteTo(&b, 1); err != nil {
		panic(err)
	}
	text := b.String()
	if i := strings.IndexByte(text, '\n'); i >= 0 { // "goroutine profile: total N"
		text = text[i+1:]
	}
	found := map[string]*mxGoroutineSet{}
	for _, rec := range strings.Split(text, "\n\n") {
		// "N @ pc...", "# labels: {...}", then a line per frame.
		lines := strings.Split(rec, "\n")
		if len(lines) < 2 || !strings.HasPrefix(lines[1], "# labels: ") ||
			!strings.Contains(lines[1], `"side":"client"`) {
			continue
		}
		_, cell, ok := strings.Cut(lines[1], `"matrix":"`)
		cell, _, _ = strings.Cut(cell, `"`)
		count, err := strconv.Atoi(strings.Fields(lines[0])[0])
		if !ok || err != nil {
			continue
		}
		g := found[cell]
		if g == nil {
			g = &mxGoroutineSet{}
			found[cell] = g
		}
		g.n += count
		fmt.Fprintf(&g.stacks, "%d goroutine(s):\n", count)
		for _, l := range lines[2:] {
			if f := strings.Fields(l); len(f) >= 3 { // "#", pc, function+offset, file:line
				fmt.Fprintf(&g.stacks, "  %s %s\n", f[2], f[len(f)-1])
			}
		}
	}
	return found
}

// checkServer checks what the server saw of each request.
func (c *mxCell) checkServer() {
	seen, bad := c.srv.records()
	c.mu.Lock()
	kinds := c.kinds
	c.mu.Unlock()
	for id, k := range kinds {
		if k.once(c.has("bodybuf")) && seen[id] > 1 {
			c.fail(invAtMostOnce, "%s %s reached the server %d times", k, id, seen[id])
		}
	}
	for _, b := range bad {
		c.fail(invBodyIntact, "%s", b)
	}
}

// checkStats checks the counters against the calls made and the options
// given, and the observer's and the attempt transport's counts.
func (c *mxCell) checkStats() {
	st := c.tr.Stats()
	if got, want := st.Requests, c.requests.Load(); got != want {
		c.fail(invStats, "Stats.Requests = %d, RoundTrip was called %d times", got, want)
	}
	// One key per host, however it is spelled, and behind the proxy the
	// target's: 127.0.0.1:port and localhost:port.
	if hs := c.tr.HostStats(); len(hs) > 2 {
		c.fail(invStats, "HostStats has %d keys, want at most 2: %v", len(hs), slices.Sorted(maps.Keys(hs)))
	}
	zero := []struct {
		opt  string
		name string
		n    int64
	}{
		{"hedge", "Hedges", st.Hedges},
		{"atimeout", "AttemptTimeouts", st.AttemptTimeouts},
		{"breaker", "CircuitOpen", st.CircuitOpen},
		{"lifetime", "ConnsExpired", st.ConnsExpired},
	}
	for _, z := range zero {
		if !c.has(z.opt) && z.n != 0 {
			c.fail(invStats, "Stats.%s = %d without the option", z.name, z.n)
		}
	}
	if c.has("nobudget") && st.BudgetRefusals != 0 {
		c.fail(invStats, "Stats.BudgetRefusals = %d with WithoutRetryBudget", st.BudgetRefusals)
	}
	if c.has("observer") {
		starts, ends := c.obs.starts.Load(), c.obs.ends.Load()
		if starts != ends {
			c.fail(invObserver, "%d OnAttemptStart, %d OnAttemptEnd", starts, ends)
		}
		if starts != st.Attempts {
			c.fail(invObserver, "%d OnAttemptStart, Stats.Attempts = %d", starts, st.Attempts)
		}
		if n := c.obs.refusals.Load(); n != st.BudgetRefusals {
			c.fail(invObserver, "%d OnBudgetRefused, Stats.BudgetRefusals = %d", n, st.BudgetRefusals)
		}
		// Every connect is told; once the connections are closed, each is
		// in Dials (it carried a request), DiscardedDials (an HTTP/2
		// host's dial that did not) or DialErrors.
		if n, sum := c.obs.dials.Load(), st.Dials+st.DiscardedDials+st.DialErrors; n != sum {
			c.fail(invObserver, "%d OnDial, Stats.Dials+DiscardedDials+DialErrors = %d", n, sum)
		}
		// A retry whose wait the context cuts short has an event, and no
		// attempt; some give-ups are not counted in Stats.GaveUp.
		if n := c.obs.retries.Load(); n < st.Retries {
			c.fail(invObserver, "%d OnRetry, Stats.Retries = %d", n, st.Retries)
		}
		if n := c.obs.giveUps.Load(); n < st.GaveUp {
			c.fail(invObserver, "%d OnGiveUp, Stats.GaveUp = %d", n, st.GaveUp)
		}
	}
	if c.has("attemptrt") {
		if n := c.art.wraps.Load(); n != 1 {
			c.fail(invAttemptRT, "the wrap func was called %d times by NewTransport, want once", n)
		}
		if n := c.art.calls.Load(); n != st.Attempts {
			c.fail(invAttemptRT, "the attempt transport was called %d times, Stats.Attempts = %d", n, st.Attempts)
		}
	}
}

// observer returns an Observer with every hook set, each checking its
// event and counting it.
func (c *mxCell) observer() Observer {
	return Observer{
		TraceConns: true,
		OnAttemptStart: func(e AttemptStartEvent) {
			c.obs.starts.Add(1)
			if e.Request == nil || e.Host == "" || e.Attempt < 1 || e.Attempt > mxMaxRetries+1 {
				c.fail(invObserver, "AttemptStartEvent with request %v, host %q, attempt %d", e.Request != nil, e.Host, e.Attempt)
			}
		},
		OnAttemptEnd: func(e AttemptEndEvent) {
			c.obs.ends.Add(1)
			switch {
			case (e.Response == nil) == (e.Err == nil):
				c.fail(invObserver, "AttemptEndEvent (attempt %d) with response %v and error %v: want exactly one",
					e.Attempt, e.Response != nil, e.Err)
			case e.Response != nil && (e.Status != e.Response.StatusCode || e.Conn == ConnUnknown):
				c.fail(invObserver, "AttemptEndEvent with Status %d for a %d response, Conn %v with TraceConns",
					e.Status, e.Response.StatusCode, e.Conn)
			case e.Err != nil && e.Status != 0:
				c.fail(invObserver, "AttemptEndEvent with Status %d and error %v", e.Status, e.Err)
			}
			if e.Request == nil || e.Host == "" || e.Attempt < 1 || e.Attempt > mxMaxRetries+1 || e.Duration < 0 {
				c.fail(invObserver, "AttemptEndEvent with request %v, host %q, attempt %d, duration %v",
					e.Request != nil, e.Host, e.Attempt, e.Duration)
			}
		},
		OnRetry: func(e RetryEvent) {
			c.obs.retries.Add(1)
			bad := e.Request == nil || e.Attempt < 1 || e.Attempt > mxMaxRetries || e.Wait < 0
			switch e.Reason {
			case RetryOnStatus:
				bad = bad || e.Err != nil || e.Status == 0
			case RetryOnError:
				bad = bad || e.Err == nil || e.Status != 0
			default:
				bad = true
			}
			if bad {
				c.fail(invObserver, "RetryEvent: attempt %d, reason %v, status %d, error %v, wait %v",
					e.Attempt, e.Reason, e.Status, e.Err, e.Wait)
			}
		},
		OnGiveUp: func(e GiveUpEvent) {
			c.obs.giveUps.Add(1)
			if e.Request == nil || e.Attempts < 1 || e.Attempts > mxMaxRetries+1 || e.Reason.String() == "unknown" {
				c.fail(invObserver, "GiveUpEvent: attempts %d, reason %v", e.Attempts, e.Reason)
			}
		},
		OnBudgetRefused: func(e BudgetRefusedEvent) {
			c.obs.refusals.Add(1)
			if c.has("nobudget") {
				c.fail(invObserver, "OnBudgetRefused (attempt %d) with WithoutRetryBudget", e.Attempt)
			}
		},
		OnBreakerChange: func(e BreakerChangeEvent) {
			if !c.has("breaker") {
				c.fail(invObserver, "OnBreakerChange %s -> %s without a circuit breaker", e.From, e.To)
				return
			}
			c.obs.mu.Lock()
			defer c.obs.mu.Unlock()
			last := c.obs.breaker[e.Host] // the zero BreakerState is closed, where a breaker starts
			valid := map[[2]BreakerState]bool{
				{BreakerClosed, BreakerOpen}: true, {BreakerOpen, BreakerHalfOpen}: true,
				{BreakerHalfOpen, BreakerClosed}: true, {BreakerHalfOpen, BreakerOpen}: true,
			}
			if e.From != last || !valid[[2]BreakerState{e.From, e.To}] {
				c.fail(invObserver, "breaker of %s went %s -> %s, after it was %s", e.Host, e.From, e.To, last)
			}
			c.obs.breaker[e.Host] = e.To
		},
		OnAddrChange: c.addrEvent,
		OnDial: func(e DialEvent) {
			c.obs.dials.Add(1)
			if e.Host == "" {
				c.fail(invObserver, "DialEvent without a host")
			}
		},
	}
}

// wrapAttempts is the WithAttemptTransport wrap: it checks that each
// attempt carries its number, and what the RoundTripper under it returns.
func (c *mxCell) wrapAttempts(rt http.RoundTripper) http.RoundTripper {
	c.art.wraps.Add(1)
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		c.art.calls.Add(1)
		if n, ok := AttemptFromContext(r.Context()); !ok || n < 1 || n > mxMaxRetries+1 {
			c.fail(invAttemptRT, "%s %s: AttemptFromContext = %d, %v", r.Method, r.Header.Get(mxHeaderID), n, ok)
		}
		resp, err := rt.RoundTrip(r)
		if (resp == nil) == (err == nil) {
			c.fail(invAttemptRT, "%s %s: the RoundTripper under the wrap returned response %v and error %v",
				r.Method, r.Header.Get(mxHeaderID), resp != nil, err)
		}
		return resp, err
	})
}
