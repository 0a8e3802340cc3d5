package cache

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/scripts"
)

// A Target names entries for Invalidate: a key (Key), a hash field
// (Hash.Field), every field of a hash (Hash.AllFields), a memo entry
// (Memo.Entry), every entry of a memo (Memo.All), every entry carrying a tag
// (Tag), or every key starting with a prefix (Prefix). The zero Target is
// invalid.
type Target struct {
	kind  targetKind
	name  string // the key, tag or prefix as the caller gave it
	key   string // the entry's key, or the hash
	field string // the hash field
	lease string // the entry's lease key
	gen   string // the container's generation key
	err   error  // why the target could not be made
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
	t := Target{kind: targetField, name: field, key: h.key, field: field, gen: h.gen, err: h.err}
	if field != "" {
		t.lease = h.ref(field).lease
	}
	return t
}

// AllFields is the target of every field of the hash.
func (h *Hash[T]) AllFields() Target {
	return Target{kind: targetHash, name: h.name, key: h.key, gen: h.gen, err: h.err}
}

// Entry is the target of the memo's entry for args.
func (mm *Memo[A, R]) Entry(args A) Target {
	ref, err := mm.ref(args)
	if err != nil {
		return Target{kind: targetEntry, name: mm.name, err: err}
	}
	ref = mm.withLease(ref)
	return Target{kind: targetEntry, name: mm.name, key: ref.key, lease: ref.lease}
}

// All is the target of every entry of the memo (as ForgetAll).
func (mm *Memo[A, R]) All() Target {
	return Target{kind: targetMemo, name: mm.name, key: mm.base, gen: mm.gen, err: mm.err}
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
// target; its Redis work is pipelined, so it takes a few round trips per
// node touched, however many targets there are (tags and prefixes take one
// or two more to find their entries, and with Options.Local one more
// publishes the drop to the other Managers' local tiers).
//
// If any target is invalid (an empty key or tag, the zero Target), nothing
// is invalidated. If Redis fails, the error is returned and some targets
// may not have been invalidated: invalidations are not queued, so retry the
// call (it is idempotent), or rely on the entries' TTLs to end the
// staleness.
func (m *Manager) Invalidate(ctx context.Context, targets ...Target) error {
	if err := m.check(ctx); err != nil {
		return err
	}
	for _, t := range targets {
		if err := t.check(); err != nil {
			return fmt.Errorf("cache: invalidate %v: %w", t, err)
		}
	}
	var p invalidation
	for _, t := range targets {
		switch t.kind {
		case targetKey:
			ref := m.keyRef(t.name)
			p.strings = append(p.strings, ref)
		case targetEntry:
			p.strings = append(p.strings, entryRef{key: t.key, lease: t.lease})
		case targetField:
			p.fields = append(p.fields, entryRef{key: t.key, field: t.field, lease: t.lease})
		case targetHash:
			p.gens = append(p.gens, t.gen)
			p.hashes = append(p.hashes, t.key)
		case targetMemo:
			p.gens = append(p.gens, t.gen)
			p.detachPrefixes = append(p.detachPrefixes, t.key)
		case targetTag:
			p.tags = append(p.tags, m.tagKey(t.name))
		case targetPrefix:
			p.prefixes = append(p.prefixes, t.name)
			p.detachPrefixes = append(p.detachPrefixes, m.prefix+"{k:"+escape(t.name))
		}
	}
	if err := m.resolveTags(ctx, &p); err != nil {
		return err
	}
	if err := m.resolvePrefixes(ctx, &p); err != nil {
		return err
	}
	_, err := m.pipelined(ctx, func(pipe redis.Pipeliner) error {
		// In each pair the lease goes first, so no store lands between the two.
		for _, r := range p.strings {
			pipe.Del(ctx, r.lease, r.key)
		}
		moved := make(map[string]bool)
		for _, r := range p.fields {
			if !moved[r.key] {
				moved[r.key] = true
				pipe.Incr(ctx, r.key+":v") // voids a warm of the hash loading meanwhile
			}
			pipe.Del(ctx, r.lease)
			pipe.HDel(ctx, r.key, r.field)
		}
		for _, g := range p.gens {
			pipe.Set(ctx, g, newGen(), 0)
		}
		for _, h := range p.hashes {
			pipe.Unlink(ctx, h)
		}
		for _, k := range p.unlink {
			pipe.Unlink(ctx, k)
		}
		return nil
	})
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
		m.dropEverywhere(ctx, all, keys)
	}
	if err != nil {
		m.kv.add(EventRedisError, 1)
		return fmt.Errorf("cache: invalidate: %w", err)
	}
	var kinds [targetKinds]uint64
	for _, t := range targets {
		kinds[t.kind]++
	}
	for k, n := range kinds {
		if n > 0 {
			m.inv.byKind[k].Add(n)
			if m.opts.Observer != nil {
				m.opts.Observer.Observe(Event{Kind: EventInvalidate, Name: targetKindNames[k], N: n})
			}
		}
	}
	m.inv.removed.Add(uint64(len(p.strings) + len(p.fields) + len(p.hashes)))
	return nil
}

