// This file draws the results in the terminal, after the summary: the
// average requests/s of every client and setup as horizontal bars, and
// each client's latency distribution as a histogram in the shape hey
// prints. It also computes that histogram, which -json and -plot show too.

package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// histogramBuckets is the number of equal steps between the fastest and
// the slowest request of a histogram; it has one bucket more, as hey's.
const histogramBuckets = 10

// bucket is one line of a latency histogram: the requests that took more
// than the previous bucket's Ms and at most Ms.
type bucket struct {
	Ms    float64 `json:"ms"`
	Count int64   `json:"count"`
}

// latencyHistogram counts the latencies of every run in hey's buckets:
// histogramBuckets+1 marks from the fastest to the slowest request, each
// counting the requests up to it. It returns nil if no request succeeded.
func latencyHistogram(runs []runResult) []bucket {
	var all []time.Duration
	for _, r := range runs {
		all = append(all, r.latencies...)
	}
	if len(all) == 0 {
		return nil
	}
	slices.Sort(all)
	fastest, slowest := all[0], all[len(all)-1]
	step := (slowest - fastest) / histogramBuckets
	marks := make([]time.Duration, histogramBuckets+1)
	for i := range histogramBuckets {
		marks[i] = fastest + step*time.Duration(i)
	}
	marks[histogramBuckets] = slowest
	out := make([]bucket, len(marks))
	for i, m := range marks {
		out[i].Ms = ms(m)
	}
	b := 0
	for _, d := range all {
		for d > marks[b] { // the last mark is the slowest, so b stays in range
			b++
		}
		out[b].Count++
	}
	return out
}

// Widths of the terminal charts, in characters.
const (
	barWidth       = 40 // the widest requests/s bar
	histogramWidth = 40 // the fullest histogram bucket
)

// eighths are the block characters of a bar's last, partial cell.
var eighths = []rune("▏▎▍▌▋▊▉")

// bar returns v/top of width full blocks (█), to an eighth of a cell.
func bar(v, top float64, width int) string {
	if top <= 0 || v <= 0 {
		return ""
	}
	units := int(math.Round(v / top * float64(width*8)))
	s := strings.Repeat("█", units/8)
	if rem := units % 8; rem > 0 {
		s += string(eighths[rem-1])
	}
	return s
}

// writeCharts writes the requests/s bars and a latency histogram per
// client.
func (r *report) writeCharts(w io.Writer) {
	if len(r.Results) == 0 {
		return
	}
	fmt.Fprintf(w, "\nRequests/s (averages)\n")
	setups, clients := make([]string, len(r.Results)), make([]string, len(r.Results))
	var top float64
	for i, res := range r.Results {
		setups[i], clients[i] = res.Setup, res.Client
		top = max(top, res.Average.RPS)
	}
	leftAlign(setups)
	leftAlign(clients)
	for i := range r.Results {
		rps := r.Results[i].Average.RPS
		fmt.Fprintf(w, "  %s  %s  %s %s\n", setups[i], clients[i], bar(rps, top, barWidth), commas(rps, 1))
	}
	for i := range r.Results {
		writeHistogram(w, &r.Results[i])
	}
}

// writeHistogram writes the latency histogram of one client as hey does:
// a line per bucket, `  0.512 [1234] |■■■■■■`.
func writeHistogram(w io.Writer, res *clientResult) {
	fmt.Fprintf(w, "\nLatency histogram, %s, %s (ms, %s):\n", res.Setup, res.Client, plural(len(res.Runs), "run"))
	if len(res.Histogram) == 0 {
		fmt.Fprintln(w, "  no request succeeded")
		return
	}
	marks, counts := make([]string, len(res.Histogram)), make([]string, len(res.Histogram))
	var top int64
	for i, b := range res.Histogram {
		marks[i], counts[i] = fmt.Sprintf("%.3f", b.Ms), fmt.Sprint(b.Count)
		top = max(top, b.Count)
	}
	mw, cw := maxLen(marks), maxLen(counts)
	for i, b := range res.Histogram {
		n := 0
		if top > 0 {
			n = int(math.Round(float64(b.Count) / float64(top) * histogramWidth))
		}
		if n == 0 && b.Count > 0 {
			n = 1 // a bucket with requests shows at least one mark
		}
		fmt.Fprintf(w, "  %*s [%*s] |%s\n", mw, marks[i], cw, counts[i], strings.Repeat("■", n))
	}
}

func maxLen(ss []string) int {
	n := 0
	for _, s := range ss {
		n = max(n, len(s))
	}
	return n
}
