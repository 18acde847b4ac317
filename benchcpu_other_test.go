//go:build !unix

package keepalive_test

import "time"

// processCPU is not available here: the cpu-ns/op metric is omitted.
func processCPU() (time.Duration, bool) { return 0, false }
