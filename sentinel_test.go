package cache_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	cache "github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/internal/scripts"
	"github.com/stockpot-go/cache/internal/testredis"
)

// Sentinel failover: the Manager keeps working after the master changes.
//
// Two Managers, each on a failover client of its own (redis.NewFailoverClient),
// load, write, invalidate and lock keys while a Sentinel set-up fails its
// master over: first a planned failover (SENTINEL FAILOVER), then an
// unplanned one (the master killed with SIGKILL). After each switch the test
// checks that the Managers work on the new master: a script call succeeds
// there although it never saw SCRIPT LOAD (the scripts are sent again), an
// invalidation by one Manager reaches the other's local tier (its
// subscription was restored), a load waited on in the other process ends
// with its lease notice (that subscription too), and both breakers are
// closed. It reports how long calls failed around each switch.
//
// The short variant (one planned failover, one unplanned) runs in the test
// suite; with STOCKPOT_LONG set, failovers of both kinds alternate for the
// duration checkDuration gives (30s for "1").

func TestSentinelFailoverManagers(t *testing.T) {
	st := testredis.StartSentinel(t)
	opts := cache.Options{
		Prefix: "fo",
		// Generous, for a busy machine: a failover, not a slow call, is what
		// should fail calls here.
		Timeout: time.Second,
		Local:   &cache.LocalOptions{TTL: time.Hour},
		// A lease notice is the only way a waiter learns of a load's end
		// within the test's bound: it polls every LeaseTTL/2.
		LeaseTTL: 30 * time.Second,
		// Opened by two failed calls, so that a failover opens it.
		Breaker: cache.BreakerOptions{Failures: 2, CoolDown: 200 * time.Millisecond},
	}
	work := &failoverWork{}
	opts.Observer = cache.ObserverFunc(work.observe)
	var mgrs [2]*cache.Manager
	for i := range mgrs {
		rdb := st.ClientWith(t, func(o *redis.FailoverOptions) {
			o.DialTimeout = 500 * time.Millisecond
			o.ReadTimeout = time.Second
			o.WriteTimeout = time.Second
		})
		mgrs[i] = newManager(t, rdb, &opts)
		require.Eventually(t, func() bool { return mgrs[i].Stats().Local.Subscribed }, testredis.Timeout, 5*time.Millisecond,
			"the local tier's subscription did not come up")
	}
	work.mgrs = mgrs
	fo := &failoverRun{t: t, st: st, mgrs: mgrs}
	fo.check("start") // everything works before any failover

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() { work.loop(t.Context(), w, stop) })
	}
	defer func() {
		close(stop)
		testredis.Wait(t, &wg, "the workers to stop")
	}()

	// The replica to be promoted never saw SCRIPT LOAD: a replica's script
	// cache is its own.
	for _, r := range st.Replicas(t) {
		exists, err := r.Client(t).ScriptExists(t.Context(), scripts.LockObtain.Hash()).Result()
		require.NoError(t, err)
		require.Equal(t, []bool{false}, exists, "the replica %s has the lock script before any failover", r.Addr())
	}
	planned := func() {
		_, took := st.Failover(t)
		fo.after("planned failover (SENTINEL FAILOVER)", time.Now().Add(-took), took, work)
	}
	unplanned := func() {
		killed, took := st.KillMaster(t)
		fo.after("unplanned failover (kill -9 of the master)", time.Now().Add(-took), took, work)
		st.Rejoin(t, killed)
	}
	if os.Getenv("STOCKPOT_LONG") == "" {
		planned()
		unplanned()
		return
	}
	until := time.Now().Add(checkDuration(t))
	for n := 0; time.Now().Before(until); n++ {
		if n%2 == 0 {
			planned()
		} else {
			unplanned()
		}
	}
}

// failoverRun checks the Managers after each switch.
type failoverRun struct {
	t    *testing.T
	st   *testredis.Sentinel
	mgrs [2]*cache.Manager
	n    int // checks made, to name their keys
}

// after checks the Managers after a switch that began at start and that the
// sentinels agreed on after took, and reports the failed calls since start.
func (fo *failoverRun) after(what string, start time.Time, took time.Duration, work *failoverWork) {
	t := fo.t
	t.Helper()
	master := fo.st.Master(t)
	newMaster := master.Client(t)
	// The new master was a replica, whose script cache is its own: the
	// first EVALSHA there finds nothing, and the Manager must send the
	// script whole and load them all again.
	testredis.Within(t, "the workers to pause", work.paused.Lock)
	fo.check(what)
	work.paused.Unlock()
	exists, err := newMaster.ScriptExists(t.Context(), scripts.LockObtain.Hash()).Result()
	require.NoError(t, err)
	require.Equal(t, []bool{true}, exists, "%s: the Managers loaded their scripts on the new master", what)

	f := work.failuresSince(start)
	t.Logf("%s: the sentinels named the new master %v after the fault; the workers' calls failed from %v to %v after it (%d failed calls of %d: %v); breaker opened %d times",
		what, took.Round(time.Millisecond), f.first.Round(time.Millisecond), f.last.Round(time.Millisecond), f.n, f.calls, f.byOp, f.opened)
}

