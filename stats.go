package cache

import (
	"sort"
	"sync"
	"sync/atomic"
)

// Counters are the counts of one name (or, in Stats.Total, of all names)
// since the Manager was built.
type Counters struct {
	Hits         uint64 // reads answered from the cache with a fresh value
	StaleHits    uint64 // reads answered with a stale value while it is refreshed
	LocalHits    uint64 // reads answered by the in-process tier
	Misses       uint64 // reads that found nothing usable
	NegativeHits uint64 // reads answered with a remembered ErrNotFound
	Loads        uint64 // loader calls
	LoadErrors   uint64 // loader calls that failed or panicked (ErrNotFound is not a failure)
	SharedWaits  uint64 // callers that waited for a load another caller of this process started
	LeaseWaits   uint64 // loads that waited for another process's lease instead of loading
	VoidedStores uint64 // loaded values not stored because an invalidation voided their lease
	Sets         uint64 // values written
	Deletes      uint64 // entries deleted
	DecodeErrors uint64 // stored values that did not decode (counted as misses too)
	RedisErrors  uint64 // Redis calls that failed
	Degraded     uint64 // loaded reads answered by the loader alone, Redis failing

	RefreshesStarted   uint64 // background refreshes that took the lease and ran the loader
	RefreshesSucceeded uint64 // ... that stored a new value
	RefreshesFailed    uint64 // ... that failed (a stale value stays)
	RefreshesDropped   uint64 // refreshes not queued because the queue was full
	EarlyRefreshes     uint64 // refreshes scheduled early by EarlyRefresh
}

// Stats is a snapshot of a Manager's counters.
type Stats struct {
	Total Counters
	// ByName has a Counters per name: "keys" for plain keys, "hash:NAME"
	// for each Hash, "memo:NAME" for each Memo.
	ByName map[string]Counters
	// Invalidations counts Invalidate's work and the events emitted.
	Invalidations InvalidationStats
	// Local counts the in-process tier's work; zero without one.
	Local LocalStats
	// Breaker is the circuit breaker's state: "closed", "open", "half-open"
	// or "off".
	Breaker string
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
	s.Invalidations = m.inv.snapshot()
	s.Breaker = m.BreakerState()
	s.Local = m.local.snapshot()
	return s
}

// counters is the live form of Counters.
type counters struct {
	hits, staleHits, localHits, misses, negativeHits, loads, loadErrors, sharedWaits, leaseWaits,
	voidedStores, sets, deletes, decodeErrors, redisErrors, degraded,
	refreshesStarted, refreshesSucceeded, refreshesFailed, refreshesDropped, earlyRefreshes atomic.Uint64
}

func (c *counters) snapshot() Counters {
	return Counters{
		Hits:         c.hits.Load(),
		StaleHits:    c.staleHits.Load(),
		LocalHits:    c.localHits.Load(),
		Misses:       c.misses.Load(),
		NegativeHits: c.negativeHits.Load(),
		Loads:        c.loads.Load(),
		LoadErrors:   c.loadErrors.Load(),
		SharedWaits:  c.sharedWaits.Load(),
		LeaseWaits:   c.leaseWaits.Load(),
		VoidedStores: c.voidedStores.Load(),
		Sets:         c.sets.Load(),
		Deletes:      c.deletes.Load(),
		DecodeErrors: c.decodeErrors.Load(),
		RedisErrors:  c.redisErrors.Load(),
		Degraded:     c.degraded.Load(),

		RefreshesStarted:   c.refreshesStarted.Load(),
		RefreshesSucceeded: c.refreshesSucceeded.Load(),
		RefreshesFailed:    c.refreshesFailed.Load(),
		RefreshesDropped:   c.refreshesDropped.Load(),
		EarlyRefreshes:     c.earlyRefreshes.Load(),
	}
}

func (t *Counters) add(c Counters) {
	t.Hits += c.Hits
	t.StaleHits += c.StaleHits
	t.LocalHits += c.LocalHits
	t.Misses += c.Misses
	t.NegativeHits += c.NegativeHits
	t.Loads += c.Loads
	t.LoadErrors += c.LoadErrors
	t.SharedWaits += c.SharedWaits
	t.LeaseWaits += c.LeaseWaits
	t.VoidedStores += c.VoidedStores
	t.Sets += c.Sets
	t.Deletes += c.Deletes
	t.DecodeErrors += c.DecodeErrors
	t.RedisErrors += c.RedisErrors
	t.Degraded += c.Degraded
	t.RefreshesStarted += c.RefreshesStarted
	t.RefreshesSucceeded += c.RefreshesSucceeded
	t.RefreshesFailed += c.RefreshesFailed
	t.RefreshesDropped += c.RefreshesDropped
	t.EarlyRefreshes += c.EarlyRefreshes
}

// registry holds the counters of every name.
type registry struct {
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
		c = new(counters)
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
