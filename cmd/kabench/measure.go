// This file holds the measurement: the probe that refuses to measure an
// endpoint that does not work, the loop of one run (n requests from c
// workers), latency percentiles, and the progress line.

package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// target is one endpoint to measure every client against.
type target struct {
	setup       string        // how the requests reach the server, for the report
	url         string        // the URL requested
	unix        string        // the unix socket the requests go to; empty: TCP
	serverConns func() int64  // connections the embedded server accepted; nil for -url
	diagnose    func() string // what the proxy logged, for a failed probe; nil without a proxy
	backends    *backendSet   // -backends: the addresses behind the URL's name (backends.go); nil without
}

// runResult is the outcome of one run of one client.
type runResult struct {
	Requests     int64            `json:"requests"` // answered without error
	Errors       int64            `json:"errors"`
	Seconds      float64          `json:"seconds"`
	RPS          float64          `json:"requests_per_second"`
	MsPerRequest float64          `json:"ms_per_request"`
	P50Ms        float64          `json:"p50_ms"`
	P99Ms        float64          `json:"p99_ms"`
	NewConns     int64            `json:"new_connections"`
	ServerConns  *int64           `json:"server_connections,omitempty"`
	Retries      int64            `json:"retries"`
	FirstError   string           `json:"first_error,omitempty"`
	Aborted      bool             `json:"aborted,omitempty"`        // stopped early: too many errors or interrupted
	Stopped      string           `json:"stopped,omitempty"`        // why it stopped early: max-errors or interrupted
	Protocol     string           `json:"protocol,omitempty"`       // the most common resp.Proto: HTTP/1.1, HTTP/2
	TLSHandshake *int64           `json:"tls_handshakes,omitempty"` // new TLS connections; nil without TLS
	ErrorKinds   map[string]int64 `json:"errors_by_kind,omitempty"` // failed requests by kind (notes.go)
	// keepalive's waits for the server (notes.go): retries that waited
	// for a Retry-After or a host pause, and how long in all; host
	// pauses (Stats().Pauses), and the attempts they held back
	// (Stats().PauseWaits).
	RetryAfterWaits int64   `json:"retry_after_waits,omitempty"`
	RetryAfterMs    float64 `json:"retry_after_wait_ms,omitempty"`
	HostPauses      int64   `json:"host_pauses,omitempty"`
	PauseWaits      int64   `json:"pause_waits,omitempty"`
	MeanMs          float64 `json:"mean_ms"`   // mean latency
	Phases          phaseMs `json:"phases_ms"` // mean time per request of each phase (phases.go)
	// Backends are the requests each backend of -backends got, server
	// side, in the order of report.Backends; nil without -backends.
	Backends []int64 `json:"requests_per_backend,omitempty"`

	latencies []time.Duration // of the requests without error
}

// clientResult is every run of one client against one target.
type clientResult struct {
	Setup       string      `json:"setup"`
	URL         string      `json:"url"`
	Client      string      `json:"client"`
	Description string      `json:"description"`
	Runs        []runResult `json:"runs"`
	Average     runResult   `json:"average"`
	// Spread is the range of the runs; nil for a single run.
	Spread *spread `json:"spread,omitempty"`
	// ErrorKinds counts the failed requests of every run by kind.
	ErrorKinds map[string]int64 `json:"errors_by_kind,omitempty"`
	// VsBaseline is the difference of the average requests per second to
	// the baseline's, in percent; nil for the baseline itself.
	VsBaseline *float64 `json:"vs_baseline_percent,omitempty"`
	// Histogram counts the latencies of all runs (chart.go).
	Histogram []bucket `json:"latency_histogram,omitempty"`
	// BackendShares are the shares of the requests of all runs each
	// backend of -backends got, in percent, in the order of
	// report.Backends; nil without -backends.
	BackendShares []float64 `json:"backend_share_percent,omitempty"`

	target target
}

// runDone, if set, is called after every run. Tests use it to interrupt a
// measurement at a known point.
var runDone func()

