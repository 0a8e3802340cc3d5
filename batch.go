package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Batch loading.
//
// GetOrLoadMany, Hash.GetOrLoadMany and Memo.GetMany read many entries in
// one round trip (one per node) and load the missing ones with one call of
// their loader, with the guarantees of a single load for each entry: one
// load per entry across the fleet (an entry whose lease another process
// holds is waited for, not loaded again; one that a concurrent load of
// this process, single or batch, is loading is shared), no value loaded
// before an invalidation of it served after it, negative caching. The
// leases are taken with one pipelined SET NX each, and the values stored
// with one script call per slot: a round trip per node for each step,
// however many entries.

// RememberMissing makes the keys a batch loader leaves out of its result
// remembered as not found, for Options.NegativeTTL, as a single loader's
// ErrNotFound is: the next reads do not call the loader for them. Without
// it they are misses, not stored, loaded again by the next read. It
// applies to GetOrLoadMany, NewHash (for Hash.GetOrLoadMany) and
// MemoizeBatch.
func RememberMissing() Option {
	return func(s *settings) {
		s.give(optRememberMissing)
		s.rememberMissing = true
	}
}

// GetOrLoadMany returns the values of keys, loading those that are missing
// with one call of load, which gets them (the keys whose loads this process
// runs: not those another process or another call is loading) and returns
// their values by key. Keys load leaves out are left out of the result (see
// RememberMissing), as are keys not found; keys load returns that it was
// not asked for are ignored. When load returns values and an error, the
// values are stored and returned, and the error names the keys it failed.
// Options are as for GetOrLoad, and RememberMissing.
func GetOrLoadMany[T any](ctx context.Context, m *Manager, keys []string, load func(ctx context.Context, missing []string) (map[string]T, error), opts ...Option) (map[string]T, error) {
	if err := m.check(ctx); err != nil {
		return nil, err
	}
	if load == nil {
		return nil, fmt.Errorf("%w: nil loader", ErrInvalidOption)
	}
	s := m.settle("GetOrLoadMany", loadedOptions|optRememberMissing, opts)
	if s.err != nil {
		return nil, s.err
	}
	keys, err := distinct(keys, "key")
	if err != nil {
		return nil, err
	}
	es := make([]entry, len(keys))
	for i, k := range keys {
		es[i] = entry{ref: m.keyRef(k), s: &s, st: m.kv, tags: s.tags}
	}
	outs, err := readLoadedMany(ctx, m, es, byName(keys, load))
	if err != nil {
		return nil, err
	}
	return byKey(keys, outs)
}

// GetOrLoadMany returns the values of fields, loading those that are
// missing with one call of load, as GetOrLoadMany (the package function)
// does for keys.
func (h *Hash[T]) GetOrLoadMany(ctx context.Context, fields []string, load func(ctx context.Context, fields []string) (map[string]T, error)) (map[string]T, error) {
	if err := h.check(ctx); err != nil {
		return nil, err
	}
	if load == nil {
		return nil, fmt.Errorf("%w: nil loader", ErrInvalidOption)
	}
	fields, err := distinct(fields, "field")
	if err != nil {
		return nil, err
	}
	es := make([]entry, len(fields))
	for i, f := range fields {
		es[i] = entry{ref: h.ref(f), s: &h.s, st: h.st, tags: h.s.tags}
	}
	outs, err := readLoadedMany(ctx, h.m, es, byName(fields, load))
	if err != nil {
		return nil, err
	}
	return byKey(fields, outs)
}

