package cache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"
)

// TTL sets an entry's time to live. It must be positive; the default is
// Options.DefaultTTL. The stored TTL is shortened by up to the jitter.
func TTL(d time.Duration) Option {
	return func(s *settings) {
		s.give(optTTL)
		if d <= 0 {
			s.fail(fmt.Errorf("%w: TTL %v is not positive", ErrInvalidOption, d))
			return
		}
		s.ttl = d
	}
}

// NoExpiry makes an entry that never expires. Use it with care: every other
// entry expires, so that a forgotten invalidation heals with time.
func NoExpiry() Option {
	return func(s *settings) {
		s.give(optNoExpiry)
		s.noExpiry = true
	}
}

// Jitter sets the fraction, 0 to 1, by which a TTL is shortened at random for
// this call, in place of Options.Jitter. Jitter(0) stores the TTL as given.
func Jitter(f float64) Option {
	return func(s *settings) {
		s.give(optJitter)
		if f < 0 || f > 1 {
			s.fail(fmt.Errorf("%w: Jitter %v is not between 0 and 1", ErrInvalidOption, f))
			return
		}
		s.jitter = f
	}
}

// expiry returns the TTL to store for s, jitter applied; 0 for none.
func (s *settings) expiry() time.Duration {
	if s.noExpiry {
		return 0
	}
	ttl := s.ttl
	if s.jitter > 0 {
		ttl -= time.Duration(rand.Float64() * s.jitter * float64(ttl))
	}
	if ttl < time.Millisecond {
		ttl = time.Millisecond
	}
	return ttl
}

// shortest returns the shortest TTL s stores (jitter only shortens it); 0
// for no expiry.
func (s *settings) shortest() time.Duration {
	if s.noExpiry {
		return 0
	}
	return s.ttl - time.Duration(s.jitter*float64(s.ttl))
}

// keep returns how long Redis keeps an entry whose fresh TTL is ttl (0 for
// no expiry): its TTL plus the StaleFor window.
func (s *settings) keep(ttl time.Duration) time.Duration {
	if ttl <= 0 {
		return 0
	}
	return ttl + s.staleFor
}

// NeverExpires is what TTL returns for an entry stored with NoExpiry.
const NeverExpires time.Duration = -1

// TTL returns the time key has left to live in Redis: NeverExpires for an
// entry stored with NoExpiry, ErrMiss when there is no entry.
func (m *Manager) TTL(ctx context.Context, key string) (time.Duration, error) {
	if err := m.check(ctx); err != nil {
		return 0, err
	}
	if key == "" {
		return 0, fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	return m.pttl(ctx, m.kv, m.entryKey(key))
}

func (m *Manager) pttl(ctx context.Context, st *counters, key string) (time.Duration, error) {
	cmd := redis.NewDurationCmd(ctx, time.Millisecond, "pttl", key)
	err := m.do(ctx, st, cmd)
	switch {
	case errors.Is(err, redis.Nil):
		return 0, ErrMiss
	case err != nil:
		return 0, err
	}
	d := cmd.Val()
	switch {
	case d == -2*time.Nanosecond || d == -2*time.Millisecond:
		return 0, ErrMiss
	case d < 0:
		return NeverExpires, nil
	}
	return d, nil
}
