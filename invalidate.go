package cache

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// A Target names entries for Invalidate: a key (Key), a hash field
// (Hash.Field), every field of a hash (Hash.AllFields), a memo entry
// (Memo.Entry), every entry of a memo (Memo.All), every entry carrying a tag
// (Tag), or every key starting with a prefix (Prefix). The zero Target is
// invalid.
type Target struct {
	kind  targetKind
	name  string   // the key, tag or prefix as the caller gave it
	key   string   // the entry's key, or the hash
	field string   // the hash field
	lease string   // the entry's lease key
	gen   string   // the container's generation key
	gens  []string // a memo's generation keys, one a shard
	err   error    // why the target could not be made
}

type targetKind uint8

const (
	targetNone targetKind = iota
	targetKey
	targetField
	targetHash
	targetEntry
	targetMemo
	targetTag
	targetPrefix
	targetKinds
)

var targetKindNames = [targetKinds]string{"", "key", "field", "hash", "entry", "memo", "tag", "prefix"}

// Key is the target of the plain key k (stored by Set or GetOrLoad).
func Key(k string) Target { return Target{kind: targetKey, name: k} }

// Tag is the target of every entry stored with the tag t (see Tags).
func Tag(t string) Target { return Target{kind: targetTag, name: t} }

// Prefix is the target of every plain key that starts with p. Invalidating
// it scans the keyspace (SCAN, on every master of a cluster), so prefer
// tags for frequent invalidations. Glob characters in p match only
// themselves.
func Prefix(p string) Target { return Target{kind: targetPrefix, name: p} }

// Field is the target of one field of the hash.
func (h *Hash[T]) Field(field string) Target {
	t := Target{kind: targetField, name: field, key: h.key, field: field, gen: h.gen}
	if field != "" {
		t.lease = h.ref(field).withLease().lease
	}
	return t
}

// AllFields is the target of every field of the hash.
func (h *Hash[T]) AllFields() Target {
	return Target{kind: targetHash, name: h.name, key: h.key, gen: h.gen}
}

// Entry is the target of the memo's entry for args.
func (mm *Memo[A, R]) Entry(args A) Target {
	ref, err := mm.ref(args)
	if err != nil {
		return Target{kind: targetEntry, name: mm.name, err: err}
	}
	ref = ref.withLease()
	return Target{kind: targetEntry, name: mm.name, key: ref.key, lease: ref.lease}
}

// All is the target of every entry of the memo (as ForgetAll).
func (mm *Memo[A, R]) All() Target {
	return Target{kind: targetMemo, name: mm.name, key: mm.base, gens: mm.gens}
}

// String names the target's kind and what it names, as in `tag "sales"`.
func (t Target) String() string {
	if t.kind == targetNone || t.kind >= targetKinds {
		return "invalid target"
	}
	return targetKindNames[t.kind] + " " + strconv.Quote(t.name)
}

func (t Target) check() error {
	switch {
	case t.err != nil:
		return t.err
	case t.kind == targetNone || t.kind >= targetKinds:
		return fmt.Errorf("%w: the zero Target", ErrInvalidKey)
	case t.name == "" && t.kind != targetPrefix:
		return fmt.Errorf("%w: empty %s", ErrInvalidKey, targetKindNames[t.kind])
	case t.name == "" && t.kind == targetPrefix:
		return fmt.Errorf("%w: empty prefix (it would match every key)", ErrInvalidKey)
	}
	return nil
}

// Invalidate removes the entries the targets name, and voids the loads of
// them in flight: once it returns, no value loaded before it is stored, and
// no caller that starts after it gets one. One call may mix every kind of
// target; its Redis work is pipelined, so it takes one round trip per node
// touched, however many targets there are (a prefix takes two scans more,
// and with Options.Local one more command publishes the drop to the other
// Managers' local tiers; in strict mode, Invalidate then waits until they
// have dropped their copies, see LocalOptions.Strict).
//
// If any target is invalid (an empty key or tag, the zero Target), nothing
// is invalidated. If Redis fails, the error is returned, and the
// invalidation is not lost: this Manager treats the entries the targets
// name as misses, and retries the invalidation in the background until it
// succeeds (see InvalidationStats.Pending). Other Managers may serve those
// entries until it does, or until their TTL ends; a retry that cannot
// succeed before the longest TTL this Manager stored (and
// Options.DefaultTTL) has passed is given up, the entries having expired.
// Pending invalidations end with Close.
func (m *Manager) Invalidate(ctx context.Context, targets ...Target) error {
	began := time.Now()
	if err := m.check(ctx); err != nil {
		return err
	}
	for _, t := range targets {
		if err := t.check(); err != nil {
			return wrap(err, "invalidate %v", t)
		}
	}
	if err := m.invalidate(ctx, targets); err != nil {
		m.pending.add(m, targets)
		return wrap(err, "invalidate")
	}
	var kinds [targetKinds]uint64
	for _, t := range targets {
		kinds[t.kind]++
	}
	for k, n := range kinds {
		if n > 0 {
			m.inv.byKind[k].Add(n)
			observe(m.opts.Observer, ctx, Event{Kind: EventInvalidate, Name: targetKindNames[k], N: n, Duration: time.Since(began)})
		}
	}
	return nil
}

