// This file holds the matrix's fleet: the server of the fleet option on
// several loopback addresses on one port, the name its client resolves to
// them (balancing, balance.go), the outlier fault's one failing address,
// and the checks that balancing allows.
//
// The fleet is the cell's one server (one http.Server, one handler, one
// fault counter) behind a listener that accepts on mxFleetSize addresses,
// 127.0.0.1 first: the proxy option's CONNECT proxy, which resolves the
// name itself, reaches the fleet there. The requests name it "localhost"
// (and its spellings), which the matrix's certificate covers, and the
// fleet option's resolver maps that name to the fleet's addresses.

package keepalive

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
)

const (
	mxFleetSize = 3           // the fleet's addresses: 127.0.0.1, 127.0.0.2, 127.0.0.3
	mxFleetName = "localhost" // the name the fleet's requests use
	// mxEjectTries bounds the GETs, one at a time, that the outlier cells
	// send after the fault rounds until the outlier is ejected: each
	// picks the outlier with a chance of one in mxFleetSize, and five
	// failures in a row eject it.
	mxEjectTries = 100
)

// mxStrict holds the fleet cells to the checks of the gaps of balancing
// that the matrix found, all fixed since (each fix's commit names its
// cell); MATRIX_LENIENT=1 steps around them again, to tell a regression
// of one from a new failure:
//
//   - spellings of a balanced HTTPS host waited for each other's serial
//     dial (the dial gate keyed it by the backend's address alone), and
//     a retryable request that met the outlier gave up;
//   - AddrStats listed a host whose requests the proxy carries;
//   - the circuit breaker of a host of three or more addresses never
//     opened while every address failed;
//   - with hedging, a retry did not avoid the address that failed;
//   - the dial gate held a dial for an HTTP/2 connection that had died;
//   - a TLS config with a session cache of its own was shared by the
//     pools of every address, which net/http writes to (a data race).
var mxStrict = os.Getenv("MATRIX_LENIENT") == ""

// mxFleetListener accepts the connections of one listener per address of
// the fleet, all on one port.
type mxFleetListener struct {
	lns      []net.Listener
	accepted chan mxAccepted
	done     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
}

type mxAccepted struct {
	c   net.Conn
	err error
}

// mxListenFleet listens on mxFleetSize loopback addresses on one port,
// 127.0.0.1 first.
func mxListenFleet(t *testing.T) *mxFleetListener {
	lns := listenLoopbacks(t, 1, mxFleetSize)
	l := &mxFleetListener{lns: lns, accepted: make(chan mxAccepted), done: make(chan struct{})}
	for _, ln := range lns {
		l.wg.Go(func() { l.acceptFrom(ln) })
	}
	return l
}

// acceptFrom hands the connections ln accepts to Accept, until ln or the
// fleet listener is closed.
func (l *mxFleetListener) acceptFrom(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		select {
		case l.accepted <- mxAccepted{c, err}:
		case <-l.done:
			if c != nil {
				c.Close()
			}
			return
		}
	}
}

func (l *mxFleetListener) Accept() (net.Conn, error) {
	select {
	case a := <-l.accepted:
		return a.c, a.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *mxFleetListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		for _, ln := range l.lns {
			ln.Close()
		}
	})
	l.wg.Wait()
	return nil
}

// Addr is the first address's, 127.0.0.1:port.
func (l *mxFleetListener) Addr() net.Addr { return l.lns[0].Addr() }

// addrs returns the fleet's addresses, in the resolver's order.
func (l *mxFleetListener) addrs() []netip.AddrPort {
	out := make([]netip.AddrPort, len(l.lns))
	for i, ln := range l.lns {
		out[i] = netip.MustParseAddrPort(ln.Addr().String())
	}
	return out
}

