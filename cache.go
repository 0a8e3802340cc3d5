package cache

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Options configure a Manager. A nil *Options gives every default. New copies
// the Options, so the caller's struct is never changed.
type Options struct {
	// Prefix is put in front of every key the Manager writes, followed by a
	// colon, so that several applications can share one Redis. It must not
	// hold '{' or '}' (those choose Redis Cluster hash slots).
	//
	// default: "stockpot"
	Prefix string

	// DefaultTTL is the time to live of an entry whose call gives no TTL.
	// Every entry expires; NoExpiry() asks for one that does not.
	//
	// default: 1h
	DefaultTTL time.Duration

	// Jitter shortens every TTL by a random fraction of up to Jitter, so that
	// entries written together (by a warm-up, say) do not expire together.
	// It is between 0 and 1; a negative Jitter turns it off.
	//
	// default: 0.1
	Jitter float64

	// NegativeTTL is how long a loader's ErrNotFound is remembered.
	//
	// default: 1m
	NegativeTTL time.Duration

	// Codec encodes and decodes values.
	//
	// default: Msgpack
	Codec Codec

	// MaxValueSize is the largest value, in bytes as stored (after
	// compression), that the Manager writes. A larger one is refused with
	// ErrValueTooLarge.
	//
	// default: 1 MiB
	MaxValueSize int

	// CompressAbove is the encoded size in bytes above which values are
	// compressed with S2 before they are stored; a value is stored
	// compressed only when that saves at least an eighth of its size. A
	// negative value turns compression off. Values stored compressed or not
	// are read whatever this is set to.
	//
	// default: 128 (bytes)
	CompressAbove int

	// LeaseTTL is how long a load's lease lasts. The loading caller renews it
	// every LeaseTTL/3 while its loader runs; if that caller dies, others
	// take over the load within 1.5 × LeaseTTL (processes waiting for a
	// load are told when it ends, and look at its lease every LeaseTTL/2
	// in case that notice is lost).
	//
	// default: 5s
	LeaseTTL time.Duration

	// RefreshWorkers is how many background refreshes (stale-while-revalidate,
	// early refresh, FetchOnMiss(false)) run at once.
	//
	// default: 4
	RefreshWorkers int

	// RefreshQueue is how many background refreshes may wait for a worker.
	// When the queue is full, a refresh is dropped (and counted): a reader
	// never blocks on it.
	//
	// default: 1024
	RefreshQueue int

	// Local turns on an in-process tier in front of Redis for loaded reads
	// (see LocalOptions); nil leaves it off.
	//
	// default: nil
	Local *LocalOptions

	// Timeout is the time budget of each cache operation's Redis work: a
	// loaded read (GetOrLoad, Memo.Get, Hash.GetOrLoad, or a batch of them:
	// GetOrLoadMany, Memo.GetMany, Hash.GetOrLoadMany), a write or a
	// Refresh may spend that long waiting for Redis in all, other calls
	// (a plain read, each round trip of an invalidation, each attempt of a
	// lock) that long each. Time spent running the loader, or waiting for
	// another process's load, does not count: a loaded read returns within
	// Timeout plus its loader, whatever Redis does. When it runs out, loaded
	// reads fall back to the loader (counted as degraded), and other calls
	// return an error matching ErrUnavailable; the call counts as a failure
	// for the breaker, so a Redis that is slow opens it as a dead one does.
	// A caller's context deadline that comes first always wins.
	//
	// The default fits a Redis on the same network: a healthy round trip
	// takes well under a millisecond and rarely more than a few tens (a
	// fork, a large key), so 150ms leaves room for the three round trips
	// of a cold load at its worst, while a caller loses at most 150ms to a
	// Redis that does not answer, less than the loaders a cache is put in
	// front of usually take. A negative value turns the budget off (calls
	// are then bounded by the client's timeouts and the caller's deadline).
	//
	// default: 150ms
	Timeout time.Duration

	// WaitReplicas, when above zero, makes the writes whose loss in a
	// failover would bring an old value back, and lock grants, return only
	// once that many replicas of each master written to have them (Redis
	// WAIT): Invalidate and what is built on it (Delete, Hash.Delete,
	// Hash.Clear, Memo.ForgetAll), Set, SetMany, Hash.Set, Hash.SetMany,
	// the Refresh calls, and Lock, TryLock and WithLock. Replication is asynchronous: without
	// it, a master that fails over right after acknowledging an
	// invalidation may not have passed it on, and the promoted replica
	// serves the entry it removed. A write that fewer replicas acknowledge
	// within WaitReplicasTimeout returns an error matching
	// ErrNotReplicated (an invalidation is then retried in the background
	// like any failed one; a lock so granted is released again). Set it no
	// higher than the replicas each master has. It costs each such write
	// one round trip more per master, plus the replicas' acknowledgement.
	//
	// default: 0, writes return once the master has them
	WaitReplicas int

	// WaitReplicasTimeout bounds the wait for the replicas' acknowledgement
	// (WaitReplicas). It must be shorter than the client's ReadTimeout. It
	// adds to the write's time budget (Timeout).
	//
	// default: 250ms
	WaitReplicasTimeout time.Duration

	// Breaker configures the circuit breakers that stop the Manager from
	// waiting on Redis, call after call, while it is down or too slow.
	Breaker BreakerOptions

	// Observer is told of every event the Manager counts (hits, misses,
	// loads with their duration, invalidations, breaker changes...), to feed
	// metrics; see Observer.
	//
	// default: none
	Observer Observer

	// Logger receives the Manager's log lines: failures of work nobody waits
	// for, such as a lease that could not be released.
	//
	// default: none, the Manager is silent
	Logger *slog.Logger

	// Now is the clock that decides an entry's freshness. Tests set it to
	// move time; Redis expires keys by its own clock.
	//
	// default: time.Now
	Now func() time.Time
}

