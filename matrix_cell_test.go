// This file holds one cell of the composition matrix: its phases, and
// each request it sends, with the checks that one request allows.

package keepalive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// mxCell is the state of one cell while it runs.
type mxCell struct {
	t     *testing.T
	spec  mxSpec
	label string // the pprof label value of its goroutines
	short bool
	sum   *mxSummary

	release func() // gives the cell's place in the pool to the next one

	srv      *mxServer
	proxy    *url.URL // the CONNECT proxy of the proxy option
	tr       *Transport
	seq      atomic.Int64 // request IDs
	requests atomic.Int64 // calls of RoundTrip

	mu     sync.Mutex
	kinds  map[string]mxKind // request ID -> kind
	bodies []*mxBody         // request bodies given to RoundTrip
	fails  map[string][]string
	order  []string // invariants in the order they first failed

	obs struct {
		starts, ends, retries, giveUps, refusals, dials atomic.Int64

		addrEvents atomic.Int64 // OnAddrChange

		mu          sync.Mutex
		breaker     map[string]BreakerState // host -> state, from OnBreakerChange
		addrChanges map[AddrChange]int      // from OnAddrChange
	}
	art struct{ wraps, calls atomic.Int64 } // WithAttemptTransport

	ejectedAt int64          // the outlier's attempts when it was ejected; -1: never
	dialed    map[string]int // the dialer option's dials, by address; under mu
}

// proxyFor is the proxy option's proxy: https requests go through the
// CONNECT proxy's tunnels.
func (c *mxCell) proxyFor(r *http.Request) (*url.URL, error) {
	if r.URL.Scheme == "https" {
		return c.proxy, nil
	}
	return nil, nil
}

func (c *mxCell) has(opt string) bool {
	for _, o := range c.spec.opts {
		if o.name == opt {
			return true
		}
	}
	return false
}

// fail records a violation of inv; the cell reports them all at its end.
func (c *mxCell) fail(inv, format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.fails[inv]; !ok {
		c.order = append(c.order, inv)
	}
	c.fails[inv] = append(c.fails[inv], fmt.Sprintf(format, args...))
}

func (c *mxCell) report() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, inv := range c.order {
		msgs := c.fails[inv]
		c.sum.add(inv, c.spec.name)
		const show = 3
		var b strings.Builder
		fmt.Fprintf(&b, "invariant %q violated %d time(s) in %s:", inv, len(msgs), c.spec.name)
		for _, m := range msgs[:min(show, len(msgs))] {
			b.WriteString("\n\t" + strings.ReplaceAll(m, "\n", "\n\t"))
		}
		if len(msgs) > show {
			fmt.Fprintf(&b, "\n\t... and %d more", len(msgs)-show)
		}
		c.t.Error(b.String())
	}
}

// mxLabel marks the calling goroutine, and the goroutines it starts from
// now on, as the cell's client or server side; "" clears the mark.
func mxLabel(cell, side string) {
	if cell == "" {
		pprof.SetGoroutineLabels(context.Background())
		return
	}
	pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("matrix", cell, "side", side)))
}

// run runs the cell: its server and client, the fault phase, an outage
// for a breaker, the healthy phase, and then the checks of what is left.
func (c *mxCell) run() {
	c.kinds = map[string]mxKind{}
	c.fails = map[string][]string{}
	c.obs.breaker = map[string]BreakerState{}
	c.obs.addrChanges = map[AddrChange]int{}
	defer mxLabel("", "")

	c.start()
	c.faultPhase()
	c.ejectOutlier()
	c.outage()
	c.srv.healthy.Store(true)
	c.healthy()

	c.release()
	mxLabel("", "")
	c.settle()
	c.checkServer()
	c.checkStats()
	c.checkFleet()
	c.report()
}

// start starts the cell's server (and proxy) and makes its Transport: the
// matrix's settings, then the cell's options.
func (c *mxCell) start() {
	mxLabel(c.label, "server")
	c.srv = newMxServer(c.t, c.spec.h2, c.spec.fault, c.has("fleet"))
	if c.has("proxy") {
		proxy, _ := connectProxy(c.t)
		c.proxy, _ = url.Parse(proxy.URL)
	}
	mxLabel(c.label, "client")
	opts := []Option{
		WithProxy(nil),
		WithBackoff(time.Millisecond, 5*time.Millisecond),
		WithReadTimeout(mxReadTimeout),
		WithMaxRetries(mxMaxRetries),
		WithTLSConfig(c.clientTLS()),
	}
	if c.spec.fault.hang {
		opts = append(opts, WithTLSHandshakeTimeout(mxHangTimeout))
	}
	for _, o := range c.spec.opts {
		opts = append(opts, o.opts(c)...)
	}
	c.tr = newTestTransport(c.t, opts...)
}

