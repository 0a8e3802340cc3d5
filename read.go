package cache

import (
	"context"
	"errors"
	"slices"
	"strings"

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
	s    *settings // its TTL, tags and stale-while-revalidate policy
	st   *counters // the counters of its name
	tags []string  // the tags a load records: s.tags, and a memo's TagsFor
	// local is where its copy is kept in the local tier; when its slot is
	// zero, under its local name.
	local localRef
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
	var r0 localRead
	if m.local != nil {
		if e.local.slot == (localSlot{}) {
			e.local = m.local.nameRef(e.ref)
		}
		if v, ok := localGet[A, T](m, e.st, &e.local, &l.arg); ok {
			return v, nil
		}
		r0 = m.local.begin(&e.local)
	}
	ctx = m.withBudget(ctx)
	if !e.s.noFetchOnMiss && m.flights.n.Load() > 0 {
		// A load of the entry is in progress in this process: its result
		// comes from a Redis call not made yet, or this caller takes a new
		// flight (see loadMany), so the caller joins it without a read
		// of its own.
		if e.ref = e.ref.withLease(); m.flights.inFlight(e.ref.lease) {
			v, err := loadEntry(ctx, m, *e, false, l)
			if err == nil && m.local != nil {
				m.localPut(&e.local, localKeep(&e.local, l.arg, v), freshUntil(m.now(), e.s.shortest()), r0)
			}
			return v, err
		}
	}
	var v T
	h, state, _ := m.readEntry(ctx, e.st, e.ref, e.tags, &v, !e.s.noFetchOnMiss) // a value that does not decode is a miss: load
	switch e.s.decide(m, e.st, h, state) {
	case serve:
		if m.local != nil {
			m.localPut(&e.local, localKeep(&e.local, l.arg, v), h.FreshUntil, r0)
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
		m.localPut(&e.local, localKeep(&e.local, l.arg, v), freshUntil(m.now(), e.s.shortest()), r0)
	}
	return v, err
}

// readEntry reads ref's entry, with the generations it must carry, and
// decodes it into dst. tags are the tags the reader expects the entry to
// carry: their generations are read with it, in one round trip. An entry
// that carries others costs a second round trip, for theirs. When Redis
// fails, readEntry returns the error with a miss.
func (m *Manager) readEntry(ctx context.Context, st *counters, ref entryRef, tags []string, dst any, load bool) (envelope.Header, readState, error) {
	b, want, err := m.readRaw(ctx, st, ref, tags, load)
	if err != nil || b == nil {
		return envelope.Header{}, stateMiss, err
	}
	h, state, err := m.lookup(st, ref, b, &want, dst)
	if state != stateOtherTags {
		return h, state, err
	}
	wants, err := m.otherTags(ctx, st, [][]byte{h.Tags})
	if err != nil {
		return h, stateMiss, err
	}
	wants[0].gen = want.gen
	return m.lookup(st, ref, b, &wants[0], dst)
}

// plainRead returns the error of a plain read (Get, Hash.Get) that ended
// in state with err from readEntry, counting it: a value that did not
// decode is a miss that says why.
func plainRead(st *counters, state readState, err error) error {
	var de *DecodeError
	if errors.As(err, &de) {
		st.add(EventMiss, 1)
		return missError{de}
	}
	if err != nil {
		return err
	}
	return countRead(st, state)
}

// missError is the miss of a plain read whose stored value did not decode
// into its destination. It matches ErrMiss and the *DecodeError.
type missError struct{ de *DecodeError }

func (e missError) Error() string {
	return "cache: miss: " + strings.TrimPrefix(e.de.Error(), "cache: ")
}

func (e missError) Unwrap() []error { return []error{ErrMiss, e.de} }

// readRaw reads ref's stored bytes (nil when there are none) with the
// generations of its container and of tags, in one round trip: one command
// (GET; HGET for a hash field; MGET of a memo entry with its generation,
// and of a string entry with its tags' generations on a single node), else
// a pipeline. A memo entry whose generation is gone is absent.
func (m *Manager) readRaw(ctx context.Context, st *counters, ref entryRef, tags []string, load bool) ([]byte, expect, error) {
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
		if err := m.read(ctx, st, cmd, load); err != nil {
			if errors.Is(err, redis.Nil) || err == errMissHint {
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
	if err := m.read(ctx, st, cmd, load); err != nil {
		if err == errMissHint {
			err = nil
		}
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

// readLoadedMany is readLoaded for a batch: the outcome of each of es
// (whose keys differ), from the local tier, from Redis in one round trip
// (one per node), or loaded with one call of l for those that are missing
// (see loadMany). The error is the caller's ctx's, when it ended first.
func readLoadedMany[T any](ctx context.Context, m *Manager, es []entry, l batchLoader[T]) ([]outcome[T], error) {
	out := make([]outcome[T], len(es))
	var lrs []localRef // where each copy is kept: under its local name
	var r0s []localRead
	todo := make([]int, 0, len(es))
	if m.local != nil {
		lrs, r0s = make([]localRef, len(es)), make([]localRead, len(es))
		for i := range es {
			lrs[i] = m.local.nameRef(es[i].ref)
			r0s[i] = m.local.begin(&lrs[i])
			if v, ok := localGet[struct{}, T](m, es[i].st, &lrs[i], nil); ok {
				out[i] = outcome[T]{v: v, has: true}
				continue
			}
			todo = append(todo, i)
		}
	} else {
		for i := range es {
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return out, nil
	}
	ctx = m.withBudget(ctx)
	states := readMany(ctx, m, es, todo, out)
	var load []int
	for j, i := range todo {
		e := &es[i]
		r := states[j]
		switch e.s.decide(m, e.st, r.h, r.state) {
		case serve:
			if m.local != nil {
				m.localPut(&lrs[i], out[i].v, r.h.FreshUntil, r0s[i])
			}
		case notFound:
			out[i] = outcome[T]{err: ErrNotFound}
		case serveRefresh:
			scheduleRefresh(m, *e, oneOf(l, i), r.h.WrittenAt)
		case missRefresh:
			scheduleRefresh(m, *e, oneOf(l, i), r.h.WrittenAt)
			out[i] = outcome[T]{err: ErrMiss}
		default:
			load = append(load, i)
		}
	}
	if len(load) == 0 {
		return out, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err // its caller has gone: no load
	}
	sub := make([]entry, len(load))
	for j, i := range load {
		sub[j] = es[i]
	}
	loaded, err := loadMany(ctx, m, sub, false, func(ctx context.Context, idx []int) (map[int]T, error) {
		orig := make([]int, len(idx))
		for j, k := range idx {
			orig[j] = load[k]
		}
		vals, err := l(ctx, orig)
		if errs, ok := err.(entryErrors); ok {
			back := make(entryErrors, len(errs))
			for j, k := range idx {
				if e, ok := errs[orig[j]]; ok {
					back[k] = e
				}
			}
			err = back
		}
		if vals == nil {
			return nil, err
		}
		back := make(map[int]T, len(idx))
		for j, k := range idx {
			if v, ok := vals[orig[j]]; ok {
				back[k] = v
			}
		}
		return back, err
	})
	if err != nil {
		return nil, err
	}
	for j, i := range load {
		out[i] = loaded[j]
		if m.local != nil && loaded[j].has && loaded[j].err == nil {
			m.localPut(&lrs[i], loaded[j].v, freshUntil(m.now(), es[i].s.shortest()), r0s[i])
		}
	}
	return out, nil
}

// oneOf returns the loader of entry i alone of a batch loaded with l.
func oneOf[T any](l batchLoader[T], i int) loader[int, T] {
	return loader[int, T]{arg: i, fn: func(ctx context.Context, i int) (T, error) {
		vals, err := l(ctx, []int{i})
		err = errorOf(err, i)
		v, ok := vals[i]
		switch {
		case ok:
			return v, nil
		case err != nil:
			return v, err
		}
		return v, errLeftOut
	}}
}

// readResult is what readMany found of one entry.
type readResult struct {
	h     envelope.Header
	state readState
}

// readMany reads the entries idx of es, with their containers' and tags'
// generations, in one round trip (one per node), decodes the values it
// finds into out, and says what it found of each. When Redis fails, every
// entry is a miss.
func readMany[T any](ctx context.Context, m *Manager, es []entry, idx []int, out []outcome[T]) []readResult {
	res := make([]readResult, len(idx))
	st := es[idx[0]].st
	raws, gens, tagGens, err := m.readRawMany(ctx, st, es, idx)
	if err != nil {
		return res
	}
	var other []int       // positions in idx of entries stored with other tags
	var sections [][]byte // their tags
	found := func(j int, want *expect) readState {
		i := idx[j]
		h, state, _ := m.lookup(es[i].st, es[i].ref, raws[j], want, &out[i].v)
		switch state {
		case stateOtherTags:
			sections = append(sections, h.Tags)
		case stateHit, stateStale:
			out[i].has = true
			res[j] = readResult{h, state}
		default:
			out[i] = outcome[T]{}
			res[j] = readResult{h, state}
		}
		return state
	}
	var want expect // reused: lookup keeps none of it
	for j, i := range idx {
		if raws[j] == nil {
			continue
		}
		want.gen, want.tags = gens[j], es[i].tags
		want.gens = want.gens[:0]
		for _, t := range want.tags {
			want.gens = append(want.gens, tagGens[t])
		}
		if found(j, &want) == stateOtherTags {
			other = append(other, j)
		}
	}
	if len(other) == 0 {
		return res
	}
	ws, err := m.otherTags(ctx, st, sections)
	if err != nil {
		return res
	}
	for k, j := range other {
		ws[k].gen = gens[j]
		found(j, &ws[k])
	}
	return res
}

// readRawMany reads the stored bytes of the entries idx of es (nil for
// none, or for a memo entry whose generation is gone), their memos'
// generations, and the generations of their tags, by tag, in one round
// trip (one per node): on a single node one MGET for every string key and
// one HMGET per hash; on a cluster a GET per plain key, an MGET per memo
// (its entries and its generation share a slot), an HMGET per hash and a
// GET per tag.
func (m *Manager) readRawMany(ctx context.Context, st *counters, es []entry, idx []int) (raws [][]byte, gens []string, tagGens map[string]string, err error) {
	raws, gens = make([][]byte, len(idx)), make([]string, len(idx))
	tagGens = make(map[string]string)
	var tags []string
	for _, i := range idx {
		for _, t := range es[i].tags {
			if _, ok := tagGens[t]; !ok {
				tagGens[t] = ""
				tags = append(tags, t)
			}
		}
	}
	// Each string key read goes into a group read by one MGET: one group
	// on a single node, one per memo and one per other key on a cluster.
	type mget struct {
		keys []string
		cmd  *redis.SliceCmd
	}
	var groups []*mget
	group := make(map[string]*mget)
	place := make([]int, len(idx)) // where an entry's key is in its group
	gplace := make([]int, len(idx))
	of := make([]*mget, len(idx))
	add := func(g *mget, key string) int {
		g.keys = append(g.keys, key)
		return len(g.keys) - 1
	}
	groupOf := func(name string) *mget {
		if m.oneNode {
			name = ""
		}
		g, ok := group[name]
		if !ok {
			g = &mget{}
			group[name] = g
			groups = append(groups, g)
		}
		return g
	}
	type hmget struct {
		fields []string
		cmd    *redis.SliceCmd
	}
	hashes := make(map[string]*hmget)
	var hashOrder []string
	for j, i := range idx {
		ref := &es[i].ref
		switch ref.kind {
		case refField:
			h, ok := hashes[ref.key]
			if !ok {
				h = &hmget{}
				hashes[ref.key] = h
				hashOrder = append(hashOrder, ref.key)
			}
			place[j] = len(h.fields)
			h.fields = append(h.fields, ref.field)
		case refMemo:
			g := groupOf(ref.gen)
			of[j], place[j] = g, add(g, ref.key)
			gplace[j] = -1 // its memo's generation, placed below
		default:
			g := groupOf(ref.key)
			of[j], place[j] = g, add(g, ref.key)
		}
	}
	for j, i := range idx {
		if gplace[j] == -1 {
			g := of[j]
			gen := es[i].ref.gen
			k := slices.Index(g.keys, gen)
			if k < 0 {
				k = add(g, gen)
			}
			gplace[j] = k
		}
	}
	var tagCmds []*redis.StringCmd
	tagPlace := make([]int, len(tags))
	var tagGroup *mget
	if m.oneNode && len(tags) > 0 {
		tagGroup = groupOf("")
		for k, t := range tags {
			tagPlace[k] = add(tagGroup, m.tagKey(t))
		}
	}
	if _, err := m.pipe(ctx, st, func(p redis.Pipeliner) {
		for _, g := range groups {
			g.cmd = p.MGet(ctx, g.keys...)
		}
		for _, k := range hashOrder {
			h := hashes[k]
			h.cmd = p.HMGet(ctx, k, h.fields...)
		}
		if tagGroup == nil {
			for _, t := range tags {
				tagCmds = append(tagCmds, p.Get(ctx, m.tagKey(t)))
			}
		}
	}); err != nil {
		return nil, nil, nil, err
	}
	str := func(vals []any, k int) string {
		if k < len(vals) {
			s, _ := vals[k].(string)
			return s
		}
		return ""
	}
	for j, i := range idx {
		ref := &es[i].ref
		var v string
		var ok bool
		if ref.kind == refField {
			vals := hashes[ref.key].cmd.Val()
			if place[j] < len(vals) {
				v, ok = vals[place[j]].(string)
			}
		} else {
			vals := of[j].cmd.Val()
			if place[j] < len(vals) {
				v, ok = vals[place[j]].(string)
			}
			if ref.kind == refMemo {
				if gens[j] = str(vals, gplace[j]); gens[j] == "" {
					ok = false // its memo's generation is gone
				}
			}
		}
		if ok {
			raws[j] = bytesOf(v)
		}
	}
	for k, t := range tags {
		if tagGroup != nil {
			tagGens[t] = str(tagGroup.cmd.Val(), tagPlace[k])
		} else {
			tagGens[t] = tagCmds[k].Val()
		}
	}
	return raws, gens, tagGens, nil
}
