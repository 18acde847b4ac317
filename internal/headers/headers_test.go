package headers

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// fuzzNow is the fixed instant the parsers are tested at; dates are
// seeded around it.
var fuzzNow = time.Date(2026, time.November, 28, 8, 0, 0, 0, time.UTC)

func TestRetryAfter(t *testing.T) {
	tests := []struct {
		give   string
		want   time.Duration
		wantOK bool
	}{
		{"120", 120 * time.Second, true},
		{" 3 ", 3 * time.Second, true},
		{"0", 0, false},
		{"-5", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"", 0, false},
		{"99999999999999999999", time.Duration(1<<63 - 1), true},
		{"Sat, 28 Nov 2026 08:00:30 GMT", 30 * time.Second, true}, // IMF-fixdate
		{"Saturday, 28-Nov-26 08:01:00 GMT", time.Minute, true},   // RFC 850
		{"Sat Nov 28 08:00:05 2026", 5 * time.Second, true},       // asctime
		{"Sat, 28 Nov 2026 07:59:00 GMT", 0, false},               // in the past
		{"Sat, 28 Nov 2026 08:00:00 GMT", 0, false},               // now
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			got, ok := RetryAfter(tt.give, fuzzNow)
			assert.Equal(t, tt.wantOK, ok)
			if ok {
				assert.Equal(t, tt.want, got)
			}
		})
	}
}

func TestKeepAliveTimeout(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"timeout=5, max=100", 5 * time.Second, true},
		{"max=100, timeout=15", 15 * time.Second, true},
		{"Timeout = 3", 3 * time.Second, true},
		{`timeout="7"`, 7 * time.Second, true},
		{"timeout=0", 0, false},
		{"timeout=-1", 0, false},
		{"timeout=86401", 0, false},
		{"timeout=1e3", 0, false},
		{"timeout=99999999999999999999999", 0, false},
		{"max=5", 0, false},
		{"", 0, false},
		{",,,", 0, false},
		{"timeout", 0, false},
	} {
		got, ok := KeepAliveTimeout(tc.in)
		assert.Equal(t, tc.ok, ok, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
}

func TestRateLimitFields(t *testing.T) {
	now := func() time.Time { return fuzzNow }
	for _, c := range []struct {
		in   []string
		want time.Duration
		ok   bool
	}{
		{[]string{`"default";r=0;t=5`}, 5 * time.Second, true},
		{[]string{`"default";r=3;t=5`}, 0, false},
		{[]string{`"a";r=0;t=5, "b";r=0;t=60`}, 60 * time.Second, true},
		{[]string{`"a";r=1;t=5`, `"b";r=0;t=7`}, 7 * time.Second, true},
		{[]string{`"a,b;r=9";r=0;t=2`}, 2 * time.Second, true},
		{[]string{`"a\";r=1";r=0 ; t=3`}, 3 * time.Second, true},
		{[]string{`"default";t=5`}, 0, false},
		{[]string{`"default";r=0`}, 0, false},
		{[]string{`"default";r=0;t=0`}, 0, false},
		{[]string{`"default";r=0;t=-1`}, 0, false},
		{[]string{`"default";r=0;t=1.5`}, 0, false},
		{[]string{`limit=10, remaining=0, reset=4`}, 4 * time.Second, true},
		{[]string{`limit=10, remaining=2, reset=4`}, 0, false},
		{[]string{`"`}, 0, false},
		{[]string{""}, 0, false},
	} {
		d, ok := RateLimit(c.in)
		assert.Equal(t, c.ok, ok, "%q", c.in)
		assert.Equal(t, c.want, d, "%q", c.in)
	}
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"5", 5 * time.Second, true},
		{" 2.5 ", 2500 * time.Millisecond, true},
		{"0", 0, false},
		{"-3", 0, false},
		{"1e3", 0, false},
		{".5", 0, false},
		{"5.", 0, false},
		{"", 0, false},
		{"999999999", 999999999 * time.Second, true}, // just below the threshold: seconds
		{strconv.FormatInt(fuzzNow.Add(90*time.Second).Unix(), 10), 90 * time.Second, true},
		{strconv.FormatInt(fuzzNow.Add(-time.Second).Unix(), 10), 0, false},
		{"1000000000", 0, false}, // 2001: a Unix time in the past
		{"99999999999999999999999", time.Duration(1<<63 - 1), true},
	} {
		d, ok := XRateLimitReset(c.in, now)
		assert.Equal(t, c.ok, ok, "%q", c.in)
		if c.ok {
			assert.InDelta(t, float64(c.want), float64(d), float64(time.Millisecond), "%q", c.in)
		}
	}
	assert.True(t, NoneLeft(" 0 "))
	assert.False(t, NoneLeft("00"))
}