// check makes each kind of call on each Manager and fails t when one does
// not work within testredis.Timeout: a lock (a script), a local-tier
// invalidation seen by the other Manager, a load waited on through a lease
// notice, and closed breakers.
func (fo *failoverRun) check(what string) {
	t := fo.t
	t.Helper()
	ctx := t.Context()
	fo.n++
	a, b := fo.mgrs[0], fo.mgrs[1]
	start := time.Now()

	// A script call works on the master.
	for i, m := range fo.mgrs {
		var lock *cache.Lock
		require.Eventually(t, func() bool {
			var err error
			lock, err = m.Lock(ctx, fmt.Sprintf("check-%d-%d", fo.n, i), 10*time.Second, cache.NoRetry())
			return err == nil
		}, testredis.Timeout, 10*time.Millisecond, "%s: Manager %d could not take a lock (a script) on the master", what, i)
		require.NoError(t, lock.Release(ctx), "%s: releasing Manager %d's lock", what, i)
	}
	scriptsAt := time.Since(start)

	// A load waited on in the other Manager ends with its lease notice.
	key := "lease-" + strconv.Itoa(fo.n)
	gate, started := make(chan struct{}), make(chan struct{})
	var once sync.Once
	type result struct {
		v   int64
		err error
	}
	held := make(chan result, 1)
	go func() {
		v, err := cache.GetOrLoad(ctx, a, key, func(ctx context.Context) (int64, error) {
			once.Do(func() { close(started) })
			return 7, await(ctx, gate)
		})
		held <- result{v, err}
	}()
	testredis.Recv(t, started, what+": Manager 0's loader to start")
	waited := make(chan result, 1)
	go func() {
		v, err := cache.GetOrLoad(ctx, b, key, func(context.Context) (int64, error) { return 8, nil })
		waited <- result{v, err}
	}()
	require.Eventually(t, func() bool { return b.Stats().Total.LeaseWaits > 0 }, testredis.Timeout, time.Millisecond,
		"%s: Manager 1 did not wait for Manager 0's lease", what)
	opened := time.Now()
	close(gate)
	r := testredis.Recv(t, held, what+": Manager 0's load")
	require.NoError(t, r.err)
	r = testredis.Recv(t, waited, what+": Manager 1's wait for Manager 0's load")
	require.NoError(t, r.err)
	require.Equal(t, int64(7), r.v, "%s: Manager 1 got Manager 0's value", what)
	noticeSeen := time.Since(opened)
	// Sooner than the poll every LeaseTTL/2 (15s): the notice came.
	require.Less(t, noticeSeen, 10*time.Second,
		"%s: Manager 1 learnt of the load's end by polling, not by a lease notice: its subscription did not follow the master", what)

	// The local tiers are subscribed again, and an invalidation by one
	// Manager reaches the other's.
	for i, m := range fo.mgrs {
		require.Eventually(t, func() bool { return m.Stats().Local.Subscribed }, testredis.Timeout, 5*time.Millisecond,
			"%s: Manager %d's local tier did not subscribe again", what, i)
	}
	subscribedAt := time.Since(start)
	key = "local-" + strconv.Itoa(fo.n)
	var version atomic.Int64
	version.Store(1)
	load := func(context.Context) (int64, error) { return version.Load(), nil }
	for i, m := range fo.mgrs {
		require.Eventually(t, func() bool {
			v, err := cache.GetOrLoad(ctx, m, key, load)
			return err == nil && v == 1
		}, testredis.Timeout, 10*time.Millisecond, "%s: Manager %d could not load %q", what, i, key)
	}
	require.Eventually(t, func() bool {
		hits := b.Stats().Total.LocalHits
		v, err := cache.GetOrLoad(ctx, b, key, load)
		return err == nil && v == 1 && b.Stats().Total.LocalHits > hits
	}, testredis.Timeout, 5*time.Millisecond, "%s: Manager 1 does not keep %q in its local tier", what, key)
	version.Store(2)
	invalidated := time.Now()
	require.NoError(t, a.Invalidate(ctx, cache.Key(key)), "%s: Manager 0 invalidating %q", what, key)
	require.Eventually(t, func() bool {
		v, err := cache.GetOrLoad(ctx, b, key, load)
		return err == nil && v == 2
	}, testredis.Timeout, 5*time.Millisecond,
		"%s: Manager 1 still serves version 1 of %q from its local tier %v after Manager 0's acknowledged invalidation: its subscription did not follow the master",
		what, key, testredis.Timeout)
	dropSeen := time.Since(invalidated)
	// Sentinel itself closes the old master's subscriptions only up to 10s
	// after a planned failover; the Manager must not wait for that.
	require.Less(t, dropSeen, 5*time.Second,
		"%s: Manager 1's local tier dropped %q only %v after Manager 0's invalidation: its subscription stayed on the old master", what, key, dropSeen)

	// The breakers are closed again.
	for i, m := range fo.mgrs {
		require.Eventually(t, func() bool { return m.BreakerState() == "closed" }, testredis.Timeout, 5*time.Millisecond,
			"%s: Manager %d's breaker is %s", what, i, m.BreakerState())
	}
	t.Logf("%s: a script call worked %v after the check began, the local tiers were subscribed after %v; the other Manager's local tier dropped an invalidated key %v after the invalidation; a lease notice came %v after the load ended",
		what, scriptsAt.Round(time.Millisecond), subscribedAt.Round(time.Millisecond), dropSeen.Round(time.Millisecond), noticeSeen.Round(time.Millisecond))
}

