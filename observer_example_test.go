package keepalive_test

import (
	"fmt"
	"net/http"

	"github.com/keepalive-go/keepalive"
	"github.com/keepalive-go/keepalive/keepalivetest"
)

// Hooks see each attempt and each retry decision.
func ExampleWithObserver() {
	s, _ := keepalivetest.Start(keepalivetest.Status(503).RetryAfter("0"), keepalivetest.Status(200))
	defer s.Close()

	client, _ := keepalive.NewClient(
		keepalive.WithBackoff(0, 0),
		keepalive.WithObserver(keepalive.Observer{
			OnAttemptEnd: func(e keepalive.AttemptEndEvent) {
				fmt.Println("attempt", e.Attempt, "status", e.Status)
			},
			OnRetry: func(e keepalive.RetryEvent) {
				fmt.Println("retrying on", e.Reason, e.Status)
			},
		}),
	)
	defer client.CloseIdleConnections()

	resp, err := client.Get(s.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	// Output:
	// attempt 1 status 503
	// retrying on status 503
	// attempt 2 status 200
}

// Stats count in total and per host; Reused comes from the dial counter.
func ExampleTransport_HostStats() {
	s, _ := keepalivetest.Start(keepalivetest.Status(502), keepalivetest.Status(200))
	defer s.Close()

	tr, _ := keepalive.NewTransport(keepalive.WithBackoff(0, 0))
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for range 3 {
		resp, err := client.Get(s.URL)
		if err != nil {
			fmt.Println(err)
			return
		}
		resp.Body.Close()
	}

	for _, st := range tr.HostStats() { // one host here
		fmt.Printf("requests %d, attempts %d, retries %d, dials %d, reused %d (%.0f%%)\n",
			st.Requests, st.Attempts, st.Retries, st.Dials, st.Reused(), 100*st.ReuseRatio())
	}
	// Output:
	// requests 3, attempts 4, retries 1, dials 1, reused 3 (75%)
}
