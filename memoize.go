package cache

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/envelope"
)

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
	var zero T
	s, k, err := m.loadedCall(ctx, key, load != nil, opts)
	if err != nil {
		return zero, err
	}
	var e0 uint64
	if m.local != nil {
		if v, ok := localGet[T](m, m.kv, k); ok {
			return v, nil
		}
		e0 = m.local.epoch.Load()
	}
	var v T
	var h envelope.Header
	state := stateMiss
	str, err := m.rdb.Get(ctx, k).Result()
	switch {
	case err == nil:
		h, state = m.lookup(m.kv, entryRef{key: k}, bytesOf(str), "", &v)
	case !errors.Is(err, redis.Nil):
		m.kv.add(EventRedisError, 1)
	}
	act := s.decide(m, m.kv, h, state)
	var sp *loadSpec
	if act.loads() {
		sp = m.spec(withLease(k), &s, m.kv)
	}
	return finishLocal(ctx, m, act, v, h, &s, e0, k, sp, load)
}

// finishLocal carries out a loaded read's action (see decide), keeping a
// value read fresh or loaded in the local tier under key. sp is needed only
// when act.loads().
func finishLocal[T any](ctx context.Context, m *Manager, act readAction, v T, h envelope.Header, s *settings, e0 uint64, key string, sp *loadSpec, fn func(context.Context) (T, error)) (T, error) {
	var zero T
	switch act {
	case serve:
		if m.local != nil {
			m.localPut(key, v, h.FreshUntil, e0)
		}
		return v, nil
	case notFound:
		return zero, ErrNotFound
	}
	v, err := finish(ctx, m, act, v, h, sp, fn)
	if err == nil && act == load && m.local != nil {
		m.localPut(key, v, freshUntil(m.now(), s.shortest()), e0)
	}
	return v, err
}

