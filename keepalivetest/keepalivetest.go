// Package keepalivetest provides a scripted HTTP server for testing code
// that uses a retrying HTTP client, such as one from keepalive.NewClient.
//
// A Server answers its requests in turn from a script of steps: a status
// with headers, body and an optional delay, a dropped connection, or a
// reset one. It counts the requests and the connections it got, and keeps
// their headers and bodies, so a test can assert how often its client
// retried, whether it resent a body byte for byte, and whether it reused
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
// Steps also script the faults of a keep-alive connection that a client
// must survive: a body cut off (Cut), stalled (Stall) or trickled
// (Trickle), and a server's idle timeout (IdleClose), with the race that
// loses requests to it made certain (IdleDrop).
//
// NewServer starts an httptest.Server on 127.0.0.1 speaking HTTP/1.1;
// NewTLSServer one speaking HTTPS, with HTTP/2 offered. Both close it when
// the test ends; Start and StartTLS, for use outside tests, leave that to
// the caller.
package keepalivetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
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
// Drop, Reset or Handle, and refine it with its methods, which return a
// modified copy. The zero Step answers 200 OK with no body.
type Step struct {
	status  int
	header  http.Header
	body    string
	delay   time.Duration
	fault   fault
	handler http.HandlerFunc

	shape   shape // how the body goes out
	shapeN  int   // Cut and Stall: the bytes sent
	trickle time.Duration

	idleClose, idleDrop time.Duration
}

type fault uint8

const (
	noFault fault = iota
	drop
	reset
)

type shape uint8

const (
	whole shape = iota
	cut
	stall
	trickle
)

// Status returns a step that answers with the status code code, which
// NewServer requires to be within 100-999; 0 means 200.
func Status(code int) Step { return Step{status: code} }

// Drop returns a step that reads the request, body included, and closes
// the connection without answering: the client sees an EOF on a
// connection that may have been reused, the failure of a server that
// closed an idle connection just as the request came. Over HTTP/2 the
// connection's TCP connection is closed, without a GOAWAY.
func Drop() Step { return Step{fault: drop} }

// Reset returns a step that reads the request, body included, and aborts
// the connection with a TCP reset (RST) instead of an answer: the client
// sees "connection reset by peer" after it wrote the whole request, which
// it must not resend unless the request is idempotent.
func Reset() Step { return Step{fault: reset} }

// Handle returns a step that h answers: for an answer the other steps do
// not script, such as one computed from the request. Header, Delay,
// IdleClose and IdleDrop apply to it; the status and the body are h's to
// write, and the request body is h's to read: Bodies has nil for it.
func Handle(h http.HandlerFunc) Step { return Step{handler: h} }

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

// Cut returns s sending the headers, which announce the whole body, and
// only the body's first n bytes; then the connection is closed (over
// HTTP/2, the stream reset). The client's read of the body fails, as
// when a server restarts in the middle of a response.
func (s Step) Cut(n int) Step {
	s.shape, s.shapeN = cut, n
	return s
}

// Stall returns s sending the headers and the body's first n bytes, and
// then nothing more until the client gives up or the server closes: the
// fault a read timeout is for. A stall before the headers is a long Delay.
func (s Step) Stall(n int) Step {
	s.shape, s.shapeN = stall, n
	return s
}

// Trickle returns s sending its body a byte at a time, gap apart: a slow
// server that is never silent for longer than gap.
func (s Step) Trickle(gap time.Duration) Step {
	s.shape, s.trickle = trickle, gap
	return s
}

// IdleClose returns s closing the HTTP/1.1 connection it answers on once
// the connection has been idle for d after the answer, as a server's
// keep-alive timeout does (nginx's keepalive_timeout, Go's
// http.Server.IdleTimeout). A client that sends on the connection after
// that finds it closed, or, if its request crosses the close on the wire,
// loses it: see IdleDrop. HTTP/2 connections are left alone.
func (s Step) IdleClose(d time.Duration) Step {
	s.idleClose = d
	return s
}

// IdleDrop returns s dropping, as Drop does, the next request on the
// HTTP/1.1 connection it answers on if that request arrives after the
// connection has been idle for d or longer: as if the server's idle
// timeout had closed the connection as the request crossed the close on
// the wire. Against a real server a client loses such a request now and
// then, when the timing falls so; here it loses it every time. HTTP/2
// connections are left alone.
func (s Step) IdleDrop(d time.Duration) Step {
	s.idleDrop = d
	return s
}