// resolve is the fleet option's resolver: the name, in any spelling, is
// the fleet's addresses.
func (s *mxServer) resolve(_ context.Context, host string) ([]netip.Addr, error) {
	if !strings.EqualFold(host, mxFleetName) {
		return nil, fmt.Errorf("matrix resolver: unknown host %q", host)
	}
	out := make([]netip.Addr, 0, len(s.fleetAddrs))
	for _, ap := range s.fleetAddrs {
		out = append(out, ap.Addr())
	}
	return out, nil
}

// outlierAddr is the outlier fault's failing address: the fleet's last,
// never 127.0.0.1, which the proxy's tunnels reach.
func (s *mxServer) outlierAddr() string { return s.fleetAddrs[len(s.fleetAddrs)-1].String() }

// atOutlier reports whether r arrived at the outlier's address.
func (s *mxServer) atOutlier(r *http.Request) bool {
	if s.fleet == nil {
		return false
	}
	a, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return a != nil && a.String() == s.outlierAddr()
}

// mxResetConn is the outlier's fault: the request was read whole, then its
// TCP connection is reset (under TLS too: no close_notify, no GOAWAY),
// over HTTP/1 and HTTP/2 alike.
func mxResetConn(_ *mxServer, _ http.ResponseWriter, r *http.Request, _ string) {
	if c, ok := r.Context().Value(mxConnKey{}).(net.Conn); ok {
		mxResetTCP(c)
	}
}