// loadedCall checks the arguments of a loaded call (GetOrLoad, Refresh) on
// key, and returns its settings and the key's entry key.
func (m *Manager) loadedCall(ctx context.Context, key string, hasLoader bool, opts []Option) (settings, string, error) {
	if err := m.check(ctx); err != nil {
		return settings{}, "", err
	}
	if key == "" {
		return settings{}, "", fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	if !hasLoader {
		return settings{}, "", fmt.Errorf("%w: nil loader", ErrInvalidOption)
	}
	s := m.settle(opts)
	return s, m.entryKey(key), s.err
}

// spec returns the loadSpec of ref under settings s.
func (m *Manager) spec(ref entryRef, s *settings, st *counters) *loadSpec {
	return &loadSpec{
		st: st, ref: ref, ttl: s.expiry(), stale: s.staleFor, negTTL: m.opts.NegativeTTL,
		tags: s.tags, tagTTL: s.tagTTL(),
	}
}

// Refresh loads key anew with load and stores it over the old value, which
// readers keep getting until then: there is no moment at which they miss.
// Concurrent refreshes of key share one load, and an invalidation of key
// while it runs voids the store, as for GetOrLoad. Use it, rather than Set,
// to warm a key from its source.
func Refresh[T any](ctx context.Context, m *Manager, key string, load func(context.Context) (T, error), opts ...Option) (T, error) {
	var zero T
	s, k, err := m.loadedCall(ctx, key, load != nil, opts)
	if err != nil {
		return zero, err
	}
	sp := m.spec(withLease(k), &s, m.kv)
	sp.force = true
	v, err := loadEntry(ctx, m, sp, load)
	if err == nil {
		m.dropEverywhere(ctx, false, []string{k})
	}
	return v, err
}

// Memo is a memoized function: its results are cached per argument. Make
// one with Memoize.
type Memo[A, R any] struct {
	m    *Manager
	name string
	base string // prefix:{m:name}, the start of every key of the memo
	gen  string // the generation key, moved by ForgetAll
	// genArg is gen as a command argument, boxed once rather than on every Get.
	genArg any
	fn     func(context.Context, A) (R, error)
	// tagsFor gives an argument's tags, from TagsFor; nil for none.
	tagsFor func(A) []string
	s       settings
	st      *counters
	err     error // an invalid name, function or option, returned by every call
}

// Memoize returns fn memoized under name: Get(ctx, a) returns fn(ctx, a)'s
// result, computed once per argument across the fleet (as GetOrLoad) and
// cached for the TTL opts give.
//
// The argument is a key: two equal arguments give one entry, two different
// ones two entries, in every process. Equal means: strings and byte slices
// with the same bytes, numbers of the same value (0 and -0 are equal, and
// so are all NaNs), times of the same instant (whatever their zone), nil
// and empty slices or maps, pointers to equal values, interfaces holding
// equal values of one dynamic type, and structs whose fields are all equal,
// exported or not, but for fields tagged `cache:"-"`. Arguments are encoded
// canonically, long encodings hashed with SHA-256; one that holds a func,
// a channel or a cycle is refused with ErrInvalidKey.
//
// All of a memo's entries live in one Redis Cluster hash slot, with the
// generation that ForgetAll moves: that is what makes ForgetAll a single
// command. A memo with a very large number of entries therefore sits on
// one node of a cluster.
func Memoize[A, R any](m *Manager, name string, fn func(context.Context, A) (R, error), opts ...Option) *Memo[A, R] {
	mm := &Memo[A, R]{m: m, name: name, fn: fn, s: m.settle(opts)}
	mm.err = mm.s.err
	switch {
	case name == "":
		mm.err = fmt.Errorf("%w: empty memo name", ErrInvalidKey)
	case fn == nil:
		mm.err = fmt.Errorf("%w: nil function for memo %q", ErrInvalidOption, name)
	}
	if mm.s.tagsFor != nil {
		f, ok := mm.s.tagsFor.(func(A) []string)
		if !ok && mm.err == nil {
			mm.err = fmt.Errorf("%w: TagsFor takes a func(%T) []string for memo %q", ErrInvalidOption, *new(A), name)
		}
		mm.tagsFor = f
	}
	mm.base = m.memoBase(name)
	mm.gen = mm.base + ":g"
	mm.genArg = mm.gen
	mm.st = m.stats.get("memo:" + name)
	return mm
}

// Name returns the name the memo was made with.
func (mm *Memo[A, R]) Name() string { return mm.name }

// Key returns the Redis key of args's entry.
func (mm *Memo[A, R]) Key(args A) (string, error) {
	ref, err := mm.ref(args)
	return ref.key, err
}

// ref returns where args's entry lives. The lease key, needed only to load,
// is left for withLease to add.
func (mm *Memo[A, R]) ref(args A) (entryRef, error) {
	if mm.err != nil {
		return entryRef{}, mm.err
	}
	k, err := argKey(mm.base+":e:", args)
	if err != nil {
		return entryRef{}, fmt.Errorf("cache: memo %q: argument %T is not a key: %w", mm.name, args, err)
	}
	return entryRef{key: k, gen: mm.gen}, nil
}

// withLease adds the lease key to a ref made by ref.
func (mm *Memo[A, R]) withLease(ref entryRef) entryRef {
	ref.lease = mm.base + ":l:" + ref.key[len(mm.base)+len(":e:"):]
	return ref
}

func (mm *Memo[A, R]) prepare(ctx context.Context, args A) (entryRef, error) {
	if err := mm.m.check(ctx); err != nil {
		return entryRef{}, err
	}
	return mm.ref(args)
}

// Get returns fn(ctx, args)'s result, from the cache when it holds a fresh
// one, else computed once across the fleet and stored. Errors are as for
// GetOrLoad.
func (mm *Memo[A, R]) Get(ctx context.Context, args A) (R, error) {
	var zero R
	ref, err := mm.prepare(ctx, args)
	if err != nil {
		return zero, err
	}
	var e0 uint64
	if mm.m.local != nil {
		if v, ok := localGet[R](mm.m, mm.st, ref.key); ok {
			return v, nil
		}
		e0 = mm.m.local.epoch.Load()
	}
	// The entry and its generation, in one command on one slot.
	var v R
	var h envelope.Header
	state := stateMiss
	cmd := redis.NewSliceCmd(ctx, "mget", ref.key, mm.genArg)
	_ = mm.m.rdb.Process(ctx, cmd)
	vals, err := cmd.Result()
	if err == nil && len(vals) == 2 {
		if s, ok := vals[0].(string); ok {
			gen := "0"
			if g, ok := vals[1].(string); ok {
				gen = g
			}
			h, state = mm.m.lookup(mm.st, ref, bytesOf(s), gen, &v)
		}
	} else if !slotMoving(err) {
		// A read refused by a slot migration goes on as a miss: the load
		// that follows waits for the migration (see runLoad).
		mm.st.add(EventRedisError, 1)
	}
	act := mm.s.decide(mm.m, mm.st, h, state)
	if !act.loads() {
		return finishLocal(ctx, mm.m, act, v, h, &mm.s, e0, ref.key, nil, nil)
	}
	sp, err := mm.spec(ref, args, false)
	if err != nil {
		return zero, err
	}
	return finishLocal(ctx, mm.m, act, v, h, &mm.s, e0, ref.key, sp, mm.call(args))
}

// call returns mm's function bound to args.
func (mm *Memo[A, R]) call(args A) func(context.Context) (R, error) {
	return func(ctx context.Context) (R, error) { return mm.fn(ctx, args) }
}

func (mm *Memo[A, R]) load(ctx context.Context, ref entryRef, args A, force bool) (R, error) {
	sp, err := mm.spec(ref, args, force)
	if err != nil {
		var zero R
		return zero, err
	}
	return loadEntry(ctx, mm.m, sp, mm.call(args))
}

// spec returns the loadSpec of args's entry, with its tags.
func (mm *Memo[A, R]) spec(ref entryRef, args A, force bool) (*loadSpec, error) {
	sp := mm.m.spec(mm.withLease(ref), &mm.s, mm.st)
	sp.force = force
	if mm.tagsFor != nil {
		extra := mm.tagsFor(args)
		for _, t := range extra {
			if t == "" {
				return nil, fmt.Errorf("%w: TagsFor gave an empty tag for memo %q", ErrInvalidKey, mm.name)
			}
		}
		sp.tags = append(sp.tags[:len(sp.tags):len(sp.tags)], extra...)
	}
	return sp, nil
}

// Refresh computes fn(ctx, args) anew and stores it over the old entry,
// which readers keep getting until the new one is stored: there is no
// moment at which they miss. Concurrent refreshes of one argument share one
// computation.
func (mm *Memo[A, R]) Refresh(ctx context.Context, args A) (R, error) {
	ref, err := mm.prepare(ctx, args)
	if err != nil {
		var zero R
		return zero, err
	}
	v, err := mm.load(ctx, ref, args, true)
	if err == nil {
		mm.m.dropEverywhere(ctx, false, []string{ref.key}) // other instances' copies are older
	}
	return v, err
}

// Forget removes args's entry and voids its loads in flight: once Forget
// returns, no result computed before it is stored or returned by Get. It is
// Invalidate(ctx, mm.Entry(args)).
func (mm *Memo[A, R]) Forget(ctx context.Context, args A) error {
	if err := mm.m.Invalidate(ctx, mm.Entry(args)); err != nil {
		return err
	}
	mm.st.add(EventDelete, 1)
	return nil
}

// ForgetAll forgets every entry of the memo in one command, however many
// there are: it moves the memo's generation, so entries stored under the
// old one are misses from then on (and expire with their TTL), and loads in
// flight are not stored. It is Invalidate(ctx, mm.All()).
func (mm *Memo[A, R]) ForgetAll(ctx context.Context) error {
	if err := mm.m.Invalidate(ctx, mm.All()); err != nil {
		return err
	}
	mm.st.add(EventDelete, 1)
	return nil
}