// invalidation is the Redis work of one Invalidate.
type invalidation struct {
	strings        []entryRef // string entries: delete lease and entry
	fields         []entryRef // hash fields: delete lease, then the field
	gens           []string   // generations to move
	hashes         []string   // hashes to delete
	tags           []string   // tag sets to resolve into entries
	prefixes       []string   // key prefixes to resolve into entries
	unlink         []string   // bookkeeping keys to delete
	detachPrefixes []string   // flights to detach by key prefix
}

func (m *Manager) detach(p *invalidation) {
	leases := make([]string, 0, len(p.strings)+len(p.fields))
	for _, r := range p.strings {
		leases = append(leases, r.lease)
	}
	for _, r := range p.fields {
		leases = append(leases, r.lease)
	}
	m.flights.detach(leases...)
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
	// Removed counts the entries deleted (a hash or a tag's entry counts
	// one each; a memo's All, which moves a generation, counts none).
	Removed uint64
	// Events counts Emit calls with at least one rule; UnknownEvents those
	// with none.
	Events, UnknownEvents uint64
}

func (s *invStats) snapshot() InvalidationStats {
	out := InvalidationStats{
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

// Tags.
//
// A tag is a sorted set, prefix:{t:tag}, whose members name the entries
// carrying the tag and whose scores are when those entries expire. A load
// records its tags before it takes its lease, so an invalidation of the tag
// finds it and voids its store. Recording a member removes the members
// whose entries have expired, and the set expires with its longest-lived
// member: the bookkeeping of a tag never outgrows its live entries.

// Tags tags the entries a call stores, so that Invalidate(ctx, Tag(t))
// removes them. For a Memo, every entry gets the tags (see TagsFor for
// tags that depend on the argument); for a Hash, every field.
func Tags(tags ...string) Option {
	return func(s *settings) {
		for _, t := range tags {
			if t == "" {
				s.fail(fmt.Errorf("%w: empty tag", ErrInvalidKey))
				return
			}
		}
		s.tags = append(s.tags[:len(s.tags):len(s.tags)], tags...)
	}
}

// TagsFor tags each entry of a Memo with the tags f gives for its argument,
// known before its load starts. Given to anything but a Memo[A, R], it is
// an invalid option.
func TagsFor[A any](f func(A) []string) Option {
	return func(s *settings) {
		if f == nil {
			s.fail(fmt.Errorf("%w: nil TagsFor function", ErrInvalidOption))
			return
		}
		s.tagsFor = f
	}
}

func (m *Manager) tagKey(tag string) string {
	return m.prefix + "{t:" + escape(tag) + "}"
}

// tagMember returns the member that names ref in a tag's set.
func tagMember(ref entryRef) string {
	var b strings.Builder
	for _, s := range []string{ref.lease, ref.key} {
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	b.WriteString(ref.field)
	return b.String()
}

// parseTagMember is the inverse of tagMember.
func parseTagMember(s string) (entryRef, bool) {
	var parts [2]string
	for i := range parts {
		j := strings.IndexByte(s, ':')
		if j <= 0 {
			return entryRef{}, false
		}
		n, err := strconv.Atoi(s[:j])
		if err != nil || n < 0 || n > len(s)-j-1 {
			return entryRef{}, false
		}
		parts[i] = s[j+1 : j+1+n]
		s = s[j+1+n:]
	}
	return entryRef{lease: parts[0], key: parts[1], field: s}, true
}

// tagEntry records in each tag's set that refs carry it until ttl from now
// (0 for no expiry), in one round trip.
func (m *Manager) tagEntry(ctx context.Context, tags []string, ttl time.Duration, refs ...entryRef) error {
	if len(tags) == 0 || len(refs) == 0 {
		return nil
	}
	now := m.now()
	until := "inf"
	if ttl > 0 {
		until = strconv.FormatInt(now.Add(ttl).UnixMilli(), 10)
	}
	_, err := m.pipelined(ctx, func(p redis.Pipeliner) error {
		for _, ref := range refs {
			member := tagMember(ref)
			for _, t := range tags {
				scripts.TagAdd.Eval(ctx, p, []string{m.tagKey(t)}, now.UnixMilli(), until, member)
			}
		}
		return nil
	})
	return err
}

// resolveTags turns p.tags into entries. Each tag's set is first renamed
// away (atomically, on its slot), so that an entry tagged meanwhile lands in
// a new set instead of being lost.
func (m *Manager) resolveTags(ctx context.Context, p *invalidation) error {
	if len(p.tags) == 0 {
		return nil
	}
	suffix := ":x:" + newGen()
	renames := make([]*redis.StatusCmd, len(p.tags))
	_, err := m.pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, t := range p.tags {
			renames[i] = pipe.Rename(ctx, t, t+suffix)
		}
		return nil
	})
	if err != nil && !isNoSuchKey(err) {
		m.kv.add(EventRedisError, 1)
		return fmt.Errorf("cache: invalidate tags: %w", err)
	}
	var taken []string
	for i, r := range renames {
		if r.Err() == nil {
			taken = append(taken, p.tags[i]+suffix)
		} else if !isNoSuchKey(r.Err()) {
			return fmt.Errorf("cache: invalidate tag: %w", r.Err())
		}
	}
	const batch = 5000
	for start := int64(0); len(taken) > 0; start += batch {
		cmds := make([]*redis.StringSliceCmd, len(taken))
		_, err := m.pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i, k := range taken {
				cmds[i] = pipe.ZRange(ctx, k, start, start+batch-1)
			}
			return nil
		})
		if err != nil {
			m.kv.add(EventRedisError, 1)
			return fmt.Errorf("cache: invalidate tags: %w", err)
		}
		var more []string
		for i, c := range cmds {
			members := c.Val()
			for _, s := range members {
				ref, ok := parseTagMember(s)
				if !ok {
					continue
				}
				if ref.field != "" {
					p.fields = append(p.fields, ref)
				} else {
					p.strings = append(p.strings, ref)
				}
			}
			if len(members) == batch {
				more = append(more, taken[i])
			} else {
				p.unlink = append(p.unlink, taken[i])
			}
		}
		taken = more
	}
	return nil
}

