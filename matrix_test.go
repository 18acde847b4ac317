// This file holds the option matrix: it shows that the opt-in options
// compose. Every pair of them (and each one alone, and none) meets every
// fault class of the server, over HTTP/1 and over HTTP/2, and each cell
// checks invariants that a correct client keeps under any timing: a request
// ends with exactly one of a response and an error, within its deadline; an
// unreplayable request reaches the server at most once, with the body it
// was sent with; a successful response is the one the server sent; a body
// read fails only for a cause; once the server is healthy again, requests
// succeed (the circuit breaker closes); the observer's events, the attempt
// transport's calls and Stats agree; no connection, goroutine or request
// body is left behind.
//
// Each cell runs a fault phase (two rounds of the five kinds of request
// sent concurrently, while the server faults a share of them by a counter;
// with a circuit breaker, then an outage until the circuit opens), then a
// healthy phase (the server behaves; requests are sent one at a time).
// Only the exported API of the package is used.
//
// The fleet option serves the cell's server on three loopback addresses
// on one port, under a name its client resolves to them (WithResolver):
// every fault then meets the balanced path, a pool per address. Its own
// faults, outlier and outlierdown, fail one address while the others are
// healthy, and run only in its cells. The fleet cells check the gaps of
// balancing the matrix found and that were fixed (matrix_fleet_test.go,
// mxStrict; MATRIX_LENIENT=1 steps around them).
//
// Run one cell, or a slice of the matrix, by name:
//
//	go test -race -run 'TestMatrix/HTTP2/reset/hedge\+breaker$' .
//	go test -race -run 'TestMatrix/.*/.*/lifetime' .
//	go test -race -run 'TestMatrix/.*/.*/(fleet|.*\+fleet)$' .
//
// This file holds the matrix's model (options, faults, kinds of request)
// and TestMatrix; a cell runs in matrix_cell_test.go, is checked in
// matrix_check_test.go, and meets the server of matrix_server_test.go
// (on the addresses of matrix_fleet_test.go with the fleet option).
//
// Each failing cell reports each invariant it broke, with up to three
// examples; TestMatrix then logs, per invariant, the cells that broke it,
// by option set. A panic in a goroutine of the Transport (a hedge) ends
// the test binary: -skip the cells that cause it to see the rest.

package keepalive

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The client's settings in every cell, and those of the opt-in options.
const (
	mxReadTimeout    = 300 * time.Millisecond
	mxAttemptTimeout = 250 * time.Millisecond
	mxHedgeDelay     = 20 * time.Millisecond
	mxOpenTimeout    = 30 * time.Millisecond
	mxLifetime       = 20 * time.Millisecond
	mxBodyBuffer     = 1 << 20
	mxMaxRetries     = 3
	mxBreakerFails   = 3
)

// The shape of a cell.
const (
	mxDeadline       = 2 * time.Second        // each request's context deadline
	mxSlack          = 500 * time.Millisecond // how long past its deadline a request may end
	mxSettle         = 2 * time.Second        // the wait for goroutines and request bodies after a cell
	mxRecoveryTries  = 25                     // requests for a breaker to close once the server is healthy
	mxTimeoutTries   = 6                      // timeouts tolerated per request of the healthy phase
	mxOutageRequests = 6                      // requests at most while the server fails every one (breaker cells)
)

// mxConcurrency is how many cells run at once (a cell that waits counts
// half). Under the race detector 20 keep both CPUs of a 2-core machine
// busy, but with one core taken by another process they starved healthy
// cells past their attempt timeouts and an idleclose cell's request past
// the idle check's margin (7 cells of 1,738 failed); 10 pass there.
// Without it the cells wait on their servers' timers and more run at
// once: 32 (48, beside the package's parallel tests, starved 14 cells).
var mxConcurrency = map[bool]int{true: 10, false: 32}[raceEnabled]

// The server's misbehaviour.
const (
	mxStallMax     = 3 * time.Second // a stall outlasts any request, and ends when the client leaves
	mxTrickleParts = 8
	mxTrickleGap   = 30 * time.Millisecond // a tenth of the read timeout
	mxSlowDelay    = 2 * mxHedgeDelay      // a slow answer, long enough to be hedged
	mxLazyClose    = 200 * time.Millisecond
	mxIdleClose    = 250 * time.Millisecond // the idleclose server's idle timeout
	mxStreamFirst  = 512                    // bytes of a streamed body the server must see before the rest is written
	mxRestartAfter = 300 * time.Millisecond // the restart server closes every connection this long after a round
	mxHangTimeout  = 300 * time.Millisecond // the TLS handshake timeout of the hangdial cells
)

