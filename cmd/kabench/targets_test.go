package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// unixServer is a Go HTTP server on a unix socket that answers only
// requests for its path.
type unixServer struct {
	sock string
	hits atomic.Int64
}

func startUnixServer(t *testing.T, path string) *unixServer {
	t.Helper()
	s := startPrivateUnixServer(t, path)
	// Open to everyone, as a socket nginx's default worker user (nobody)
	// could use.
	dir := filepath.Dir(s.sock)
	for _, d := range []string{filepath.Dir(dir), dir} {
		require.NoError(t, os.Chmod(d, 0o755))
	}
	require.NoError(t, os.Chmod(s.sock, 0o666))
	return s
}

// startPrivateUnixServer is startUnixServer with the socket in a directory
// only its owner may enter, as mktemp -d makes.
func startPrivateUnixServer(t *testing.T, path string) *unixServer {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o700))
	s := &unixServer{sock: filepath.Join(dir, "app.sock")}
	ln, err := net.Listen("unix", s.sock)
	require.NoError(t, err)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != path {
				http.NotFound(w, r)
				return
			}
			s.hits.Add(1)
			_, _ = w.Write([]byte("ok\n"))
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return s
}

func TestTwoURLsAreComparedWithTheFirstAsBaseline(t *testing.T) {
	const n = 100
	var hitsA, hitsB atomic.Int64
	a := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hitsA.Add(1) }))
	defer a.Close()
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hitsB.Add(1) }))
	defer b.Close()

	r := runKabench(t, nil, nil, "-url", a.URL+"/a", "-label", "first", "-url", b.URL+"/b", "-label", "second",
		"-n", "100", "-c", "2", "-runs", "1", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	require.Len(t, rep.Results, 6)
	assert.Equal(t, "nokeepalive (first)", rep.Baseline)
	assert.Equal(t, []targetInfo{{"first", a.URL + "/a"}, {"second", b.URL + "/b"}}, rep.Targets)
	for i, client := range allClients {
		first, second := find(t, rep, "first", client), find(t, rep, "second", client)
		assert.Equal(t, client, rep.Results[i].Client, "the first target's results come first")
		assert.Equal(t, b.URL+"/b", second.URL)
		assert.EqualValues(t, n, first.Runs[0].Requests, client)
		assert.EqualValues(t, n, second.Runs[0].Requests, client)
		assert.Nil(t, second.Runs[0].ServerConns, "no server count for -url")
		require.NotNil(t, second.VsBaseline, client)
	}
	assert.Nil(t, find(t, rep, "first", clientNoKeepAlive).VsBaseline)
	assert.EqualValues(t, 3*n+1, hitsA.Load(), "every client's run and the probe")
	assert.EqualValues(t, 3*n+1, hitsB.Load())

	// The tables: labels, and the default label host:port/path.
	r = runKabench(t, nil, nil, "-url", a.URL+"/a,"+b.URL+"/b", "-n", "20", "-c", "2", "-runs", "1", "-clients", "default")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	hostA, hostB := strings.TrimPrefix(a.URL, "http://"), strings.TrimPrefix(b.URL, "http://")
	assert.Contains(t, r.stdout, hostA+"/a, default: ")
	assert.Contains(t, r.stdout, hostB+"/b, default: ")
	assert.Contains(t, r.stdout, "difference in requests/s to default ("+hostA+"/a)")
}