// Manager is a cache over one Redis (single node, cluster, sentinel or ring).
// It is safe for concurrent use. Build one per application with New and
// Close it on shutdown.
type Manager struct {
	rdb      redis.UniversalClient
	oneNode  bool                 // rdb is a single node's client, so one command may take keys of several slots
	cluster  *redis.ClusterClient // rdb, when it is a cluster's client
	breakers *breakers            // nil when turned off
	opts     Options
	prefix   string // opts.Prefix + ":"
	log      *slog.Logger
	now      func() time.Time

	// How go-redis bounds a call (see budget.go).
	ctxTimeouts bool          // the client honours context deadlines
	bound       time.Duration // the client's own bound on a call; 0: none

	slotsKnown     atomic.Bool  // go-redis has loaded the cluster's slots
	slotsReloaded  atomic.Int64 // when a failed call last asked go-redis to reload the slots (reloadSlots), Unix ns
	scriptsLoading atomic.Bool  // loadScripts is running

	life context.Context    // ends on Close; the parent of all background work
	stop context.CancelFunc // ends life

	closed  atomic.Bool
	closeMu sync.RWMutex   // held for reading to start background work, for writing by Close
	tasks   atomic.Int64   // background work the Manager started, running
	running atomic.Int64   // goroutines of the call path: workers, and forEachMaster's on a cluster
	workers chan *exchange // the calls handed to a worker that waits for one (see exchange)

	flights flightGroup
	reads   readQueue // reads waiting for the round trip in flight (readbatch.go)
	stats   registry
	kv      *counters // stats of plain keys
	locks   *counters // stats of every lock
	inv     invStats
	pending pendingInvalidations
	events  events
	refresh refresher
	local   *localTier // nil without Options.Local
	notes   *notifier  // nil where waiters poll leases (a ring)
	warm    warmState
}