// measureAll measures every client against every target, cfg.runs times.
// It goes in rounds, run 1 of every client, then run 2 of every client, so
// that a machine that slows down for a while (other jobs, thermal limits)
// slows every client alike rather than the one measured at the time. A
// result for each client and target that got at least one run is returned;
// after an interrupt, that is fewer.
func measureAll(ctx context.Context, cfg *config, targets []target, p *progress) ([]clientResult, error) {
	var results []clientResult
	for _, t := range targets {
		for _, name := range cfg.clients {
			results = append(results, clientResult{Setup: t.setup, URL: t.address(), Client: name, Description: describe[name], target: t})
		}
	}
	done := new(atomic.Int64)
	if p != nil {
		done = &p.done
	}
rounds:
	for round := range cfg.runs {
		for i := range results {
			if ctx.Err() != nil {
				break rounds
			}
			res := &results[i]
			p.set(fmt.Sprintf("run %d/%d: %s, %s", round+1, cfg.runs, res.Setup, res.Client), cfg.requests*btoi(cfg.duration == 0))
			r, err := measureRun(ctx, cfg, res.Client, res.target, done)
			if err != nil {
				return nil, err
			}
			res.Runs = append(res.Runs, r)
			if runDone != nil {
				runDone()
			}
		}
	}
	results = slices.DeleteFunc(results, func(r clientResult) bool { return len(r.Runs) == 0 })
	for i := range results {
		results[i].Average = average(results[i].Runs)
		results[i].Spread = spreadOf(results[i].Runs)
		for _, run := range results[i].Runs {
			for k, n := range run.ErrorKinds {
				if results[i].ErrorKinds == nil {
					results[i].ErrorKinds = map[string]int64{}
				}
				results[i].ErrorKinds[k] += n
			}
		}
		results[i].Histogram = latencyHistogram(results[i].Runs)
	}
	return results, nil
}

// probe sends one request with a client of its own and fails unless the
// endpoint answers it without error. It keeps a benchmark of an endpoint
// that is down, or answers only errors, from running at all: such a run
// measures timeouts and retries, not keep-alive. Through a proxy, the
// error ends with what the proxy logged.
// With -backends, every backend is probed.
func probe(ctx context.Context, cfg *config, t target) error {
	n := 1
	if t.backends != nil {
		n = len(t.backends.addrs)
	}
	var err error
	for i := 0; i < n && err == nil; i++ {
		err = probeOnce(ctx, cfg, t, i)
	}
	if err != nil && t.diagnose != nil && ctx.Err() == nil {
		err = fmt.Errorf("%w\n%s", err, t.diagnose())
	}
	return err
}

// probeOnce probes t, through its backend i with -backends.
func probeOnce(ctx context.Context, cfg *config, t target, i int) error {
	url := t.url
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	setTransportTLS(tr, cfg, nil) // tls.go
	switch {
	case t.unix != "":
		tr.DialContext = unixDialer(t.unix)
		url = "unix:" + t.unix + " (" + t.url + ")"
	case t.backends != nil:
		tr.DialContext, tr.Proxy = t.backends.pinned(i), nil
		url = t.url + " (backend " + t.backends.endpoints()[i] + ")"
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: cfg.timeout}
	req, err := newRequest(ctx, cfg, t.url)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach %s: %w%s", url, err, nextStep(err, cfg))
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if failed(resp.StatusCode) {
		return fmt.Errorf("%s answered %q to a probe %s request; kabench measures endpoints that work: %s",
			url, resp.Status, cfg.method, statusNextStep(resp.StatusCode, cfg, t))
	}
	return nil
}

// nextStep names the flag that gets past a probe's transport error, if
// one does: an https server whose certificate authority is unknown.
func nextStep(err error, cfg *config) string {
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) && !cfg.tls {
		return "; trust the server's certificate authority with -cacert FILE (PEM), or skip verification with -insecure"
	}
	return ""
}

// statusNextStep names what to change when the probe got a failed status.
func statusNextStep(status int, cfg *config, t target) string {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return "give its credentials with -H 'Authorization: ...'"
	case http.StatusMethodNotAllowed, http.StatusNotImplemented:
		return "it does not take " + cfg.method + "; give another -method"
	}
	if t.unix == "" && t.diagnose == nil && !cfg.embedded() { // an http(s) -url
		return "point -url at one that answers 2xx, such as a health endpoint (http://HOST/health)"
	}
	return "point -path at one that answers 2xx, such as a health endpoint (-path /health)"
}

