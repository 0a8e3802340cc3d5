package cache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// The failover test: a fleet of Managers, each on its own ClusterClient,
// loads, sets, invalidates (every kind of target) and takes fenced locks on
// a cluster of three masters with a replica each, with the local tier on,
// while masters fail over: planned (CLUSTER FAILOVER on the replica) and
// unplanned (the master killed with SIGKILL; its replica takes over after
// the node timeout, 1s).
//
// After each failover it measures, for keys and locks in the failed
// master's slots, when a fresh ClusterClient (no Manager) first wrote
// there, and when each Manager's Set, Invalidate and TryLock last failed,
// and it requires the Managers to be back within failoverSlack of the fresh
// client. It counts the fleet's failed calls around each failover, and
// checks fences: a lock held when its master failed over is, once its
// lease ends, taken by another with a higher fence, and a resource that
// keeps the highest fence refuses the stale holder's write.
//
// The short run (one unplanned and one planned failover, with the
// README's recommended client settings) is part of the test suite;
// STOCKPOT_LONG fails every master over both ways, with the recommended
// settings and with go-redis's defaults.

// failoverSlack is how long after a fresh ClusterClient wrote to a failed
// master's slots the Managers may still fail there. go-redis's client
// reloads its slots by itself only on a redirect, or once a minute
// (ClusterStateReloadInterval): a Manager that waited for that would take
// up to a minute.
const failoverSlack = 10 * time.Second

// probeFor bounds how long the probes of one failover run.
const probeFor = 45 * time.Second

func TestClusterFailover(t *testing.T) {
	c := testredis.StartReplicatedCluster(t)
	long := os.Getenv("STOCKPOT_LONG") != "" && os.Getenv("STOCKPOT_LONG") != "0"
	settings := []struct {
		name string
		mod  func(*redis.ClusterOptions)
	}{
		{"recommended", func(o *redis.ClusterOptions) {
			o.DialTimeout, o.ReadTimeout, o.WriteTimeout = 500*time.Millisecond, 500*time.Millisecond, 500*time.Millisecond
			o.ContextTimeoutEnabled = true
		}},
		{"go-redis-defaults", func(o *redis.ClusterOptions) {
			o.DialTimeout, o.ReadTimeout, o.WriteTimeout = 0, 0, 0
		}},
	}
	if !long {
		settings = settings[:1]
	}
	for _, s := range settings {
		t.Run(s.name, func(t *testing.T) { runFailovers(t, c, s.mod, long) })
	}
}

// foFleet is the fleet of the failover test.
type foFleet struct {
	c      *testredis.Cluster
	raw    *redis.ClusterClient
	mgrs   []*Manager // the workers'
	probed []*Manager // the probes': mgrs, and one without a breaker
	memo   []*Memo[int, int64]
	hash   []*Hash[int64]
	log    opLog
	res    fencedResource

	src [foItems]atomic.Int64
}

const (
	foManagers = 3
	foItems    = 200
	foLockTTL  = 2 * time.Second
)

// opLog records the outcome of each call of the fleet's workers.
type opLog struct {
	mu  sync.Mutex // protects ops
	ops []opResult
}

type opResult struct {
	kind  string
	start time.Time
	err   error
}

func (l *opLog) add(kind string, start time.Time, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ops = append(l.ops, opResult{kind, start, err})
}

// fencedResource is a resource protected by locks: it keeps the highest
// fence it has accepted per lock, and refuses a write with a lower one.
type fencedResource struct {
	mu       sync.Mutex // protects highest
	highest  map[string]int64
	refused  atomic.Int64
	accepted atomic.Int64
}

func (r *fencedResource) write(name string, fence int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.highest == nil {
		r.highest = make(map[string]int64)
	}
	if fence < r.highest[name] {
		r.refused.Add(1)
		return false
	}
	r.highest[name] = fence
	r.accepted.Add(1)
	return true
}

