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
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/envelope"
	"github.com/stockpot-go/cache/internal/scripts"
)

// Loading entries that are missing takes two layers of deduplication, for
// one entry or a batch of them alike: a single load is a batch of one.
//
// In a process, callers of one entry share one flight: the first starts the
// load on a goroutine of the Manager's, under a context that keeps the first
// caller's values but not its cancellation, and every caller (the first
// included) waits for the result or for its own context to end. A batch
// joins the flights of its entries that are in progress (a single load's, or
// another batch's) and starts one job for the rest.
//
// Across processes, the job takes each entry's lease in Redis (SET NX PX,
// followed in the same pipeline by a read of the entry: one round trip per
// node however many entries; see acquireMany). It calls the
// loader once with the entries whose lease it took, renewing the leases
// while it runs, and stores each value with a script that writes only while
// the lease is still its own. Entries whose lease another process holds are
// awaited: the holder's store or release tells the waiters (see
// notify.go), and their lease is taken over when it expires because its
// holder died (then the loader is called again, for those entries).
//
// An invalidation deletes the lease (or the container's generation), so the
// holder's store is refused and no value loaded before the invalidation is
// stored after it. An invalidation of a tag moves the tag's generation,
// which the stored entry carries: the job reads the generation again after
// its store, and treats a moved one as a refused store.
//
// A flight's result goes only to callers that joined before the Redis call
// that produced it (the read that found the value, or the store of the
// loaded one; for an entry with tags, the read of their generations before
// the load) or, for a value whose store was refused, before its load began.
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
	m  map[flightKey]*flight
	n  atomic.Int64 // len(m), read without mu
}

