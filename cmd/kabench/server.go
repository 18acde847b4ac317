// This file holds the embedded server: a small, fast HTTP/1.1 handler on
// 127.0.0.1 that counts the connections it accepts; with -backends, one
// server per address of 127.0.0.2 on, all on one port, each counting the
// requests it gets (backends.go).

package main

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// responseBody is what the embedded server answers. It is small so that
// the measurement is about connections, not bandwidth.
var responseBody = []byte("ok\n")

// embeddedServer serves on a random loopback port.
type embeddedServer struct {
	url      string
	srvs     []*http.Server // one per backend
	conns    atomic.Int64   // connections accepted (ConnState StateNew), of every backend
	requests []atomic.Int64 // requests each backend got; nil for a single one
	backends *backendSet    // how the clients reach the backends; nil for a single one
	wg       sync.WaitGroup // the servers' Serve
}

// startServer starts the server, over TLS with tc if it is not nil
// (tls.go): on a random port of 127.0.0.1, or with backends > 1 on one
// port of each of that many addresses from 127.0.0.2 on, reached by the
// clients as backendsName.
func startServer(tc *tls.Config, backends int) (*embeddedServer, error) {
	scheme := "http"
	if tc != nil {
		scheme = "https"
	}
	s := &embeddedServer{}
	var lns []net.Listener
	if backends <= 1 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = []net.Listener{ln}
		s.url = scheme + "://" + ln.Addr().String() + "/"
	} else {
		addrs := backendAddrs(backends)
		var err error
		if lns, err = listenBackends(addrs, net.Listen); err != nil {
			return nil, err
		}
		_, port, _ := net.SplitHostPort(lns[0].Addr().String())
		s.requests = make([]atomic.Int64, backends)
		s.backends = &backendSet{port: port, addrs: addrs, requests: s.requestCounts}
		s.url = scheme + "://" + s.backends.hostPort() + "/"
	}
	for i, ln := range lns {
		srv := s.newServer(i, tc)
		s.srvs = append(s.srvs, srv)
		s.wg.Go(func() {
			// Serve returns ErrServerClosed on close; a listener that fails
			// otherwise shows up as request errors in the report.
			if tc != nil {
				_ = srv.ServeTLS(ln, "", "")
				return
			}
			_ = srv.Serve(ln)
		})
	}
	return s, nil
}

// newServer is the server of backend i.
func (s *embeddedServer) newServer(i int, tc *tls.Config) *http.Server {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The request body is read whole so that the connection can be
		// reused, whatever its size.
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(responseBody)
	})
	if s.requests != nil {
		count, serve := &s.requests[i], handler
		// Counted on arrival: a client that has the response finds the
		// request counted.
		handler = func(w http.ResponseWriter, r *http.Request) {
			count.Add(1)
			serve(w, r)
		}
	}
	srv := &http.Server{
		Handler: handler,
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
	if tc != nil {
		tc = tc.Clone() // each server sets up HTTP/2 in its own
	}
	setServerTLS(srv, tc)
	return srv
}

// requestCounts returns the requests each backend got so far.
func (s *embeddedServer) requestCounts() []int64 {
	out := make([]int64, len(s.requests))
	for i := range s.requests {
		out[i] = s.requests[i].Load()
	}
	return out
}

// close stops the server: in-flight requests get up to d to finish, then
// every connection is closed.
func (s *embeddedServer) close(d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	for _, srv := range s.srvs {
		wg.Go(func() {
			if srv.Shutdown(ctx) != nil {
				srv.Close()
			}
		})
	}
	wg.Wait()
	s.wg.Wait()
}
