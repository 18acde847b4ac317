// This file holds the clock of the package: monotonic readings that fit an
// atomic int64, the Unix second of one, and a wait that a context ends.

package keepalive

import (
	"context"
	"time"
)

// clockStart anchors monotonic: time.Since(clockStart) is a monotonic
// reading that fits an atomic int64.
var clockStart = time.Now()

func monotonic() int64 { return max(int64(time.Since(clockStart)), 1) }

// clockStartUnix is the wall clock at clockStart, in Unix nanoseconds.
var clockStartUnix = clockStart.UnixNano()

// unixSec is the Unix second of a monotonic() reading: the budget's
// seconds, without a wall clock reading per request.
func unixSec(mono int64) int64 { return (clockStartUnix + mono) / int64(time.Second) }

// sleep waits for d or until ctx ends, whichever is first.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}
