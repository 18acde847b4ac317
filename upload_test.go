package keepalive

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An upload the server takes slowly but steadily is never cut off by the
// read timeout, however long it takes in all: the timeout bounds a write
// that makes no progress, not the upload. The server pauses after each
// 4 MiB of the first 40 MiB (more than the socket buffers hold, so the
// client's writes do wait on it), 2 s in all, then reads the rest at once
// so that its answer comes within the header timeout.
func TestSlowSteadyUploadIsNotAWriteTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("48 MiB per protocol: skipped with -short")
	}
	const (
		size        = 48 << 20
		slowPart    = 40 << 20
		chunk       = 4 << 20
		readTimeout = 500 * time.Millisecond
		pause       = 150 * time.Millisecond
	)
	forEachProto(t, func(t *testing.T, p proto) {
		srv, tlsOpt := newServer(t, p, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
			h := sha256.New()
			timer := time.NewTimer(pause)
			defer timer.Stop()
			for read := 0; read < slowPart; read += chunk {
				if _, err := io.CopyN(h, r.Body, chunk); err != nil {
					return
				}
				select {
				case <-timer.C:
					timer.Reset(pause)
				case <-r.Context().Done():
					return
				}
			}
			if _, err := io.Copy(h, r.Body); err != nil {
				return
			}
			_, _ = io.WriteString(w, hex.EncodeToString(h.Sum(nil)))
		}))
		c, tr := newTestClient(t, tlsOpt, WithReadTimeout(readTimeout), WithProxy(nil))
		want := sha256.New()
		_, _ = io.Copy(want, &patternReader{left: size})
		req, err := http.NewRequest(http.MethodPost, srv.URL, &patternReader{left: size})
		require.NoError(t, err)
		req.ContentLength = size
		resp, err := c.Do(req)
		require.NoError(t, err)
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, hex.EncodeToString(want.Sum(nil)), string(got), "the server got the whole body")
		assert.Zero(t, tr.Stats().WriteTimeouts)
	})
}

// patternReader yields left bytes of a fixed pattern, 32 KiB at most per
// Read, as a file or a pipe would; http.NewRequest sets no GetBody for it.
type patternReader struct{ left, off int }

var patternBlock = func() []byte {
	b := make([]byte, 32<<10+251) // not a power of two: chunks do not repeat in step
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}()

func (r *patternReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	start := r.off % len(patternBlock)
	n := copy(p[:min(len(p), 32<<10, r.left)], patternBlock[start:])
	r.off += n
	r.left -= n
	return n, nil
}
