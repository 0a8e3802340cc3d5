package cache

import (
	"context"
	"fmt"
	"reflect"
	"unsafe"
)

// Memo is a memoized function: its results are cached per argument. Make
// one with Memoize.
type Memo[A, R any] struct {
	m    *Manager
	name string
	memoKeys
	fn func(context.Context, A) (R, error)
	// batch is the function of MemoizeBatch; nil for Memoize.
	batch func(context.Context, []A) ([]R, error)
	// tagsFor gives an argument's tags, from TagsFor; nil for none.
	tagsFor func(A) []string
	// keyBy gives an argument's key text, from KeyBy; nil for argKey's.
	keyBy func(A) string
	s     settings
	st    *counters
	// layout is the argument type's, when the memo keeps its local copies
	// under the argument (see localarg.go): with a local tier, no KeyBy,
	// and a plain argument type. space is its local slots'.
	layout *argLayout
	space  uint64
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
// a channel or a cycle is refused with ErrInvalidKey. KeyBy gives a memo
// keys of the caller's own instead.
//
// All of a memo's entries live in one Redis Cluster hash slot, with the
// generation that ForgetAll moves: that is what makes ForgetAll a single
// command. A memo with a very large number of entries therefore sits on
// one node of a cluster, unless it is spread over several slots with
// Shards.
//
// Memoize panics, with an error matching ErrInvalidKey or ErrInvalidOption,
// on an empty name, a nil fn, or an option that is invalid (TagsFor of a
// function of another argument type, say): a memo is made once, at
// start-up, where a mistake is best found at once, as regexp.MustCompile
// does.
func Memoize[A, R any](m *Manager, name string, fn func(context.Context, A) (R, error), opts ...Option) *Memo[A, R] {
	mm := &Memo[A, R]{m: m, name: name, fn: fn, s: m.settle("Memoize", memoOptions, opts)}
	err := mm.s.err
	switch {
	case name == "":
		err = fmt.Errorf("%w: empty memo name", ErrInvalidKey)
	case fn == nil:
		err = fmt.Errorf("%w: nil function", ErrInvalidOption)
	}
	if mm.s.tagsFor != nil {
		f, ok := mm.s.tagsFor.(func(A) []string)
		if !ok && err == nil {
			err = fmt.Errorf("%w: TagsFor takes a func(%T) []string", ErrInvalidOption, *new(A))
		}
		mm.tagsFor = f
	}
	if mm.s.keyBy != nil {
		f, ok := mm.s.keyBy.(func(A) string)
		if !ok && err == nil {
			err = fmt.Errorf("%w: KeyBy takes a func(%T) string", ErrInvalidOption, *new(A))
		}
		mm.keyBy = f
	}
	if err != nil {
		panic(wrap(err, "Memoize %q", name))
	}
	mm.memoKeys = m.memoKeys(name, max(mm.s.shards, 1))
	mm.st = m.stats.get("memo:" + name)
	if m.local != nil && mm.keyBy == nil {
		if mm.layout = argLayoutOf(reflect.TypeFor[A]()); mm.layout != nil {
			mm.space = spaceKeys + m.local.spaces.Add(1)
		}
	}
	return mm
}

// Shards spreads a memo's entries over n hash slots (1 to 1024; default
// 1), so that on a Redis Cluster a memo too large or too busy for one node
// has its entries, and its load, spread over the masters. Each entry goes
// to the shard that a hash of its argument's key chooses; each shard has a
// generation of its own, in the shard's slot, so a hit is still one read
// of one slot. ForgetAll moves all n generations: one pipeline per node,
// n commands in all, still none per entry.
//
// The shards are part of an entry's key: instances of a memo with
// different n (during a deploy that changes it) share no entry, so every
// entry stored with the old n is a miss for the new one, and an
// invalidation made with one n does not reach the entries stored with the
// other (they expire with their TTL). Change n with the memo's name, or
// where its entries can be served for a TTL after an invalidation. n of 1
// keeps the layout of a memo made without Shards, entries included.
// Given to anything but Memoize or MemoizeBatch, or with n out of range,
// it is an invalid option.
func Shards(n int) Option {
	return func(s *settings) {
		s.give(optShards)
		if n < 1 || n > maxShards {
			s.fail(fmt.Errorf("%w: Shards(%d), want 1 to %d", ErrInvalidOption, n, maxShards))
			return
		}
		s.shards = n
	}
}

// Name returns the name the memo was made with.
func (mm *Memo[A, R]) Name() string { return mm.name }

// Key returns the Redis key of args's entry.
func (mm *Memo[A, R]) Key(args A) (string, error) {
	ref, err := mm.ref(args)
	return ref.key, err
}

// ref returns where args's entry lives.
func (mm *Memo[A, R]) ref(args A) (entryRef, error) {
	if mm.keyBy != nil {
		return mm.entryRef(userKey(mm.entryPrefix(), mm.keyBy(args))), nil
	}
	k, err := argKey(mm.entryPrefix(), args)
	if err != nil {
		return entryRef{}, wrap(err, "memo %q: argument %T is not a key", mm.name, args)
	}
	return mm.entryRef(k), nil
}

// entry returns args's entry, for a call on ctx.
func (mm *Memo[A, R]) entry(ctx context.Context, args A) (entry, error) {
	if err := mm.m.check(ctx); err != nil {
		return entry{}, err
	}
	ref, err := mm.ref(args)
	if err != nil {
		return entry{}, err
	}
	e := entry{ref: ref, s: &mm.s, st: mm.st, tags: mm.s.tags}
	if mm.tagsFor != nil {
		extra := mm.tagsFor(args)
		for _, t := range extra {
			if t == "" {
				return entry{}, fmt.Errorf("%w: TagsFor gave an empty tag for memo %q", ErrInvalidKey, mm.name)
			}
		}
		e.tags = append(e.tags[:len(e.tags):len(e.tags)], extra...)
	}
	return e, nil
}

// Get returns fn(ctx, args)'s result, from the cache when it holds a fresh
// one, else computed once across the fleet and stored. Errors are as for
// GetOrLoad.
func (mm *Memo[A, R]) Get(ctx context.Context, args A) (R, error) {
	var local localRef
	if mm.layout != nil {
		if err := mm.m.check(ctx); err != nil {
			var zero R
			return zero, err
		}
		local = localRef{slot: localSlot{space: mm.space, arg: mm.layout.hash(mm.m.local.seed, unsafe.Pointer(&args))}, layout: mm.layout}
		if v, ok := localGet[A, R](mm.m, mm.st, &local, &args); ok {
			return v, nil
		}
	}
	e, err := mm.entry(ctx, args)
	if err != nil {
		var zero R
		return zero, err
	}
	if local.layout != nil && local.layout.equal(unsafe.Pointer(&args), unsafe.Pointer(&args)) {
		// Kept under the argument; one that holds a NaN, which equals
		// nothing, under its local name.
		local.bucket = mm.m.local.bucket(localKey(e.ref))
		e.local = local
	}
	return readLoaded(ctx, mm.m, &e, loader[A, R]{fn: mm.fn, arg: args})
}

// Refresh computes fn(ctx, args) anew and stores it over the old entry,
// which readers keep getting until the new one is stored: there is no
// moment at which they miss. It never returns a result computed before it
// was called: concurrent refreshes of one argument share a computation only
// when they were called before it began. When Redis does not store the
// result, Refresh returns it with an error (matching ErrUnavailable when
// Redis could not be reached): the old entry may stay.
func (mm *Memo[A, R]) Refresh(ctx context.Context, args A) (R, error) {
	e, err := mm.entry(ctx, args)
	if err != nil {
		var zero R
		return zero, err
	}
	ctx = mm.m.withBudget(ctx)
	v, err := loadEntry(ctx, mm.m, e, true, loader[A, R]{fn: mm.fn, arg: args})
	if err == nil {
		// Other instances' copies are older.
		if err = mm.m.dropEverywhere(ctx, false, []string{e.ref.key}); err == nil {
			err = mm.m.replicated(ctx, mm.st, e.ref.key)
		}
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
// there are (one a shard, see Shards): it moves the memo's generation, so
// entries stored under the old one are misses from then on (and expire
// with their TTL), and loads in flight are not stored. It is
// Invalidate(ctx, mm.All()).
func (mm *Memo[A, R]) ForgetAll(ctx context.Context) error {
	if err := mm.m.Invalidate(ctx, mm.All()); err != nil {
		return err
	}
	mm.st.add(EventDelete, 1)
	return nil
}
