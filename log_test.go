package keepalive

import (
	"bytes"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// logDuration parses a logged duration, which must be text.
func logDuration(t *testing.T, v any) time.Duration {
	t.Helper()
	s, ok := v.(string)
	require.True(t, ok, "a duration logged as %T (%v), not as text", v, v)
	d, err := time.ParseDuration(s)
	require.NoError(t, err)
	return d
}

func TestALoggerAtInfoSeesWhatNeedsAttention(t *testing.T) {
	const (
		password = "hunter22"
		token    = "tok-8c1f"
		bearer   = "Bearer q.r.s"
	)
	t.Run("a give-up is logged at Warn, its retries are not", func(t *testing.T) {
		s := keepalivetest.NewServer(t, keepalivetest.Status(503))
		logs := captureLogs(slog.LevelInfo, true) // slog's default level, as slog.Default has it
		c, _ := newTestClient(t, WithBackoff(0, 0), logs.option())
		u := strings.Replace(s.URL, "http://", "http://alice:"+password+"@", 1) + "/items?token=" + token
		req, err := http.NewRequest("GET", u, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", bearer)
		resp, err := c.Do(req)
		require.NoError(t, err)
		readBody(t, resp)
		assert.Equal(t, 4, s.Requests())

		recs := logs.records(t)
		require.Len(t, recs, 1, logs.String())
		r := recs[0]
		assert.Equal(t, "WARN", r["level"])
		assert.Equal(t, "keepalive: giving up", r["msg"])
		assert.Equal(t, "retries exhausted", r["reason"])
		assert.EqualValues(t, 4, r["attempt"])
		assert.EqualValues(t, 503, r["status"])
		assert.Equal(t, "http://xxxxx:xxxxx@"+hostOf(t, s.URL)+"/items?token=xxxxx", r["url"])
		assert.NotContains(t, r, "wait", "no wait was refused")
		for _, secret := range []string{password, token, bearer, "alice"} {
			assert.NotContains(t, logs.String(), secret)
		}
	})
	t.Run("a give-up names the wait it refused", func(t *testing.T) {
		s := keepalivetest.NewServer(t, keepalivetest.Status(503).RetryAfter("3600"))
		logs := captureLogs(slog.LevelInfo, true)
		c, _ := newTestClient(t, logs.option())
		resp, err := c.Get(s.URL)
		require.NoError(t, err)
		readBody(t, resp)

		recs := logs.records(t)
		require.Len(t, recs, 1, logs.String())
		assert.Equal(t, "WARN", recs[0]["level"])
		assert.Equal(t, "retry-after too long", recs[0]["reason"])
		assert.Equal(t, time.Hour, logDuration(t, recs[0]["wait"]))
	})
	t.Run("a host that asks for a pause is logged at Warn", func(t *testing.T) {
		s := keepalivetest.NewServer(t, keepalivetest.Status(200).
			Header("X-RateLimit-Remaining", "0").Header("X-RateLimit-Reset", "0.05"))
		logs := captureLogs(slog.LevelInfo, true)
		c, tr := newTestClient(t, logs.option())
		resp, err := c.Get(s.URL)
		require.NoError(t, err)
		readBody(t, resp)
		require.EqualValues(t, 1, tr.Stats().Pauses)

		recs := logs.records(t)
		require.Len(t, recs, 1, logs.String())
		r := recs[0]
		assert.Equal(t, "WARN", r["level"])
		assert.Equal(t, "keepalive: host asked for a pause", r["msg"])
		assert.Equal(t, hostOf(t, s.URL), r["host"])
		assert.EqualValues(t, 200, r["status"])
		assert.Equal(t, "x-ratelimit", r["source"])
		wait := logDuration(t, r["wait"])
		assert.Positive(t, wait)
		assert.LessOrEqual(t, wait, 50*time.Millisecond)
	})
	t.Run("a circuit that opens is logged at Warn", func(t *testing.T) {
		s := keepalivetest.NewServer(t, keepalivetest.Status(503))
		logs := captureLogs(slog.LevelInfo, true)
		c, _ := newTestClient(t, WithMaxRetries(0), logs.option(),
			WithCircuitBreaker(CircuitBreaker{ConsecutiveFailures: 1, OpenTimeout: time.Hour}))
		resp, err := c.Get(s.URL)
		require.NoError(t, err)
		readBody(t, resp)

		recs := logs.records(t)
		require.Len(t, recs, 1, logs.String())
		r := recs[0]
		assert.Equal(t, "WARN", r["level"])
		assert.Equal(t, "keepalive: circuit breaker changed state", r["msg"])
		assert.Equal(t, "closed", r["from"])
		assert.Equal(t, "open", r["to"])
	})
}

func TestALoggerAtDebugSeesRetriesWithReadableWaits(t *testing.T) {
	s := keepalivetest.NewServer(t, keepalivetest.Status(503), keepalivetest.Status(200))
	logs := captureLogs(slog.LevelDebug, false)
	c, _ := newTestClient(t, WithBackoff(time.Millisecond, time.Millisecond), logs.option())
	resp, err := c.Get(s.URL + "/?q=" + "secret-q")
	require.NoError(t, err)
	readBody(t, resp)

	out := logs.String()
	require.Equal(t, 1, strings.Count(out, "\n"), out)
	assert.Contains(t, out, `level=DEBUG msg="keepalive: retrying"`)
	m := regexp.MustCompile(` wait=(\S+) `).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	wait, err := time.ParseDuration(m[1])
	require.NoError(t, err, "the text handler writes the wait as a duration")
	assert.Positive(t, wait)
	assert.LessOrEqual(t, wait, time.Millisecond)
	assert.NotContains(t, out, "secret-q")
}

func TestLogLevels(t *testing.T) {
	giveUps := []struct {
		give GiveUpReason
		want slog.Level
	}{
		{GiveUpExhausted, slog.LevelWarn},
		{GiveUpNotReplayable, slog.LevelWarn},
		{GiveUpRetryAfter, slog.LevelWarn},
		{GiveUpDeadline, slog.LevelWarn},
		{GiveUpPolicy, slog.LevelWarn},
		{GiveUpBody, slog.LevelWarn},
		{GiveUpBudget, slog.LevelWarn},
		{GiveUpCanceled, slog.LevelDebug}, // the caller ended it and knows
	}
	for _, tt := range giveUps {
		t.Run("a give-up for "+tt.give.String()+" is at "+tt.want.String(), func(t *testing.T) {
			assert.Equal(t, tt.want, levelGiveUp(tt.give))
		})
	}
	breakers := []struct {
		give BreakerState
		want slog.Level
	}{
		{BreakerOpen, slog.LevelWarn},
		{BreakerHalfOpen, slog.LevelInfo},
		{BreakerClosed, slog.LevelInfo},
	}
	for _, tt := range breakers {
		t.Run("a breaker going "+tt.give.String()+" is at "+tt.want.String(), func(t *testing.T) {
			assert.Equal(t, tt.want, levelBreakerChange(tt.give))
		})
	}
	assert.Equal(t, slog.LevelDebug, levelRetry)
	assert.Equal(t, slog.LevelWarn, levelHostPause)
}

// slog's JSON handler writes a time.Duration as nanoseconds; durationAttr
// writes text that both handlers show alike.
func TestDurationsAreLoggedAsText(t *testing.T) {
	var js bytes.Buffer
	slog.New(slog.NewJSONHandler(&js, nil)).LogAttrs(t.Context(), slog.LevelInfo, "m",
		slog.Duration("ns", 1500*time.Millisecond), durationAttr("wait", 1500*time.Millisecond))
	assert.Contains(t, js.String(), `"ns":1500000000,"wait":"1.5s"`)
}