// The shapes of the matrix's requests.
const (
	mxSlowBody = 20 * time.Millisecond // an Expect: 100-continue body's first bytes come this late (past the idle timeout in idleclose cells)
	mxLateRead = 60 * time.Millisecond // a late GET's body is read this long after its headers arrived
)

// mxSpellings spell the matrix server's host, for the requests that name it:
// net/http keeps a pool per spelling; keepalive, one host.
var mxSpellings = []string{"localhost", "LocalHost", "LOCALHOST"}

// Headers of the matrix's requests.
const (
	mxHeaderID   = "X-Matrix-Id"   // unique per request
	mxHeaderSum  = "X-Matrix-Sum"  // hex SHA-256 of the body sent
	mxHeaderSlow = "X-Matrix-Slow" // the server answers after mxSlowDelay
	mxHeaderWait = "X-Matrix-Wait" // the body's producer waits for the server to see its first part
)

// The invariants, as reported.
const (
	invNoPanic       = "no panic"
	invExactlyOne    = "RoundTrip returns exactly one of response and error"
	invAtMostOnce    = "unreplayable request reaches the server at most once"
	invBodyIntact    = "server reads the body the client sent"
	invIdentical     = "successful response body is what the server sent"
	invStatus        = "status is one the server sent"
	invDeadline      = "request ends within its deadline plus 500ms"
	invBodyErr       = "response body read fails only for a cause"
	invHealthy       = "healthy server: every request succeeds"
	invBreakerCloses = "breaker closes once the server is healthy"
	invGoroutines    = "client goroutines return to baseline"
	invBodyClosed    = "RoundTrip closes every request body"
	invStats         = "Stats agree with the options and the calls"
	invObserver      = "observer events are consistent"
	invAttemptRT     = "attempt transport sees numbered, well-formed attempts"
	invAddrStats     = "AddrStats agree with the balancing"
	invHostName      = "a balanced request carries its host's name in its Host header"
	invSurvives      = "requests survive an outlier while healthy addresses remain"
	invEjected       = "the outlier, and only it, is ejected, and then gets no attempt"
	invBreakerOpens  = "breaker opens when every address fails"
)

// mxOption is an opt-in option of the matrix.
type mxOption struct {
	name string
	opts func(c *mxCell) []Option
}

var mxOptions = []mxOption{
	{"atimeout", func(*mxCell) []Option { return []Option{WithAttemptTimeout(mxAttemptTimeout)} }},
	{"hedge", func(*mxCell) []Option { return []Option{WithHedging(mxHedgeDelay, 1)} }},
	{"breaker", func(*mxCell) []Option {
		return []Option{WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: mxBreakerFails, OpenTimeout: mxOpenTimeout})}
	}},
	{"lifetime", func(*mxCell) []Option { return []Option{WithConnMaxLifetime(mxLifetime)} }},
	{"bodybuf", func(*mxCell) []Option { return []Option{WithBodyBuffer(mxBodyBuffer)} }},
	{"respbuf", func(*mxCell) []Option { return []Option{WithResponseBuffer(mxBodyBuffer)} }},
	{"nobudget", func(*mxCell) []Option { return []Option{WithoutRetryBudget()} }},
	{"observer", func(c *mxCell) []Option { return []Option{WithObserver(c.observer())} }},
	{"attemptrt", func(c *mxCell) []Option { return []Option{WithAttemptTransport(c.wrapAttempts)} }},
	{"dialer", func(c *mxCell) []Option { return []Option{WithDialContext(c.dial)} }},
	// Over HTTP/1 a no-op; in the HTTP/2 cells, HTTP/1.1 over TLS, whose
	// faults the server then commits as HTTP/1 ones.
	{"http1only", func(*mxCell) []Option { return []Option{WithoutHTTP2()} }},
	// In the HTTP/2 cells, every connection goes through a CONNECT proxy's
	// tunnel; over HTTP/1 a no-op (a plain HTTP request is not tunnelled).
	{"proxy", func(c *mxCell) []Option { return []Option{WithProxy(c.proxyFor)} }},
	// The server listens on mxFleetSize loopback addresses on one port,
	// the requests name it mxFleetName, and the resolver maps the name to
	// those addresses: balancing is on (matrix_fleet_test.go). With the
	// dialer option too, balancing stays on and the dialer gets "ip:port";
	// in the HTTP/2 cells of the proxy option, the proxy carries the
	// requests, unbalanced.
	{"fleet", func(c *mxCell) []Option { return []Option{WithResolver(c.srv.resolve)} }},
}

