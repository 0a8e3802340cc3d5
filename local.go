package cache

import (
	"context"
	"hash/maphash"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

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
// copy: in its default mode the local tier trades the strict no-stale-read
// guarantee of the Redis tier for speed, within that delay. Its strict mode
// (LocalOptions.Strict, strict.go) keeps the guarantee: a Manager serves
// from its tier only under a read lease, and a write returns once every
// Manager holding one has dropped its copies or let its lease run out.
// The tier serves and keeps
// copies only while the Manager's subscription is up: it starts empty and
// unused until Redis confirms the first subscription, and a Manager whose
// subscription drops clears it (it cannot know what it missed) and leaves
// it unused until it has subscribed again.
//
// Each change to the tier moves an epoch; a read that put a value in the
// tier takes it out again when the epoch moved since the read began, so an
// invalidation racing a read never leaves the old value behind; and until
// it does, the generations below keep that value from being served.
//
// A hit is one lookup: a memo with a plain argument type keeps its copies
// under the argument (localarg.go) and GetOrLoad under the key as given,
// so that a hit builds no key. Drops name entries by their Redis keys,
// which do not find such a copy; so every copy carries the generation of
// its key's bucket and the tier's clear generation, read before the read
// that made it began, and a drop moves its keys' buckets' generations (a
// drop of all, the clear generation) before it returns: a copy whose
// generation has moved is never served. A copy expires by otter's clock
// (the Manager's, when Options.Now is set), so a hit reads no clock of its
// own.

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

	// Strict turns on the strict mode (see strict.go): once a write, a
	// store or an Invalidate returns, no Manager of the fleet in strict
	// mode serves a local copy made before it, as on the Redis tier. A
	// Manager serves from its tier only while it holds a read lease that
	// it renews through Redis; a write waits until every Manager holding
	// one has dropped its copies, or until the lease of one that does not
	// answer has run out. It holds for the writes of Managers in strict
	// mode: give every Manager of the fleet (every one with the same
	// Prefix on the same Redis) the same setting.
	//
	// default: false
	Strict bool

	// Lease is, in strict mode, how long a Manager may serve from its tier
	// without hearing from Redis: the longest a write waits for a Manager
	// that does not acknowledge its drop (paused, partitioned, crashed).
	// It is renewed every Lease/3. Setting it without Strict is an
	// ErrInvalidOption.
	//
	// default: 1s; at least 30ms
	Lease time.Duration
}

// localTier is the in-process tier and its pub/sub invalidation.
type localTier struct {
	c     *otter.Cache[uint64, *localEntry] // by the hash of a slot
	ttl   time.Duration
	epoch atomic.Uint64 // moved by every drop and clear
	// gens are moved by the drops of the local names in their bucket: a
	// copy is served only while its bucket's generation is the one read
	// before the read that made it began. That is what drops a copy kept
	// under a memo argument or a plain key, whose slot a drop (which names
	// entries by their keys) cannot find.
	gens [localBuckets]atomic.Uint64
	// cleared is moved by every drop of all copies, and checked as gens
	// are: a copy stored by a read that began before a clear is never
	// served, even in the moment before that read takes it out again.
	cleared atomic.Uint64
	seed    maphash.Seed
	spaces  atomic.Uint64 // the last slot space handed to a memo
	ready   atomic.Bool   // the subscription is up: the tier may serve and keep copies
	channel string
	id      string      // this Manager's, to skip its own messages
	strict  *strictTier // nil but in strict mode

	// hold, when set (by tests), blocks the receiving goroutine before
	// each message until it is closed: a subscription that hangs.
	hold atomic.Pointer[chan struct{}]

	subMu  sync.Mutex         // protects endSub
	endSub context.CancelFunc // ends the subscription in use, for subscribe to make anew; nil before the first

	evictions, sent, received, resubscriptions, clears atomic.Uint64
}

// localBuckets is the number of generations local names share. A drop
// voids the copies of the names in its bucket: more buckets, fewer copies
// voided for another's sake.
const localBuckets = 1 << 12

// localSlot is where a copy is kept in the tier: under the entry's local
// name (localKey), under a plain key as the caller gave it, or under a
// memo's argument, by its hash. The tier's cache holds a copy under the
// slot's hash (see key) and the copy says what slot it is: two slots with
// one hash take turns, and neither is served the other's copy.
type localSlot struct {
	name  string // the local name (space 0) or the plain key (spaceKeys)
	space uint64 // 0, spaceKeys, or a memo's own space
	arg   uint64 // a memo argument's hash
}

