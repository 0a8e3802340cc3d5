package cache

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/stockpot-go/cache/internal/envelope"
)

// Stale-while-revalidate.
//
// An entry loaded with StaleFor(d) lives in Redis for its TTL plus d. Past
// its TTL it is stale: a read returns it at once and schedules one refresh
// in the background, so no reader waits for the loader while a stale value
// exists. Refreshes run on a bounded pool of workers fed by a bounded queue;
// a full queue drops the request (counted) rather than block a reader. A
// refresh takes the entry's lease without waiting: if another process holds
// it, that process is already refreshing and this one lets it. A refresh
// that fails keeps the stale value, and the entry is not refreshed again
// before a backoff that doubles with each failure in a row (from
// refreshBackoffMin to refreshBackoffMax, with jitter), so that a failing
// upstream is not called at the rate the entry is read. On Close,
// refreshes in flight see their context cancelled, and Close waits for
// them.

// StaleFor keeps an entry for d after its TTL, served stale while it is
// refreshed in the background. It applies to GetOrLoad, Memoize and Hash.
func StaleFor(d time.Duration) Option {
	return func(s *settings) {
		s.give(optStaleFor)
		if d < 0 {
			s.fail(fmt.Errorf("%w: StaleFor %v is negative", ErrInvalidOption, d))
			return
		}
		s.staleFor = d
	}
}

// FetchOnMiss(false) makes a cold miss return ErrMiss at once and load the
// value in the background, for callers that would rather show nothing than
// wait. The default is true: a miss waits for the load.
func FetchOnMiss(fetch bool) Option {
	return func(s *settings) {
		s.give(optFetchOnMiss)
		s.noFetchOnMiss = !fetch
	}
}

// EarlyRefresh refreshes a fresh entry in the background shortly before it
// expires, with a probability that grows as expiry nears and with the time
// its last load took (the XFetch rule: refresh when now − delta·beta·ln(rand)
// reaches the expiry, delta being that load time). beta 1 is the usual
// choice; larger refreshes earlier; 0 turns it off.
func EarlyRefresh(beta float64) Option {
	return func(s *settings) {
		s.give(optEarlyRefresh)
		if beta < 0 || math.IsNaN(beta) || math.IsInf(beta, 0) {
			s.fail(fmt.Errorf("%w: EarlyRefresh beta %v", ErrInvalidOption, beta))
			return
		}
		s.earlyBeta = beta
	}
}

// refreshEarly reports whether the XFetch rule picks this read of an entry
// with header h to refresh it early.
func (s *settings) refreshEarly(now time.Time, h envelope.Header) bool {
	if s.earlyBeta <= 0 || h.FreshUntil == 0 || h.LoadDuration == 0 {
		return false
	}
	delta := float64(h.LoadDuration) / 1000 // milliseconds
	gap := -delta * s.earlyBeta * math.Log(1-rand.Float64())
	return float64(now.UnixMilli())+gap >= float64(h.FreshUntil)
}

// readAction is what a loaded read does with what it found.
type readAction uint8

const (
	serve        readAction = iota // return the value
	serveRefresh                   // return the value, refresh it in the background
	notFound                       // return ErrNotFound
	load                           // load the value, waiting for it
	missRefresh                    // return ErrMiss, load in the background
)

// decide counts a loaded read that found state (with header h) and says
// what it does: hits are served (and maybe refreshed early), stale values
// are served and refreshed when StaleFor allows, misses are loaded.
func (s *settings) decide(m *Manager, st *counters, h envelope.Header, state readState) readAction {
	switch state {
	case stateHit:
		st.add(EventHit, 1)
		if s.earlyBeta > 0 && s.refreshEarly(m.now(), h) { // no clock read on plain hits
			st.add(EventEarlyRefresh, 1)
			return serveRefresh
		}
		return serve
	case stateNegative:
		st.add(EventNegativeHit, 1)
		return notFound
	case stateStale:
		if s.staleFor > 0 {
			st.add(EventStaleHit, 1)
			return serveRefresh
		}
	}
	st.add(EventMiss, 1)
	if s.noFetchOnMiss {
		return missRefresh
	}
	return load
}

// refresher runs background refreshes on a bounded pool.
type refresher struct {
	start   sync.Once
	queue   chan func(context.Context)
	mu      sync.Mutex              // protects pending and failing
	pending map[string]struct{}     // leases of the entries queued or refreshing
	failing map[string]refreshFails // leases of the entries whose last refresh failed
}

// refreshFails is how many refreshes of an entry failed in a row, and when
// (Manager clock, Unix ms) the next may start.
type refreshFails struct {
	n    int
	next int64
}

