package cache

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/envelope"
	"github.com/stockpot-go/cache/internal/scripts"
)

// Hash is a cache of T values kept as the fields of one Redis hash, such as
// per-outlet metrics with one field per outlet. The hash as a whole lives
// for the Hash's TTL after its last write; each field also carries its own
// freshness, since Redis 7.0 cannot expire single fields.
type Hash[T any] struct {
	m    *Manager
	name string
	hashKeys
	s  settings
	st *counters
}

// NewHash returns the Hash called name. Options set its TTL (for the hash
// and for each field), tags, and the stale-while-revalidate policy of its
// GetOrLoad.
//
// NewHash panics, with an error matching ErrInvalidKey or
// ErrInvalidOption, on an empty name or an option that is invalid or does
// not apply to a Hash (TagsFor): a Hash is made once, at start-up, where a
// mistake is best found at once, as regexp.MustCompile does.
func NewHash[T any](m *Manager, name string, opts ...Option) *Hash[T] {
	h := &Hash[T]{m: m, name: name, s: m.settle("NewHash", hashOptions, opts)}
	err := h.s.err
	if name == "" {
		err = fmt.Errorf("%w: empty hash name", ErrInvalidKey)
	}
	if err != nil {
		panic(wrap(err, "NewHash %q", name))
	}
	h.hashKeys = m.hashKeys(name)
	h.st = m.stats.get("hash:" + name)
	return h
}

// Name returns the name the Hash was made with.
func (h *Hash[T]) Name() string { return h.name }

func (h *Hash[T]) check(ctx context.Context, fields ...string) error {
	if err := h.m.check(ctx); err != nil {
		return err
	}
	for _, f := range fields {
		if f == "" {
			return fmt.Errorf("%w: empty field of hash %q", ErrInvalidKey, h.name)
		}
	}
	return nil
}

// Get returns the value of field: ErrMiss when it is absent, expired or does
// not decode (then the error says why, and matches *DecodeError too),
// ErrNotFound when a loader's ErrNotFound is remembered.
func (h *Hash[T]) Get(ctx context.Context, field string) (T, error) {
	var v T
	if err := h.check(ctx, field); err != nil {
		return v, err
	}
	_, state, err := h.m.readEntry(ctx, h.st, h.ref(field), h.s.tags, &v, false)
	return v, plainRead(h.st, state, err)
}

// Set stores v in field. A load of field in flight does not overwrite it.
func (h *Hash[T]) Set(ctx context.Context, field string, v T) error {
	return h.SetMany(ctx, map[string]T{field: v})
}

// SetMany stores every value of items in its field, in one round trip. If a
// field is empty or a value does not encode, nothing is written.
func (h *Hash[T]) SetMany(ctx context.Context, items map[string]T) error {
	if err := h.check(ctx); err != nil {
		return err
	}
	ttl := h.s.expiry()
	now := h.m.now()
	hdr := envelope.Header{WrittenAt: now.UnixMilli(), FreshUntil: freshUntil(now, ttl)}
	args, refs, err := h.encodeFields(items, hdr)
	if err != nil || len(items) == 0 {
		return err
	}
	ctx = h.m.withBudget(ctx)
	if len(h.s.tags) > 0 {
		section, err := h.m.tagSectionNow(ctx, h.st, &h.s)
		if err != nil {
			return err
		}
		if err := h.retag(items, args, section); err != nil {
			return err
		}
	}
	leases := make([]string, len(refs))
	for i, r := range refs {
		leases[i] = r.lease
	}
	h.m.pending.stored(h.s.keep(ttl))
	_, err = h.m.pipe(ctx, h.st, func(p redis.Pipeliner) {
		// Void the loads in flight, single fields' and warms', so that
		// they cannot overwrite.
		p.Del(ctx, leases...)
		p.Del(ctx, h.ver)
		p.HSet(ctx, h.key, args...)
		h.expire(ctx, p, h.s.keep(ttl))
	})
	if err != nil {
		return err
	}
	h.st.add(EventSet, uint64(len(items)))
	if h.m.local != nil {
		keys := make([]string, len(refs))
		for i, r := range refs {
			keys[i] = localKey(r)
		}
		if err := h.m.dropEverywhere(ctx, false, keys); err != nil {
			return err
		}
	}
	return h.m.replicated(ctx, h.st, h.key)
}

// encodeFields returns the HSET arguments of items, each with header hdr,
// and the refs (with leases) of their fields.
func (h *Hash[T]) encodeFields(items map[string]T, hdr envelope.Header) ([]any, []entryRef, error) {
	args := make([]any, 0, 2*len(items))
	refs := make([]entryRef, 0, len(items))
	for f, v := range items {
		if f == "" {
			return nil, nil, fmt.Errorf("%w: empty field of hash %q", ErrInvalidKey, h.name)
		}
		b, err := h.m.encode(v, hdr)
		if err != nil {
			return nil, nil, wrap(err, "hash %q field %q", h.name, f)
		}
		args = append(args, f, b)
		refs = append(refs, h.ref(f).withLease())
	}
	return args, refs, nil
}

