// This file holds the control of an attempt that something but its caller
// may end: the attempt deadline (WithAttemptTimeout), hedging, and the
// upload watch, which fails an attempt whose request body the server
// stops taking for the read timeout.

package keepalive

import (
	"context"
	"io"
	"net/http/httptrace"
	"runtime"
	"sync/atomic"
	"time"
)

// attemptCtl is the control of one attempt that something but its caller
// may end. Whoever moves state from attemptRunning first decides the
// outcome: the round trip returning (settle), or the attempt deadline or
// the upload watch ending it. So headers that arrive as the deadline
// passes are either returned intact or discarded for a timeout error,
// never both and never neither.
type attemptCtl struct {
	cancel   context.CancelCauseFunc
	state    atomic.Int32
	deadline time.Duration // WithAttemptTimeout; 0: none
	timer    *time.Timer   // of the deadline
	upload   *uploadWatch  // nil: no body, or no read timeout
}

const (
	attemptRunning       int32 = iota
	attemptSettled             // the round trip returned first: its outcome stands
	attemptTimedOut            // the attempt deadline passed first
	attemptUploadStalled       // the upload watch saw the body not taken for the read timeout
)

// end ends a running attempt with state, unless it has settled.
func (c *attemptCtl) end(state int32, cause error) {
	if c.state.CompareAndSwap(attemptRunning, state) {
		c.cancel(cause)
	}
}

// release ends the attempt's context once nothing needs it: the attempt
// failed, or its response body is done with. c may be nil.
func (c *attemptCtl) release() {
	if c != nil {
		c.cancel(nil)
	}
}

func (c *attemptCtl) stopTimers() {
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.upload != nil {
		c.upload.stop()
	}
}

// uploadWatch fails an attempt whose request body is not taken from the
// caller for d: net/http starts its header timeout only once the request
// is written, so nothing else bounds a write to a server that stopped
// reading. It is armed by the body's first Read (the connection is open
// then), measures the time between Reads that is not spent inside the
// caller's Read, and ends when net/http has written the whole request
// (its header timeout takes over then) or with the attempt
// (attemptCtl.settle). One timer per attempt with a body, re-armed only
// when it fires.
type uploadWatch struct {
	ctl     *attemptCtl
	d       time.Duration
	wrote   atomic.Bool  // net/http wrote the whole request: the watch is over
	last    atomic.Int64 // monotonic time the body last handed over data, or 0 before the first Read
	reading atomic.Int32 // Reads in progress: the caller's time, not the server's
	timer   atomic.Pointer[time.Timer]
}

func (w *uploadWatch) wrap(body io.ReadCloser) io.ReadCloser {
	if rw, ok := body.(io.ReadWriteCloser); ok { // a request that upgrades keeps its writer
		return &watchedRWBody{watchedBody: watchedBody{rc: rw, w: w}, rw: rw}
	}
	return &watchedBody{rc: body, w: w}
}

// wroteRequest ends the watch once net/http wrote the whole request; a
// write that failed does not (net/http, or HTTP/2's own retry, may send
// the request again, from GetBody, on another connection).
func (w *uploadWatch) wroteRequest(info httptrace.WroteRequestInfo) {
	if info.Err == nil {
		w.wrote.Store(true)
	}
}

func (w *uploadWatch) fire() {
	if w.wrote.Load() || w.ctl.state.Load() != attemptRunning {
		return
	}
	wait := w.d
	if w.reading.Load() == 0 {
		stalled := time.Duration(monotonic() - w.last.Load())
		if stalled >= w.d {
			w.ctl.end(attemptUploadStalled, errUploadStalled)
			return
		}
		wait = w.d - stalled
	}
	t := w.timer.Load()
	for t == nil { // fired before the first Read stored it: only for tiny d
		runtime.Gosched()
		t = w.timer.Load()
	}
	t.Reset(wait)
}

func (w *uploadWatch) stop() {
	if t := w.timer.Load(); t != nil {
		t.Stop()
	}
}

type watchedBody struct {
	rc io.ReadCloser
	w  *uploadWatch
}

func (b *watchedBody) Read(p []byte) (int, error) {
	w := b.w
	w.reading.Add(1)
	n, err := b.rc.Read(p)
	w.last.Store(monotonic())
	w.reading.Add(-1)
	if w.timer.Load() == nil && w.ctl.state.Load() == attemptRunning {
		w.timer.CompareAndSwap(nil, time.AfterFunc(w.d, w.fire))
	}
	return n, err
}

func (b *watchedBody) Close() error { return b.rc.Close() }

type watchedRWBody struct {
	watchedBody
	rw io.ReadWriteCloser
}

func (b *watchedRWBody) Write(p []byte) (int, error) { return b.rw.Write(p) }