func runFailovers(t *testing.T, c *testredis.Cluster, mod func(*redis.ClusterOptions), long bool) {
	f := &foFleet{c: c, raw: c.Client(t)}
	for range foManagers {
		m, err := New(c.ClientWith(t, mod), &Options{Prefix: "fo", Local: &LocalOptions{}})
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, m) })
		f.mgrs = append(f.mgrs, m)
		f.memo = append(f.memo, Memoize(m, "memo", func(ctx context.Context, arg int) (int64, error) {
			return f.src[arg].Load(), nil
		}, TTL(time.Hour), TagsFor(func(arg int) []string { return []string{"tag" + strconv.Itoa(arg%4)} })))
		f.hash = append(f.hash, NewHash[int64](m, "hash", TTL(time.Hour)))
	}
	// A Manager the workers do not use, without a breaker, probed only: no
	// call of another kind (a Prefix or Tag invalidation, which asks for
	// the masters) makes its client reload the cluster's slots.
	quiet, err := New(c.ClientWith(t, mod), &Options{Prefix: "fo", Breaker: BreakerOptions{Failures: -1}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, quiet) })
	f.probed = append(slices.Clone(f.mgrs), quiet)
	// One slot of each master, and names of keys and locks in it.
	shards := f.shardNames(t)

	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	f.startWorkers(ctx, &wg)
	defer func() {
		stop()
		testredis.Wait(t, &wg, "the fleet's workers to stop")
	}()

	type round struct {
		shard   int
		planned bool
	}
	rounds := []round{{0, false}, {1, true}}
	if long {
		rounds = nil
		for s := range shards {
			rounds = append(rounds, round{s, false}, round{s, true})
		}
	}
	for _, r := range rounds {
		sh := shards[r.shard]
		kind := "unplanned"
		if r.planned {
			kind = "planned"
		}
		stale := f.holdLock(t, sh.lock)
		failovers := make(chan testredis.Failover, 1)
		probes := f.startProbes(sh, failovers)
		var fo testredis.Failover
		if r.planned {
			fo = c.Failover(t, sh.slot)
		} else {
			fo = c.KillMaster(t, sh.slot)
		}
		failovers <- fo
		var p probeResult
		select {
		case p = <-probes:
		case <-time.After(probeFor + testredis.Timeout):
			t.Fatalf("the probes of the %s failover did not end within %v", kind, probeFor+testredis.Timeout)
		}
		f.report(t, kind, sh, fo, p)
		f.checkFences(t, kind, sh, stale)
		if !r.planned {
			c.Restart(t, fo.Old)
		}
	}
	t.Logf("fenced resource: %d writes accepted, %d refused", f.res.accepted.Load(), f.res.refused.Load())
}

// shard names one slot of a master, with a key, a lock name and a hash
// field whose entries are in it.
type shard struct {
	slot int
	key  string // a plain key
	lock string // a lock name
}

// shardNames returns a shard for each master.
func (f *foFleet) shardNames(t *testing.T) []shard {
	ctx := t.Context()
	m := f.mgrs[0]
	slotOf := func(k string) int {
		s, err := f.raw.ClusterKeySlot(ctx, k).Result()
		require.NoError(t, err)
		return int(s)
	}
	var out []shard
	owners := map[int]bool{}
	for i := 0; len(out) < 3; i++ {
		require.Less(t, i, 1000, "no key in every master's slots")
		key := "probe" + strconv.Itoa(i)
		slot := slotOf(m.entryKey(key))
		owner := f.c.SlotOwner(t, slot)
		if owners[owner] {
			continue
		}
		owners[owner] = true
		out = append(out, shard{slot: slot, key: key})
	}
	for j := range out {
		owner := f.c.SlotOwner(t, out[j].slot)
		for i := 0; out[j].lock == ""; i++ {
			require.Less(t, i, 1000, "no lock name in a master's slots")
			name := "probe-lock" + strconv.Itoa(i)
			if f.c.SlotOwner(t, slotOf(m.lockKey(name))) == owner {
				out[j].lock = name
			}
		}
	}
	return out
}