// The backoff of an entry whose refreshes fail: it doubles with each
// failure in a row, from refreshBackoffMin to refreshBackoffMax, less up to
// half of it at random, so that the entries that began failing together
// are not refreshed together.
const (
	refreshBackoffMin = time.Second
	refreshBackoffMax = time.Minute
	// maxFailing bounds the entries whose failures are remembered; beyond
	// it, those whose backoff has ended are forgotten first.
	maxFailing = 10000
)

// backingOff reports whether key's last refresh failed less than its
// backoff ago. r.mu is held.
func (r *refresher) backingOff(key string, now int64) bool {
	f, ok := r.failing[key]
	return ok && now < f.next
}

// refreshed records how key's refresh went at now (Unix ms).
func (r *refresher) refreshed(key string, now int64, failed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !failed {
		delete(r.failing, key)
		return
	}
	if r.failing == nil {
		r.failing = make(map[string]refreshFails)
	}
	f := r.failing[key]
	if len(r.failing) >= maxFailing && f.n == 0 {
		for k, g := range r.failing {
			if now >= g.next {
				delete(r.failing, k)
			}
		}
		if len(r.failing) >= maxFailing {
			return // too many failing at once: this one is not held back
		}
	}
	f.n++
	d := refreshBackoffMin << min(f.n-1, 16)
	d = min(d, refreshBackoffMax)
	d -= time.Duration(rand.Int64N(int64(d/2) + 1))
	f.next = now + d.Milliseconds()
	r.failing[key] = f
}

// scheduleRefresh queues a background refresh of e, as read when it was
// written at seen (Unix milliseconds, 0 when absent), unless one is already
// queued or running in this process, or the queue is full.
func scheduleRefresh[A, T any](m *Manager, e entry, l loader[A, T], seen int64) {
	e.ref = e.ref.withLease()
	r := &m.refresh
	key := e.ref.lease
	r.mu.Lock()
	if _, dup := r.pending[key]; dup || r.backingOff(key, m.now().UnixMilli()) {
		r.mu.Unlock()
		return
	}
	r.pending[key] = struct{}{}
	r.mu.Unlock()
	done := func() {
		r.mu.Lock()
		delete(r.pending, key)
		r.mu.Unlock()
	}
	r.start.Do(func() {
		for range m.opts.RefreshWorkers {
			m.goBackground(func() { m.runRefreshes() })
		}
	})
	job := func(ctx context.Context) {
		defer done()
		refreshOnce(ctx, m, &e, l, seen)
	}
	if m.closed.Load() {
		done()
		return
	}
	select {
	case r.queue <- job:
	default:
		done()
		e.st.add(EventRefreshDropped, 1)
	}
}

// runRefreshes is a refresh worker: it runs queued refreshes until Close.
func (m *Manager) runRefreshes() {
	for {
		select {
		case <-m.life.Done():
			return
		case job := <-m.refresh.queue:
			job(m.life)
		}
	}
}

// refreshOnce loads e and stores it, unless it was stored anew since the
// reader saw it written at seen (Unix milliseconds, 0 when it saw none) or
// another process holds its lease (and so is loading it). A failure holds
// the entry's next refresh back (see refreshFails).
func refreshOnce[A, T any](ctx context.Context, m *Manager, e *entry, l loader[A, T], seen int64) {
	failed := true
	defer func() {
		if ctx.Err() == nil {
			m.refresh.refreshed(e.ref.lease, m.now().UnixMilli(), failed)
		}
	}()
	es, idx := []entry{*e}, []int{0}
	hd := newHeld(es, false)
	if err := m.readGensForLoad(ctx, es, idx, hd); err != nil {
		e.st.add(EventRefreshFailed, 1)
		return
	}
	acq, err := m.acquireMany(ctx, es, idx, hd, false)
	if err != nil {
		e.st.add(EventRefreshFailed, 1)
		return
	}
	failed = false
	a := acq[0]
	if !a.taken {
		return // another process is loading it
	}
	hd.wants[0].gen = a.gen
	if a.value != nil {
		var v T
		if h, state, _ := m.lookup(e.st, e.ref, a.value, &hd.wants[0], &v); state == stateHit && (seen == 0 || h.WrittenAt > seen) {
			m.releaseMany(es, idx, hd) // refreshed meanwhile, by another process
			return
		}
	}
	e.st.add(EventRefreshStarted, 1)
	loadAndStore(ctx, m, es, idx, hd, single(l), func(_ int, _ any, _ time.Time, err error) {
		if err != nil && !errors.Is(err, ErrNotFound) {
			failed = true
			e.st.add(EventRefreshFailed, 1)
			m.log.Debug("cache: background refresh failed; the stale value stays", "key", e.ref.key, "field", e.ref.field, "err", err)
			return
		}
		e.st.add(EventRefreshSucceeded, 1)
	})
}
