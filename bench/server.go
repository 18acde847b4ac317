package main

// The server runs in a child process (this binary, with serveEnv set), so that its
// allocations, garbage and goroutines are not counted against the clients
// measured in the parent.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// errorBody is the body of every 503: 8 KiB, more than go-retryablehttp
// drains (4 KiB) before it gives a connection back.
var errorBody = bytes.Repeat([]byte("e"), 8<<10)

var okBody = []byte("ok\n")

// serverStats are the counters the parent reads between runs.
type serverStats struct {
	newConns atomic.Int64 // connections accepted (ConnState StateNew)
	requests atomic.Int64 // requests answered, retries included
	flaky    atomic.Int64 // requests to /flaky, to pick every 4th
}

// serve runs the server: it prints "ADDR CTRLADDR" on stdout and serves
// until its stdin closes (the parent exited or stopped it).
func serve() error {
	var st serverStats
	var putSeen sync.Map // PUT id -> struct{}: first attempt gets a 503

	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		st.requests.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(okBody)
	})
	mux.HandleFunc("/flaky", func(w http.ResponseWriter, r *http.Request) {
		st.requests.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		if st.flaky.Add(1)%4 == 0 {
			w.Header().Set("Content-Length", strconv.Itoa(len(errorBody)))
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write(errorBody)
			return
		}
		_, _ = w.Write(okBody)
	})
	// /warm?id=X&n=N answers only when N requests with the same id are in
	// flight (or after 5 s), so that a warm-up of N concurrent requests
	// really opens N connections.
	var warmups sync.Map // id -> *warmup
	mux.HandleFunc("/warm", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		v, _ := warmups.LoadOrStore(r.URL.Query().Get("id"), &warmup{all: make(chan struct{})})
		wu := v.(*warmup)
		if wu.arrived.Add(1) == int64(n) {
			close(wu.all)
		}
		timer := time.NewTimer(5 * time.Second)
		defer timer.Stop()
		select {
		case <-wu.all:
		case <-timer.C:
		case <-r.Context().Done():
		}
		_, _ = w.Write(okBody)
	})
	mux.HandleFunc("/put", func(w http.ResponseWriter, r *http.Request) {
		st.requests.Add(1)
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if _, seen := putSeen.LoadOrStore(r.URL.Query().Get("id"), struct{}{}); !seen {
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "%d bytes\n", n)
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: mux,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				st.newConns.Add(1)
			}
		},
		// Bounds what a client that never closes a response body costs
		// this process; far longer than any pause inside a run.
		IdleTimeout:       15 * time.Second,
		ReadHeaderTimeout: 15 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()

	// Control listener: its connections are not counted.
	ctrlLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ctrl := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d %d\n", st.newConns.Load(), st.requests.Load())
	}), ReadHeaderTimeout: 15 * time.Second}
	go func() { _ = ctrl.Serve(ctrlLn) }()

	fmt.Printf("%s %s\n", ln.Addr(), ctrlLn.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// serveEnv set to 1 makes the binary run as the server. The parent starts
// its own executable with it and no arguments, so that a test binary (whose
// TestMain checks it) can be the server as well as the command.
const serveEnv = "KEEPALIVE_BENCH_SERVE"

type warmup struct {
	arrived atomic.Int64
	all     chan struct{} // closed when the n-th request arrives
}

// server is the parent's handle on the child server process.
type server struct {
	cmd   *exec.Cmd
	stdin io.Closer
	base  string // http://127.0.0.1:port
	ctrl  string
	hc    *http.Client
}

func startServer() (*server, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), serveEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("server did not start: %w", err)
	}
	addrs := strings.Fields(line)
	if len(addrs) != 2 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("server said %q", line)
	}
	return &server{
		cmd:   cmd,
		stdin: stdin,
		base:  "http://" + addrs[0],
		ctrl:  "http://" + addrs[1],
		hc:    &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second},
	}, nil
}

// stats returns the server's connections accepted and requests answered.
func (s *server) stats() (newConns, requests int64, err error) {
	resp, err := s.hc.Get(s.ctrl)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	_, err = fmt.Fscan(resp.Body, &newConns, &requests)
	return newConns, requests, err
}

func (s *server) stop() {
	s.hc.CloseIdleConnections()
	_ = s.stdin.Close()
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
}
