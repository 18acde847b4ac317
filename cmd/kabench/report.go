// This file renders the results: a table per client in the shape of the
// original measurements (Test run 1..N, Average), a summary with the
// difference to the baseline, and the JSON form for -json.

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"
)

// report is the whole result; it is what -json prints.
type report struct {
	URL         string         `json:"url"`
	Embedded    bool           `json:"embedded_server"`
	Proxy       string         `json:"proxy,omitempty"`
	Upstream    string         `json:"upstream,omitempty"` // -upstream: the app behind the proxy
	Method      string         `json:"method"`
	BodyBytes   int            `json:"body_bytes"`
	BodyFile    string         `json:"body_file,omitempty"`
	Headers     []string       `json:"headers,omitempty"` // the names of -H's headers: their values may be secrets
	Host        string         `json:"host,omitempty"`    // -H Host
	Requests    int            `json:"requests_per_run,omitempty"`
	RunSeconds  float64        `json:"run_seconds,omitempty"` // -z
	Concurrency int            `json:"concurrency"`
	Runs        int            `json:"runs"`
	TimeoutMs   int64          `json:"timeout_ms"`
	Go          string         `json:"go"`
	Platform    string         `json:"platform"`
	CPUs        int            `json:"cpus"`
	Baseline    string         `json:"baseline,omitempty"`
	Targets     []targetInfo   `json:"targets,omitempty"`  // several -url, or nginx in front of -upstream
	Backends    []string       `json:"backends,omitempty"` // -backends: the addresses behind the URL's name, in order (backends.go)
	Results     []clientResult `json:"results"`
	Errors      int64          `json:"errors"` // failed requests over all runs
	MaxErrors   int            `json:"max_errors"`
	Notes       []string       `json:"notes,omitempty"` // what the summary says in words (notes.go)
	Interrupted bool           `json:"interrupted,omitempty"`
}

func newReport(cfg *config, url string) *report {
	return &report{
		URL:         url,
		Embedded:    cfg.embedded(),
		Proxy:       cfg.proxy,
		Upstream:    cfg.upstream,
		Method:      cfg.method,
		BodyBytes:   cfg.bodySize,
		BodyFile:    cfg.bodyFile,
		Headers:     headerNames(cfg.header),
		Host:        cfg.host,
		Requests:    cfg.requests * btoi(cfg.duration == 0),
		RunSeconds:  cfg.duration.Seconds(),
		Concurrency: cfg.concurrency,
		Runs:        cfg.runs,
		TimeoutMs:   cfg.timeout.Milliseconds(),
		MaxErrors:   cfg.maxErrors,
		Go:          runtime.Version(),
		Platform:    runtime.GOOS + "/" + runtime.GOARCH,
		CPUs:        runtime.NumCPU(),
	}
}

// compare sets every result's difference to the baseline: the
// nokeepalive client of the first setup if it was measured, else the first
// result.
func (r *report) compare() {
	if len(r.Results) == 0 {
		return
	}
	base := &r.Results[0]
	for i := range r.Results {
		if res := &r.Results[i]; res.Setup == r.Results[0].Setup && res.Client == clientNoKeepAlive {
			base = res
			break
		}
	}
	r.Baseline = base.Client + " (" + base.Setup + ")"
	for i := range r.Results {
		res := &r.Results[i]
		if res == base || base.Average.RPS == 0 {
			continue
		}
		d := (res.Average.RPS/base.Average.RPS - 1) * 100
		res.VsBaseline = &d
	}
}