// FuzzRetryAfter: no Retry-After value panics the parser; a wait it
// returns is positive; delay-seconds mean what they say, and one too long
// for a time.Duration is the longest wait.
func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{
		"", "0", "1", "120", "3600", "-5", "+5", "1e3", " 7 ", "0x10", "soon",
		"99999999999999999999", "9223372036854775807", "9223372036",
		fuzzNow.Add(time.Hour).Format(http.TimeFormat),
		fuzzNow.Add(-time.Hour).Format(http.TimeFormat),
		fuzzNow.Add(time.Minute).Format(time.RFC850),
		fuzzNow.Add(time.Minute).Format(time.ANSIC),
		"Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
		"Fri, 31 Dec 9999 23:59:59 GMT",
	} {
		f.Add(s, uint32(0))
	}
	f.Fuzz(func(t *testing.T, v string, n uint32) {
		d, ok := RetryAfter(v, fuzzNow)
		if ok && d <= 0 {
			t.Fatalf("RetryAfter(%q) = %v, true: a wait must be positive", v, d)
		}
		if trimmed := strings.TrimSpace(v); isDigits(trimmed) {
			want, perr := strconv.ParseInt(trimmed, 10, 64)
			switch {
			case perr != nil || want > maxDelaySeconds:
				if !ok || d != time.Duration(math.MaxInt64) {
					t.Fatalf("RetryAfter(%q) = %v, %v: an overflowing delay must be the longest wait", v, d, ok)
				}
			case d != time.Duration(want)*time.Second || ok != (want > 0):
				t.Fatalf("RetryAfter(%q) = %v, %v, want %v s", v, d, ok, want)
			}
		}
		if d, ok := RetryAfter(strconv.FormatUint(uint64(n), 10), fuzzNow); d != time.Duration(n)*time.Second || ok != (n > 0) {
			t.Fatalf("RetryAfter(%d) = %v, %v", n, d, ok)
		}
	})
}

// FuzzRateLimitFields: no rate-limit field value panics its parser, and a
// pause any of them returns is positive.
func FuzzRateLimitFields(f *testing.F) {
	for _, s := range []string{
		"", "0", "1", "1.5", "0.3", ".5", "5.", "1470173023.123", "99999999999999999999",
		`"default";r=0;t=5`, `"a";r=0;t=5, "b";r=0;t=60`, `"a;b,c";r=0;t=1`, `"x\";r=0;t=9";r=1;t=2`,
		`limit=10, remaining=0, reset=5`, `"default";r=0`, `;;;,,,="`, `"`, `\`, "r=0;t=1",
		strconv.FormatInt(fuzzNow.Add(time.Minute).Unix(), 10),
	} {
		f.Add(s)
	}
	now := func() time.Time { return fuzzNow }
	f.Fuzz(func(t *testing.T, v string) {
		if d, ok := RateLimit([]string{v, v}); ok && d <= 0 {
			t.Fatalf("RateLimit(%q) = %v, true: a pause must be positive", v, d)
		}
		if d, ok := ResetSeconds(v); ok && d <= 0 {
			t.Fatalf("ResetSeconds(%q) = %v, true: a pause must be positive", v, d)
		}
		if d, ok := XRateLimitReset(v, now); ok && d <= 0 {
			t.Fatalf("XRateLimitReset(%q) = %v, true: a pause must be positive", v, d)
		}
	})
}

// FuzzKeepAliveTimeout: no Keep-Alive header value a server sends panics
// the parser, and a timeout it accepts is whole seconds from 1 s to a day.
func FuzzKeepAliveTimeout(f *testing.F) {
	for _, s := range []string{"timeout=5, max=100", "max=1,timeout=86400", `timeout="7"`, "timeout=", ",=,", "timeout=-0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := KeepAliveTimeout(v)
		if ok && (d < time.Second || d > 24*time.Hour || d%time.Second != 0) {
			t.Fatalf("%q: accepted %v", v, d)
		}
		if !ok && d != 0 {
			t.Fatalf("%q: refused with %v", v, d)
		}
	})
}
