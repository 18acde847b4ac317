package keepalive_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/keepalive-go/keepalive"
	"github.com/keepalive-go/keepalive/keepalivetest"
)

// flaky starts a server that answers 503 to the first n requests, then
// "hello"; the caller closes it. In a test, keepalivetest.NewServer closes
// it when the test ends.
func flaky(n int) *keepalivetest.Server {
	var script []keepalivetest.Step
	for range n {
		script = append(script, keepalivetest.Status(http.StatusServiceUnavailable))
	}
	s, err := keepalivetest.Start(append(script, keepalivetest.Status(http.StatusOK).Body("hello"))...)
	if err != nil {
		panic(err)
	}
	return s
}

func ExampleNewClient() {
	srv := flaky(2)
	defer srv.Close()

	client, err := keepalive.NewClient()
	if err != nil {
		panic(err)
	}
	defer client.CloseIdleConnections()

	resp, err := client.Get(srv.URL)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body))

	stats := client.Transport.(*keepalive.Transport).Stats()
	fmt.Printf("attempts %d, retries %d, connections %d\n", stats.Attempts, stats.Retries, stats.Dials)
	// Output:
	// 200 hello
	// attempts 3, retries 2, connections 1
}

func ExampleNewClient_options() {
	srv := flaky(1)
	defer srv.Close()

	client, err := keepalive.NewClient(
		keepalive.WithMaxIdleConnsPerHost(64),
		keepalive.WithConnectTimeout(2*time.Second),
		keepalive.WithReadTimeout(5*time.Second),
		keepalive.WithMaxRetries(2),
		keepalive.WithRetryStatuses(429, 502, 503, 504),
		keepalive.WithBackoff(50*time.Millisecond, time.Second),
	)
	if err != nil {
		panic(err)
	}
	defer client.CloseIdleConnections()

	resp, err := client.Get(srv.URL)
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode)
	// Output: 200
}

func ExampleNewClient_invalidOption() {
	_, err := keepalive.NewClient(keepalive.WithMaxRetries(-1))
	fmt.Println(err)
	// Output: keepalive: invalid WithMaxRetries: must not be negative, got -1
}

// A POST is not idempotent: it is sent once, and the 503 returned as it is.
// An Idempotency-Key makes it safe to retry.
func ExampleNewClient_post() {
	srv := flaky(1)
	defer srv.Close()
	client, _ := keepalive.NewClient()
	defer client.CloseIdleConnections()

	resp, _ := client.Post(srv.URL, "text/plain", strings.NewReader("order #1"))
	resp.Body.Close()
	fmt.Println("without a key:", resp.StatusCode)

	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("order #2"))
	req.Header.Set("Idempotency-Key", "order-2")
	resp, _ = client.Do(req)
	resp.Body.Close()
	fmt.Println("with a key:", resp.StatusCode)

	// Output:
	// without a key: 503
	// with a key: 200
}

func ExampleRetryError() {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now

	client, _ := keepalive.NewClient(keepalive.WithMaxRetries(2),
		keepalive.WithBackoff(time.Millisecond, 10*time.Millisecond))
	defer client.CloseIdleConnections()

	_, err := client.Get("http://" + addr)
	var re *keepalive.RetryError
	if errors.As(err, &re) {
		fmt.Println(re.Method, "attempts:", re.Attempts)
	}
	var op *net.OpError
	fmt.Println("last error reachable:", errors.As(err, &op) && op.Op == "dial")
	// Output:
	// GET attempts: 3
	// last error reachable: true
}