// startWorkers starts the fleet's load: readers (GetOrLoad, Memo.Get,
// Hash.GetOrLoad, with the local tier), a writer (Set, Hash.Set), an
// invalidator (every kind of target) and lockers, each call on a random
// Manager, until ctx ends.
func (f *foFleet) startWorkers(ctx context.Context, wg *sync.WaitGroup) {
	loop := func(do func(ctx context.Context, i, j int)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				octx, cancel := context.WithTimeout(ctx, 2*time.Second)
				do(octx, rand.IntN(foItems), rand.IntN(foManagers))
				cancel()
				pauseCtx(ctx, time.Duration(rand.IntN(2000))*time.Microsecond)
			}
		})
	}
	record := func(ctx context.Context, kind string, start time.Time, err error) {
		if ctx.Err() == nil || !errors.Is(err, ctx.Err()) {
			f.log.add(kind, start, err)
		}
	}
	for range 6 {
		loop(func(ctx context.Context, i, j int) {
			start := time.Now()
			var err error
			switch i % 3 {
			case 0:
				_, err = GetOrLoad(ctx, f.mgrs[j], "k"+strconv.Itoa(i), func(context.Context) (int64, error) {
					return f.src[i].Load(), nil
				}, TTL(time.Hour), Tags("tag"+strconv.Itoa(i%4)))
			case 1:
				_, err = f.memo[j].Get(ctx, i)
			default:
				_, err = f.hash[j].GetOrLoad(ctx, "f"+strconv.Itoa(i), func(context.Context, string) (int64, error) {
					return f.src[i].Load(), nil
				})
			}
			record(ctx, "read", start, err)
		})
	}
	loop(func(ctx context.Context, i, j int) {
		start := time.Now()
		v := f.src[i].Add(1)
		var err error
		if i%2 == 0 {
			err = f.mgrs[j].Set(ctx, "k"+strconv.Itoa(i), v, TTL(time.Hour), Tags("tag"+strconv.Itoa(i%4)))
		} else {
			err = f.hash[j].Set(ctx, "f"+strconv.Itoa(i), v)
		}
		record(ctx, "set", start, err)
	})
	loop(func(ctx context.Context, i, j int) {
		start := time.Now()
		f.src[i].Add(1)
		targets := []Target{
			Key("k" + strconv.Itoa(i)), Tag("tag" + strconv.Itoa(i%4)), Prefix("k" + strconv.Itoa(i%10)),
			f.hash[j].Field("f" + strconv.Itoa(i)), f.hash[j].AllFields(), f.memo[j].Entry(i), f.memo[j].All(),
		}
		err := f.mgrs[j].Invalidate(ctx, targets[rand.IntN(len(targets))])
		record(ctx, "invalidate", start, err)
	})
	for range 2 {
		loop(func(ctx context.Context, i, j int) {
			start := time.Now()
			name := "lk" + strconv.Itoa(i%8)
			l, err := f.mgrs[j].TryLock(ctx, name, foLockTTL)
			if errors.Is(err, ErrNotObtained) && ctx.Err() == nil {
				err = nil
			}
			record(ctx, "lock", start, err)
			if l != nil {
				f.res.write(name, l.Fence())
				_ = l.Release(ctx)
			}
		})
	}
}

// probeResult is what the probes of one failover found.
type probeResult struct {
	fresh          time.Time            // when the fresh clients' writes last began to succeed
	freshNeverFail bool                 // no fresh client's write failed
	recovered      map[string]time.Time // by "Manager i op": when its first call began after which none failed
	failed         map[string]int       // by "Manager i op": its failed calls
	lastErr        map[string]error
	timedOut       bool
}

// probeOps are the calls the probes make on each Manager.
var probeOps = []string{"Set", "Invalidate", "TryLock"}

// probeOutcome is what one probe found.
type probeOutcome struct {
	name      string
	recovered time.Time // when its first call began after which none failed; zero if the last failed
	failed    int
	lastErr   error
	done      bool // it succeeded as often as it had to after the failover ended
}

