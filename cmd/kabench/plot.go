// This file writes -plot: one self-contained HTML page that makes the
// case for keep-alive at a glance. Above the fold of a 1200x1600 window:
// the summary table and the notes, the requests/s of every client beside
// its connections and TLS handshakes (a log scale: 1 against 10,000), one
// latency chart with every client's percentile curve on shared axes, and
// where each client's time goes; with -backends, between the pair and the
// latencies, each client's share of the requests per backend. Below: each
// client's runs. The charts
// are inline SVG as wide as the page; the page references nothing
// outside itself (no scripts, fonts, styles or images from anywhere).
// Everything taken from the input (the URL, setup and client names,
// error messages) goes through html/template.

package main

import (
	"bytes"
	"fmt"
	"html/template"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// checkPlot validates the -plot path: not empty, and in a directory that
// exists, so that a typo fails before the measurement rather than after.
func checkPlot(path string) error {
	if path == "" {
		return &usageError{"plot", "empty file name"}
	}
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if err != nil {
		return &usageError{"plot", fmt.Sprintf("directory %q does not exist", dir)}
	}
	if !st.IsDir() {
		return &usageError{"plot", fmt.Sprintf("%q is not a directory", dir)}
	}
	return nil
}

// writePlot writes the page to path.
func (r *report) writePlot(path string) error {
	var b bytes.Buffer
	if err := plotPage.Execute(&b, r.plotData()); err != nil {
		return fmt.Errorf("-plot: %w", err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing -plot %s: %w", path, err)
	}
	return nil
}

// Geometry of the charts, in SVG units; the SVGs scale to the page's
// width, about one unit a pixel in a 1200-pixel window.
const (
	halfW    = 560 // a chart of the pair side by side
	fullW    = 1140
	rowH     = 26 // a bar's row
	barH     = 16
	labelW   = 100 // client names
	axisH    = 30  // room for the axis labels under a bar chart
	latH     = 420 // the latency chart
	latLeft  = 60  // its y axis labels
	latRight = 800 // its plot area ends here; the legend follows
	latTop   = 30
	latBot   = 380
)

// clientColors are the colors of the clients, the same in every chart.
var clientColors = map[string]string{
	clientNoKeepAlive: "#d62728",
	clientDefault:     "#ff7f0e",
	clientKeepAlive:   "#1f77b4",
}

// setupDashes tell the setups of one client apart in the latency chart.
var setupDashes = []string{"", "8 4", "2 3", "12 4 2 4"}

// phaseColors are the colors of the phases, in phase order, then other.
var phaseColors = []string{"#9467bd", "#8c564b", "#e377c2", "#2ca02c", "#17becf", "#c7c7c7"}

type (
	plotText struct {
		X, Y   float64
		Text   string
		Anchor string // start, middle, end
		Class  string
	}
	plotRect struct {
		X, Y, W, H float64
		Fill       string
		Series     string // setup, client
		Value      string // the number drawn, for tests
	}
	plotLine struct {
		X1, Y1, X2, Y2 float64
		Class          string
		Value          string // an axis tick's value, for tests
		Stroke, Dash   string // a legend's swatch
	}
	plotSeries struct {
		Name, Color, Dash string
		Points            string // "x,y x,y ..."
		Marks             []plotMark
	}
	plotMark struct {
		X, Y    float64
		P       string // the percentile: 50, 99
		Ms      string
		Color   string
		Outline bool
	}
	// plotChart is one SVG.
	plotChart struct {
		ID, Label string
		W, H      float64
		Texts     []plotText
		Rects     []plotRect
		Lines     []plotLine
		Series    []plotSeries
	}
	plotLegend struct{ Name, Color, Dash string }
	plotRow    struct {
		Setup, Client, Color                    string
		RPS, MsPer, P50, P99, Conns, Handshakes string
		Errors, Retries, Protocol, VsBaseline   string
	}
	plotClient struct {
		Title string
		Runs  []plotRow
	}
	plotData struct {
		Header, Setup, Baseline string
		Verdict                 string
		HTTPS                   bool
		Summary                 []plotRow
		Notes                   []string
		RPS, Conns, Latency     plotChart
		Backends                plotChart // -backends; no ID without
		Phases                  plotChart
		Legend                  []plotLegend
		PhaseLegend             []plotLegend
		Clients                 []plotClient
	}
)

func (r *report) plotData() plotData {
	d := plotData{Baseline: r.Baseline, HTTPS: isHTTPS(r.URL), Notes: r.Notes}
	d.Header = fmt.Sprintf("%s %s%s", r.Method, r.server(), r.shape())
	d.Setup = fmt.Sprintf("%s, concurrency %d, %s per client; %s %s, %s",
		r.perRun(), r.Concurrency, plural(r.Runs, "run"), r.Go, r.Platform, plural(r.CPUs, "CPU"))
	for i := range r.Results {
		res := &r.Results[i]
		row := r.plotRow(res, &res.Average)
		if sp := res.Spread; sp != nil {
			row.RPS += " " + sp.RPS.plusMinus(res.Average.RPS)
		}
		row.VsBaseline = "-"
		if res.VsBaseline != nil {
			row.VsBaseline = fmt.Sprintf("%+.1f%%", *res.VsBaseline)
		} else if r.Baseline == res.Client+" ("+res.Setup+")" {
			row.VsBaseline = "baseline"
		}
		d.Summary = append(d.Summary, row)
		c := plotClient{Title: res.Setup + ", " + res.Client + ": " + res.Description}
		for j := range res.Runs {
			run := r.plotRow(res, &res.Runs[j])
			run.Setup = fmt.Sprintf("Run %d", j+1)
			c.Runs = append(c.Runs, run)
		}
		d.Clients = append(d.Clients, c)
	}
	d.Verdict = r.verdict()
	d.RPS = r.rpsChart()
	d.Conns = r.connsChart()
	d.Latency, d.Legend = r.latencyChart()
	d.Phases, d.PhaseLegend = r.phasesChart()
	d.Backends = r.backendsChart()
	return d
}

// verdict says in one sentence what every client bought over the
// baseline: requests/s, and connections per run against the baseline's.
func (r *report) verdict() string {
	var base *clientResult
	var parts []string
	for i := range r.Results {
		res := &r.Results[i]
		if res.VsBaseline == nil {
			if r.Baseline == res.Client+" ("+res.Setup+")" {
				base = res
			}
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %+.1f%% requests/s with %s", r.name(res), *res.VsBaseline, plural(int(res.Average.NewConns), "connection")))
	}
	if base == nil || len(parts) == 0 {
		return ""
	}
	return fmt.Sprintf("Against %s, which opened %s per run: %s.", r.Baseline, plural(int(base.Average.NewConns), "connection"), strings.Join(parts, "; "))
}

func (r *report) plotRow(res *clientResult, run *runResult) plotRow {
	row := plotRow{
		Setup: res.Setup, Client: res.Client, Color: clientColors[res.Client],
		RPS:      commas(run.RPS, 1),
		MsPer:    strconv.FormatFloat(run.MsPerRequest, 'f', 3, 64),
		P50:      strconv.FormatFloat(run.P50Ms, 'f', 3, 64),
		P99:      strconv.FormatFloat(run.P99Ms, 'f', 3, 64),
		Conns:    commas(float64(run.NewConns), 0),
		Errors:   commas(float64(run.Errors), 0),
		Retries:  commas(float64(run.Retries), 0),
		Protocol: run.Protocol,
	}
	if run.TLSHandshake != nil {
		row.Handshakes = commas(float64(*run.TLSHandshake), 0)
	}
	return row
}

// barRows lays out the rows of a bar chart: a heading row per setup when
// there are several, then a row per result. It returns the y of each
// result's row and the chart's texts for the headings and client names.
func (r *report) barRows() ([]float64, []plotText, float64) {
	several := len(r.setups()) > 1
	var ys []float64
	var texts []plotText
	y := 0.0
	for i, res := range r.Results {
		if several && (i == 0 || r.Results[i-1].Setup != res.Setup) {
			texts = append(texts, plotText{X: 0, Y: y + 18, Text: res.Setup, Anchor: "start", Class: "heading"})
			y += rowH
		}
		ys = append(ys, y)
		texts = append(texts, plotText{X: labelW - 8, Y: y + 17, Text: res.Client, Anchor: "end"})
		y += rowH
	}
	return ys, texts, y
}

// rpsChart draws the average requests/s of every result as bars on a
// linear axis.
func (r *report) rpsChart() plotChart {
	ys, texts, h := r.barRows()
	c := plotChart{ID: "rps", Label: "Requests per second, averages", W: halfW, H: h + axisH, Texts: texts}
	var top float64
	for _, res := range r.Results {
		top = max(top, res.Average.RPS)
	}
	x0, x1 := float64(labelW), float64(halfW-90)
	step := niceStep(top)
	for v := 0.0; v <= top+step/2 && step > 0; v += step {
		x := x0 + v/max(top, step)*(x1-x0)
		if x > x1+1 {
			break
		}
		c.Lines = append(c.Lines, plotLine{X1: x, Y1: 0, X2: x, Y2: h, Class: "grid", Value: strconv.FormatFloat(v, 'f', -1, 64)})
		c.Texts = append(c.Texts, plotText{X: x, Y: h + 18, Text: commas(v, 0), Anchor: "middle", Class: "tick"})
	}
	for i, res := range r.Results {
		w := 0.0
		if top > 0 {
			w = res.Average.RPS / top * (x1 - x0)
		}
		v := commas(res.Average.RPS, 1)
		c.Rects = append(c.Rects, plotRect{X: x0, Y: ys[i] + 5, W: w, H: barH, Fill: clientColors[res.Client], Series: res.Setup + ", " + res.Client, Value: v})
		c.Texts = append(c.Texts, plotText{X: x0 + w + 6, Y: ys[i] + 18, Text: v, Anchor: "start", Class: "value"})
	}
	return c
}

// connsChart draws the connections each result dialed per run, and over
// TLS its handshakes, on a log axis shared by both: keep-alive's 64
// against 10,000 must both be seen.
func (r *report) connsChart() plotChart {
	ys, texts, h := r.barRows()
	https := isHTTPS(r.URL)
	label := "New connections per run (log scale)"
	if https {
		label = "New connections and TLS handshakes (hatched) per run, log scale"
	}
	c := plotChart{ID: "conns", Label: label, W: halfW, H: h + axisH, Texts: texts}
	var most int64 = 10
	for _, res := range r.Results {
		most = max(most, res.Average.NewConns)
		if res.Average.TLSHandshake != nil {
			most = max(most, *res.Average.TLSHandshake)
		}
	}
	decades := math.Ceil(math.Log10(float64(most)))
	x0, x1 := float64(labelW), float64(halfW-70)
	scale := func(v int64) float64 { return math.Log10(float64(v)) / decades * (x1 - x0) }
	for d := 0.0; d <= decades; d++ {
		x := x0 + d/decades*(x1-x0)
		v := int64(math.Pow(10, d))
		c.Lines = append(c.Lines, plotLine{X1: x, Y1: 0, X2: x, Y2: h, Class: "grid", Value: strconv.FormatInt(v, 10)})
		c.Texts = append(c.Texts, plotText{X: x, Y: h + 18, Text: commas(float64(v), 0), Anchor: "middle", Class: "tick"})
	}
	bar := func(v int64, y, height float64, fill, series string) {
		w := 0.0
		if v >= 1 {
			w = max(scale(v), 2) // one connection is log 0: still a sliver
		}
		s := commas(float64(v), 0)
		c.Rects = append(c.Rects, plotRect{X: x0, Y: y, W: w, H: height, Fill: fill, Series: series, Value: s})
		c.Texts = append(c.Texts, plotText{X: x0 + w + 6, Y: y + height - 1, Text: s, Anchor: "start", Class: "value small"})
	}
	for i, res := range r.Results {
		name := res.Setup + ", " + res.Client
		if !https || res.Average.TLSHandshake == nil {
			bar(res.Average.NewConns, ys[i]+5, barH, clientColors[res.Client], name)
			continue
		}
		bar(res.Average.NewConns, ys[i]+2, 10, clientColors[res.Client], name)
		bar(*res.Average.TLSHandshake, ys[i]+14, 10, "url(#hatch-"+res.Client+")", name+" TLS")
	}
	return c
}

// Geometry of the backends chart: a panel per result, side by side.
const (
	backendsH      = 270
	backendsTop    = 44  // under the panel's heading and a full bar's share
	backendsBot    = 224 // the bars stand on this line
	backendsLeft   = 44  // a panel's y axis labels
	backendsRight  = 12  // the gap to the next panel
	backendsMinBar = 18  // the narrowest slot that gets a label of its backend
	backendsMinVal = 36  // the narrowest slot that gets its share written
)

// backendsChart draws, with -backends, each result's share of the
// requests per backend (over all its runs) as a panel of vertical bars on
// one 0-100% axis, with a dashed line at an even share: Go's default
// client's one full bar against keepalive's row at the line. It returns a
// chart without ID without -backends.
func (r *report) backendsChart() plotChart {
	n := len(r.Backends)
	if n < 2 || len(r.Results) == 0 {
		return plotChart{}
	}
	_, port, _ := strings.Cut(r.Backends[0], ":")
	even := 100 / float64(n)
	c := plotChart{ID: "backends", W: fullW, H: backendsH,
		Label: fmt.Sprintf("Requests per backend, each client's share, server side: %s resolves to %s on port %s, in that order; dashed, an even share of %s",
			backendsName, r.backendRange(), port, pct(even))}
	pw := float64(fullW) / float64(len(r.Results))
	py := func(share float64) float64 { return backendsBot - share/100*(backendsBot-backendsTop) }
	labelEvery := 1
	for i := range r.Results {
		res := &r.Results[i]
		x0, x1 := float64(i)*pw+backendsLeft, float64(i+1)*pw-backendsRight
		slot := (x1 - x0) / float64(n)
		for slot*float64(labelEvery) < backendsMinBar {
			labelEvery++
		}
		s := shares(sumBackends(res.Runs))
		heading := res.Client + ": no request succeeded"
		if len(s) == n {
			lo, hi, _ := minMaxShare(s)
			heading = fmt.Sprintf("%s: max %s, min %s", r.name(res), pct(hi), pct(lo))
		}
		c.Texts = append(c.Texts, plotText{X: x0, Y: 18, Text: heading, Anchor: "start", Class: "heading"})
		for _, v := range []float64{0, 25, 50, 75, 100} {
			y := py(v)
			c.Lines = append(c.Lines, plotLine{X1: x0, Y1: y, X2: x1, Y2: y, Class: "grid ytick", Value: strconv.FormatFloat(v, 'f', -1, 64)})
			c.Texts = append(c.Texts, plotText{X: x0 - 6, Y: y + 4, Text: strconv.FormatFloat(v, 'f', -1, 64) + "%", Anchor: "end", Class: "tick"})
		}
		for j, ep := range r.Backends {
			x := x0 + float64(j)*slot
			host, _, _ := strings.Cut(ep, ":")
			if j%labelEvery == 0 {
				c.Texts = append(c.Texts, plotText{X: x + slot/2, Y: backendsBot + 16, Text: host[strings.LastIndex(host, "."):], Anchor: "middle", Class: "tick"})
			}
			if len(s) != n {
				continue
			}
			y := py(s[j])
			v := strconv.FormatFloat(s[j], 'f', 1, 64)
			c.Rects = append(c.Rects, plotRect{X: x + slot*0.15, Y: y, W: slot * 0.7, H: backendsBot - y, Fill: clientColors[res.Client], Series: res.Setup + ", " + res.Client + " " + ep, Value: v})
			if slot >= backendsMinVal {
				c.Texts = append(c.Texts, plotText{X: x + slot/2, Y: y - 4, Text: v + "%", Anchor: "middle", Class: "value small"})
			}
		}
		c.Lines = append(c.Lines,
			plotLine{X1: x0, Y1: backendsBot, X2: x1, Y2: backendsBot, Class: "axis x"},
			plotLine{X1: x0, Y1: py(even), X2: x1, Y2: py(even), Class: "even", Value: strconv.FormatFloat(even, 'f', 1, 64)})
	}
	c.Texts = append(c.Texts, plotText{X: fullW / 2, Y: backendsBot + 36, Text: "backend: the last byte of its address", Anchor: "middle", Class: "tick"})
	return c
}

// latencyChart draws every result's latency percentiles as a curve on
// shared axes: the percentile on a "nines" scale (50%, 90%, 99%, 99.9%
// equally spaced) so that the slow tail, a few requests, is as visible
// as the median; the latency on a log scale, so that 0.1 ms and 100 ms
// are both read.
func (r *report) latencyChart() (plotChart, []plotLegend) {
	c := plotChart{ID: "latency", Label: "Latency percentiles of every client, shared axes", W: fullW, H: latH}
	type curve struct {
		res  *clientResult
		lats []time.Duration
	}
	var curves []curve
	fewest := 0
	lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
	for i := range r.Results {
		res := &r.Results[i]
		var lats []time.Duration
		for _, run := range res.Runs {
			lats = append(lats, run.latencies...)
		}
		if len(lats) == 0 {
			continue
		}
		slices.Sort(lats)
		curves = append(curves, curve{res, lats})
		if fewest == 0 || len(lats) < fewest {
			fewest = len(lats)
		}
		lo, hi = min(lo, max(lats[0], time.Microsecond)), max(hi, lats[len(lats)-1])
	}
	setups := r.setups()
	var legend []plotLegend
	for _, res := range r.Results {
		legend = append(legend, plotLegend{Name: res.Setup + ", " + res.Client, Color: clientColors[res.Client], Dash: setupDashes[slices.Index(setups, res.Setup)%len(setupDashes)]})
	}
	if len(curves) == 0 {
		c.Texts = append(c.Texts, plotText{X: fullW / 2, Y: latH / 2, Text: "no request succeeded", Anchor: "middle"})
		return c, legend
	}
	// x: nines, from 0 (the fastest request) to the nines the fewest
	// samples resolve (4: 99.99%), at most 5.
	xMax := math.Min(5, math.Max(1, math.Log10(float64(fewest))))
	yLo, yHi := math.Log10(niceBelow(ms(lo))), math.Log10(niceAbove(ms(hi)))
	if yHi <= yLo {
		yHi = yLo + 1
	}
	px := func(nines float64) float64 { return latLeft + nines/xMax*(latRight-latLeft) }
	py := func(msv float64) float64 {
		return latBot - (math.Log10(math.Max(msv, 1e-3))-yLo)/(yHi-yLo)*(latBot-latTop)
	}
	for _, t := range []struct {
		nines float64
		label string
	}{{0, "0%"}, {math.Log10(2), "50%"}, {1, "90%"}, {2, "99%"}, {3, "99.9%"}, {4, "99.99%"}, {5, "99.999%"}} {
		if t.nines > xMax+1e-9 {
			break
		}
		x := px(t.nines)
		c.Lines = append(c.Lines, plotLine{X1: x, Y1: latTop, X2: x, Y2: latBot, Class: "grid xtick", Value: t.label})
		c.Texts = append(c.Texts, plotText{X: x, Y: latBot + 18, Text: t.label, Anchor: "middle", Class: "tick"})
	}
	if xMax-math.Floor(xMax) > 0.15 { // the right end is the slowest request, past the last tick
		x := px(xMax)
		c.Lines = append(c.Lines, plotLine{X1: x, Y1: latTop, X2: x, Y2: latBot, Class: "grid xtick", Value: "max"})
		c.Texts = append(c.Texts, plotText{X: x, Y: latBot + 18, Text: "max", Anchor: "middle", Class: "tick"})
	}
	c.Texts = append(c.Texts, plotText{X: latRight, Y: latBot + 36, Text: "percentile of the requests, on a scale of nines", Anchor: "end", Class: "tick"})
	for e := math.Floor(yLo); e <= math.Ceil(yHi); e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if l := math.Log10(v); l < yLo-1e-9 || l > yHi+1e-9 {
				continue
			}
			y := py(v)
			class := "grid ytick"
			if m > 1 {
				class = "grid minor ytick"
			}
			label := strconv.FormatFloat(v, 'f', -1, 64)
			c.Lines = append(c.Lines, plotLine{X1: latLeft, Y1: y, X2: latRight, Y2: y, Class: class, Value: label})
			c.Texts = append(c.Texts, plotText{X: latLeft - 6, Y: y + 4, Text: label, Anchor: "end", Class: "tick"})
		}
	}
	c.Texts = append(c.Texts, plotText{X: latLeft - 6, Y: latTop - 14, Text: "ms", Anchor: "end", Class: "tick"})
	// The axes, once for every curve, over the grid.
	c.Lines = append(c.Lines,
		plotLine{X1: latLeft, Y1: latBot, X2: latRight, Y2: latBot, Class: "axis x"},
		plotLine{X1: latLeft, Y1: latTop, X2: latLeft, Y2: latBot, Class: "axis y"})
	// A curve per result: the latency at each step of the nines scale,
	// the slowest request last; marks at p50 and p99.
	for _, cv := range curves {
		name := cv.res.Setup + ", " + cv.res.Client
		s := plotSeries{Name: name, Color: clientColors[cv.res.Client], Dash: setupDashes[slices.Index(setups, cv.res.Setup)%len(setupDashes)]}
		var pts []string
		for step := 0; ; step++ {
			nines := math.Min(float64(step)*0.02, xMax)
			d := cv.lats[len(cv.lats)-1]
			if nines < xMax {
				d = percentileF(cv.lats, 100*(1-math.Pow(10, -nines)))
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(nines), py(ms(d))))
			if nines >= xMax {
				break
			}
		}
		s.Points = strings.Join(pts, " ")
		for _, p := range []float64{50, 99} {
			if p == 99 && xMax < 2 {
				continue
			}
			v := ms(percentileF(cv.lats, p))
			s.Marks = append(s.Marks, plotMark{
				X: px(-math.Log10(1 - p/100)), Y: py(v), P: strconv.FormatFloat(p, 'f', -1, 64),
				Ms: strconv.FormatFloat(v, 'f', 3, 64), Color: s.Color,
			})
		}
		c.Series = append(c.Series, s)
	}
	// The legend, right of the plot area.
	for i, l := range legend {
		y := float64(latTop + 10 + i*22)
		c.Lines = append(c.Lines, plotLine{X1: latRight + 20, Y1: y, X2: latRight + 50, Y2: y, Class: "swatch", Stroke: l.Color, Dash: l.Dash, Value: l.Name})
		c.Texts = append(c.Texts, plotText{X: latRight + 56, Y: y + 4, Text: l.Name, Anchor: "start", Class: "small"})
	}
	return c, legend
}