// mxFault is a fault class: what the server does to the requests whose
// sequence number (1-based, over the server's life, retries and hedges
// included) hit selects, over each protocol.
type mxFault struct {
	name string
	hit  func(n int64) bool
	// fails: the fault fails attempts (an error, or a status in the retry
	// list), as a circuit breaker counts them.
	fails bool
	// breaks: a fault can break a connection that other responses are
	// being read from (HTTP/2 multiplexes), so a body read may fail.
	breaks bool
	// status: the status the fault answers with, 0 if none.
	status int
	// idle: the server closes connections idle for this long; 0: never.
	idle time.Duration
	// restart: after each round of the fault phase, the server closes
	// every connection at once, as a graceful restart does.
	restart bool
	// hang: in the fault phase the server accepts connections and never
	// serves them: a TLS handshake with it hangs.
	hang bool
	// outlier: one address of the fleet fails while the others are
	// healthy; only in the cells of the fleet option (a server of one
	// address has no other to take its requests). down: it refuses
	// connects.
	outlier, down bool
	// waits: a cell spends most of its time waiting out the server's
	// timers, and takes half a place in the pool of cells that run at once.
	// Not idleclose: its requests race the server's idle timer by design,
	// and on a loaded machine (the race detector, a core busy) twice as
	// many of its cells at once starved one past the idle check's margin.
	waits bool
	http1 func(s *mxServer, w http.ResponseWriter, r *http.Request, id string)
	http2 func(s *mxServer, w http.ResponseWriter, r *http.Request, id string)
}

func mxEvery(k int64) func(int64) bool { return func(n int64) bool { return n%k == 0 } }

var mxFaults = []mxFault{
	// 503 with Retry-After: 0 to two requests in three.
	{name: "503storm", hit: func(n int64) bool { return n%3 != 0 }, fails: true, status: http.StatusServiceUnavailable, http1: mxStorm, http2: mxStorm},
	// 429 saying no quota is left for 50 ms, to one request in four: the
	// host pauses every request (pause.go).
	{name: "ratelimit", hit: mxEvery(4), fails: true, status: http.StatusTooManyRequests, http1: mxRateLimit, http2: mxRateLimit},
	// The request is read whole, then the connection is reset (HTTP/1) or
	// the stream is (HTTP/2, RST_STREAM).
	{name: "reset", hit: mxEvery(2), fails: true, http1: mxReset1, http2: mxReset2},
	// No answer until the client leaves.
	{name: "stallheaders", hit: mxEvery(3), fails: true, http1: mxStallHeaders, http2: mxStallHeaders},
	// Headers and a quarter of the body, then nothing until the client leaves.
	{name: "stallbody", hit: mxEvery(3), http1: mxStallBody, http2: mxStallBody},
	// The body in eight parts, a tenth of the read timeout apart.
	{name: "trickle", hit: mxEvery(2), http1: mxTrickle, http2: mxTrickle},
	// A whole answer with "Connection: close": HTTP/1 closes the
	// connection after it, Go's HTTP/2 server sends GOAWAY and closes the
	// connection once its streams are done (h2_bundle.go: "respect
	// Connection == close to mean sending a GOAWAY").
	{name: "goaway", hit: mxEvery(2), http1: mxGoaway, http2: mxGoaway},
	// The request is read whole, then its connection is closed without a
	// word: a FIN on HTTP/1, the TCP connection under TLS on HTTP/2.
	{name: "silentclose", hit: mxEvery(2), fails: true, breaks: true, http1: mxSilentClose, http2: mxSilentClose},
	// Every request is answered, but the HTTP/1 server closes connections
	// idle for mxIdleClose, as nginx, HAProxy and Caddy do on their timers, and
	// the client pauses around it: past it between the fault rounds (the
	// client learns the timeout), just short of it before each request of
	// the healthy phase (it must not write into a closing connection).
	{name: "idleclose", hit: func(int64) bool { return false }, idle: mxIdleClose},
	// Every request is answered, and after each round of the fault phase
	// the server closes every connection at once, whatever its idle age,
	// as a graceful restart does: closes that teach no idle timeout.
	{name: "restart", hit: func(int64) bool { return false }, restart: true},
	// In the fault phase the server accepts connections and never answers
	// on them: over HTTP/2 (TLS) every handshake hangs until the client's
	// handshake timeout (mxHangTimeout in these cells), over HTTP/1 every
	// request until the read timeout.
	{name: "hangdial", hit: func(int64) bool { return false }, fails: true, hang: true, waits: true},
	// In the fault phase one address of the fleet (its last, 127.0.0.3)
	// reads each request whole, then resets its connection, while the
	// others are healthy: its failures are its own, not the host's. They
	// eject it, and the circuit breaker does not count them; a request
	// that may be sent again survives it. It fails no attempt of the
	// host's (fails), and no response is ever read from a connection it
	// breaks.
	{name: "outlier", hit: func(int64) bool { return false }, outlier: true, http1: mxResetConn, http2: mxResetConn},
	// One address of the fleet (its last) is down from the start: nothing
	// listens on it, its connects are refused, and every request
	// survives it, as a connect that fails sent nothing and the attempt
	// goes to another address.
	{name: "outlierdown", hit: func(int64) bool { return false }, outlier: true, down: true},
}

