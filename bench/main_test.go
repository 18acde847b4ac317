package main

import (
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMain lets the test binary be the benchmark's server process, as the
// command's binary is when it runs.
func TestMain(m *testing.M) {
	if os.Getenv(serveEnv) == "1" {
		if err := serve(); err != nil {
			fmt.Fprintln(os.Stderr, "bench server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestParseConfigRejectsBadInput(t *testing.T) {
	tests := []struct {
		name                     string
		dur                      time.Duration
		rounds                   int
		conc, clients, scenarios string
		putSize                  int64
	}{
		{"zero duration", 0, 1, "1", "", "healthy", 1},
		{"zero rounds", time.Second, 0, "1", "", "healthy", 1},
		{"zero concurrency", time.Second, 1, "0", "", "healthy", 1},
		{"non-numeric concurrency", time.Second, 1, "8,x", "", "healthy", 1},
		{"unknown client", time.Second, 1, "1", "keepalive,curl", "healthy", 1},
		{"unknown scenario", time.Second, 1, "1", "", "healthy,stormy", 1},
		{"zero put size", time.Second, 1, "1", "", "put", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig(tt.dur, tt.rounds, tt.conc, tt.clients, tt.scenarios, tt.putSize)
			assert.Error(t, err)
		})
	}
}

func TestParseConfigDefaultsToAllClients(t *testing.T) {
	cfg, err := parseConfig(time.Second, 1, "1, 8", "", "healthy", 1)
	require.NoError(t, err)
	assert.Equal(t, []int{1, 8}, cfg.conc)
	require.Len(t, cfg.peers, len(peers))
	for i := range peers {
		assert.Equal(t, peers[i].name, cfg.peers[i].name)
	}
}

func TestRotateGivesEveryClientEveryPosition(t *testing.T) {
	first := map[string]bool{}
	for round := range len(peers) {
		order := rotate(peers, round)
		require.Len(t, order, len(peers))
		first[order[0].name] = true
	}
	assert.Len(t, first, len(peers))
}

func TestGenReaderProducesExactlyN(t *testing.T) {
	for _, n := range []int64{0, 1, 26, 32<<10 + 7} {
		got, err := io.ReadAll(newGenReader(n))
		require.NoError(t, err)
		assert.Len(t, got, int(n))
	}
}

// TestMeasureAll runs every client through every scenario briefly against
// the real server process, and checks the properties the tables show.
func TestMeasureAll(t *testing.T) {
	const putSize = 4 << 20
	cfg := config{
		dur:       50 * time.Millisecond,
		rounds:    1,
		conc:      []int{2},
		peers:     peers,
		scenarios: []string{"healthy", "flaky", "put"},
		putSize:   putSize,
	}
	res, err := measureAll(cfg)
	require.NoError(t, err)

	for _, p := range peers {
		r := res.cells[cellKey{"healthy", 2, p.name}]
		require.NotNil(t, r, p.name)
		assert.Positive(t, r.requests, p.name)
		assert.Zero(t, r.errors+r.non200, "%s failed on a healthy server", p.name)
		assert.Equal(t, r.requests, r.serverRequests, "%s: one server hit per request", p.name)
		assert.Positive(t, r.mallocs, p.name)
	}
	ours := res.cells[cellKey{"healthy", 2, "keepalive"}]
	assert.Zero(t, ours.newConns, "keepalive dialed after its pool was warm")

	flaky := res.cells[cellKey{"flaky", 2, "keepalive"}]
	assert.Greater(t, flaky.serverRequests, flaky.requests, "keepalive did not retry the 503s")
	assert.Zero(t, flaky.newConns, "keepalive lost connections to drained 503s")
	assert.Zero(t, flaky.goroutinesLeft)
	assert.Positive(t, res.cells[cellKey{"flaky", 2, "default"}].non200, "the default client retried")

	for _, p := range peers {
		require.Len(t, res.puts[p.name], 1, p.name)
		require.NoError(t, res.puts[p.name][0].err, p.name)
	}
	put := res.puts["keepalive"][0]
	assert.Equal(t, 200, put.status)
	assert.EqualValues(t, 2, put.attempts)
	assert.Less(t, put.peakHeap, uint64(putSize/4), "keepalive buffered the streamed body")
	buffered := res.puts["retryablehttp"][0]
	assert.Equal(t, 200, buffered.status)
	assert.GreaterOrEqual(t, buffered.peakHeap, uint64(putSize), "retryablehttp no longer buffers the body")
}