// mxResetTCP closes c's TCP connection with a RST.
func mxResetTCP(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// mxNamesFleet reports whether a Host header names the fleet, in any
// spelling, with its port.
func mxNamesFleet(host string) bool {
	name, _, err := net.SplitHostPort(host)
	return err == nil && strings.EqualFold(name, mxFleetName)
}

// balanced reports whether the cell's requests are balanced: the fleet
// option, unless the proxy carries them (over HTTP/2; the proxy option
// tunnels https requests only), as the proxy balances then.
func (c *mxCell) balanced() bool {
	return c.has("fleet") && !(c.spec.h2 && c.has("proxy"))
}

// fleetKey is the fleet's HostStats and AddrStats key.
func (c *mxCell) fleetKey() string {
	return net.JoinHostPort(mxFleetName, fmt.Sprint(c.srv.fleetAddrs[0].Port()))
}

// outlierStats returns the AddrStats of the outlier's address, and whether
// AddrStats lists it.
func (c *mxCell) outlierStats() (AddrStats, bool) {
	for _, a := range c.tr.AddrStats()[c.fleetKey()] {
		if a.Addr == c.srv.outlierAddr() {
			return a, true
		}
	}
	return AddrStats{}, false
}

// survives checks a request of the outlier cells' fault phase, when
// balanced: a request that may be sent again succeeds, as another address
// takes its retry; when the outlier is down (it refuses connects), every
// request does, as a connect that fails sent nothing and the attempt goes
// to another address. The timeout of an attempt's timer, which a
// goroutine starved of CPU can see fire, is tolerated, as in the healthy
// phase.
func (c *mxCell) survives(res mxResult) {
	f := c.spec.fault
	if res.ok || !f.outlier || !c.balanced() || !f.down && res.kind.once(c.has("bodybuf")) {
		return
	}
	if mxTimeout(res.err) && !res.expired {
		c.t.Logf("outlier: tolerated a timeout: %s", res)
		return
	}
	if !f.down && c.has("hedge") && !mxStrict {
		c.t.Logf("outlier: tolerated a failure (hedged retries do not avoid an address): %s", res)
		return
	}
	when := "while one address resets every request"
	if f.down {
		when = "while one address refuses connects"
	}
	c.fail(invSurvives, "%s: failed %s", res, when)
}

// ejectOutlier sends GETs, one at a time, until AddrStats shows the
// outlier ejected, at most mxEjectTries; each must succeed. It records the
// outlier's attempts at its ejection, which must not grow after it.
func (c *mxCell) ejectOutlier() {
	if !c.spec.fault.outlier || !c.balanced() {
		return
	}
	for range mxEjectTries {
		if a, _ := c.outlierStats(); a.Ejected {
			c.ejectedAt = a.Attempts
			return
		}
		c.survives(c.do(mxFaultPhase, mxGet, false))
	}
	if a, _ := c.outlierStats(); a.Ejected {
		c.ejectedAt = a.Attempts
		return
	}
	c.ejectedAt = -1
	a, listed := c.outlierStats()
	if c.has("hedge") && c.spec.h2 && !c.spec.fault.down && !mxStrict {
		c.t.Logf("outlier: not ejected after %d more GETs (hedges win over the dial gate's hold): %+v", mxEjectTries, a)
		return
	}
	c.fail(invEjected, "the outlier %s is not ejected after %d more GETs: listed %v, %+v; AddrStats %+v",
		c.srv.outlierAddr(), mxEjectTries, listed, a, c.tr.AddrStats())
}

// checkFleet checks the Host header of the fleet's requests, and AddrStats
// and the observer's address events against what the cell's balancing
// did. Once every request is done, every
// address has no attempt outstanding; a balanced cell's attempts went to
// more than one address; only a failing address is ejected, and the
// outlier, once ejected, gets no attempt.
func (c *mxCell) checkFleet() {
	c.srv.mu.Lock()
	for _, b := range c.srv.badHosts {
		c.fail(invHostName, "%s", b)
	}
	c.srv.mu.Unlock()
	as := c.tr.AddrStats()
	if !c.balanced() {
		// No name with more than one address is balanced: the matrix's
		// requests name 127.0.0.1 or localhost, which the default
		// resolver resolves to one address of a family; the proxy's
		// requests are the proxy's to balance.
		if len(as) != 0 && (mxStrict || !c.has("fleet")) {
			c.fail(invAddrStats, "AddrStats lists %d hosts, and no host is balanced: %+v", len(as), as)
		}
		for _, addrs := range as { // mxStrict: the proxy's host is listed
			for _, a := range addrs {
				if a.Attempts != 0 || a.Failures != 0 || a.Outstanding != 0 {
					c.fail(invAddrStats, "the proxy carries every request, and %s has attempts: %+v", a.Addr, a)
				}
			}
		}
		if n := c.obs.addrEvents.Load(); n != 0 {
			c.fail(invObserver, "%d OnAddrChange events, and no host is balanced", n)
		}
		return
	}
	key := c.fleetKey()
	addrs := as[key]
	if len(as) != 1 || len(addrs) != mxFleetSize {
		c.fail(invAddrStats, "AddrStats = %+v; want %s with %d addresses", as, key, mxFleetSize)
		return
	}
	used, ejected := 0, 0
	var sum int64
	for i, a := range addrs {
		if want := c.srv.fleetAddrs[i].String(); a.Addr != want {
			c.fail(invAddrStats, "AddrStats[%s][%d].Addr = %s, the resolver gave %s", key, i, a.Addr, want)
		}
		if a.Outstanding != 0 {
			c.fail(invAddrStats, "%s has %d attempts outstanding once every request is done: %+v", a.Addr, a.Outstanding, a)
		}
		if a.Attempts > 0 {
			used++
		}
		if a.Failures > 0 && a.Attempts == 0 {
			c.fail(invAddrStats, "%s has %d failures and no attempt: %+v", a.Addr, a.Failures, a)
		}
		if a.Ejected {
			ejected++
		}
		sum += a.Ejections
		if c.spec.fault.outlier && a.Addr != c.srv.outlierAddr() && a.Ejections != 0 {
			c.fail(invEjected, "the healthy address %s was ejected: %+v", a.Addr, a)
		}
		if c.spec.fault.outlier && a.Addr == c.srv.outlierAddr() && c.ejectedAt >= 0 && a.Attempts != c.ejectedAt {
			c.fail(invEjected, "the outlier %s got %d attempts after its ejection: %+v", a.Addr, a.Attempts-c.ejectedAt, a)
		}
	}
	if c.has("dialer") {
		c.checkDialer()
	}
	if used < 2 {
		c.fail(invAddrStats, "the attempts went to %d of %d addresses: %+v", used, mxFleetSize, addrs)
	}
	if ejected*2 > len(addrs) {
		c.fail(invAddrStats, "%d of %d addresses ejected; at most half may be: %+v", ejected, len(addrs), addrs)
	}
	if !c.has("observer") {
		return
	}
	c.obs.mu.Lock()
	defer c.obs.mu.Unlock()
	if got := c.obs.addrChanges[AddrEjected]; int64(got) != sum {
		c.fail(invObserver, "%d OnAddrChange ejections, AddrStats counts %d", got, sum)
	}
	// The resolver gives the same addresses each time, and no ejection
	// ends within a cell.
	for _, ch := range []AddrChange{AddrAdded, AddrRemoved, AddrRestored} {
		if n := c.obs.addrChanges[ch]; n != 0 {
			c.fail(invObserver, "%d OnAddrChange %v events; the name's addresses never change, no ejection ends", n, ch)
		}
	}
}

// addrEvent checks and counts an OnAddrChange event.
func (c *mxCell) addrEvent(e AddrEvent) {
	c.obs.addrEvents.Add(1)
	if !c.has("fleet") {
		return // checkFleet reports it
	}
	addrs := make([]string, len(c.srv.fleetAddrs))
	for i, ap := range c.srv.fleetAddrs {
		addrs[i] = ap.String()
	}
	if e.Host != c.fleetKey() || !slices.Contains(addrs, e.Addr) || e.Change.String() == "unknown" {
		c.fail(invObserver, "AddrEvent %+v: host %s has addresses %v", e, c.fleetKey(), addrs)
	}
	c.obs.mu.Lock()
	c.obs.addrChanges[e.Change]++
	c.obs.mu.Unlock()
}

// fleetSpelling returns the spelling of the host a spelled GET uses: one
// of mxSpellings, but in the HTTPS fleet cells mxFleetName's own unless
// mxStrict (spellings of a balanced HTTPS host wait for each other).
func (c *mxCell) fleetSpelling(i int) string {
	if c.has("fleet") && c.spec.h2 && !mxStrict {
		return mxFleetName
	}
	return mxSpellings[i%len(mxSpellings)]
}

// clientTLS returns the TLS config of the cell's client: the server's,
// but in the fleet cells without its session cache unless mxStrict (a TLS
// config with a session cache is shared by the pools of the addresses).
func (c *mxCell) clientTLS() *tls.Config {
	cfg := c.srv.tlsConfig
	if cfg == nil || !c.has("fleet") || mxStrict {
		return cfg
	}
	cfg = cfg.Clone()
	cfg.ClientSessionCache = nil
	return cfg
}

// dial is the dialer option's dialer: net.Dialer's, which records the
// addresses it is called with.
func (c *mxCell) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c.mu.Lock()
	if c.dialed == nil {
		c.dialed = map[string]int{}
	}
	c.dialed[addr]++
	c.mu.Unlock()
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

// checkDialer checks, in a balanced cell, that the dialer option's dialer
// was called with the fleet's addresses, "ip:port", never the name (with
// WithResolver, balancing stays on and the dialer dials the address
// chosen), and with more than one of them.
func (c *mxCell) checkDialer() {
	c.mu.Lock()
	defer c.mu.Unlock()
	fleet := map[string]bool{}
	for _, ap := range c.srv.fleetAddrs {
		fleet[ap.String()] = true
	}
	used := 0
	for addr, n := range c.dialed {
		if !fleet[addr] {
			c.fail(invAddrStats, "the dialer was called %d times with %s, not an address of the fleet %v", n, addr, c.srv.fleetAddrs)
			continue
		}
		used++
	}
	if used < 2 {
		c.fail(invAddrStats, "the dialer dialed %d of the fleet's addresses: %v", used, c.dialed)
	}
}
