package cache

import (
	"fmt"
	"time"
)

// An Option is a per-call setting, such as TTL(d) or NoExpiry().
type Option func(*settings)

// settings are the Options of one call, or of one Hash or Memo.
type settings struct {
	ttl      time.Duration // 0: Options.DefaultTTL
	noExpiry bool
	jitter   float64 // negative: Options.Jitter
	tags     []string
	staleFor time.Duration // StaleFor
	// noFetchOnMiss is FetchOnMiss(false).
	noFetchOnMiss bool
	earlyBeta     float64 // EarlyRefresh
	tagsFor       any     // a func(A) []string, for a Memo[A, R]
	err           error   // the first invalid option
}

// settle applies opts over the Manager's defaults.
func (m *Manager) settle(opts []Option) settings {
	s := settings{jitter: -1}
	for _, o := range opts {
		if o == nil {
			s.fail(fmt.Errorf("%w: nil Option", ErrInvalidOption))
			continue
		}
		o(&s)
	}
	if s.ttl == 0 {
		s.ttl = m.opts.DefaultTTL
	}
	if s.jitter < 0 {
		s.jitter = m.opts.Jitter
	}
	return s
}

func (s *settings) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}
