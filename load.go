package cache

import (
	"context"
	"crypto/rand"
	"errors"
	mrand "math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/stockpot-go/cache/internal/envelope"
	"github.com/stockpot-go/cache/internal/scripts"
)

// Loading an entry that is missing takes two layers of deduplication.
//
// In a process, callers of one entry share one flight: the first starts the
// load on a goroutine of the Manager's, under a context that keeps the first
// caller's values but not its cancellation, and every caller (the first
// included) waits for the result or for its own context to end.
//
// Across processes, the flight takes the entry's lease in Redis (SET NX PX,
// in a script that reads the entry in the same round trip). The holder runs
// the loader, renewing the lease while it runs, and stores the value with a
// script that writes only while the lease is still its own. Flights of other
// processes that find the lease taken poll for the value with a growing
// delay, and take the lease over when it expires because its holder died.
//
// An invalidation deletes the lease (or moves the container's generation),
// so the holder's store is refused and no value loaded before the
// invalidation is stored after it.
//
// A flight's result goes only to callers that joined before the Redis call
// that produced it (the read that found the value, or the store of the
// loaded one) or, for a value whose store was voided, before its load began.
// Those callers' calls overlap any invalidation the result missed. A caller
// that joined later may have joined after an invalidation returned (one
// made by another process, which this process does not see), so it starts
// a new flight. Invalidations made by this process also detach the flights
// in progress, so that callers arriving after them start a new flight at
// once.

// flight is one load shared by the callers of one process.
type flight struct {
	done chan struct{} // closed when the fields below are set
	val  any
	err  error
	// at is when the Redis call that produced val began (for a value whose
	// store was voided, when its load began); zero when there was none.
	// Callers that joined after it do not take the result.
	at time.Time
}

// flightGroup holds the flights in progress, by lease key.
type flightGroup struct {
	mu sync.Mutex // protects m
	m  map[string]*flight
}

// join returns the flight of key, and true when the caller started it.
func (g *flightGroup) join(key string) (*flight, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f, ok := g.m[key]; ok {
		return f, false
	}
	f := &flight{done: make(chan struct{})}
	g.m[key] = f
	return f, true
}

// finish publishes f's result and removes it from the group.
func (g *flightGroup) finish(key string, f *flight, val any, at time.Time, err error) {
	g.mu.Lock()
	if g.m[key] == f {
		delete(g.m, key)
	}
	g.mu.Unlock()
	f.val, f.err, f.at = val, err, at
	close(f.done)
}

// detach makes the flights of the leases keys unreachable for new callers;
// those already waiting keep waiting.
func (g *flightGroup) detach(keys []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, k := range keys {
		delete(g.m, k)
		delete(g.m, forcedPrefix+k)
	}
}

// detachAll detaches every flight in progress.
func (g *flightGroup) detachAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.m = make(map[string]*flight)
}

// detachPrefix detaches the flights whose lease key starts with prefix.
func (g *flightGroup) detachPrefix(prefix string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k := range g.m {
		if strings.HasPrefix(k, prefix) || strings.HasPrefix(k, forcedPrefix+prefix) {
			delete(g.m, k)
		}
	}
}

// maxLeasePoll is the longest wait between two polls of a flight waiting
// for another process's load: short, since only one flight per process and
// key polls, and every millisecond of it is added to the waiters' latency.
const maxLeasePoll = 16 * time.Millisecond

// forcedPrefix marks the flights of forced loads (Refresh), which do not
// share a flight with ordinary misses: a refresh must not return a load that
// began before it was asked for.
const forcedPrefix = "!"

// loadEntry returns e's value, loading it with l when it is missing (or
// always, when force is set), shared as described above.
func loadEntry[A, T any](ctx context.Context, m *Manager, e entry, force bool, l loader[A, T]) (T, error) {
	var zero T
	e.ref = e.ref.withLease()
	fkey := e.ref.lease
	if force {
		fkey = forcedPrefix + fkey
	}
	for {
		joined := time.Now()
		f, leader := m.flights.join(fkey)
		if leader {
			lctx := context.WithoutCancel(ctx)
			started := m.goBackground(func() {
				lctx, cancel := context.WithCancel(lctx)
				defer cancel()
				stop := context.AfterFunc(m.life, cancel)
				defer stop()
				v, at, err := runLoad(lctx, m, &e, force, l)
				m.flights.finish(fkey, f, v, at, err)
			})
			if !started {
				m.flights.finish(fkey, f, zero, time.Time{}, ErrClosed)
			}
		} else {
			e.st.add(EventSharedWait, 1)
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return zero, ctx.Err()
		}
		if !f.at.IsZero() && joined.After(f.at) && (f.err == nil || errors.Is(f.err, ErrNotFound)) {
			continue // read before an invalidation this caller may have seen return
		}
		if f.err != nil {
			return zero, f.err
		}
		return f.val.(T), nil
	}
}

// acquired is what the acquire script found.
type acquired struct {
	value  []byte // the stored bytes, nil when absent
	status int64  // leaseTaken, leaseBusy or valuePresent
	gen    string
}