// faultPhase sends every kind of request at once, in two rounds (one
// under -short), while the server faults; between rounds the idle
// connections age past the server's idle timeout, or the server restarts.
func (c *mxCell) faultPhase() {
	rounds := 2
	if c.short {
		rounds = 1
	}
	for range rounds {
		var wg sync.WaitGroup
		for _, k := range mxKinds {
			wg.Go(func() { c.survives(c.do(mxFaultPhase, k, false)) })
		}
		wg.Wait()
		if d := c.spec.fault.idle; d > 0 {
			waitOut(d + d/5) // the server closes the idle connections
		}
		if c.spec.fault.restart {
			waitOut(mxRestartAfter)
			c.srv.srv.CloseClientConnections()
		}
	}
}

// outage fails every request, with a breaker and a fault that fails
// attempts, until the circuit opens: it is open when the server heals.
func (c *mxCell) outage() {
	if !c.has("breaker") || !c.spec.fault.fails {
		return
	}
	c.srv.outage.Store(true)
	defer c.srv.outage.Store(false)
	for range mxOutageRequests {
		if res := c.do(mxFaultPhase, mxGet, false); errors.Is(res.err, ErrCircuitOpen) {
			return
		}
	}
	if mxStrict && c.balanced() && c.spec.fault.status == 0 {
		c.fail(invBreakerOpens, "the circuit stayed closed through %d requests while every address failed each", mxOutageRequests)
	}
}

// healthy runs the healthy phase: a GET that the server answers slowly
// enough to be hedged (a half-open circuit's probe, with a breaker), then
// one request of each kind, one at a time. Each must succeed, but for what
// a correct client may still meet, which is retried with another request a
// bounded number of times: an open circuit (WithCircuitBreaker) until a
// request has got through, waited out an OpenTimeout apart; and the
// timeout of an attempt's timer (a read, response header or attempt
// timeout; not the request's deadline), which a goroutine starved of CPU
// can see fire. With a connection lifetime, each request waits it out
// first, so that every request meets an expired connection.
func (c *mxCell) healthy() {
	h := mxHealthy{mayBeOpen: c.has("breaker")} // until a request succeeds, or timeouts may have opened it again
	for i, k := range append([]mxKind{mxGet}, mxKinds...) {
		for h.timeouts = 0; ; {
			c.ageConnections()
			if !c.healthyOutcome(&h, c.do(mxHealthyPhase, k, i == 0)) {
				break
			}
		}
		if h.gaveUp {
			return
		}
	}
}

// mxHealthy is what the healthy phase has seen so far.
type mxHealthy struct {
	mayBeOpen    bool // the circuit may still be open
	circuitTries int  // requests the circuit refused while it may be open
	timeouts     int  // timeouts tolerated for the current request
	gaveUp       bool // the circuit never closed
}

// ageConnections waits, before a request of the healthy phase, for what
// the request must meet: an expired connection (a lifetime), or one just
// short of the server's idle close.
func (c *mxCell) ageConnections() {
	if c.has("lifetime") {
		// Every request then meets an expired connection, which it asks
		// to close; a client that keeps it sends the next request into a
		// connection the server is closing.
		waitOut(mxLifetime * 5 / 4)
	}
	if d := c.spec.fault.idle; d > 0 {
		waitOut(d * 4 / 5) // just short of the server's idle close
	}
}