// mxKind is a kind of request of the mix each cell sends.
type mxKind int

const (
	mxGet           mxKind = iota // GET, no body
	mxPutReplayable               // PUT, body with GetBody
	mxPutOnce                     // PUT, body without GetBody
	mxPostStream                  // POST without Idempotency-Key, streamed body of unknown length
	mxPostKeyed                   // POST with Idempotency-Key, body with GetBody
	mxPostExpect                  // POST without Idempotency-Key, Expect: 100-continue, body with GetBody whose first bytes come mxSlowBody late
	mxGetLate                     // GET whose body is read mxLateRead after its headers arrived
	mxUpgrade                     // GET that switches protocols (101, a WebSocket handshake), then echoes a message
	mxGetSpelled                  // GET to a spelling of the host by name (mxSpellings)
)

var mxKinds = []mxKind{mxGet, mxPutReplayable, mxPutOnce, mxPostStream, mxPostKeyed, mxPostExpect, mxGetLate, mxUpgrade, mxGetSpelled}

func (k mxKind) String() string {
	return [...]string{"GET", "PUT(GetBody)", "PUT(no GetBody)", "POST(unkeyed, streamed)", "POST(keyed)",
		"POST(unkeyed, Expect: 100-continue, slow body)", "GET(body read late)", "GET(101 upgrade)", "GET(host spelled)"}[k]
}

// once reports whether a request of kind k may reach the server at most
// once: an unkeyed POST, and a PUT whose body nothing can replay.
func (k mxKind) once(bodyBuffer bool) bool {
	return k == mxPostStream || k == mxPostExpect || k == mxPutOnce && !bodyBuffer
}

func (k mxKind) method() string {
	switch k {
	case mxGet, mxGetLate, mxUpgrade, mxGetSpelled:
		return http.MethodGet
	case mxPutReplayable, mxPutOnce:
		return http.MethodPut
	}
	return http.MethodPost
}

type mxPhase int

const (
	mxFaultPhase mxPhase = iota
	mxHealthyPhase
)

func (p mxPhase) String() string { return [...]string{"fault phase", "healthy phase"}[p] }

// mxSpec is one cell of the matrix.
type mxSpec struct {
	name  string // proto/fault/set
	set   string // the option set: "none", "hedge", "hedge+breaker"...
	h2    bool
	fault *mxFault
	opts  []mxOption
}

// mxSpecs returns the cells: every pair of options, each option alone and
// none, or (short) each option alone and none; under every fault, over
// both protocols. They come in a fixed order that spreads option sets,
// faults and protocols, so that the cells running at once mix them all:
// the handshakes of HTTP/2 cells whose connections break, and hedging,
// which doubles a cell's attempts, keep the CPU busy, and all of them at
// once would starve the others.
func mxSpecs(short bool) []mxSpec {
	sets := [][]mxOption{nil}
	for i := range mxOptions {
		sets = append(sets, []mxOption{mxOptions[i]})
	}
	if !short {
		for i := range mxOptions {
			for j := i + 1; j < len(mxOptions); j++ {
				sets = append(sets, []mxOption{mxOptions[i], mxOptions[j]})
			}
		}
	}
	var specs []mxSpec
	for _, set := range sets {
		for fi := range mxFaults {
			if mxFaults[fi].outlier && !slices.ContainsFunc(set, func(o mxOption) bool { return o.name == "fleet" }) {
				continue
			}
			for _, proto := range []string{"HTTP1", "HTTP2"} {
				names := make([]string, 0, 2)
				for _, o := range set {
					names = append(names, o.name)
				}
				name := strings.Join(names, "+")
				if name == "" {
					name = "none"
				}
				specs = append(specs, mxSpec{
					name:  proto + "/" + mxFaults[fi].name + "/" + name,
					set:   name,
					h2:    proto == "HTTP2",
					fault: &mxFaults[fi],
					opts:  set,
				})
			}
		}
	}
	return mxSpread(specs)
}

