package cache

import (
	"context"
	"fmt"
	"reflect"
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
	s := m.settle("Set", writeOptions, opts)
	if s.err != nil {
		return s.err
	}
	ttl := s.expiry()
	now := m.now()
	b, err := m.encode(v, envelope.Header{WrittenAt: now.UnixMilli(), FreshUntil: freshUntil(now, ttl)})
	if err != nil {
		return err
	}
	ctx = m.withBudget(ctx)
	if len(s.tags) > 0 {
		section, err := m.tagSectionNow(ctx, m.kv, &s)
		if err != nil {
			return err
		}
		if b, err = m.retag(v, b, section); err != nil {
			return err
		}
	}
	ref := m.keyRef(key).withLease()
	m.pending.stored(s.keep(ttl))
	_, err = m.pipe(ctx, m.kv, func(p redis.Pipeliner) {
		p.Del(ctx, ref.lease) // voids a load in flight, so it cannot overwrite v
		p.Set(ctx, ref.key, b, s.keep(ttl))
	})
	if err != nil {
		return err
	}
	m.kv.add(EventSet, 1)
	if err := m.dropEverywhere(ctx, false, []string{ref.key}); err != nil {
		return err
	}
	return m.replicated(ctx, m.kv, ref.key)
}

// GetOrLoad returns the value of key, loading it with load when it is
// missing, and storing it for the TTL opts give.
//
// However many callers miss key at once, in one process or across many,
// load runs once: callers in a process share one call, and processes take
// turns through a lease in Redis, the others waiting for the value (see
// Options.LeaseTTL). Each caller returns as soon as its own ctx ends; the
// load goes on for the others, under a context that keeps ctx's values but
// not its deadline, and ends on Close.
//
// A load whose key is invalidated before it is stored is not stored (it
// would be stale) and runs again. A load that returns ErrNotFound is
// remembered for Options.NegativeTTL; other errors are returned to every
// caller waiting on that load and not remembered; a panic in load becomes a
// *PanicError for every caller. When Redis fails, the caller still gets the
// loader's value.
func GetOrLoad[T any](ctx context.Context, m *Manager, key string, load func(context.Context) (T, error), opts ...Option) (T, error) {
	var local localRef
	if m.local != nil && key != "" && load != nil && len(opts) == 0 {
		// Options are checked before a hit is served: with none, the copy
		// kept under key as given is found without building its Redis key.
		if err := m.check(ctx); err != nil {
			var zero T
			return zero, err
		}
		local.slot = localSlot{name: key, space: spaceKeys}
		if v, ok := localGet[struct{}, T](m, m.kv, &local, nil); ok {
			return v, nil
		}
	}
	e, err := m.keyEntry(ctx, key, load != nil, opts)
	if err != nil {
		var zero T
		return zero, err
	}
	if local.slot.space != 0 {
		local.bucket = m.local.bucket(localKey(e.ref))
		e.local = local
	}
	return readLoaded(ctx, m, &e, loader[struct{}, T]{f0: load})
}

// Refresh loads key anew with load and stores it over the old value, which
// readers keep getting until then: there is no moment at which they miss.
// It never returns a value loaded before it was called: concurrent
// refreshes of key share a load only when they were called before it
// began. An invalidation of key while it runs voids the store, as for
// GetOrLoad. When Redis does not store the value, Refresh returns it with an
// error (matching ErrUnavailable when Redis could not be reached): the old
// value may stay. Use it, rather than Set, to warm a key from its source.
func Refresh[T any](ctx context.Context, m *Manager, key string, load func(context.Context) (T, error), opts ...Option) (T, error) {
	e, err := m.keyEntry(ctx, key, load != nil, opts)
	if err != nil {
		var zero T
		return zero, err
	}
	ctx = m.withBudget(ctx)
	v, err := loadEntry(ctx, m, e, true, loader[struct{}, T]{f0: load})
	if err == nil {
		if err = m.dropEverywhere(ctx, false, []string{e.ref.key}); err == nil {
			err = m.replicated(ctx, m.kv, e.ref.key)
		}
	}
	return v, err
}

