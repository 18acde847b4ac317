// This file holds the per-host state: everything a Transport keeps about
// one host (its counters, retry budget, circuit breaker, dial gate, learned
// idle timeout and pause), found under one canonical key, "host:port", once
// per request and passed down the request path. Each keeps its mechanics
// in its own file: budget.go, breaker.go, dialgate.go, idle.go, pause.go.

package keepalive

import (
	"hash/maphash"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keepalive-go/keepalive/internal/headers"
)

// hostState is all a Transport keeps about one host. Hosts past
// HostStatsLimit share one, the overflow state, which counts them together
// but has no retry budget and no breaker (one host's failures must not
// spend or refuse another's retries and requests), no dial gate (its
// counts would mix hosts), no idle timeout (theirs differ), and is never
// paused (one host's quota must not hold back another's requests).
type hostState struct {
	cfg      *hostConfig
	key      string // "host:port", the HostStats key; OtherHosts for the overflow state
	overflow bool
	aliases  atomic.Int32 // spellings of the host the table finds it by
	counters
	budget  hostBudget   // unused when the budget is off
	breaker *hostBreaker // nil when off, and for the overflow state
	gate    gateHost     // unused for the overflow state
	idle    hostIdle     // the learned idle timeout; unused for the overflow state
	bal     *balancer    // nil: not balanced (off, an IP address, the overflow state)
	slot    *poolSlot    // the host's own pool (WithConnMaxLifetime); nil: the Transport's

	// pausedUntil is the monotonic() reading at which the host's pause
	// ends; 0 when it is not paused or the pause is known over.
	// keyPauses are the pauses of its rate-limit keys.
	pausedUntil atomic.Int64
	keyPauses   keyPauses
}

// hostConfig is what every host of a Transport shares: the settings of its
// pause, and its telemetry.
type hostConfig struct {
	noPause       bool                       // WithoutHostPause
	maxRetryAfter time.Duration              // a longer pause is not set
	rateLimitKey  func(*http.Request) string // nil: Authorization and Cookie
	seed          maphash.Seed               // hashes rate-limit keys
	tel           *telemetry
}

// gateHost returns the host's dial gate, nil for the overflow state.
func (h *hostState) gateHost() *gateHost {
	if h.overflow {
		return nil
	}
	return &h.gate
}

// hostTable finds the state of a host without a lock or an allocation
// once the host is known: the maps are immutable, replaced whole (copy on
// write) when a host or a spelling of one is added, which happens at most
// maxHostAliases times per host and HostStatsLimit hosts; past that, a new
// spelling, or an unknown host (the overflow state), costs building its
// key, with no lock. Nothing is ever swept.
type hostTable struct {
	maps     atomic.Pointer[hostMaps]
	mu       sync.Mutex // serialises adding hosts
	overflow *hostState
	newState func(key string) *hostState
}

type hostMaps struct {
	// alias is keyed by the Host of a URL as written ("example.com",
	// "example.com:443", "Example.COM") with its scheme's default port
	// told apart: aliasHTTPS holds the bare hosts of https URLs. Dial
	// addresses, which always have a port, are in alias too.
	alias, aliasHTTPS map[string]*hostState
	canon             map[string]*hostState // by key: what HostStats lists
}

func newHostTable(newState func(key string) *hostState) *hostTable {
	h := &hostTable{newState: newState}
	h.overflow = newState(OtherHosts)
	h.overflow.overflow = true
	h.overflow.breaker = nil
	h.overflow.budget.ring = nil // no budget: one host's failures must not spend another's retries
	h.maps.Store(&hostMaps{alias: map[string]*hostState{}, aliasHTTPS: map[string]*hostState{}, canon: map[string]*hostState{}})
	return h
}

// forURL returns the state of the host of u; u is not nil.
func (h *hostTable) forURL(u *url.URL) *hostState {
	bareHTTPS := u.Scheme == "https" && u.Port() == ""
	m := h.maps.Load()
	aliases := m.alias
	if bareHTTPS {
		aliases = m.aliasHTTPS
	}
	if s := aliases[u.Host]; s != nil {
		return s
	}
	return h.add(m, u.Host, bareHTTPS, hostKey(u))
}

// forAddr returns the state of a dialed address, "host:port".
func (h *hostTable) forAddr(addr string) *hostState {
	m := h.maps.Load()
	if s := m.alias[addr]; s != nil {
		return s
	}
	return h.add(m, addr, false, canonAddr(addr))
}

// maxHostAliases bounds the spellings of one host that the table keeps
// (host names are case-insensitive, and a crawler's links or a server's
// redirects may spell one host many ways): past it, a spelling costs its
// key's construction per request, and no memory.
const maxHostAliases = 4

