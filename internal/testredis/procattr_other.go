//go:build !linux

package testredis

import "syscall"

// sysProcAttr returns nil: parent-death signals are Linux-only, so elsewhere a
// test process that dies without running its cleanups leaves redis-server
// running.
func sysProcAttr() *syscall.SysProcAttr {
	return nil
}

// processGone reports false: elsewhere the harness does not look for
// processes, so it never removes another run's directory.
func processGone(pid int) bool {
	return false
}