// healthyOutcome judges one result of the healthy phase, and reports
// whether the request is to be sent again.
func (c *mxCell) healthyOutcome(h *mxHealthy, res mxResult) (again bool) {
	breaker := c.has("breaker")
	switch {
	case res.ok:
		h.mayBeOpen = false
	case breaker && errors.Is(res.err, ErrCircuitOpen) && h.mayBeOpen:
		if h.circuitTries++; h.circuitTries < mxRecoveryTries {
			waitOut(mxOpenTimeout + 5*time.Millisecond)
			return true
		}
		c.fail(invBreakerCloses, "the circuit refused %d requests, %v apart, once the server was healthy; last: %s",
			h.circuitTries, mxOpenTimeout+5*time.Millisecond, res)
		h.gaveUp = true
	case breaker && errors.Is(res.err, ErrCircuitOpen) && !mxRetried(res.err):
		c.fail(invBreakerCloses, "%s: refused after a request had succeeded, with no failure since", res)
	case (mxTimeout(res.err) || mxRetried(res.err) && errors.Is(res.err, ErrCircuitOpen)) &&
		!res.expired && h.timeouts < mxTimeoutTries:
		// A circuit that refuses a retry was opened by the failures of
		// the request's own earlier attempts, which were timeouts unless
		// something else fails too.
		h.timeouts++
		h.mayBeOpen = breaker
		c.t.Logf("healthy phase: tolerated a timeout (%d of %d for this step): %s", h.timeouts, mxTimeoutTries, res)
		return true
	default:
		c.fail(invHealthy, "%s", res)
	}
	return false
}

// mxRetried reports whether err ended a request after more than one
// attempt.
func mxRetried(err error) bool {
	var re *RetryError
	return errors.As(err, &re) && re.Attempts > 1
}

// mxTimeout reports whether err is a timeout.
func mxTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// mxResult is the outcome of one request.
type mxResult struct {
	id      string
	kind    mxKind
	phase   mxPhase
	ok      bool  // status 200, whole body read, and it is the one the server sent
	err     error // of RoundTrip, or of the body read
	status  int
	expired bool // the request's own deadline had passed when it ended
}

func (r mxResult) String() string {
	s := fmt.Sprintf("%s %s (%s)", r.kind, r.id, r.phase)
	switch {
	case r.err != nil && r.status != 0:
		return s + fmt.Sprintf(": status %d, body read failed: %v", r.status, r.err)
	case r.err != nil:
		return s + ": " + r.err.Error()
	case r.status != http.StatusOK:
		return s + fmt.Sprintf(": status %d", r.status)
	case !r.ok:
		return s + ": body differs from the one sent"
	}
	return s + ": ok"
}

var errMxPanicked = errors.New("RoundTrip panicked")

// do sends one request of kind k in phase ph, reads its response body, and
// checks what can be checked of one request.
func (c *mxCell) do(ph mxPhase, k mxKind, slow bool) (res mxResult) {
	id := fmt.Sprintf("%s-%d", c.label, c.seq.Add(1))
	res = mxResult{id: id, kind: k, phase: ph}
	c.mu.Lock()
	c.kinds[id] = k
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), mxDeadline)
	defer cancel()
	req := c.newRequest(ctx, ph, k, id, slow)
	start := time.Now()
	c.requests.Add(1)
	resp, err := c.roundTrip(req)
	if errors.Is(err, errMxPanicked) {
		res.err = err
		return res
	}
	defer c.ended(&res, ctx, start)
	if !c.exactlyOne(&res, resp, err) {
		return res
	}
	res.status = resp.StatusCode
	if resp.StatusCode == http.StatusSwitchingProtocols {
		c.switched(&res, ctx, resp)
		return res
	}
	c.readResponse(&res, ctx, resp)
	return res
}

// newRequest builds the request id of kind k: its method, headers and
// body.
func (c *mxCell) newRequest(ctx context.Context, ph mxPhase, k mxKind, id string, slow bool) *http.Request {
	target := c.srv.url
	if k == mxGetSpelled {
		target = strings.Replace(target, c.srv.host, c.fleetSpelling(int(c.seq.Load())), 1)
	}
	req, err := http.NewRequestWithContext(ctx, k.method(), target+"/"+id, nil)
	if err != nil {
		panic(err) // a malformed URL is a bug of the test
	}
	req.Header.Set(mxHeaderID, id)
	if slow {
		req.Header.Set(mxHeaderSlow, "1")
	}
	if k == mxUpgrade { // a WebSocket handshake: net/http sends it over HTTP/1.1
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
	}
	if k.method() != http.MethodGet {
		c.setBody(ctx, req, ph, k, id)
	}
	return req
}

