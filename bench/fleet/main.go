// Command fleet measures, as a user would, where keepalive.NewClient()
// and Go's default client send 32 goroutines' GETs for the name
// fleet.test, which /etc/hosts must resolve to 127.0.0.2 to 127.0.0.9
// (Linux answers on all of 127.0.0.0/8); with the argument "join", it then
// adds 127.0.0.10 to /etc/hosts (it must be writable: run it as root, on a
// machine of your own) and measures the new address's share over the next
// 40 s. See BENCHMARKS.md, section 3b.
//
//	for i in 2 3 4 5 6 7 8 9; do echo "127.0.0.$i fleet.test"; done >> /etc/hosts
//	go run ./fleet join
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keepalive-go/keepalive"
)

func main() {
	var hits [9]atomic.Int64
	first, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		panic(err)
	}
	_, port, _ := net.SplitHostPort(first.Addr().String())
	lns := []net.Listener{first}
	for i := 1; i < 9; i++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%s", 2+i, port))
		if err != nil {
			panic(err)
		}
		lns = append(lns, ln)
	}
	for i, ln := range lns {
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits[i].Add(1); io.WriteString(w, "ok") }))
	}
	url := "http://fleet.test:" + port + "/"
	run := func(name string, c *http.Client, d time.Duration) {
		var before [9]int64
		for i := range hits {
			before[i] = hits[i].Load()
		}
		var wg sync.WaitGroup
		var failed atomic.Int64
		stop := time.Now().Add(d)
		for range 32 {
			wg.Go(func() {
				for time.Now().Before(stop) {
					resp, err := c.Get(url)
					if err != nil {
						failed.Add(1)
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		}
		wg.Wait()
		var total int64
		var got [9]int64
		for i := range hits {
			got[i] = hits[i].Load() - before[i]
			total += got[i]
		}
		fmt.Printf("%s: %d requests in %v, %d failed\n", name, total, d, failed.Load())
		for i := range got {
			fmt.Printf("  127.0.0.%d: %6d (%5.1f%%)\n", 2+i, got[i], 100*float64(got[i])/float64(max(total, 1)))
		}
	}
	def := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	run("default client", def, 4*time.Second)
	ka, _ := keepalive.NewClient()
	run("keepalive.NewClient()", ka, 4*time.Second)
	if len(os.Args) > 1 && os.Args[1] == "join" {
		f, _ := os.OpenFile("/etc/hosts", os.O_APPEND|os.O_WRONLY, 0)
		fmt.Fprintln(f, "127.0.0.10 fleet.test")
		f.Close()
		fmt.Println("added 127.0.0.10 to /etc/hosts")
		start := time.Now()
		for time.Since(start) < 40*time.Second {
			run(fmt.Sprintf("keepalive, %2.0f s after the join", time.Since(start).Seconds()), ka, 5*time.Second)
		}
	}
}