func TestUnixSocketTarget(t *testing.T) {
	const n = 50
	s := startUnixServer(t, "/items")
	r := runKabench(t, nil, nil, "-unix", s.sock, "-path", "/items", "-n", "50", "-c", "2", "-runs", "1", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	assert.Equal(t, "unix:"+s.sock+":/items", rep.URL)
	assert.False(t, rep.Embedded)
	require.Len(t, rep.Results, 3, "every client dials the socket (keepalive through WithDialContext)")
	for _, client := range []string{clientNoKeepAlive, clientDefault, clientKeepAlive} {
		run := find(t, rep, "direct", client).Runs[0]
		assert.EqualValues(t, n, run.Requests, client)
		assert.Zero(t, run.Errors, client)
	}
	assert.EqualValues(t, n, find(t, rep, "direct", clientNoKeepAlive).Runs[0].NewConns)
	assert.EqualValues(t, 3*n+1, s.hits.Load())
	// Reuse, not an exact count: the dial gate holds a dial at most 10 ms
	// for a connection coming free, and a CPU starved by a parallel -race
	// package can let one more dial through (seen once: 3 for 2 workers).
	assert.Less(t, find(t, rep, "direct", clientKeepAlive).Runs[0].NewConns, int64(n/10), "keepalive reuses its socket connections")

	// unix:PATH:/path as a -url, next to another socket.
	s2 := startUnixServer(t, "/")
	r = runKabench(t, nil, nil, "-url", "unix:"+s.sock+":/items", "-url", "unix:"+s2.sock,
		"-n", "20", "-c", "2", "-runs", "1", "-clients", "default", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep = decode(t, r.stdout)
	require.Len(t, rep.Results, 2)
	assert.Equal(t, "unix:"+s.sock+"/items", rep.Results[0].Setup)
	assert.Equal(t, "unix:"+s2.sock+"/", rep.Results[1].Setup)
	assert.EqualValues(t, 20, rep.Results[1].Runs[0].Requests)
}

func TestProxyNginxInFrontOfAnUpstreamOnAUnixSocket(t *testing.T) {
	if _, err := exec.LookPath("nginx"); err != nil && os.Getenv("CI") == "" {
		t.Skip("nginx is not on PATH; install nginx (or nginx-light) to test -proxy nginx -upstream")
	}
	const n = 100
	s := startUnixServer(t, "/items")
	r := runKabench(t, nil, nil, "-proxy", "nginx", "-upstream", "unix:"+s.sock, "-path", "/items",
		"-n", "100", "-c", "4", "-runs", "1", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	require.Len(t, rep.Results, 6)
	assert.False(t, rep.Embedded)
	assert.Equal(t, "unix:"+s.sock, rep.Upstream)
	assert.Equal(t, "nokeepalive (nginx, upstream keep-alive off)", rep.Baseline)
	for _, client := range allClients {
		for _, setup := range []string{"nginx, upstream keep-alive off", "nginx, upstream keep-alive on"} {
			run := find(t, rep, setup, client).Runs[0]
			assert.EqualValues(t, n, run.Requests, setup, client)
			assert.Nil(t, run.ServerConns, "the app's connections are unknown")
		}
	}
	assert.EqualValues(t, 6*n+2, s.hits.Load(), "every run and both probes reached the app")
	assertNginxStopped(t, rep.URL)
}

func TestInvalidTargetsExitWithAMessageNamingTheFlag(t *testing.T) {
	const u1, u2 = "http://127.0.0.1:1/", "http://127.0.0.1:2/"
	tests := []usageCase{
		{"more labels than URLs", []string{"-url", u1, "-label", "a,b"}, "invalid -label: 2 labels for 1 targets"},
		{"empty label", []string{"-url", u1 + "," + u2, "-label", "a,"}, "invalid -label: label 2 is empty"},
		{"duplicate label", []string{"-url", u1, "-url", u2, "-label", "a", "-label", "a"}, `invalid -label: two targets named "a"`},
		{"same URL twice", []string{"-url", u1 + "," + u1}, `invalid -url: two targets named "127.0.0.1:1/"`},
		{"empty URL", []string{"-url", u1 + ","}, "invalid -url: empty URL"},
		{"label without a URL", []string{"-label", "a"}, "invalid -label: 1 labels for 0 targets"},
		{"unix without a socket", []string{"-url", "unix::/x"}, "invalid -url: no socket path"},
		{"unix with a URL", []string{"-unix", "/tmp/a.sock", "-url", u1}, "invalid -unix: cannot be combined with -url"},
		{"nginx with unix", []string{"-proxy", "nginx", "-unix", "/tmp/a.sock"}, "invalid -proxy"},
		{"upstream without proxy", []string{"-upstream", "127.0.0.1:8080"}, "invalid -upstream: is the app behind -proxy nginx"},
		{"upstream without a port", []string{"-proxy", "nginx", "-upstream", "localhost"}, "invalid -upstream: want host:port or unix:/path.sock"},
		{"upstream on a relative socket", []string{"-proxy", "nginx", "-upstream", "unix:app.sock"}, "invalid -upstream: unix socket path must be absolute"},
		{"upstream into nginx.conf", []string{"-proxy", "nginx", "-upstream", "127.0.0.1:1; evil"}, "invalid -upstream"},
		{"path without a slash", []string{"-path", "items"}, `invalid -path: must start with /, got "items"`},
		{"path with URLs", []string{"-url", u1, "-path", "/x"}, "invalid -path: no target uses it"},
		{"comma inside a URL", []string{"-url", "http://127.0.0.1:1/?ids=1,2"}, `invalid -url: scheme must be http or https, got "" (-url splits its value at commas: write a comma inside a URL as %2C)`},
	}
	checkUsageErrors(t, tests)
}

func TestPathReachesTheEmbeddedServer(t *testing.T) {
	r := runKabench(t, nil, nil, "-path", "/items?x=1", "-n", "10", "-c", "1", "-runs", "1", "-clients", "default", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.True(t, strings.HasSuffix(decode(t, r.stdout).URL, "/items?x=1"))
}

func TestFailedProbeNamesTheNextStep(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/private" && r.Header.Get("Authorization") == "":
			w.WriteHeader(http.StatusUnauthorized)
		case r.URL.Path == "/read-only" && r.Method != http.MethodGet:
			w.WriteHeader(http.StatusMethodNotAllowed)
		case r.URL.Path != "/health" && r.URL.Path != "/private" && r.URL.Path != "/read-only":
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	s := startUnixServer(t, "/health")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"a -url that is not found", []string{"-url", srv.URL + "/"},
			`answered "404 Not Found" to a probe GET request; kabench measures endpoints that work: point -url at one that answers 2xx, such as a health endpoint (http://HOST/health)`},
		{"a socket path that is not found", []string{"-unix", s.sock},
			`answered "404 Not Found" to a probe GET request; kabench measures endpoints that work: point -path at one that answers 2xx, such as a health endpoint (-path /health)`},
		{"an endpoint behind auth", []string{"-url", srv.URL + "/private"},
			`answered "401 Unauthorized" to a probe GET request; kabench measures endpoints that work: give its credentials with -H 'Authorization: ...'`},
		{"a method the endpoint does not take", []string{"-url", srv.URL + "/read-only", "-method", "DELETE"},
			`answered "405 Method Not Allowed" to a probe DELETE request; kabench measures endpoints that work: it does not take DELETE; give another -method`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runKabench(t, nil, nil, append(tt.args, "-n", "10", "-runs", "1")...)
			assert.Equal(t, exitFailure, r.code)
			assert.Contains(t, r.stderr, tt.want)
			assert.Empty(t, r.stdout)
		})
	}

	// What the next step says works.
	for _, args := range [][]string{
		{"-url", srv.URL + "/health"},
		{"-unix", s.sock, "-path", "/health"},
		{"-url", srv.URL + "/private", "-H", "Authorization: Bearer x"},
	} {
		r := runKabench(t, nil, nil, append(args, "-n", "4", "-c", "1", "-runs", "1", "-clients", "keepalive")...)
		assert.Equal(t, exitOK, r.code, "%v: %s", args, r.stderr)
	}
}

func TestFailedProbeThroughNginxNamesPath(t *testing.T) {
	requireNginx(t)
	s := startUnixServer(t, "/health")
	r := runKabench(t, nil, nil, "-proxy", "nginx", "-upstream", "unix:"+s.sock, "-path", "/missing", "-n", "10", "-runs", "1")
	assert.Equal(t, exitFailure, r.code)
	assert.Contains(t, r.stderr, `answered "404 Not Found" to a probe GET request; kabench measures endpoints that work: point -path at one that answers 2xx, such as a health endpoint (-path /health)`)
	assert.Contains(t, r.stderr, "\nnginx's error log is empty", "the app answered 404, not nginx")
}
