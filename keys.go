package cache

import (
	"strconv"
	"strings"
	"time"
)

// The cache's keys, every one of them built and parsed in this file.
//
// Each entry's key carries a Redis Cluster hash tag, the part in braces, and
// the entry's metadata (its lease, its container's generation) carries the
// same tag, so that the scripts that read and write them together touch one
// hash slot. P is Options.Prefix followed by a colon:
//
//	P{k:KEY}                 a plain key's value
//	P{k:KEY}:l               its load lease
//	P{h:NAME}                a hash, one field per entry
//	P{h:NAME}:l:FIELD        a field's load lease
//	P{h:NAME}:g              the hash's generation, deleted by AllFields
//	P{h:NAME}:v              its field version, deleted by Field targets
//	P{m:NAME}:e:ARG          a memoized result (ARG: see argKey)
//	P{m:NAME}:l:ARG          its load lease
//	P{m:NAME}:g              the memo's generation, deleted by All (ForgetAll)
//	P{m:NAME%sN:I}:e:ARG     an entry of a memo of N shards (Shards(N)), in shard I
//	P{m:NAME%sN:I}:l:ARG     its load lease
//	P{m:NAME%sN:I}:g         shard I's generation; All deletes all N
//	P{t:TAG}:g               a tag's generation, deleted by Tag targets
//	P{lock:NAME}             a distributed lock, holding its owner's token
//	P{lock:NAME}:fence       its fencing counter, which never expires
//	P{warm}:period:I:N       the claim of warming period N of interval I ms
//	P{local}:invalidate      the local tier's pub/sub channel
//	P{local}:m:ID            the channel of the Manager ID in strict mode:
//	                         its heartbeats and its drops' acknowledgements
//	P{local}:leases          strict mode's registry of the Managers that may
//	                         hold a read lease (see strict.go)
//	P{SLOT}:w                a write made before WAIT (Options.WaitReplicas),
//	                         expiring after a second; SLOT: a short tag of a
//	                         slot written to (see replicas.go)
//
// A generation is a random number, set by the first load (or write) that
// needs it when the key has none; an entry records the generations it was
// stored under, and counts only while they stay. Deleting a generation is
// how a whole container or tag is invalidated, and losing one to eviction
// or a restart invalidates the same way: never the other way round.
//
// KEY, NAME, FIELD and TAG have '%' and '}' escaped (as %25 and %7D), so the
// first '}' is always the tag's end and two different names never give one
// key. An escaped name never holds "%s": it marks a sharded memo's shard,
// so that P{m:NAME%sN: starts the keys of that memo's N shards and of no
// other memo. A memo of one shard (the default) keeps the unsharded
// layout. Which shard holds an entry is shardOf its ARG (the argument's
// text, as argKey or userKey write it after the entry infix), fixed with
// the layout: changing it, like changing N, makes every entry a miss.
//
// Keys the application keeps itself (Manager.Key) are P followed by its
// own name: names that do not start with '{' never meet the cache's.

// escape escapes '%' and '}' in s.
func escape(s string) string {
	if !strings.ContainsAny(s, "%}") {
		return s
	}
	return escaper.Replace(s)
}

var escaper = strings.NewReplacer("%", "%25", "}", "%7D")

// Suffixes of the metadata keys, after an entry's or a container's key.
const (
	leaseSuffix      = ":l"  // a plain key's lease
	fieldLeaseSuffix = ":l:" // a hash field's lease, before the field
	genSuffix        = ":g"  // a container's generation
	versionSuffix    = ":v"  // a hash's field version
	memoEntryInfix   = ":e:" // between a memo's base and an argument
	memoLeaseInfix   = ":l:" // between a memo's base and an argument
	fenceSuffix      = ":fence"
)

// refKind says which kind of entry an entryRef names.
type refKind uint8

const (
	refKey   refKind = iota // a plain key's string entry
	refField                // a field of a Hash
	refMemo                 // a Memo's string entry, read with its generation
)

// entryRef locates one entry in Redis.
type entryRef struct {
	kind  refKind
	key   string // the string key, or the hash holding the field
	field string // the hash field; "" for a string entry
	gen   string // the container's generation, in key's slot; "" for none
	// genArg is gen as a command argument, boxed once per memo rather than
	// on every read.
	genArg any
	// lease is the load lease, in key's slot. It is made only when it is
	// needed, by withLease, to keep it off the path of a hit.
	lease string
	// arg is where a memo entry's argument starts in key.
	arg int
}

// withLease returns r with its lease key set.
func (r entryRef) withLease() entryRef {
	if r.lease != "" {
		return r
	}
	switch r.kind {
	case refKey:
		r.lease = r.key + leaseSuffix
	case refField:
		r.lease = r.key + fieldLeaseSuffix + escape(r.field)
	case refMemo:
		r.lease = r.key[:r.arg-len(memoEntryInfix)] + memoLeaseInfix + r.key[r.arg:]
	}
	return r
}

// localKey is the local tier's key of an entry.
func localKey(r entryRef) string {
	if r.kind != refField {
		return r.key
	}
	return r.key + "\x00" + r.field
}

// entryKey returns the Redis key of a plain key's value.
func (m *Manager) entryKey(key string) string {
	return m.prefix + "{k:" + escape(key) + "}"
}

// keyRef returns where a plain key's entry lives.
func (m *Manager) keyRef(key string) entryRef {
	return entryRef{kind: refKey, key: m.entryKey(key)}
}

