//go:build unix

// This file holds the Unix process control nginx needs.

package main

import (
	"os/exec"
	"syscall"
)

// setProcessGroup puts nginx in a process group of its own: a Ctrl-C in
// the terminal then reaches kabench only, which stops nginx gracefully,
// and a kill of the group takes the workers along with the master.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	setParentDeathSignal(cmd.SysProcAttr)
}

// quitProcess sends SIGQUIT: nginx's graceful shutdown.
func quitProcess(cmd *exec.Cmd) error { return cmd.Process.Signal(syscall.SIGQUIT) }

func killProcessGroup(cmd *exec.Cmd) error {
	return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
}