func (r *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// server names what answered: the URL, and what serves it when kabench
// started it (the embedded server, or an upstream behind a proxy).
func (r *report) server() string {
	switch {
	case r.Embedded && r.Proxy != "":
		return r.URL + " (embedded server behind " + r.Proxy + ")"
	case r.Embedded && len(r.Backends) > 1:
		return r.URL + " (embedded server on " + plural(len(r.Backends), "backend") + ", " + r.backendRange() + ")"
	case r.Embedded:
		return r.URL + " (embedded server)"
	case r.Upstream != "":
		return r.URL + " (" + r.Upstream + " behind " + r.Proxy + ")"
	}
	return r.URL
}

// writeHeader says what is measured, before the first table.
func (r *report) writeHeader(w io.Writer) {
	where := r.server()
	if !r.Embedded && r.Upstream == "" && len(r.Targets) > 1 {
		where = plural(len(r.Targets), "target") + ":"
	}
	fmt.Fprintf(w, "kabench: %s %s%s\n", r.Method, where, r.shape())
	if len(r.Targets) > 1 {
		writeTargets(w, r.Targets) // targets.go
	}
	fmt.Fprintf(w, "%s, concurrency %d, %s per client in rounds, a new client per run; %s %s, %s\n\n",
		r.perRun(), r.Concurrency, plural(r.Runs, "run"), r.Go, r.Platform, plural(r.CPUs, "CPU"))
}

// shape describes the request beyond its method and URL: body, headers
// (by name only: their values may be secrets) and Host.
func (r *report) shape() string {
	var s strings.Builder
	if r.BodyBytes > 0 || r.BodyFile != "" {
		fmt.Fprintf(&s, ", %s-byte body", commas(float64(r.BodyBytes), 0))
		if r.BodyFile != "" {
			fmt.Fprintf(&s, " from %s", r.BodyFile)
		}
	}
	if len(r.Headers) > 0 {
		fmt.Fprintf(&s, ", headers %s", strings.Join(r.Headers, ", "))
	}
	if r.Host != "" {
		fmt.Fprintf(&s, ", Host %s", r.Host)
	}
	return s.String()
}

// perRun says how long a run is: -n requests, or -z.
func (r *report) perRun() string {
	if r.RunSeconds > 0 {
		return "each run " + time.Duration(r.RunSeconds*float64(time.Second)).String()
	}
	return plural(r.Requests, "request") + " per run"
}

func headerNames(h http.Header) []string {
	var names []string
	for name := range h {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	if y, ok := strings.CutSuffix(noun, "y"); ok {
		return commas(float64(n), 0) + " " + y + "ies"
	}
	return commas(float64(n), 0) + " " + noun + "s"
}

// columns of the per-client and summary tables.
var columns = []string{"Requests/s", "Time/request (ms)", "p50 (ms)", "p99 (ms)", "New conns", "Server conns", "Errors", "Retries"}

func (r *report) hasServerConns() bool { return r.Embedded }

// writeClient writes the table of one client: a row per run and the
// average.
func (r *report) writeClient(w io.Writer, res *clientResult) {
	fmt.Fprintf(w, "%s, %s: %s\n", res.Setup, res.Client, res.Description)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	labels := make([]string, len(res.Runs)+2)
	for i := range res.Runs {
		labels[i+1] = fmt.Sprintf("Test run %d", i+1)
	}
	labels[len(labels)-1] = "Average"
	leftAlign(labels)
	fmt.Fprintf(tw, "%s\t%s\t\n", labels[0], strings.Join(r.columns(), "\t"))
	for i := range res.Runs {
		fmt.Fprintf(tw, "%s\t%s\t\n", labels[i+1], strings.Join(r.cells(&res.Runs[i]), "\t"))
	}
	fmt.Fprintf(tw, "%s\t%s\t\n", labels[len(labels)-1], strings.Join(r.cells(&res.Average), "\t"))
	if sp := res.Spread; sp != nil {
		cells := []string{sp.RPS.format(1), sp.MsPerRequest.format(3), sp.P50Ms.format(3), sp.P99Ms.format(3), sp.NewConns.format(0)}
		fmt.Fprintf(tw, "%s\t%s\t\n", leftAlign1("Min-max", labels[0]), strings.Join(cells, "\t"))
	}
	tw.Flush()
	r.writeErrors(w, res) // notes.go
	fmt.Fprintln(w)
}

// writeSummary writes every client's average side by side, with the
// difference to the baseline.
func (r *report) writeSummary(w io.Writer) {
	if len(r.Results) == 0 {
		return
	}
	fmt.Fprintf(w, "Summary (averages; difference in requests/s to %s)\n", r.Baseline)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	setups, clients := []string{"Setup"}, []string{"Client"}
	for _, res := range r.Results {
		setups, clients = append(setups, res.Setup), append(clients, res.Client)
	}
	leftAlign(setups)
	leftAlign(clients)
	fmt.Fprintf(tw, "%s\t%s\t%s\tvs baseline\t\n", setups[0], clients[0], strings.Join(r.columns(), "\t"))
	for i := range r.Results {
		res := &r.Results[i]
		diff := "baseline"
		if res.VsBaseline != nil {
			diff = fmt.Sprintf("%+.1f%%", *res.VsBaseline)
		} else if r.Baseline != res.Client+" ("+res.Setup+")" {
			diff = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", setups[i+1], clients[i+1], strings.Join(r.summaryCells(res), "\t"), diff)
	}
	tw.Flush()
	r.writePhases(w)
	r.writeBackends(w)     // backends.go
	writeNotes(w, r.Notes) // notes.go
}

// summaryCells are the cells of a client's average in the summary: with
// several runs, the rates and percentiles get the spread of the runs
// next to them, as +- half the range from the slowest to the fastest
// run, relative to the average.
func (r *report) summaryCells(res *clientResult) []string {
	c := r.cells(&res.Average)
	if sp := res.Spread; sp != nil {
		a := &res.Average
		// Padded to one width, so that the averages stay aligned.
		pm := func(s string) string { return " " + strings.Repeat(" ", max(0, 5-utf8.RuneCountInString(s))) + s }
		c[0] += pm(sp.RPS.plusMinus(a.RPS))
		c[1] += pm(sp.MsPerRequest.plusMinus(a.MsPerRequest))
		c[2] += pm(sp.P50Ms.plusMinus(a.P50Ms))
		c[3] += pm(sp.P99Ms.plusMinus(a.P99Ms))
	}
	return c
}

// leftAlign1 pads label to the width of like.
func leftAlign1(label, like string) string {
	return label + strings.Repeat(" ", max(0, len(like)-len(label)))
}

// writePhases writes where each client's time went, per request: the
// dials' DNS, connect and TLS time spread over every request, the wait
// for the response and its read (phases.go).
func (r *report) writePhases(w io.Writer) {
	fmt.Fprintln(w, "\nWhere the time goes (ms per request, averages)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	setups, clients := []string{"Setup"}, []string{"Client"}
	for _, res := range r.Results {
		setups, clients = append(setups, res.Setup), append(clients, res.Client)
	}
	leftAlign(setups)
	leftAlign(clients)
	https := isHTTPS(r.URL)
	head := []string{"DNS", "Connect", "TLS", "Wait", "Read", "Mean latency"}
	if !https {
		head = slices.Delete(head, 2, 3)
	}
	fmt.Fprintf(tw, "%s\t%s\t%s\t\n", setups[0], clients[0], strings.Join(head, "\t"))
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }
	for i := range r.Results {
		a := &r.Results[i].Average
		cells := []string{f(a.Phases.DNS), f(a.Phases.Connect), f(a.Phases.TLS), f(a.Phases.Wait), f(a.Phases.Read), f(a.MeanMs)}
		if !https {
			cells = slices.Delete(cells, 2, 3)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t\n", setups[i+1], clients[i+1], strings.Join(cells, "\t"))
	}
	tw.Flush()
	fmt.Fprintln(w, "DNS, Connect, TLS: the dials' time spread over every request (a reused connection adds none); Wait: from the request written to the first response byte; Read: the rest of the response.")
}

// leftAlign pads labels to one width, so that a right-aligning tabwriter
// leaves them aligned on the left.
func leftAlign(labels []string) {
	w := 0
	for _, l := range labels {
		w = max(w, len(l))
	}
	for i, l := range labels {
		labels[i] = l + strings.Repeat(" ", w-len(l))
	}
}

func (r *report) columns() []string {
	c := columns[:len(columns):len(columns)]
	if !r.hasServerConns() {
		c = append(columns[:5:5], columns[6:]...)
	}
	return append(c, protoColumns(r.URL)...) // tls.go
}

func (r *report) cells(run *runResult) []string {
	c := []string{
		commas(run.RPS, 1),
		strconv.FormatFloat(run.MsPerRequest, 'f', 3, 64),
		strconv.FormatFloat(run.P50Ms, 'f', 3, 64),
		strconv.FormatFloat(run.P99Ms, 'f', 3, 64),
		commas(float64(run.NewConns), 0),
	}
	if r.hasServerConns() {
		s := "-"
		if run.ServerConns != nil {
			s = commas(float64(*run.ServerConns), 0)
		}
		c = append(c, s)
	}
	c = append(c, commas(float64(run.Errors), 0), commas(float64(run.Retries), 0))
	return append(c, protoCells(r.URL, run)...) // tls.go
}

// commas formats f with prec decimals and thousands separators.
func commas(f float64, prec int) string {
	s := strconv.FormatFloat(f, 'f', prec, 64)
	intPart, frac, _ := strings.Cut(s, ".")
	neg := strings.HasPrefix(intPart, "-")
	intPart = strings.TrimPrefix(intPart, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, d := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(d)
	}
	if frac != "" {
		b.WriteByte('.')
		b.WriteString(frac)
	}
	return b.String()
}