// add returns the state of key, creating it unless the table is full, and
// makes alias find it.
func (h *hostTable) add(seen *hostMaps, alias string, bareHTTPS bool, key string) *hostState {
	switch s := seen.canon[key]; {
	case s == nil && len(seen.canon) >= HostStatsLimit:
		return h.overflow // the table only grows: no lock needed to know it is full
	case s != nil && s.aliases.Load() >= maxHostAliases:
		return s
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.maps.Load()
	s := old.canon[key]
	if s == nil {
		if len(old.canon) >= HostStatsLimit {
			return h.overflow
		}
		s = h.newState(key)
	}
	m := &hostMaps{alias: old.alias, aliasHTTPS: old.aliasHTTPS, canon: old.canon}
	if old.canon[key] == nil {
		m.canon = cloneStates(old.canon, 1)
		m.canon[key] = s
	}
	if s.aliases.Load() >= maxHostAliases {
		h.maps.Store(m)
		return s
	}
	if bareHTTPS {
		m.aliasHTTPS = cloneStates(old.aliasHTTPS, 1)
		m.aliasHTTPS[alias] = s
	} else {
		m.alias = cloneStates(old.alias, 2)
		m.alias[alias] = s
		m.alias[key] = s
	}
	s.aliases.Add(1)
	h.maps.Store(m)
	return s
}

func cloneStates(m map[string]*hostState, extra int) map[string]*hostState {
	n := make(map[string]*hostState, len(m)+extra)
	for k, v := range m {
		n[k] = v
	}
	return n
}

// hostKey is the canonical key of a URL's host: "host:port" as net/http
// dials it, the scheme's default port filled in, the name in lower case.
func hostKey(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// canonAddr is hostKey for an address as dialed.
func canonAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return strings.ToLower(addr)
	}
	return net.JoinHostPort(strings.ToLower(host), port)
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

// count adds one to the counter c of h (Stats sums the hosts).
func (h *hostState) count(c counter) { h.counters[c].Add(1) }

// idleClosed records that a connection of h, idle in the pool for age,
// was closed by its server at now: its read failed with err.
func (h *hostState) idleClosed(age time.Duration, err error, now int64) {
	if !closedByPeer(err) || age < idleMinLearn {
		return
	}
	h.count(idleClosesCounter)
	h.idle.closed(age, now)
}

// keepAliveAnnounced records the idle timeout that resp announced with
// "Keep-Alive: timeout=N", if any, for h.
func (h *hostState) keepAliveAnnounced(resp *http.Response) {
	v := resp.Header["Keep-Alive"]
	if len(v) == 0 || h.overflow {
		return
	}
	if d, ok := headers.KeepAliveTimeout(v[0]); ok {
		h.idle.announce(d, monotonic())
	}
}

// connHost returns h as the host at the far end of its connections; nil
// for the overflow state, whose hosts' timeouts differ.
func (h *hostState) connHost() connHost {
	if h.overflow {
		return nil
	}
	return h
}

// idleLimit is the idle age past which a connection of h is not reused.
func (h *hostState) idleLimit(now int64) int64 { return h.idle.limit(now) }

// retiredIdle counts a connection not reused for its idle age.
func (h *hostState) retiredIdle() { h.count(connsRetiredIdleCounter) }

// setPause records the pause that resp, the response to r, asks for, if
// any, on its host h: the end of the pause moves to now+wait unless it is
// already later. A 503's Retry-After (an overloaded server) pauses the
// host; a 429's, or rate-limit fields that say no quota is left, pause
// only the requests with r's rate-limit key (WithRateLimitKey: by default
// its Authorization and Cookie), since quotas are kept per credential. A
// pause longer than the Retry-After cap (WithMaxRetryAfter) is not set;
// the hosts past HostStatsLimit share one state and are never paused, so
// that one host's quota never holds back another's requests. With
// WithoutHostPause it does nothing.
func (h *hostState) setPause(r *http.Request, resp *http.Response) {
	if h.overflow || h.cfg.noPause {
		return
	}
	wait, src := pauseOf(resp, time.Now)
	if src == 0 || wait > h.cfg.maxRetryAfter {
		return
	}
	now := monotonic()
	until := now + int64(wait) // wait is at most the cap, which may be any duration
	if until < now {
		until = math.MaxInt64
	}
	perKey := src != PauseRetryAfter || resp.StatusCode != http.StatusServiceUnavailable
	var started bool
	if perKey {
		started = h.keyPauses.set(h.pauseKey(r), until, now)
	} else {
		started = extend(&h.pausedUntil, until, now)
	}
	if started {
		h.count(pausesCounter)
		h.cfg.tel.hostPause(h.key, resp.StatusCode, wait, src, perKey)
	}
}

// pauseKey returns the hash of r's rate-limit key: its credentials are
// never kept, only compared.
func (h *hostState) pauseKey(r *http.Request) uint64 {
	var k string
	if h.cfg.rateLimitKey != nil {
		k = h.cfg.rateLimitKey(r)
	} else {
		k = r.Header.Get("Authorization") + "\x00" + r.Header.Get("Cookie")
	}
	return maphash.String(h.cfg.seed, k)
}

// pauseEnd returns the monotonic() reading at which the pause that holds r
// on h ends, the host's or r's key's, whichever is later; 0: none.
func (h *hostState) pauseEnd(r *http.Request, now int64) int64 {
	until := h.pausedUntil.Load()
	if h.keyPauses.latest.Load() > now {
		until = max(until, h.keyPauses.get(h.pauseKey(r)))
	}
	if until <= now {
		return 0
	}
	return until
}

// pauseLeft returns how long the pause that holds r on h lasts after now
// (a monotonic() reading), 0 if none does.
func (h *hostState) pauseLeft(r *http.Request, now int64) time.Duration {
	if u := h.pauseEnd(r, now); u > now {
		return time.Duration(u - now)
	}
	return 0
}

// awaitPause waits for the pause that holds r on h, which lasts until
// until (a monotonic() reading), to end before r is sent. It fails at
// once with a HostPausedError when r's context has a deadline before the
// pause ends, and with the context's error when the context ends during
// the wait. A pause moved on during the wait is waited for too.
func (h *hostState) awaitPause(r *http.Request, until int64) error {
	ctx := r.Context()
	counted := false
	for {
		now := monotonic()
		left := time.Duration(until - now)
		if left <= 0 {
			h.pausedUntil.CompareAndSwap(until, 0) // over: the next request pays one load
			return nil
		}
		if !counted {
			h.count(pauseWaitsCounter)
			counted = true
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < left {
			return &HostPausedError{Host: h.key, Wait: left}
		}
		if err := sleep(ctx, left); err != nil {
			return err
		}
		if until = h.pauseEnd(r, monotonic()); until == 0 {
			return nil
		}
	}
}
