//go:build !race

// The slot-migration test runs without the race detector: go-redis v9.23's
// cluster pipeline, when a node's batch gets TRYAGAIN on its first command
// and MOVED or ASK on a later one, queues the later command for its retry
// twice (once for the redirect, once with the whole batch), so two of its
// goroutines read replies into one command. That race is go-redis's, and
// only a migration reaches it; .ci/run runs this file without -race.

package cache

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// versioned is a value that names its key and the version of the key's
// source it was loaded from.
type versioned struct {
	Key string
	Ver int64
}

// versions is a deterministic source of versioned values for n keys. Each
// key has one writer, which moves its version and then invalidates (or
// sets) the key; once that returns, it raises the key's floor to the new
// version. A read that starts after the floor was raised must get a value
// of at least that version: anything older is a stale value stored or
// served after the invalidation that voided it.
type versions struct {
	ver, floor []atomic.Int64
}

func newVersions(n int) *versions {
	return &versions{ver: make([]atomic.Int64, n), floor: make([]atomic.Int64, n)}
}

// logRecorder is a slog.Handler's writer that keeps the lines a Manager
// logs.
type logRecorder struct {
	mu    sync.Mutex // protects lines
	lines []string
}

func (r *logRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestClusterSlotMoveUnderLoad moves slots holding the cache's entries,
// leases, tag sets and locks between masters while a fleet of two Managers
// reads, loads, sets and invalidates keys, memo entries and hash fields, and
// takes locks, from 8 goroutines. It checks that every value returned is the
// right key's and never older than an invalidation that returned before the
// read began, that a lock is never held twice and its fences grow, and that
// no call fails and no load falls back to the loader for want of Redis.
func TestClusterSlotMoveUnderLoad(t *testing.T) {
	const (
		keys    = 64 // plain keys k0..k63; worker w writes those with i%workers == w
		args    = 64 // memo arguments 0..63, written likewise
		fields  = 32 // hash fields f0..f31, written likewise
		locks   = 4  // locks lk0..lk3
		workers = 8
		group   = "even" // the tag of the keys worker 0 writes
	)
	c := testredis.StartCluster(t)
	e := newEnv(t, &testredis.Backend{Name: "cluster", Cluster: c})
	ctx := t.Context()
	kv, mv, hv := newVersions(keys), newVersions(args), newVersions(fields)
	var (
		holders [locks]atomic.Int32 // callers inside each lock
		fences  [locks]atomic.Int64 // the last fence of each lock
	)

	logs := &logRecorder{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fleet := []*Manager{e.manager(&Options{Logger: logger}), e.manager(&Options{Logger: logger})}
	memos := make([]*Memo[int, versioned], len(fleet))
	for j, m := range fleet {
		memos[j] = Memoize(m, "scores", func(ctx context.Context, a int) (versioned, error) {
			return versioned{Key: fmt.Sprint("arg", a), Ver: mv.ver[a].Load()}, nil
		}, TTL(time.Hour))
	}
	hashes := make([]*Hash[versioned], len(fleet))
	for j, m := range fleet {
		hashes[j] = NewHash[versioned](m, "outlets", TTL(time.Hour))
	}
	loadField := func(_ context.Context, f string) (versioned, error) {
		var i int
		_, err := fmt.Sscanf(f, "f%d", &i)
		return versioned{Key: f, Ver: hv.ver[i].Load()}, err
	}
	keyName := func(i int) string { return fmt.Sprint("k", i) }
	keyOpts := func(i int) []Option {
		if i%workers == 0 {
			return []Option{TTL(time.Hour), Tags(group)}
		}
		return []Option{TTL(time.Hour)}
	}

	var (
		ops, wrong, failed atomic.Int64
		mu                 sync.Mutex // protects problems
		problems           []string
	)
	report := func(n *atomic.Int64, format string, a ...any) {
		n.Add(1)
		mu.Lock()
		defer mu.Unlock()
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, a...))
		}
	}
	check := func(what string, got versioned, wantKey string, floor int64, err error) {
		switch {
		case err != nil:
			report(&failed, "%s: %v", what, err)
		case got.Key != wantKey:
			report(&wrong, "%s: got %q's value", what, got.Key)
		case got.Ver < floor:
			report(&wrong, "%s: got version %d after version %d was invalidated", what, got.Ver, floor)
		}
	}

	stop := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	stopWorkers := func() {
		stopOnce.Do(func() { close(stop) })
		testredis.Wait(t, &wg, "the workers to stop")
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 42))
			for {
				select {
				case <-stop:
					return
				default:
				}
				ops.Add(1)
				m := fleet[r.IntN(len(fleet))]
				mm := memos[r.IntN(len(memos))]
				h := hashes[r.IntN(len(hashes))]
				switch op := r.IntN(120); {
				case op >= 100: // read, set or invalidate a hash field
					i := r.IntN(fields)
					f := fmt.Sprint("f", i)
					if op >= 110 {
						floor := hv.floor[i].Load()
						got, err := h.GetOrLoad(ctx, f, loadField)
						check("Hash.GetOrLoad "+f, got, f, floor, err)
						continue
					}
					i = w + workers*r.IntN(fields/workers)
					f = fmt.Sprint("f", i)
					v := hv.ver[i].Add(1)
					var err error
					if op%2 == 0 {
						err = h.Set(ctx, f, versioned{Key: f, Ver: v})
					} else {
						err = h.Delete(ctx, f)
					}
					if err != nil {
						report(&failed, "Hash.Set or Delete %s: %v", f, err)
						continue
					}
					hv.floor[i].Store(v)
				case op < 50: // read a key, loading it on a miss
					i := r.IntN(keys)
					floor := kv.floor[i].Load()
					got, err := GetOrLoad(ctx, m, keyName(i), func(context.Context) (versioned, error) {
						return versioned{Key: keyName(i), Ver: kv.ver[i].Load()}, nil
					}, keyOpts(i)...)
					check("GetOrLoad "+keyName(i), got, keyName(i), floor, err)
				case op < 80: // read a memo entry
					a := r.IntN(args)
					floor := mv.floor[a].Load()
					got, err := mm.Get(ctx, a)
					check(fmt.Sprint("Memo.Get ", a), got, fmt.Sprint("arg", a), floor, err)
				case op < 88: // set one of this worker's keys
					i := w + workers*r.IntN(keys/workers)
					v := kv.ver[i].Add(1)
					if err := m.Set(ctx, keyName(i), versioned{Key: keyName(i), Ver: v}, keyOpts(i)...); err != nil {
						report(&failed, "Set %s: %v", keyName(i), err)
						continue
					}
					kv.floor[i].Store(v)
				case op < 94: // invalidate one of this worker's keys
					i := w + workers*r.IntN(keys/workers)
					v := kv.ver[i].Add(1)
					if err := m.Invalidate(ctx, Key(keyName(i))); err != nil {
						report(&failed, "Invalidate %s: %v", keyName(i), err)
						continue
					}
					kv.floor[i].Store(v)
				case op < 97: // take a lock
					j := r.IntN(locks)
					err := m.WithLock(ctx, fmt.Sprint("lk", j), 5*time.Second, func(ctx context.Context) error {
						if n := holders[j].Add(1); n != 1 {
							report(&wrong, "lock lk%d held by %d callers", j, n)
						}
						defer holders[j].Add(-1)
						l, _ := LockFromContext(ctx)
						if prev := fences[j].Swap(l.Fence()); l.Fence() <= prev {
							report(&wrong, "lock lk%d: fence %d after %d", j, l.Fence(), prev)
						}
						return nil
					})
					if err != nil {
						report(&failed, "WithLock lk%d: %v", j, err)
					}
				case op < 99: // forget one of this worker's memo entries
					a := w + workers*r.IntN(args/workers)
					v := mv.ver[a].Add(1)
					if err := mm.Forget(ctx, a); err != nil {
						report(&failed, "Forget %d: %v", a, err)
						continue
					}
					mv.floor[a].Store(v)
				case w == 0: // invalidate the tag of worker 0's keys
					var bumped []int64
					for i := 0; i < keys; i += workers {
						bumped = append(bumped, kv.ver[i].Add(1))
					}
					if err := m.Invalidate(ctx, Tag(group)); err != nil {
						report(&failed, "Invalidate tag: %v", err)
						continue
					}
					for j, i := 0, 0; i < keys; i, j = i+workers, j+1 {
						kv.floor[i].Store(bumped[j])
					}
				}
			}
		}()
	}
	t.Cleanup(stopWorkers) // when the test ends early; before the Managers close
	waitOps := func(n int64) {
		t.Helper()
		require.Eventually(t, func() bool { return ops.Load() >= n }, testredis.Timeout, time.Millisecond,
			"the workers to do %d operations", n)
	}
	waitOps(2000) // every key and memo entry loaded, some invalidated

	// The slots to move: the memo's (all of its entries and leases), the
	// tag's set, those of worker 0's keys (with their leases), and the
	// locks'. Each is given filler keys, which make its migration take many
	// MIGRATE batches, so that calls find some of their keys moved and
	// some not yet.
	rdb := c.Client(t)
	m0 := fleet[0]
	inSlot := []string{memos[0].base, m0.tagKey(group), hashes[0].key}
	for i := 0; i < keys; i += workers {
		inSlot = append(inSlot, m0.entryKey(keyName(i)))
	}
	for j := range locks {
		inSlot = append(inSlot, m0.lockKey(fmt.Sprint("lk", j)))
	}
	var slots []int
	pipe := rdb.Pipeline()
	for i, k := range inSlot {
		s, err := rdb.ClusterKeySlot(ctx, k).Result()
		require.NoError(t, err)
		slots = append(slots, int(s))
		fill := 500
		if i == 0 {
			fill = 5000
		}
		tag := k[:strings.IndexByte(k, '}')+1]
		for f := range fill {
			pipe.Set(ctx, fmt.Sprint(tag, ":filler:", f), f, 0)
		}
	}
	_, err := pipe.Exec(ctx)
	require.NoError(t, err)
	slices.Sort(slots)
	slots = slices.Compact(slots)
	owners := make(map[int]int, len(slots))
	for _, s := range slots {
		owners[s] = c.SlotOwner(t, s)
	}

	before := ops.Load()
	start := time.Now()
	const rounds = 3 // each slot visits every master and comes home
	for r := 1; r <= rounds; r++ {
		for _, s := range slots {
			to := (owners[s] + r) % 3
			c.MoveSlot(t, s, to)
			require.Equal(t, to, c.SlotOwner(t, s))
		}
	}
	moving := time.Since(start)
	during := ops.Load() - before
	waitOps(ops.Load() + 2000) // and some more on the final layout
	stopWorkers()

	var st Counters
	for _, m := range fleet {
		st.add(m.Stats().Total)
	}
	t.Logf("%d slot moves in %v, %d operations during them, %d in all; hits %d, loads %d, voided stores %d, redis errors %d, degraded %d",
		rounds*len(slots), moving.Round(time.Millisecond), during, ops.Load(), st.Hits, st.Loads, st.VoidedStores, st.RedisErrors, st.Degraded)
	for _, p := range problems {
		t.Log(p)
	}
	logs.mu.Lock()
	for i, l := range logs.lines {
		if i == 20 {
			t.Logf("... and %d more log lines", len(logs.lines)-i)
			break
		}
		t.Log("log: " + l)
	}
	logs.mu.Unlock()
	assert.Zero(t, wrong.Load(), "wrong or stale values")
	assert.Zero(t, failed.Load(), "failed calls")
	assert.Zero(t, st.RedisErrors, "Redis errors behind the callers' backs")
	assert.Zero(t, st.Degraded, "loads that fell back to the loader")
	assert.Positive(t, during, "operations ran while slots moved")
	assert.Positive(t, st.Hits, "the cache served hits")
	for _, s := range slots {
		assert.Equal(t, owners[s], c.SlotOwner(t, s), "slot %d is home", s)
	}
}
