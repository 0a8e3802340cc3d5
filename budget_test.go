package cache

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/scripts"
	"github.com/stockpot-go/cache/internal/testredis"
)

// The tests of a slow or silent Redis: a real redis-server behind a TCP
// fault proxy, and a client with go-redis's default timeouts (5s, with 3
// retries), which the callers' deadlines and the Manager's time budget
// must beat.

const (
	testBudget     = 150 * time.Millisecond
	testLoaderTime = 5 * time.Millisecond
	// slack is the scheduling noise allowed over a bound the tests check:
	// generous, as the tests share a small machine, and far below what
	// the bounds guard against (seconds).
	slack = 150 * time.Millisecond
)

// slowRedis returns a real redis-server, a fault proxy in front of it and a
// client through the proxy with go-redis's defaults, changed by mod when it
// is not nil.
func slowRedis(t *testing.T, mod func(*redis.Options)) (*testredis.Server, *testredis.Proxy, *redis.Client) {
	t.Helper()
	srv := testredis.Start(t)
	proxy := testredis.NewProxy(t, srv.Addr())
	o := &redis.Options{Addr: proxy.Addr()}
	if mod != nil {
		mod(o)
	}
	rdb := redis.NewClient(o)
	t.Cleanup(func() { _ = rdb.Close() })
	return srv, proxy, rdb
}

// slowManager returns a Manager on rdb with opts (Prefix "test" and
// Timeout testBudget unless they say otherwise), its scripts loaded. In
// cleanup the proxy lifts its faults and drops every connection, so that
// the commands callers stopped waiting for end, and then the Manager is
// closed, which must not have to give up waiting.
func slowManager(t *testing.T, proxy *testredis.Proxy, rdb redis.UniversalClient, opts Options) *Manager {
	t.Helper()
	if opts.Prefix == "" {
		opts.Prefix = "test"
	}
	if opts.Timeout == 0 {
		opts.Timeout = testBudget
	}
	m, err := New(rdb, &opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		proxy.SetBlackhole(false)
		proxy.SetLatency(0, 0)
		proxy.Reset()
		assert.NoError(t, m.Close(), "Close gave up waiting")
	})
	scriptsLoaded(t, m)
	// A connection in the pool before any fault: go-redis drops the first
	// one it makes to a redis-server 7.0 (which refuses a command of its
	// handshake), and a test should not time a dial unawares.
	require.NoError(t, rdb.Ping(t.Context()).Err())
	return m
}

// sleepLoader returns a loader of v that takes testLoaderTime (or until
// its ctx ends) and counts its calls in n.
func sleepLoader[T any](v T, n *atomic.Int64) func(context.Context) (T, error) {
	return func(ctx context.Context) (T, error) {
		n.Add(1)
		t := time.NewTimer(testLoaderTime)
		defer t.Stop()
		select {
		case <-t.C:
			return v, nil
		case <-ctx.Done():
			var zero T
			return zero, ctx.Err()
		}
	}
}

// sleepBatchLoader returns a batch loader that gives v for every missing
// key, takes testLoaderTime (or until its ctx ends) and counts its calls in
// n.
func sleepBatchLoader[T any](v T, n *atomic.Int64) func(context.Context, []string) (map[string]T, error) {
	load := sleepLoader(v, n)
	return func(ctx context.Context, missing []string) (map[string]T, error) {
		v, err := load(ctx)
		if err != nil {
			return nil, err
		}
		out := make(map[string]T, len(missing))
		for _, k := range missing {
			out[k] = v
		}
		return out, nil
	}
}

// timed returns how long f took, and the longest the process stalled
// meanwhile: how late a 1ms sleep on another goroutine woke up, at worst.
func timed(f func()) (took, stalled time.Duration) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			t0 := time.Now()
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
			stalled = max(stalled, time.Since(t0)-time.Millisecond)
		}
	})
	start := time.Now()
	f()
	took = time.Since(start)
	close(done)
	wg.Wait()
	return took, stalled
}

// within checks that a call that took took returned within bound, allowing
// for the stalls of the machine the test runs on (see timed), which are
// not the code's.
func within(t *testing.T, took, stalled, bound time.Duration, msgAndArgs ...any) {
	t.Helper()
	if stalled > 20*time.Millisecond {
		t.Logf("the process stalled for %v during a call that took %v", stalled.Round(time.Millisecond), took.Round(time.Millisecond))
	}
	assert.Less(t, took-stalled, bound, msgAndArgs...)
}

