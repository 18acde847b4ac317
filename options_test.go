package keepalive

import (
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keepalive-go/keepalive/keepalivetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOptionValidation is every option's validation in one table: a valid
// value is accepted, an invalid one makes NewClient fail with an
// *OptionError naming the option. Extreme values that are valid must work,
// not just pass: the tests of each feature use them.
func TestOptionValidation(t *testing.T) {
	nilWrap := func(http.RoundTripper) http.RoundTripper { return nil }
	tests := []struct {
		name string
		give Option
		want string // the option named in the error; "" when valid
	}{
		{"negative idle conns", WithMaxIdleConns(-1), "WithMaxIdleConns"},
		{"negative idle conns per host", WithMaxIdleConnsPerHost(-2), "WithMaxIdleConnsPerHost"},
		{"negative conns per host", WithMaxConnsPerHost(-1), "WithMaxConnsPerHost"},
		{"negative idle timeout", WithIdleConnTimeout(-time.Second), "WithIdleConnTimeout"},
		{"negative connect timeout", WithConnectTimeout(-1), "WithConnectTimeout"},
		{"negative read timeout", WithReadTimeout(-1), "WithReadTimeout"},
		{"negative TLS timeout", WithTLSHandshakeTimeout(-1), "WithTLSHandshakeTimeout"},
		{"nil proxy", WithProxy(nil), ""},
		{"negative retries", WithMaxRetries(-1), "WithMaxRetries"},
		{"status below 100", WithRetryStatuses(503, 99), "WithRetryStatuses"},
		{"status above 599", WithRetryStatuses(600), "WithRetryStatuses"},
		{"empty method", WithRetryMethods("GET", ""), "WithRetryMethods"},
		{"malformed method", WithRetryMethods("GE T"), "WithRetryMethods"},
		{"a standard method in lower case", WithRetryMethods("GET", "post"), "WithRetryMethods"},
		{"a standard method in mixed case", WithRetryMethods("Patch"), "WithRetryMethods"},
		{"an extension method in upper case", WithRetryMethods("PURGE"), ""},
		{"an extension method in lower case", WithRetryMethods("purge"), ""},
		{"initial backoff above max", WithBackoff(2*time.Second, time.Second), "WithBackoff"},
		{"negative backoff", WithBackoff(-1, time.Second), "WithBackoff"},
		{"the longest backoff", WithBackoff(math.MaxInt64, math.MaxInt64), ""},
		{"negative Retry-After cap", WithMaxRetryAfter(-1), "WithMaxRetryAfter"},
		{"negative response buffer", WithResponseBuffer(-1), "WithResponseBuffer"},
		{"the longest Retry-After cap", WithMaxRetryAfter(math.MaxInt64), ""},
		{"negative body buffer", WithBodyBuffer(-1), "WithBodyBuffer"},
		{"the largest body buffer", WithBodyBuffer(math.MaxInt64), ""},
		{"nil CheckRetry", WithCheckRetry(nil), "WithCheckRetry"},
		{"nil option", nil, "option 0 is nil"},
		{"nil attempt transport", WithAttemptTransport(nil), "WithAttemptTransport"},
		{"nil dial func", WithDialContext(nil), "WithDialContext"},
		{"an attempt transport that returns nil", WithAttemptTransport(nilWrap), "WithAttemptTransport"},

		{"the default budget", WithRetryBudget(RetryBudget{}), ""},
		{"the default budget spelled out", WithRetryBudget(RetryBudget{Ratio: defaultRetryBudgetRatio, Window: defaultRetryBudgetWindow, MinPerSecond: defaultRetryBudgetMinPerSecond}), ""},
		{"a budget without share or floor", WithRetryBudget(RetryBudget{Ratio: -1, Window: time.Second, MinPerSecond: -1}), ""},
		{"a budget ratio above 10", WithRetryBudget(RetryBudget{Ratio: 11}), "WithRetryBudget"},
		{"a negative budget window", WithRetryBudget(RetryBudget{Window: -time.Second}), "WithRetryBudget"},
		{"a budget window in parts of seconds", WithRetryBudget(RetryBudget{Window: 1500 * time.Millisecond}), "WithRetryBudget"},
		{"a budget window past the maximum", WithRetryBudget(RetryBudget{Window: maxBudgetWindow + time.Second}), "WithRetryBudget"},
		{"no budget", WithoutRetryBudget(), ""},

		{"the default breaker", WithCircuitBreaker(CircuitBreaker{}), ""},
		{"a breaker ratio of 1", WithCircuitBreaker(CircuitBreaker{FailureRatio: 1}), ""},
		{"a breaker ratio above 1", WithCircuitBreaker(CircuitBreaker{FailureRatio: 1.5}), "WithCircuitBreaker"},
		{"a negative breaker ratio", WithCircuitBreaker(CircuitBreaker{FailureRatio: -0.1}), "WithCircuitBreaker"},
		{"a negative breaker interval", WithCircuitBreaker(CircuitBreaker{Interval: -time.Second}), "WithCircuitBreaker"},
		{"a negative breaker open timeout", WithCircuitBreaker(CircuitBreaker{OpenTimeout: -time.Second}), "WithCircuitBreaker"},

		{"a negative attempt timeout", WithAttemptTimeout(-time.Second), "WithAttemptTimeout"},
		{"the longest attempt timeout", WithAttemptTimeout(math.MaxInt64), ""},
		{"a negative lifetime", WithConnMaxLifetime(-time.Second), "WithConnMaxLifetime"},
		{"the longest lifetime", WithConnMaxLifetime(math.MaxInt64), ""},

		{"hedging off", WithHedging(0, 0), ""},
		{"zero hedges means the default", WithHedging(time.Millisecond, 0), ""},
		{"the most hedges", WithHedging(time.Millisecond, maxHedgesLimit), ""},
		{"a negative hedge delay", WithHedging(-time.Millisecond, 1), "WithHedging"},
		{"negative hedges", WithHedging(time.Millisecond, -1), "WithHedging"},
		{"too many hedges", WithHedging(time.Millisecond, maxHedgesLimit+1), "WithHedging"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(tt.give)
			if tt.want == "" {
				require.NoError(t, err)
				c.Transport.(*Transport).CloseIdleConnections()
				return
			}
			require.Error(t, err)
			assert.Nil(t, c)
			assert.Contains(t, err.Error(), tt.want)
			assert.True(t, strings.HasPrefix(err.Error(), "keepalive: "), err.Error())
			if tt.give != nil {
				var oe *OptionError
				require.ErrorAs(t, err, &oe)
				assert.Equal(t, tt.want, oe.Option)
			}
		})
	}
}