// spaceKeys is the slot space of plain keys; memos' spaces follow it.
const spaceKeys = 1

// localRef is where an entry's copy is kept, and how it is checked.
type localRef struct {
	slot   localSlot
	bucket uint32     // the bucket of the entry's local name
	layout *argLayout // for a copy kept under a memo argument: the argument's type
}

// localEntry is a copy in the tier. It does not change once made.
type localEntry struct {
	val     any    // the value, or an *argCopy under a memo argument
	name    string // its slot's name and space
	space   uint64
	ttl     time.Duration // how long the tier keeps it
	bucket  uint32
	gen     uint64 // gens[bucket] before the read that made it began
	cleared uint64 // and cleared
}

// localRead is the state of the tier when a read began.
type localRead struct{ epoch, gen, cleared uint64 }

// newLocalTier returns the tier; now is the Manager's clock, nil for the
// system's; strict is the strict mode's part, nil in the default mode.
func newLocalTier(o LocalOptions, channel, id string, now func() time.Time, strict *strictTier) *localTier {
	t := &localTier{ttl: o.TTL, channel: channel, id: id, seed: maphash.MakeSeed(), strict: strict}
	var clock otter.Clock
	switch {
	case strict != nil:
		clock = strictClock{strict, now}
	case now != nil:
		clock = localClock{now}
	}
	t.c = otter.Must(&otter.Options[uint64, *localEntry]{
		MaximumSize: o.MaxEntries,
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[uint64, *localEntry]) time.Duration {
			return e.Value.ttl
		}),
		Clock: clock,
		OnDeletion: func(e otter.DeletionEvent[uint64, *localEntry]) {
			if e.Cause == otter.CauseOverflow {
				t.evictions.Add(1)
			}
		},
	})
	return t
}

// localClock is the Manager's clock, when it is not the system's, as the
// tier's cache reads it: copies expire by the time of the Manager.
type localClock struct{ now func() time.Time }

func (c localClock) NowNano() int64 { return c.now().UnixNano() }

// Tick gives no ticks: expired copies are removed as they are met.
func (c localClock) Tick(time.Duration) <-chan time.Time { return nil }

// key returns the hash under which the tier's cache keeps slot's copy.
func (t *localTier) key(slot *localSlot) uint64 {
	h := slot.arg ^ slot.space*0x9e3779b97f4a7c15
	if slot.name != "" {
		h ^= maphash.String(t.seed, slot.name)
	}
	return h
}

// bucket returns the bucket of a local name.
func (t *localTier) bucket(name string) uint32 {
	return uint32(maphash.String(t.seed, name) % localBuckets)
}

// nameRef returns the ref of a copy kept under the local name of ref.
func (t *localTier) nameRef(ref entryRef) localRef {
	name := localKey(ref)
	return localRef{slot: localSlot{name: name}, bucket: t.bucket(name)}
}

// begin returns the state of the tier for r, taken before a read of r's
// entry begins.
func (t *localTier) begin(r *localRef) localRead {
	return localRead{t.epoch.Load(), t.gens[r.bucket].Load(), t.cleared.Load()}
}

// find returns the copy in slot, if the tier is in use and no drop of its
// entry came after the read that made it began.
func (t *localTier) find(slot *localSlot) (*localEntry, bool) {
	if !t.ready.Load() {
		return nil, false
	}
	k := t.key(slot)
	e, ok := t.c.GetIfPresent(k) // in strict mode, reads the clock, which checks the lease (strictClock)
	if !ok || e.space != slot.space || e.name != slot.name || (t.strict != nil && t.strict.lapsed()) {
		return nil, false
	}
	if t.gens[e.bucket].Load() != e.gen || t.cleared.Load() != e.cleared {
		t.c.Invalidate(k) // dropped: at worst this removes a newer copy, a miss
		return nil, false
	}
	return e, true
}