// TestCallerDeadlineHonoured: with 1.5s added to every round trip and no
// budget, each caller returns at its own deadline (200ms), whatever the
// client's timeouts, with an error that matches ctx.Err() (and
// ErrUnavailable for the calls that do not fall back to a loader).
func TestCallerDeadlineHonoured(t *testing.T) {
	for _, ctxTimeouts := range []bool{false, true} {
		t.Run(fmt.Sprint("ContextTimeoutEnabled=", ctxTimeouts), func(t *testing.T) {
			_, proxy, rdb := slowRedis(t, func(o *redis.Options) { o.ContextTimeoutEnabled = ctxTimeouts })
			m := slowManager(t, proxy, rdb, Options{Timeout: -1})
			ctx := t.Context()
			var loads atomic.Int64
			load := sleepLoader("v", &loads)
			memo := Memoize(m, "memo", func(ctx context.Context, n int) (string, error) { return load(ctx) })
			_, err := GetOrLoad(ctx, m, "warm", load)
			require.NoError(t, err)
			_, err = memo.Get(ctx, 1)
			require.NoError(t, err)

			proxy.SetLatency(0, 1500*time.Millisecond)
			const deadline = 200 * time.Millisecond
			calls := []struct {
				name string
				call func(ctx context.Context) error
				// plain: the call says Redis is unavailable too
				plain bool
			}{
				{"cold GetOrLoad", func(ctx context.Context) error { _, err := GetOrLoad(ctx, m, "cold", load); return err }, false},
				{"warm GetOrLoad", func(ctx context.Context) error { _, err := GetOrLoad(ctx, m, "warm", load); return err }, false},
				{"Memo.Get", func(ctx context.Context) error { _, err := memo.Get(ctx, 1); return err }, false},
				{"cold GetOrLoadMany", func(ctx context.Context) error {
					_, err := GetOrLoadMany(ctx, m, []string{"cold1", "cold2", "cold3"}, sleepBatchLoader("v", &loads))
					return err
				}, false},
				{"Get", func(ctx context.Context) error { return m.Get(ctx, "warm", new(string)) }, true},
				{"Set", func(ctx context.Context) error { return m.Set(ctx, "k", "v") }, true},
				{"Invalidate", func(ctx context.Context) error { return m.Invalidate(ctx, Key("warm"), Tag("t")) }, true},
			}
			for _, c := range calls {
				ctx, cancel := context.WithTimeout(ctx, deadline)
				var err error
				took, stalled := timed(func() { err = c.call(ctx) })
				cancel()
				t.Logf("%s: %v, %v", c.name, took.Round(time.Millisecond), err)
				assert.ErrorIs(t, err, context.DeadlineExceeded, c.name)
				if c.plain {
					assert.ErrorIs(t, err, ErrUnavailable, c.name)
				}
				within(t, took, stalled, deadline+slack, "%s returns at its caller's deadline", c.name)
			}
		})
	}
}

// TestBlackholeLoadedRead: a Redis that accepts connections and never
// answers costs a loaded read its budget and its loader, before the
// breaker opens and after, and the loader runs: not the client's timeouts,
// nor the caller's whole deadline (1s, well above the budget so that the
// machine's stalls do not make it the first to end).
func TestBlackholeLoadedRead(t *testing.T) {
	_, proxy, rdb := slowRedis(t, nil)
	m := slowManager(t, proxy, rdb, Options{Breaker: BreakerOptions{Failures: 3, CoolDown: time.Minute}})
	var loads atomic.Int64
	load := sleepLoader("from the loader", &loads)
	proxy.SetBlackhole(true)
	for i := range 6 {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		var v string
		var err error
		took, stalled := timed(func() { v, err = GetOrLoad(ctx, m, fmt.Sprint("k", i), load) })
		cancel()
		t.Logf("loaded read %d: %v, breaker %s", i, took.Round(time.Millisecond), m.BreakerState())
		require.NoError(t, err)
		assert.Equal(t, "from the loader", v)
		within(t, took, stalled, testBudget+testLoaderTime+slack, "a loaded read waits its budget and its loader at most")
	}
	assert.Equal(t, int64(6), loads.Load(), "every read ran the loader")
	assert.Equal(t, "open", m.BreakerState(), "calls that time out open the breaker")
	var err error
	took, stalled := timed(func() { err = m.Get(t.Context(), "k0", new(string)) })
	assert.ErrorIs(t, err, ErrUnavailable)
	within(t, took, stalled, slack, "the open breaker fails a plain read at once")
}