// setBody gives req the body of its kind, and the checksum the server
// checks it against.
func (c *mxCell) setBody(ctx context.Context, req *http.Request, ph mxPhase, k mxKind, id string) {
	payload := mxRequestBody(id)
	sum := sha256.Sum256(payload)
	req.Header.Set(mxHeaderSum, hex.EncodeToString(sum[:]))
	switch k {
	case mxPutReplayable, mxPostKeyed:
		req.Body = c.track(id, bytes.NewReader(payload), nil)
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(payload)), nil }
		req.ContentLength = int64(len(payload))
	case mxPostExpect:
		// The body's first bytes come after the 100 Continue, and, in the
		// idleclose cells, after the host's idle timeout: a client must
		// write them all the same, and never send the POST again.
		delay := mxSlowBody
		if d := c.spec.fault.idle; d > 0 {
			delay = d * 3 / 5
		}
		req.Body = c.track(id, newSlowBody(delay, bytes.NewReader(payload)), nil)
		req.GetBody = func() (io.ReadCloser, error) {
			return io.NopCloser(newSlowBody(delay, bytes.NewReader(payload))), nil
		}
		req.ContentLength = int64(len(payload))
		req.Header.Set("Expect", "100-continue")
	case mxPutOnce:
		req.Body = c.track(id, bytes.NewReader(payload), nil)
		req.ContentLength = int64(len(payload))
	case mxPostStream:
		// In the healthy phase the producer writes the rest of the body
		// only once the server has read its first part, as a body fed by
		// a live source would: a client must stream it.
		req.Body = c.stream(ctx, id, payload, ph == mxHealthyPhase)
		req.ContentLength = -1
		if ph == mxHealthyPhase {
			req.Header.Set(mxHeaderWait, "1")
		}
	}
	if k == mxPostKeyed {
		req.Header.Set("Idempotency-Key", id)
	}
}

// ended notes whether the request's own deadline had passed when it
// ended, and checks that it ended within the deadline and its slack.
func (c *mxCell) ended(res *mxResult, ctx context.Context, start time.Time) {
	res.expired = ctx.Err() != nil
	if el := time.Since(start); el > mxDeadline+mxSlack {
		c.fail(invDeadline, "%s took %v (deadline %v)", res, el.Round(time.Millisecond), mxDeadline)
	}
}

// exactlyOne checks that RoundTrip returned exactly one of a response and
// an error, and reports whether it returned a response.
func (c *mxCell) exactlyOne(res *mxResult, resp *http.Response, err error) bool {
	switch {
	case resp == nil && err == nil:
		c.fail(invExactlyOne, "%s %s (%s): RoundTrip returned (nil, nil)", res.kind, res.id, res.phase)
		res.err = errors.New("RoundTrip returned (nil, nil)")
	case resp != nil && err != nil:
		c.fail(invExactlyOne, "%s %s (%s): RoundTrip returned a response (status %d) and an error: %v",
			res.kind, res.id, res.phase, resp.StatusCode, err)
		resp.Body.Close()
		res.err = err
	case err != nil:
		res.err = err
	default:
		return true
	}
	return false
}

// switched checks a 101 response: asked for, and a connection that echoes.
func (c *mxCell) switched(res *mxResult, ctx context.Context, resp *http.Response) {
	if res.kind != mxUpgrade {
		c.fail(invStatus, "%s: status 101 to a request that did not ask to switch protocols", res)
	}
	res.err = mxEcho(resp)
	res.ok = res.err == nil
	if res.err != nil && ctx.Err() == nil && !(res.phase == mxFaultPhase && c.spec.fault.breaks) {
		c.fail(invBodyErr, "%s: the switched connection failed: %v", res, res.err)
	}
}

// readResponse reads the response body, and checks the status, the
// failure of a read, and that a successful body is the one the server
// sent.
func (c *mxCell) readResponse(res *mxResult, ctx context.Context, resp *http.Response) {
	if res.kind == mxGetLate {
		waitOut(mxLateRead)
	}
	body, wait, rerr := mxReadAll(resp.Body)
	ctxDone := ctx.Err() != nil
	resp.Body.Close()
	res.err = rerr
	if res.status != http.StatusOK && (res.status != c.spec.fault.status || res.phase != mxFaultPhase) {
		c.fail(invStatus, "%s: the server never sent status %d in this phase", res, res.status)
	}
	if rerr != nil {
		c.bodyErr(res, rerr, wait, ctxDone)
		return
	}
	if res.status == http.StatusOK {
		if want := mxResponseBody(res.id); !bytes.Equal(body, want) {
			c.fail(invIdentical, "%s: got %d bytes %s, the server sent %d bytes %s",
				res, len(body), mxShortSum(body), len(want), mxShortSum(want))
			return
		}
		res.ok = true
	}
}

