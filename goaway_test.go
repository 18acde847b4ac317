package keepalive

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// goawayServer is an HTTP/2 server, spoken frame by frame, whose first
// connection serves its first stream and answers its second with a GOAWAY
// that leaves it unprocessed (last stream 1), as a server's idle timeout
// does when a request crosses it: once it has read the stream's whole
// body, or more than goawayAfter bytes of it. Later connections serve
// every stream. It records the body of every stream it served.
type goawayServer struct {
	ln     net.Listener
	conns  atomic.Int64
	mu     sync.Mutex
	bodies []string
	open   []net.Conn
}

func newGoawayServer(t *testing.T) (*goawayServer, *tls.Config) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &goawayServer{ln: ln}
	cfg := &tls.Config{Certificates: []tls.Certificate{mxCert()}, NextProtos: []string{"h2"}}
	var wg sync.WaitGroup
	// The server closes its connections when the test ends: after a
	// GOAWAY that refused a stream, the client's CloseIdleConnections
	// sometimes leaves the new connection open until its idle timeout
	// (a bare http.Transport does not: see the closing note of issue 17).
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := s.conns.Add(1)
			s.mu.Lock()
			s.open = append(s.open, c)
			s.mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				s.serve(tls.Server(c, cfg), n == 1)
			})
		}
	})
	roots := x509.NewCertPool()
	leaf, err := x509.ParseCertificate(mxCert().Certificate[0])
	require.NoError(t, err)
	roots.AddCert(leaf)
	return s, &tls.Config{RootCAs: roots}
}

func (s *goawayServer) url() string { return "https://" + s.ln.Addr().String() + "/" }

func (s *goawayServer) served() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bodies...)
}

// HTTP/2 frame types and flags the server uses.
const (
	h2Data, h2Headers, h2Settings, h2Ping, h2Goaway, h2WindowUpdate = 0, 1, 4, 6, 7, 8
	h2EndStream, h2Ack, h2EndHeaders, h2Padded                      = 0x1, 0x1, 0x4, 0x8
)

func h2Frame(w io.Writer, typ, flags byte, stream uint32, payload []byte) error {
	var hdr [9]byte
	hdr[0], hdr[1], hdr[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	hdr[3], hdr[4] = typ, flags
	binary.BigEndian.PutUint32(hdr[5:], stream)
	_, err := w.Write(append(hdr[:], payload...))
	return err
}

// serve speaks HTTP/2 on c; refuse makes it answer the second stream with
// a GOAWAY.
func (s *goawayServer) serve(c *tls.Conn, refuse bool) {
	preface := make([]byte, len(http2Preface))
	if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2Preface {
		return
	}
	if h2Frame(c, h2Settings, 0, 0, nil) != nil {
		return
	}
	bodies := map[uint32]*bytes.Buffer{}
	streams := 0
	var refused uint32 // the stream answered with a GOAWAY
	goaway := func() {
		payload := make([]byte, 8)
		binary.BigEndian.PutUint32(payload, 1) // the last stream processed: the refused one was not
		h2Frame(c, h2Goaway, 0, 0, payload)
	}
	respond := func(id uint32) error {
		s.mu.Lock()
		s.bodies = append(s.bodies, bodies[id].String())
		s.mu.Unlock()
		return h2Frame(c, h2Headers, h2EndHeaders|h2EndStream, id, []byte{0x88}) // :status 200, from HPACK's static table
	}
	var hdr [9]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		typ, flags, id := hdr[3], hdr[4], binary.BigEndian.Uint32(hdr[5:])&(1<<31-1)
		payload := make([]byte, n)
		if _, err := io.ReadFull(c, payload); err != nil {
			return
		}
		var err error
		switch typ {
		case h2Settings:
			if flags&h2Ack == 0 {
				err = h2Frame(c, h2Settings, h2Ack, 0, nil)
			}
		case h2Ping:
			if flags&h2Ack == 0 {
				err = h2Frame(c, h2Ping, h2Ack, 0, payload)
			}
		case h2Headers:
			bodies[id] = new(bytes.Buffer)
			if streams++; refuse && streams == 2 {
				refused = id
				if flags&h2EndStream != 0 {
					goaway() // and reads on, as a server does until the client closes
					refused = 1<<31 - 1
					continue
				}
				continue
			}
			if flags&h2EndStream != 0 {
				err = respond(id)
			}
		case h2Data:
			b := bodies[id]
			if b == nil || refused == 1<<31-1 {
				continue // after the GOAWAY
			}
			if flags&h2Padded != 0 && len(payload) > 0 {
				pad := int(payload[0])
				payload = payload[1 : len(payload)-pad]
			}
			b.Write(payload)
			if id == refused {
				if flags&h2EndStream != 0 || b.Len() > goawayAfter {
					goaway() // and reads on, as a server does until the client closes
					refused = 1<<31 - 1
					continue
				}
				// Grant the window back, so that the client goes on.
				incr := make([]byte, 4)
				binary.BigEndian.PutUint32(incr, uint32(len(payload)))
				if h2Frame(c, h2WindowUpdate, 0, 0, incr) != nil || h2Frame(c, h2WindowUpdate, 0, id, incr) != nil {
					return
				}
				continue
			}
			if flags&h2EndStream != 0 {
				err = respond(id)
			}
		}
		if err != nil {
			return
		}
	}
}

