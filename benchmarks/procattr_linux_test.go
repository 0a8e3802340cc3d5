package benchmarks

import "syscall"

// sysProcAttr makes the kernel kill redis-server when the benchmark process
// dies, even by a panic or a signal that skips TestMain's cleanup.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