// startProbes probes the shard's slots every 50ms, each probe on a
// goroutine of its own: every Manager's Set, Invalidate and TryLock, and a
// fresh ClusterClient's write. Once the failover it is sent has ended, a
// probe of a Manager stops when it has succeeded 20 times in a row since,
// the fresh client's when it has written once since; all stop when probeFor
// has passed. Then it sends what they found.
func (f *foFleet) startProbes(sh shard, failovers <-chan testredis.Failover) <-chan probeResult {
	out := make(chan probeResult, 1)
	ended := make(chan struct{}) // closed once fo is set
	var fo testredis.Failover
	deadline := time.Now().Add(probeFor)
	go func() {
		select {
		case fo = <-failovers:
			close(ended)
		case <-time.After(probeFor):
		}
	}()
	probe := func(name string, need int, call func() error) probeOutcome {
		o := probeOutcome{name: name}
		after := 0 // successes in a row that began after the failover ended
		for {
			start := time.Now()
			if err := call(); err != nil {
				o.failed++
				o.lastErr = err
				o.recovered = time.Time{}
				after = 0
			} else {
				if o.recovered.IsZero() {
					o.recovered = start
				}
				select {
				case <-ended:
					if start.After(fo.Done) {
						after++
					}
				default:
				}
			}
			if o.done = after >= need; o.done || time.Now().After(deadline) {
				return o
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	rawKey := f.mgrs[0].entryKey(sh.key) + ":fresh"
	outcomes := make(chan probeOutcome)
	n := 1
	go func() { outcomes <- probe("fresh", 1, func() error { return f.freshWrite(rawKey) }) }()
	for i, m := range f.probed {
		for _, op := range probeOps {
			n++
			go func() {
				outcomes <- probe(fmt.Sprintf("Manager %d %s", i, op), 20, func() error { return probeOp(m, op, sh) })
			}()
		}
	}
	go func() {
		res := probeResult{recovered: map[string]time.Time{}, failed: map[string]int{}, lastErr: map[string]error{}}
		for range n {
			o := <-outcomes
			res.timedOut = res.timedOut || !o.done
			if o.name == "fresh" {
				res.fresh, res.freshNeverFail = o.recovered, o.failed == 0
				continue
			}
			if !o.recovered.IsZero() {
				res.recovered[o.name] = o.recovered
			}
			res.failed[o.name] = o.failed
			res.lastErr[o.name] = o.lastErr
		}
		out <- res
	}()
	return out
}

// freshWrite writes key with a new ClusterClient, with the recommended
// settings, as a process that starts after the failover would.
func (f *foFleet) freshWrite(key string) error {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:       f.c.Addrs(),
		DialTimeout: 500 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond,
		ContextTimeoutEnabled: true,
	})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return rdb.Set(ctx, key, "fresh", time.Minute).Err()
}

// probeOp makes one call of op on m, in the shard's slots: a TryLock that
// finds the lock held (by the stale holder of checkFences, or another
// probe) succeeded, as Redis answered.
func probeOp(m *Manager, op string, sh shard) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	switch op {
	case "Set":
		return m.Set(ctx, sh.key, int64(1), TTL(time.Minute))
	case "Invalidate":
		return m.Invalidate(ctx, Key(sh.key))
	}
	l, err := m.TryLock(ctx, sh.lock, time.Second)
	if errors.Is(err, ErrNotObtained) && ctx.Err() == nil {
		return nil
	}
	if err == nil {
		_ = l.Release(ctx)
	}
	return err
}

