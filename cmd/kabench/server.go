// This file holds the embedded server: a small, fast HTTP/1.1 handler on
// 127.0.0.1 that counts the connections it accepts.

package main

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// responseBody is what the embedded server answers. It is small so that
// the measurement is about connections, not bandwidth.
var responseBody = []byte("ok\n")

// embeddedServer serves on a random loopback port.
type embeddedServer struct {
	url   string
	srv   *http.Server
	conns atomic.Int64 // connections accepted (ConnState StateNew)
	done  chan struct{}
}

// startServer starts the server, over TLS with tc if it is not nil
// (tls.go).
func startServer(tc *tls.Config) (*embeddedServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if tc != nil {
		scheme = "https"
	}
	s := &embeddedServer{url: scheme + "://" + ln.Addr().String() + "/", done: make(chan struct{})}
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// The request body is read whole so that the connection can be
			// reused, whatever its size.
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write(responseBody)
		}),
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				s.conns.Add(1)
			}
		},
		ReadHeaderTimeout: 10 * time.Second,
		// Above nginx's and the clients' own idle timeouts: the server should
		// not be the one that closes idle connections during a run.
		IdleTimeout: 180 * time.Second,
	}
	setServerTLS(s.srv, tc)
	go func() {
		defer close(s.done)
		// Serve returns ErrServerClosed on close; a listener that fails
		// otherwise shows up as request errors in the report.
		if tc != nil {
			_ = s.srv.ServeTLS(ln, "", "")
			return
		}
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// close stops the server: in-flight requests get up to d to finish, then
// every connection is closed.
func (s *embeddedServer) close(d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if s.srv.Shutdown(ctx) != nil {
		s.srv.Close()
	}
	<-s.done
}
