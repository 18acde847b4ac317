package keepalivetest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
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

func TestDropAndResetReadTheWholeRequestFirst(t *testing.T) {
	for _, step := range []keepalivetest.Step{keepalivetest.Drop(), keepalivetest.Reset()} {
		s := keepalivetest.NewServer(t, step)
		resp, err := plainClient(t).Post(s.URL, "text/plain", strings.NewReader("the whole body"))
		if resp != nil {
			resp.Body.Close()
		}
		require.Error(t, err)
		assert.Equal(t, [][]byte{[]byte("the whole body")}, s.Bodies(), "read before the connection ended")
	}
}

func TestBodiesAreKeptInArrivalOrder(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(503), keepalivetest.Status(200))
	c := plainClient(t)
	for _, body := range []string{"first", "second"} {
		resp, err := c.Post(s.URL, "text/plain", strings.NewReader(body))
		require.NoError(t, err)
		resp.Body.Close()
	}
	assert.Equal(t, [][]byte{[]byte("first"), []byte("second")}, s.Bodies())
}

func TestHandleAnswersWithTheHandler(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, "%s %s", r.Method, b)
	}).Header("X-Step", "handled"))
	resp, err := plainClient(t).Post(s.URL, "text/plain", strings.NewReader("hello"))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, http.StatusAccepted, resp.StatusCode)
	assert.Equal(t, "POST hello", string(b))
	assert.Equal(t, "handled", resp.Header.Get("X-Step"))
	assert.Equal(t, [][]byte{nil}, s.Bodies(), "the handler's to read")
}

func TestCutEndsTheBodyEarly(t *testing.T) {
	for _, tls := range []bool{false, true} {
		s, c := server(t, tls, keepalivetest.Status(200).Body("0123456789").Cut(4), keepalivetest.Status(200).Body("whole"))
		resp, err := c.Get(s.URL)
		require.NoError(t, err)
		assert.EqualValues(t, 10, resp.ContentLength, "the headers announce the whole body")
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Error(t, err, "tls %v", tls)
		assert.Equal(t, "0123", string(b))
		assert.Equal(t, "whole", get(t, c, s.URL).body, "the server serves on")
	}
}

func TestStallHoldsTheBodyUntilTheClientGivesUp(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(200).Body("0123456789").Stall(3))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	require.NoError(t, err)
	resp, err := plainClient(t).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	head := make([]byte, 3)
	_, err = io.ReadFull(resp.Body, head)
	require.NoError(t, err)
	assert.Equal(t, "012", string(head))
	cancel()
	_, err = resp.Body.Read(make([]byte, 1))
	assert.ErrorIs(t, err, context.Canceled, "nothing more came")
}

func TestTrickleSendsTheBodyAByteAtATime(t *testing.T) {
	const gap = 20 * time.Millisecond
	s := keepalivetest.NewServer(t, keepalivetest.Status(200).Body("abcd").Trickle(gap))
	start := time.Now()
	assert.Equal(t, "abcd", get(t, plainClient(t), s.URL).body)
	assert.GreaterOrEqual(t, time.Since(start), 4*gap, "a gap before each byte")
}

func TestIdleCloseClosesAnIdleConnection(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(200).IdleClose(50*time.Millisecond))
	var closed atomic.Bool
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		return &watchedConn{Conn: conn, eof: &closed}, err
	}}}
	t.Cleanup(c.CloseIdleConnections)
	assert.Equal(t, 200, get(t, c, s.URL).status)
	require.Eventually(t, closed.Load, 10*time.Second, time.Millisecond, "the server closed the idle connection")
	assert.Equal(t, 200, get(t, c, s.URL).status)
	assert.Equal(t, 2, s.Connections())
}

// watchedConn notes when a read sees the peer's close.
type watchedConn struct {
	net.Conn
	eof *atomic.Bool
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if errors.Is(err, io.EOF) {
		c.eof.Store(true)
	}
	return n, err
}

func TestIdleDropLosesTheRequestThatCrossesTheClose(t *testing.T) {
	const dropAfter = 50 * time.Millisecond
	s := keepalivetest.NewServer(t, keepalivetest.Status(200).IdleDrop(dropAfter))
	c := plainClient(t)
	post := func() error {
		resp, err := c.Post(s.URL, "text/plain", strings.NewReader("x"))
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	require.NoError(t, post())
	require.NoError(t, post(), "at once: not idle long enough")
	<-time.After(2 * dropAfter) // the idle period under test
	require.ErrorIs(t, post(), io.EOF, "the POST crossed the close")
	require.NoError(t, post(), "a new connection")
	assert.Equal(t, 4, s.Requests())
	assert.Equal(t, 2, s.Connections())
}

func TestTLSServerSpeaksHTTP2UnlessDisabled(t *testing.T) {
	s, c := server(t, true, keepalivetest.Handle(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) }))
	assert.Equal(t, "HTTP/2.0", get(t, c, s.URL).body)
	s.DisableHTTP2()
	c.CloseIdleConnections()
	assert.Equal(t, "HTTP/1.1", get(t, c, s.URL).body)
	assert.Nil(t, keepalivetest.NewServer(t).TLSConfig(), "no TLS: no configuration")
}

func TestDropAndResetOverHTTP2EndTheConnection(t *testing.T) {
	for _, step := range []keepalivetest.Step{keepalivetest.Drop(), keepalivetest.Reset()} {
		s, c := server(t, true, step, keepalivetest.Status(200))
		resp, err := c.Post(s.URL, "text/plain", strings.NewReader("x"))
		if resp != nil {
			resp.Body.Close()
		}
		require.Error(t, err)
		assert.Equal(t, 200, get(t, c, s.URL).status)
		assert.Equal(t, 2, s.Connections(), "the first connection ended")
	}
}

// server starts a server over HTTP/1.1 or, with tls, HTTPS with HTTP/2,
// and returns it with a client that trusts it.
func server(t *testing.T, tls bool, script ...keepalivetest.Step) (*keepalivetest.Server, *http.Client) {
	if !tls {
		return keepalivetest.NewServer(t, script...), plainClient(t)
	}
	s := keepalivetest.NewTLSServer(t, script...)
	tr := &http.Transport{TLSClientConfig: s.TLSConfig(), ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return s, &http.Client{Transport: tr}
}