// invalidate does the Redis work of Invalidate for valid targets.
func (m *Manager) invalidate(ctx context.Context, targets []Target) error {
	p := invalidation{strings: make([]stringEntry, 0, len(targets))}
	for _, t := range targets {
		switch t.kind {
		case targetKey:
			r := m.keyLeaseRef(t.name)
			p.strings = append(p.strings, stringEntry{r.key, r.lease})
		case targetEntry:
			p.strings = append(p.strings, stringEntry{t.key, t.lease})
		case targetField:
			p.fields = append(p.fields, entryRef{kind: refField, key: t.key, field: t.field, lease: t.lease})
		case targetHash:
			p.gens = append(p.gens, t.gen)
			p.hashes = append(p.hashes, t.key)
		case targetMemo:
			p.gens = append(p.gens, t.gens...)
			p.detachPrefixes = append(p.detachPrefixes, t.key)
		case targetTag:
			p.gens = append(p.gens, m.tagKey(t.name))
		case targetPrefix:
			p.prefixes = append(p.prefixes, t.name)
			p.detachPrefixes = append(p.detachPrefixes, m.keyPrefix(t.name))
		}
	}
	if err := m.resolvePrefixes(ctx, &p); err != nil {
		return err
	}
	_, err := m.pipe(ctx, m.kv, func(pipe redis.Pipeliner) { p.queue(ctx, m, pipe) })
	if err == nil && len(p.prefixes) > 0 {
		err = m.rescanPrefixes(ctx, &p)
	}
	// Detach and drop local copies even on error: some of the work may
	// have been done.
	m.detach(&p)
	if m.local != nil {
		keys := make([]string, 0, len(p.strings)+len(p.fields))
		for _, r := range p.strings {
			keys = append(keys, r.key)
		}
		for _, r := range p.fields {
			keys = append(keys, localKey(r))
		}
		all := len(p.gens) > 0 || len(p.hashes) > 0 || len(p.prefixes) > 0
		if derr := m.dropEverywhere(ctx, all, keys); err == nil {
			err = derr
		}
	}
	if err != nil {
		return err
	}
	m.inv.removed.Add(uint64(len(p.strings) + len(p.fields) + len(p.hashes)))
	if m.opts.WaitReplicas > 0 {
		return m.replicated(ctx, m.kv, p.written()...)
	}
	return nil
}

// queue queues p's deletes on pipe: as few commands as the keys' slots
// allow (one DEL on a single node), every lease deleted no later than its
// entry, so that no store lands between the two.
func (p *invalidation) queue(ctx context.Context, m *Manager, pipe redis.Pipeliner) {
	keys := make([]string, 0, 2*len(p.strings)+len(p.fields)+len(p.gens))
	for _, r := range p.strings {
		keys = append(keys, r.lease, r.key)
	}
	var hashes []string             // the hashes whose fields go, in order
	fields := map[string][]string{} // their fields
	for _, r := range p.fields {
		if _, ok := fields[r.key]; !ok {
			hashes = append(hashes, r.key)
			keys = append(keys, versionOf(r.key)) // voids a warm of the hash loading meanwhile
		}
		fields[r.key] = append(fields[r.key], r.field)
		keys = append(keys, r.lease)
	}
	// A generation deleted is a new one for the next load: the entries of
	// the old one are misses from then on.
	keys = append(keys, p.gens...)
	for _, group := range m.keyGroups(keys) {
		pipe.Del(ctx, group...)
	}
	for _, h := range hashes { // after the DEL of their leases, on the same node
		pipe.HDel(ctx, h, fields[h]...)
	}
	for _, group := range m.keyGroups(p.hashes) {
		pipe.Unlink(ctx, group...)
	}
}

// stringEntry is a string entry to delete: its key and its lease's.
type stringEntry struct{ key, lease string }