// keyLeaseRef returns where a plain key's entry and its lease live, with
// both keys made in one allocation: the entry's key is the start of its
// lease's.
func (m *Manager) keyLeaseRef(key string) entryRef {
	lease := m.prefix + "{k:" + escape(key) + "}" + leaseSuffix
	return entryRef{kind: refKey, key: lease[:len(lease)-len(leaseSuffix)], lease: lease}
}

// keyPrefix returns the start that the entry and lease keys of every plain
// key starting with p share.
func (m *Manager) keyPrefix(p string) string {
	return m.prefix + "{k:" + escape(p)
}

// keyScanPattern returns the SCAN pattern of the entry and lease keys of
// every plain key starting with p.
func (m *Manager) keyScanPattern(p string) string {
	return globEscape(m.keyPrefix(p)) + "*"
}

// scannedKeyRef returns the ref of the plain key whose entry or lease key
// SCAN found as k (a lease alone is a load in flight), and false for
// anything else.
func scannedKeyRef(k string) (entryRef, bool) {
	k = strings.TrimSuffix(k, leaseSuffix)
	if !strings.HasSuffix(k, "}") {
		return entryRef{}, false
	}
	return entryRef{kind: refKey, key: k}.withLease(), true
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

// hashKeys are the keys of a Hash.
type hashKeys struct {
	key string // the hash
	gen string // its generation
	ver string // its field version
}

func (m *Manager) hashKeys(name string) hashKeys {
	k := m.prefix + "{h:" + escape(name) + "}"
	return hashKeys{key: k, gen: k + genSuffix, ver: k + versionSuffix}
}

// ref returns where the field of the hash lives.
func (k hashKeys) ref(field string) entryRef {
	return entryRef{kind: refField, key: k.key, field: field, gen: k.gen}
}

// versionOf returns the field version key of the hash whose key is hash.
func versionOf(hash string) string { return hash + versionSuffix }

// memoKeys are the keys of a Memo.
type memoKeys struct {
	// base is the start of every key of the memo and of no other's:
	// P{m:NAME}, or P{m:NAME%sN: for a memo of N shards.
	base   string
	shards []memoShard // one, or N
	gens   []string    // every shard's generation, in shard order
}

// memoShard are the keys of one shard of a memo, all in one hash slot.
type memoShard struct {
	entry  string // P{m:NAME}:e:, the start of its entry keys, before the argument's text
	gen    string // its generation
	genArg any    // gen, boxed once
}

// maxShards bounds Shards: a ForgetAll deletes one generation a shard.
const maxShards = 1024

// memoKeys returns the keys of the memo name of n shards (1 to maxShards).
func (m *Manager) memoKeys(name string, n int) memoKeys {
	k := memoKeys{shards: make([]memoShard, n), gens: make([]string, n)}
	if n == 1 {
		k.base = m.prefix + "{m:" + escape(name) + "}"
	} else {
		k.base = m.prefix + "{m:" + escape(name) + "%s" + strconv.Itoa(n) + ":"
	}
	for i := range n {
		tag := k.base
		if n > 1 {
			tag += strconv.Itoa(i) + "}"
		}
		k.shards[i] = memoShard{entry: tag + memoEntryInfix, gen: tag + genSuffix, genArg: tag + genSuffix}
		k.gens[i] = k.shards[i].gen
	}
	return k
}

// entryPrefix is the start of every entry key of the memo's first shard
// (its only one, unless it is sharded), before the argument's text.
func (k *memoKeys) entryPrefix() string { return k.shards[0].entry }

// entryRef returns the ref of the memo entry whose key is key, made by
// argKey or userKey from entryPrefix: the key itself when the memo has one
// shard, else the same argument's key in the shard that holds it.
func (k *memoKeys) entryRef(key string) entryRef {
	sh := &k.shards[0]
	if len(k.shards) > 1 {
		arg := key[len(sh.entry):]
		if i := shardOf(arg, len(k.shards)); i > 0 {
			sh = &k.shards[i]
			key = sh.entry + arg
		}
	}
	return entryRef{kind: refMemo, key: key, gen: sh.gen, genArg: sh.genArg, arg: len(sh.entry)}
}

// shardOf returns the shard, of n, that holds the entry of the argument
// whose key text is arg: its 32-bit FNV-1a hash modulo n. It is part of the
// key layout: every process must choose as every other does.
func shardOf(arg string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(arg); i++ {
		h ^= uint32(arg[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

// tagKey returns the key of the tag's generation.
func (m *Manager) tagKey(tag string) string {
	return m.prefix + "{t:" + escape(tag) + "}" + genSuffix
}

// lockKey returns the key of the lock name; its fence counter's key is
// fenceKey(lockKey(name)), in the same hash slot.
func (m *Manager) lockKey(name string) string {
	return m.prefix + "{lock:" + escape(name) + "}"
}

// fenceKey returns the fence counter's key of the lock whose key is lock.
func fenceKey(lock string) string { return lock + fenceSuffix }

// warmPeriodKey returns the key that claims period n of a WarmEvery of
// interval every. Claims share the hash tag {warm}; each is used alone.
func (m *Manager) warmPeriodKey(every time.Duration, n int64) string {
	return m.prefix + "{warm}:period:" + strconv.FormatInt(every.Milliseconds(), 10) + ":" + strconv.FormatInt(n, 10)
}

// localChannel returns the pub/sub channel of the local tier's drops.
func (m *Manager) localChannel() string {
	return m.prefix + "{local}:invalidate"
}

// localOwnChannel returns the channel of the strict local tier's Manager id.
func (m *Manager) localOwnChannel(id string) string {
	return m.prefix + "{local}:m:" + id
}

// localRegistry returns the key of the strict local tier's registry.
func (m *Manager) localRegistry() string {
	return m.prefix + "{local}:leases"
}