// Server is a scripted test server. Its methods are safe for concurrent
// use.
type Server struct {
	// URL is the base URL of the server, "http://127.0.0.1:port" or, for a
	// TLS server, "https://127.0.0.1:port".
	URL string

	srv         *httptest.Server
	http1       *tls.Config // the TLS configuration without HTTP/2
	noHTTP2     atomic.Bool // DisableHTTP2 was called
	script      []Step
	requests    atomic.Int64
	connections atomic.Int64
	closing     chan struct{}
	closeOnce   sync.Once

	mu      sync.Mutex
	headers []http.Header
	bodies  [][]byte
	conns   map[net.Conn]*connState
}

// connState is what the server keeps of one connection: the idle settings
// of the last step that answered on it, and when it went idle.
type connState struct {
	conn net.Conn

	mu                  sync.Mutex
	idleClose, idleDrop time.Duration
	idleSince, activeAt time.Time
	closer              *time.Timer
}

type connKey struct{}

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

// NewTLSServer is NewServer for a server that speaks HTTPS (see StartTLS).
func NewTLSServer(t testing.TB, script ...Step) *Server {
	t.Helper()
	s, err := StartTLS(script...)
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
	s, err := newServer(script)
	if err != nil {
		return nil, err
	}
	s.srv.Start()
	s.URL = s.srv.URL
	return s, nil
}

// StartTLS is Start for a server that speaks HTTPS, offering HTTP/2 and
// HTTP/1.1, with a certificate for 127.0.0.1 and localhost that
// TLSConfig's clients trust.
func StartTLS(script ...Step) (*Server, error) {
	s, err := newServer(script)
	if err != nil {
		return nil, err
	}
	s.srv.EnableHTTP2 = true
	// ECDSA and X25519 alone: a fraction of the handshake cost of
	// httptest's RSA certificate and of the default key exchange, which
	// matters to tests run under the race detector.
	s.srv.TLS = &tls.Config{
		Certificates:     []tls.Certificate{certificate()},
		CurvePreferences: []tls.CurveID{tls.X25519},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			if s.noHTTP2.Load() {
				return s.http1, nil
			}
			return nil, nil
		},
	}
	s.srv.StartTLS()
	s.http1 = s.srv.TLS.Clone()
	s.http1.NextProtos = []string{"http/1.1"}
	s.http1.GetConfigForClient = nil
	s.URL = s.srv.URL
	return s, nil
}

func newServer(script []Step) (*Server, error) {
	for i, st := range script {
		if st.fault == noFault && st.handler == nil && st.status != 0 && (st.status < 100 || st.status > 999) {
			return nil, fmt.Errorf("keepalivetest: step %d: status %d outside 100-999", i, st.status)
		}
	}
	s := &Server{script: script, closing: make(chan struct{}), conns: map[net.Conn]*connState{}}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes and connections the faults cut short
	s.srv.Config.ConnContext = s.connContext
	s.srv.Config.ConnState = s.connState
	return s, nil
}

// TLSConfig returns a client configuration that trusts the server's
// certificate (keepalive.WithTLSConfig takes it), or nil for a server
// started by Start or NewServer.
func (s *Server) TLSConfig() *tls.Config {
	if s.srv.TLS == nil {
		return nil
	}
	return s.srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
}

// DisableHTTP2 makes a TLS server negotiate HTTP/1.1 alone on the
// connections it accepts from then on, as an HTTPS server that does not
// speak HTTP/2 does. Connections already made keep their protocol.
func (s *Server) DisableHTTP2() { s.noHTTP2.Store(true) }

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

// Bodies returns the bodies of the requests received so far, in the order
// the requests arrived, as far as the server has read them: whole once a
// step has answered, dropped or reset; nil for a Handle step's request. They
// are kept in memory.
func (s *Server) Bodies() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]byte, len(s.bodies))
	for i, b := range s.bodies {
		out[i] = append([]byte(nil), b...)
	}
	return out
}

// Connections returns how many connections the server has accepted. A
// client that reuses its connections makes fewer than it sends requests.
func (s *Server) Connections() int { return int(s.connections.Load()) }

// Close shuts the server down, ending delays and stalls in progress, and
// waits for its handlers to return. Calling it again does nothing.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.srv.Close()
	})
}

// Private implementation past this point.

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.headers = append(s.headers, r.Header.Clone())
	s.bodies = append(s.bodies, nil)
	n := s.requests.Add(1) // under mu, so that n matches the order of headers
	s.mu.Unlock()
	step := Step{}
	if len(s.script) > 0 {
		step = s.script[min(int(n), len(s.script))-1]
	}
	if step.handler == nil {
		r.Body = &recordedBody{ReadCloser: r.Body, s: s, i: int(n) - 1}
	}
	c, _ := r.Context().Value(connKey{}).(*connState)
	if r.ProtoMajor == 1 && c != nil {
		if c.crossed() {
			s.abort(w, r, false)
			return
		}
		c.set(step.idleClose, step.idleDrop)
	}
	if step.delay > 0 && !s.wait(r.Context(), step.delay) {
		return
	}
	switch step.fault {
	case drop, reset:
		s.abort(w, r, step.fault == reset)
		return
	}
	for k, v := range step.header {
		w.Header()[k] = v
	}
	if step.handler != nil {
		step.handler(w, r)
		return
	}
	_, _ = io.Copy(io.Discard, r.Body) // the body is recorded whole before the answer
	s.answer(w, r, step)
}