// report logs what the probes and the fleet's calls found around failover
// fo, and fails t when a Manager was not back within failoverSlack of the
// fresh client.
func (f *foFleet) report(t *testing.T, kind string, sh shard, fo testredis.Failover, p probeResult) {
	t.Helper()
	took := fo.Done.Sub(fo.Start)
	t.Logf("%s failover of %s (slot %d) to %s: the nodes agreed after %v", kind, f.c.Addrs()[fo.Old], sh.slot, f.c.Addrs()[fo.New], took.Round(time.Millisecond))
	ref := p.fresh
	switch {
	case p.freshNeverFail:
		t.Logf("  a fresh client's write never failed")
		ref = fo.Start
	case p.fresh.IsZero():
		t.Errorf("  a fresh client could not write in the failed master's slots %v after the failover began", probeFor)
		ref = fo.Done
	default:
		t.Logf("  fresh clients' writes succeeded from %v after the failover began on", p.fresh.Sub(fo.Start).Round(time.Millisecond))
	}
	names := make([]string, 0, len(p.failed)+len(p.recovered))
	for n := range p.recovered {
		names = append(names, n)
	}
	for n := range p.failed {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var worst, back time.Duration
	for _, n := range names {
		rec, ok := p.recovered[n]
		if !ok {
			t.Errorf("  %s: still failing %v after the failover began (%d failed probes, the last: %v)", n, probeFor, p.failed[n], p.lastErr[n])
			continue
		}
		after := rec.Sub(ref)
		worst = max(worst, after)
		back = max(back, rec.Sub(fo.Start))
		if after > failoverSlack {
			t.Errorf("  %s: back %v after the fresh client, want at most %v (%d failed probes, the last: %v)", n, after.Round(time.Millisecond), failoverSlack, p.failed[n], p.lastErr[n])
		}
	}
	if p.timedOut {
		t.Errorf("  the probes had not all succeeded 20 times in a row %v after the failover began", probeFor)
	}
	t.Logf("  the Managers' Set, Invalidate and TryLock in its slots all succeeded from %v after the failover began on, at most %v after the fresh clients (failed probes: %v)",
		back.Round(time.Millisecond), worst.Round(time.Millisecond), p.failed)
	f.reportCalls(t, fo)
}

// reportCalls logs the fleet's failed calls from the failover's start on,
// by kind, and how long after the start the last one began.
func (f *foFleet) reportCalls(t *testing.T, fo testredis.Failover) {
	t.Helper()
	f.log.mu.Lock()
	ops := f.log.ops
	f.log.ops = nil
	f.log.mu.Unlock()
	type tally struct {
		calls, failed int
		last          time.Duration
		first         error
	}
	by := map[string]*tally{}
	for _, op := range ops {
		if op.start.Before(fo.Start) {
			continue
		}
		tl := by[op.kind]
		if tl == nil {
			tl = &tally{}
			by[op.kind] = tl
		}
		tl.calls++
		if op.err != nil {
			tl.failed++
			tl.last = max(tl.last, op.start.Sub(fo.Start))
			if tl.first == nil {
				tl.first = op.err
			}
		}
	}
	for _, kind := range []string{"read", "set", "invalidate", "lock"} {
		if tl := by[kind]; tl != nil {
			t.Logf("  fleet %-10s %5d calls, %4d failed (%.1f%%), the last beginning %v after the failover began; first error: %v",
				kind, tl.calls, tl.failed, 100*float64(tl.failed)/float64(tl.calls), tl.last.Round(time.Millisecond), tl.first)
		}
	}
}

// staleHolder is a lock taken before a failover, whose holder then pauses.
type staleHolder struct {
	lock  *Lock
	taken time.Time
}

// holdLock takes the lock name on the first Manager, and writes its fence
// to the resource, before a failover of its master.
func (f *foFleet) holdLock(t *testing.T, name string) staleHolder {
	t.Helper()
	l, err := f.mgrs[0].TryLock(t.Context(), name, foLockTTL)
	require.NoError(t, err, "taking the lock %q before the failover", name)
	require.True(t, f.res.write(name, l.Fence()), "the resource refused the first holder of %q", name)
	return staleHolder{lock: l, taken: time.Now()}
}

// checkFences takes the lock the stale holder had once its lease has ended,
// on another Manager, and checks that the new holder's fence is higher and
// that the resource then refuses the stale holder's write.
func (f *foFleet) checkFences(t *testing.T, kind string, sh shard, stale staleHolder) {
	t.Helper()
	var l *Lock
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		var err error
		l, err = f.mgrs[1].TryLock(ctx, sh.lock, foLockTTL)
		return err == nil
	}, testredis.Timeout, 20*time.Millisecond, "after the %s failover, the lock %q was not taken again", kind, sh.lock)
	defer func() { _ = l.Release(t.Context()) }()
	if l.Fence() <= stale.lock.Fence() {
		t.Errorf("after the %s failover, the lock %q was granted again with fence %d, not above the stale holder's %d: the fence counter lost its increment",
			kind, sh.lock, l.Fence(), stale.lock.Fence())
	}
	require.True(t, f.res.write(sh.lock, l.Fence()), "the resource refused the new holder of %q", sh.lock)
	require.False(t, f.res.write(sh.lock, stale.lock.Fence()), "the resource took the stale holder's write to %q after the new holder's", sh.lock)
	t.Logf("  fences of %q: the stale holder's %d, the new holder's %d (taken %v after the stale one); the resource refused the stale holder",
		sh.lock, stale.lock.Fence(), l.Fence(), time.Since(stale.taken).Round(time.Millisecond))
}

// pauseCtx waits d or until ctx ends.
func pauseCtx(ctx context.Context, d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
}