// distinct returns names without repeats, or an error for an empty one.
func distinct(names []string, what string) ([]string, error) {
	seen := make(map[string]bool, len(names))
	out := make([]string, 0, len(names))
	for _, n := range names {
		if n == "" {
			return nil, fmt.Errorf("%w: empty %s", ErrInvalidKey, what)
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out, nil
}

// byName returns the batch loader of entries named names, by load.
func byName[T any](names []string, load func(context.Context, []string) (map[string]T, error)) batchLoader[T] {
	return func(ctx context.Context, idx []int) (map[int]T, error) {
		asked := make([]string, len(idx))
		for j, i := range idx {
			asked[j] = names[i]
		}
		vals, err := load(ctx, asked)
		out := make(map[int]T, len(idx))
		for j, i := range idx {
			if v, ok := vals[asked[j]]; ok {
				out[i] = v
			}
		}
		return out, err
	}
}

// byKey returns the values of outs by name, and an error naming the names
// whose load failed (not those left out or not found).
func byKey[T any](names []string, outs []outcome[T]) (map[string]T, error) {
	vals := make(map[string]T, len(names))
	var failed []string
	var first error
	for i, o := range outs {
		switch {
		case o.has:
			vals[names[i]] = o.v
			if o.err != nil && first == nil {
				first = o.err // a refresh that was not stored
			}
		case o.err == nil, errors.Is(o.err, ErrNotFound), errors.Is(o.err, errLeftOut), errors.Is(o.err, ErrMiss):
		default:
			failed = append(failed, names[i])
			if first == nil {
				first = o.err
			}
		}
	}
	if first == nil {
		return vals, nil
	}
	if len(failed) == 0 {
		return vals, first
	}
	return vals, wrap(first, "%d of %d failed to load (%s)", len(failed), len(names), listNames(failed))
}

// listNames returns names quoted and comma-separated, the first ten.
func listNames(names []string) string {
	var b strings.Builder
	for i, n := range names {
		if i == 10 {
			fmt.Fprintf(&b, ", and %d more", len(names)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", n)
	}
	return b.String()
}

// MemoizeBatch returns fn memoized under name, as Memoize does, for a
// function that computes the results of many arguments at once: fn gets
// the arguments to compute and returns their results in the same order
// (one result per argument, or an error for them all). Get calls it with
// one argument; GetMany with every argument it misses that no other load
// is computing. Its panics are Memoize's.
func MemoizeBatch[A, R any](m *Manager, name string, fn func(ctx context.Context, args []A) ([]R, error), opts ...Option) *Memo[A, R] {
	if fn == nil {
		panic(wrap(fmt.Errorf("%w: nil function", ErrInvalidOption), "MemoizeBatch %q", name))
	}
	one := func(ctx context.Context, a A) (R, error) {
		rs, err := fn(ctx, []A{a})
		if err == nil && len(rs) != 1 {
			err = fmt.Errorf("cache: memo %q: the batch function returned %d results for 1 argument", name, len(rs))
		}
		if err != nil {
			var zero R
			return zero, err
		}
		return rs[0], nil
	}
	mm := Memoize(m, name, one, opts...)
	mm.batch = fn
	return mm
}

// GetMany returns the results of args, in their order, as Get does for
// one: from the cache where it holds them; the others computed with one
// call of the memo's batch function (see MemoizeBatch), or, for a memo
// made by Memoize, with a call of its function for each, one after the
// other. Equal arguments share one entry and one computation. An argument
// whose result is not found or failed to compute has the zero result, and
// the error then names it by its position in args (and matches ErrNotFound
// when every one that failed was not found).
func (mm *Memo[A, R]) GetMany(ctx context.Context, args []A) ([]R, error) {
	if err := mm.m.check(ctx); err != nil {
		return nil, err
	}
	es, which, err := mm.entries(ctx, args)
	if err != nil {
		return nil, err
	}
	distinctArgs := make([]A, len(es))
	for i, e := range which {
		distinctArgs[e] = args[i]
	}
	outs, err := readLoadedMany(ctx, mm.m, es, mm.loadMany(distinctArgs))
	if err != nil {
		return nil, err
	}
	results := make([]R, len(args))
	var failed []string
	var first error
	notFound := true
	for i, e := range which {
		o := outs[e]
		if o.has {
			results[i] = o.v
		}
		if o.err != nil && !(o.has && errors.Is(o.err, errLeftOut)) {
			failed = append(failed, fmt.Sprint(i))
			notFound = notFound && errors.Is(o.err, ErrNotFound)
			if first == nil {
				first = o.err
			}
		}
	}
	switch {
	case first == nil:
		return results, nil
	case notFound:
		return results, fmt.Errorf("%w: memo %q: arguments %s", ErrNotFound, mm.name, strings.Join(failed, ", "))
	}
	return results, wrap(first, "memo %q: %d of %d arguments failed (at %s)", mm.name, len(failed), len(args), strings.Join(failed, ", "))
}

// entries returns the entries of args, one per distinct argument, and for
// each argument the index of its entry.
func (mm *Memo[A, R]) entries(ctx context.Context, args []A) ([]entry, []int, error) {
	which := make([]int, len(args))
	index := make(map[string]int, len(args))
	es := make([]entry, 0, len(args))
	for i, a := range args {
		e, err := mm.entry(ctx, a)
		if err != nil {
			return nil, nil, err
		}
		k, ok := index[e.ref.key]
		if !ok {
			k = len(es)
			index[e.ref.key] = k
			es = append(es, e)
		}
		which[i] = k
	}
	return es, which, nil
}

// loadMany returns the batch loader of the memo's entries of args: one
// call of its batch function, or a call of its function per argument.
func (mm *Memo[A, R]) loadMany(args []A) batchLoader[R] {
	return func(ctx context.Context, idx []int) (map[int]R, error) {
		out := make(map[int]R, len(idx))
		if mm.batch == nil {
			errs := make(entryErrors)
			for _, i := range idx {
				r, err := mm.fn(ctx, args[i])
				if err != nil {
					errs[i] = err
					continue
				}
				out[i] = r
			}
			if len(errs) > 0 {
				return out, errs
			}
			return out, nil
		}
		asked := make([]A, len(idx))
		for j, i := range idx {
			asked[j] = args[i]
		}
		rs, err := mm.batch(ctx, asked)
		if err == nil && len(rs) != len(asked) {
			err = fmt.Errorf("cache: memo %q: the batch function returned %d results for %d arguments", mm.name, len(rs), len(asked))
		}
		if err != nil {
			return nil, err
		}
		for j, i := range idx {
			out[i] = rs[j]
		}
		return out, nil
	}
}

// entryErrors are the errors of some entries of a batch load, by index;
// the entries without one have a value (or were left out).
type entryErrors map[int]error

func (e entryErrors) Error() string {
	for _, err := range e {
		return fmt.Sprintf("%d entries failed to load (one: %v)", len(e), err)
	}
	return "no entry failed"
}

// errorOf returns the error of entry i of a batch load whose loader
// returned err.
func errorOf(err error, i int) error {
	if errs, ok := err.(entryErrors); ok {
		return errs[i]
	}
	return err
}