// failoverWork is the Managers' background work during the failovers:
// loads, sets, invalidations and locks on a few keys, each call recorded
// with its outcome.
type failoverWork struct {
	mgrs [2]*cache.Manager

	// paused is held for writing while the test checks the Managers, so
	// that the work's invalidations do not drop the local copies the
	// checks look for; each call holds it for reading.
	paused sync.RWMutex

	mu    sync.Mutex // protects calls
	calls []failoverCall
	// opened counts the breakers' moves to "open", told by the Managers'
	// Observer.
	opened atomic.Int64
}

// observe counts the breakers' moves to "open".
func (w *failoverWork) observe(e cache.Event) {
	if e.Kind == cache.EventBreakerState && e.Name == "open" {
		w.opened.Add(1)
	}
}

// failoverCall is one call of the work: its kind, when it returned, and
// whether it failed.
type failoverCall struct {
	op     string
	at     time.Time
	failed bool
}

// loop makes calls until stop is closed or ctx ends, through both Managers
// in turn.
func (w *failoverWork) loop(ctx context.Context, worker int, stop <-chan struct{}) {
	var n int64
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		w.paused.RLock()
		m := w.mgrs[i%2]
		key := fmt.Sprintf("work-%d", i%7)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var op string
		var err error
		switch i % 4 {
		case 0:
			op = "load"
			degraded := m.Stats().Total.Degraded
			_, err = cache.GetOrLoad(cctx, m, key, func(context.Context) (int64, error) { n++; return n, nil })
			if err == nil && m.Stats().Total.Degraded > degraded {
				// Answered by the loader alone, Redis failing (or another
				// worker's load on m was: close enough for a report).
				err = errors.New("degraded")
			}
		case 1:
			op = "set"
			n++
			err = m.Set(cctx, key, n)
		case 2:
			op = "invalidate"
			err = m.Invalidate(cctx, cache.Key(key))
		case 3:
			op = "lock"
			var l *cache.Lock
			l, err = m.Lock(cctx, fmt.Sprintf("work-lock-%d", worker), time.Second, cache.NoRetry())
			if errors.Is(err, cache.ErrNotObtained) {
				err = nil // held by a lock whose release failed: not a failure of this call
			} else if err == nil {
				err = l.Release(cctx)
			}
		}
		cancel()
		w.paused.RUnlock()
		if ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		w.calls = append(w.calls, failoverCall{op: op, at: time.Now(), failed: err != nil})
		w.mu.Unlock()
		if err != nil {
			time.Sleep(5 * time.Millisecond) // do not spin on a refusing breaker
		}
	}
}

// failures sums up the calls since a fault.
type failures struct {
	first, last time.Duration // from the fault to the first and last failed call
	n, calls    int
	byOp        map[string]int
	opened      int64
}

// failuresSince sums up the calls that returned since start.
func (w *failoverWork) failuresSince(start time.Time) failures {
	w.mu.Lock()
	defer w.mu.Unlock()
	f := failures{byOp: map[string]int{}, opened: w.opened.Swap(0)}
	for _, c := range w.calls {
		if c.at.Before(start) {
			continue
		}
		f.calls++
		if !c.failed {
			continue
		}
		d := c.at.Sub(start)
		if f.n == 0 {
			f.first = d
		}
		f.n++
		f.last = d
		f.byOp[c.op]++
	}
	return f
}