// localGet returns r's copy, if there is a fresh one of type T; for a copy
// kept under a memo argument, if it was kept for arg.
func localGet[A, T any](m *Manager, st *counters, r *localRef, arg *A) (T, bool) {
	var v T
	e, ok := m.local.find(&r.slot)
	if !ok {
		return v, false
	}
	if r.layout != nil {
		c, ok := e.val.(*argCopy[A, T])
		if !ok || !r.layout.equal(unsafe.Pointer(&c.arg), unsafe.Pointer(arg)) {
			return v, false
		}
		v = c.val
	} else if v, ok = e.val.(T); !ok {
		return v, false
	}
	st.add(EventLocalHit, 1)
	return v, true
}

// localKeep returns what r keeps for v, read or loaded for arg.
func localKeep[A, T any](r *localRef, arg A, v T) any {
	if r.layout != nil {
		return &argCopy[A, T]{arg: arg, val: v}
	}
	return v
}

// localPut keeps v as r's copy until freshUntil (Unix ms, 0 for none) or
// the tier's TTL, whichever is first, unless the tier changed since r0
// (taken before the read or load of v began).
func (m *Manager) localPut(r *localRef, v any, freshUntil int64, r0 localRead) {
	ttl := m.local.ttl
	if freshUntil > 0 {
		ttl = min(ttl, time.Duration(freshUntil-m.now().UnixMilli())*time.Millisecond)
	}
	if ttl <= 0 || m.local.epoch.Load() != r0.epoch || !m.local.ready.Load() {
		return
	}
	k := m.local.key(&r.slot)
	m.local.c.Set(k, &localEntry{val: v, name: r.slot.name, space: r.slot.space, ttl: ttl, bucket: r.bucket, gen: r0.gen, cleared: r0.cleared})
	if m.local.epoch.Load() != r0.epoch {
		m.local.c.Invalidate(k) // an invalidation ran meanwhile
	}
}

// drop removes the local copies of keys (all of them when all) in this
// process.
func (t *localTier) drop(all bool, keys []string) {
	t.epoch.Add(1)
	if all {
		t.clears.Add(1)
		t.cleared.Add(1)
		t.c.InvalidateAll()
		return
	}
	for _, k := range keys {
		t.gens[t.bucket(k)].Add(1)
		t.c.Invalidate(t.key(&localSlot{name: k}))
	}
}

// dropEverywhere drops the local copies of keys here and, through pub/sub,
// in every other Manager. A failed publish is logged: the others' copies
// then end with the tier's TTL. In strict mode it returns once the others
// have dropped theirs (see strict.go), and a failed publish is an error.
func (m *Manager) dropEverywhere(ctx context.Context, all bool, keys []string) error {
	if m.local == nil || (!all && len(keys) == 0) {
		return nil
	}
	m.local.drop(all, keys)
	if m.local.strict != nil {
		return m.publishStrict(ctx, all, keys)
	}
	cmd := redis.NewIntCmd(ctx, "publish", m.local.channel, encodeDrop(m.local.id, all, keys))
	c, addr := m.pubClient()
	if err := m.doOn(context.WithoutCancel(ctx), c, addr, m.kv, cmd); err != nil {
		m.log.Warn("cache: publishing a local-tier invalidation failed; other instances keep their copies until the local TTL", "err", err)
		return nil
	}
	m.local.sent.Add(1)
	return nil
}

