//go:build unix

package keepalive_test

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time (user and system) the process has used.
// On a machine shared with other work, CPU time per operation varies far
// less than wall time per operation, and it is what the retry layer costs.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
