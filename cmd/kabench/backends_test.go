package main

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBackendsFlagErrors(t *testing.T) {
	checkUsageErrors(t, []usageCase{
		{"zero", []string{"-backends", "0"}, "invalid -backends: must be between 1 and 64, got 0"},
		{"negative", []string{"-backends", "-2"}, "invalid -backends: must be between 1 and 64, got -2"},
		{"too many", []string{"-backends", "65"}, "invalid -backends: must be between 1 and 64, got 65"},
		{"not a number", []string{"-backends", "some"}, `invalid value "some" for flag -backends`},
		{"with a URL", []string{"-backends", "4", "-url", "http://127.0.0.1:1/"}, "invalid -backends: serves the embedded server on several loopback addresses behind one name, so it cannot be combined with -url"},
		{"with a unix socket", []string{"-backends", "4", "-unix", "/tmp/app.sock"}, "cannot be combined with -unix"},
		{"with nginx", []string{"-backends", "4", "-proxy", "nginx"}, "invalid -backends: serves the embedded server on several loopback addresses behind one name, so it cannot be combined with -proxy"},
		{"with an upstream", []string{"-backends", "4", "-upstream", "127.0.0.1:1"}, "cannot be combined with -upstream"},
		{"one, with a URL", []string{"-backends", "1", "-url", "http://127.0.0.1:1/"}, "invalid -backends"},
	})
}

// The point of -backends: Go's clients send every request to the first
// address of the name, keepalive spreads them over all. The per-backend
// counts are the server's, per run, and add up to the requests the run
// sent; the page draws each client's shares.
func TestBackendsShowWhereEachClientSendsItsRequests(t *testing.T) {
	const n, backends = 800, 4
	path := filepath.Join(t.TempDir(), "kabench.html")
	r := runKabench(t, nil, nil, "-backends", "4", "-n", "800", "-c", "8", "-runs", "2", "-json", "-plot", path)
	require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
	rep := decode(t, r.stdout)
	require.Len(t, rep.Backends, backends)
	_, port, err := net.SplitHostPort(rep.Backends[0])
	require.NoError(t, err)
	for i, b := range rep.Backends {
		assert.Equal(t, fmt.Sprintf("127.0.0.%d:%s", i+2, port), b, "backend %d", i)
	}
	assert.Equal(t, "http://"+backendsName+":"+port+"/", rep.URL)

	for _, res := range rep.Results {
		require.Len(t, res.Runs, 2, res.Client)
		var total int64
		for i, run := range res.Runs {
			require.Len(t, run.Backends, backends, "%s run %d", res.Client, i+1)
			var sum int64
			for _, c := range run.Backends {
				sum += c
			}
			assert.EqualValues(t, n, run.Requests, res.Client)
			assert.Equal(t, run.Requests+run.Retries, sum, "%s run %d: the server got every request of the run, and only those", res.Client, i+1)
			total += sum
		}
		require.Len(t, res.Average.Backends, backends, res.Client)
		require.Len(t, res.BackendShares, backends, res.Client)
		var shareSum float64
		for _, s := range res.BackendShares {
			shareSum += s
		}
		assert.InDelta(t, 100, shareSum, 0.3, res.Client)
	}
	for _, client := range []string{clientNoKeepAlive, clientDefault} {
		res := find(t, rep, "direct", client)
		assert.GreaterOrEqual(t, res.BackendShares[0], 90.0, "%s: the first address answers, and gets the requests: %v", client, res.BackendShares)
		prefix := fmt.Sprintf("%s sent %s of its requests to %s, the first address of %s: ", client, pct(res.BackendShares[0]), rep.Backends[0], backendsName)
		assert.True(t, hasPrefix(rep.Notes, prefix), "notes: %q", rep.Notes)
	}
	keep := find(t, rep, "direct", clientKeepAlive)
	for i, s := range keep.BackendShares {
		assert.Greater(t, s, 10.0, "keepalive: backend %d gets its share: %v", i, keep.BackendShares)
	}
	assert.True(t, hasPrefix(rep.Notes, "keepalive spread its requests over all 4 backends, "), "notes: %q", rep.Notes)

	b, err := os.ReadFile(path)
	require.NoError(t, err)
	page := string(b)
	assert.Equal(t, 5, assertWellFormedWithoutReferences(t, page), "the four charts and the backends'")
	charts := parseCharts(t, page)
	ch, ok := charts["backends"]
	require.True(t, ok, "no backends chart")
	for _, res := range rep.Results {
		for i, ep := range rep.Backends {
			series := res.Setup + ", " + res.Client + " " + ep
			assert.Equal(t, fmt.Sprintf("%.1f", res.BackendShares[i]), ch.rect(t, series).value, series)
		}
	}
	even := ch.linesOf("even")
	require.Len(t, even, len(rep.Results), "an even-share line per client")
	assert.Equal(t, "25.0", even[0].value)
}

// hasPrefix reports whether one of notes starts with prefix.
func hasPrefix(notes []string, prefix string) bool {
	for _, n := range notes {
		if strings.HasPrefix(n, prefix) {
			return true
		}
	}
	return false
}

