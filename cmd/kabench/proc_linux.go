// This file holds what only Linux offers to control nginx.

package main

import "syscall"

// setParentDeathSignal has the kernel send nginx SIGQUIT, its graceful
// stop, if kabench dies without stopping it: killed, or a test binary
// that timed out. Elsewhere such an nginx keeps running.
func setParentDeathSignal(attr *syscall.SysProcAttr) {
	attr.Pdeathsig = syscall.SIGQUIT
}