// inFlight reports whether a load of the lease key (not a forced one) is
// in progress.
func (g *flightGroup) inFlight(lease string) bool {
	if g.n.Load() == 0 {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.m[flightKey{lease, false}]
	return ok
}

// flightKey names a flight: the lease of its entry, and whether the load is
// forced (Refresh). Forced loads do not share a flight with ordinary
// misses: a refresh must not return a load that began before it was asked
// for.
type flightKey struct {
	lease  string
	forced bool
}

// join returns the flight of key, and true when the caller started it.
func (g *flightGroup) join(key flightKey) (*flight, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f, ok := g.m[key]; ok {
		return f, false
	}
	f := &flight{done: make(chan struct{})}
	g.m[key] = f
	g.n.Store(int64(len(g.m)))
	return f, true
}

// finish publishes f's result and removes it from the group.
func (g *flightGroup) finish(key flightKey, f *flight, val any, at time.Time, err error) {
	g.mu.Lock()
	if g.m[key] == f {
		delete(g.m, key)
		g.n.Store(int64(len(g.m)))
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
	if len(g.m) == 0 {
		return // none in flight: no key to look up
	}
	for _, k := range keys {
		delete(g.m, flightKey{k, false})
		delete(g.m, flightKey{k, true})
	}
	g.n.Store(int64(len(g.m)))
}

// detachAll detaches every flight in progress.
func (g *flightGroup) detachAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.m = make(map[flightKey]*flight)
	g.n.Store(0)
}

// detachPrefix detaches the flights whose lease key starts with prefix.
func (g *flightGroup) detachPrefix(prefix string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k := range g.m {
		if strings.HasPrefix(k.lease, prefix) {
			delete(g.m, k)
		}
	}
	g.n.Store(int64(len(g.m)))
}

// maxLeasePoll is the longest wait between two polls of a flight waiting
// for another process's load where it cannot be told (a ring, or no
// subscription): short, since only one flight per process and key polls,
// and every millisecond of it is added to the waiters' latency.
const maxLeasePoll = 16 * time.Millisecond

// leasePoll is how often a waiter looks at a lease it was not told of: a
// notice may be lost, and a holder that died tells nobody.
func leasePoll(leaseTTL time.Duration) time.Duration { return leaseTTL / 2 }

// batchLoader loads the entries at idx of a load's entries, and returns
// their values by index; an index it leaves out has no value.
type batchLoader[T any] func(ctx context.Context, idx []int) (map[int]T, error)

// single returns the batchLoader of a load of one entry with l.
func single[A, T any](l loader[A, T]) batchLoader[T] {
	return func(ctx context.Context, _ []int) (map[int]T, error) {
		v, err := l.call(ctx)
		if err != nil {
			return nil, err
		}
		return map[int]T{0: v}, nil
	}
}

// outcome is what a load gave one entry: a value, an error, or both (a
// Refresh whose value Redis did not store).
type outcome[T any] struct {
	v   T
	has bool // v is a value
	err error
}

// errLeftOut is the outcome of an entry a batch loader left out of its
// result (without RememberMissing): a miss, not stored.
var errLeftOut = errors.New("cache: left out by the loader")

// loadEntry returns e's value, loading it with l when it is missing (or
// always, when force is set), as loadMany does.
func loadEntry[A, T any](ctx context.Context, m *Manager, e entry, force bool, l loader[A, T]) (T, error) {
	out, err := loadMany(ctx, m, []entry{e}, force, single(l))
	if err != nil {
		var zero T
		return zero, err
	}
	return out[0].v, out[0].err
}

// loadMany returns the outcome of each of es (whose keys differ), loading
// those that are missing (or all, when force is set) with l, shared as
// described above. The error is the caller's ctx's, when it ended first.
func loadMany[T any](ctx context.Context, m *Manager, es []entry, force bool, l batchLoader[T]) ([]outcome[T], error) {
	keys := make([]flightKey, len(es))
	for i := range es {
		es[i].ref = es[i].ref.withLease()
		keys[i] = flightKey{es[i].ref.lease, force}
	}
	out := make([]outcome[T], len(es))
	fs := make([]*flight, len(es))
	pending := make([]int, len(es))
	for i := range pending {
		pending[i] = i
	}
	for len(pending) > 0 {
		joined := time.Now()
		var mine []int
		for _, i := range pending {
			f, leader := m.flights.join(keys[i])
			fs[i] = f
			if leader {
				mine = append(mine, i)
			} else {
				es[i].st.add(EventSharedWait, 1)
			}
		}
		if len(mine) > 0 {
			startLoad(ctx, m, es, mine, force, l, func(i int, v any, at time.Time, err error) {
				m.flights.finish(keys[i], fs[i], v, at, err)
			})
		}
		var next []int
		for _, i := range pending {
			f := fs[i]
			select {
			case <-f.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if !f.at.IsZero() && joined.After(f.at) && (f.err == nil || errors.Is(f.err, ErrNotFound)) {
				next = append(next, i) // read before an invalidation this caller may have seen return
				continue
			}
			if f.val != nil {
				out[i].v, out[i].has = f.val.(T), true
			}
			out[i].err = f.err
		}
		pending = next
	}
	return out, nil
}

// finishFunc publishes the outcome of entry i of a load: its value (nil
// for none), when the Redis call that vouches for it began (see
// flight.at), and its error.
type finishFunc func(i int, v any, at time.Time, err error)

// startLoad runs the job of loading the entries idx of es on a goroutine
// of the Manager's, under a context that keeps ctx's values but not its
// cancellation and ends on Close; finish is called once for each of idx.
func startLoad[T any](ctx context.Context, m *Manager, es []entry, idx []int, force bool, l batchLoader[T], finish finishFunc) {
	lctx := context.WithoutCancel(ctx)
	job := func() {
		lctx, cancel := context.WithCancelCause(lctx)
		defer cancel(nil)
		stop := context.AfterFunc(m.life, func() { cancel(ErrClosed) }) // the waiters' error
		defer stop()
		runLoad(lctx, m, es, idx, force, l, finish)
	}
	if !m.goBackground(job) {
		for _, i := range idx {
			finish(i, nil, time.Time{}, ErrClosed)
		}
	}
}

// held is what a load holds: the token its entries' leases hold, and, for
// each entry by index, what its value is stored under.
type held struct {
	token string   // what each of its leases holds
	wants []expect // the container's and the tags' generations
	force bool     // a forced load (Refresh), which deletes the old value when its store is refused
}

func newHeld(es []entry, force bool) *held {
	h := &held{token: newToken(), wants: make([]expect, len(es)), force: force}
	for i := range es {
		h.wants[i].tags = es[i].tags
	}
	return h
}

// runLoad is a load job's work: for each of idx, find the value, or take
// the lease and load it. A forced load (Refresh) never takes a value it did
// not load, and its result goes only to the callers that joined before its
// loader began.
func runLoad[T any](ctx context.Context, m *Manager, es []entry, idx []int, force bool, l batchLoader[T], finish finishFunc) {
	hd := newHeld(es, force)
	// The tags' generations come first: the values loaded below are stored
	// with them, and count only while they stay.
	read := time.Now()
	if err := m.readGensForLoad(ctx, es, idx, hd); err != nil {
		degrade(ctx, m, es, idx, hd, l, err, finish)
		return
	}
	waited := make([]bool, len(es))
	backoff := time.Millisecond
	paused := false
	for todo := idx; len(todo) > 0; {
		asked := time.Now()
		acq, err := m.acquireMany(ctx, es, todo, hd, false)
		if err != nil {
			degrade(ctx, m, es, todo, hd, l, err, finish)
			return
		}
		var load, busy, unneeded []int
		for j, i := range todo {
			a := acq[j]
			hd.wants[i].gen = a.gen
			if a.value != nil && !force {
				// A value is there: take it if it is usable (else it is
				// stale, old, corrupt or of moved tags: load it).
				if takeFound[T](m, es, i, a.value, hd, vouchedAt(&es[i], asked, read), finish) {
					if a.taken {
						unneeded = append(unneeded, i)
					}
					continue
				}
			}
			if a.taken {
				load = append(load, i)
				continue
			}
			if !waited[i] {
				waited[i] = true
				es[i].st.add(EventLeaseWait, 1)
			}
			if !paused {
				// Waiting for another process's load is not Redis's
				// time: from here on each call has a budget of its own.
				paused = true
				defer pause(ctx)()
			}
			busy = append(busy, i)
		}
		if len(unneeded) > 0 {
			m.releaseMany(es, unneeded, hd)
		}
		if len(load) > 0 {
			loadAndStore(ctx, m, es, load, hd, l, finish)
		}
		if len(busy) == 0 {
			return
		}
		todo, err = awaitLoads[T](ctx, m, es, busy, hd, read, &backoff, finish)
		if err != nil {
			if ctx.Err() != nil {
				for _, i := range todo {
					finish(i, nil, time.Time{}, context.Cause(ctx))
				}
				return
			}
			degrade(ctx, m, es, todo, hd, l, err, finish)
			return
		}
	}
}

// vouchedAt returns how recent a value of e read at asked is: as recent as
// the first of the reads that vouch for it, its tags' generations (read at
// read) if it has tags, else itself.
func vouchedAt(e *entry, asked, read time.Time) time.Time {
	if len(e.tags) > 0 {
		return read
	}
	return asked
}

// takeFound finishes the entry i of es with the stored value b, read with
// the generations hd wants, and reports whether it did: false when b is
// not a usable value (stale, old, corrupt, or of tags that moved).
func takeFound[T any](m *Manager, es []entry, i int, b []byte, hd *held, vouched time.Time, finish finishFunc) bool {
	var v T
	_, state, _ := m.lookup(es[i].st, es[i].ref, b, &hd.wants[i], &v)
	switch state {
	case stateHit:
		finish(i, v, vouched, nil)
	case stateNegative:
		finish(i, nil, vouched, ErrNotFound)
	default:
		return false
	}
	return true
}

// awaitLoads waits for the loads of the entries busy of es, whose leases
// other processes hold, to end (see notify.go), and finishes each whose
// value is then there. It returns the entries to acquire again (their
// lease ended without a usable value), or, with an error, those still
// unfinished. Where notices cannot be had it polls once, after *backoff.
func awaitLoads[T any](ctx context.Context, m *Manager, es []entry, busy []int, hd *held, read time.Time, backoff *time.Duration, finish finishFunc) ([]int, error) {
	w, err := m.notes.watch(ctx, leasesOf(es, busy))
	if err != nil {
		if errors.Is(err, errNoNotices) {
			err = sleep(ctx, *backoff)
			*backoff = min(*backoff*2, maxLeasePoll)
		}
		return busy, err
	}
	defer m.notes.unwatch(w)
	waiting := busy
	poll := time.NewTimer(0) // the first mark, at once
	defer poll.Stop()
	for {
		var look, still []int // the entries to read now, and the others
		select {
		case <-poll.C:
			// Mark the leases as awaited, which also says which are still
			// held. A mark lasts as long as its lease had left, at least
			// two thirds of LeaseTTL while its holder renews it (every
			// third): it is made again every half, which also finds a
			// lease whose holder died, to take it over.
			alive, err := m.markAwaited(ctx, es, waiting)
			var refused redis.Error
			if errors.As(err, &refused) {
				// A server or proxy that refuses COPY: poll.
				m.log.Debug("cache: marking a lease as awaited failed; polling it", "err", err)
				err = sleep(ctx, *backoff)
				*backoff = min(*backoff*2, maxLeasePoll)
				return waiting, err
			}
			if err != nil {
				return waiting, err
			}
			for j, i := range waiting {
				if alive[j] {
					still = append(still, i)
				} else {
					look = append(look, i)
				}
			}
			if w.partial {
				poll.Reset(*backoff)
				*backoff = min(*backoff*2, maxLeasePoll)
			} else {
				poll.Reset(leasePoll(m.opts.LeaseTTL))
			}
		case <-w.c:
			told := w.take(leasesOf(es, waiting))
			for j, i := range waiting {
				if told[j] {
					look = append(look, i)
				} else {
					still = append(still, i)
				}
			}
		case <-ctx.Done():
			return waiting, context.Cause(ctx) // ErrClosed on Close
		}
		waiting = still
		if len(look) == 0 {
			continue
		}
		if hd.force {
			// A forced load takes no value it did not load: it loads
			// once the lease is free.
			return append(look, waiting...), nil
		}
		asked := time.Now()
		acq, err := m.acquireMany(ctx, es, look, hd, true)
		if err != nil {
			return append(look, waiting...), err
		}
		var again []int
		for j, i := range look {
			a := acq[j]
			hd.wants[i].gen = a.gen
			if a.value == nil || !takeFound[T](m, es, i, a.value, hd, vouchedAt(&es[i], asked, read), finish) {
				again = append(again, i)
			}
		}
		if len(again) > 0 || len(waiting) == 0 {
			return append(again, waiting...), nil
		}
	}
}

// leasesOf returns the lease keys of the entries idx of es.
func leasesOf(es []entry, idx []int) []string {
	out := make([]string, len(idx))
	for j, i := range idx {
		out[j] = es[i].ref.lease
	}
	return out
}

// markAwaited marks the leases of the entries idx of es as awaited (COPY
// of each lease to its mark, which the holder's store or release sees), in
// one round trip per node, and reports which leases were still held.
func (m *Manager) markAwaited(ctx context.Context, es []entry, idx []int) ([]bool, error) {
	cmds := make([]*redis.IntCmd, len(idx))
	_, err := m.pipe(ctx, es[idx[0]].st, func(p redis.Pipeliner) {
		for j, i := range idx {
			lease := es[i].ref.lease
			cmds[j] = redis.NewIntCmd(ctx, "copy", lease, lease+awaitedSuffix, "replace")
			_ = p.Process(ctx, cmds[j])
		}
	})
	if err != nil {
		return nil, err
	}
	held := make([]bool, len(idx))
	for j, c := range cmds {
		held[j] = c.Val() == 1
	}
	return held, nil
}

// readGensForLoad reads (or makes) the generations of the tags of the
// entries idx of es, into hd, keeping them alive as long as the entries
// will live.
func (m *Manager) readGensForLoad(ctx context.Context, es []entry, idx []int, hd *held) error {
	var tags []string
	var keep time.Duration
	for _, i := range idx {
		for _, t := range es[i].tags {
			if !slices.Contains(tags, t) {
				tags = append(tags, t)
			}
		}
		k := m.tagKeep(&es[i])
		if k == 0 || keep == 0 && len(tags) == 0 {
			keep = k
		}
		keep = max(keep, k)
	}
	if len(tags) == 0 {
		return nil
	}
	gens, err := m.tagGens(ctx, es[idx[0]].st, tags, keep)
	if err != nil {
		return err
	}
	for _, i := range idx {
		w := &hd.wants[i]
		w.gens = make([]string, len(w.tags))
		for j, t := range w.tags {
			w.gens[j] = gens[slices.Index(tags, t)]
		}
	}
	return nil
}

// acquired is what acquireMany found of an entry.
type acquired struct {
	value []byte // the stored bytes, nil when absent
	taken bool   // its lease was taken with hd's token
	gen   string // its container's generation; "" for none
}

// acquireMany takes the leases of the entries idx of es with hd's tokens
// (each where no other process holds it: SET NX PX) and then reads the
// entries and their containers' generations (making a generation where a
// container has none), in one pipeline: one round trip per node. The
// commands of an entry share its slot, so they run in that order: a value
// stored before the lease was taken is seen. An entry whose lease was taken
// while a value is there holds a lease it may not need: the caller takes
// the value or loads it, and releases the leases it does not load. It
// returns what it found, in the order of idx. With peek, it only reads:
// it takes no lease and makes no generation. A forced load (hd.force)
// takes no value it did not load, so it reads none: only the leases and
// the generations.
func (m *Manager) acquireMany(ctx context.Context, es []entry, idx []int, hd *held, peek bool) ([]acquired, error) {
	type valueAt struct {
		cmd redis.Cmder // a SliceCmd (MGET, HMGET) or a StringCmd (GET)
		at  int
	}
	leases := make([]*redis.BoolCmd, len(idx))
	gens := make([]valueAt, len(idx))
	vals := make([]valueAt, len(idx))
	pos := make([]int, len(es)) // entry index -> position in idx
	for j, i := range idx {
		pos[i] = j
	}
	_, err := m.pipe(ctx, es[idx[0]].st, func(p redis.Pipeliner) {
		for _, group := range m.scriptGroups(es, idx) {
			// The generations are read in the MGET of the group's string
			// entries when it has some, else with a GET each.
			var keys []string
			var strs []int
			fields := make(map[string][]int) // hash key -> positions
			var hashes []string
			genAt := make(map[string]int) // generation key -> its place in keys
			for _, i := range group {
				ref := &es[i].ref
				if hd.force && !peek {
					continue
				}
				if ref.field == "" {
					keys = append(keys, ref.key)
					strs = append(strs, pos[i])
					continue
				}
				if _, ok := fields[ref.key]; !ok {
					hashes = append(hashes, ref.key)
				}
				fields[ref.key] = append(fields[ref.key], pos[i])
			}
			var genCmds map[string]*redis.StringCmd
			for _, i := range group {
				if g := es[i].ref.gen; g != "" {
					genAt[g] = -1
				}
			}
			if !peek {
				for _, i := range group {
					leases[pos[i]] = p.SetNX(ctx, es[i].ref.lease, hd.token, m.opts.LeaseTTL)
				}
			}
			if len(keys) > 0 {
				for g := range genAt {
					genAt[g] = len(keys)
					keys = append(keys, g)
				}
				cmd := p.MGet(ctx, keys...)
				for k, j := range strs {
					vals[j] = valueAt{cmd, k}
				}
				for _, i := range group {
					if g := es[i].ref.gen; g != "" {
						gens[pos[i]] = valueAt{cmd, genAt[g]}
					}
				}
			} else {
				genCmds = make(map[string]*redis.StringCmd, len(genAt))
				for g := range genAt {
					genCmds[g] = p.Get(ctx, g)
				}
				for _, i := range group {
					if g := es[i].ref.gen; g != "" {
						gens[pos[i]] = valueAt{genCmds[g], 0}
					}
				}
			}
			for _, h := range hashes {
				js := fields[h]
				names := make([]string, len(js))
				for k, j := range js {
					names[k] = es[idx[j]].ref.field
				}
				cmd := p.HMGet(ctx, h, names...)
				for k, j := range js {
					vals[j] = valueAt{cmd, k}
				}
			}
		}
	})
	if err != nil {
		return nil, err
	}
	out := make([]acquired, len(idx))
	var made []int // positions of taken leases whose container has no generation
	for j, i := range idx {
		a := &out[j]
		if !peek {
			a.taken = leases[j].Val()
		}
		if g := gens[j]; g.cmd != nil {
			var ok bool
			if a.gen, ok = replyAt(g.cmd, g.at); !ok {
				return nil, errors.New("cache: unexpected reply to a read of the entries")
			}
			if a.gen == "" {
				// No generation (never made, or an invalidation deleted
				// it): no value stored before can be vouched for. A load
				// makes one before it starts, to store under.
				if a.taken && es[i].ref.gen != "" {
					made = append(made, j)
				}
				continue
			}
		}
		if vals[j].cmd == nil {
			continue // not read: a forced load
		}
		v, ok := replyAt(vals[j].cmd, vals[j].at)
		if !ok {
			return nil, errors.New("cache: unexpected reply to a read of the entries")
		}
		if v != "" {
			a.value = bytesOf(v)
		}
	}
	if len(made) > 0 {
		if err := m.makeGens(ctx, es, idx, made, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// makeGens makes (SET NX) and reads the generations of the containers of
// the entries at positions made of idx, into out: after their leases were
// taken, so that the values loaded next are stored under a generation
// that no invalidation deleted before they were loaded. It is a round
// trip of its own, made only where a container has no generation (the
// first load of a memo or hash, or one after it was invalidated whole), so
// that the common load does not write the generation at all.
func (m *Manager) makeGens(ctx context.Context, es []entry, idx, made []int, out []acquired) error {
	cmds := make(map[string]*redis.StringCmd)
	_, err := m.pipe(ctx, es[idx[made[0]]].st, func(p redis.Pipeliner) {
		for _, j := range made {
			g := es[idx[j]].ref.gen
			if cmds[g] == nil {
				p.SetNX(ctx, g, newGen(), 0)
				cmds[g] = p.Get(ctx, g)
			}
		}
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	for _, j := range made {
		// "" when an invalidation deleted it again at once: the store is
		// then refused.
		out[j].gen = cmds[es[idx[j]].ref.gen].Val()
	}
	return nil
}

// replyAt returns the at-th string of cmd's reply (an MGET's or HMGET's;
// a GET's when at is 0), "" for a nil, and false for a malformed reply.
func replyAt(cmd redis.Cmder, at int) (string, bool) {
	switch c := cmd.(type) {
	case *redis.StringCmd:
		return c.Val(), true
	case *redis.SliceCmd:
		res := c.Val()
		if len(res) <= at {
			return "", false
		}
		s, _ := res[at].(string)
		return s, true
	}
	return "", false
}

// releaseMany gives up the leases of the entries idx of es, held with hd's
// tokens, in one round trip (one per node), on a context of its own: it
// also runs when the load's context has ended. It runs in the background,
// so that the callers of a failed load do not wait for it, or at once
// after Close.
func (m *Manager) releaseMany(es []entry, idx []int, hd *held) {
	if m.goBackground(func() { m.releaseManyNow(es, idx, hd) }) {
		return
	}
	m.releaseManyNow(es, idx, hd)
}

func (m *Manager) releaseManyNow(es []entry, idx []int, hd *held) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	groups := m.scriptGroups(es, idx)
	calls := make([]scriptCall, len(groups))
	for g, group := range groups {
		keys := make([]string, 2*len(group)) // the leases, then their marks
		for k, i := range group {
			keys[k], keys[len(group)+k] = es[i].ref.lease, es[i].ref.lease+awaitedSuffix
			calls[g].args = append(calls[g].args, hd.token)
		}
		calls[g].keys = keys
		calls[g].args = append(calls[g].args, m.notes.channelOf(es[group[0]].ref.lease), m.notes.publisher())
	}
	if _, err := m.evalMany(ctx, es[idx[0]].st, scripts.ReleaseMany, calls); err != nil {
		m.log.Warn("cache: releasing leases failed; they expire on their own", "leases", len(idx), "err", err)
	}
}

// stored is what became of a loaded value's store.
type stored struct {
	at     time.Time // when the store call began; zero when nothing was stored
	voided bool      // an invalidation voided the store
	err    error     // why the store failed, when Redis failed it
}

// write is the store of one loaded entry.
type write struct {
	i    int    // the entry's index
	b    []byte // its stored form
	keep time.Duration
}

// loadAndStore runs the loader once for the entries idx of es, whose
// leases hd holds, and stores their values; finish is called for each.
func loadAndStore[T any](ctx context.Context, m *Manager, es []entry, idx []int, hd *held, l batchLoader[T], finish finishFunc) {
	st := es[idx[0]].st
	began := time.Now()
	stop := m.keepLeases(ctx, es, idx, hd)
	ctl := &loadControl{}
	vals, took, lerr := callLoader(withControl(ctx, ctl), st, l, idx)
	stop()
	now := m.now()
	outs := make([]outcome[T], len(es)) // by entry index
	var writes []write
	var unstored []int
	for _, i := range idx {
		o, w := encodeLoaded(m, &es[i], hd.wants[i], vals, i, lerr, ctl, now, took)
		outs[i] = o
		if w.b == nil || ctl.dontStore.Load() {
			unstored = append(unstored, i)
			continue
		}
		writes = append(writes, w)
	}
	if len(unstored) > 0 {
		m.releaseMany(es, unstored, hd)
		for _, i := range unstored {
			// Not stored: nothing vouches for the value but its load.
			o := outs[i]
			finish(i, valueOf(o), began, o.err)
		}
	}
	if len(writes) == 0 {
		return
	}
	results := m.storeMany(ctx, es, writes, hd)
	var failed []int
	for j, w := range writes {
		if results[j].err != nil {
			failed = append(failed, w.i)
		}
	}
	if len(failed) > 0 {
		// The store may not have run: give the leases up, so that other
		// callers do not wait for them until they expire.
		m.releaseMany(es, failed, hd)
	}
	for j, w := range writes {
		o, r := outs[w.i], results[j]
		at := r.at
		switch {
		case r.voided:
			st.add(EventVoidedStore, 1)
			at = began
		case hd.force:
			if r.err != nil && o.err == nil {
				o.err = notStored(r.err)
			}
			at = began
		case r.at.IsZero() && !unreachable(r.err):
			// Redis answered the store with an error (out of memory, say):
			// as for a voided store, nothing vouches for the value.
			at = began
		}
		finish(w.i, valueOf(o), at, o.err)
	}
}

// encodeLoaded returns the outcome of entry i of a load, given the
// loader's values and error, and its store (no bytes for none).
func encodeLoaded[T any](m *Manager, e *entry, want expect, vals map[int]T, i int, lerr error, ctl *loadControl, now time.Time, took time.Duration) (outcome[T], write) {
	lerr = errorOf(lerr, i)
	v, ok := vals[i]
	o := outcome[T]{v: v, has: ok}
	s := *e.s
	if d := ctl.ttl.Load(); d > 0 {
		s.ttl, s.noExpiry = time.Duration(d), false
	}
	ttl := s.expiry()
	h := envelope.Header{Gen: parseGen(want.gen), Tags: tagSection(e.tags, want.gens)}
	w := write{i: i}
	switch {
	case errors.Is(lerr, ErrNotFound) || !ok && lerr == nil && e.s.rememberMissing:
		o = outcome[T]{err: ErrNotFound}
		ttl = m.opts.NegativeTTL
		w.b = m.negative(now, ttl, h)
		w.keep = ttl
		return o, w
	case !ok && lerr != nil:
		o.err = lerr
		return o, w
	case !ok:
		o.err = errLeftOut
		return o, w
	}
	h.WrittenAt = now.UnixMilli()
	h.FreshUntil = freshUntil(now, ttl)
	h.LoadDuration = uint64(took.Microseconds())
	b, err := m.encode(v, h)
	if err != nil {
		return outcome[T]{err: err}, w
	}
	w.b, w.keep = b, s.keep(ttl)
	return o, w
}

// storeMany stores writes, each only while its entry's lease is hd's, in
// one round trip (one per node), and then, for the entries with tags,
// checks that their tags did not move while they loaded. It returns what
// became of each write.
func (m *Manager) storeMany(ctx context.Context, es []entry, writes []write, hd *held) []stored {
	st := es[writes[0].i].st
	force := "0"
	if hd.force {
		force = "1"
	}
	idx := make([]int, len(writes))
	at := make([]int, len(es)) // entry index -> index in writes
	for j, w := range writes {
		idx[j], at[w.i] = w.i, j
		m.pending.stored(w.keep)
	}
	groups := m.storeGroups(es, idx, hd)
	calls := make([]scriptCall, len(groups))
	for g, group := range groups {
		first := &es[group[0]]
		// The generation, the keys, the leases, then the leases' marks.
		g0 := 0
		if first.ref.gen != "" {
			g0 = 1
		}
		n := len(group)
		keys := make([]string, g0+3*n)
		if g0 == 1 {
			keys[0] = first.ref.gen
		}
		fields := "0"
		per := 2
		if first.ref.field != "" {
			fields, per = "1", 3
		}
		args := make([]any, 6, 6+per*len(group))
		args[0], args[1], args[2] = force, m.notes.channelOf(first.ref.lease), m.notes.publisher()
		args[3], args[4], args[5] = hd.token, hd.wants[group[0]].gen, fields
		for k, i := range group {
			e, w := &es[i], writes[at[i]]
			keys[g0+k], keys[g0+n+k], keys[g0+2*n+k] = e.ref.key, e.ref.lease, e.ref.lease+awaitedSuffix
			if per == 3 {
				args = append(args, e.ref.field)
			}
			args = append(args, w.b, max(w.keep.Milliseconds(), 0))
		}
		calls[g] = scriptCall{keys: keys, args: args}
	}
	storeAt := time.Now()
	cmds, _ := m.evalMany(ctx, st, scripts.StoreMany, calls)
	replies := make([]int64, len(writes)) // by index in writes
	errs := make([]error, len(writes))
	for g, group := range groups {
		ns, err := cmds[g].Int64Slice()
		if err == nil && len(ns) != len(group) {
			err = errors.New("cache: unexpected reply from the store script")
		}
		for j, i := range group {
			if err != nil {
				errs[at[i]] = err
				continue
			}
			replies[at[i]] = ns[j]
		}
	}
	results := make([]stored, len(writes))
	var tags []string // the tags of the stored entries
	for j, w := range writes {
		n, err := replies[j], errs[j]
		switch {
		case err != nil:
			m.log.Warn("cache: storing a loaded value failed", "key", es[w.i].ref.key, "field", es[w.i].ref.field, "err", err)
			results[j].err = err
		case n == 0:
			results[j].voided = true
		default:
			results[j].at = storeAt
			st.add(EventSet, 1)
			for _, t := range es[w.i].tags {
				if !slices.Contains(tags, t) {
					tags = append(tags, t)
				}
			}
		}
	}
	if len(tags) == 0 {
		return results
	}
	// An invalidation of a tag does not void the lease: check that none
	// came while the values loaded, before the callers that joined
	// meanwhile take them.
	now, err := m.readTagGens(ctx, st, tags)
	for j, w := range writes {
		want := hd.wants[w.i]
		if results[j].at.IsZero() || len(want.tags) == 0 {
			continue
		}
		for k, t := range want.tags {
			if err != nil || now[slices.Index(tags, t)] != want.gens[k] {
				results[j].voided = true
				break
			}
		}
	}
	return results
}

// storeGroups splits the entries idx of es into the calls of the store
// script: those of one hash slot (see scriptGroups) checked against the
// same generation, and all hash fields or all strings, as the script
// takes them.
func (m *Manager) storeGroups(es []entry, idx []int, hd *held) [][]int {
	type part struct {
		gen, want string
		field     bool
	}
	var out [][]int
	for _, group := range m.scriptGroups(es, idx) {
		var parts map[part]int // -> index in out
		for _, i := range group {
			p := part{es[i].ref.gen, hd.wants[i].gen, es[i].ref.field != ""}
			if p.gen == "" {
				p.want = "" // not checked
			}
			k, ok := parts[p]
			if !ok {
				if parts == nil {
					parts = make(map[part]int, 1)
				}
				k = len(out)
				parts[p] = k
				out = append(out, nil)
			}
			out[k] = append(out[k], i)
		}
	}
	return out
}

// valueOf returns o's value boxed, nil when o has none.
func valueOf[T any](o outcome[T]) any {
	if !o.has {
		return nil
	}
	return o.v
}

// notStored is the error of a forced load (Refresh) whose value Redis did
// not store, the old value staying: cause is Redis's error.
func notStored(cause error) error {
	return wrap(unavailable(cause), "the refreshed value was not stored")
}

// degrade finishes the entries idx of es by running the loader without the
// cache, Redis having failed with cause (or the job's ctx having ended).
// The values are not stored. When Redis cannot be reached, every caller
// waiting for the flights takes them (their time is zero), so that an
// outage does not multiply the loads (but for a forced load, which goes to
// the callers that joined before it began, as ever). When Redis answered
// with an error (a script refused during a cluster slot migration, say), it
// is up for other processes, whose invalidations this process does not
// see: as for a voided store, only the callers that joined before the load
// began take the values.
func degrade[T any](ctx context.Context, m *Manager, es []entry, idx []int, hd *held, l batchLoader[T], cause error, finish finishFunc) {
	if ctx.Err() != nil {
		for _, i := range idx {
			finish(i, nil, time.Time{}, context.Cause(ctx))
		}
		return
	}
	st := es[idx[0]].st
	st.add(EventDegraded, uint64(len(idx)))
	m.log.Debug("cache: redis failed during a load; loading without the cache", "key", es[idx[0]].ref.key, "entries", len(idx), "err", cause)
	began := time.Now()
	vals, _, lerr := callLoader(ctx, st, l, idx)
	for _, i := range idx {
		lerr := errorOf(lerr, i)
		v, ok := vals[i]
		o := outcome[T]{v: v, has: ok}
		switch {
		case errors.Is(lerr, ErrNotFound) || !ok && lerr == nil && es[i].s.rememberMissing:
			o = outcome[T]{err: ErrNotFound}
		case !ok && lerr != nil:
			o.err = lerr
		case !ok:
			o.err = errLeftOut
		}
		switch {
		case hd.force:
			if o.err == nil {
				o.err = notStored(cause)
			}
			finish(i, valueOf(o), began, o.err)
		case unreachable(cause):
			finish(i, valueOf(o), time.Time{}, o.err)
		default:
			finish(i, valueOf(o), began, o.err)
		}
	}
}

// callLoader runs l for the entries idx, turning a panic into a
// *PanicError, and counts it.
func callLoader[T any](ctx context.Context, st *counters, l batchLoader[T], idx []int) (vals map[int]T, took time.Duration, err error) {
	st.loading()
	start := time.Now()
	defer func() {
		took = time.Since(start)
		if r := recover(); r != nil {
			vals, err = nil, &PanicError{Value: r, Stack: debug.Stack()}
		}
		st.loaded(ctx, took, err)
		if err != nil && !errors.Is(err, ErrNotFound) {
			st.add(EventLoadError, 1)
		}
	}()
	defer pause(ctx)() // the loader's time is not the Redis budget's
	vals, err = l(ctx, idx)
	return vals, 0, err
}

// keepLeases renews the leases of the entries idx of es, held with hd's
// tokens, every LeaseTTL/3 (in one round trip per node) until the returned
// function is called; that function waits for the renewals to stop.
func (m *Manager) keepLeases(ctx context.Context, es []entry, idx []int, hd *held) func() {
	every := m.opts.LeaseTTL / 3
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		var calls []scriptCall // made at the first renewal: most loads end sooner
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if calls == nil {
					calls = make([]scriptCall, len(idx))
					for j, i := range idx {
						calls[j] = scriptCall{keys: []string{es[i].ref.lease}, args: []any{hd.token, m.opts.LeaseTTL.Milliseconds()}}
					}
				}
				// A lease found void stays void: its store will be refused.
				_, _ = m.evalMany(ctx, es[idx[0]].st, scripts.Renew, calls)
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// Loader control.

// loadControl is what a loader says of the values it returns, through its
// context (SetTTL, DontStore).
type loadControl struct {
	ttl       atomic.Int64 // nanoseconds; 0 for the call's TTL
	dontStore atomic.Bool
}

type loadControlKey struct{}

func withControl(ctx context.Context, c *loadControl) context.Context {
	return context.WithValue(ctx, loadControlKey{}, c)
}

// SetTTL, called by a loader with the context it was given, stores the
// values it returns for d (jitter applied) instead of the TTL of the call
// or memo: a value can say how long it stays valid, such as a token that
// expires. A d that is not positive, or a ctx that is not a loader's, does
// nothing. For a batch loader it applies to every value of the call.
func SetTTL(ctx context.Context, d time.Duration) {
	if c, ok := ctx.Value(loadControlKey{}).(*loadControl); ok && d > 0 {
		c.ttl.Store(int64(d))
	}
}

// DontStore, called by a loader with the context it was given, makes the
// values it returns go to its callers without being stored: a partial or
// degraded answer that the next read should load again. A ctx that is not
// a loader's does nothing. For a batch loader it applies to every value of
// the call.
func DontStore(ctx context.Context) {
	if c, ok := ctx.Value(loadControlKey{}).(*loadControl); ok {
		c.dontStore.Store(true)
	}
}

// newToken returns a lease token.
func newToken() string { return rand.Text() }

const releaseTimeout = time.Second

// sleep waits d (with up to 25% jitter, so pollers spread out) or until ctx
// ends.
func sleep(ctx context.Context, d time.Duration) error {
	defer pause(ctx)() // waiting is not spending the Redis budget
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
