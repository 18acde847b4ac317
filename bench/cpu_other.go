//go:build !unix

package main

import "time"

// processCPU is not available here; the CPU column shows 0.
func processCPU() (time.Duration, bool) { return 0, false }
