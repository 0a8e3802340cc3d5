//go:build !linux

package testredis

import "syscall"

// sysProcAttr returns nil: parent-death signals are Linux-only, so elsewhere a
// test process that dies without running its cleanups leaves redis-server
// running.
func sysProcAttr() *syscall.SysProcAttr {
	return nil
}
