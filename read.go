package cache

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/envelope"
)

// The loaded read.
//
// GetOrLoad, Memo.Get and Hash.GetOrLoad are one function, readLoaded. It
// looks in the local tier, reads the entry from Redis in one command,
// decodes it, decides what to do with what it found (decide, in stale.go),
// and hands a miss to loadEntry (load.go). A hit never leaves this file but
// for leaf calls; a miss goes on in load.go.

// entry is one cache entry as a loaded read sees it.
type entry struct {
	ref  entryRef
	s    settings  // its TTL, tags and stale-while-revalidate policy
	st   *counters // the counters of its name
	tags []string  // the tags a load records: s.tags, and a memo's TagsFor
}

// loader is the function that loads an entry: fn(ctx, arg), or f0(ctx)
// when fn is nil. Carrying the argument beside the function, rather than a
// closure over it, keeps a hit free of allocations.
type loader[A, T any] struct {
	fn  func(context.Context, A) (T, error)
	arg A
	f0  func(context.Context) (T, error)
}

func (l loader[A, T]) call(ctx context.Context) (T, error) {
	if l.fn == nil {
		return l.f0(ctx)
	}
	return l.fn(ctx, l.arg)
}

// readLoaded returns e's value: from the local tier, from Redis, or loaded
// with l when it is missing (see decide for stale values and misses that do
// not wait).
func readLoaded[A, T any](ctx context.Context, m *Manager, e *entry, l loader[A, T]) (T, error) {
	var zero T
	var lk string
	var e0 uint64
	if m.local != nil {
		lk = localKey(e.ref)
		if v, ok := localGet[T](m, e.st, lk); ok {
			return v, nil
		}
		e0 = m.local.epoch.Load()
	}
	var v T
	h, state, _ := m.readEntry(ctx, e.st, e.ref, e.tags, &v)
	switch e.s.decide(m, e.st, h, state) {
	case serve:
		if m.local != nil {
			m.localPut(lk, v, h.FreshUntil, e0)
		}
		return v, nil
	case notFound:
		return zero, ErrNotFound
	case serveRefresh:
		scheduleRefresh(m, *e, l, h.WrittenAt)
		return v, nil
	case missRefresh:
		scheduleRefresh(m, *e, l, h.WrittenAt)
		return zero, ErrMiss
	}
	v, err := loadEntry(ctx, m, *e, false, l)
	if err == nil && m.local != nil {
		m.localPut(lk, v, freshUntil(m.now(), e.s.shortest()), e0)
	}
	return v, err
}

// readEntry reads ref's entry, with the generations it must carry, and
// decodes it into dst. tags are the tags the reader expects the entry to
// carry: their generations are read with it, in one round trip. An entry
// that carries others costs a second round trip, for theirs. When Redis
// fails, readEntry returns the error with a miss.
func (m *Manager) readEntry(ctx context.Context, st *counters, ref entryRef, tags []string, dst any) (envelope.Header, readState, error) {
	b, want, err := m.readRaw(ctx, st, ref, tags)
	if err != nil || b == nil {
		return envelope.Header{}, stateMiss, err
	}
	h, state, _ := m.lookup(st, ref, b, &want, dst)
	if state != stateOtherTags {
		return h, state, nil
	}
	wants, err := m.otherTags(ctx, st, [][]byte{h.Tags})
	if err != nil {
		return h, stateMiss, err
	}
	wants[0].gen = want.gen
	h, state, _ = m.lookup(st, ref, b, &wants[0], dst)
	return h, state, nil
}

// readRaw reads ref's stored bytes (nil when there are none) with the
// generations of its container and of tags, in one round trip: one command
// (GET; HGET for a hash field; MGET of a memo entry with its generation,
// and of a string entry with its tags' generations on a single node), else
// a pipeline. A memo entry whose generation is gone is absent.
func (m *Manager) readRaw(ctx context.Context, st *counters, ref entryRef, tags []string) ([]byte, expect, error) {
	want := expect{tags: tags}
	if len(tags) > 0 && (ref.kind == refField || !m.oneNode) {
		return m.readPiped(ctx, st, ref, want)
	}
	if ref.kind == refField || (ref.kind == refKey && len(tags) == 0) {
		var cmd *redis.StringCmd
		if ref.kind == refField {
			cmd = redis.NewStringCmd(ctx, "hget", ref.key, ref.field)
		} else {
			cmd = redis.NewStringCmd(ctx, "get", ref.key)
		}
		if err := m.do(ctx, st, cmd); err != nil {
			if errors.Is(err, redis.Nil) {
				err = nil
			}
			return nil, want, err
		}
		return bytesOf(cmd.Val()), want, nil
	}
	// MGET of the entry, its memo generation, and its tags' generations.
	args := make([]any, 0, 3+len(tags))
	args = append(args, "mget", ref.key)
	if ref.kind == refMemo {
		args = append(args, ref.genArg)
	}
	for _, t := range tags {
		args = append(args, m.tagKey(t))
	}
	cmd := redis.NewSliceCmd(ctx, args...)
	if err := m.do(ctx, st, cmd); err != nil {
		return nil, want, err
	}
	vals := cmd.Val()
	if len(vals) != len(args)-1 {
		return nil, want, nil
	}
	s, ok := vals[0].(string)
	if !ok {
		return nil, want, nil
	}
	vals = vals[1:]
	if ref.kind == refMemo {
		if want.gen, ok = vals[0].(string); !ok {
			return nil, want, nil
		}
		vals = vals[1:]
	}
	if len(tags) > 0 {
		want.gens = make([]string, len(tags))
		for i, v := range vals {
			want.gens[i], _ = v.(string)
		}
	}
	return bytesOf(s), want, nil
}

// readPiped is readRaw's pipeline, for an entry with tags on a cluster or
// a ring (whose keys are in several slots), or a hash field with tags.
func (m *Manager) readPiped(ctx context.Context, st *counters, ref entryRef, want expect) ([]byte, expect, error) {
	var entry *redis.StringCmd
	var gen *redis.SliceCmd
	gens := make([]*redis.StringCmd, len(want.tags))
	_, err := m.pipe(ctx, st, func(p redis.Pipeliner) {
		switch ref.kind {
		case refField:
			entry = p.HGet(ctx, ref.key, ref.field)
		case refMemo:
			gen = p.MGet(ctx, ref.key, ref.gen)
		default:
			entry = p.Get(ctx, ref.key)
		}
		for i, t := range want.tags {
			gens[i] = p.Get(ctx, m.tagKey(t))
		}
	})
	if err != nil {
		return nil, want, err
	}
	var b string
	if gen != nil {
		vals := gen.Val()
		if len(vals) != 2 {
			return nil, want, nil
		}
		s, ok := vals[0].(string)
		if want.gen, _ = vals[1].(string); !ok || want.gen == "" {
			return nil, want, nil
		}
		b = s
	} else if entry.Err() != nil {
		return nil, want, nil
	} else {
		b = entry.Val()
	}
	want.gens = make([]string, len(gens))
	for i, c := range gens {
		want.gens[i] = c.Val()
	}
	return bytesOf(b), want, nil
}