// TestSlowRedisOpensTheBreaker: at 500ms per round trip, nothing fails on
// its own, yet a cold loaded read costs its budget and its loader, and the
// budget's expiries open the breaker as a dead Redis does.
func TestSlowRedisOpensTheBreaker(t *testing.T) {
	_, proxy, rdb := slowRedis(t, nil)
	m := slowManager(t, proxy, rdb, Options{Breaker: BreakerOptions{Failures: 3, CoolDown: time.Minute}})
	var loads atomic.Int64
	load := sleepLoader(42, &loads)
	proxy.SetLatency(0, 500*time.Millisecond)
	for i := range 5 {
		var v int
		var err error
		took, stalled := timed(func() { v, err = GetOrLoad(t.Context(), m, fmt.Sprint("cold", i), load) })
		t.Logf("cold loaded read %d: %v, breaker %s", i, took.Round(time.Millisecond), m.BreakerState())
		require.NoError(t, err)
		assert.Equal(t, 42, v)
		within(t, took, stalled, testBudget+testLoaderTime+slack, "a loaded read waits its budget and its loader at most")
	}
	assert.Equal(t, "open", m.BreakerState(), "budget expiries open the breaker")
	assert.Positive(t, m.Stats().ByName["keys"].Degraded)
}

// TestBudgetWithContextTimeouts: with a client that honours context
// deadlines, the budget reaches go-redis through the call's context.
func TestBudgetWithContextTimeouts(t *testing.T) {
	_, proxy, rdb := slowRedis(t, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
	m := slowManager(t, proxy, rdb, Options{})
	require.True(t, m.ctxTimeouts)
	var loads atomic.Int64
	proxy.SetLatency(0, 500*time.Millisecond)
	var err error
	took, stalled := timed(func() { _, err = GetOrLoad(t.Context(), m, "cold", sleepLoader(1, &loads)) })
	require.NoError(t, err)
	within(t, took, stalled, testBudget+testLoaderTime+slack)
	took, stalled = timed(func() { err = m.Get(t.Context(), "k", new(int)) })
	assert.ErrorIs(t, err, ErrUnavailable)
	assert.NotErrorIs(t, err, context.DeadlineExceeded, "the caller's context did not end")
	within(t, took, stalled, testBudget+slack)
}

// TestFirstLoadRoundTrips: New loads the scripts, so the first load on a
// fresh server costs one round trip per step (read, lease and read again,
// store), not two for the script (NOSCRIPT, then EVAL). The client's own hooks see
// the Manager's commands.
func TestFirstLoadRoundTrips(t *testing.T) {
	srv := testredis.Start(t)
	rdb := srv.Client(t)
	m, err := New(rdb, &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	ctx := t.Context()
	require.Eventually(t, func() bool {
		hashes := make([]string, len(scripts.All))
		for i, s := range scripts.All {
			hashes[i] = s.Hash()
		}
		found, err := rdb.ScriptExists(ctx, hashes...).Result()
		return err == nil && !slices.Contains(found, false)
	}, testredis.Timeout, 5*time.Millisecond, "New did not load the scripts")

	rec := &commandLog{}
	rdb.AddHook(rec)
	v, err := GetOrLoad(ctx, m, "k", func(ctx context.Context) (int, error) { return 7, nil })
	require.NoError(t, err)
	require.Equal(t, 7, v)
	assert.Equal(t, []string{"get", "set", "mget", "evalsha"}, rec.names(), "read; take the lease and read again; store")
}

// commandLog is a hook that logs the names of the commands it sees.
type commandLog struct {
	mu  sync.Mutex // protects log
	log []string
}

func (c *commandLog) names() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.log)
}

func (c *commandLog) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *commandLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !handshake(cmd) {
			c.mu.Lock()
			c.log = append(c.log, cmd.Name())
			c.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}
func (c *commandLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.mu.Lock()
		for _, cmd := range cmds {
			if !handshake(cmd) {
				c.log = append(c.log, cmd.Name())
			}
		}
		c.mu.Unlock()
		return next(ctx, cmds)
	}
}

