package keepalive

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
)

// 32 concurrent requests to a new HTTPS host that speaks HTTP/2 make one
// TLS handshake, not 32: the dial gate dials one at a time while the
// host's protocol is unknown, and drops the dials that the first
// connection made unneeded.
func TestDialGateOneHandshakePerHTTP2Host(t *testing.T) {
	srv, tlsOpt := newServer(t, http2, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	}))
	c, tr := newTestClient(t, tlsOpt)

	burst(t, c, srv.URL, 32)
	s := tr.Stats()
	assert.Equal(t, 1, srv.Connections(), "TLS connections the server accepted")
	assert.EqualValues(t, 1, s.Dials, "Dials: connections that carried requests")
	assert.EqualValues(t, 0, s.DiscardedDials)
	assert.EqualValues(t, 32, s.Attempts)

	burst(t, c, srv.URL, 32) // the host is known to speak HTTP/2 now
	assert.Equal(t, 1, srv.Connections())
}

// Against an HTTPS host that speaks HTTP/1.1 only, the first handshake
// tells the gate so, and a burst gets a connection per request as before.
func TestDialGateHTTP1OverTLSDialsInParallel(t *testing.T) {
	release := make(chan struct{})
	var arrived atomic.Int64
	srv, tlsOpt := newServer(t, https1, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		if arrived.Add(1) == 16 {
			close(release)
		}
		<-release // all 16 requests are in flight at once
		io.WriteString(w, r.Proto)
	}))
	c, tr := newTestClient(t, tlsOpt)

	burst(t, c, srv.URL, 16)
	s := tr.Stats()
	assert.Equal(t, 16, srv.Connections())
	assert.EqualValues(t, 16, s.Dials)
	assert.EqualValues(t, 0, s.DiscardedDials)
}

// An HTTP/2 server that allows 4 streams per connection, and a burst of 8
// requests that it holds until all 8 have arrived: the first connection
// turns 4 of them away, and the dial gate lets their dial through after a
// short hold, not after its grace for requests that a new connection will
// take.
func TestDialGateHTTP2StreamLimit(t *testing.T) {
	const n = 8
	var arrived atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if arrived.Add(1) == n {
			close(release)
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, r.Proto)
	}))
	srv.EnableHTTP2 = true
	srv.Config.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 4}
	var conns atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	c, _ := newTestClient(t, WithTLSConfig(&tls.Config{RootCAs: roots}))

	start := time.Now()
	burst(t, c, srv.URL, n)
	took := time.Since(start)
	t.Logf("%d requests over %d connections in %v", n, conns.Load(), took.Round(time.Millisecond))
	// Two connections of 4 streams each; a third when a request turned
	// away from the second, before net/http had set it up, waited out the
	// gate's short hold (a bare http.Transport dials 8).
	assert.LessOrEqual(t, conns.Load(), int64(3), "TLS connections")
	assert.GreaterOrEqual(t, conns.Load(), int64(2), "TLS connections")
	assert.Less(t, took, serialGrace/2, "the second connection waited for the gate's grace")
}