// pubClient returns the client to PUBLISH the local tier's messages on,
// and its node's address (as for doOn): on a Ring, which sends PUBLISH (it
// names no key) to any shard, the client of the channel's shard, where the
// subscriptions are (Ring.Subscribe).
func (m *Manager) pubClient() (redis.UniversalClient, string) {
	if r, ok := m.rdb.(*redis.Ring); ok {
		if sc, err := r.GetShardClientForKey(m.local.channel); err == nil {
			return sc, sc.Options().Addr
		}
	}
	return m.rdb, ""
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

// subscribe receives the fleet's drop messages until Close, on a
// subscription it makes anew when renewSub ends it (see failover.go).
func (m *Manager) subscribe() {
	t := m.local
	subscribed := false
	for m.life.Err() == nil {
		ctx, end := context.WithCancel(m.life)
		t.subMu.Lock()
		t.endSub = end
		t.subMu.Unlock()
		m.receiveDrops(ctx, &subscribed)
		end()
		// Messages may be lost until the new subscription is up.
		t.ready.Store(false)
	}
}

// renewSub ends the subscription in use; subscribe makes it anew.
func (t *localTier) renewSub() {
	t.subMu.Lock()
	defer t.subMu.Unlock()
	if t.endSub != nil {
		t.endSub()
	}
}

// receiveDrops receives the fleet's drop messages on a subscription of its
// own until ctx ends. subscribed says whether a subscription was up before.
func (m *Manager) receiveDrops(ctx context.Context, subscribed *bool) {
	t := m.local
	backoff := 20 * time.Millisecond
	ps := m.localPubSub(ctx)
	for ps == nil {
		if sleep(ctx, backoff) != nil {
			return
		}
		backoff = min(2*backoff, 2*time.Second)
		ps = m.localPubSub(ctx)
	}
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()
	defer ps.Close()
	backoff = 20 * time.Millisecond
	for {
		msg, err := ps.Receive(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// Messages may be lost while the subscription is down.
			t.ready.Store(false)
			t.drop(true, nil)
			m.flights.detachAll()
			if sleep(ctx, backoff) != nil {
				return
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 20 * time.Millisecond
		if h := t.hold.Load(); h != nil {
			select {
			case <-*h:
			case <-ctx.Done():
				return
			}
		}
		switch x := msg.(type) {
		case *redis.Subscription:
			if x.Kind == "subscribe" && x.Channel == t.channel { // with the Manager's own, in strict mode
				if *subscribed {
					t.resubscriptions.Add(1)
				}
				// Nothing kept before now was covered by the subscription.
				t.drop(true, nil)
				m.flights.detachAll()
				t.ready.Store(true)
				*subscribed = true
				if t.strict != nil {
					select {
					case t.strict.kick <- struct{}{}: // a lease at once
					default:
					}
				}
			}
		case *redis.Message:
			if t.strict != nil && x.Channel == t.strict.own {
				t.strict.onOwn(x.Payload)
				continue
			}
			m.applyDrop(x.Payload)
		}
	}
}

// applyDrop applies a drop message received from the fleet: not one of
// this Manager's own, nor a malformed one. In strict mode it then
// acknowledges a drop that asks for it.
func (m *Manager) applyDrop(payload string) {
	t := m.local
	sender, all, keys, ok := decodeDrop(payload)
	if !ok {
		return
	}
	id, seq := splitSender(sender)
	if id == t.id {
		return
	}
	t.drop(all, keys)
	m.flights.detachAll()
	t.received.Add(1) // once applied: a caller that sees it sees the drop
	switch {
	case t.strict == nil:
	case seq != 0:
		t.strict.ack(id, seq)
	case !t.strict.mixed.Swap(true):
		m.log.Warn(errNotStrict.Error(), "from", id)
	}
}

// localPubSub subscribes to the local tier's channel (and in strict mode,
// to the Manager's own), until ctx ends. On a Ring it is the channel's
// shard's subscription, as Ring.Subscribe makes, or nil while the Ring has
// no shard up (where Ring.Subscribe panics). The channels share a hash
// tag: on a cluster, one node has them.
func (m *Manager) localPubSub(ctx context.Context) *redis.PubSub {
	channels := []string{m.local.channel}
	if m.local.strict != nil {
		channels = append(channels, m.local.strict.own)
	}
	if r, ok := m.rdb.(*redis.Ring); ok {
		c, err := r.GetShardClientForKey(m.local.channel)
		if err != nil {
			return nil
		}
		return c.Subscribe(ctx, channels...)
	}
	return m.rdb.Subscribe(ctx, channels...)
}

// LocalStats count the local tier's work.
type LocalStats struct {
	// Subscribed says the tier is in use: the Manager's subscription to
	// the fleet's invalidations is up. Until then, and while it is down,
	// reads go to Redis.
	Subscribed      bool
	Entries         int    // entries held now (an estimate; a copy a drop voided counts until it expires or is next looked up)
	Evictions       uint64 // entries evicted for room
	Clears          uint64 // times the whole tier was dropped
	Sent            uint64 // invalidation messages published
	Received        uint64 // invalidation messages received from other Managers and applied
	Resubscriptions uint64 // subscriptions restored after a drop
	// Leased says, in strict mode, that the Manager holds its read lease:
	// it may serve from its tier.
	Leased bool
	// WaitedOut counts, in strict mode, the drops of this Manager that
	// returned at the end of the leases, a Manager that held one having
	// not acknowledged them (or the fleet's registry being new).
	WaitedOut uint64
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
		Leased:          t.strict != nil && t.strict.live(),
		WaitedOut:       t.strict.waitedOutN(),
	}
}
