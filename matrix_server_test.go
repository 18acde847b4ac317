// This file holds the matrix's server: one fault class over one protocol,
// which records how often each request reached it and checks each body it
// read; the faults themselves; and the bodies of the matrix's requests.

package keepalive

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// mxServer is a cell's server: one fault, one protocol. It records, per
// request ID, how many times a request reached it, and each body that did
// not hash to what its client sent.
type mxServer struct {
	srv       *httptest.Server
	url       string      // the requests' base URL
	host      string      // the host url names: 127.0.0.1, or the fleet's name
	tlsConfig *tls.Config // nil for HTTP/1
	h2        bool
	fault     *mxFault
	healthy   atomic.Bool
	outage    atomic.Bool  // every request is faulted
	n         atomic.Int64 // requests, retries and hedges included
	conns     atomic.Int64 // connections open, hijacked ones not counted
	done      chan struct{}

	// With the fleet option, the server listens on the fleet's
	// addresses (matrix_fleet_test.go).
	fleet      *mxFleetListener
	fleetAddrs []netip.AddrPort

	mu       sync.Mutex
	seen     map[string]int
	bad      []string
	badHosts []string // requests to the fleet whose Host header is not its name
	streams  map[string]chan struct{}
}

type mxConnKey struct{}

// newMxServer starts the server of fault f over HTTP/2 (TLS) or HTTP/1;
// with fleet, on the fleet's addresses, named by mxFleetName.
func newMxServer(t *testing.T, h2 bool, f *mxFault, fleet bool) *mxServer {
	s := &mxServer{h2: h2, fault: f, done: make(chan struct{}), seen: map[string]int{}, streams: map[string]chan struct{}{}}
	s.srv = httptest.NewUnstartedServer(s)
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes cut short, aborted handlers
	if fleet {
		s.srv.Listener.Close()
		s.fleet = mxListenFleet(t)
		s.fleetAddrs = s.fleet.addrs()
		s.srv.Listener = s.fleet
		if f.down {
			s.fleet.lns[len(s.fleet.lns)-1].Close() // its connects are refused
		}
	}
	if f.hang {
		s.srv.Listener = &mxHoldListener{Listener: s.srv.Listener, hold: func() bool { return !s.healthy.Load() }}
	}
	if !h2 {
		// HTTP/1 only: idle learning retires HTTP/1 connections before
		// the server's idle timeout. Over HTTP/2 the server's GOAWAY says
		// which streams it left unprocessed, and those are sent again, a
		// body that cannot be rewound included (its first 64 KiB kept:
		// goaway_test.go shows it deterministically); but with the idle
		// timeout on in these cells, one HTTP/2 idleclose cell in each
		// run of the whole matrix under -race saw a streamed unkeyed
		// POST of its healthy phase run out its deadline, never in 25
		// runs of the cells alone. See CONTRIBUTING.md, "HTTP/2 and
		// idle timeouts".
		s.srv.Config.IdleTimeout = f.idle
	}
	s.srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, mxConnKey{}, c)
	}
	s.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			s.conns.Add(1)
		case http.StateHijacked, http.StateClosed:
			s.conns.Add(-1)
		}
	}
	if h2 {
		s.srv.EnableHTTP2 = true
		// X25519 alone, and resumed sessions: a third of the handshake's
		// cost of the default hybrid post-quantum key exchange, as the
		// certificate below.
		curves := []tls.CurveID{tls.X25519}
		s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{mxCert()}, CurvePreferences: curves}
		s.srv.StartTLS()
		s.tlsConfig = s.srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
		s.tlsConfig.CurvePreferences = curves
		s.tlsConfig.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	} else {
		s.srv.Start()
	}
	s.url, s.host = s.srv.URL, "127.0.0.1"
	if fleet {
		s.url, s.host = strings.Replace(s.url, "127.0.0.1", mxFleetName, 1), mxFleetName
	}
	t.Cleanup(s.shutdown)
	return s
}

func (s *mxServer) shutdown() {
	select {
	case <-s.done:
		return
	default:
	}
	close(s.done)
	s.srv.CloseClientConnections()
	s.srv.Close()
}