// percentileF is percentile for a fractional p: the nearest rank.
func percentileF(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(float64(len(sorted)) * p / 100))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// phasesChart draws where each result's time goes: the phases of a mean
// request stacked on one linear axis, and the rest of its mean latency.
func (r *report) phasesChart() (plotChart, []plotLegend) {
	ys, texts, h := r.barRows()
	c := plotChart{ID: "phases", Label: "Where the time goes: a mean request's phases, ms", W: fullW, H: h + axisH, Texts: texts}
	names := []string{"DNS", "Connect", "TLS", "Wait", "Read", "Other (pool, write, retry waits)"}
	var top float64
	parts := make([][]float64, len(r.Results))
	seen := make([]bool, len(names))
	for i, res := range r.Results {
		p, a := res.Average.Phases, res.Average
		sum := p.DNS + p.Connect + p.TLS + p.Wait + p.Read
		parts[i] = []float64{p.DNS, p.Connect, p.TLS, p.Wait, p.Read, math.Max(0, a.MeanMs-sum)}
		for j, v := range parts[i] {
			seen[j] = seen[j] || v > 0
		}
		top = max(top, sum, a.MeanMs)
	}
	var legend []plotLegend // the phases that took any time
	for i, n := range names {
		if seen[i] {
			legend = append(legend, plotLegend{Name: n, Color: phaseColors[i]})
		}
	}
	x0, x1 := float64(labelW), float64(fullW-90)
	step := niceStep(top)
	for v := 0.0; step > 0 && v <= top+step/2; v += step {
		x := x0 + v/max(top, step)*(x1-x0)
		if x > x1+1 {
			break
		}
		c.Lines = append(c.Lines, plotLine{X1: x, Y1: 0, X2: x, Y2: h, Class: "grid", Value: strconv.FormatFloat(v, 'f', -1, 64)})
		c.Texts = append(c.Texts, plotText{X: x, Y: h + 18, Text: strconv.FormatFloat(v, 'f', -1, 64), Anchor: "middle", Class: "tick"})
	}
	for i, res := range r.Results {
		x := x0
		for j, v := range parts[i] {
			if v <= 0 || top <= 0 {
				continue
			}
			w := v / top * (x1 - x0)
			c.Rects = append(c.Rects, plotRect{X: x, Y: ys[i] + 5, W: w, H: barH, Fill: phaseColors[j], Series: res.Setup + ", " + res.Client + " " + names[j], Value: strconv.FormatFloat(v, 'f', 3, 64)})
			x += w
		}
		c.Texts = append(c.Texts, plotText{X: x + 6, Y: ys[i] + 18, Text: strconv.FormatFloat(res.Average.MeanMs, 'f', 3, 64) + " ms", Anchor: "start", Class: "value"})
	}
	return c, legend
}

