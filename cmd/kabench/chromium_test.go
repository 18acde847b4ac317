package main

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The page as a person sees it: headless Chromium renders it in a
// 1200x1600 window, and the summary, the bars and every client's latency
// curve are on that first screen.
func TestPlotRendersInChromium(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not on PATH; .ci/run installs it (apt-get install chromium)")
		}
		t.Skip("chromium is not on PATH; install it (apt-get install chromium) to render -plot")
	}
	dir := t.TempDir()
	page := filepath.Join(dir, "kabench.html")
	r := runKabench(t, nil, nil, "-tls", "-http1", "-n", "300", "-c", "8", "-runs", "1", "-q", "-plot", page)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)

	shot := filepath.Join(dir, "kabench.png")
	screenshot(t, bin, page, shot)
	f, err := os.Open(shot)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	require.Equal(t, image.Rect(0, 0, 1200, 1600), img.Bounds())

	// Not blank: a good share of the screen is drawn, in many colors.
	b := img.Bounds()
	at := func(x, y int) color.RGBA { return color.RGBAModel.Convert(img.At(x, y)).(color.RGBA) }
	drawn, colors := 0, map[color.RGBA]bool{}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := at(x, y)
			colors[c] = true
			if c.R < 240 || c.G < 240 || c.B < 240 {
				drawn++
			}
		}
	}
	total := b.Dx() * b.Dy()
	assert.Greater(t, drawn, total/50, "at least 2%% of the screen drawn, got %d of %d pixels", drawn, total)
	assert.Greater(t, len(colors), 50, "text, bars and curves in many shades")

	// The latency chart's x axis is the longest line of the axes' color
	// across the screen; its curves are above it, the bars further up.
	axis := color.RGBA{0x44, 0x44, 0x44, 0xff}
	axisY, most := -1, 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		n := 0
		for x := b.Min.X; x < b.Max.X; x++ {
			if at(x, y) == axis {
				n++
			}
		}
		if n > most {
			axisY, most = y, n
		}
	}
	require.Greater(t, most, 500, "no latency axis on the first screen")
	chartTop := axisY - 360 // the plot area is 350 units high, about a pixel each
	for _, name := range allClients {
		want := hexColor(t, clientColors[name])
		bars, curve := 0, 0
		for y := b.Min.Y; y < axisY; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				if at(x, y) != want {
					continue
				}
				if y < chartTop {
					bars++
				} else {
					curve++
				}
			}
		}
		assert.Greater(t, bars, 500, "%s: its requests/s and connection bars", name)
		assert.Greater(t, curve, 100, "%s: its latency curve, above the fold", name)
	}
}

// screenshot renders the page at path into the PNG shot with headless
// Chromium, in a 1200x1600 window, with nothing fetched from the network.
func screenshot(t *testing.T, bin, page, shot string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), "--screenshot="+shot, "--window-size=1200,1600", "file://"+page)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "chromium: %s", out)
}

func hexColor(t *testing.T, hex string) color.RGBA {
	t.Helper()
	c := color.RGBA{A: 255}
	_, err := fmt.Sscanf(hex, "#%02x%02x%02x", &c.R, &c.G, &c.B)
	require.NoError(t, err, hex)
	return c
}
