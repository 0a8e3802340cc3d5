package cache

import "strings"

// The cache's keys. Each entry's key carries a Redis Cluster hash tag, the
// part in braces, and the entry's metadata (its lease, its container's
// generation) carries the same tag, so that the scripts that read and write
// them together touch one hash slot:
//
//	prefix:{k:key}            a plain key's value
//	prefix:{k:key}:l          its load lease
//	prefix:{h:name}           a hash
//	prefix:{h:name}:l:field   a field's load lease
//	prefix:{h:name}:g         the hash's generation
//	prefix:{h:name}:v         its field version, moved by field invalidations
//	prefix:{m:name}:e:arg     a memoized result
//	prefix:{m:name}:l:arg     its load lease
//	prefix:{m:name}:g         the memo's generation
//	prefix:{t:tag}            a tag: a sorted set of the entries carrying it
//	prefix:{lock:name}        a distributed lock, holding its owner's token
//	prefix:{lock:name}:fence  its fencing counter, which never expires
//	prefix:{warm}:period:I:N  the claim of warming period N of interval I ms
//
// Names, keys and fields have '%' and '}' escaped, so the first '}' is always
// the tag's end and two different names never give one key.

// escape escapes '%' and '}' in s.
func escape(s string) string {
	if !strings.ContainsAny(s, "%}") {
		return s
	}
	return escaper.Replace(s)
}

var escaper = strings.NewReplacer("%", "%25", "}", "%7D")

// entryRef locates one entry in Redis.
type entryRef struct {
	key   string // the string key, or the hash holding the field
	field string // the hash field; "" for a string entry
	lease string // the load lease, in key's slot
	gen   string // the container's generation, in key's slot; "" for none
}

// entryKey returns the Redis key of a plain key's value.
func (m *Manager) entryKey(key string) string {
	return m.prefix + "{k:" + escape(key) + "}"
}

// keyRef returns where a plain key's entry lives.
func (m *Manager) keyRef(key string) entryRef {
	return withLease(m.entryKey(key))
}

// withLease returns the ref of the string entry k.
func withLease(k string) entryRef {
	return entryRef{key: k, lease: k + ":l"}
}

func (m *Manager) hashBase(name string) string {
	return m.prefix + "{h:" + escape(name) + "}"
}

func (m *Manager) memoBase(name string) string {
	return m.prefix + "{m:" + escape(name) + "}"
}
