package main

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTLSServesTheEmbeddedServerOverHTTPS(t *testing.T) {
	const n, c = 200, 4
	r := runKabench(t, nil, nil, "-tls", "-n", "200", "-c", "4", "-runs", "1")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Contains(t, r.stdout, "GET https://127.0.0.1:")
	assert.Contains(t, r.stdout, "Protocol  TLS handshakes")
	assert.Contains(t, r.stdout, "HTTP/2")
	assert.Contains(t, r.stdout, "Note: over HTTP/2")
	assert.Empty(t, r.stderr)

	r = runKabench(t, nil, nil, "-tls", "-n", "200", "-c", "4", "-runs", "1", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	for _, res := range rep.Results {
		run := res.Runs[0]
		assert.EqualValues(t, n, run.Requests, res.Client)
		assert.Equal(t, "HTTP/2", run.Protocol, res.Client)
		assert.Equal(t, "HTTP/2", res.Average.Protocol, res.Client)
		require.NotNil(t, run.TLSHandshake, res.Client)
		// A handshake per connection, but for dials dropped before theirs.
		assert.Positive(t, *run.TLSHandshake, res.Client)
		assert.LessOrEqual(t, *run.TLSHandshake, run.NewConns, res.Client)
	}
	nokeep := find(t, rep, "direct", clientNoKeepAlive).Runs[0]
	assert.GreaterOrEqual(t, *nokeep.TLSHandshake, int64(n), "a handshake per request")
	keep := find(t, rep, "direct", clientKeepAlive).Runs[0]
	assert.Positive(t, *keep.TLSHandshake)
	assert.LessOrEqual(t, *keep.TLSHandshake, int64(2*c))
}

func TestHTTP1ForcesHTTP11OverTLS(t *testing.T) {
	const n, c = 200, 4
	r := runKabench(t, nil, nil, "-tls", "-http1", "-n", "200", "-c", "4", "-runs", "1", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	for _, res := range rep.Results {
		run := res.Runs[0]
		assert.EqualValues(t, n, run.Requests, res.Client)
		assert.Equal(t, "HTTP/1.1", run.Protocol, res.Client)
		require.NotNil(t, run.TLSHandshake, res.Client)
	}
	assert.EqualValues(t, n, *find(t, rep, "direct", clientNoKeepAlive).Runs[0].TLSHandshake)
	assert.LessOrEqual(t, *find(t, rep, "direct", clientKeepAlive).Runs[0].TLSHandshake, int64(2*c))
}

func TestPlainHTTPHasAProtocolAndNoHandshakes(t *testing.T) {
	r := runKabench(t, nil, nil, "-n", "50", "-c", "2", "-runs", "1", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	for _, res := range decode(t, r.stdout).Results {
		assert.Equal(t, "HTTP/1.1", res.Runs[0].Protocol, res.Client)
		assert.Nil(t, res.Runs[0].TLSHandshake, res.Client)
	}
}

// newTLSServer starts an httptest TLS server, with HTTP/2 if h2, and
// writes its certificate to a PEM file.
func newTLSServer(t *testing.T, h2 bool) (*httptest.Server, string) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok"))
	}))
	srv.EnableHTTP2 = h2
	srv.StartTLS()
	t.Cleanup(srv.Close)
	path := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	require.NoError(t, os.WriteFile(path, pemBytes, 0o600))
	return srv, path
}