func (s *mxServer) records() (map[string]int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[string]int, len(s.seen))
	for k, v := range s.seen {
		seen[k] = v
	}
	return seen, slices.Clone(s.bad)
}

// expectStream returns a channel closed once the server has read the
// first mxStreamFirst bytes of request id's body.
func (s *mxServer) expectStream(id string) <-chan struct{} {
	ch := make(chan struct{})
	s.mu.Lock()
	s.streams[id] = ch
	s.mu.Unlock()
	return ch
}

func (s *mxServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.n.Add(1)
	id := r.Header.Get(mxHeaderID)
	s.mu.Lock()
	s.seen[id]++
	if s.fleet != nil && !mxNamesFleet(r.Host) {
		s.badHosts = append(s.badHosts, fmt.Sprintf("%s %s: Host %q", r.Method, id, r.Host))
	}
	s.mu.Unlock()
	if !s.readBody(r, id) {
		return // the client went away
	}
	faulted := s.outage.Load() || s.fault.hit(n) || s.fault.outlier && s.atOutlier(r)
	if s.healthy.Load() || !faulted {
		if r.Header.Get("Upgrade") == "websocket" {
			s.upgrade(w)
			return
		}
		s.ok(w, r, id, true)
		return
	}
	if r.ProtoMajor == 2 {
		s.fault.http2(s, w, r, id)
	} else {
		s.fault.http1(s, w, r, id)
	}
}

// readBody reads the request body to its end, hashing it, and records a
// body that does not hash to its X-Matrix-Sum. It reports false if the
// body could not be read to its end.
func (s *mxServer) readBody(r *http.Request, id string) bool {
	want := r.Header.Get(mxHeaderSum)
	if want == "" {
		_, err := io.Copy(io.Discard, r.Body)
		return err == nil
	}
	h := sha256.New()
	var n int64
	if r.Header.Get(mxHeaderWait) != "" {
		m, err := io.CopyN(h, r.Body, mxStreamFirst)
		n += m
		switch {
		case err == nil:
			s.mu.Lock()
			if ch, ok := s.streams[id]; ok {
				close(ch)
				delete(s.streams, id)
			}
			s.mu.Unlock()
		case err != io.EOF: // EOF: the whole body was shorter, check it below
			return false
		}
	}
	m, err := io.Copy(h, r.Body)
	n += m
	if err != nil {
		return false
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		s.mu.Lock()
		s.bad = append(s.bad, fmt.Sprintf("%s %s: the server read %d bytes hashing %.12s, the client sent %d bytes hashing %.12s",
			r.Method, id, n, got, len(mxRequestBody(id)), want))
		s.mu.Unlock()
	}
	return true
}

// upgrade switches the connection to an echo protocol: 101, then it
// echoes mxEchoMessage and closes the connection.
func (s *mxServer) upgrade(w http.ResponseWriter) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	if brw.Flush() != nil {
		return
	}
	conn.SetReadDeadline(time.Now().Add(mxDeadline))
	buf := make([]byte, len(mxEchoMessage))
	if _, err := io.ReadFull(brw, buf); err != nil {
		return
	}
	conn.Write(buf)
}

// mxHoldListener holds the connections it accepts while hold says so:
// they are never served, and closed when the listener is.
type mxHoldListener struct {
	net.Listener
	hold func() bool

	mu   sync.Mutex
	held []net.Conn
}

func (l *mxHoldListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || !l.hold() {
			return c, err
		}
		l.mu.Lock()
		l.held = append(l.held, c)
		l.mu.Unlock()
	}
}

func (l *mxHoldListener) Close() error {
	err := l.Listener.Close()
	l.mu.Lock()
	for _, c := range l.held {
		c.Close()
	}
	l.held = nil
	l.mu.Unlock()
	return err
}

// wait waits d, and reports false if the request or the server ended first.
func (s *mxServer) wait(r *http.Request, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-r.Context().Done():
	case <-s.done:
	}
	return false
}