// retag puts the tags section in every value of args, HSET arguments
// made by encodeFields for items.
func (h *Hash[T]) retag(items map[string]T, args []any, section []byte) error {
	for i := 0; i < len(args); i += 2 {
		f := args[i].(string)
		b, err := h.m.retag(items[f], args[i+1].([]byte), section)
		if err != nil {
			return wrap(err, "hash %q field %q", h.name, f)
		}
		args[i+1] = b
	}
	return nil
}

func (h *Hash[T]) expire(ctx context.Context, p redis.Pipeliner, ttl time.Duration) {
	if ttl > 0 {
		p.PExpire(ctx, h.key, ttl)
	} else {
		p.Persist(ctx, h.key)
	}
}

// Delete removes fields and voids their loads in flight.
func (h *Hash[T]) Delete(ctx context.Context, fields ...string) error {
	if err := h.check(ctx, fields...); err != nil {
		return err
	}
	targets := make([]Target, len(fields))
	for i, f := range fields {
		targets[i] = h.Field(f)
	}
	if err := h.m.Invalidate(ctx, targets...); err != nil {
		return err
	}
	h.st.add(EventDelete, uint64(len(fields)))
	return nil
}

// Clear removes every field and voids every load of the hash in flight. It
// is Invalidate(ctx, h.AllFields()).
func (h *Hash[T]) Clear(ctx context.Context) error {
	if err := h.m.Invalidate(ctx, h.AllFields()); err != nil {
		return err
	}
	h.st.add(EventDelete, 1)
	return nil
}

// All returns every fresh field of the hash, decoded, in one HGETALL.
// Fields that do not decode are left out of the map, counted, and reported
// in the error, a FieldErrors; the map holds the others all the same.
func (h *Hash[T]) All(ctx context.Context) (map[string]T, error) {
	if err := h.check(ctx); err != nil {
		return nil, err
	}
	var all *redis.MapStringStringCmd
	gens := make([]*redis.StringCmd, len(h.s.tags))
	_, err := h.m.pipe(ctx, h.st, func(p redis.Pipeliner) {
		all = p.HGetAll(ctx, h.key)
		for i, t := range h.s.tags {
			gens[i] = p.Get(ctx, h.m.tagKey(t))
		}
	})
	if err != nil {
		return nil, err
	}
	want := expect{tags: h.s.tags, gens: make([]string, len(gens))}
	for i, c := range gens {
		want.gens[i] = c.Val()
	}
	raw := all.Val()
	out := make(map[string]T, len(raw))
	var bad FieldErrors
	var other []string    // fields stored with other tags, looked up again below
	var sections [][]byte // their tags
	for f, s := range raw {
		var v T
		hdr, state, err := h.m.lookup(h.st, h.ref(f), bytesOf(s), &want, &v)
		switch {
		case err != nil:
			bad = append(bad, err.(*DecodeError))
		case state == stateOtherTags:
			other, sections = append(other, f), append(sections, hdr.Tags)
		case state == stateHit:
			out[f] = v
		}
	}
	if len(other) > 0 {
		wants, err := h.m.otherTags(ctx, h.st, sections)
		if err != nil {
			return nil, err
		}
		for i, f := range other {
			var v T
			if _, state, _ := h.m.lookup(h.st, h.ref(f), bytesOf(raw[f]), &wants[i], &v); state == stateHit {
				out[f] = v
			}
		}
	}
	h.st.add(EventHit, uint64(len(out)))
	if len(bad) > 0 {
		return out, bad
	}
	return out, nil
}

// FieldErrors lists the fields of a Hash that did not decode.
type FieldErrors []*DecodeError

// Error says how many fields did not decode, and why the first did not.
func (e FieldErrors) Error() string {
	if len(e) == 1 {
		return fmt.Sprintf("cache: 1 field did not decode: %v", e[0])
	}
	return fmt.Sprintf("cache: %d fields did not decode (first: %v)", len(e), e[0])
}

// Unwrap returns the errors of every field.
func (e FieldErrors) Unwrap() []error {
	errs := make([]error, len(e))
	for i, d := range e {
		errs[i] = d
	}
	return errs
}

// TTL returns the time the hash has left to live in Redis: NeverExpires
// when it does not expire, ErrMiss when it does not exist.
func (h *Hash[T]) TTL(ctx context.Context) (time.Duration, error) {
	if err := h.check(ctx); err != nil {
		return 0, err
	}
	return h.m.pttl(ctx, h.st, h.key)
}

