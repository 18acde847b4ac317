package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A probe that nginx answers with 502 shows why: the end of nginx's
// error log, not a bare status.
func TestProxyNginxProbeFailureShowsNginxErrorLog(t *testing.T) {
	requireNginx(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens there now

	r := runKabench(t, nil, nil, "-proxy", "nginx", "-upstream", addr, "-n", "10", "-runs", "1")
	assert.Equal(t, exitFailure, r.code)
	assert.Contains(t, r.stderr, `answered "502 Bad Gateway" to a probe GET request`)
	assert.Contains(t, r.stderr, "\nthe end of nginx's error log:\n  ")
	assert.Contains(t, r.stderr, "connect() failed (111: Connection refused) while connecting to upstream")
	assert.Contains(t, r.stderr, `upstream: "http://`+addr+`/"`)
	assert.Empty(t, r.stdout)
}

// A socket in a directory only its owner may enter (mktemp -d makes
// one): started as root, nginx's workers run as the socket's owner, who
// can open it. Started as another user, they run as that user anyway.
func TestProxyNginxReachesASocketInAPrivateDirectory(t *testing.T) {
	requireNginx(t)
	const n = 20
	s := startPrivateUnixServer(t, "/items")
	st, err := os.Stat(filepath.Dir(s.sock))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())

	r := runKabench(t, nil, nil, "-proxy", "nginx", "-upstream", "unix:"+s.sock, "-path", "/items",
		"-n", "20", "-c", "2", "-runs", "1", "-clients", "keepalive", "-json")
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	for _, res := range rep.Results {
		assert.EqualValues(t, n, res.Runs[0].Requests, res.Setup)
	}
	assert.EqualValues(t, 2*n+2, s.hits.Load(), "both setups' runs and probes reached the app")
	assertNginxStopped(t, rep.URL)
}

// When even the socket's owner cannot reach it, kabench says which
// directory blocks it before it starts nginx.
func TestNginxUserNamesTheDirectoryThatBlocksTheSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("nginx drops to another user only when started as root")
	}
	const nobody = 65534
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} {
		require.NoError(t, os.Chmod(d, 0o755))
	}
	private := filepath.Join(base, "private")
	require.NoError(t, os.Mkdir(private, 0o700)) // root's alone
	sock := filepath.Join(private, "app.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	require.NoError(t, os.Chown(sock, nobody, nobody))

	_, err = nginxUser("unix:" + sock)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "-upstream unix:"+sock+": nginx's workers run as nobody, the socket's owner, who cannot search the directory "+private+" (mode drwx------, owner uid 0, gid 0): allow it (chmod o+x "+private+", or a group of the owner), or put the socket elsewhere")

	requireNginx(t)
	r := runKabench(t, nil, nil, "-proxy", "nginx", "-upstream", "unix:"+sock, "-n", "10", "-runs", "1")
	assert.Equal(t, exitFailure, r.code)
	assert.Contains(t, r.stderr, "cannot search the directory "+private)

	// Open the directory, and the socket's mode is next.
	require.NoError(t, os.Chmod(private, 0o711))
	require.NoError(t, os.Chmod(sock, 0o555))
	_, err = nginxUser("unix:" + sock)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "who cannot write to it (mode Sr-xr-xr-x, owner uid 65534, gid 65534): chmod u+w "+sock)

	require.NoError(t, os.Chmod(sock, 0o755))
	directive, err := nginxUser("unix:" + sock)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(directive, "user nobody "), directive)
}

func TestNginxUserIsEmptyButForAUnixSocketAsRoot(t *testing.T) {
	directive, err := nginxUser("127.0.0.1:8080")
	require.NoError(t, err)
	assert.Empty(t, directive)
	if os.Geteuid() != 0 {
		return
	}
	_, err = nginxUser("unix:" + filepath.Join(t.TempDir(), "missing.sock"))
	assert.ErrorContains(t, err, "missing.sock: no such file or directory")
	notSock := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(notSock, nil, 0o600))
	_, err = nginxUser("unix:" + notSock)
	assert.ErrorContains(t, err, notSock+" is not a socket")
}
