package keepalive

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTimeoutErrorMatchesTheSentinelOfItsOp(t *testing.T) {
	sentinels := []error{ErrReadTimeout, ErrWriteTimeout, ErrAttemptTimeout}
	tests := []struct {
		give    TimeoutError
		want    error // the one sentinel it matches, or nil
		wantMsg string
	}{
		{TimeoutError{Op: "read", Limit: 300 * time.Millisecond}, ErrReadTimeout,
			"keepalive: read timeout: no response body data for 300ms"},
		{TimeoutError{Op: "write", Limit: 10 * time.Second}, ErrWriteTimeout,
			"keepalive: write timeout: no progress sending the request for 10s"},
		{TimeoutError{Op: "attempt", Limit: 50 * time.Millisecond}, ErrAttemptTimeout,
			"keepalive: attempt timeout: no response headers within 50ms"},
		{TimeoutError{Op: "dance", Limit: time.Second}, nil,
			"keepalive: dance timeout after 1s"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("a %s timeout", tt.give.Op), func(t *testing.T) {
			err := fmt.Errorf("wrapped: %w", &tt.give)
			assert.EqualError(t, errors.Unwrap(err), tt.wantMsg)
			for _, s := range sentinels {
				assert.Equal(t, s == tt.want, errors.Is(err, s), "errors.Is(err, %v)", s)
			}
			assert.NotErrorIs(t, err, context.DeadlineExceeded, "the caller's context did not end")

			var te *TimeoutError
			require.ErrorAs(t, err, &te)
			assert.Equal(t, tt.give, *te)
			var ne net.Error
			require.ErrorAs(t, err, &ne)
			assert.True(t, ne.Timeout())
		})
	}
}