func TestRetryMethodsAreCaseSensitive(t *testing.T) {
	t.Run("a standard method in lower case is refused with its upper-case form", func(t *testing.T) {
		_, err := NewClient(WithRetryMethods("post"))
		var oe *OptionError
		require.ErrorAs(t, err, &oe)
		assert.Equal(t, "WithRetryMethods", oe.Option)
		assert.Equal(t, `keepalive: invalid WithRetryMethods: method "post" matches no request: methods are case-sensitive, use "POST"`, err.Error())
	})
	t.Run("an extension method is retried only as written", func(t *testing.T) {
		s := keepalivetest.NewServer(t, keepalivetest.Status(503), keepalivetest.Status(503), keepalivetest.Status(200))
		c, _ := newTestClient(t, WithBackoff(0, 0), WithRetryMethods("purge"))
		send := func(method string) int {
			req, err := http.NewRequest(method, s.URL, nil)
			require.NoError(t, err)
			resp, err := c.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			return resp.StatusCode
		}
		assert.Equal(t, 503, send("PURGE"), "PURGE is not purge: sent once")
		assert.Equal(t, 1, s.Requests())
		assert.Equal(t, 200, send("purge"), "purge is retried past its 503")
		assert.Equal(t, 3, s.Requests())
	})
}

func TestOptionsReportEveryInvalidOption(t *testing.T) {
	_, err := NewTransport(WithMaxRetries(-1), WithReadTimeout(-1))
	require.Error(t, err)
	var oe *OptionError
	require.ErrorAs(t, err, &oe)
	assert.Contains(t, err.Error(), "WithMaxRetries")
	assert.Contains(t, err.Error(), "WithReadTimeout")
}

func TestOptionsAcceptZeroValues(t *testing.T) {
	tr := newTestTransport(t,
		WithMaxIdleConns(0), WithMaxIdleConnsPerHost(0), WithMaxConnsPerHost(0),
		WithIdleConnTimeout(0), WithConnectTimeout(0), WithReadTimeout(0),
		WithTLSHandshakeTimeout(0), WithMaxRetries(0), WithRetryStatuses(),
		WithRetryMethods(), WithBackoff(0, 0), WithMaxRetryAfter(0), WithBodyBuffer(0), WithResponseBuffer(0),
		WithTLSConfig(nil), WithLogger(nil), WithProxy(nil))
	assert.Equal(t, defaultMaxIdleConnsPerHost, tr.base.MaxIdleConnsPerHost, "zero means the default")
	assert.Zero(t, tr.base.ResponseHeaderTimeout)
}

func TestDefaultsAreTunedAndKeepWhatDefaultTransportGives(t *testing.T) {
	tr := newTestTransport(t)
	b := tr.base
	assert.Equal(t, defaultMaxIdleConns, b.MaxIdleConns)
	assert.Equal(t, defaultMaxIdleConnsPerHost, b.MaxIdleConnsPerHost)
	assert.Equal(t, defaultIdleConnTimeout, b.IdleConnTimeout)
	assert.Less(t, b.IdleConnTimeout, 60*time.Second, "below the idle timeouts of ALB (60 s) and nginx (75 s)")
	assert.Equal(t, defaultReadTimeout, b.ResponseHeaderTimeout)
	assert.Equal(t, defaultTLSHandshakeTimeout, b.TLSHandshakeTimeout)
	assert.True(t, b.ForceAttemptHTTP2, "a custom dialer must not turn HTTP/2 off")
	require.NotNil(t, b.HTTP2)
	assert.Equal(t, http2PingInterval, b.HTTP2.SendPingTimeout)
	assert.Equal(t, http2PingTimeout, b.HTTP2.PingTimeout)
	assert.Equal(t, reflect.ValueOf(http.ProxyFromEnvironment).Pointer(), reflect.ValueOf(b.Proxy).Pointer(),
		"proxy from the environment, as http.DefaultTransport")
	assert.Equal(t, defaultMaxRetries, tr.policy.maxRetries)
	for _, c := range []int{429, 500, 501, 502, 503, 504} {
		assert.True(t, tr.policy.statuses.has(c), "status %d", c)
	}
	assert.False(t, tr.policy.statuses.has(404))
}
