package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An endpoint that answers one request with 503 and Retry-After: 1:
// keepalive waits a second for it, and the note says so, instead of a
// bare drop in requests/s.
func TestKeepaliveWaitingForRetryAfterIsNoted(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 3 { // the probe and one request pass first
			w.Header().Set("Retry-After", "1")
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)

	var stdout strings.Builder
	r := runKabench(t, nil, &stdout, "-url", srv.URL, "-n", "20", "-c", "2", "-runs", "1", "-clients", "keepalive", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	run := find(t, rep, "direct", clientKeepAlive).Runs[0]
	assert.EqualValues(t, 20, run.Requests)
	assert.EqualValues(t, 1, run.Retries)
	assert.EqualValues(t, 1, run.RetryAfterWaits)
	assert.GreaterOrEqual(t, run.RetryAfterMs, 500.0, "a wait of about Retry-After's second, or what is left of the pause it set")
	assert.LessOrEqual(t, run.RetryAfterMs, 1000.0)
	assert.EqualValues(t, 1, run.HostPauses)
	assert.Positive(t, run.PauseWaits, "the other worker's next request waited for the pause")
	require.Len(t, rep.Notes, 1)
	assert.Regexp(t, `^keepalive waited for the server in 1 run: 1 retry waited [0-9.]+m?s in all for the server's Retry-After \(or its host's pause\), and 1 host pause held back [0-9]+ requests? until the pause ended\. Its requests/s count those waits`, rep.Notes[0])
}

// A server that closes every connection after its response, as Python's
// http.server does: every client dials once per request, and the note
// says that the server, not the clients, decides it.
func TestServerClosingEveryConnectionIsNoted(t *testing.T) {
	addr := startHTTP10Server(t)
	r := runKabench(t, nil, nil, "-url", "http://"+addr+"/", "-n", "30", "-c", "2", "-runs", "1", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	for _, res := range rep.Results {
		assert.EqualValues(t, 30, res.Runs[0].NewConns, res.Client)
		assert.Equal(t, "HTTP/1.0", res.Runs[0].Protocol, res.Client)
	}
	assert.Equal(t, []string{"every client opened a new connection for every request (30 connections for 30 requests sent per run): " +
		"the server does not keep connections alive (an HTTP/1.0 server, or one that answers Connection: close), " +
		"so keep-alive cannot help, and the clients differ in other costs only."}, rep.Notes)

	r = runKabench(t, nil, nil, "-url", "http://"+addr+"/", "-n", "10", "-c", "2", "-runs", "1")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Contains(t, r.stdout, "\nNote: every client opened a new connection for every request")
}

// startHTTP10Server serves HTTP/1.0 on a loopback port: one response per
// connection, which it then closes.
func startHTTP10Server(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for { // the request's header, to its empty line
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" {
						break
					}
				}
				io.WriteString(c, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n")
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

func TestHTTP2NoteSaysWhetherTheClientsLookAlike(t *testing.T) {
	result := func(setup, client, proto string, conns int64) clientResult {
		return clientResult{Setup: setup, Client: client, Average: runResult{Protocol: proto, NewConns: conns, Requests: 100}}
	}
	tests := []struct {
		name    string
		results []clientResult
		want    []string
	}{
		{
			"alike: as many connections",
			[]clientResult{result("direct", clientDefault, "HTTP/2", 1), result("direct", clientKeepAlive, "HTTP/2", 1)},
			[]string{"over HTTP/2 the default client and keepalive both multiplex every request over the connections they opened first (1 and 1 per run), so they look alike; -http1 compares their HTTP/1.1 connection pools."},
		},
		{
			"not alike: 64 connections against 1",
			[]clientResult{result("direct", clientDefault, "HTTP/2", 64), result("direct", clientKeepAlive, "HTTP/2", 1)},
			[]string{"over HTTP/2 the default client opened 64 connections per run and keepalive 1: net/http dials for every request that waits while a host's first connection negotiates its protocol, and keepalive dials one at a time and shares the first. Both multiplex their requests over the connections they have; -http1 compares their HTTP/1.1 connection pools."},
		},
		{
			"no note over HTTP/1.1",
			[]clientResult{result("direct", clientDefault, "HTTP/1.1", 64), result("direct", clientKeepAlive, "HTTP/1.1", 64)},
			nil,
		},
		{
			"no note with one of the two clients",
			[]clientResult{result("direct", clientNoKeepAlive, "HTTP/2", 100), result("direct", clientKeepAlive, "HTTP/2", 1)},
			nil,
		},
		{
			"a note per setup, named",
			[]clientResult{
				result("a", clientDefault, "HTTP/2", 2), result("a", clientKeepAlive, "HTTP/2", 2),
				result("b", clientDefault, "HTTP/1.1", 2), result("b", clientKeepAlive, "HTTP/1.1", 2),
			},
			[]string{"over HTTP/2 (a) the default client and keepalive both multiplex every request over the connections they opened first (2 and 2 per run), so they look alike; -http1 compares their HTTP/1.1 connection pools."},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &report{Results: tt.results}
			assert.Equal(t, tt.want, r.http2Notes())
		})
	}
}

func TestErrorKinds(t *testing.T) {
	urlErr := func(err error) error { return &url.Error{Op: "Get", URL: "http://127.0.0.1:1/", Err: err} }
	tests := []struct {
		name string
		give error
		want string
	}{
		{"a status", &statusError{"GET", "http://h/", "503 Service Unavailable"}, "503 Service Unavailable"},
		{"a deadline", urlErr(context.DeadlineExceeded), "timeout (-timeout 10s)"},
		{"a refused connect", urlErr(&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}), "connection refused"},
		{"a reset", urlErr(&net.OpError{Op: "read", Err: syscall.ECONNRESET}), "connection reset"},
		{"an early close", urlErr(io.EOF), "connection closed by the server"},
		{"a truncated body", &readError{"GET", "http://h/", io.ErrUnexpectedEOF}, "reading the response: connection closed by the server"},
		{"a paused host", urlErr(&keepalive.HostPausedError{Host: "h:80", Wait: time.Second}), "host paused past the deadline"},
		{"anything else, without the URL", urlErr(errors.New("net/http: something odd")), "net/http: something odd"},
		{"a long message, cut", errors.New(strings.Repeat("x", 100)), strings.Repeat("x", 77) + "..."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, errorKind(tt.give, 10*time.Second))
		})
	}
}

func TestKindsListsTheMostFrequentFirst(t *testing.T) {
	assert.Equal(t, "10 x 503 Service Unavailable, 2 x a, 2 x b", kinds(map[string]int64{"b": 2, "503 Service Unavailable": 10, "a": 2}))
	assert.Equal(t, "1,200 x timeout", kinds(map[string]int64{"timeout": 1200}))
	assert.Empty(t, kinds(nil))
}
