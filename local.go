package cache

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
)

// The local tier.
//
// With Options.Local set, loaded reads (GetOrLoad, Memo.Get,
// Hash.GetOrLoad) keep the values they read or load in process, decoded,
// in an otter cache: a hit there costs no round trip and no decode. An entry
// is kept for at most LocalOptions.TTL and never past its freshness in
// Redis.
//
// Every write and invalidation drops the local copies it makes stale: in
// this process at once, in every other Manager of the fleet through a Redis
// pub/sub message sent once the Redis work is done. Until that message
// arrives (milliseconds), another instance may still answer from its local
// copy: the local tier trades the strict no-stale-read guarantee of the
// Redis tier for speed, within that delay. The tier serves and keeps
// copies only while the Manager's subscription is up: it starts empty and
// unused until Redis confirms the first subscription, and a Manager whose
// subscription drops clears it (it cannot know what it missed) and leaves
// it unused until it has subscribed again.
//
// Each change to the tier moves an epoch; a read that put a value in the
// tier takes it out again when the epoch moved since the read began, so an
// invalidation racing a read never leaves the old value behind.

// LocalOptions turn on the in-process tier in front of Redis.
type LocalOptions struct {
	// MaxEntries bounds the entries kept in process.
	//
	// default: 10000
	MaxEntries int

	// TTL bounds how long an entry is kept in process. It is also the
	// longest a lost invalidation message can leave a stale copy here.
	//
	// default: 10s
	TTL time.Duration
}

// localTier is the in-process tier and its pub/sub invalidation.
type localTier struct {
	c       *otter.Cache[string, localEntry]
	ttl     time.Duration
	epoch   atomic.Uint64 // moved by every drop and clear
	ready   atomic.Bool   // the subscription is up: the tier may serve and keep copies
	channel string
	id      string // this Manager's, to skip its own messages

	evictions, sent, received, resubscriptions, clears atomic.Uint64
}

type localEntry struct {
	val   any
	until int64 // Unix milliseconds, Manager clock
}

func newLocalTier(o LocalOptions, channel string) *localTier {
	t := &localTier{ttl: o.TTL, channel: channel, id: newToken()}
	t.c = otter.Must(&otter.Options[string, localEntry]{
		MaximumSize:      o.MaxEntries,
		ExpiryCalculator: otter.ExpiryWriting[string, localEntry](o.TTL),
		OnDeletion: func(e otter.DeletionEvent[string, localEntry]) {
			if e.Cause == otter.CauseOverflow {
				t.evictions.Add(1)
			}
		},
	})
	return t
}

// localGet returns the local copy of key, if there is a fresh one of type T.
func localGet[T any](m *Manager, st *counters, key string) (T, bool) {
	var zero T
	if !m.local.ready.Load() {
		return zero, false
	}
	e, ok := m.local.c.GetIfPresent(key)
	if !ok {
		return zero, false
	}
	if m.now().UnixMilli() >= e.until {
		m.local.c.Invalidate(key)
		return zero, false
	}
	v, ok := e.val.(T)
	if ok {
		st.add(EventLocalHit, 1)
	}
	return v, ok
}

// localPut keeps v as the local copy of key until freshUntil (Unix ms, 0 for
// none) or the tier's TTL, whichever is first, unless the tier changed
// since epoch e0 (taken before the read or load of v began).
func (m *Manager) localPut(key string, v any, freshUntil int64, e0 uint64) {
	now := m.now().UnixMilli()
	until := now + m.local.ttl.Milliseconds()
	if freshUntil > 0 && freshUntil < until {
		until = freshUntil
	}
	if until <= now || m.local.epoch.Load() != e0 || !m.local.ready.Load() {
		return
	}
	m.local.c.Set(key, localEntry{val: v, until: until})
	if m.local.epoch.Load() != e0 {
		m.local.c.Invalidate(key) // an invalidation ran meanwhile
	}
}

// drop removes the local copies of keys (all of them when all) in this
// process.
func (t *localTier) drop(all bool, keys []string) {
	t.epoch.Add(1)
	if all {
		t.clears.Add(1)
		t.c.InvalidateAll()
		return
	}
	for _, k := range keys {
		t.c.Invalidate(k)
	}
}

