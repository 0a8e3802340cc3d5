package cache

// HoldLocalReceive blocks m's local-tier subscription: its messages wait,
// unread, until release is called, as when the goroutine that reads them
// cannot run (the process paused, or starved).
func HoldLocalReceive(m *Manager) (release func()) {
	h := make(chan struct{})
	m.local.hold.Store(&h)
	return func() {
		if m.local.hold.CompareAndSwap(&h, nil) {
			close(h)
		}
	}
}