// TestScriptsLoadedAgainAfterRestart: a server that restarts without its
// scripts answers NOSCRIPT once; the call goes on with EVAL and the
// Manager loads every script again in the background.
func TestScriptsLoadedAgainAfterRestart(t *testing.T) {
	srv := testredis.Start(t)
	rdb := srv.Client(t)
	m, err := New(rdb, &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	scriptsLoaded(t, m)
	ctx := t.Context()
	srv.Kill()
	srv.Restart()
	hashes := make([]string, len(scripts.All))
	for i, s := range scripts.All {
		hashes[i] = s.Hash()
	}
	require.Eventually(t, func() bool { return rdb.Ping(ctx).Err() == nil }, testredis.Timeout, 5*time.Millisecond,
		"the restarted server did not answer PING")
	found, err := rdb.ScriptExists(ctx, hashes...).Result()
	require.NoError(t, err)
	require.NotContains(t, found, true, "the restarted server has no scripts")

	v, err := GetOrLoad(ctx, m, "k", func(ctx context.Context) (int, error) { return 7, nil })
	require.NoError(t, err)
	require.Equal(t, 7, v)
	require.Eventually(t, func() bool {
		found, err := rdb.ScriptExists(ctx, hashes...).Result()
		return err == nil && !slices.Contains(found, false)
	}, testredis.Timeout, 5*time.Millisecond, "the Manager did not load its scripts again after NOSCRIPT")
}

// TestSlowRedisTable measures how long a caller waits, for each kind of
// call, when Redis answers at once, with 50ms, 500ms or 2s added to each
// round trip, and when it never answers; with a 5ms loader, a budget of
// 150ms and the breaker off (so that every call meets the fault). A
// loaded read never waits longer than its budget and its loader, and the
// other calls than their budget, plus scheduling noise.
func TestSlowRedisTable(t *testing.T) {
	if testing.Short() {
		t.Skip("takes some seconds: each call meets each fault")
	}
	_, proxy, rdb := slowRedis(t, nil)
	type fault struct {
		name  string
		apply func()
	}
	faults := []fault{
		{"0 ms", func() {}},
		{"50 ms", func() { proxy.SetLatency(0, 50*time.Millisecond) }},
		{"500 ms", func() { proxy.SetLatency(0, 500*time.Millisecond) }},
		{"2000 ms", func() { proxy.SetLatency(0, 2*time.Second) }},
		{"blackhole", func() { proxy.SetBlackhole(true) }},
	}
	kinds := []string{"GetOrLoad cold", "GetOrLoad warm", "Memo.Get cold", "Memo.Get warm",
		"Hash.GetOrLoad cold", "Hash.GetOrLoad warm", "GetOrLoadMany cold", "GetOrLoadMany warm",
		"Get", "Set", "Invalidate", "Lock"}
	loaded := func(kind string) bool { return strings.Contains(kind, "Load") || strings.HasPrefix(kind, "Memo") }
	const samples = 3
	waited := make(map[string]map[string]time.Duration) // kind → fault → slowest
	for _, f := range faults {
		m := slowManager(t, proxy, rdb, Options{Prefix: "table", Breaker: BreakerOptions{Failures: -1}})
		ctx := t.Context()
		var loads atomic.Int64
		load := sleepLoader("v", &loads)
		memo := Memoize(m, "memo", func(ctx context.Context, n int) (string, error) { return load(ctx) })
		hash := NewHash[string](m, "hash")
		hload := func(ctx context.Context, field string) (string, error) { return load(ctx) }
		bload := sleepBatchLoader("v", &loads)
		warmBatch := func(i int) []string {
			return []string{fmt.Sprint("bwarm", i, "a"), fmt.Sprint("bwarm", i, "b"), fmt.Sprint("bwarm", i, "c")}
		}
		for i := range samples {
			_, err := GetOrLoadMany(ctx, m, warmBatch(i), bload)
			require.NoError(t, err)
			_, err = GetOrLoad(ctx, m, fmt.Sprint("warm", i), load)
			require.NoError(t, err)
			_, err = memo.Get(ctx, -i-1)
			require.NoError(t, err)
			_, err = hash.GetOrLoad(ctx, fmt.Sprint("warm", i), hload)
			require.NoError(t, err)
		}
		f.apply()
		for _, kind := range kinds {
			for i := range samples {
				cold := fmt.Sprint(f.name, kind, i)
				var err error
				took, stalled := timed(func() {
					switch kind {
					case "GetOrLoad cold":
						_, err = GetOrLoad(ctx, m, cold, load)
					case "GetOrLoad warm":
						_, err = GetOrLoad(ctx, m, fmt.Sprint("warm", i), load)
					case "Memo.Get cold":
						_, err = memo.Get(ctx, len(waited)*1000+i)
					case "Memo.Get warm":
						_, err = memo.Get(ctx, -i-1)
					case "Hash.GetOrLoad cold":
						_, err = hash.GetOrLoad(ctx, cold, hload)
					case "Hash.GetOrLoad warm":
						_, err = hash.GetOrLoad(ctx, fmt.Sprint("warm", i), hload)
					case "GetOrLoadMany cold":
						_, err = GetOrLoadMany(ctx, m, []string{cold + "a", cold + "b", cold + "c"}, bload)
					case "GetOrLoadMany warm":
						_, err = GetOrLoadMany(ctx, m, warmBatch(i), bload)
					case "Get":
						err = m.Get(ctx, fmt.Sprint("warm", i), new(string))
					case "Set":
						err = m.Set(ctx, cold, "v")
					case "Invalidate":
						err = m.Invalidate(ctx, Key(cold))
					case "Lock":
						var l *Lock
						if l, err = m.Lock(ctx, cold, time.Second); err == nil {
							err = l.Release(ctx)
						}
					}
				})
				if waited[kind] == nil {
					waited[kind] = make(map[string]time.Duration)
				}
				waited[kind][f.name] = max(waited[kind][f.name], took)
				bound := testBudget + slack
				if loaded(kind) {
					bound += testLoaderTime
					assert.NoError(t, err, "%s with %s: a loaded read falls back to its loader", kind, f.name)
				} else if f.name == "blackhole" || f.name == "500 ms" || f.name == "2000 ms" {
					assert.ErrorIs(t, err, ErrUnavailable, "%s with %s", kind, f.name)
				}
				within(t, took, stalled, bound, "%s with %s", kind, f.name)
			}
		}
		proxy.SetBlackhole(false)
		proxy.SetLatency(0, 0)
		proxy.Reset()
	}
	var b strings.Builder
	b.WriteString("\n| Call | " + strings.Join(func() []string {
		names := make([]string, len(faults))
		for i, f := range faults {
			names[i] = f.name
		}
		return names
	}(), " | ") + " |\n|---|" + strings.Repeat("---|", len(faults)) + "\n")
	for _, kind := range kinds {
		b.WriteString("| " + kind + " |")
		for _, f := range faults {
			fmt.Fprintf(&b, " %.1f ms |", float64(waited[kind][f.name].Microseconds())/1000)
		}
		b.WriteString("\n")
	}
	t.Logf("slowest of %d calls, budget %v, loader %v:%s", samples, testBudget, testLoaderTime, b.String())
}

// TestBudgetCountsOnlyRedis: the budget counts the time a load waits for
// Redis, not the time its loader runs nor the time it waits for another
// process's load. With 20ms per round trip and a budget of 300ms, a load
// whose loader takes 600ms is stored, and so is one that waits 800ms for
// another process's load, polling all along. The loader and the wait each
// take twice the budget, while the round trips of each load take a fifth
// of it, so that a stalled machine does not use up the budget by itself.
func TestBudgetCountsOnlyRedis(t *testing.T) {
	srv, proxy, rdb := slowRedis(t, nil)
	m := slowManager(t, proxy, rdb, Options{Timeout: 300 * time.Millisecond})
	ctx := t.Context()
	slowLoad := func(d time.Duration) func(context.Context) (int, error) {
		return func(ctx context.Context) (int, error) {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
				return 1, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
	}
	proxy.SetLatency(0, 20*time.Millisecond)
	v, err := GetOrLoad(ctx, m, "slow-loader", slowLoad(600*time.Millisecond))
	require.NoError(t, err)
	require.Equal(t, 1, v)
	st := m.Stats().ByName["keys"]
	assert.Zero(t, st.Degraded, "the loader's time is not the budget's")
	assert.Equal(t, uint64(1), st.Sets, "the value was stored")

	// Another process, on a direct connection, holds the lease for 800ms.
	other := newEnv(t, &testredis.Backend{Name: "redis", Server: srv}).manager(&Options{Prefix: "test", Now: time.Now})
	started := make(chan struct{})
	otherDone := make(chan error, 1)
	go func() {
		_, err := GetOrLoad(ctx, other, "shared", func(ctx context.Context) (int, error) {
			close(started)
			return slowLoad(800 * time.Millisecond)(ctx)
		})
		otherDone <- err
	}()
	testredis.Recv(t, started, "the other process's load to start")
	v, err = GetOrLoad(ctx, m, "shared", slowLoad(0))
	require.NoError(t, err)
	require.Equal(t, 1, v)
	st = m.Stats().ByName["keys"]
	assert.Equal(t, uint64(1), st.LeaseWaits, "it waited for the other process's load")
	assert.Zero(t, st.Degraded, "the wait is not the budget's")
	err = testredis.Recv(t, otherDone, "the other process's load to end")
	require.NoError(t, err)
}
