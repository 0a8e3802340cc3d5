//go:build linux

package testredis

import (
	"errors"
	"syscall"
)

// sysProcAttr makes the kernel send SIGKILL to redis-server when the thread
// that started it exits, which includes the death of the test process, so a
// crashed or killed test never leaves a server behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// processGone reports whether no process has the ID pid.
func processGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
