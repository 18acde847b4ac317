package keepalive

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cutBodyServer answers every request with a body of size bytes, and cuts
// the first cuts of them off half-way, as a server closing a connection
// mid-body (a GOAWAY, a reset, a restart) does.
func cutBodyServer(t *testing.T, size, cuts int64) *faultServer {
	var served atomic.Int64
	body := strings.Repeat("k", int(size))
	return newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
		head := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", size)
		if served.Add(1) <= cuts {
			_ = fc.writeString(head + body[:size/2])
			fc.reset()
			return false
		}
		return fc.writeString(head+body) == nil
	}))
}

func TestResponseBufferRetriesBodyCutOff(t *testing.T) {
	const size = 64 << 10
	for _, tc := range []struct {
		name    string
		opts    []Option
		method  string
		key     string
		wantErr bool
	}{
		{"GET buffered", []Option{WithResponseBuffer(1 << 20)}, http.MethodGet, "", false},
		{"keyed POST buffered", []Option{WithResponseBuffer(1 << 20)}, http.MethodPost, "k1", false},
		{"GET unbuffered", nil, http.MethodGet, "", true},
		{"GET over the limit", []Option{WithResponseBuffer(size - 1)}, http.MethodGet, "", true},
		{"unkeyed POST is never sent twice", []Option{WithResponseBuffer(1 << 20)}, http.MethodPost, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := cutBodyServer(t, size, 1)
			tr, err := NewTransport(tc.opts...)
			require.NoError(t, err)
			t.Cleanup(tr.CloseIdleConnections)
			req, err := http.NewRequest(tc.method, srv.url("/"), bytes.NewReader([]byte("payload")))
			require.NoError(t, err)
			if tc.key != "" {
				req.Header.Set("Idempotency-Key", tc.key)
			}
			resp, err := (&http.Client{Transport: tr}).Do(req)
			require.NoError(t, err, "the headers arrive intact")
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if tc.wantErr {
				require.Error(t, err, "the cut shows in the caller's Read")
				assert.EqualValues(t, 1, srv.requests.Load())
				return
			}
			require.NoError(t, err)
			assert.Len(t, b, size)
			assert.EqualValues(t, 2, srv.requests.Load())
			assert.EqualValues(t, 1, tr.Stats().Retries)
		})
	}
}

func TestResponseBufferLeavesUnknownLengthAndHEAD(t *testing.T) {
	srv := newFaultServer(t, faultServe(func(fc *faultConn, r *faultRequest) bool {
		if r.Method == http.MethodHead {
			return fc.writeString("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n") == nil
		}
		return fc.writeString("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n") == nil
	}))
	tr, err := NewTransport(WithResponseBuffer(1 << 20))
	require.NoError(t, err)
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr}
	resp, err := c.Get(srv.url("/"))
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, "hello", string(b))
	assert.EqualValues(t, -1, resp.ContentLength)

	resp, err = c.Head(srv.url("/"))
	require.NoError(t, err)
	assert.Equal(t, http.NoBody, resp.Body)
	resp.Body.Close()
}