// failed reports whether a status counts as an error: a benchmark of 404s
// or 503s measures the wrong thing.
func failed(status int) bool { return status >= 400 }

// Why a run ended before its -n requests.
var (
	errTooManyErrors = errors.New("too many errors (-max-errors)")
	errRunTime       = errors.New("-z reached")
)

// measureRun sends cfg.requests requests, or requests for cfg.duration,
// from cfg.concurrency workers with a new client, and returns what it
// saw. done counts finished requests for the progress line.
func measureRun(ctx context.Context, cfg *config, name string, t target, done *atomic.Int64) (runResult, error) {
	client, err := newClient(name, t, cfg)
	if err != nil {
		return runResult{}, err
	}
	defer client.close()
	parent := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	start := time.Now() // before the -z timer starts: a run lasts at least -z
	if cfg.duration > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, cfg.duration, errRunTime)
		defer stop()
	}

	var (
		next, errs atomic.Int64
		workers    = make([]worker, cfg.concurrency)
		firstErr   error
		errOnce    sync.Once
		wg         sync.WaitGroup
	)
	fail := func(w *worker, err error) {
		if w.errKinds == nil {
			w.errKinds = map[string]int64{}
		}
		w.errKinds[errorKind(err, cfg.timeout)]++ // notes.go
		errOnce.Do(func() { firstErr = err })
		if n := errs.Add(1); cfg.maxErrors > 0 && n >= int64(cfg.maxErrors) {
			cancel(errTooManyErrors)
		}
	}
	server0, backends0 := serverConns(t), backendRequests(t)
	for i := range workers {
		w := &workers[i]
		if cfg.duration == 0 {
			w.lats = make([]time.Duration, 0, cfg.requests/cfg.concurrency+1)
		}
		wg.Go(func() {
			wctx := w.clock.withTrace(ctx)
			for ctx.Err() == nil {
				if cfg.duration == 0 && next.Add(1) > int64(cfg.requests) {
					return
				}
				d, proto, err := doRequest(wctx, client.Client, cfg, t.url, &w.clock)
				done.Add(1)
				if err != nil {
					if ctx.Err() == nil { // not a request cut off by the end of the run
						fail(w, err)
					}
					continue
				}
				w.lats = append(w.lats, d)
				w.protos.add(int(proto/10), int(proto%10))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)

	r := runResult{
		Errors:   errs.Load(),
		Seconds:  elapsed.Seconds(),
		NewConns: client.dials(),
		Retries:  client.retries(),
	}
	client.waits(&r)
	switch {
	case parent.Err() != nil:
		r.Aborted, r.Stopped = true, stoppedInterrupt
	case errors.Is(context.Cause(ctx), errTooManyErrors):
		r.Aborted, r.Stopped = true, stoppedMaxErrors
	}
	if t.serverConns != nil {
		n := t.serverConns() - server0
		r.ServerConns = &n
	}
	r.Backends = backendCounts(backends0, backendRequests(t)) // backends.go
	if firstErr != nil {
		r.FirstError = firstErr.Error()
	}
	var pc protoCounts
	for i := range workers {
		r.latencies = append(r.latencies, workers[i].lats...)
		pc.merge(&workers[i].protos)
		for k, n := range workers[i].errKinds {
			if r.ErrorKinds == nil {
				r.ErrorKinds = map[string]int64{}
			}
			r.ErrorKinds[k] += n
		}
	}
	r.Protocol = pc.most()
	if isHTTPS(t.url) {
		n := client.tlsHandshakes.Load()
		r.TLSHandshake = &n
	}
	r.Requests = int64(len(r.latencies))
	r.Phases = phasesOf(workers, r.Requests+r.Errors)
	r.setRates(cfg.concurrency)
	return r, nil
}

// How a run stopped early, in runResult.Stopped.
const (
	stoppedMaxErrors = "max-errors"
	stoppedInterrupt = "interrupted"
)

// worker is what one of a run's concurrent workers saw. Each has its own,
// so that the workers share no memory but the request counter.
type worker struct {
	lats     []time.Duration // of the requests without error
	protos   protoCounts
	errKinds map[string]int64 // failed requests by kind
	clock    phaseClock       // phases.go
}

// backendRequests returns the requests each backend of t got so far; nil
// without -backends.
func backendRequests(t target) []int64 {
	if t.backends == nil {
		return nil
	}
	return t.backends.requests()
}

func serverConns(t target) int64 {
	if t.serverConns == nil {
		return 0
	}
	return t.serverConns()
}

// doRequest sends one request and reads its response to the end, as a
// client must for its connection to be reused; all of it within
// cfg.timeout. It returns the latency and the protocol, as
// ProtoMajor*10 + ProtoMinor.
func doRequest(ctx context.Context, c *http.Client, cfg *config, url string, clock *phaseClock) (time.Duration, uint8, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	req, err := newRequest(ctx, cfg, url) // request.go
	if err != nil {
		return 0, 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	clock.bodyRead()
	if err != nil {
		return 0, 0, &readError{cfg.method, url, err}
	}
	if failed(resp.StatusCode) {
		return 0, 0, &statusError{cfg.method, url, resp.Status}
	}
	return time.Since(start), uint8(resp.ProtoMajor*10 + resp.ProtoMinor), nil
}

// setRates fills the rates and percentiles from Requests, Seconds and the
// latencies. Time per request is ab's: the mean time one of c concurrent
// users waits for a request, c * elapsed / requests.
func (r *runResult) setRates(concurrency int) {
	if r.Requests > 0 && r.Seconds > 0 {
		r.RPS = float64(r.Requests) / r.Seconds
		r.MsPerRequest = float64(concurrency) * r.Seconds * 1000 / float64(r.Requests)
	}
	slices.Sort(r.latencies)
	r.MeanMs = meanMs(r.latencies)
	r.P50Ms = ms(percentile(r.latencies, 50))
	r.P99Ms = ms(percentile(r.latencies, 99))
}

// percentile returns the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (len(sorted)*p + 99) / 100 // ceil(len*p/100), at least 1 for p > 0
	return sorted[max(rank, 1)-1]
}

func meanMs(lats []time.Duration) float64 {
	if len(lats) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range lats {
		sum += d
	}
	return ms(sum / time.Duration(len(lats)))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// average sums the runs into their Average row: the mean of the rates and
// of the counts per run, and the percentiles of all runs' latencies
// together.
func average(runs []runResult) runResult {
	var a runResult
	var rps, msPer, seconds float64
	var ph phaseMs
	var conns, server, retries, reqs, errs, handshakes, waits, pauses, held int64
	var waited float64
	protos := map[string]int{}
	var all []time.Duration
	for _, r := range runs {
		rps += r.RPS
		msPer += r.MsPerRequest
		ph = phaseMs{ph.DNS + r.Phases.DNS, ph.Connect + r.Phases.Connect, ph.TLS + r.Phases.TLS, ph.Wait + r.Phases.Wait, ph.Read + r.Phases.Read}
		seconds += r.Seconds
		reqs += r.Requests
		errs += r.Errors
		conns += r.NewConns
		retries += r.Retries
		waits, pauses, held, waited = waits+r.RetryAfterWaits, pauses+r.HostPauses, held+r.PauseWaits, waited+r.RetryAfterMs
		if r.ServerConns != nil {
			server += *r.ServerConns
			a.ServerConns = new(int64)
		}
		if a.FirstError == "" {
			a.FirstError = r.FirstError
		}
		a.Aborted = a.Aborted || r.Aborted
		if r.TLSHandshake != nil {
			handshakes += *r.TLSHandshake
			a.TLSHandshake = new(int64)
		}
		if r.Protocol != "" {
			protos[r.Protocol]++
		}
		all = append(all, r.latencies...)
	}
	n := int64(len(runs))
	if n == 0 {
		return a
	}
	f := float64(n)
	a.RPS, a.MsPerRequest, a.Seconds = rps/f, msPer/f, seconds/f
	a.Phases = phaseMs{ph.DNS / f, ph.Connect / f, ph.TLS / f, ph.Wait / f, ph.Read / f}
	a.Requests, a.Errors = roundDiv(reqs, n), roundDiv(errs, n)
	a.NewConns, a.Retries = roundDiv(conns, n), roundDiv(retries, n)
	a.RetryAfterWaits, a.HostPauses, a.PauseWaits = roundDiv(waits, n), roundDiv(pauses, n), roundDiv(held, n)
	a.RetryAfterMs = waited / f
	a.Backends = averageBackends(runs) // backends.go
	if a.ServerConns != nil {
		*a.ServerConns = roundDiv(server, n)
	}
	if a.TLSHandshake != nil {
		*a.TLSHandshake = roundDiv(handshakes, n)
	}
	for p, c := range protos { // the protocol most runs used; HTTP/2 on a tie
		if c > protos[a.Protocol] || c == protos[a.Protocol] && p > a.Protocol {
			a.Protocol = p
		}
	}
	slices.Sort(all)
	a.MeanMs = meanMs(all)
	a.P50Ms = ms(percentile(all, 50))
	a.P99Ms = ms(percentile(all, 99))
	return a
}

// spread is the range of a client's runs: of each measure, the lowest
// and the highest value of a run, [min, max].
type spread struct {
	RPS          minMax[float64] `json:"requests_per_second"`
	MsPerRequest minMax[float64] `json:"ms_per_request"`
	P50Ms        minMax[float64] `json:"p50_ms"`
	P99Ms        minMax[float64] `json:"p99_ms"`
	NewConns     minMax[int64]   `json:"new_connections"`
}

type minMax[T float64 | int64] [2]T

func (m *minMax[T]) add(v T, first bool) {
	if first {
		*m = minMax[T]{v, v}
		return
	}
	m[0], m[1] = min(m[0], v), max(m[1], v)
}

// format writes the range as min-max, with prec decimals.
func (m minMax[T]) format(prec int) string {
	return commas(float64(m[0]), prec) + "-" + commas(float64(m[1]), prec)
}

// plusMinus writes half the range relative to avg, in percent: "±4.2%".
func (m minMax[T]) plusMinus(avg float64) string {
	if avg == 0 {
		return "±0%"
	}
	p := float64(m[1]-m[0]) / 2 / avg * 100
	if p >= 10 {
		return fmt.Sprintf("±%.0f%%", p)
	}
	return fmt.Sprintf("±%.1f%%", p)
}

// spreadOf returns the range of runs, or nil for fewer than two.
func spreadOf(runs []runResult) *spread {
	if len(runs) < 2 {
		return nil
	}
	var s spread
	for i, r := range runs {
		first := i == 0
		s.RPS.add(r.RPS, first)
		s.MsPerRequest.add(r.MsPerRequest, first)
		s.P50Ms.add(r.P50Ms, first)
		s.P99Ms.add(r.P99Ms, first)
		s.NewConns.add(r.NewConns, first)
	}
	return &s
}

func roundDiv(a, b int64) int64 { return (a + b/2) / b }

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// progress prints a progress line on w, rewriting it in place, until stop
// is called. It is meant for a terminal only.
type progress struct {
	w     io.Writer
	done  atomic.Int64
	mu    sync.Mutex
	label string
	total int64
	quit  chan struct{}
	wg    sync.WaitGroup
}

func startProgress(w io.Writer) *progress {
	p := &progress{w: w, quit: make(chan struct{})}
	p.wg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.quit:
				fmt.Fprint(p.w, "\r\033[K")
				return
			case <-tick.C:
				// Printing under the lock keeps a line from landing after
				// clear.
				p.mu.Lock()
				switch {
				case p.label == "":
				case p.total == 0: // -z: no count to reach
					fmt.Fprintf(p.w, "\r\033[K%s: %d requests", p.label, p.done.Load())
				default:
					fmt.Fprintf(p.w, "\r\033[K%s: %d/%d requests", p.label, p.done.Load(), p.total)
				}
				p.mu.Unlock()
			}
		}
	})
	return p
}

// set starts the count of a new run. Like clear and stop, it does nothing
// on a nil progress, which is what a non-terminal gets.
func (p *progress) set(label string, total int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.label, p.total = label, int64(total)
	p.done.Store(0)
	p.mu.Unlock()
}

func (p *progress) stop() {
	if p == nil {
		return
	}
	close(p.quit)
	p.wg.Wait()
}