// dropEverywhere drops the local copies of keys here and, through pub/sub,
// in every other Manager. A failed publish is logged: the others' copies
// then end with the tier's TTL.
func (m *Manager) dropEverywhere(ctx context.Context, all bool, keys []string) {
	if m.local == nil || (!all && len(keys) == 0) {
		return
	}
	m.local.drop(all, keys)
	cmd := redis.NewIntCmd(ctx, "publish", m.local.channel, encodeDrop(m.local.id, all, keys))
	if err := m.do(context.WithoutCancel(ctx), m.kv, cmd); err != nil {
		m.log.Warn("cache: publishing a local-tier invalidation failed; other instances keep their copies until the local TTL", "err", err)
		return
	}
	m.local.sent.Add(1)
}

// A drop message is the sender's id, a newline, then "*" for all, or each
// key as its length, a colon and the key.
func encodeDrop(id string, all bool, keys []string) string {
	var b strings.Builder
	b.WriteString(id)
	b.WriteByte('\n')
	if all {
		b.WriteByte('*')
		return b.String()
	}
	for _, k := range keys {
		b.WriteString(strconv.Itoa(len(k)))
		b.WriteByte(':')
		b.WriteString(k)
	}
	return b.String()
}

// decodeDrop is the inverse of encodeDrop; ok is false for a malformed
// message.
func decodeDrop(msg string) (id string, all bool, keys []string, ok bool) {
	id, rest, found := strings.Cut(msg, "\n")
	if !found {
		return "", false, nil, false
	}
	if rest == "*" {
		return id, true, nil, true
	}
	for rest != "" {
		i := strings.IndexByte(rest, ':')
		if i <= 0 {
			return "", false, nil, false
		}
		n, err := strconv.Atoi(rest[:i])
		if err != nil || n < 0 || n > len(rest)-i-1 {
			return "", false, nil, false
		}
		keys = append(keys, rest[i+1:i+1+n])
		rest = rest[i+1+n:]
	}
	return id, false, keys, true
}

// subscribe receives the fleet's drop messages until Close.
func (m *Manager) subscribe() {
	t := m.local
	ps := m.rdb.Subscribe(m.life, t.channel)
	stop := context.AfterFunc(m.life, func() { _ = ps.Close() })
	defer stop()
	defer ps.Close()
	subscribed := false
	backoff := 20 * time.Millisecond
	for {
		msg, err := ps.Receive(m.life)
		if m.life.Err() != nil {
			return
		}
		if err != nil {
			// Messages may be lost while the subscription is down.
			t.ready.Store(false)
			t.drop(true, nil)
			m.flights.detachAll()
			if sleep(m.life, backoff) != nil {
				return
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 20 * time.Millisecond
		switch x := msg.(type) {
		case *redis.Subscription:
			if x.Kind == "subscribe" {
				if subscribed {
					t.resubscriptions.Add(1)
				}
				// Nothing kept before now was covered by the subscription.
				t.drop(true, nil)
				m.flights.detachAll()
				t.ready.Store(true)
				subscribed = true
			}
		case *redis.Message:
			id, all, keys, ok := decodeDrop(x.Payload)
			if !ok || id == t.id {
				continue
			}
			t.received.Add(1)
			t.drop(all, keys)
			m.flights.detachAll()
		}
	}
}

// LocalStats count the local tier's work.
type LocalStats struct {
	// Subscribed says the tier is in use: the Manager's subscription to
	// the fleet's invalidations is up. Until then, and while it is down,
	// reads go to Redis.
	Subscribed      bool
	Entries         int    // entries held now (an estimate)
	Evictions       uint64 // entries evicted for room
	Clears          uint64 // times the whole tier was dropped
	Sent            uint64 // invalidation messages published
	Received        uint64 // invalidation messages received from other Managers
	Resubscriptions uint64 // subscriptions restored after a drop
}

func (t *localTier) snapshot() LocalStats {
	if t == nil {
		return LocalStats{}
	}
	return LocalStats{
		Subscribed:      t.ready.Load(),
		Entries:         t.c.EstimatedSize(),
		Evictions:       t.evictions.Load(),
		Clears:          t.clears.Load(),
		Sent:            t.sent.Load(),
		Received:        t.received.Load(),
		Resubscriptions: t.resubscriptions.Load(),
	}
}
