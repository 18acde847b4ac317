// This file holds balancing: a host whose name resolves to more than one
// address gets a pool of connections per address, and each attempt goes to
// the less loaded of two addresses picked at random (the power of two
// choices, on attempts outstanding). An address that keeps failing is
// ejected for a while, and the name is resolved again in the background.
// The host's state (host.go) holds its balancer; the attempt
// (attempt.go) picks a backend and sends on the backend's transport.

package keepalive

import (
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Balancing's tuning, which no option changes.
const (
	// resolveEvery is how often a balanced name is resolved again, in
	// the background of a request that finds the last resolution older.
	resolveEvery = 30 * time.Second
	// resolveSoonAfter is the earliest a connect failure makes the
	// resolution run again after the last one: an address that left the
	// name is learned of at the first failure to reach it.
	resolveSoonAfter = time.Second
	// resolveTimeout bounds one resolution; firstResolveWait bounds how
	// long the first request to a host waits for the first one (it is
	// sent unbalanced past it, as net/http would send it, and balancing
	// starts when the resolution ends).
	resolveTimeout   = 10 * time.Second
	firstResolveWait = time.Second

	// maxBackends bounds the addresses of a name that get a pool.
	maxBackends = 256

	// An address is ejected after ejectAfter failures in a row (connect
	// failures, resets, timeouts; never a status), for ejectBase times
	// the number of its ejections, at most ejectMax, and never while
	// half of the addresses are ejected already. When its time is up, a
	// single request probes it: a response restores it, a failure ejects
	// it again, for longer. ejectForget is the time without an ejection
	// after which the count starts over.
	ejectAfter  = 5
	ejectBase   = 30 * time.Second
	ejectMax    = 5 * time.Minute
	ejectForget = 10 * time.Minute
)

// resolveFunc is WithResolver's function.
type resolveFunc = func(ctx context.Context, host string) ([]netip.Addr, error)

// balancer spreads the attempts to one host over the addresses of its
// name. Its set is nil until the first resolution ends; a set of fewer
// than two addresses leaves the host unbalanced: its attempts go to the
// Transport's own pool, as if balancing were off.
type balancer struct {
	name     string // the name resolved
	port     uint16 // the port dialed
	key      string // the host's HostStats key, for events
	resolve  resolveFunc
	every    time.Duration // how often the name is resolved again
	ejectFor time.Duration // ejectBase; tests shorten it
	own      bool          // the resolver is the caller's: a name with one address is dialed at it too
	newRT    func(*backend) *http.Transport
	tel      *telemetry

	set  atomic.Pointer[[]*backend] // the addresses in use
	next atomic.Int64               // monotonic: when the next resolution is due
	last atomic.Int64               // monotonic: when the last one started

	// proxied caches, per scheme (http, https), whether the Transport's
	// proxy carries the host's requests: 0 not known, 1 yes, 2 no.
	proxied [2]atomic.Int32

	mu        sync.Mutex
	all       map[netip.AddrPort]*backend // every address with a pool, drained ones too
	resolving chan struct{}               // closed when the resolution running ends; nil: none runs
}

// backend is one address of a balanced host, with the pool of
// connections to it.
type backend struct {
	addr netip.AddrPort
	dial string // addr as dialed, "ip:port"
	bal  *balancer
	slot *poolSlot // its pool
	gate gateHost  // the dial gate of its pool

	outstanding  atomic.Int64 // attempts sent to it whose response is not done with
	attempts     atomic.Int64
	failures     atomic.Int64
	streak       atomic.Int32 // failures in a row
	ejections    atomic.Int32 // counted towards its next ejection's length
	ejectedAt    atomic.Int64 // monotonic: when it was last ejected
	ejectedUntil atomic.Int64 // monotonic; 0: not ejected
	probing      atomic.Bool  // its ejection is over and a request probes it
	draining     atomic.Bool  // it left the name
}

// newBalancer returns the balancer of the host key ("host:port"), or nil
// when the host is not a name (an IP address) or cannot be resolved as
// one (not ASCII: net/http dials it in punycode).
func newBalancer(key string, resolve resolveFunc, own bool, every time.Duration, newRT func(*backend) *http.Transport, tel *telemetry) *balancer {
	name, portStr, err := net.SplitHostPort(key)
	if err != nil || name == "" {
		return nil
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return nil
	}
	for i := 0; i < len(name); i++ {
		if name[i] >= 0x80 {
			return nil
		}
	}
	return &balancer{name: name, port: uint16(port), key: key, resolve: resolve, own: own, every: every, ejectFor: ejectBase, newRT: newRT, tel: tel}
}

// defaultResolve resolves host with the default resolver.
func defaultResolve(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// pick returns the backend for an attempt of r, or nil to send it
// unbalanced. avoid, if not nil, is the backend of the attempt before,
// which failed: another one is picked while one is usable. It reports
// whether the attempt probes an ejected backend.
func (b *balancer) pick(r *http.Request, proxy func(*http.Request) (*url.URL, error), avoid *backend) (*backend, bool) {
	if proxy != nil && b.viaProxy(r, proxy) {
		return nil, false // not resolved: AddrStats does not list it
	}
	set := b.set.Load()
	now := monotonic()
	switch {
	case set == nil:
		set = b.first(r.Context())
	case now >= b.next.Load():
		b.refresh(now)
	}
	if set == nil || len(*set) < 2 && !(b.own && len(*set) == 1) {
		return nil, false
	}
	if len(*set) == 1 {
		return (*set)[0], false // never ejected: no other address takes its requests
	}
	return choose(*set, avoid, now)
}

// viaProxy reports whether proxy carries r: the proxy balances then. It
// is asked once per scheme.
func (b *balancer) viaProxy(r *http.Request, proxy func(*http.Request) (*url.URL, error)) bool {
	i := 0
	if r.URL.Scheme == "https" {
		i = 1
	}
	switch b.proxied[i].Load() {
	case 1:
		return true
	case 2:
		return false
	}
	u, err := proxy(r)
	via := err != nil || u != nil
	if via {
		b.proxied[i].Store(1)
	} else {
		b.proxied[i].Store(2)
	}
	return via
}

// choose is the power of two choices: of two backends picked at random,
// the one with fewer attempts outstanding, among those usable and not
// avoid. It reports whether the one chosen is probed.
func choose(set []*backend, avoid *backend, now int64) (*backend, bool) {
	n := len(set)
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	x, y := set[i], set[j]
	okx, oky := x != avoid && x.usable(now), y != avoid && y.usable(now)
	switch {
	case okx && oky:
		if y.outstanding.Load() < x.outstanding.Load() {
			x, y = y, x
		}
	case oky:
		x, y = y, nil
	case okx:
		y = nil
	default:
		x, y = scan(set, avoid, now, i), nil
		if x == nil {
			return nil, false
		}
	}
	if x.ejectedUntil.Load() == 0 {
		return x, false
	}
	// x's ejection is over: it takes one request, a probe.
	if x.probing.CompareAndSwap(false, true) {
		return x, true
	}
	if y != nil && y.ejectedUntil.Load() == 0 {
		return y, false
	}
	return scan(set, nil, now, i), false
}

// scan returns the first backend of set usable and not ejected, from
// index from on; avoid only if no other is; nil if none is (the
// attempt is sent unbalanced).
func scan(set []*backend, avoid *backend, now int64, from int) *backend {
	var fallback *backend
	for k := range set {
		c := set[(from+k)%len(set)]
		if c.ejectedUntil.Load() != 0 {
			continue
		}
		if c == avoid {
			fallback = c
			continue
		}
		return c
	}
	return fallback
}

// usable reports whether the backend takes an attempt: it is not
// ejected, or its ejection is over and no probe is on its way.
func (c *backend) usable(now int64) bool {
	u := c.ejectedUntil.Load()
	return u == 0 || now >= u && !c.probing.Load()
}

// first waits, at most firstResolveWait, for the host's first resolution
// to end, and returns its set; nil if it has not ended.
func (b *balancer) first(ctx context.Context) *[]*backend {
	b.mu.Lock()
	if s := b.set.Load(); s != nil {
		b.mu.Unlock()
		return s
	}
	done := b.start()
	b.mu.Unlock()
	timer := time.NewTimer(firstResolveWait)
	defer timer.Stop()
	select {
	case <-done:
	case <-ctx.Done():
	case <-timer.C:
	}
	return b.set.Load()
}

// refresh starts a resolution in the background if none runs.
func (b *balancer) refresh(now int64) {
	next := b.next.Load()
	if now < next || !b.next.CompareAndSwap(next, now+int64(b.every)) {
		return // another request starts it
	}
	b.mu.Lock()
	b.start()
	b.mu.Unlock()
}

// resolveSoon makes the next request start a resolution, once
// resolveSoonAfter has passed since the last one began: a connect
// failed, and the address may have left the name.
func (b *balancer) resolveSoon() {
	soon := b.last.Load() + int64(resolveSoonAfter)
	for {
		next := b.next.Load()
		if next <= soon || b.next.CompareAndSwap(next, soon) {
			return
		}
	}
}

// start starts a resolution unless one runs, and returns what its end
// closes; b.mu is held.
func (b *balancer) start() chan struct{} {
	if b.resolving != nil {
		return b.resolving
	}
	done := make(chan struct{})
	b.resolving = done
	b.last.Store(monotonic())
	b.next.Store(monotonic() + int64(b.every))
	go b.run(done)
	return done
}

// run resolves the name and updates the set from what it finds. A
// failed resolution keeps the set: the addresses the name had are the
// best guess of those it has.
func (b *balancer) run(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	addrs, err := b.resolve(ctx, b.name)
	cancel()
	var changes []AddrEvent
	b.mu.Lock()
	if err == nil || b.set.Load() == nil {
		changes = b.update(addrs)
	}
	b.resolving = nil
	b.mu.Unlock()
	close(done)
	for _, e := range changes { // once the set is in use: no attempt picks a removed address after its event
		b.tel.addrChange(e.Host, e.Addr, e.Change)
	}
}

// update makes addrs the set of the host: those of the family of the
// first (an IPv6 address and an IPv4 one of a name are most often one
// machine), each once, at most maxBackends. An address that left it is
// drained: it takes no new attempt, its attempts in flight finish, and
// its idle connections are closed. It returns the changes to report;
// b.mu is held.
func (b *balancer) update(addrs []netip.Addr) []AddrEvent {
	var set []*backend
	var changes []AddrEvent
	in := make(map[netip.AddrPort]bool, len(addrs))
	for _, ip := range addrs {
		ip = ip.Unmap()
		if !ip.IsValid() || len(set) > 0 && ip.Is4() != set[0].addr.Addr().Is4() || len(set) >= maxBackends {
			continue
		}
		ap := netip.AddrPortFrom(ip.WithZone(""), b.port)
		if in[ap] {
			continue
		}
		in[ap] = true
		c := b.all[ap]
		switch {
		case c == nil:
			c = &backend{addr: ap, dial: ap.String(), bal: b}
			c.slot = newPoolSlot(func() *http.Transport { return b.newRT(c) })
			if b.all == nil {
				b.all = make(map[netip.AddrPort]*backend)
			}
			b.all[ap] = c
			if b.set.Load() != nil {
				changes = append(changes, AddrEvent{b.key, c.dial, AddrAdded})
			}
		case c.draining.Swap(false):
			c.slot.renew(c.slot.cur.Load()) // the drained generation closes
			changes = append(changes, AddrEvent{b.key, c.dial, AddrAdded})
		}
		set = append(set, c)
	}
	for ap, c := range b.all {
		if in[ap] {
			continue
		}
		delete(b.all, ap)
		if !c.draining.Swap(true) {
			changes = append(changes, AddrEvent{b.key, c.dial, AddrRemoved})
		}
		c.slot.cur.Load().retire()
	}
	b.set.Store(&set)
	return changes
}

// begin counts an attempt sent to the backend.
func (c *backend) begin() {
	c.attempts.Add(1)
	c.outstanding.Add(1)
}

// end ends an attempt's hold on the backend: its response is done with,
// or it failed.
func (c *backend) end() { c.outstanding.Add(-1) }

// succeeded records a response from the backend; probe says the attempt
// probed it after an ejection.
func (c *backend) succeeded(probe bool) {
	if c.streak.Load() != 0 {
		c.streak.Store(0)
	}
	if probe {
		c.ejectedUntil.Store(0)
		c.probing.Store(false)
		c.bal.tel.addrChange(c.bal.key, c.dial, AddrRestored)
	}
}

// failed records a failure to reach the backend, or of a connection to
// it: a connect failure, a reset, a timeout. A probe that fails ejects it
// again; ejectAfter failures in a row eject it.
func (c *backend) failed(probe bool) {
	c.failures.Add(1)
	if probe {
		c.eject(true)
		return
	}
	if c.streak.Add(1) >= ejectAfter && c.ejectedUntil.Load() == 0 {
		c.eject(false)
	}
}

// eject ejects the backend unless half of its host's addresses are
// ejected already (a probe's failure ejects it again whatever the
// count: it is counted among them).
func (c *backend) eject(again bool) {
	if c.ejectLocked(again) {
		c.bal.tel.addrChange(c.bal.key, c.dial, AddrEjected)
	}
}

// ejectLocked is eject under the balancer's lock; it reports whether it
// ejected c.
func (c *backend) ejectLocked(again bool) bool {
	b := c.bal
	b.mu.Lock()
	defer b.mu.Unlock()
	now := monotonic()
	if !again {
		if c.ejectedUntil.Load() != 0 {
			return false // ejected meanwhile
		}
		set := b.set.Load()
		if set == nil {
			return false
		}
		ejected := 0
		for _, o := range *set {
			if o.ejectedUntil.Load() != 0 {
				ejected++
			}
		}
		if (ejected+1)*2 > len(*set) {
			return false
		}
	}
	if time.Duration(now-c.ejectedAt.Load()) > ejectForget {
		c.ejections.Store(0)
	}
	n := c.ejections.Add(1)
	d := min(b.ejectFor*time.Duration(n), ejectMax)
	c.ejectedAt.Store(now)
	c.ejectedUntil.Store(now + int64(d))
	c.streak.Store(0)
	c.probing.Store(false)
	return true
}

// healthyOthers reports whether the host has a backend other than c that
// is not ejected and whose last outcome was not a failure: then c's
// failures are its own, not the host's. When every address fails, the
// host's breaker counts them.
func (b *balancer) healthyOthers(c *backend) bool {
	set := b.set.Load()
	if set == nil {
		return false
	}
	for _, o := range *set {
		if o != c && o.ejectedUntil.Load() == 0 && o.streak.Load() == 0 {
			return true
		}
	}
	return false
}

// closeIdle closes the idle connections of every backend.
func (b *balancer) closeIdle() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.all {
		c.slot.cur.Load().rt.CloseIdleConnections()
	}
}

// stats returns the backends' counters, in the order of the set.
func (b *balancer) stats() []AddrStats {
	set := b.set.Load()
	if set == nil || len(*set) < 2 {
		return nil
	}
	now := monotonic()
	out := make([]AddrStats, 0, len(*set))
	for _, c := range *set {
		u := c.ejectedUntil.Load()
		out = append(out, AddrStats{
			Addr:        c.dial,
			Attempts:    c.attempts.Load(),
			Outstanding: c.outstanding.Load(),
			Failures:    c.failures.Load(),
			Ejections:   int64(c.ejections.Load()),
			Ejected:     u != 0 && now < u,
		})
	}
	return out
}