// GetOrLoad returns the value of field, loading it with load when it is
// missing: once for all concurrent callers of the fleet (see GetOrLoad).
func (h *Hash[T]) GetOrLoad(ctx context.Context, field string, load func(ctx context.Context, field string) (T, error)) (T, error) {
	e, err := h.entry(ctx, field, load != nil)
	if err != nil {
		var zero T
		return zero, err
	}
	return readLoaded(ctx, h.m, &e, loader[string, T]{fn: load, arg: field})
}

// Refresh loads field anew with load and stores it over the old value,
// which readers keep getting until then: there is no moment at which they
// miss. Its loads are shared, voided and reported as Refresh's (the
// package function) are.
func (h *Hash[T]) Refresh(ctx context.Context, field string, load func(ctx context.Context, field string) (T, error)) (T, error) {
	e, err := h.entry(ctx, field, load != nil)
	if err != nil {
		var zero T
		return zero, err
	}
	ctx = h.m.withBudget(ctx)
	v, err := loadEntry(ctx, h.m, e, true, loader[string, T]{fn: load, arg: field})
	if err == nil {
		if err = h.m.dropEverywhere(ctx, false, []string{localKey(e.ref)}); err == nil {
			err = h.m.replicated(ctx, h.st, e.ref.key)
		}
	}
	return v, err
}

// entry checks the arguments of a loaded call on field, and returns its
// entry.
func (h *Hash[T]) entry(ctx context.Context, field string, hasLoader bool) (entry, error) {
	if err := h.check(ctx, field); err != nil {
		return entry{}, err
	}
	if !hasLoader {
		return entry{}, fmt.Errorf("%w: nil loader", ErrInvalidOption)
	}
	return entry{ref: h.ref(field), s: &h.s, st: h.st, tags: h.s.tags}, nil
}

// storeLoaded writes items, loaded after the hash's generation was gen,
// its field version ver and its tags' generations gens, unless an
// invalidation of the hash or of any of its fields came since; it reports
// whether it wrote. (An invalidation of a tag does not stop the write: the
// fields it writes then carry a generation their tag no longer has, and
// are misses.)
func (h *Hash[T]) storeLoaded(ctx context.Context, items map[string]T, v hashVersions) (bool, error) {
	ttl := h.s.expiry()
	now := h.m.now()
	hdr := envelope.Header{WrittenAt: now.UnixMilli(), FreshUntil: freshUntil(now, ttl), Gen: parseGen(v.gen), Tags: tagSection(h.s.tags, v.tags)}
	fields, refs, err := h.encodeFields(items, hdr)
	if err != nil || len(items) == 0 {
		return err == nil, err
	}
	keys := make([]string, 3, 3+len(refs))
	keys[0], keys[1], keys[2] = h.key, h.gen, h.ver
	for _, r := range refs {
		keys = append(keys, r.lease)
	}
	args := make([]any, 3, 3+len(fields))
	args[0], args[1], args[2] = v.gen, v.ver, h.s.keep(ttl).Milliseconds()
	args = append(args, fields...)
	h.m.pending.stored(h.s.keep(ttl))
	n, err := h.m.eval(ctx, h.st, scripts.StoreFields, keys, args...).Int()
	if err != nil {
		return false, err
	}
	if n == 0 {
		h.st.add(EventVoidedStore, 1)
		return false, nil
	}
	h.st.add(EventSet, uint64(len(items)))
	if h.m.local != nil {
		lk := make([]string, len(refs))
		for i, r := range refs {
			lk[i] = localKey(r)
		}
		if err := h.m.dropEverywhere(ctx, false, lk); err != nil {
			return true, err
		}
	}
	return true, nil
}

// hashVersions are what a warm of a hash loads under: its generation, its
// field version and its tags' generations.
type hashVersions struct {
	gen, ver string
	tags     []string
}

// versions returns the hash's versions, making those that are missing,
// before a warm loads it.
func (h *Hash[T]) versions(ctx context.Context) (hashVersions, error) {
	var v hashVersions
	cmd := h.m.eval(ctx, h.st, scripts.Gens, []string{h.gen, h.ver}, newGen(), newGen()) // one slot
	vals, err := cmd.StringSlice()
	if err != nil {
		return v, err
	}
	if len(vals) != 2 {
		return v, errors.New("cache: unexpected reply from the gens script")
	}
	v.gen, v.ver = vals[0], vals[1]
	v.tags, err = h.m.tagGens(ctx, h.st, h.s.tags, h.m.tagKeep(&entry{s: &h.s}))
	return v, err
}

// newGen returns a new generation for a container: a random number, so a
// generation lost (say, to eviction) never comes back with an old value.
func newGen() string {
	return strconv.FormatUint(mrand.Uint64()|1, 10)
}
