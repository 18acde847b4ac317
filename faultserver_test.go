// This file holds the raw fault server: a net.Listener whose handlers
// speak just enough HTTP/1.1 to misbehave in the ways net/http's server
// never does (answer before reading the body, lie in the status line,
// reset halfway through an upload, refuse and reopen its port). Faults
// that net/http's server can commit are scripted with keepalivetest.

package keepalive

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// faultServer accepts connections on 127.0.0.1 and runs handle on each one
// in its own goroutine. Every connection and goroutine is closed and waited
// for when the test ends, so goleak sees nothing.
type faultServer struct {
	addr   string
	handle func(fc *faultConn)

	// done is closed when the server shuts down: a handler that stalls
	// waits on it (or on its connection) rather than on a clock.
	done chan struct{}

	accepted  atomic.Int64 // connections accepted
	requests  atomic.Int64 // request heads read, on all connections
	bytesSent atomic.Int64 // bytes the server's writes handed to the kernel

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// faultConn is one accepted connection, with the reader its requests are
// parsed from and the number of requests read on it so far.
type faultConn struct {
	net.Conn
	srv   *faultServer
	br    *bufio.Reader
	count int // requests read on this connection
}

// faultRequest is a request as the fault server read it: the head, and the
// length and SHA-256 of the body it consumed (streamed, never buffered).
type faultRequest struct {
	*http.Request
	n       int64 // server-wide sequence number, 1-based
	onConn  int   // sequence number on its connection, 1-based
	bodyLen int64
	bodySum string
	bodyErr error
}

func newFaultServer(t testing.TB, handle func(fc *faultConn)) *faultServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &faultServer{
		addr:   ln.Addr().String(),
		handle: handle,
		done:   make(chan struct{}),
		conns:  map[net.Conn]struct{}{},
	}
	s.serve(ln)
	t.Cleanup(s.close)
	return s
}

// url returns the server's base URL with path appended.
func (s *faultServer) url(path string) string { return "http://" + s.addr + path }

func (s *faultServer) serve(ln net.Listener) {
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !s.track(c) {
				c.Close()
				return
			}
			s.accepted.Add(1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer s.untrack(c)
				defer c.Close()
				s.handle(&faultConn{Conn: c, srv: s, br: bufio.NewReader(c)})
			}()
		}
	}()
}

func (s *faultServer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *faultServer) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// stopListening closes the listener, so that connects are refused, and
// leaves established connections alone.
func (s *faultServer) stopListening() {
	s.mu.Lock()
	ln := s.ln
	s.mu.Unlock()
	ln.Close()
}

// listenAgain reopens the listener on the same port.
func (s *faultServer) listenAgain(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", s.addr)
	require.NoError(t, err, "reopening %s", s.addr)
	s.serve(ln)
}

// relisten is listenAgain for a goroutine that may not call require.
func (s *faultServer) relisten() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.serve(ln)
	return nil
}

func (s *faultServer) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.done)
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// readRequest reads the next request head and its whole body, hashing the
// body as it streams.
func (fc *faultConn) readRequest() (*faultRequest, error) {
	req, err := http.ReadRequest(fc.br)
	if err != nil {
		return nil, err
	}
	fc.count++
	r := &faultRequest{Request: req, n: fc.srv.requests.Add(1), onConn: fc.count}
	fc.readBody(r)
	return r, nil
}

// readBody consumes the body of a request read by readHead, hashing it.
func (fc *faultConn) readBody(r *faultRequest) {
	h := sha256.New()
	r.bodyLen, r.bodyErr = io.Copy(h, r.Body)
	r.bodySum = hex.EncodeToString(h.Sum(nil))
}

// readHead reads the next request head only, leaving its body unread.
func (fc *faultConn) readHead() (*faultRequest, error) {
	req, err := http.ReadRequest(fc.br)
	if err != nil {
		return nil, err
	}
	fc.count++
	return &faultRequest{Request: req, n: fc.srv.requests.Add(1), onConn: fc.count}, nil
}

// write sends raw bytes and counts what the kernel accepted.
func (fc *faultConn) write(p []byte) error {
	n, err := fc.Conn.Write(p)
	fc.srv.bytesSent.Add(int64(n))
	return err
}

func (fc *faultConn) writeString(s string) error { return fc.write([]byte(s)) }

// reply sends a complete response with a Content-Length, keeping the
// connection open for the next request. hdr is "Name: value" lines.
func (fc *faultConn) reply(status int, body string, hdr ...string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	for _, h := range hdr {
		b.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	return fc.writeString(b.String())
}

// reset aborts the connection with a TCP RST instead of a FIN.
func (fc *faultConn) reset() {
	if tc, ok := fc.Conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	fc.Conn.Close()
}

// waitClosed blocks until the client closes the connection or the server
// shuts down: a stalled handler holds the connection without a timer.
func (fc *faultConn) waitClosed() {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-fc.srv.done:
			fc.Conn.Close()
		case <-stop:
		}
	}()
	_, _ = io.Copy(io.Discard, fc.br)
}

// faultServe runs serve for each request of the connection until it
// returns false or reading fails.
func faultServe(serve func(fc *faultConn, r *faultRequest) bool) func(*faultConn) {
	return func(fc *faultConn) {
		for {
			r, err := fc.readRequest()
			if err != nil {
				return
			}
			if !serve(fc, r) {
				return
			}
		}
	}
}

// faultOK answers 200 with a body naming the request and its body checksum,
// so the client can check it got the answer to its own request.
func faultOK(fc *faultConn, r *faultRequest) bool {
	return fc.reply(http.StatusOK, faultEcho(r.Method, r.Header.Get("X-Req-Id"), r.bodySum)) == nil
}

func faultEcho(method, id, sum string) string { return method + " " + id + " " + sum }

// faultBody is a request body of n deterministic bytes generated on the fly:
// a 64 MiB body costs no memory, and every replay is byte-identical.
type faultBody struct {
	n, off int64
	seed   byte
}

func (b *faultBody) Read(p []byte) (int, error) {
	if b.off >= b.n {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n-b.off {
		p = p[:b.n-b.off]
	}
	for i := range p {
		x := b.off + int64(i)
		p[i] = byte(x) ^ byte(x>>8) ^ byte(x>>16) ^ b.seed
	}
	b.off += int64(len(p))
	return len(p), nil
}

// faultBodySum is the SHA-256 of the faultBody of n bytes with seed.
func faultBodySum(n int64, seed byte) string {
	h := sha256.New()
	_, _ = io.Copy(h, &faultBody{n: n, seed: seed})
	return hex.EncodeToString(h.Sum(nil))
}

// faultNewRequest returns a request whose body is a generated faultBody with
// GetBody, so it can be replayed without being buffered.
func faultNewRequest(ctx context.Context, method, url string, n int64, seed byte) *http.Request {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		panic(err) // a malformed URL in a test is a bug in the test
	}
	if n > 0 {
		req.Body = io.NopCloser(&faultBody{n: n, seed: seed})
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(&faultBody{n: n, seed: seed}), nil }
		req.ContentLength = n
	}
	return req
}

// faultOpenFDs counts the open file descriptors of this process.
func faultOpenFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open files: %v", err)
	}
	return len(ents)
}