// mxSpread reorders specs by a stride coprime with their number: the
// cells that sit together in the list (one option set's) end up far apart.
func mxSpread(specs []mxSpec) []mxSpec {
	n := len(specs)
	stride := 37
	for gcd(stride, n) != 1 {
		stride++
	}
	out := make([]mxSpec, n)
	for i := range specs {
		out[i] = specs[i*stride%n]
	}
	return out
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// TestMatrix runs the cells of mxSpecs (under -short, each option alone),
// mxConcurrency at a time. It runs alone, before the parallel tests, as
// its cells load the CPUs; under -short, without the race detector, its
// few cells run beside the other parallel tests. A cell waits mostly on the stalls and timeouts
// of its server, so cells run concurrently: from a pool of goroutines that call
// t.Run, which -parallel (GOMAXPROCS by default) does not limit as it does
// t.Parallel; a cell whose requests are done and which only waits for its
// goroutines to end leaves its place to the next. The goroutines of each
// cell carry pprof labels, which tell its own apart from those of the
// cells running beside it. A cell of a fault that waits (mxFault.waits)
// takes half a place.
func TestMatrix(t *testing.T) {
	if !raceEnabled && testing.Short() {
		t.Parallel() // a cell per option: few enough to run beside the others
	}
	specs := mxSpecs(testing.Short())
	sum := &mxSummary{cells: map[string][]string{}}
	sem := make(chan struct{}, 2*mxConcurrency) // half places
	var wg sync.WaitGroup
	for i, spec := range specs {
		places := 2
		if spec.fault.waits {
			places = 1
		}
		for range places {
			sem <- struct{}{}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			release := func() {
				once.Do(func() {
					for range places {
						<-sem
					}
				})
			}
			defer release()
			t.Run(spec.name, func(t *testing.T) {
				sum.ran.Add(1)
				c := &mxCell{t: t, spec: spec, label: "cell" + strconv.Itoa(i), short: testing.Short(), sum: sum, release: release}
				c.run()
			})
		}()
	}
	wg.Wait()
	sum.log(t, specs)
}

// mxSummary collects, per invariant, the cells that broke it.
type mxSummary struct {
	ran   atomic.Int64
	mu    sync.Mutex
	cells map[string][]string
}

func (s *mxSummary) add(inv, cell string) {
	s.mu.Lock()
	s.cells[inv] = append(s.cells[inv], cell)
	s.mu.Unlock()
}

// log reports, per invariant, the cells that broke it, grouped by option
// set: "hedge+breaker: 7 of 14: HTTP1/reset HTTP1/503storm ...".
func (s *mxSummary) log(t *testing.T, specs []mxSpec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	perSet := map[string]int{} // cells per option set
	for _, sp := range specs {
		perSet[sp.set]++
	}
	failed := map[string]bool{}
	invs := make([]string, 0, len(s.cells))
	for inv, cells := range s.cells {
		invs = append(invs, inv)
		for _, c := range cells {
			failed[c] = true
		}
	}
	slices.Sort(invs)
	var b strings.Builder
	fmt.Fprintf(&b, "matrix: %d cells ran, %d failed", s.ran.Load(), len(failed))
	for _, inv := range invs {
		bySet := map[string][]string{}
		for _, c := range s.cells[inv] {
			i := strings.LastIndexByte(c, '/')
			bySet[c[i+1:]] = append(bySet[c[i+1:]], c[:i])
		}
		fmt.Fprintf(&b, "\n  %q: %d cells", inv, len(s.cells[inv]))
		for _, set := range slices.Sorted(maps.Keys(bySet)) {
			cells := bySet[set]
			slices.Sort(cells)
			fmt.Fprintf(&b, "\n    %s: %d of %d: %s", set, len(cells), perSet[set], strings.Join(cells, " "))
		}
	}
	t.Log(b.String())
}
