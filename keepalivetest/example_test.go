package keepalivetest_test

import (
	"fmt"
	"io"
	"net/http"

	"github.com/keepalive-go/keepalive"
	"github.com/keepalive-go/keepalive/keepalivetest"
)

// The server fails twice, then answers: the client retries and reuses its
// connection. In a test, write keepalivetest.NewServer(t, ...), which
// closes the server when the test ends; examples have no t, so they use
// Start and Close.
func ExampleStart() {
	s, _ := keepalivetest.Start(
		keepalivetest.Status(503),
		keepalivetest.Status(503).RetryAfter("0"),
		keepalivetest.Status(200).Body("ok"),
	)
	defer s.Close()

	client, _ := keepalive.NewClient(keepalive.WithBackoff(0, 0))
	defer client.CloseIdleConnections()
	resp, err := client.Get(s.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	fmt.Println(resp.StatusCode, string(body))
	fmt.Println("requests:", s.Requests(), "connections:", s.Connections())
	// Output:
	// 200 ok
	// requests: 3 connections: 1
}

// A POST without an Idempotency-Key is never sent twice, even on a 503.
func ExampleStatus_postIsNotRetried() {
	s, _ := keepalivetest.Start(keepalivetest.Status(503), keepalivetest.Status(200))
	defer s.Close()
	client, _ := keepalive.NewClient(keepalive.WithBackoff(0, 0))
	defer client.CloseIdleConnections()

	resp, err := client.Post(s.URL, "text/plain", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode, "after", s.Requests(), "request")
	// Output:
	// 503 after 1 request
}

// A connection reset is retried for an idempotent request.
func ExampleReset() {
	s, _ := keepalivetest.Start(keepalivetest.Reset(), keepalivetest.Status(204))
	defer s.Close()
	client, _ := keepalive.NewClient(keepalive.WithBackoff(0, 0))
	defer client.CloseIdleConnections()

	req, _ := http.NewRequest(http.MethodPut, s.URL, nil)
	resp, err := client.Do(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode, "after", s.Requests(), "requests")
	// Output:
	// 204 after 2 requests
}
