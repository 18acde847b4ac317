package main

import (
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPlotWritesASelfContainedPageWithEveryClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kabench.html")
	r := runKabench(t, nil, nil, "-n", "200", "-c", "4", "-runs", "1", "-json", "-plot", path)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout) // with -json, stdout is JSON only, -plot or not
	require.Len(t, rep.Results, 3)

	b, err := os.ReadFile(path)
	require.NoError(t, err)
	page := string(b)
	assert.NotContains(t, page, "<script", "no scripts at all")
	svgs := assertWellFormedWithoutReferences(t, page)
	assert.Equal(t, 1+len(rep.Results), svgs, "one SVG for the requests/s bars and one histogram per client")
	for _, res := range rep.Results {
		assert.Contains(t, page, res.Setup+", "+res.Client, "the page names every client")
		assert.Contains(t, page, ">"+commas(res.Average.RPS, 1)+"<", "%s: its requests/s as printed", res.Client)
		assert.Contains(t, page, strconv.FormatFloat(res.Average.P99Ms, 'f', 3, 64), "%s: its p99", res.Client)
		require.NotEmpty(t, res.Histogram, res.Client)
		var n int64
		for _, b := range res.Histogram {
			n += b.Count
		}
		assert.EqualValues(t, 200, n, "%s: the histogram counts every request", res.Client)
	}
}

// assertWellFormedWithoutReferences parses page as XML, fails on any
// src or href attribute that points at the network, and returns the number
// of svg elements.
func assertWellFormedWithoutReferences(t *testing.T, page string) int {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(page))
	svgs := 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err, "the page is not well-formed")
		el, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if el.Name.Local == "svg" {
			svgs++
		}
		for _, a := range el.Attr {
			switch strings.ToLower(a.Name.Local) {
			case "src", "href":
				v := strings.ToLower(a.Value)
				assert.False(t, strings.Contains(v, "http://") || strings.Contains(v, "https://") || strings.HasPrefix(v, "//"),
					"<%s %s=%q> refers to the network", el.Name.Local, a.Name.Local, a.Value)
			}
		}
	}
	return svgs
}

func TestPlotEscapesTheInput(t *testing.T) {
	rep := &report{
		URL: `http://127.0.0.1:1/?q=<script>alert("x")</script>&a=b`, Method: "GET", Requests: 2, Runs: 1,
		Results: []clientResult{{
			Setup: `<b>setup</b> & "more"`, Client: "keepalive", Description: "<i>d</i>",
			Runs:      []runResult{{RPS: 1234.5, P50Ms: 1, P99Ms: 2}},
			Average:   runResult{RPS: 1234.5, P50Ms: 1, P99Ms: 2},
			Histogram: []bucket{{Ms: 1, Count: 1}, {Ms: 2, Count: 1}},
		}},
	}
	rep.compare()
	path := filepath.Join(t.TempDir(), "p.html")
	require.NoError(t, rep.writePlot(path))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	page := string(b)
	assert.NotContains(t, page, "<script>")
	assert.NotContains(t, page, "<b>setup")
	assert.NotContains(t, page, "<i>d")
	assert.Equal(t, 2, assertWellFormedWithoutReferences(t, page))
	assert.Contains(t, page, "1,234.5")
}

func TestPlotPathErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no", "such", "dir", "p.html")
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"empty", []string{"-plot", ""}, "invalid -plot: empty file name"},
		{"missing directory", []string{"-plot", missing}, "invalid -plot: directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := runKabench(t, nil, nil, tt.args...)
			assert.Equal(t, exitUsage, r.code)
			assert.Contains(t, r.stderr, tt.want)
			assert.Empty(t, r.stdout)
		})
	}

	t.Run("write error", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "a-directory.html")
		require.NoError(t, os.Mkdir(dir, 0o755)) // cannot be written as a file
		r := runKabench(t, nil, nil, "-n", "20", "-c", "2", "-runs", "1", "-clients", "keepalive", "-plot", dir)
		assert.Equal(t, exitFailure, r.code)
		assert.Contains(t, r.stderr, "kabench: writing -plot "+dir+":")
		assert.Contains(t, r.stdout, "Summary", "the report is printed before the page is written")
	})
}

var (
	barLine       = regexp.MustCompile(`^  direct  (\S+)\s+([█▉▊▋▌▍▎▏]+) ([0-9,.]+)$`)
	histogramLine = regexp.MustCompile(`^ +[0-9]+\.[0-9]{3} \[ *([0-9]+)\] \|(■*)$`)
)

func TestSummaryDrawsBarsAndHistograms(t *testing.T) {
	r := runKabench(t, nil, nil, "-n", "200", "-c", "4", "-runs", "1")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	_, charts, ok := strings.Cut(r.stdout, "\nRequests/s (averages)\n")
	require.True(t, ok, "no bars after the summary:\n%s", r.stdout)

	lines := strings.Split(charts, "\n")
	widest := 0
	for _, client := range allClients {
		found := false
		for _, l := range lines[:len(allClients)] {
			if m := barLine.FindStringSubmatch(l); m != nil && m[1] == client {
				found = true
				widest = max(widest, len([]rune(m[2])))
			}
		}
		assert.True(t, found, "no bar for %s in\n%s", client, charts)
	}
	assert.Equal(t, barWidth, widest, "the widest bar is full width")

	for _, client := range allClients {
		head := "Latency histogram, direct, " + client + " (ms, 1 run):\n"
		_, rest, ok := strings.Cut(charts, head)
		require.True(t, ok, "no histogram for %s", client)
		var n, fullest int
		for _, l := range strings.Split(rest, "\n")[:histogramBuckets+1] {
			m := histogramLine.FindStringSubmatch(l)
			require.NotNil(t, m, "%s: not a histogram line: %q", client, l)
			c, _ := strconv.Atoi(m[1])
			n += c
			fullest = max(fullest, len([]rune(m[2])))
		}
		assert.Equal(t, 200, n, "%s: every request is in the histogram", client)
		assert.Equal(t, histogramWidth, fullest, "%s: the fullest bucket is full width", client)
	}
}

func TestBarScalesToEighths(t *testing.T) {
	assert.Equal(t, strings.Repeat("█", 40), bar(10, 10, 40))
	assert.Equal(t, strings.Repeat("█", 20), bar(5, 10, 40))
	assert.Equal(t, "█▌", bar(1.5, 10, 10))
	assert.Equal(t, "▏", bar(1, 80, 10))
	assert.Empty(t, bar(0, 10, 40))
	assert.Empty(t, bar(1, 0, 40))
}

func TestLatencyHistogramHasHeysBuckets(t *testing.T) {
	var lats []time.Duration
	for i := 1; i <= 11; i++ { // 1 ms .. 11 ms: a step of 1 ms
		lats = append(lats, time.Duration(i)*time.Millisecond)
	}
	h := latencyHistogram([]runResult{{latencies: lats[:5]}, {latencies: lats[5:]}})
	require.Len(t, h, histogramBuckets+1)
	for i, b := range h {
		assert.InDelta(t, float64(i+1), b.Ms, 1e-9)
		assert.EqualValues(t, 1, b.Count, "bucket %d", i)
	}
	assert.Nil(t, latencyHistogram([]runResult{{}}), "no latencies, no histogram")

	same := latencyHistogram([]runResult{{latencies: []time.Duration{time.Millisecond, time.Millisecond}}})
	assert.EqualValues(t, 2, same[0].Count, "equal latencies all go in the first bucket")
}