// Over TLS the certificate covers the name, and keepalive spreads its
// requests over HTTP/2 (a connection per address) and HTTP/1.1 alike.
func TestBackendsOverTLS(t *testing.T) {
	for _, proto := range []string{"HTTP/2", "HTTP/1.1"} {
		t.Run(proto, func(t *testing.T) {
			args := []string{"-backends", "3", "-tls", "-n", "300", "-c", "6", "-runs", "1", "-clients", "default,keepalive", "-json"}
			if proto == "HTTP/1.1" {
				args = append(args, "-http1")
			}
			r := runKabench(t, nil, nil, args...)
			require.Equal(t, exitOK, r.code, "stderr: %s", r.stderr)
			rep := decode(t, r.stdout)
			assert.True(t, strings.HasPrefix(rep.URL, "https://"+backendsName+":"), rep.URL)
			def, keep := find(t, rep, "direct", clientDefault), find(t, rep, "direct", clientKeepAlive)
			for _, res := range []clientResult{def, keep} {
				assert.Zero(t, res.Average.Errors, res.Client)
				assert.Equal(t, proto, res.Average.Protocol, res.Client)
			}
			assert.GreaterOrEqual(t, def.BackendShares[0], 90.0, "default: %v", def.BackendShares)
			for i, s := range keep.BackendShares {
				assert.Greater(t, s, 10.0, "keepalive: backend %d: %v", i, keep.BackendShares)
			}
		})
	}
}

// The table: a row per backend with each client's count and share, then
// the largest and smallest share.
func TestWriteBackendsTable(t *testing.T) {
	rep := &report{
		Backends: []string{"127.0.0.2:8080", "127.0.0.3:8080"},
		Results: []clientResult{
			{Setup: "direct", Client: clientDefault, Runs: []runResult{{Backends: []int64{1000, 0}}}, Average: runResult{Backends: []int64{1000, 0}}},
			{Setup: "direct", Client: clientKeepAlive, Runs: []runResult{{Backends: []int64{480, 520}}, {Backends: []int64{520, 480}}}, Average: runResult{Backends: []int64{500, 500}}},
		},
	}
	var b bytes.Buffer
	rep.writeBackends(&b)
	want := `
Requests per backend (server side, averages per run; kabench.invalid resolves to 127.0.0.2-127.0.0.3, in that order)
  Backend         default   share  keepalive  share
  127.0.0.2:8080    1,000  100.0%        500  50.0%
  127.0.0.3:8080        0    0.0%        500  50.0%
  Max share                100.0%             50.0%
  Min share                  0.0%             50.0%
An even spread is 50.0% per backend.
`
	assert.Equal(t, want, b.String())

	b.Reset()
	(&report{Results: rep.Results}).writeBackends(&b)
	assert.Empty(t, b.String(), "nothing without -backends")
}

// The net/http clients dial the name's addresses in order, and the first
// that answers wins, as net.Dialer does with a name's addresses.
func TestBackendsDialerTakesTheFirstAddressThatAnswers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.3:0") // 127.0.0.2 on that port: nothing listens
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	b := &backendSet{port: port, addrs: backendAddrs(2)}

	c, err := b.dialer()(t.Context(), "tcp", b.hostPort())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	assert.Equal(t, ln.Addr().String(), c.RemoteAddr().String())

	got, err := b.resolve(t.Context(), backendsName)
	require.NoError(t, err)
	assert.Equal(t, []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}, got)
}

// A port taken on a later address starts over on a new port.
func TestListenBackendsStartsOverWhenAPortIsTaken(t *testing.T) {
	taken := 0
	listen := func(network, addr string) (net.Listener, error) {
		if strings.HasPrefix(addr, "127.0.0.3:") && taken < 2 {
			taken++
			return nil, &net.OpError{Op: "listen", Net: network, Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}
		}
		return net.Listen(network, addr)
	}
	lns, err := listenBackends(backendAddrs(3), listen)
	require.NoError(t, err)
	t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
	})
	assert.Equal(t, 2, taken)
	require.Len(t, lns, 3)
	_, port, _ := net.SplitHostPort(lns[0].Addr().String())
	for i, ln := range lns {
		assert.Equal(t, fmt.Sprintf("127.0.0.%d:%s", i+2, port), ln.Addr().String())
	}

	// Always taken: an error after listenTries, and nothing left open.
	var opened []net.Listener
	_, err = listenBackends(backendAddrs(2), func(network, addr string) (net.Listener, error) {
		if strings.HasPrefix(addr, "127.0.0.3:") {
			return nil, syscall.EADDRINUSE
		}
		ln, err := net.Listen(network, addr)
		if err == nil {
			opened = append(opened, ln)
		}
		return ln, err
	})
	require.ErrorIs(t, err, syscall.EADDRINUSE)
	assert.Contains(t, err.Error(), "no port free on all of 127.0.0.2-127.0.0.3 in 10 tries")
	assert.Len(t, opened, listenTries)
	for _, ln := range opened {
		_, err := ln.Accept() // at once: a closed listener accepts nothing
		assert.ErrorIs(t, err, net.ErrClosed)
	}
}
