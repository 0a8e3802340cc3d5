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
	ctx = m.withBudget(ctx)
	var v T
	h, state, _ := m.readEntry(ctx, e.st, e.ref, &v)
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
	if err := ctx.Err(); err != nil {
		return zero, err // its caller has gone: no load
	}
	v, err := loadEntry(ctx, m, *e, false, l)
	if err == nil && m.local != nil {
		m.localPut(lk, v, freshUntil(m.now(), e.s.shortest()), e0)
	}
	return v, err
}

// readEntry reads ref's entry in one command (GET; HGET for a hash field;
// MGET of a memo entry with its generation) and decodes it into dst. When
// Redis fails, it returns the error with a miss.
func (m *Manager) readEntry(ctx context.Context, st *counters, ref entryRef, dst any) (envelope.Header, readState, error) {
	var b []byte
	gen := ""
	switch ref.kind {
	case refMemo:
		cmd := redis.NewSliceCmd(ctx, "mget", ref.key, ref.genArg)
		if err := m.do(ctx, st, cmd); err != nil {
			return envelope.Header{}, stateMiss, err
		}
		vals := cmd.Val()
		if len(vals) != 2 {
			return envelope.Header{}, stateMiss, nil
		}
		s, ok := vals[0].(string)
		if !ok {
			return envelope.Header{}, stateMiss, nil
		}
		gen = "0"
		if g, ok := vals[1].(string); ok {
			gen = g
		}
		b = bytesOf(s)
	default:
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
			return envelope.Header{}, stateMiss, err
		}
		b = bytesOf(cmd.Val())
	}
	h, state, _ := m.lookup(st, ref, b, gen, dst)
	return h, state, nil
}