func isNoSuchKey(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such key")
}

// resolvePrefixes turns p.prefixes into entries with SCAN on every master.
func (m *Manager) resolvePrefixes(ctx context.Context, p *invalidation) error {
	for _, pre := range p.prefixes {
		pattern := m.prefix + "{k:" + globEscape(escape(pre)) + "*"
		var mu sync.Mutex // protects p.strings across masters
		err := m.forEachMaster(ctx, func(ctx context.Context, node redis.UniversalClient) error {
			iter := node.Scan(ctx, 0, pattern, 1000).Iterator()
			for iter.Next(ctx) {
				k := iter.Val()
				k = strings.TrimSuffix(k, ":l") // a lease alone: a load in flight
				if !strings.HasSuffix(k, "}") {
					continue
				}
				mu.Lock()
				p.strings = append(p.strings, withLease(k))
				mu.Unlock()
			}
			return iter.Err()
		})
		if err != nil {
			m.kv.add(EventRedisError, 1)
			return fmt.Errorf("cache: invalidate prefix %q: %w", pre, err)
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
	_, err := m.pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, r := range again.strings {
			pipe.Del(ctx, r.lease, r.key)
		}
		return nil
	})
	return err
}

// forEachMaster calls fn for every node that holds keys: each master of a
// cluster, each shard of a ring, else the client itself.
func (m *Manager) forEachMaster(ctx context.Context, fn func(context.Context, redis.UniversalClient) error) error {
	switch c := m.rdb.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return fn(ctx, n) })
	case *redis.Ring:
		return c.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error { return fn(ctx, n) })
	}
	return fn(ctx, m.rdb)
}

// globEscape escapes the characters Redis's glob patterns give a meaning.
func globEscape(s string) string {
	if !strings.ContainsAny(s, `*?[]\^`) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\^`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Events.

// A Rule maps an application event's payload to the targets it makes
// stale.
type Rule func(ctx context.Context, payload any) []Target

// events holds the rules of each event.
type events struct {
	mu    sync.RWMutex // protects rules
	rules map[string][]Rule
}

// OnEvent adds a rule for the event name: when the application Emits it,
// the targets the rule returns are invalidated. An event may have many
// rules. Rules are called outside the Manager's locks and must not block.
func (m *Manager) OnEvent(name string, rule Rule) {
	if rule == nil {
		return
	}
	m.events.mu.Lock()
	defer m.events.mu.Unlock()
	if m.events.rules == nil {
		m.events.rules = make(map[string][]Rule)
	}
	m.events.rules[name] = append(m.events.rules[name], rule)
}

// Emit applies every rule of the event name to payload and invalidates all
// their targets in one Invalidate. An event with no rules is a no-op,
// counted in Stats.
func (m *Manager) Emit(ctx context.Context, name string, payload any) error {
	if err := m.check(ctx); err != nil {
		return err
	}
	m.events.mu.RLock()
	rules := m.events.rules[name]
	m.events.mu.RUnlock()
	if len(rules) == 0 {
		m.inv.unknownEvents.Add(1)
		return nil
	}
	m.inv.events.Add(1)
	var targets []Target
	for _, r := range rules {
		targets = append(targets, r(ctx, payload)...)
	}
	if len(targets) == 0 {
		return nil
	}
	if err := m.Invalidate(ctx, targets...); err != nil {
		return fmt.Errorf("cache: event %q: %w", name, err)
	}
	return nil
}