// ok answers 200 with the body of id. With quirk, an HTTP/1 request that
// asks to close its connection is answered as some servers do: without
// echoing "Connection: close" (RFC 9112 section 9.6: the server SHOULD),
// and the connection is closed lazily, when the client closes its side or
// sends more, which then meets a reset. A client that asked to close sends
// nothing more on the connection.
func (s *mxServer) ok(w http.ResponseWriter, r *http.Request, id string, quirk bool) {
	if r.Header.Get(mxHeaderSlow) != "" && !s.wait(r, mxSlowDelay) {
		return
	}
	body := mxResponseBody(id)
	if quirk && r.ProtoMajor == 1 && r.Close {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", len(body))
		brw.Write(body)
		if brw.Flush() != nil {
			return
		}
		conn.SetReadDeadline(time.Now().Add(mxLazyClose))
		_, _ = brw.Peek(1)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

func mxStorm(_ *mxServer, w http.ResponseWriter, _ *http.Request, _ string) {
	w.Header().Set("Retry-After", "0")
	w.WriteHeader(http.StatusServiceUnavailable)
	io.WriteString(w, "storm\n")
}

func mxRateLimit(_ *mxServer, w http.ResponseWriter, _ *http.Request, _ string) {
	w.Header().Set("X-RateLimit-Remaining", "0")
	w.Header().Set("X-RateLimit-Reset", "0.05")
	w.WriteHeader(http.StatusTooManyRequests)
	io.WriteString(w, "slow down\n")
}

func mxReset1(_ *mxServer, w http.ResponseWriter, _ *http.Request, _ string) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) // RST instead of FIN
	}
	conn.Close()
}

func mxReset2(*mxServer, http.ResponseWriter, *http.Request, string) {
	panic(http.ErrAbortHandler) // RST_STREAM
}

func mxStallHeaders(s *mxServer, _ http.ResponseWriter, r *http.Request, _ string) {
	s.wait(r, mxStallMax)
}

func mxStallBody(s *mxServer, w http.ResponseWriter, r *http.Request, id string) {
	body := mxResponseBody(id)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body[:len(body)/4])
	http.NewResponseController(w).Flush()
	s.wait(r, mxStallMax)
}

func mxTrickle(s *mxServer, w http.ResponseWriter, r *http.Request, id string) {
	body := mxResponseBody(id)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	part := (len(body) + mxTrickleParts - 1) / mxTrickleParts
	for off := 0; off < len(body); off += part {
		if off > 0 && !s.wait(r, mxTrickleGap) {
			return
		}
		w.Write(body[off:min(off+part, len(body))])
		rc.Flush()
	}
}

func mxGoaway(s *mxServer, w http.ResponseWriter, r *http.Request, id string) {
	w.Header().Set("Connection", "close")
	s.ok(w, r, id, false)
}

func mxSilentClose(s *mxServer, w http.ResponseWriter, r *http.Request, _ string) {
	if r.ProtoMajor == 1 {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
		return
	}
	conn, _ := r.Context().Value(mxConnKey{}).(net.Conn)
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn() // under TLS: no close_notify, no GOAWAY
	}
	if conn != nil {
		conn.Close()
	}
}

// mxCert is the certificate of the HTTP/2 servers: ECDSA P-256, whose
// handshakes cost a fraction of those of httptest's RSA 2048 certificate
// under the race detector, so that a handshake fits in an attempt timeout
// on a busy machine.
var mxCert = sync.OnceValue(func() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"keepalive matrix"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
})

// mxRequestBody and mxResponseBody are the deterministic bodies of
// request id: 1-4 KiB one way, 2-8 KiB the other.
func mxRequestBody(id string) []byte { return mxBytes("request "+id, 1<<10, 3<<10) }

func mxResponseBody(id string) []byte { return mxBytes("response "+id, 2<<10, 6<<10) }

func mxBytes(seed string, min, spread int) []byte {
	h := fnv.New64a()
	io.WriteString(h, seed)
	x := h.Sum64() | 1
	b := make([]byte, min+int(x%uint64(spread)))
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

func mxShortSum(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}
