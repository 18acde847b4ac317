// This file holds the breakdown of a request's time into phases (DNS,
// connect, TLS, waiting for the response, reading it), from
// net/http/httptrace: the time keep-alive saves is the dial phases'.

package main

import (
	"context"
	"crypto/tls"
	"net/http/httptrace"
	"sync/atomic"
	"time"
)

// phase indexes the phases of a request.
type phase int

const (
	phaseDNS     phase = iota // resolving the host
	phaseConnect              // TCP (or unix socket) connect
	phaseTLS                  // TLS handshake
	phaseWait                 // from the request written to the first byte of the response
	phaseRead                 // from the first byte to the end of the body
	numPhases
)

// phaseMs is the mean time per request of each phase, in milliseconds.
// The dial phases are the time of the dials spread over every request:
// a request over a reused connection adds nothing to them.
type phaseMs struct {
	DNS     float64 `json:"dns"`
	Connect float64 `json:"connect"`
	TLS     float64 `json:"tls"`
	Wait    float64 `json:"wait"`
	Read    float64 `json:"read"`
}

// traceRequests turns the phase trace on. Benchmarks turn it off to
// measure what it costs: over a reused connection it reads the clock 3
// times and allocates nothing (BenchmarkPhaseHooks), a fraction of a
// percent of a request's time, so it is always on.
var traceRequests = true

// phaseClock times the phases of one worker's requests. Its hooks run on
// the goroutines net/http uses (the dial, and a connection's read and
// write loops), sometimes after the request that started them has
// ended (a dial that lost its race to a connection coming free), so each
// mark is an atomic and each phase adds its time once, when it ends. A
// worker has one request in flight; a dial of its that outlives the
// request may overlap with the next request's, and then the two dials'
// marks mix: their sum stays about right.
type phaseClock struct {
	dnsStart, connectStart, tlsStart, wrote, firstByte atomic.Int64 // sinceStart() readings; 0: none
	sum                                                [numPhases]atomic.Int64
}

// epoch is the reference of sinceStart: its monotonic reading makes the
// marks immune to wall clock steps.
var epoch = time.Now()

func sinceStart() int64 { return int64(time.Since(epoch)) }

// end adds the time from the mark start to now (a sinceStart reading) to
// phase p, and clears the mark.
func (c *phaseClock) end(start *atomic.Int64, p phase, now int64) {
	if s := start.Swap(0); s != 0 {
		c.sum[p].Add(now - s)
	}
}

// withTrace returns ctx with c's hooks, once per worker: the requests'
// contexts derive from it, so tracing a request allocates nothing more.
func (c *phaseClock) withTrace(ctx context.Context) context.Context {
	if !traceRequests {
		return ctx
	}
	mark := func(m *atomic.Int64) { m.Store(sinceStart()) }
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		DNSStart:          func(httptrace.DNSStartInfo) { mark(&c.dnsStart) },
		DNSDone:           func(httptrace.DNSDoneInfo) { c.end(&c.dnsStart, phaseDNS, sinceStart()) },
		ConnectStart:      func(string, string) { mark(&c.connectStart) },
		ConnectDone:       func(string, string, error) { c.end(&c.connectStart, phaseConnect, sinceStart()) },
		TLSHandshakeStart: func() { mark(&c.tlsStart) },
		TLSHandshakeDone:  func(tls.ConnectionState, error) { c.end(&c.tlsStart, phaseTLS, sinceStart()) },
		WroteRequest:      func(httptrace.WroteRequestInfo) { mark(&c.wrote) },
		GotFirstResponseByte: func() {
			now := sinceStart()
			c.end(&c.wrote, phaseWait, now)
			c.firstByte.Store(now)
		},
	})
}

// bodyRead ends the read phase of the request whose body was just read.
func (c *phaseClock) bodyRead() {
	if traceRequests {
		c.end(&c.firstByte, phaseRead, sinceStart())
	}
}

// phasesOf returns the mean of each phase over n requests, from the
// clocks of a run's workers.
func phasesOf(workers []worker, n int64) phaseMs {
	var sum [numPhases]int64
	for i := range workers {
		for p := range numPhases {
			sum[p] += workers[i].clock.sum[p].Load()
		}
	}
	if n == 0 {
		return phaseMs{}
	}
	mean := func(p phase) float64 { return ms(time.Duration(sum[p] / n)) }
	return phaseMs{mean(phaseDNS), mean(phaseConnect), mean(phaseTLS), mean(phaseWait), mean(phaseRead)}
}
