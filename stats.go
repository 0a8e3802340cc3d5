package cache

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// EventKind names something a Manager counts (see Counters) and tells its
// Observer.
type EventKind uint8

// The event kinds. Each of the first ones is a field of Counters.
const (
	EventHit              EventKind = iota // a read answered from Redis with a fresh value
	EventStaleHit                          // a read answered with a stale value while it is refreshed
	EventLocalHit                          // a read answered by the local tier
	EventMiss                              // a read that found nothing usable
	EventNegativeHit                       // a read answered with a remembered ErrNotFound
	EventLoad                              // a loader call (Event.Duration and Event.Err say how it went)
	EventLoadError                         // a loader call that failed or panicked (ErrNotFound is not a failure)
	EventSharedWait                        // a caller that waited for a load another caller of this process started
	EventLeaseWait                         // a load that waited for another process's lease instead of loading
	EventVoidedStore                       // a loaded value not stored because an invalidation voided its lease
	EventSet                               // values written
	EventDelete                            // entries deleted
	EventDecodeError                       // a stored value that did not decode (a miss too)
	EventRedisError                        // a Redis call that failed
	EventDegraded                          // a loaded read answered by the loader alone, Redis failing
	EventRefreshStarted                    // a background refresh that took the lease and ran the loader
	EventRefreshSucceeded                  // a background refresh that stored a new value
	EventRefreshFailed                     // a background refresh that failed (the stale value stays)
	EventRefreshDropped                    // a refresh not queued because the queue was full
	EventEarlyRefresh                      // a refresh scheduled early by EarlyRefresh
	EventLockObtained                      // a lock granted (counted under "locks")
	EventLockWait                          // an attempt to take a lock that found it held
	EventLockLost                          // a lock found expired or taken over by its holder
	numCounted

	// EventInvalidate is told once per kind of target an Invalidate call
	// named: Event.Name is the kind ("key", "tag", ...), Event.N the count.
	EventInvalidate = numCounted
	// EventBreakerState is told when the circuit breaker changes state:
	// Event.Name is the new state ("open", "half-open", "closed").
	EventBreakerState = numCounted + 1
)

var eventNames = [...]string{
	"hit", "stale_hit", "local_hit", "miss", "negative_hit", "load", "load_error", "shared_wait",
	"lease_wait", "voided_store", "set", "delete", "decode_error", "redis_error", "degraded",
	"refresh_started", "refresh_succeeded", "refresh_failed", "refresh_dropped", "early_refresh",
	"lock_obtained", "lock_wait", "lock_lost", "invalidate", "breaker_state",
}

// EventKinds returns every EventKind, for an Observer that registers a
// metric per kind.
func EventKinds() []EventKind {
	kinds := make([]EventKind, len(eventNames))
	for i := range kinds {
		kinds[i] = EventKind(i)
	}
	return kinds
}

// String returns the kind's name in snake case, as metrics name things.
func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return "unknown"
}

// An Event is what a Manager tells its Observer.
type Event struct {
	Kind EventKind
	// Name is the counters' name ("keys", "hash:NAME", "memo:NAME"), or
	// what the kind says for EventInvalidate and EventBreakerState.
	Name string
	N    uint64 // how many (1 but for batch writes, deletes and invalidations)
	// Duration is how long the loader took, for EventLoad; how long the
	// Invalidate call took, for EventInvalidate; how long obtaining the
	// lock took (waits included), for EventLockObtained.
	Duration time.Duration
	Err      error // the loader's error, for EventLoad
}

// An Observer is told of every event a Manager counts, to feed metrics
// (Prometheus, OpenTelemetry, expvar) without the library depending on any
// of them. Observe is called on the caller's goroutine, on the hot path: it
// must be fast, safe for concurrent use, and must not block or call the
// Manager.
type Observer interface {
	Observe(Event)
}

// A ContextObserver is an Observer that is also told the context of the
// call an event belongs to, so that what it records nests under the
// caller's trace (a span for a load, say) and its metrics can carry
// exemplars. ObserveContext is called instead of Observe for EventLoad
// (with the load's context: the first caller's values, not its deadline),
// EventInvalidate, EventLockObtained and EventLockWait; Observe for the
// others. The rules of Observe hold for it too.
type ContextObserver interface {
	Observer
	ObserveContext(ctx context.Context, e Event)
}

// observe tells obs of e, with ctx when obs takes one.
func observe(obs Observer, ctx context.Context, e Event) {
	if co, ok := obs.(ContextObserver); ok {
		co.ObserveContext(ctx, e)
	} else if obs != nil {
		obs.Observe(e)
	}
}

// ObserverFunc adapts a function to an Observer.
type ObserverFunc func(Event)

// Observe calls f(e).
func (f ObserverFunc) Observe(e Event) { f(e) }

