package keepalivetest_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

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

// The first answer is cut off after 5 bytes of its body: with a response
// buffer, the client reads bodies whole before it returns them, and
// retries the cut one.
func ExampleStep_Cut() {
	s, _ := keepalivetest.Start(
		keepalivetest.Status(200).Body("the whole answer").Cut(5),
		keepalivetest.Status(200).Body("the whole answer"),
	)
	defer s.Close()
	client, _ := keepalive.NewClient(keepalive.WithResponseBuffer(1<<20), keepalive.WithBackoff(0, 0))
	defer client.CloseIdleConnections()

	resp, err := client.Get(s.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(string(body), "after", s.Requests(), "requests")
	// Output:
	// the whole answer after 2 requests
}

// A PUT that meets a 503 is sent again with its body, byte for byte.
func ExampleServer_Bodies() {
	s, _ := keepalivetest.Start(keepalivetest.Status(503), keepalivetest.Status(204))
	defer s.Close()
	client, _ := keepalive.NewClient(keepalive.WithBackoff(0, 0))
	defer client.CloseIdleConnections()

	req, _ := http.NewRequest(http.MethodPut, s.URL, strings.NewReader(`{"n":1}`))
	resp, err := client.Do(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	for _, b := range s.Bodies() {
		fmt.Println(string(b))
	}
	// Output:
	// {"n":1}
	// {"n":1}
}

// A step of one's own: the server echoes the request's method.
func ExampleHandle() {
	s, _ := keepalivetest.Start(keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "you sent a ", r.Method)
	}))
	defer s.Close()
	client, _ := keepalive.NewClient()
	defer client.CloseIdleConnections()

	req, _ := http.NewRequest(http.MethodDelete, s.URL, nil)
	resp, err := client.Do(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(string(body))
	// Output:
	// you sent a DELETE
}

// Over HTTPS the client negotiates HTTP/2; TLSConfig makes it trust the
// server's certificate.
func ExampleStartTLS() {
	s, _ := keepalivetest.StartTLS(keepalivetest.Status(503), keepalivetest.Status(200))
	defer s.Close()
	client, _ := keepalive.NewClient(keepalive.WithTLSConfig(s.TLSConfig()), keepalive.WithBackoff(0, 0))
	defer client.CloseIdleConnections()

	resp, err := client.Get(s.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode, resp.Proto, "connections:", s.Connections())
	// Output:
	// 200 HTTP/2.0 connections: 1
}

// A server that drops what arrives on a connection idle for 50 ms: a
// plain http.Client loses the POST it sends after a pause (net/http
// resends only idempotent requests). keepalive, told the server's idle
// timeout by its Keep-Alive header, does not write on a connection that
// old, and sends the POST on a new one.
func ExampleStep_IdleDrop() {
	const idle = 50 * time.Millisecond
	step := keepalivetest.Status(200).IdleDrop(idle)
	plain, _ := keepalivetest.Start(step)
	defer plain.Close()
	told, _ := keepalivetest.Start(step.Header("Keep-Alive", "timeout=1").IdleDrop(time.Second))
	defer told.Close()

	post := func(c *http.Client, url string) error {
		resp, err := c.Post(url, "text/plain", strings.NewReader("once"))
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	bare := &http.Client{Transport: &http.Transport{}}
	defer bare.CloseIdleConnections()
	_ = post(bare, plain.URL)
	time.Sleep(2 * idle) // the connection goes idle
	fmt.Println("http.Client:", post(bare, plain.URL) != nil)

	client, _ := keepalive.NewClient()
	defer client.CloseIdleConnections()
	_ = post(client, told.URL)
	time.Sleep(time.Second) // past the announced 1 s, less keepalive's margin
	fmt.Println("keepalive:", post(client, told.URL) != nil)
	// Output:
	// http.Client: true
	// keepalive: false
}
