package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSpreadIsTheRangeOfTheRuns(t *testing.T) {
	runs := []runResult{
		{RPS: 100, MsPerRequest: 3, P50Ms: 1, P99Ms: 9, NewConns: 10},
		{RPS: 80, MsPerRequest: 4, P50Ms: 2, P99Ms: 5, NewConns: 12},
		{RPS: 120, MsPerRequest: 2, P50Ms: 1.5, P99Ms: 7, NewConns: 8},
	}
	assert.Equal(t, &spread{
		RPS:          minMax[float64]{80, 120},
		MsPerRequest: minMax[float64]{2, 4},
		P50Ms:        minMax[float64]{1, 2},
		P99Ms:        minMax[float64]{5, 9},
		NewConns:     minMax[int64]{8, 12},
	}, spreadOf(runs))
	assert.Nil(t, spreadOf(runs[:1]), "one run has no spread")

	assert.Equal(t, "80.0-120.0", minMax[float64]{80, 120}.format(1))
	assert.Equal(t, "8-12,000", minMax[int64]{8, 12000}.format(0))
	assert.Equal(t, "±20%", minMax[float64]{80, 120}.plusMinus(100))
	assert.Equal(t, "±2.5%", minMax[float64]{95, 100}.plusMinus(100))
	assert.Equal(t, "±0%", minMax[float64]{0, 0}.plusMinus(0))
}

func TestSpreadIsPrintedNextToTheAverages(t *testing.T) {
	r := runKabench(t, nil, nil, "-n", "100", "-c", "2", "-runs", "2", "-clients", "default,keepalive", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	for _, res := range decode(t, r.stdout).Results {
		sp := res.Spread
		require.NotNil(t, sp, res.Client)
		assert.LessOrEqual(t, sp.RPS[0], res.Average.RPS, res.Client)
		assert.GreaterOrEqual(t, sp.RPS[1], res.Average.RPS, res.Client)
		assert.Equal(t, min(res.Runs[0].P99Ms, res.Runs[1].P99Ms), sp.P99Ms[0], res.Client)
		assert.Equal(t, max(res.Runs[0].NewConns, res.Runs[1].NewConns), sp.NewConns[1], res.Client)
	}

	r = runKabench(t, nil, nil, "-n", "100", "-c", "2", "-runs", "2", "-clients", "default,keepalive")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Equal(t, 2, strings.Count(r.stdout, "\n  Min-max "), "a row under each client's average")
	assert.Regexp(t, `\n  Min-max +[0-9,.]+-[0-9,.]+ +[0-9.]+-[0-9.]+ +[0-9.]+-[0-9.]+ +[0-9.]+-[0-9.]+ +[0-9,]+-[0-9,]+\n`, r.stdout)
	row := regexp.MustCompile(`\n  direct  keepalive +[0-9,.]+ +±[0-9.]+% +[0-9.]+ +±[0-9.]+% +[0-9.]+ +±[0-9.]+% +[0-9.]+ +±[0-9.]+% +[0-9,]+ `)
	assert.Regexp(t, row, r.stdout, "the summary's rates and percentiles have their spread")

	r = runKabench(t, nil, nil, "-n", "20", "-c", "2", "-runs", "1", "-clients", "keepalive")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.NotContains(t, r.stdout, "Min-max")
	assert.NotContains(t, r.stdout, "±")
}

func TestQuietPrintsTheSummaryAlone(t *testing.T) {
	r := runKabench(t, nil, nil, "-q", "-n", "50", "-c", "2", "-runs", "1")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.True(t, strings.HasPrefix(r.stdout, "kabench: GET http://127.0.0.1:"), r.stdout)
	assert.Contains(t, r.stdout, " per client in rounds, a new client per run; go")
	assert.Contains(t, r.stdout, "\n\nSummary (averages; difference in requests/s to nokeepalive (direct))\n")
	assert.Contains(t, r.stdout, "\nWhere the time goes (ms per request, averages)\n")
	assert.NotContains(t, r.stdout, "Test run 1", "no table per client")
	assert.NotContains(t, r.stdout, "Requests/s (averages)", "no charts")
	assert.NotContains(t, r.stdout, "Latency histogram")
}

func TestHelpEndsWithExamples(t *testing.T) {
	r := runKabench(t, nil, nil, "-h")
	assert.Equal(t, exitOK, r.code)
	_, examples, ok := strings.Cut(r.stderr, "\nExamples:\n")
	require.True(t, ok, r.stderr)
	for _, want := range []string{
		"  kabench -q -n 2000 ", "  kabench -tls -http1 ", "  kabench -proxy nginx ",
		"-H 'Authorization: Bearer TOKEN'", "-body-file order.json", "-z 30s", "-plot kabench.html",
	} {
		assert.Contains(t, examples, want)
	}
	for _, flag := range []string{"-q\t", "-z duration\n", "-H 'Name: value'\n", "-body-file FILE\n"} {
		assert.Contains(t, r.stderr, "\n  "+flag, "the flag list has %s", flag)
	}
}
