//go:build !unix

// This file holds the process control for systems without Unix signals,
// where nginx is stopped the hard way.

package main

import "os/exec"

func setProcessGroup(*exec.Cmd) {}

func quitProcess(cmd *exec.Cmd) error { return cmd.Process.Kill() }

func killProcessGroup(cmd *exec.Cmd) error { return cmd.Process.Kill() }
