// This file holds what is done to bodies. Request bodies: how a body is
// sent again (GetBody, or the bounded buffer of WithBodyBuffer, recorded
// as it streams). Response bodies: the one wrapper each attempt's
// response gets (the read timeout, and telling its owner, the attempt,
// when it ends), the bounded drain of a discarded response, and the
// read-ahead of WithResponseBuffer.

package keepalive

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Request bodies.

// replay is how a request's body is sent again. With GetBody, or no body,
// it is always possible. A body without GetBody is recorded while the
// first attempt streams it, when WithBodyBuffer allows, the request may be
// sent more than once, and the body is not known to be longer than the
// limit: nothing is read before the first attempt reads it, so a request
// that is never retried costs nothing and streams at once.
type replay struct {
	first *http.Request // the request of the first attempt
	rec   *bodyRecorder // nil unless the body is recorded
}

// newReplay prepares req's body for its first attempt: recorded up to
// limit bytes (WithBodyBuffer; 0: not recorded) if p lets it be repeated.
func newReplay(req *http.Request, limit int64, p *policy) replay {
	body := req.Body
	if body == nil || body == http.NoBody || req.GetBody != nil {
		return replay{first: req}
	}
	if limit <= 0 || req.ContentLength > limit || !p.mayRepeat(req) {
		return replay{first: req}
	}
	rec := &bodyRecorder{src: body, limit: limit}
	r := shallowCopy(req)
	r.Body = rec.view()
	r.GetBody = func() (io.ReadCloser, error) { return rec.view(), nil }
	return replay{first: r, rec: rec}
}

// replayable reports whether the body can be sent again, as far as the
// attempts so far have read it.
func (rp *replay) replayable() bool {
	if rp.rec != nil {
		return rp.rec.replayable()
	}
	body := rp.first.Body
	return body == nil || body == http.NoBody || rp.first.GetBody != nil
}

// next returns the request of the next attempt: the first with a fresh
// body. The caller's request is never modified.
func (rp *replay) next() (*http.Request, error) {
	prev := rp.first
	if prev.Body == nil || prev.Body == http.NoBody {
		return prev, nil
	}
	body, err := prev.GetBody()
	if err != nil {
		return nil, fmt.Errorf("keepalive: GetBody for a retry: %w", err)
	}
	r := shallowCopy(prev)
	r.Body = body
	return r, nil
}

// done says that no attempt will read the body any more: a recorded
// body's source is closed once the last attempt's copy is.
func (rp *replay) done() {
	if rp.rec != nil {
		rp.rec.finish()
	}
}

func shallowCopy(req *http.Request) *http.Request {
	r := new(http.Request)
	*r = *req
	return r
}

// errNotRecorded fails the read of a replayed body past what was recorded.
var errNotRecorded = errors.New("keepalive: request body longer than WithBodyBuffer cannot be sent again")

// bodyRecorder records a body as attempts read it, up to limit bytes, so that
// later attempts (views) read the recorded bytes and then go on from the
// source. Attempts may overlap (hedges, and net/http reading a body after
// RoundTrip returned), so it is locked; the source is read by one view at
// a time, outside the lock of the record, so a view that replays never
// waits for a source that blocks.
type bodyRecorder struct {
	srcMu sync.Mutex // serialises reads of src
	src   io.ReadCloser
	limit int64

	mu       sync.Mutex
	buf      []byte
	consumed int64 // bytes read from src; equals len(buf) until overflow
	overflow bool  // consumed passed limit: what came after is gone
	srcErr   error // io.EOF or the source's error, sticky
	open     int   // views not closed
	finished bool  // no more views will be made
	closed   bool  // src closed
}

func (r *bodyRecorder) view() io.ReadCloser {
	r.mu.Lock()
	r.open++
	r.mu.Unlock()
	return &bodyRecorderView{r: r}
}

func (r *bodyRecorder) replayable() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.overflow
}

func (r *bodyRecorder) finish() {
	r.mu.Lock()
	r.finished = true
	closeSrc := r.srcDone()
	r.mu.Unlock()
	if closeSrc {
		r.src.Close()
	}
}

// srcDone reports, once, whether the source may be closed: no attempt
// will read it, because every view is closed, or because the source has
// ended and views read only the record from then on (net/http does not
// always close a body it got from GetBody and did not send). r.mu is held.
func (r *bodyRecorder) srcDone() bool {
	if r.closed || !r.finished || r.open > 0 && r.srcErr == nil {
		return false
	}
	r.closed = true
	return true
}

// readAt reads into p at offset off of the body.
func (r *bodyRecorder) readAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	if off < int64(len(r.buf)) {
		n := copy(p, r.buf[off:])
		r.mu.Unlock()
		return n, nil
	}
	if off < r.consumed { // past the record: the bytes are gone
		r.mu.Unlock()
		return 0, errNotRecorded
	}
	if r.srcErr != nil {
		err := r.srcErr
		r.mu.Unlock()
		return 0, err
	}
	r.mu.Unlock()

	r.srcMu.Lock()
	defer r.srcMu.Unlock()
	r.mu.Lock()
	if off != r.consumed || r.srcErr != nil { // another view moved on meanwhile
		r.mu.Unlock()
		return r.readAt(p, off)
	}
	r.mu.Unlock()
	n, err := r.src.Read(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	if n > 0 {
		if !r.overflow && int64(len(r.buf))+int64(n) <= r.limit {
			r.buf = append(r.buf, p[:n]...)
		} else {
			r.overflow = true
		}
		r.consumed += int64(n)
	}
	if err != nil {
		r.srcErr = err
	}
	return n, err
}