// New returns a Manager over rdb. It does not wait for Redis (it loads the
// Manager's scripts in the background): a Manager built while Redis is down
// works once Redis is back.
func New(rdb redis.UniversalClient, opts *Options) (*Manager, error) {
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil Redis client", ErrInvalidOption)
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	if err := checkClient(rdb); err != nil {
		return nil, err
	}
	if o.Prefix == "" {
		o.Prefix = "stockpot"
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		return nil, fmt.Errorf("%w: Prefix %q holds a brace", ErrInvalidKey, o.Prefix)
	}
	if o.DefaultTTL == 0 {
		o.DefaultTTL = time.Hour
	}
	if o.Jitter == 0 {
		o.Jitter = 0.1
	}
	if o.NegativeTTL == 0 {
		o.NegativeTTL = time.Minute
	}
	if o.Codec == nil {
		o.Codec = Msgpack
	}
	if o.MaxValueSize == 0 {
		o.MaxValueSize = 1 << 20
	}
	if o.CompressAbove == 0 {
		o.CompressAbove = compressAboveDefault
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = 5 * time.Second
	}
	var localNow func() time.Time // the local tier's clock: nil for the system's
	if o.Now == nil {
		o.Now = time.Now
	} else {
		localNow = o.Now
	}
	if o.Timeout == 0 {
		o.Timeout = timeoutDefault
	}
	if o.Breaker.Failures == 0 {
		o.Breaker.Failures = 5
	}
	if o.Breaker.CoolDown == 0 {
		o.Breaker.CoolDown = 2 * time.Second
	}
	if o.Breaker.Probes == 0 {
		o.Breaker.Probes = 1
	}
	if o.RefreshWorkers == 0 {
		o.RefreshWorkers = 4
	}
	if o.RefreshQueue == 0 {
		o.RefreshQueue = 1024
	}
	if o.WaitReplicasTimeout == 0 {
		o.WaitReplicasTimeout = 250 * time.Millisecond
	}
	switch {
	case o.DefaultTTL < 0, o.NegativeTTL < 0, o.LeaseTTL < 0:
		return nil, fmt.Errorf("%w: negative duration in Options", ErrInvalidOption)
	case o.Jitter > 1:
		return nil, fmt.Errorf("%w: Jitter %v is above 1", ErrInvalidOption, o.Jitter)
	case o.Breaker.CoolDown < 0, o.Breaker.Probes < 0:
		return nil, fmt.Errorf("%w: negative Breaker setting", ErrInvalidOption)
	case o.RefreshWorkers < 0, o.RefreshQueue < 0:
		return nil, fmt.Errorf("%w: negative RefreshWorkers or RefreshQueue", ErrInvalidOption)
	case o.MaxValueSize < 0:
		return nil, fmt.Errorf("%w: negative MaxValueSize", ErrInvalidOption)
	case o.WaitReplicas < 0, o.WaitReplicasTimeout < 0:
		return nil, fmt.Errorf("%w: negative WaitReplicas or WaitReplicasTimeout", ErrInvalidOption)
	}
	if err := checkWaitTimeout(rdb, o); err != nil {
		return nil, err
	}
	if o.Jitter < 0 {
		o.Jitter = 0
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	_, oneNode := rdb.(*redis.Client)
	m := &Manager{
		rdb:     rdb,
		oneNode: oneNode,
		opts:    o,
		prefix:  o.Prefix + ":",
		log:     log,
		now:     o.Now,
	}
	if o.Local != nil {
		lo := *o.Local
		if lo.MaxEntries == 0 {
			lo.MaxEntries = 10000
		}
		if lo.TTL == 0 {
			lo.TTL = 10 * time.Second
		}
		if lo.Lease == 0 {
			lo.Lease = leaseDefault
		}
		if lo.MaxEntries < 0 || lo.TTL < 0 || lo.Lease < 0 {
			return nil, fmt.Errorf("%w: negative LocalOptions", ErrInvalidOption)
		}
		if !lo.Strict && o.Local.Lease != 0 {
			return nil, fmt.Errorf("%w: LocalOptions.Lease applies to the strict mode only (Strict: true)", ErrInvalidOption)
		}
		if lo.Strict && lo.Lease < leaseMin {
			return nil, fmt.Errorf("%w: LocalOptions.Lease %v is under %v", ErrInvalidOption, lo.Lease, leaseMin)
		}
		id := newToken()
		var strict *strictTier
		if lo.Strict {
			strict = newStrictTier(lo, m.localRegistry(), m.localOwnChannel(id))
		}
		m.local = newLocalTier(lo, m.localChannel(), id, localNow, strict)
	}
	m.cluster, _ = rdb.(*redis.ClusterClient)
	m.ctxTimeouts = honoursContext(rdb)
	m.bound = clientBound(rdb)
	if o.Breaker.Failures > 0 {
		m.breakers = &breakers{o: o.Breaker, obs: o.Observer}
		if _, ring := rdb.(*redis.Ring); m.cluster == nil && !ring {
			m.breakers.one = newBreaker(o.Breaker, o.Observer, "")
		}
	}
	m.life, m.stop = context.WithCancel(context.Background())
	m.notes = newNotifier(m)
	m.workers = make(chan *exchange)
	m.flights.m = make(map[flightKey]*flight)
	m.stats.obs = o.Observer
	m.refresh.queue = make(chan func(context.Context), o.RefreshQueue)
	m.refresh.pending = make(map[string]struct{})
	m.kv = m.stats.get("keys")
	m.pending.stored(o.DefaultTTL) // the entries of others live that long at least
	m.locks = m.stats.get("locks")
	if m.local != nil {
		m.goBackground(m.subscribe)
	}
	if m.local != nil && m.local.strict != nil {
		m.goBackground(m.heartbeats)
		m.goBackground(m.sendAcks)
	}
	if failoverClient(rdb) {
		m.goBackground(m.watchMaster)
	}
	m.loadScriptsLater()
	return m, nil
}

// checkClient refuses a client set up in a way that would break the
// Manager's guarantees: with go-redis's client-side caching on, the client
// answers reads from a copy of its own, which another Manager's
// invalidation, or this one's write, does not reach in time.
func checkClient(rdb redis.UniversalClient) error {
	if c, ok := rdb.(*redis.Client); ok {
		if o := c.Options(); o.ClientSideCacheConfig != nil || o.ClientSideCache != nil {
			return fmt.Errorf("%w: the client has client-side caching on (ClientSideCacheConfig or ClientSideCache): "+
				"it would serve values the cache has invalidated; give the Manager a client without it (Options.Local is the cache's own in-process tier)", ErrInvalidOption)
		}
	}
	return nil
}

// Client returns the Redis client the Manager was built on, for the commands
// the cache does not cover. Name its keys with Key.
func (m *Manager) Client() redis.UniversalClient { return m.rdb }

// Key returns name under the Manager's prefix ("kitchen_queue" becomes
// "stockpot:kitchen_queue"), for keys the application keeps itself on the raw
// client. The cache's own keys never take that form, so the two never meet.
func (m *Manager) Key(name string) string { return m.prefix + name }

// Close stops the Manager's background work and waits for it to end, for
// at most 5 seconds: loads in flight see their context cancelled and
// release their leases, refreshes and warm-ups stop. It also waits, within
// that bound, for the commands that callers stopped waiting for at their
// deadline (see Options.Timeout): go-redis ends each within the client's
// timeouts. It returns an error if something was still running when it
// gave up (a loader that ignores its context, say); use Shutdown to wait
// longer or less. Calls after Close return ErrClosed. Close does not close
// the Redis client, which belongs to the caller. It is safe to call more
// than once.
func (m *Manager) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeWait)
	defer cancel()
	return m.Shutdown(ctx)
}

// closeWait bounds how long Close waits for the Manager's work to end.
const closeWait = 5 * time.Second

// Shutdown is Close, waiting until ctx ends instead of for at most 5
// seconds. It returns an error matching ctx.Err() if the Manager's work
// had not all ended by then.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.closeMu.Lock()
	already := m.closed.Swap(true)
	m.closeMu.Unlock()
	if !already {
		m.stop()
		if m.local != nil {
			m.local.c.StopAllGoroutines()
		}
	}
	wait := time.Millisecond
	for {
		tasks, calls := m.tasks.Load(), m.running.Load()
		if tasks == 0 && calls == 0 {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("cache: close: %d background tasks and %d goroutines of Redis calls still running: %w", tasks, calls, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// goBackground runs f on a goroutine that Close waits for. It reports false,
// running nothing, once the Manager is closed.
func (m *Manager) goBackground(f func()) bool {
	m.closeMu.RLock()
	defer m.closeMu.RUnlock()
	if m.closed.Load() {
		return false
	}
	m.tasks.Add(1)
	go func() {
		defer m.tasks.Add(-1)
		f()
	}()
	return true
}

// check returns ErrClosed after Close and ctx's error once it has ended.
func (m *Manager) check(ctx context.Context) error {
	if m.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
}
