package testredis

import (
	"syscall"
	"testing"
)

// Freeze stops the server's process (SIGSTOP), as a stalled machine or a
// long pause would: its connections stay open and nothing answers, and as
// a replica it acknowledges nothing, until Thaw. A frozen server is thawed
// in t.Cleanup; Kill works on it too.
func (s *Server) Freeze(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGSTOP)
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.cmd != nil {
			_ = s.cmd.Process.Signal(syscall.SIGCONT)
		}
	})
}

// Thaw lets a frozen server run again (SIGCONT).
func (s *Server) Thaw(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGCONT)
}

func (s *Server) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		t.Fatalf("testredis: %v to %s: not running", sig, s.Addr())
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("testredis: %v to %s: %v", sig, s.Addr(), err)
	}
}