const (
	leaseBusy    = 0
	leaseTaken   = 1
	valuePresent = 2
)

// acquire reads e's entry and takes its lease with token, unless a value is
// there and take is false.
func (m *Manager) acquire(ctx context.Context, e *entry, token string, take bool) (acquired, error) {
	ref := &e.ref
	keys := []string{ref.key, ref.lease}
	if ref.gen != "" {
		keys = append(keys, ref.gen)
	}
	flag := "0"
	if take {
		flag = "1"
	}
	res, err := m.eval(ctx, e.st, scripts.Acquire, keys, ref.field, token, m.opts.LeaseTTL.Milliseconds(), flag, newGen()).Slice()
	if err != nil {
		return acquired{}, err
	}
	var a acquired
	if len(res) != 3 {
		return a, errors.New("cache: unexpected reply from the acquire script")
	}
	if s, ok := res[0].(string); ok {
		a.value = bytesOf(s)
	}
	a.status, _ = res[1].(int64)
	a.gen, _ = res[2].(string)
	return a, nil
}

// runLoad is a flight's work: find the value, or take the lease and load it.
// It returns the value with the time the Redis calls that found or stored
// it began (see flight.at). A forced load (Refresh) never takes a value it
// did not load, and its result goes only to the callers that joined before
// its loader began.
func runLoad[A, T any](ctx context.Context, m *Manager, e *entry, force bool, l loader[A, T]) (v T, at time.Time, err error) {
	var zero T
	token := newToken()
	take := force
	waited := false
	backoff := time.Millisecond
	// The tags' generations come first: the value loaded below is stored
	// with them, and counts only while they stay.
	read := time.Now()
	gens, err := m.tagGens(ctx, e.st, e.tags, m.tagKeep(e))
	if err != nil {
		if ctx.Err() != nil {
			return zero, time.Time{}, ctx.Err()
		}
		e.st.add(EventDegraded, 1)
		return loadDegraded(ctx, e, force, l, err)
	}
	want := expect{tags: e.tags, gens: gens}
	for {
		asked := time.Now()
		a, err := m.acquire(ctx, e, token, take)
		if err != nil {
			if ctx.Err() != nil {
				return zero, time.Time{}, ctx.Err()
			}
			// Redis is failing: the caller still gets the loader's value,
			// which is not stored.
			e.st.add(EventDegraded, 1)
			m.log.Debug("cache: redis failed during a load; loading without the cache", "key", e.ref.key, "field", e.ref.field, "err", err)
			return loadDegraded(ctx, e, force, l, err)
		}
		want.gen = a.gen
		if a.value != nil && a.status != leaseTaken && !force {
			// A value is there: take it if it is usable. It is as recent
			// as the first of the reads that vouch for it: its tags'
			// generations, if it has tags, else itself.
			vouched := asked
			if len(e.tags) > 0 {
				vouched = read
			}
			var v T
			_, state, _ := m.lookup(e.st, e.ref, a.value, &want, &v)
			switch state {
			case stateHit:
				return v, vouched, nil
			case stateNegative:
				return zero, vouched, ErrNotFound
			}
			if a.status == valuePresent {
				take = true // stale, old, corrupt or of moved tags: load it
				continue
			}
		}
		if a.status == leaseBusy {
			if !waited {
				waited = true
				e.st.add(EventLeaseWait, 1)
			}
			if err := sleep(ctx, backoff); err != nil {
				return zero, time.Time{}, err
			}
			backoff = min(backoff*2, maxLeasePoll)
			continue
		}

		// The lease is ours.
		began := time.Now()
		v, st, err := loadAndStore(ctx, m, e, l, held{token: token, gen: a.gen, gens: gens, force: force})
		if !st.voided && !st.at.IsZero() && len(e.tags) > 0 {
			// An invalidation of a tag does not void the lease: check that
			// none came while the value loaded, before the callers that
			// joined meanwhile take it.
			now, rerr := m.readTagGens(ctx, e.st, e.tags)
			st.voided = rerr != nil || !slices.Equal(now, gens)
		}
		switch {
		case st.voided:
			e.st.add(EventVoidedStore, 1)
			return v, began, err
		case force:
			if st.err != nil && err == nil {
				err = notStored(st.err)
			}
			return v, began, err
		case st.at.IsZero() && st.err != nil && !unreachable(st.err):
			// Redis answered the store with an error (out of memory, say):
			// as for a voided store, nothing vouches for the value.
			return v, began, err
		}
		return v, st.at, err
	}
}

// notStored is the error of a forced load (Refresh) whose value Redis did
// not store, the old value staying: cause is Redis's error.
func notStored(cause error) error {
	return wrap(unavailable(cause), "the refreshed value was not stored")
}

// held is what a load holds while its loader runs: its lease, and what its
// value is stored under.
type held struct {
	token string
	gen   string   // the container's generation
	gens  []string // the tags' generations
	force bool     // a forced load (Refresh), which deletes the old value when its store is refused
}