// invalidation is the Redis work of one Invalidate.
type invalidation struct {
	strings        []stringEntry // string entries: delete lease and entry
	fields         []entryRef    // hash fields: delete lease, then the field
	gens           []string      // generations to delete: of memos, hashes and tags
	hashes         []string      // hashes to delete
	prefixes       []string      // key prefixes to resolve into entries
	detachPrefixes []string      // flights to detach by key prefix
}

// written returns the keys p deleted, or some of them: at least one on
// each node it deleted keys on (see Manager.replicated).
func (p *invalidation) written() []string {
	keys := make([]string, 0, len(p.strings)+len(p.fields)+len(p.gens)+len(p.hashes))
	for _, r := range p.strings {
		keys = append(keys, r.key)
	}
	for _, r := range p.fields {
		keys = append(keys, r.key)
	}
	keys = append(keys, p.gens...)
	return append(keys, p.hashes...)
}

func (m *Manager) detach(p *invalidation) {
	leases := make([]string, 0, len(p.strings)+len(p.fields))
	for _, r := range p.strings {
		leases = append(leases, r.lease)
	}
	for _, r := range p.fields {
		leases = append(leases, r.lease)
	}
	m.flights.detach(leases)
	for _, h := range p.hashes {
		m.flights.detachPrefix(h)
	}
	for _, pre := range p.detachPrefixes {
		m.flights.detachPrefix(pre)
	}
}

// invStats counts invalidations.
type invStats struct {
	byKind        [targetKinds]atomic.Uint64
	removed       atomic.Uint64
	events        atomic.Uint64
	unknownEvents atomic.Uint64
}

// InvalidationStats count a Manager's invalidations.
type InvalidationStats struct {
	// ByKind counts the targets invalidated, by kind: "key", "field",
	// "hash", "entry", "memo", "tag", "prefix".
	ByKind map[string]uint64
	// Removed counts the entries deleted: a key, a field, a memo entry or a
	// whole hash counts one each; a memo's All and a tag, which move a
	// generation and delete no entry, count none.
	Removed uint64
	// Events counts Emit calls with at least one rule; UnknownEvents those
	// with none.
	Events, UnknownEvents uint64
	// Pending is how many targets of failed invalidations wait to be
	// retried now; their entries are misses for this Manager meanwhile.
	// Retried counts the targets whose retry succeeded, Abandoned those
	// given up (their entries had expired, or more than maxPending
	// waited).
	Pending            int
	Retried, Abandoned uint64
}

func (s *invStats) snapshot(p *pendingInvalidations) InvalidationStats {
	out := InvalidationStats{
		Pending:       int(p.n.Load()),
		Retried:       p.retried.Load(),
		Abandoned:     p.abandoned.Load(),
		ByKind:        make(map[string]uint64, targetKinds-1),
		Removed:       s.removed.Load(),
		Events:        s.events.Load(),
		UnknownEvents: s.unknownEvents.Load(),
	}
	for k := targetKey; k < targetKinds; k++ {
		out.ByKind[targetKindNames[k]] = s.byKind[k].Load()
	}
	return out
}

// resolvePrefixes turns p.prefixes into entries with SCAN on every master.
func (m *Manager) resolvePrefixes(ctx context.Context, p *invalidation) error {
	for _, pre := range p.prefixes {
		pattern := m.keyScanPattern(pre)
		var mu sync.Mutex // protects p.strings across masters
		err := m.forEachMaster(ctx, func(ctx context.Context, n node) error {
			return n.scan(ctx, m.kv, pattern, func(k string) {
				ref, ok := scannedKeyRef(k) // a lease alone is a load in flight
				if !ok {
					return
				}
				mu.Lock()
				p.strings = append(p.strings, stringEntry{ref.key, ref.lease})
				mu.Unlock()
			})
		})
		if err != nil {
			return wrap(err, "invalidate prefix %q", pre)
		}
	}
	return nil
}

// rescanPrefixes scans p's prefixes a second time and deletes what it finds.
// SCAN returns every key present for the whole scan, but may miss one that
// appears or disappears during it: a load in flight at the first scan may
// have stored its entry (its lease gone) while that scan ran. Such an
// entry is present for the whole second scan, which starts after the first
// ended; loads that took their lease after the first scan began came after
// the invalidation and may stay.
func (m *Manager) rescanPrefixes(ctx context.Context, p *invalidation) error {
	again := invalidation{prefixes: p.prefixes}
	if err := m.resolvePrefixes(ctx, &again); err != nil || len(again.strings) == 0 {
		return err
	}
	_, err := m.pipe(ctx, m.kv, func(pipe redis.Pipeliner) {
		for _, r := range again.strings {
			pipe.Del(ctx, r.lease, r.key)
		}
	})
	return err
}
