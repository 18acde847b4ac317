// This file writes -plot: one self-contained HTML page with the charts of
// the terminal summary drawn as inline SVG (requests/s bars per client and
// setup, a latency histogram per client) and the p50/p99 of every run. The
// page references nothing outside itself: no scripts, fonts, styles or
// images from anywhere. Everything taken from the input (the URL, setup
// and client names, error messages) goes through html/template.

package main

import (
	"bytes"
	"fmt"
	"html/template"
	"os"
	"path/filepath"
	"strconv"
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

// Geometry of the SVG charts, in pixels.
const (
	svgWidth    = 760 // at least
	svgLabelW   = 300 // label column of the requests/s bars, at least
	svgCharW    = 8   // width of a character of the labels, about
	svgBarMaxW  = 340 // the widest bar
	svgRowH     = 24
	svgBarH     = 16
	svgHistLabW = 150 // "0.512 ms [1234]" column of the histograms, at least
	svgHistMaxW = 480
)

type plotBar struct {
	Label, Value string
	Y, TextY, W  int
	ValueX       int
}

type plotRun struct {
	Label, RPS, P50, P99, Errors string
	VsBaseline                   string // summary rows only
}

type plotClient struct {
	Title   string
	Height  int
	Buckets []plotBar
	Runs    []plotRun
}

type plotData struct {
	Header   string
	Setup    string
	Width    int
	Height   int
	LabelW   int
	Bars     []plotBar
	Clients  []plotClient
	Baseline string
	Summary  []plotRun
}

func (r *report) plotData() plotData {
	d := plotData{Width: svgWidth, LabelW: svgLabelW, Baseline: r.Baseline}
	d.Header = fmt.Sprintf("%s %s%s", r.Method, r.server(), r.shape())
	d.Setup = fmt.Sprintf("%s, concurrency %d, %s per client; %s %s, %s",
		r.perRun(), r.Concurrency, plural(r.Runs, "run"), r.Go, r.Platform, plural(r.CPUs, "CPU"))
	var top float64
	for _, res := range r.Results {
		top = max(top, res.Average.RPS)
		d.LabelW = max(d.LabelW, (len(res.Setup)+len(res.Client)+2)*svgCharW+10)
	}
	d.Width = max(d.Width, d.LabelW+svgBarMaxW+100)
	for i, res := range r.Results {
		w := 0
		if top > 0 {
			w = int(res.Average.RPS / top * svgBarMaxW)
		}
		d.Bars = append(d.Bars, plotBar{
			Label: res.Setup + ", " + res.Client, Value: commas(res.Average.RPS, 1),
			Y: i*svgRowH + 4, TextY: i*svgRowH + 17, W: w, ValueX: d.LabelW + w + 6,
		})
	}
	d.Height = len(d.Bars)*svgRowH + 8
	for _, res := range r.Results {
		c := plotClient{Title: res.Setup + ", " + res.Client + ": " + res.Description}
		var most int64
		labelW := svgHistLabW
		for _, b := range res.Histogram {
			most = max(most, b.Count)
			c.Buckets = append(c.Buckets, plotBar{Label: strconv.FormatFloat(b.Ms, 'f', 3, 64) + " ms [" + strconv.FormatInt(b.Count, 10) + "]"})
			labelW = max(labelW, len(c.Buckets[len(c.Buckets)-1].Label)*svgCharW+10)
		}
		d.Width = max(d.Width, labelW+svgHistMaxW+20)
		for i, b := range res.Histogram {
			w := 0
			if most > 0 {
				w = int(float64(b.Count) / float64(most) * svgHistMaxW)
			}
			bb := &c.Buckets[i]
			bb.Y, bb.TextY, bb.W, bb.ValueX = i*svgRowH+4, i*svgRowH+17, w, labelW
		}
		c.Height = max(len(c.Buckets), 1)*svgRowH + 8
		for i := range res.Runs {
			c.Runs = append(c.Runs, plotRow(fmt.Sprintf("Run %d", i+1), &res.Runs[i]))
		}
		c.Runs = append(c.Runs, plotRow("Average", &res.Average))
		d.Clients = append(d.Clients, c)
		row := plotRow(res.Setup+", "+res.Client, &res.Average)
		row.VsBaseline = "-"
		if res.VsBaseline != nil {
			row.VsBaseline = fmt.Sprintf("%+.1f%%", *res.VsBaseline)
		} else if r.Baseline == res.Client+" ("+res.Setup+")" {
			row.VsBaseline = "baseline"
		}
		d.Summary = append(d.Summary, row)
	}
	return d
}

func plotRow(label string, run *runResult) plotRun {
	return plotRun{
		Label:  label,
		RPS:    commas(run.RPS, 1),
		P50:    strconv.FormatFloat(run.P50Ms, 'f', 3, 64),
		P99:    strconv.FormatFloat(run.P99Ms, 'f', 3, 64),
		Errors: commas(float64(run.Errors), 0),
	}
}

// plotPage is the page. It is well-formed XML as well as HTML (every
// element closed, no named entities), so that tests can parse it.
var plotPage = template.Must(template.New("plot").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<title>kabench</title>
<style>
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { padding: 2px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr:nth-child(even) td { background: #f2f2f2; }
svg text { font-size: 13px; font-family: monospace; }
</style>
</head>
<body>
<h1>kabench</h1>
<p>{{.Header}}<br/>{{.Setup}}</p>

<h2>Requests/s (averages)</h2>
<svg width="{{.Width}}" height="{{.Height}}" role="img" aria-label="Requests per second per client and setup">
{{- range .Bars}}
<text x="0" y="{{.TextY}}">{{.Label}}</text>
<rect x="{{$.LabelW}}" y="{{.Y}}" width="{{.W}}" height="16" fill="#4682b4"/>
<text x="{{.ValueX}}" y="{{.TextY}}">{{.Value}}</text>
{{- end}}
</svg>

<h2>Averages</h2>
<p>vs baseline: the difference in requests/s to {{.Baseline}}.</p>
<table>
<tr><th>Setup, client</th><th>Requests/s</th><th>p50 (ms)</th><th>p99 (ms)</th><th>Errors</th><th>vs baseline</th></tr>
{{- range .Summary}}
<tr><td>{{.Label}}</td><td>{{.RPS}}</td><td>{{.P50}}</td><td>{{.P99}}</td><td>{{.Errors}}</td><td>{{.VsBaseline}}</td></tr>
{{- end}}
</table>
{{range .Clients}}
<h2>Latency, {{.Title}}</h2>
<svg width="{{$.Width}}" height="{{.Height}}" role="img" aria-label="Latency histogram">
{{- range .Buckets}}
<text x="0" y="{{.TextY}}">{{.Label}}</text>
<rect x="{{.ValueX}}" y="{{.Y}}" width="{{.W}}" height="16" fill="#2e8b57"/>
{{- else}}
<text x="0" y="17">no request succeeded</text>
{{- end}}
</svg>
<table>
<tr><th>Run</th><th>Requests/s</th><th>p50 (ms)</th><th>p99 (ms)</th><th>Errors</th></tr>
{{- range .Runs}}
<tr><td>{{.Label}}</td><td>{{.RPS}}</td><td>{{.P50}}</td><td>{{.P99}}</td><td>{{.Errors}}</td></tr>
{{- end}}
</table>
{{end}}
</body>
</html>
`))
