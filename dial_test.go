package keepalive

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A Transport dials through WithDialContext, here to a unix socket, and
// still pools, counts and retries its connections.
func TestWithDialContextDialsAUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "app.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "over "+r.Host)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	var dials, failures atomic.Int64
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		if dials.Add(1) == 1 {
			failures.Add(1)
			return nil, errors.New("refused, once") // a failed dial is retried
		}
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	c, tr := newTestClient(t, WithDialContext(dial), WithProxy(nil), WithBackoff(time.Millisecond, time.Millisecond))
	for range 5 {
		resp, err := c.Get("http://app.test/x")
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, "over app.test", string(b))
	}
	st := tr.Stats()
	assert.Equal(t, int64(1), st.Dials, "one connection, reused")
	assert.Equal(t, int64(1), st.DialErrors)
	assert.Equal(t, int64(1), st.Retries)
	assert.Equal(t, int64(2), dials.Load())
}

// The connect timeout bounds a dial of WithDialContext through its context.
func TestWithDialContextHasTheConnectTimeout(t *testing.T) {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done() // a dial that never connects
		return nil, ctx.Err()
	}
	c, _ := newTestClient(t, WithDialContext(dial), WithConnectTimeout(50*time.Millisecond), WithMaxRetries(0), WithProxy(nil))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://app.test/", nil)
	require.NoError(t, err)
	_, err = c.Do(req)
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded, "the dial's deadline, not the caller's")
	assert.NoError(t, ctx.Err())
}

// WithoutHTTP2 keeps a Transport on HTTP/1.1 against a server that offers
// HTTP/2; by default it takes HTTP/2.
func TestWithoutHTTP2SpeaksHTTP1(t *testing.T) {
	srv, tlsOpt := fleetServer(t, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto)
	}))
	for _, tt := range []struct {
		name string
		opts []Option
		want string
	}{
		{"by default HTTP/2", nil, "HTTP/2.0"},
		{"WithoutHTTP2: HTTP/1.1", []Option{WithoutHTTP2()}, "HTTP/1.1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newTestClient(t, append(tt.opts, tlsOpt, WithProxy(nil))...)
			resp, err := c.Get(srv.URL)
			require.NoError(t, err)
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			assert.Equal(t, tt.want, string(b))
			assert.Equal(t, tt.want, resp.Proto)
		})
	}
}
