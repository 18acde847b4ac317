// This file holds the read timeout of response bodies (WithReadTimeout):
// one watch per Transport, not a timer per body, over the bodies' nodes.

package keepalive

import (
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// readWatchShards spreads the bodies being read over this many lists, so
// that concurrent requests rarely meet on one lock.
const readWatchShards = 16

// readWatch is the read timeout of a Transport's response bodies. Every
// body whose first Read has started is linked into one of the shards'
// lists until it ends (EOF, an error or Close), and one timer, armed only
// while some list is not empty, ticks every quarter of the read timeout
// and closes a body whose Read has been in progress for four ticks in a
// row: a Read that waits fails after d to d+d/4. A body costs two short
// critical sections (link, unlink) and a Read two atomic adds, instead of
// a timer's allocation, insertion in the runtime's timer heap and stop,
// and a clock reading per Read: measured, the timer per body was the
// largest part of keepalive's cost on the success path.
type readWatch struct {
	d       time.Duration
	tick    time.Duration // d/4
	running atomic.Bool   // the timer is armed, or its func is running
	timer   *time.Timer
	next    atomic.Uint32 // round-robin over the shards
	shards  [readWatchShards]readShard
}

// readTicks is how many ticks of d/4 a Read may stay in progress.
const readTicks = 4

type readShard struct {
	mu   sync.Mutex
	head *watchNode
	n    atomic.Int32 // bodies linked; read without mu by the timer's stop check
	_    [64 - 8 - 8 - 4]byte
}

// watchNode is a body as the read watch sees it: the counts of its Reads,
// and its place in a shard's list (under the shard's lock). The body
// embeds it, and the watch closes body to end a Read that waits too long.
type watchNode struct {
	body  io.Closer
	reads atomic.Uint64 // Read starts and ends: odd while a Read is in progress
	fired atomic.Bool   // the watch closed the body
	done  atomic.Bool   // the body ended: the watch lets go for good

	shard      *readShard
	prev, next *watchNode
	linked     bool
	seenReads  uint64 // reads at the last tick
	staleTicks int    // ticks for which the same Read was in progress
}

func newReadWatch(d time.Duration) *readWatch {
	if d <= 0 {
		return nil
	}
	w := &readWatch{d: d, tick: max(d/readTicks, 1)}
	w.timer = time.AfterFunc(time.Hour, w.expire)
	w.timer.Stop()
	return w
}

// shard picks the list of a new body.
func (w *readWatch) shard() *readShard {
	return &w.shards[w.next.Add(1)%readWatchShards]
}

// link watches b, unless it already ended.
func (w *readWatch) link(b *watchNode) {
	s := b.shard
	s.mu.Lock()
	if b.done.Load() || b.linked {
		s.mu.Unlock()
		return
	}
	b.linked = true
	b.next = s.head
	if s.head != nil {
		s.head.prev = b
	}
	s.head = b
	s.n.Add(1)
	s.mu.Unlock()
	if !w.running.Load() && w.running.CompareAndSwap(false, true) {
		w.timer.Reset(w.tick)
	}
}

// unlink stops watching b.
func (w *readWatch) unlink(b *watchNode) {
	s := b.shard
	s.mu.Lock()
	if b.linked {
		if b.prev != nil {
			b.prev.next = b.next
		} else {
			s.head = b.next
		}
		if b.next != nil {
			b.next.prev = b.prev
		}
		b.prev, b.next, b.linked = nil, nil, false
		s.n.Add(-1)
	}
	s.mu.Unlock()
}

// expire runs every tick while a body is watched: it closes the bodies
// whose Read has been in progress since readTicks ticks ago, and stops
// when no body is watched.
func (w *readWatch) expire() {
	var expired []*watchNode
	for i := range w.shards {
		s := &w.shards[i]
		if s.n.Load() == 0 {
			continue
		}
		s.mu.Lock()
		for b := s.head; b != nil; b = b.next {
			seq := b.reads.Load()
			switch {
			case seq%2 == 0 || seq != b.seenReads: // no Read in progress, or a new one
				b.seenReads, b.staleTicks = seq, 0
			case b.fired.Load():
			default:
				if b.staleTicks++; b.staleTicks >= readTicks {
					expired = append(expired, b)
				}
			}
		}
		s.mu.Unlock()
	}
	for _, b := range expired {
		b.fired.Store(true)
		go b.body.Close() // unblocks the Read, on HTTP/1 and HTTP/2, without holding up the others
	}
	if w.empty() {
		w.running.Store(false)
		// A body linked since the check above may have seen running still
		// true and left the timer to this tick: take it back.
		if w.empty() || !w.running.CompareAndSwap(false, true) {
			return
		}
	}
	w.timer.Reset(w.tick)
}

func (w *readWatch) empty() bool {
	for i := range w.shards {
		if w.shards[i].n.Load() != 0 {
			return false
		}
	}
	return true
}