// answer writes the status and body of step, shaped as the step says.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, step Step) {
	w.Header().Set("Content-Length", strconv.Itoa(len(step.body)))
	status := step.status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	rc := http.NewResponseController(w)
	switch step.shape {
	case whole:
		_, _ = io.WriteString(w, step.body)
	case cut:
		_, _ = io.WriteString(w, step.body[:min(step.shapeN, len(step.body))])
		_ = rc.Flush()
		panic(http.ErrAbortHandler) // HTTP/1: the connection closes; HTTP/2: RST_STREAM
	case stall:
		_, _ = io.WriteString(w, step.body[:min(step.shapeN, len(step.body))])
		_ = rc.Flush()
		select {
		case <-r.Context().Done():
		case <-s.closing:
		}
	case trickle:
		_ = rc.Flush()
		for i := range len(step.body) {
			if !s.wait(r.Context(), step.trickle) {
				return
			}
			if _, err := io.WriteString(w, step.body[i:i+1]); err != nil || rc.Flush() != nil {
				return
			}
		}
	}
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

// abort reads the request's body and closes its connection without an
// answer; with rst, the close sends a TCP reset instead of a FIN.
func (s *Server) abort(w http.ResponseWriter, r *http.Request, rst bool) {
	_, _ = io.Copy(io.Discard, r.Body)
	var conn net.Conn
	if r.ProtoMajor == 1 {
		hijacked, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(http.ErrAbortHandler) // closes the connection
		}
		conn = hijacked
	} else if c, ok := r.Context().Value(connKey{}).(*connState); ok {
		conn = c.conn
	}
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn() // no close_notify: the connection just ends
	}
	if tc, ok := conn.(*net.TCPConn); ok && rst {
		_ = tc.SetLinger(0)
	}
	if conn != nil {
		_ = conn.Close()
	}
}

func (s *Server) connContext(ctx context.Context, c net.Conn) context.Context {
	st := &connState{conn: c}
	s.mu.Lock()
	s.conns[c] = st
	s.mu.Unlock()
	return context.WithValue(ctx, connKey{}, st)
}

func (s *Server) connState(c net.Conn, state http.ConnState) {
	s.mu.Lock()
	st := s.conns[c]
	if state == http.StateHijacked || state == http.StateClosed {
		delete(s.conns, c)
	}
	s.mu.Unlock()
	switch state {
	case http.StateNew:
		s.connections.Add(1)
	case http.StateIdle:
		st.idle()
	case http.StateActive:
		st.active()
	case http.StateHijacked, http.StateClosed:
		st.active() // stops the idle timer
	}
}

// set takes the idle settings of the step answering on c.
func (c *connState) set(idleClose, idleDrop time.Duration) {
	c.mu.Lock()
	c.idleClose, c.idleDrop = idleClose, idleDrop
	c.mu.Unlock()
}

// idle notes that c went idle, and starts its idle timeout.
func (c *connState) idle() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idleSince = time.Now()
	if c.idleClose > 0 {
		c.closer = time.AfterFunc(c.idleClose, func() { _ = c.conn.Close() })
	}
}

// active notes that a request arrived on c, and stops its idle timeout.
func (c *connState) active() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.activeAt = time.Now()
	if c.closer != nil {
		c.closer.Stop()
		c.closer = nil
	}
}

// crossed reports whether the request that made c active arrived after c
// had been idle for the drop age of the step that answered on it last.
func (c *connState) crossed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.idleDrop > 0 && !c.idleSince.IsZero() && c.activeAt.Sub(c.idleSince) >= c.idleDrop
}

// recordedBody keeps what is read of a request body in the server's
// record of that request.
type recordedBody struct {
	io.ReadCloser
	s *Server
	i int
}

func (b *recordedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.s.mu.Lock()
		b.s.bodies[b.i] = append(b.s.bodies[b.i], p[:n]...)
		b.s.mu.Unlock()
	}
	return n, err
}

// certificate is the servers' certificate: ECDSA P-256, self-signed, for
// 127.0.0.1, ::1, localhost and example.com, made once per process.
var certificate = sync.OnceValue(func() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"keepalivetest"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost", "example.com", "*.example.com"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
})