const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// goawayAfter is how much of a refused stream's body the server reads
// before its GOAWAY: more than the client keeps of a body it cannot
// rewind.
const goawayAfter = refusedReplayMax + 4<<10

// An unkeyed POST whose body cannot be rewound, refused unprocessed by an
// HTTP/2 server's GOAWAY (one that crossed it, as at an idle timeout), is
// sent again on a new connection and reaches the server once; a bare
// http.Transport fails it ("cannot retry ... after Request.Body was
// written").
func TestHTTP2GoawayRefusedStreamIsSentAgain(t *testing.T) {
	for _, name := range []string{"keepalive", "bare"} {
		t.Run(name, func(t *testing.T) {
			srv, tlsConf := newGoawayServer(t)
			var c *http.Client
			if name == "keepalive" {
				c, _ = newTestClient(t, WithTLSConfig(tlsConf), WithMaxRetries(0))
			} else {
				tr := &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true}
				t.Cleanup(tr.CloseIdleConnections)
				c = &http.Client{Transport: tr}
			}
			post := func(body string) error {
				req, err := http.NewRequest(http.MethodPost, srv.url(), &onceReader{strings.NewReader(body)})
				require.NoError(t, err)
				resp, err := c.Do(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				_, err = io.Copy(io.Discard, resp.Body)
				assert.Equal(t, 2, resp.ProtoMajor)
				return err
			}
			require.NoError(t, post("first"))
			err := post("second")
			t.Logf("%s: second POST: %v; the server served %q over %d connections", name, err, srv.served(), srv.conns.Load())
			if name == "bare" {
				assert.Error(t, err, "net/http cannot resend a body it cannot rewind")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, []string{"first", "second"}, srv.served(), "each body served once")
			assert.Equal(t, int64(2), srv.conns.Load())
		})
	}
}

// A body that cannot be rewound and was read past what is kept of it is
// not sent again: the request fails with an error that says why.
func TestHTTP2GoawayRefusedLongStreamFails(t *testing.T) {
	srv, tlsConf := newGoawayServer(t)
	c, _ := newTestClient(t, WithTLSConfig(tlsConf), WithMaxRetries(0))
	post := func(body string) error {
		req, err := http.NewRequest(http.MethodPost, srv.url(), &onceReader{strings.NewReader(body)})
		require.NoError(t, err)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	require.NoError(t, post("first"))
	// The server reads more than the client keeps before its GOAWAY.
	err := post(strings.Repeat("x", 1<<20))
	assert.ErrorIs(t, err, errReplayTooLong)
	assert.Len(t, srv.served(), 1, "the long body was never served")
}
