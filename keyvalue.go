package cache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/envelope"
)

// Set stores v under key for Options.DefaultTTL, or as opts say. A load of
// key in flight when Set is called does not overwrite v.
func (m *Manager) Set(ctx context.Context, key string, v any, opts ...Option) error {
	if err := m.check(ctx); err != nil {
		return err
	}
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	s := m.settle(opts)
	if s.err != nil {
		return s.err
	}
	ttl := s.expiry()
	now := m.now()
	b, err := m.encode(v, envelope.Header{WrittenAt: now.UnixMilli(), FreshUntil: freshUntil(now, ttl)})
	if err != nil {
		return err
	}
	ref := m.keyRef(key)
	if err := m.tagEntry(ctx, s.tags, s.tagTTL(), ref); err != nil {
		m.kv.add(EventRedisError, 1)
		return err
	}
	_, err = m.pipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, ref.lease) // voids a load in flight, so it cannot overwrite v
		p.Set(ctx, ref.key, b, s.keep(ttl))
		return nil
	})
	if err != nil {
		m.kv.add(EventRedisError, 1)
		return err
	}
	m.kv.add(EventSet, 1)
	m.dropEverywhere(ctx, false, []string{ref.key})
	return nil
}

// Get decodes the value of key into dst, a pointer. It returns ErrMiss when
// there is no fresh value (absent, expired, or stored bytes that do not
// decode), and ErrNotFound for a remembered ErrNotFound.
func (m *Manager) Get(ctx context.Context, key string, dst any) error {
	if err := m.check(ctx); err != nil {
		return err
	}
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	k := m.entryKey(key)
	s, err := m.rdb.Get(ctx, k).Result()
	if err != nil {
		if errors.Is(err, redis.Nil) {
			m.kv.add(EventMiss, 1)
			return ErrMiss
		}
		m.kv.add(EventRedisError, 1)
		return err
	}
	_, state := m.lookup(m.kv, entryRef{key: k}, bytesOf(s), "", dst)
	return m.count(m.kv, state)
}

// count counts a plain read's state and returns its error.
func (m *Manager) count(st *counters, state readState) error {
	switch state {
	case stateHit:
		st.add(EventHit, 1)
		return nil
	case stateNegative:
		st.add(EventNegativeHit, 1)
		return ErrNotFound
	}
	st.add(EventMiss, 1)
	return ErrMiss
}

// Get returns the value of key as a T. Errors are as for Manager.Get.
func Get[T any](ctx context.Context, m *Manager, key string) (T, error) {
	var v T
	err := m.Get(ctx, key, &v)
	return v, err
}

// GetMany returns the values of keys in one round trip (one per cluster
// node). Keys without a fresh value are left out of the map.
func GetMany[T any](ctx context.Context, m *Manager, keys ...string) (map[string]T, error) {
	if err := m.check(ctx); err != nil {
		return nil, err
	}
	for _, k := range keys {
		if k == "" {
			return nil, fmt.Errorf("%w: empty key", ErrInvalidKey)
		}
	}
	cmds := make([]*redis.StringCmd, len(keys))
	_, err := m.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Get(ctx, m.entryKey(k))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		m.kv.add(EventRedisError, 1)
		return nil, err
	}
	out := make(map[string]T, len(keys))
	for i, cmd := range cmds {
		s, err := cmd.Result()
		if err != nil {
			m.kv.add(EventMiss, 1)
			continue
		}
		var v T
		_, state := m.lookup(m.kv, entryRef{key: m.entryKey(keys[i])}, bytesOf(s), "", &v)
		if m.count(m.kv, state) == nil {
			out[keys[i]] = v
		}
	}
	return out, nil
}

// SetMany stores every value of items in one round trip (one per cluster
// node), each under its key with the same options. If any key is empty or
// any value does not encode, nothing is written.
func SetMany[T any](ctx context.Context, m *Manager, items map[string]T, opts ...Option) error {
	if err := m.check(ctx); err != nil {
		return err
	}
	s := m.settle(opts)
	if s.err != nil {
		return s.err
	}
	type write struct {
		ref entryRef
		b   []byte
		ttl time.Duration
	}
	writes := make([]write, 0, len(items))
	now := m.now()
	for k, v := range items {
		if k == "" {
			return fmt.Errorf("%w: empty key", ErrInvalidKey)
		}
		ttl := s.expiry()
		b, err := m.encode(v, envelope.Header{WrittenAt: now.UnixMilli(), FreshUntil: freshUntil(now, ttl)})
		if err != nil {
			return fmt.Errorf("cache: key %q: %w", k, err)
		}
		writes = append(writes, write{m.keyRef(k), b, s.keep(ttl)})
	}
	if len(s.tags) > 0 {
		refs := make([]entryRef, len(writes))
		for i, w := range writes {
			refs[i] = w.ref
		}
		if err := m.tagEntry(ctx, s.tags, s.tagTTL(), refs...); err != nil {
			m.kv.add(EventRedisError, 1)
			return err
		}
	}
	_, err := m.pipelined(ctx, func(p redis.Pipeliner) error {
		for _, w := range writes {
			p.Del(ctx, w.ref.lease)
			p.Set(ctx, w.ref.key, w.b, w.ttl)
		}
		return nil
	})
	if err != nil {
		m.kv.add(EventRedisError, 1)
		return err
	}
	m.kv.add(EventSet, uint64(len(writes)))
	if m.local != nil {
		keys := make([]string, len(writes))
		for i, w := range writes {
			keys[i] = w.ref.key
		}
		m.dropEverywhere(ctx, false, keys)
	}
	return nil
}

// Delete removes keys and voids the loads of them in flight. It is
// Invalidate with a Key target per key.
func (m *Manager) Delete(ctx context.Context, keys ...string) error {
	targets := make([]Target, len(keys))
	for i, k := range keys {
		targets[i] = Key(k)
	}
	if err := m.Invalidate(ctx, targets...); err != nil {
		return err
	}
	m.kv.add(EventDelete, uint64(len(keys)))
	return nil
}