// niceBelow and niceAbove round v down and up to 1, 2 or 5 times a power
// of ten: the ends of a log axis.
func niceBelow(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{5, 2, 1} {
		if m*p <= v {
			return m * p
		}
	}
	return p
}

func niceAbove(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// niceStep returns a step of 1, 2 or 5 times a power of ten that cuts
// 0..top into at most 6 parts.
func niceStep(top float64) float64 {
	if top <= 0 {
		return 0
	}
	raw := top / 6
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

// plotPage is the page. It is well-formed XML as well as HTML (every
// element closed, no named entities), so that tests can parse it.
var plotPage = template.Must(template.New("plot").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>kabench: {{.Header}}</title>
<style>
body { font-family: sans-serif; margin: 12px 20px; color: #222; font-size: 14px; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 15px; margin: 10px 0 2px; }
p.setup { margin: 0 0 8px; color: #444; }
p.verdict { margin: 0 0 6px; font-size: 15px; font-weight: bold; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { padding: 2px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
tr:nth-child(even) td { background: #f2f2f2; }
td.client { font-weight: bold; }
ul.notes { margin: 4px 0 8px; padding-left: 20px; font-size: 13px; }
.pair { display: flex; gap: 20px; }
.pair figure { flex: 1; }
figure { margin: 0; }
figcaption { font-weight: bold; font-size: 14px; margin: 6px 0 2px; }
svg { width: 100%; height: auto; display: block; }
svg text { font-size: 13px; fill: #222; }
svg text.tick, svg text.small { font-size: 12px; fill: #555; }
svg text.heading { font-weight: bold; }
svg line.grid { stroke: #ddd; }
svg line.minor { stroke: #eee; }
svg line.axis { stroke: #444; }
svg line.grid, svg line.axis { shape-rendering: crispEdges; }
svg polyline { fill: none; stroke-width: 2.5; }
svg line.swatch { stroke-width: 3; }
svg line.even { stroke: #444; stroke-dasharray: 5 3; }
.legend span { display: inline-block; width: 14px; height: 10px; margin: 0 4px 0 12px; }
details { margin: 8px 0; }
</style>
</head>
<body>
<h1>kabench</h1>
<p class="setup">{{.Header}}<br/>{{.Setup}}</p>
{{- if .Verdict}}
<p class="verdict">{{.Verdict}}</p>
{{- end}}

<table id="summary">
<tr><th>Setup</th><th>Client</th><th>Requests/s</th><th>Time/request (ms)</th><th>p50 (ms)</th><th>p99 (ms)</th><th>New conns</th>{{if .HTTPS}}<th>TLS handshakes</th>{{end}}<th>Errors</th><th>Retries</th><th>Protocol</th><th>vs baseline</th></tr>
{{- range .Summary}}
<tr><td>{{.Setup}}</td><td class="client" style="color: {{.Color}}">{{.Client}}</td><td>{{.RPS}}</td><td>{{.MsPer}}</td><td>{{.P50}}</td><td>{{.P99}}</td><td>{{.Conns}}</td>{{if $.HTTPS}}<td>{{.Handshakes}}</td>{{end}}<td>{{.Errors}}</td><td>{{.Retries}}</td><td>{{.Protocol}}</td><td>{{.VsBaseline}}</td></tr>
{{- end}}
</table>
{{- if .Notes}}
<ul class="notes">
{{- range .Notes}}
<li>{{.}}</li>
{{- end}}
</ul>
{{- end}}

<div class="pair">
<figure>
<figcaption>{{.RPS.Label}}</figcaption>
{{template "chart" .RPS}}
</figure>
<figure>
<figcaption>{{.Conns.Label}}</figcaption>
{{template "chart" .Conns}}
</figure>
</div>
{{- if .Backends.ID}}

<figure>
<figcaption>{{.Backends.Label}}</figcaption>
{{template "chart" .Backends}}
</figure>
{{- end}}

<figure>
<figcaption>{{.Latency.Label}}</figcaption>
{{template "chart" .Latency}}
</figure>

<figure>
<figcaption>{{.Phases.Label}} <span class="legend">{{range .PhaseLegend}}<span style="background: {{.Color}}"></span>{{.Name}}{{end}}</span></figcaption>
{{template "chart" .Phases}}
</figure>

<h2>Runs</h2>
<p>vs baseline: the difference in requests/s to {{.Baseline}}; ± is half the range from the lowest to the highest run.</p>
{{- range .Clients}}
<details open="open">
<summary>{{.Title}}</summary>
<table>
<tr><th>Run</th><th></th><th>Requests/s</th><th>Time/request (ms)</th><th>p50 (ms)</th><th>p99 (ms)</th><th>New conns</th>{{if $.HTTPS}}<th>TLS handshakes</th>{{end}}<th>Errors</th><th>Retries</th><th>Protocol</th></tr>
{{- range .Runs}}
<tr><td>{{.Setup}}</td><td></td><td>{{.RPS}}</td><td>{{.MsPer}}</td><td>{{.P50}}</td><td>{{.P99}}</td><td>{{.Conns}}</td>{{if $.HTTPS}}<td>{{.Handshakes}}</td>{{end}}<td>{{.Errors}}</td><td>{{.Retries}}</td><td>{{.Protocol}}</td></tr>
{{- end}}
</table>
</details>
{{- end}}
</body>
</html>
{{define "chart"}}<svg id="{{.ID}}" viewBox="0 0 {{.W}} {{.H}}" role="img" aria-label="{{.Label}}">
<defs>
<pattern id="hatch-nokeepalive" width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="5" height="5" fill="#f4b6b6"/><line x1="0" y1="0" x2="0" y2="5" stroke="#d62728" stroke-width="3"/></pattern>
<pattern id="hatch-default" width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="5" height="5" fill="#ffd8b0"/><line x1="0" y1="0" x2="0" y2="5" stroke="#ff7f0e" stroke-width="3"/></pattern>
<pattern id="hatch-keepalive" width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="5" height="5" fill="#b3d1ea"/><line x1="0" y1="0" x2="0" y2="5" stroke="#1f77b4" stroke-width="3"/></pattern>
</defs>
{{- range .Lines}}
<line class="{{.Class}}" x1="{{.X1}}" y1="{{.Y1}}" x2="{{.X2}}" y2="{{.Y2}}"{{if .Stroke}} stroke="{{.Stroke}}"{{end}}{{if .Dash}} stroke-dasharray="{{.Dash}}"{{end}} data-value="{{.Value}}"/>
{{- end}}
{{- range .Rects}}
<rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="{{.Fill}}" data-series="{{.Series}}" data-value="{{.Value}}"/>
{{- end}}
{{- range .Series}}
<polyline class="series" points="{{.Points}}" stroke="{{.Color}}"{{if .Dash}} stroke-dasharray="{{.Dash}}"{{end}} data-series="{{.Name}}"/>
{{- range .Marks}}
<circle cx="{{.X}}" cy="{{.Y}}" r="4" fill="{{.Color}}" data-p="{{.P}}" data-ms="{{.Ms}}"/>
{{- end}}
{{- end}}
{{- range .Texts}}
<text x="{{.X}}" y="{{.Y}}" text-anchor="{{.Anchor}}"{{if .Class}} class="{{.Class}}"{{end}}>{{.Text}}</text>
{{- end}}
</svg>{{end}}
`))
