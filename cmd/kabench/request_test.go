package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// seenRequest is what a server saw of a request.
type seenRequest struct {
	host, auth, custom, body string
}

func TestHeadersHostAndBodyFileReachTheServerFromEveryClient(t *testing.T) {
	const n = 20
	var mu sync.Mutex
	seen := map[seenRequest]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen[seenRequest{r.Host, r.Header.Get("Authorization"), r.Header.Get("X-Custom"), string(b)}]++
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	body := filepath.Join(t.TempDir(), "body.json")
	require.NoError(t, os.WriteFile(body, []byte(`{"items":[1,2,3]}`), 0o600))

	r := runKabench(t, nil, nil, "-url", srv.URL, "-method", "POST", "-body-file", body,
		"-H", "Authorization: Bearer s3cret", "-H", "x-custom:  a: b ", "-H", "Host: api.example.test",
		"-n", "20", "-c", "2", "-runs", "1", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	want := seenRequest{"api.example.test", "Bearer s3cret", "a: b", `{"items":[1,2,3]}`}
	assert.Equal(t, map[seenRequest]int{want: 3*n + 1}, seen, "every request of every client, and the probe")
	rep := decode(t, r.stdout)
	assert.Equal(t, []string{"Authorization", "X-Custom"}, rep.Headers, "names only")
	assert.NotContains(t, r.stdout, "s3cret", "a header's value may be a secret")
	assert.Equal(t, "api.example.test", rep.Host)
	assert.Equal(t, len(want.body), rep.BodyBytes)
	assert.Equal(t, body, rep.BodyFile)

	r = runKabench(t, nil, nil, "-url", srv.URL, "-H", "Authorization: Bearer s3cret", "-H", "Host: api.example.test",
		"-n", "2", "-c", "1", "-runs", "1", "-clients", "keepalive")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Contains(t, r.stdout, "kabench: GET "+srv.URL+", headers Authorization, Host api.example.test\n")
	assert.NotContains(t, r.stdout, "s3cret")
}

func TestDurationRunsEachRunForATime(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	t.Cleanup(srv.Close)
	r := runKabench(t, nil, nil, "-url", srv.URL, "-z", "300ms", "-c", "2", "-runs", "2", "-clients", "nokeepalive,keepalive", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	assert.InDelta(t, 0.3, rep.RunSeconds, 1e-9)
	assert.Zero(t, rep.Requests, "no request count with -z")
	var total int64
	for _, res := range rep.Results {
		require.Len(t, res.Runs, 2)
		for _, run := range res.Runs {
			assert.Positive(t, run.Requests, res.Client)
			assert.Zero(t, run.Errors, "%s: requests cut off by the end of the run are not errors", res.Client)
			assert.False(t, run.Aborted, res.Client)
			assert.GreaterOrEqual(t, run.Seconds, 0.3, res.Client)
			assert.Less(t, run.Seconds, 5.0, "%s: the end of the run cuts off the requests in flight", res.Client)
			total += run.Requests
		}
	}
	assert.GreaterOrEqual(t, hits.Load(), total+1, "the runs' requests and the probe")

	r = runKabench(t, nil, nil, "-url", srv.URL, "-z", "100ms", "-c", "2", "-runs", "1", "-clients", "keepalive")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Contains(t, r.stdout, "each run 100ms, concurrency 2,")
}

func TestInvalidRequestShapeExitsWithAMessageNamingTheFlag(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.json")
	body := filepath.Join(dir, "body")
	require.NoError(t, os.WriteFile(body, []byte("x"), 0o600))
	tests := []usageCase{
		{"header without a colon", []string{"-H", "Authorization Bearer x"}, `invalid -H: "Authorization Bearer x" has no colon (want 'Name: value')`},
		{"header with a space in its name", []string{"-H", "X Y: z"}, `invalid -H: "X Y" is not a header name`},
		{"empty header name", []string{"-H", ": z"}, `invalid -H: "" is not a header name`},
		{"header value with a line break", []string{"-H", "X-A: 1\r\nX-B: 2"}, "invalid -H: the value of X-A has a line break or NUL"},
		{"Content-Length header", []string{"-H", "content-length: 5"}, "invalid -H: content-length follows from the body; give the body with -body or -body-file"},
		{"missing body file", []string{"-body-file", missing}, "invalid -body-file: open " + missing},
		{"body file and body size", []string{"-body-file", body, "-body", "10"}, "invalid -body-file: cannot be combined with -body"},
		{"duration and count", []string{"-z", "1s", "-n", "10"}, "invalid -z: runs each run for a time instead of -n requests; give one of them"},
		{"zero duration", []string{"-z", "0s"}, "invalid -z: must be positive, got 0s"},
	}
	checkUsageErrors(t, tests)
}
