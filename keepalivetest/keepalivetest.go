// Package keepalivetest provides a scripted HTTP server for testing code
// that uses a retrying HTTP client, such as one from keepalive.NewClient.
//
// A Server answers its requests in turn from a script of steps: a status
// with headers, body and an optional delay, a dropped connection, or a
// reset one. It counts the requests and the connections it got, so a test
// can assert how often its client retried and whether it reused
// connections:
//
//	s := keepalivetest.NewServer(t,
//		keepalivetest.Status(503).RetryAfter("1"),
//		keepalivetest.Reset(),
//		keepalivetest.Status(200).Body("ok"),
//	)
//	resp, err := client.Get(s.URL)
//	// ... s.Requests() == 3
//
// The server is an httptest.Server on 127.0.0.1 speaking HTTP/1.1.
// NewServer closes it when the test ends; Start, for use outside tests,
// leaves that to the caller.
package keepalivetest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A Step is how the server answers one request. Build one with Status,
// Drop or Reset, and refine it with its methods, which return a modified
// copy. The zero Step answers 200 OK with no body.
type Step struct {
	status int
	header http.Header
	body   string
	delay  time.Duration
	fault  fault
}

type fault uint8

const (
	noFault fault = iota
	drop
	reset
)

// Status returns a step that answers with the status code code, which
// NewServer requires to be within 100-999; 0 means 200.
func Status(code int) Step { return Step{status: code} }

// Drop returns a step that closes the connection without answering, after
// the request's headers were read: the client sees an EOF on a connection
// that may have been reused, the failure of a server that closed an idle
// connection just as the request came.
func Drop() Step { return Step{fault: drop} }

// Reset returns a step that aborts the connection with a TCP reset (RST)
// instead of an answer: the client sees "connection reset by peer".
func Reset() Step { return Step{fault: reset} }

// Header returns s with the response header key set to value.
func (s Step) Header(key, value string) Step {
	h := s.header.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set(key, value)
	s.header = h
	return s
}

// RetryAfter returns s with a Retry-After header: delay-seconds ("2") or
// an HTTP-date, given as it is sent.
func (s Step) RetryAfter(v string) Step { return s.Header("Retry-After", v) }

// Body returns s with the response body b.
func (s Step) Body(b string) Step {
	s.body = b
	return s
}

// Delay returns s waiting d after the request's headers arrive before it
// answers, drops or resets. The wait ends early if the client gives up on
// the request or the server closes.
func (s Step) Delay(d time.Duration) Step {
	s.delay = d
	return s
}

// Server is a scripted test server. Its methods are safe for concurrent
// use.
type Server struct {
	// URL is the base URL of the server, "http://127.0.0.1:port".
	URL string

	srv         *httptest.Server
	script      []Step
	requests    atomic.Int64
	connections atomic.Int64
	closing     chan struct{}
	closeOnce   sync.Once

	mu      sync.Mutex
	headers []http.Header
}

// NewServer starts a server for the test t (see Start) and closes it when
// the test ends. An invalid script fails the test.
func NewServer(t testing.TB, script ...Step) *Server {
	t.Helper()
	s, err := Start(script...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Start starts a server that answers request n with script[n] (the first
// request with the first step) and every request past the script with its
// last step; with no steps it answers 200 OK to everything. Concurrent
// requests take steps in the order they arrive. The caller must Close it;
// in a test, NewServer does. A status outside 100-999 is an error.
func Start(script ...Step) (*Server, error) {
	for i, st := range script {
		if st.fault == noFault && st.status != 0 && (st.status < 100 || st.status > 999) {
			return nil, fmt.Errorf("keepalivetest: step %d: status %d outside 100-999", i, st.status)
		}
	}
	s := &Server{script: script, closing: make(chan struct{})}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.srv.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			s.connections.Add(1)
		}
	}
	s.srv.Start()
	s.URL = s.srv.URL
	return s, nil
}

// Requests returns how many requests the server has received, faulted
// ones included.
func (s *Server) Requests() int { return int(s.requests.Load()) }

// Headers returns the headers of the requests received so far, in the
// order they arrived: to check, say, that a retry carried the same
// Idempotency-Key, or a new traceparent.
func (s *Server) Headers() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]http.Header, len(s.headers))
	for i, h := range s.headers {
		out[i] = h.Clone()
	}
	return out
}

// Connections returns how many connections the server has accepted. A
// client that reuses its connections makes fewer than it sends requests.
func (s *Server) Connections() int { return int(s.connections.Load()) }

// Close shuts the server down, ending delays in progress, and waits for
// its handlers to return. Calling it again does nothing.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.srv.Close()
	})
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.headers = append(s.headers, r.Header.Clone())
	n := s.requests.Add(1) // under mu, so that n matches the order of headers
	s.mu.Unlock()
	step := Step{}
	if len(s.script) > 0 {
		step = s.script[min(int(n), len(s.script))-1]
	}
	if step.delay > 0 && !s.wait(r.Context(), step.delay) {
		return
	}
	switch step.fault {
	case drop, reset:
		s.abort(w, step.fault == reset)
		return
	}
	for k, v := range step.header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(step.body)))
	status := step.status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, step.body)
}

// wait waits d unless the request or the server ends first; it reports
// whether d passed.
func (s *Server) wait(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
	case <-s.closing:
	}
	return false
}

// abort closes the connection of w without an answer; with rst, the close
// sends a TCP reset instead of a FIN.
func (s *Server) abort(w http.ResponseWriter, rst bool) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Cannot happen over HTTP/1.1; abort the handler the way net/http
		// documents, which closes the connection.
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok && rst {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}
