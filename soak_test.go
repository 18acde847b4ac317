// This file holds the soak test: 100,000 mixed requests against a
// keep-alive fault server that injects every fault of faults_test.go into
// 1% of its answers, and refuses connections now and then. Nothing
// idempotent may be lost, nothing unkeyed processed twice, and attempts
// stay within the configured bounds.

package keepalive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// soakFault is a kind of fault the soak server injects.
type soakFault int

const (
	soakClose        soakFault = iota // read the request, close without answering
	soakResetRequest                  // read the request, answer with a TCP reset
	soakResetBody                     // reset halfway through the response body
	soakStall                         // no headers until the client gives up
	soakTrickle                       // a body a byte at a time, under the read timeout
	soakHuge503                       // 503 with a 100 MiB body
	soakRetryAfter                    // 503 with a Retry-After that means "use the backoff"
	soakMalformed                     // a status line that is not one
	soakFaults
)

func (f soakFault) String() string {
	return [...]string{"close", "reset-request", "reset-body", "stall", "trickle", "huge-503", "retry-after", "malformed"}[f]
}

// soakServer wraps a faultServer with the accounting of the soak.
type soakServer struct {
	*faultServer
	injected [soakFaults]atomic.Int64

	mu       sync.Mutex
	rnd      *rand.Rand
	arrivals map[string]int // by "METHOD id"
}

func (s *soakServer) draw() (soakFault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rnd.IntN(100) != 0 {
		return 0, false
	}
	return soakFault(s.rnd.IntN(int(soakFaults))), true
}

func (s *soakServer) serve(fc *faultConn, r *faultRequest) bool {
	s.mu.Lock()
	s.arrivals[r.Method+" "+r.Header.Get("X-Req-Id")]++
	s.mu.Unlock()
	f, ok := s.draw()
	if !ok {
		return faultOK(fc, r)
	}
	s.injected[f].Add(1)
	switch f {
	case soakClose:
		return false
	case soakResetRequest:
		fc.reset()
		return false
	case soakResetBody:
		_ = fc.writeString("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + strings.Repeat("r", 500))
		fc.reset()
		return false
	case soakStall:
		fc.waitClosed()
		return false
	case soakTrickle:
		body := faultEcho(r.Method, r.Header.Get("X-Req-Id"), r.bodySum)
		if fc.writeString(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(body))) != nil {
			return false
		}
		// A slow peer, not synchronisation: 8 slices 5 ms apart, far
		// under the read timeout.
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < len(body); i += (len(body) + 7) / 8 {
			<-tick.C
			if fc.writeString(body[i:min(i+(len(body)+7)/8, len(body))]) != nil {
				return false
			}
		}
		return true
	case soakHuge503:
		if fc.writeString("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 104857600\r\n\r\n") != nil {
			return false
		}
		chunk := make([]byte, 64<<10)
		for range 1600 { // 100 MiB, or until the client closes
			if fc.write(chunk) != nil {
				return false
			}
		}
		return false
	case soakRetryAfter:
		ra := []string{"-3", "garbage", "0", "Sun, 06 Nov 1994 08:49:37 GMT"}[r.n%4]
		return fc.reply(http.StatusServiceUnavailable, "busy", "Retry-After: "+ra) == nil
	default: // soakMalformed
		_ = fc.writeString("HTTP/1.1 abc Broken\r\n\r\n")
		return false
	}
}

func TestSoakOnePercentFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000 requests: skipped with -short")
	}
	const (
		workers    = 32
		maxRetries = 3
		refusals   = 5 // times the listener closes until a dial fails
	)
	total := 100_000
	if raceEnabled {
		total = 15_000 // enough to find races; the counts are the normal run's
	}
	s := &soakServer{rnd: rand.New(rand.NewPCG(1, 2)), arrivals: make(map[string]int, total)}
	s.faultServer = newFaultServer(t, faultServe(s.serve))
	c, tr := newTestClient(t, WithMaxRetries(maxRetries), WithBackoff(10*time.Millisecond, 100*time.Millisecond),
		// Long enough that no healthy answer times out on a loaded machine
		// under -race; each injected stall costs one read timeout.
		WithReadTimeout(2*time.Second), WithProxy(nil))

	// Refusals: at evenly spaced points the server stops listening until
	// the client has had a connect refused, then listens again.
	var refused atomic.Int64
	var relistenErr error
	monitorDone := make(chan struct{})
	stopMonitor := make(chan struct{})
	go func() {
		defer close(monitorDone)
		for i := 1; i <= refusals; i++ {
			mark := int64(i * total / (refusals + 1))
			if !poll(2*time.Minute, func() bool {
				select {
				case <-stopMonitor:
					return true
				default:
				}
				return s.requests.Load() >= mark
			}) || s.requests.Load() < mark {
				return
			}
			before := tr.Stats().DialErrors
			s.stopListening()
			if poll(10*time.Second, func() bool { return tr.Stats().DialErrors > before }) {
				refused.Add(1)
			}
			if relistenErr = s.relisten(); relistenErr != nil {
				return
			}
		}
	}()

	type tally struct{ ok, bodyErr, failed atomic.Int64 }
	var tallies [ngxKinds]tally
	var firstErrs sync.Map
	var next atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(total) || ctx.Err() != nil {
					return
				}
				k := ngxKind(i % int64(ngxKinds))
				id := fmt.Sprint(i)
				size := int64(64 + i%256)
				req := faultNewRequest(ctx, k.method(), s.url("/soak/"+id), size*int64(min(int(k), 1)), byte(i))
				req.Header.Set("X-Req-Id", id)
				if k == ngxPostKeyed {
					req.Header.Set("Idempotency-Key", id)
				}
				want := faultEcho(k.method(), id, faultBodySum(req.ContentLength, byte(i)))
				resp, err := c.Do(req)
				if err != nil {
					tallies[k].failed.Add(1)
					firstErrs.LoadOrStore(k, err.Error())
					continue
				}
				// A 503 returned to the caller may carry a 100 MiB body:
				// read what an answer can be, no more.
				b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
				resp.Body.Close()
				switch {
				case err != nil && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF)):
					tallies[k].bodyErr.Add(1)
				case err != nil:
					tallies[k].failed.Add(1)
					firstErrs.LoadOrStore(k, "reading body: "+err.Error())
				case resp.StatusCode != http.StatusOK || string(b) != want:
					tallies[k].failed.Add(1)
					firstErrs.LoadOrStore(k, fmt.Sprintf("status %d body %.60q", resp.StatusCode, b))
				default:
					tallies[k].ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(stopMonitor)
	<-monitorDone
	require.NoError(t, relistenErr)
	elapsed := time.Since(start)

	st := tr.Stats()
	var injected []string
	var faults int64
	for f := range soakFaults {
		injected = append(injected, fmt.Sprintf("%v=%d", f, s.injected[f].Load()))
		faults += s.injected[f].Load()
	}
	maxArrivals, twice := 0, 0
	s.mu.Lock()
	for key, n := range s.arrivals {
		maxArrivals = max(maxArrivals, n)
		if n > 1 && strings.HasPrefix(key, "POST ") {
			var id int64
			fmt.Sscan(strings.TrimPrefix(key, "POST "), &id)
			if ngxKind(id%int64(ngxKinds)) == ngxPostUnkeyed {
				twice++
			}
		}
	}
	s.mu.Unlock()
	var outcome []string
	for k := range ngxKinds {
		outcome = append(outcome, fmt.Sprintf("%v ok=%d body-errors=%d failed=%d",
			k, tallies[k].ok.Load(), tallies[k].bodyErr.Load(), tallies[k].failed.Load()))
	}
	t.Logf("%d requests in %v; %d faults injected (%s), %d refusals; stats %+v; max arrivals of one request %d; %s",
		total, elapsed.Round(time.Millisecond), faults, strings.Join(injected, " "), refused.Load(), st,
		maxArrivals, strings.Join(outcome, "; "))

	require.Equal(t, int64(total), st.Requests, "the run finished within its time bound")
	for _, k := range []ngxKind{ngxGet, ngxPut, ngxPostKeyed} {
		e, _ := firstErrs.Load(k)
		assert.Zero(t, tallies[k].failed.Load(), "%v requests lost: %v", k, e)
	}
	var bodyErrs int64
	for k := range ngxKinds {
		bodyErrs += tallies[k].bodyErr.Load()
	}
	assert.LessOrEqual(t, bodyErrs, s.injected[soakResetBody].Load(),
		"a body may only break where the server reset it: nothing else truncates")
	assert.Zero(t, twice, "an unkeyed POST was processed twice")
	assert.Equal(t, int64(refusals), refused.Load(), "every refusal was met by the client")
	assert.LessOrEqual(t, st.Attempts, st.Requests*(1+maxRetries))
	assert.Zero(t, st.GaveUp, "1% faults never exhaust 3 retries")
	// net/http may resend a request on a reused connection on top of the
	// retry layer's attempts, once per attempt at most here.
	assert.LessOrEqual(t, maxArrivals, 2*(1+maxRetries))
	assert.Positive(t, faults, "faults were injected")
}