// bodyErr checks that a body read failed for a cause: the deadline, the
// read timeout after a Read had waited that long, another timer of the
// attempt, or a fault that breaks connections.
func (c *mxCell) bodyErr(res *mxResult, rerr error, wait time.Duration, ctxDone bool) {
	switch {
	case ctxDone: // the request's deadline passed
	case errors.Is(rerr, ErrReadTimeout):
		if wait < mxReadTimeout {
			c.fail(invBodyErr, "%s: the read timeout (%v) fired on a Read that had waited only %v",
				res, mxReadTimeout, wait.Round(time.Millisecond))
		}
	case mxTimeout(rerr):
		// Another timer of an attempt: net/http's response header timer
		// can abort a stream whose headers came while its goroutine was
		// starved.
	case res.phase == mxFaultPhase && c.spec.fault.breaks: // its connection may have been broken
	default:
		c.fail(invBodyErr, "%s: no deadline passed, no timer fired, and the server broke no connection", res)
	}
}

// mxEchoMessage is what a request of kind mxUpgrade sends, and the server
// echoes, over the connection switched to its protocol.
const mxEchoMessage = "matrix-echo"

// mxEcho writes mxEchoMessage on the switched connection of resp, reads
// its echo and closes the connection.
func mxEcho(resp *http.Response) error {
	rw, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return errors.New("the body of a 101 is not writable")
	}
	defer rw.Close()
	if _, err := io.WriteString(rw, mxEchoMessage); err != nil {
		return err
	}
	buf := make([]byte, len(mxEchoMessage))
	if _, err := io.ReadFull(rw, buf); err != nil {
		return err
	}
	if string(buf) != mxEchoMessage {
		return fmt.Errorf("echo %q, want %q", buf, mxEchoMessage)
	}
	return nil
}

// roundTrip calls the Transport directly, turning a panic on this
// goroutine into a violation of the cell (a panic on another goroutine
// still ends the test binary).
func (c *mxCell) roundTrip(req *http.Request) (resp *http.Response, err error) {
	defer func() {
		if p := recover(); p != nil {
			c.fail(invNoPanic, "%s %s: RoundTrip panicked: %v\n%s", req.Method, req.Header.Get(mxHeaderID), p, debug.Stack())
			resp, err = nil, errMxPanicked
		}
	}()
	return c.tr.RoundTrip(req)
}

// mxReadAll reads r to its end; on an error it returns how long the
// failing Read waited.
func mxReadAll(r io.Reader) ([]byte, time.Duration, error) {
	var out []byte
	buf := make([]byte, 1024)
	for {
		start := time.Now()
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, 0, nil
		}
		if err != nil {
			return out, time.Since(start), err
		}
	}
}

// mxBody is a request body that records its Close.
type mxBody struct {
	id      string
	r       io.Reader
	closed  atomic.Bool
	onClose func()
}

func (b *mxBody) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *mxBody) Close() error {
	if !b.closed.Swap(true) && b.onClose != nil {
		b.onClose()
	}
	return nil
}

func (c *mxCell) track(id string, r io.Reader, onClose func()) *mxBody {
	b := &mxBody{id: id, r: r, onClose: onClose}
	c.mu.Lock()
	c.bodies = append(c.bodies, b)
	c.mu.Unlock()
	return b
}

// stream returns a body fed through a pipe by a producer goroutine, which
// ends when the body is closed or ctx ends. With wait, the producer writes
// the rest after the first mxStreamFirst bytes only once the server has
// read them.
func (c *mxCell) stream(ctx context.Context, id string, payload []byte, wait bool) *mxBody {
	pr, pw := io.Pipe()
	var seen <-chan struct{}
	if wait {
		seen = c.srv.expectStream(id)
	}
	stop := context.AfterFunc(ctx, func() { pw.CloseWithError(ctx.Err()) })
	go func() {
		defer stop()
		for off := 0; off < len(payload); {
			if wait && off == mxStreamFirst {
				select {
				case <-seen:
				case <-ctx.Done():
					pw.CloseWithError(ctx.Err())
					return
				}
			}
			end := min(off+256, len(payload))
			if off < mxStreamFirst {
				end = min(end, mxStreamFirst)
			}
			if _, err := pw.Write(payload[off:end]); err != nil {
				return
			}
			off = end
		}
		pw.Close()
	}()
	return c.track(id, pr, func() { pr.Close() })
}
