package main

import (
	"encoding/xml"
	"errors"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPlotWritesASelfContainedPageWithEveryClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kabench.html")
	r := runKabench(t, nil, nil, "-tls", "-http1", "-n", "200", "-c", "4", "-runs", "2", "-json", "-plot", path)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout) // with -json, stdout is JSON only, -plot or not
	require.Len(t, rep.Results, 3)

	b, err := os.ReadFile(path)
	require.NoError(t, err)
	page := string(b)
	assert.NotContains(t, page, "<script", "no scripts at all")
	svgs := assertWellFormedWithoutReferences(t, page)
	assert.Equal(t, 4, svgs, "requests/s, connections, latency and phases")
	charts := parseCharts(t, page)
	require.Len(t, charts, 4)

	for _, res := range rep.Results {
		name := res.Setup + ", " + res.Client
		assert.Contains(t, page, ">"+res.Client+"</td>", "the summary names every client")
		assert.Contains(t, page, ">"+commas(res.Average.RPS, 1)+" ±", "%s: its requests/s and spread in the summary", res.Client)
		assert.Contains(t, page, ">"+strconv.FormatFloat(res.Average.P99Ms, 'f', 3, 64)+"<", "%s: its p99", res.Client)
		assert.Equal(t, commas(res.Average.RPS, 1), charts["rps"].rect(t, name).value, "%s: its requests/s bar", res.Client)
		assert.NotEmpty(t, charts["phases"].rectsOf(name), "%s: its phases", res.Client)
	}

	def, keep := find(t, rep, "direct", clientDefault), find(t, rep, "direct", clientKeepAlive)
	assert.Contains(t, html.UnescapeString(page), fmt.Sprintf(`<p class="verdict">Against nokeepalive (direct), which opened 200 connections per run: default %+.1f%% requests/s with %s; keepalive %+.1f%% requests/s with %s.</p>`,
		*def.VsBaseline, plural(int(def.Average.NewConns), "connection"), *keep.VsBaseline, plural(int(keep.Average.NewConns), "connection")))

	// Connections and handshakes share one log axis: a bar's width is
	// log10 of its value over the axis' decades.
	conns := charts["conns"]
	ticks := conns.ticks("grid")
	require.GreaterOrEqual(t, len(ticks), 3)
	assert.Equal(t, "1", ticks[0].value)
	for i := 1; i < len(ticks); i++ {
		assert.Equal(t, strconv.Itoa(int(math.Pow(10, float64(i)))), ticks[i].value, "a tick per decade")
	}
	x0, x1 := ticks[0].pos, ticks[len(ticks)-1].pos
	decades := float64(len(ticks) - 1)
	for _, res := range rep.Results {
		name := res.Setup + ", " + res.Client
		for _, bar := range []struct {
			series string
			want   int64
		}{{name, res.Average.NewConns}, {name + " TLS", *res.Average.TLSHandshake}} {
			rect := conns.rect(t, bar.series)
			assert.Equal(t, commas(float64(bar.want), 0), rect.value, bar.series)
			want := max(math.Log10(float64(bar.want))/decades*(x1-x0), 2)
			assert.InDelta(t, want, rect.w, 0.5, "%s: %d on the log axis", bar.series, bar.want)
		}
	}

	// One latency chart: one x axis, one y axis, a curve per client
	// inside them, and each client's p50 and p99 where the shared y axis
	// puts its value.
	lat := charts["latency"]
	require.Len(t, lat.linesOf("axis x"), 1)
	require.Len(t, lat.linesOf("axis y"), 1)
	xAxis, yAxis := lat.linesOf("axis x")[0], lat.linesOf("axis y")[0]
	yTicks := lat.ticks("ytick")
	require.GreaterOrEqual(t, len(yTicks), 2)
	first, last := yTicks[0], yTicks[len(yTicks)-1]
	v0, _ := strconv.ParseFloat(first.value, 64)
	v1, _ := strconv.ParseFloat(last.value, 64)
	msAt := func(y float64) float64 { // the inverse of the log y axis
		return math.Pow(10, math.Log10(v0)+(y-first.pos)/(last.pos-first.pos)*(math.Log10(v1)-math.Log10(v0)))
	}
	require.Len(t, lat.series, len(rep.Results), "a curve per client")
	for _, res := range rep.Results {
		name := res.Setup + ", " + res.Client
		s, ok := lat.series[name]
		require.True(t, ok, "no curve for %s", name)
		require.Greater(t, len(s.points), 10, name)
		for _, p := range s.points {
			assert.True(t, p[0] >= yAxis.x1-0.01 && p[0] <= xAxis.x2+0.01, "%s: x %v outside the axis", name, p[0])
			assert.True(t, p[1] >= yAxis.y1-0.01 && p[1] <= yAxis.y2+0.01, "%s: y %v outside the axis", name, p[1])
		}
		for _, want := range []struct {
			p  string
			ms float64
		}{{"50", res.Average.P50Ms}, {"99", res.Average.P99Ms}} {
			m, ok := s.marks[want.p]
			require.True(t, ok, "%s: no p%s mark", name, want.p)
			assert.Equal(t, strconv.FormatFloat(want.ms, 'f', 3, 64), m.ms, "%s: p%s", name, want.p)
			assert.InEpsilon(t, want.ms, msAt(m.y), 0.02, "%s: p%s on the shared axis", name, want.p)
		}
	}
	assert.Len(t, lat.linesOf("swatch"), len(rep.Results), "a legend entry per client")
}