// Counters are the counts of one name (or, in Stats.Total, of all names)
// since the Manager was built. Each field counts the event of the same
// name (see EventKind).
type Counters struct {
	Hits               uint64 // EventHit
	StaleHits          uint64 // EventStaleHit
	LocalHits          uint64 // EventLocalHit
	Misses             uint64 // EventMiss
	NegativeHits       uint64 // EventNegativeHit
	Loads              uint64 // EventLoad
	LoadErrors         uint64 // EventLoadError
	SharedWaits        uint64 // EventSharedWait
	LeaseWaits         uint64 // EventLeaseWait
	VoidedStores       uint64 // EventVoidedStore
	Sets               uint64 // EventSet
	Deletes            uint64 // EventDelete
	DecodeErrors       uint64 // EventDecodeError
	RedisErrors        uint64 // EventRedisError
	Degraded           uint64 // EventDegraded
	RefreshesStarted   uint64 // EventRefreshStarted
	RefreshesSucceeded uint64 // EventRefreshSucceeded
	RefreshesFailed    uint64 // EventRefreshFailed
	RefreshesDropped   uint64 // EventRefreshDropped
	EarlyRefreshes     uint64 // EventEarlyRefresh
	LocksObtained      uint64 // EventLockObtained
	LockWaits          uint64 // EventLockWait
	LocksLost          uint64 // EventLockLost
}

// fields returns pointers to c's fields, in EventKind order.
func (c *Counters) fields() [numCounted]*uint64 {
	return [numCounted]*uint64{
		&c.Hits, &c.StaleHits, &c.LocalHits, &c.Misses, &c.NegativeHits, &c.Loads, &c.LoadErrors,
		&c.SharedWaits, &c.LeaseWaits, &c.VoidedStores, &c.Sets, &c.Deletes, &c.DecodeErrors,
		&c.RedisErrors, &c.Degraded, &c.RefreshesStarted, &c.RefreshesSucceeded, &c.RefreshesFailed,
		&c.RefreshesDropped, &c.EarlyRefreshes, &c.LocksObtained, &c.LockWaits, &c.LocksLost,
	}
}

// Stats is a snapshot of a Manager's counters.
type Stats struct {
	Total Counters
	// ByName has a Counters per name: "keys" for plain keys, "hash:NAME"
	// for each Hash, "memo:NAME" for each Memo, "locks" for every lock (one
	// entry, as lock names are often one per order or user).
	ByName map[string]Counters
	// Invalidations counts Invalidate's work and the events emitted.
	Invalidations InvalidationStats
	// Local counts the in-process tier's work; zero without one.
	Local LocalStats
	// Breaker is the circuit breaker's state: "closed", "open", "half-open"
	// or "off". On a cluster or a ring it is the least healthy master's or
	// shard's, of those a call went to in the last 10s: a master that
	// failed over, or a shard the Ring dropped, is left out then.
	Breaker string
	// Breakers has the state of each master's breaker on a cluster, or
	// each shard's on a ring, by address ("cluster" for the calls made
	// before the client knew the masters, or on a ring without a key), of
	// those a call went to in the last 10s; nil otherwise.
	Breakers map[string]string
}

// Names returns the names in s, sorted.
func (s Stats) Names() []string {
	names := make([]string, 0, len(s.ByName))
	for n := range s.ByName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Stats returns a snapshot of the Manager's counters.
func (m *Manager) Stats() Stats {
	s := m.stats.snapshot()
	s.Invalidations = m.inv.snapshot(&m.pending)
	s.Breaker = m.BreakerState()
	s.Breakers = m.nodeBreakerStates()
	s.Local = m.local.snapshot()
	return s
}

// counters is the live form of Counters, for one name.
type counters struct {
	name string
	obs  Observer // nil for none
	n    [numCounted]atomic.Uint64
}

// add counts n events of kind k and tells the Observer.
func (c *counters) add(k EventKind, n uint64) {
	c.n[k].Add(n)
	if c.obs != nil {
		c.obs.Observe(Event{Kind: k, Name: c.name, N: n})
	}
}

// loading counts a loader call as it starts, so the count shows loads in
// progress; loaded tells the Observer how it went.
func (c *counters) loading() { c.n[EventLoad].Add(1) }

// loaded tells the Observer of a loader call under ctx that took d and
// returned err.
func (c *counters) loaded(ctx context.Context, d time.Duration, err error) {
	observe(c.obs, ctx, Event{Kind: EventLoad, Name: c.name, N: 1, Duration: d, Err: err})
}

// addCtx counts an event of kind k, of a call under ctx that took d, and
// tells the Observer.
func (c *counters) addCtx(ctx context.Context, k EventKind, d time.Duration) {
	c.n[k].Add(1)
	observe(c.obs, ctx, Event{Kind: k, Name: c.name, N: 1, Duration: d})
}

func (c *counters) snapshot() Counters {
	var out Counters
	for k, f := range out.fields() {
		*f = c.n[k].Load()
	}
	return out
}

func (t *Counters) add(c Counters) {
	tf, cf := t.fields(), c.fields()
	for i := range tf {
		*tf[i] += *cf[i]
	}
}

// registry holds the counters of every name.
type registry struct {
	obs    Observer   // given to every counters
	mu     sync.Mutex // protects byName
	byName map[string]*counters
}

// get returns the counters of name, made on first use. Callers keep the
// pointer, so the hot paths never look it up.
func (r *registry) get(name string) *counters {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byName == nil {
		r.byName = make(map[string]*counters)
	}
	c, ok := r.byName[name]
	if !ok {
		c = &counters{name: name, obs: r.obs}
		r.byName[name] = c
	}
	return c
}

func (r *registry) snapshot() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Stats{ByName: make(map[string]Counters, len(r.byName))}
	for name, c := range r.byName {
		snap := c.snapshot()
		s.ByName[name] = snap
		s.Total.add(snap)
	}
	return s
}
