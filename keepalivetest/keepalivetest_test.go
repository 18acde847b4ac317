package keepalivetest_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// plainClient is a client without retries, so each call is one request.
func plainClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

type answer struct {
	status int
	header http.Header
	body   string
	err    error
}

func get(t *testing.T, c *http.Client, url string) answer {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

func TestServerAnswersTheScriptInOrderThenRepeatsTheLastStep(t *testing.T) {
	s := keepalivetest.NewServer(t,
		keepalivetest.Status(503).RetryAfter("7"),
		keepalivetest.Status(429).Header("X-Why", "slow down"),
		keepalivetest.Status(200).Body("ok"),
	)
	c := plainClient(t)

	a := get(t, c, s.URL)
	assert.Equal(t, 503, a.status)
	assert.Equal(t, "7", a.header.Get("Retry-After"))
	a = get(t, c, s.URL)
	assert.Equal(t, 429, a.status)
	assert.Equal(t, "slow down", a.header.Get("X-Why"))
	for range 2 {
		a = get(t, c, s.URL)
		assert.Equal(t, 200, a.status)
		assert.Equal(t, "ok", a.body)
	}
	assert.Equal(t, 4, s.Requests())
	assert.Equal(t, 1, s.Connections(), "a keep-alive client reuses its connection")
}

func TestServerWithoutScriptAnswers200(t *testing.T) {
	s := keepalivetest.NewServer(t)
	a := get(t, plainClient(t), s.URL+"/anything")
	require.NoError(t, a.err)
	assert.Equal(t, 200, a.status)
	assert.Equal(t, "", a.body)
}

func TestStepMethodsReturnCopies(t *testing.T) {
	base := keepalivetest.Status(503)
	withHeader := base.RetryAfter("1")
	s := keepalivetest.NewServer(t, base, withHeader)
	c := plainClient(t)
	assert.Empty(t, get(t, c, s.URL).header.Get("Retry-After"), "the base step was not modified")
	assert.Equal(t, "1", get(t, c, s.URL).header.Get("Retry-After"))
}

func TestDropClosesTheConnectionWithoutAnAnswer(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Drop(), keepalivetest.Status(200))
	c := plainClient(t)
	// POST: net/http itself would retry a GET on a fresh connection.
	resp, err := c.Post(s.URL, "text/plain", nil)
	if resp != nil {
		resp.Body.Close()
	}
	require.Error(t, err)
	assert.ErrorIs(t, err, io.EOF)
	assert.Equal(t, 200, get(t, c, s.URL).status)
	assert.Equal(t, 2, s.Requests())
	assert.Equal(t, 2, s.Connections(), "the dropped connection cannot be reused")
}

func TestResetAbortsTheConnection(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Reset())
	resp, err := plainClient(t).Post(s.URL, "text/plain", nil)
	if resp != nil {
		resp.Body.Close()
	}
	require.Error(t, err)
	// The client may see the RST when reading (ECONNRESET) or as an EOF,
	// depending on when it arrives; both mean no answer.
	if !errors.Is(err, syscall.ECONNRESET) {
		assert.ErrorIs(t, err, io.EOF)
	}
	assert.Equal(t, 1, s.Requests())
}

func TestDelayHoldsTheAnswerUntilTheClientGivesUp(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(200).Delay(time.Hour))
	c := plainClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() {
		resp, err := c.Do(req)
		if resp != nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	require.Eventually(t, func() bool { return s.Requests() == 1 }, 10*time.Second, time.Millisecond)
	cancel()
	assert.ErrorIs(t, <-errc, context.Canceled, "no answer came before the cancel")
}

func TestCloseEndsDelaysInProgress(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(200).Delay(time.Hour))
	c := plainClient(t)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		resp, err := c.Get(s.URL)
		if err == nil {
			resp.Body.Close()
		}
	}()
	require.Eventually(t, func() bool { return s.Requests() == 1 }, 10*time.Second, time.Millisecond)
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for the delay")
	}
	wg.Wait()
	s.Close() // a second Close does nothing
}

func TestConcurrentRequestsEachTakeOneStep(t *testing.T) {
	const n = 20
	script := make([]keepalivetest.Step, n)
	for i := range script {
		script[i] = keepalivetest.Status(200 + i)
	}
	script = append(script, keepalivetest.Status(599))
	s := keepalivetest.NewServer(t, script...)
	c := plainClient(t)
	statuses := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { statuses <- get(t, c, s.URL).status })
	}
	wg.Wait()
	close(statuses)
	seen := map[int]bool{}
	for st := range statuses {
		seen[st] = true
	}
	assert.Len(t, seen, n, "every step was used once")
	assert.Equal(t, n, s.Requests())
}

func TestStartRejectsAnInvalidStatus(t *testing.T) {
	s, err := keepalivetest.Start(keepalivetest.Status(200), keepalivetest.Status(42))
	require.ErrorContains(t, err, "keepalivetest: step 1: status 42 outside 100-999")
	assert.Nil(t, s)
}

func TestHeadersAreKeptInArrivalOrder(t *testing.T) {
	s := keepalivetest.NewServer(t)
	c := plainClient(t)
	for _, key := range []string{"a", "b"} {
		req, err := http.NewRequest(http.MethodGet, s.URL, nil)
		require.NoError(t, err)
		req.Header.Set("Idempotency-Key", key)
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
	}
	h := s.Headers()
	require.Len(t, h, 2)
	assert.Equal(t, "a", h[0].Get("Idempotency-Key"))
	assert.Equal(t, "b", h[1].Get("Idempotency-Key"))
	h[0].Set("Idempotency-Key", "changed")
	assert.Equal(t, "a", s.Headers()[0].Get("Idempotency-Key"), "a copy was returned")
}
