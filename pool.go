// This file holds pool generations: the http.Transport an attempt is sent
// on, when a host or an address has one of its own. A generation is
// retired whole, without losing a request, where net/http offers no way to
// retire one connection: an HTTP/2 connection past its lifetime keeps
// taking streams as long as it lives, so its host moves to a new
// generation, the old one takes no new attempt, finishes those in flight
// and then closes its connections. Balancing (balance.go) drains an
// address that left its name the same way.

package keepalive

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// retiredCloseAgain is when a retired generation closes its idle
// connections once more after its last attempt ended: net/http forgets an
// HTTP/2 stream a moment after its body's end, and keeps a connection
// with a stream open.
const retiredCloseAgain = time.Second

// pool is one generation of a pool of connections.
type pool struct {
	rt          *http.Transport
	gen         int          // its number in its slot, from 0
	outstanding atomic.Int64 // attempts sent on it whose response is not done with
	retired     atomic.Bool  // it takes no new attempt
}

// gateKey is the dial gate's key of p's dials to addr: its serial dials
// are apart from those of the generation before, whose connections are no
// use to it.
func (p *pool) gateKey(addr string) string {
	if p == nil || p.gen == 0 {
		return addr
	}
	return addr + "#" + strconv.Itoa(p.gen)
}

// begin counts an attempt sent on p.
func (p *pool) begin() { p.outstanding.Add(1) }

// end ends an attempt's hold on p; a retired generation closes its
// connections once its last attempt ended.
func (p *pool) end() {
	if p.outstanding.Add(-1) == 0 && p.retired.Load() {
		p.closeIdle()
	}
}

// retire makes p take no new attempt, and closes its connections now if
// no attempt is in flight.
func (p *pool) retire() {
	if !p.retired.Swap(true) && p.outstanding.Load() == 0 {
		p.closeIdle()
	}
}

func (p *pool) closeIdle() {
	p.rt.CloseIdleConnections()
	time.AfterFunc(retiredCloseAgain, p.rt.CloseIdleConnections)
}

// poolSlot holds the current generation of a host's or an address's pool.
type poolSlot struct {
	cur atomic.Pointer[pool]
	mu  sync.Mutex
	mk  func() *http.Transport
}

func newPoolSlot(mk func() *http.Transport) *poolSlot {
	s := &poolSlot{mk: mk}
	s.cur.Store(&pool{rt: mk()})
	return s
}

// renew replaces the generation old, if it is still the current one, by
// a new one, and retires old.
func (s *poolSlot) renew(old *pool) {
	s.mu.Lock()
	replaced := s.cur.CompareAndSwap(old, &pool{rt: s.mk(), gen: old.gen + 1})
	s.mu.Unlock()
	if replaced {
		old.retire()
	}
}