// bodyRecorderView is one attempt's copy of a recorded body.
type bodyRecorderView struct {
	r      *bodyRecorder
	off    int64
	closed atomic.Bool // net/http may close a body from another goroutine than its reader's
}

func (v *bodyRecorderView) Read(p []byte) (int, error) {
	if v.closed.Load() {
		return 0, errors.New("keepalive: read of a closed request body")
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, err := v.r.readAt(p, v.off)
	v.off += int64(n)
	return n, err
}

func (v *bodyRecorderView) Close() error {
	if v.closed.Swap(true) {
		return nil
	}
	r := v.r
	r.mu.Lock()
	r.open--
	closeSrc := r.srcDone()
	r.mu.Unlock()
	if closeSrc {
		return r.src.Close()
	}
	return nil
}

// Response bodies.

// respBody is a response body with the read timeout, and the release of
// its attempt (the dial gate's count, the attempt's context) at its end:
// an error or EOF from Read, or Close. EOF also tells the connection that
// its response was read whole (attemptConn.done).
//
// For the timeout, each Read counts its start and its end, and the first
// links the body into the Transport's read watch, which closes the body
// (that unblocks a Read on HTTP/1 and HTTP/2 alike) once a Read has been
// in progress for the read timeout. Time between Reads (the caller
// processing) is not counted, so a slow but steady body is never cut off.
// A read deadline on the connection would do it for HTTP/1 only, and one
// left on a pooled connection fails its next request.
type respBody struct {
	watchNode // the read watch's view of the body; its done is the body's end
	rc        io.ReadCloser
	watch     *readWatch // nil: no read timeout
	owner     bodyOwner
	started   bool // a Read has linked the body into the watch; only Read touches it
}

// bodyOwner is told when a response body ends, and whether it was read
// whole (EOF).
type bodyOwner interface {
	bodyDone(eof bool)
}

func (b *respBody) Read(p []byte) (int, error) {
	w := b.watch
	if w == nil {
		n, err := b.rc.Read(p)
		if err != nil {
			b.end(err == io.EOF)
		}
		return n, err
	}
	if b.fired.Load() {
		return 0, &TimeoutError{Op: opRead, Limit: w.d}
	}
	b.reads.Add(1)
	if !b.started {
		b.started = true
		w.link(&b.watchNode)
	}
	n, err := b.rc.Read(p)
	b.reads.Add(1)
	if err != nil {
		b.end(err == io.EOF)
		if b.fired.Load() {
			return n, &TimeoutError{Op: opRead, Limit: w.d}
		}
	}
	return n, err
}

func (b *respBody) Close() error {
	err := b.rc.Close()
	b.end(false)
	return err
}

// end is the one "done" path: it leaves the read watch and the dial gate
// and releases the attempt's context, once; eof says the body was read
// whole.
func (b *respBody) end(eof bool) {
	if b.done.Swap(true) {
		return
	}
	if b.watch != nil {
		b.watch.unlink(&b.watchNode)
	}
	b.owner.bodyDone(eof)
}

// switchedBody is the body of a 101 Switching Protocols response: the
// connection, handed to the caller, keeps its attempt's context until
// closed.
type switchedBody struct {
	io.ReadWriteCloser
	ctl  *attemptCtl
	once sync.Once
}

func (b *switchedBody) Close() error {
	err := b.ReadWriteCloser.Close()
	b.once.Do(b.ctl.release)
	return err
}

// drainTimeout bounds the time spent draining a discarded body: a slow
// server costs a connection, not the caller's time.
const drainTimeout = time.Second

// maxDrain is how many bytes of a discarded response body are read before
// a retry so that its connection goes back to the pool. A longer body is
// closed unread, which costs one connection, not the bandwidth and time of
// reading it.
const maxDrain = 64 << 10

// discard lets go of a response the caller will not get. Its body is
// drained, up to maxDrain bytes and for at most drainTimeout, so that its
// connection can go back to the pool; then closed. The drain runs in a
// goroutine of its own, bounded by those limits: the caller's retry does
// not wait for a server that trickles its 503, and the caller's deadline
// is spent on attempts only. A body known to be longer is closed at once,
// unread: its connection is lost either way.
func discard(resp *http.Response) {
	body := resp.Body
	switch {
	case body == nil:
		return
	case body == http.NoBody || resp.ContentLength == 0 || resp.ContentLength > maxDrain:
		body.Close()
		return
	}
	go func() {
		defer body.Close()
		stop := time.AfterFunc(drainTimeout, func() { body.Close() })
		defer stop.Stop()
		_, _ = io.Copy(io.Discard, io.LimitReader(body, maxDrain+1))
	}()
}

// bufferBody reads the body of resp whole, if its length is known and at
// most limit (WithResponseBuffer), so that a failure while reading it is
// the attempt's error, which the loop may retry. It returns exactly one of
// a response and an error.
func bufferBody(resp *http.Response, limit int64) (*http.Response, error) {
	n := resp.ContentLength
	if n <= 0 || n > limit || resp.Body == http.NoBody {
		return resp, nil
	}
	buf := make([]byte, n)
	_, err := io.ReadFull(resp.Body, buf)
	resp.Body.Close()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // n > 0: the body ended before it began
		}
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(buf))
	return resp, nil
}