// stored is what became of a loaded value's store.
type stored struct {
	at     time.Time // when the store call began; zero when nothing was stored
	voided bool      // an invalidation voided the store
	err    error     // why the store failed, when Redis failed it
}

// loadAndStore runs the loader under the lease and stores its result, as
// hd says. It returns the loaded value, what became of its store, and the
// loader's error.
func loadAndStore[A, T any](ctx context.Context, m *Manager, e *entry, l loader[A, T], hd held) (T, stored, error) {
	var zero T
	token, gen := hd.token, hd.gen
	stopRenew := m.keepLease(ctx, e, token)
	v, took, err := callLoader(ctx, e.st, l)
	stopRenew()
	now := m.now()
	var b []byte
	ttl := e.s.expiry()
	h := envelope.Header{Gen: parseGen(gen), Tags: tagSection(e.tags, hd.gens)}
	switch {
	case errors.Is(err, ErrNotFound):
		ttl = m.opts.NegativeTTL
		b = m.negative(now, ttl, h)
		err = ErrNotFound
	case err == nil:
		h.WrittenAt = now.UnixMilli()
		h.FreshUntil = freshUntil(now, ttl)
		h.LoadDuration = uint64(took.Microseconds())
		b, err = m.encode(v, h)
	}
	if b == nil {
		m.release(e.st, e.ref.lease, token)
		return zero, stored{}, err
	}
	keys := []string{e.ref.key, e.ref.lease}
	if e.ref.gen != "" {
		keys = append(keys, e.ref.gen)
	}
	keep := ttl
	if keep > 0 && !errors.Is(err, ErrNotFound) {
		keep += e.s.staleFor
	}
	m.pending.stored(keep)
	storeAt := time.Now()
	force := "0"
	if hd.force {
		force = "1"
	}
	n, serr := m.eval(ctx, e.st, scripts.Store, keys, e.ref.field, token, gen, b, keep.Milliseconds(), force).Int()
	switch {
	case serr != nil:
		// The caller still gets the value; the cache just did not keep it.
		m.log.Warn("cache: storing a loaded value failed", "key", e.ref.key, "field", e.ref.field, "err", serr)
		return v, stored{err: serr}, err
	case n == 0:
		return v, stored{voided: true}, err
	}
	e.st.add(EventSet, 1)
	return v, stored{at: storeAt}, err
}

// loadDegraded runs the loader without the cache, Redis having failed with
// cause. The value is not stored. When Redis cannot be reached, every
// caller waiting for the flight takes the value (the time returned is
// zero), so that an outage does not multiply the loads (but for a forced
// load, which goes to the callers that joined before it began, as ever).
// When Redis answered
// with an error (a script refused during a cluster slot migration, say), it
// is up for other processes, whose invalidations this process does not
// see: as for a voided store, only the callers that joined before the load
// began take the value.
func loadDegraded[A, T any](ctx context.Context, e *entry, force bool, l loader[A, T], cause error) (T, time.Time, error) {
	began := time.Now()
	v, _, err := callLoader(ctx, e.st, l)
	switch {
	case force && err == nil:
		return v, began, notStored(cause)
	case unreachable(cause) && !force:
		return v, time.Time{}, err
	}
	return v, began, err
}

// callLoader runs l, turning a panic into a *PanicError, and counts it.
func callLoader[A, T any](ctx context.Context, st *counters, l loader[A, T]) (v T, took time.Duration, err error) {
	st.loading()
	start := time.Now()
	defer func() {
		took = time.Since(start)
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
		st.loaded(took, err)
		if err != nil && !errors.Is(err, ErrNotFound) {
			st.add(EventLoadError, 1)
		}
	}()
	v, err = l.call(ctx)
	return v, 0, err
}

// keepLease renews e's lease, held with token, every LeaseTTL/3 until the
// returned function is called; that function waits for the renewals to stop.
func (m *Manager) keepLease(ctx context.Context, e *entry, token string) func() {
	every := m.opts.LeaseTTL / 3
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				n, err := m.eval(ctx, e.st, scripts.Renew, []string{e.ref.lease}, token, m.opts.LeaseTTL.Milliseconds()).Int()
				if err == nil && n == 0 {
					return // voided: the store will be refused
				}
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// newToken returns a lease token.
func newToken() string { return rand.Text() }

// release gives up the lease held with token, on a context of its own: it
// also runs when the load's context has ended.
func (m *Manager) release(st *counters, lease, token string) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := m.eval(ctx, st, scripts.Release, []string{lease}, token).Err(); err != nil {
		m.log.Warn("cache: releasing a lease failed; it expires on its own", "lease", lease, "err", err)
	}
}

const releaseTimeout = time.Second

// sleep waits d (with up to 25% jitter, so pollers spread out) or until ctx
// ends.
func sleep(ctx context.Context, d time.Duration) error {
	d += time.Duration(float64(d) * 0.25 * mrand.Float64())
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