func TestCACertTrustsAnHTTPSURL(t *testing.T) {
	srv, ca := newTLSServer(t, false)
	r := runKabench(t, nil, nil, "-url", srv.URL, "-cacert", ca, "-n", "100", "-c", "2", "-runs", "1", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Empty(t, r.stderr)
	rep := decode(t, r.stdout)
	for _, res := range rep.Results {
		assert.Equal(t, "HTTP/1.1", res.Runs[0].Protocol, res.Client)
		require.NotNil(t, res.Runs[0].TLSHandshake, res.Client)
		assert.Positive(t, *res.Runs[0].TLSHandshake, res.Client)
	}

	// Without -cacert the certificate is unknown: the probe fails.
	r = runKabench(t, nil, nil, "-url", srv.URL, "-n", "10", "-runs", "1")
	assert.Equal(t, exitFailure, r.code)
	assert.Contains(t, r.stderr, "certificate signed by unknown authority; trust the server's certificate authority with -cacert FILE (PEM), or skip verification with -insecure\n")
}

func TestInsecureSkipsVerificationWithAWarning(t *testing.T) {
	srv, _ := newTLSServer(t, false)
	r := runKabench(t, nil, nil, "-url", srv.URL, "-insecure", "-n", "50", "-c", "2", "-runs", "1")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	assert.Contains(t, r.stderr, "kabench: warning: -insecure: the server's certificate is not verified")
	assert.Contains(t, r.stdout, "HTTP/1.1")
	assert.Contains(t, r.stdout, "TLS handshakes")
}

// Against a server that offers HTTP/2, -http1 turns it off for every
// client (keepalive through keepalive.WithoutHTTP2).
func TestHTTP1AgainstAnHTTP2URL(t *testing.T) {
	srv, ca := newTLSServer(t, true)
	r := runKabench(t, nil, nil, "-url", srv.URL, "-cacert", ca, "-n", "50", "-c", "2", "-runs", "1", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	for _, res := range decode(t, r.stdout).Results {
		assert.Equal(t, "HTTP/2", res.Runs[0].Protocol, res.Client)
	}

	r = runKabench(t, nil, nil, "-url", srv.URL, "-cacert", ca, "-http1", "-n", "50", "-c", "2", "-runs", "1", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	for _, client := range []string{clientNoKeepAlive, clientDefault, clientKeepAlive} {
		assert.Equal(t, "HTTP/1.1", find(t, rep, "direct", client).Runs[0].Protocol, client)
	}
}

func TestInvalidTLSFlagsExitWithAMessageNamingTheFlag(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	require.NoError(t, os.WriteFile(notPEM, []byte("hello\n"), 0o600))
	missing := filepath.Join(dir, "missing.pem")
	tests := []usageCase{
		{"cacert with tls", []string{"-tls", "-cacert", notPEM}, "invalid -cacert: -tls trusts its own generated certificate"},
		{"cacert missing", []string{"-url", "https://127.0.0.1:1/", "-cacert", missing}, "invalid -cacert: open " + missing},
		{"cacert without certificates", []string{"-url", "https://127.0.0.1:1/", "-cacert", notPEM}, "invalid -cacert: no PEM certificate in " + notPEM},
		{"cacert with http", []string{"-url", "http://127.0.0.1:1/", "-cacert", notPEM}, "invalid -cacert: needs an https -url"},
		{"cacert with insecure", []string{"-url", "https://127.0.0.1:1/", "-cacert", notPEM, "-insecure"}, "invalid -cacert: cannot be combined with -insecure"},
		{"insecure without a URL", []string{"-insecure"}, "invalid -insecure: needs an https -url"},
		{"insecure with http", []string{"-insecure", "-url", "http://127.0.0.1:1/"}, "invalid -insecure: needs an https -url"},
		{"insecure with tls", []string{"-insecure", "-tls"}, "invalid -insecure: -tls trusts its own generated certificate"},
		{"tls with a URL", []string{"-tls", "-url", "https://127.0.0.1:1/"}, "invalid -tls: serves the embedded server (or nginx) over TLS"},
	}
	checkUsageErrors(t, tests)
}

func TestProxyNginxTLS(t *testing.T) {
	bin, err := exec.LookPath("nginx")
	if err != nil && os.Getenv("CI") == "" {
		t.Skip("nginx is not on PATH; install nginx (or nginx-light) to test -proxy nginx -tls")
	}
	const n, c = 100, 4
	want := "HTTP/1.1"
	if nginxHTTP2(bin) != "" {
		want = "HTTP/2"
	}
	for _, http1 := range []bool{false, true} {
		args := []string{"-proxy", "nginx", "-tls", "-n", "100", "-c", "4", "-runs", "1", "-json"}
		if http1 {
			args, want = append(args, "-http1"), "HTTP/1.1"
		}
		r := runKabench(t, nil, nil, args...)
		require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
		rep := decode(t, r.stdout)
		require.Len(t, rep.Results, 6)
		for _, res := range rep.Results {
			run := res.Runs[0]
			assert.EqualValues(t, n, run.Requests, res.Client)
			assert.Equal(t, want, run.Protocol, "%s, %s, -http1 %v", res.Setup, res.Client, http1)
			require.NotNil(t, run.TLSHandshake, res.Client)
			assert.Positive(t, *run.TLSHandshake, res.Client)
			assert.LessOrEqual(t, *run.TLSHandshake, run.NewConns, res.Client)
		}
		assert.GreaterOrEqual(t, *find(t, rep, "nginx, upstream keep-alive on", clientNoKeepAlive).Runs[0].TLSHandshake, int64(n))
		assert.LessOrEqual(t, *find(t, rep, "nginx, upstream keep-alive on", clientKeepAlive).Runs[0].TLSHandshake, int64(2*c))
		u, err := url.Parse(rep.URL)
		require.NoError(t, err)
		assert.Equal(t, "https", u.Scheme)
		assertNginxStopped(t, "http://"+u.Host+"/")
	}
}

func TestHelpListsTheTLSFlags(t *testing.T) {
	r := runKabench(t, nil, nil, "-h")
	assert.Equal(t, exitOK, r.code)
	for _, flag := range []string{"-tls", "-cacert FILE", "-insecure", "-http1"} {
		assert.Contains(t, r.stderr, flag)
	}
}