// chart is what a test reads of one SVG chart of the page.
type chart struct {
	rects  []chartRect
	lines  []chartLine
	series map[string]chartSeries
}

type chartRect struct {
	series, value string
	w             float64
}

type chartLine struct {
	class, value   string
	x1, y1, x2, y2 float64
}

type chartSeries struct {
	points [][2]float64
	marks  map[string]chartMark // by percentile
}

type chartMark struct {
	y  float64
	ms string
}

type tick struct {
	value string
	pos   float64 // x of a vertical tick, y of a horizontal one
}

// parseCharts reads the page's SVGs by id.
func parseCharts(t *testing.T, page string) map[string]*chart {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(page))
	charts := map[string]*chart{}
	var cur *chart
	var last string // the series of the last polyline, for its marks
	num := func(el xml.StartElement, name string) float64 {
		v, err := strconv.ParseFloat(attr(el, name), 64)
		require.NoError(t, err, "<%s %s>", el.Name.Local, name)
		return v
	}
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			return charts
		}
		require.NoError(t, err)
		el, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		switch el.Name.Local {
		case "svg":
			cur = &chart{series: map[string]chartSeries{}}
			charts[attr(el, "id")] = cur
		case "rect":
			if s := attr(el, "data-series"); s != "" {
				cur.rects = append(cur.rects, chartRect{s, attr(el, "data-value"), num(el, "width")})
			}
		case "line":
			if attr(el, "class") != "" {
				cur.lines = append(cur.lines, chartLine{attr(el, "class"), attr(el, "data-value"), num(el, "x1"), num(el, "y1"), num(el, "x2"), num(el, "y2")})
			}
		case "polyline":
			last = attr(el, "data-series")
			s := chartSeries{marks: map[string]chartMark{}}
			for _, pt := range strings.Fields(attr(el, "points")) {
				x, y, _ := strings.Cut(pt, ",")
				fx, err1 := strconv.ParseFloat(x, 64)
				fy, err2 := strconv.ParseFloat(y, 64)
				require.NoError(t, errors.Join(err1, err2), pt)
				s.points = append(s.points, [2]float64{fx, fy})
			}
			cur.series[last] = s
		case "circle":
			cur.series[last].marks[attr(el, "data-p")] = chartMark{num(el, "cy"), attr(el, "data-ms")}
		}
	}
}

func attr(el xml.StartElement, name string) string {
	for _, a := range el.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func (c *chart) rect(t *testing.T, series string) chartRect {
	t.Helper()
	rs := c.rectsOf(series)
	require.Len(t, rs, 1, "bars of %q", series)
	return rs[0]
}

func (c *chart) rectsOf(prefix string) []chartRect {
	var out []chartRect
	for _, r := range c.rects {
		if r.series == prefix || strings.HasPrefix(r.series, prefix+" ") && !strings.HasSuffix(r.series, " TLS") {
			out = append(out, r)
		}
	}
	return out
}

func (c *chart) linesOf(class string) []chartLine {
	var out []chartLine
	for _, l := range c.lines {
		if l.class == class {
			out = append(out, l)
		}
	}
	return out
}

// ticks returns the lines whose class has word, in order: vertical ones
// by x, horizontal ones by y (from the bottom).
func (c *chart) ticks(word string) []tick {
	var out []tick
	for _, l := range c.lines {
		if !slices.Contains(strings.Fields(l.class), word) {
			continue
		}
		if l.x1 == l.x2 {
			out = append(out, tick{l.value, l.x1})
		} else {
			out = append(out, tick{l.value, l.y1})
		}
	}
	return out
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
	assert.Equal(t, 4, assertWellFormedWithoutReferences(t, page))
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