// keyEntry checks the arguments of a loaded call (GetOrLoad, Refresh) on
// key, and returns its entry.
func (m *Manager) keyEntry(ctx context.Context, key string, hasLoader bool, opts []Option) (entry, error) {
	if err := m.check(ctx); err != nil {
		return entry{}, err
	}
	if key == "" {
		return entry{}, fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	if !hasLoader {
		return entry{}, fmt.Errorf("%w: nil loader", ErrInvalidOption)
	}
	s := m.settle("GetOrLoad and Refresh", loadedOptions, opts)
	return entry{ref: m.keyRef(key), s: &s, st: m.kv, tags: s.tags}, s.err
}

// Get decodes the value of key into dst, a non-nil pointer. It returns
// ErrMiss when there is no fresh value (absent, expired, or stored bytes
// that do not decode into dst: then the error says why, a type mismatch
// or corrupt bytes, and matches *DecodeError too), and ErrNotFound for a remembered
// ErrNotFound. A dst that is not a non-nil pointer is an error matching
// ErrInvalidOption, whatever the key holds.
func (m *Manager) Get(ctx context.Context, key string, dst any) error {
	if err := m.check(ctx); err != nil {
		return err
	}
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	if v := reflect.ValueOf(dst); v.Kind() != reflect.Pointer || v.IsNil() {
		return fmt.Errorf("%w: Get decodes into a non-nil pointer, not %T", ErrInvalidOption, dst)
	}
	_, state, err := m.readEntry(ctx, m.kv, m.keyRef(key), nil, dst, false)
	return plainRead(m.kv, state, err)
}

// countRead counts a plain read's state and returns its error.
func countRead(st *counters, state readState) error {
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
	refs := make([]entryRef, len(keys))
	cmds := make([]*redis.StringCmd, len(keys))
	_, err := m.pipe(ctx, m.kv, func(p redis.Pipeliner) {
		for i, k := range keys {
			refs[i] = m.keyRef(k)
			cmds[i] = p.Get(ctx, refs[i].key)
		}
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]T, len(keys))
	var tagged []int      // entries carrying tags, looked up again below
	var sections [][]byte // their tags
	for i, cmd := range cmds {
		s, err := cmd.Result()
		if err != nil {
			m.kv.add(EventMiss, 1)
			continue
		}
		var v T
		h, state, _ := m.lookup(m.kv, refs[i], bytesOf(s), nil, &v)
		if state == stateOtherTags {
			tagged, sections = append(tagged, i), append(sections, h.Tags)
			continue
		}
		if countRead(m.kv, state) == nil {
			out[keys[i]] = v
		}
	}
	if len(tagged) == 0 {
		return out, nil
	}
	wants, err := m.otherTags(ctx, m.kv, sections)
	if err != nil {
		return nil, err
	}
	for j, i := range tagged {
		var v T
		_, state, _ := m.lookup(m.kv, refs[i], bytesOf(cmds[i].Val()), &wants[j], &v)
		if countRead(m.kv, state) == nil {
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
	s := m.settle("SetMany", writeOptions, opts)
	if s.err != nil {
		return s.err
	}
	type write struct {
		key string
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
			return wrap(err, "key %q", k)
		}
		writes = append(writes, write{k, m.keyRef(k).withLease(), b, s.keep(ttl)})
	}
	ctx = m.withBudget(ctx)
	if len(s.tags) > 0 {
		section, err := m.tagSectionNow(ctx, m.kv, &s)
		if err != nil {
			return err
		}
		for i, w := range writes {
			if writes[i].b, err = m.retag(items[w.key], w.b, section); err != nil {
				return wrap(err, "key %q", w.key)
			}
		}
	}
	for _, w := range writes {
		m.pending.stored(w.ttl)
	}
	_, err := m.pipe(ctx, m.kv, func(p redis.Pipeliner) {
		for _, w := range writes {
			p.Del(ctx, w.ref.lease)
			p.Set(ctx, w.ref.key, w.b, w.ttl)
		}
	})
	if err != nil {
		return err
	}
	m.kv.add(EventSet, uint64(len(writes)))
	if m.local != nil {
		keys := make([]string, len(writes))
		for i, w := range writes {
			keys[i] = w.ref.key
		}
		if err := m.dropEverywhere(ctx, false, keys); err != nil {
			return err
		}
	}
	keys := make([]string, 0, len(writes))
	if m.opts.WaitReplicas > 0 {
		for _, w := range writes {
			keys = append(keys, w.ref.key)
		}
	}
	return m.replicated(ctx, m.kv, keys...)
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
