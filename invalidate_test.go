package cache

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// dashboard is the franchise dashboard's cache: a summary, per-outlet
// metrics, trending items, a live order count and a memoized leaderboard.
type dashboard struct {
	m           *Manager
	metrics     *Hash[outletMetrics]
	leaderboard *Memo[leaderboardQuery, []row]
	loads       atomic.Int64
}

type invoice struct {
	Outlet string
	Region string
	Amount float64
}

func newDashboard(m *Manager) *dashboard {
	d := &dashboard{m: m}
	d.metrics = NewHash[outletMetrics](m, "outlet_metrics", TTL(time.Hour))
	d.leaderboard = Memoize(m, "leaderboard", func(ctx context.Context, q leaderboardQuery) ([]row, error) {
		d.loads.Add(1)
		return []row{{q.Region + "-01", 1}}, nil
	}, TTL(10*time.Minute), TagsFor(func(q leaderboardQuery) []string { return []string{"region:" + q.Region} }))
	// On an invoice, clear what it changes: the summary, that outlet's
	// metrics, trending items, the live count, and its region's leaderboards.
	rule := func(ctx context.Context, p any) []Target {
		inv := p.(invoice)
		return []Target{
			Key("dashboard_summary"), d.metrics.Field(inv.Outlet), Key("trending_items"),
			Key("live_order_count"), Tag("region:" + inv.Region),
		}
	}
	m.OnEvent("invoice.submitted", rule)
	m.OnEvent("invoice.cancelled", rule)
	return d
}

func (d *dashboard) fill(t *testing.T) {
	ctx := t.Context()
	require.NoError(t, d.m.Set(ctx, "dashboard_summary", summary{Outlets: 3}))
	require.NoError(t, d.m.Set(ctx, "trending_items", []string{"mango"}, TTL(5*time.Minute)))
	require.NoError(t, d.m.Set(ctx, "live_order_count", 0, TTL(30*time.Second)))
	require.NoError(t, d.metrics.SetMany(ctx, map[string]outletMetrics{"outlet-1": {Orders: 1}, "outlet-2": {Orders: 2}, "outlet-3": {Orders: 3}}))
	for _, r := range []string{"Mumbai", "Pune"} {
		for _, limit := range []int{5, 20} {
			_, err := d.leaderboard.Get(ctx, leaderboardQuery{Region: r, Limit: limit})
			require.NoError(t, err)
		}
	}
}

func present(t *testing.T, m *Manager, key string) bool {
	t.Helper()
	var v any
	err := m.Get(t.Context(), key, &v)
	if err == ErrMiss {
		return false
	}
	require.NoError(t, err)
	return true
}

func TestEmitInvoice(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		d := newDashboard(m)
		d.fill(t)
		require.Equal(t, int64(4), d.loads.Load())

		require.NoError(t, m.Emit(ctx, "invoice.submitted", invoice{Outlet: "outlet-2", Region: "Mumbai", Amount: 120}))

		for _, k := range []string{"dashboard_summary", "trending_items", "live_order_count"} {
			assert.False(t, present(t, m, k), k)
		}
		all, err := d.metrics.All(ctx)
		require.NoError(t, err)
		assert.Equal(t, map[string]outletMetrics{"outlet-1": {Orders: 1}, "outlet-3": {Orders: 3}}, all, "only that outlet's field is gone")
		for _, q := range []leaderboardQuery{{"Pune", 5}, {"Pune", 20}} {
			_, err := d.leaderboard.Get(ctx, q)
			require.NoError(t, err)
		}
		assert.Equal(t, int64(4), d.loads.Load(), "Pune's leaderboards stay")
		for _, q := range []leaderboardQuery{{"Mumbai", 5}, {"Mumbai", 20}} {
			_, err := d.leaderboard.Get(ctx, q)
			require.NoError(t, err)
		}
		assert.Equal(t, int64(6), d.loads.Load(), "Mumbai's are computed anew")

		// An event nobody listens to is a counted no-op.
		require.NoError(t, m.Emit(ctx, "menu.changed", nil))
		st := m.Stats().Invalidations
		assert.Equal(t, uint64(1), st.Events)
		assert.Equal(t, uint64(1), st.UnknownEvents)
		assert.Equal(t, uint64(3), st.ByKind["key"])
		assert.Equal(t, uint64(1), st.ByKind["field"])
		assert.Equal(t, uint64(1), st.ByKind["tag"])
		assert.Equal(t, uint64(3+1), st.Removed, "a tag's entries are not counted: its generation moves")
	})
}

func TestInvalidateEveryKind(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		d := newDashboard(m)
		d.fill(t)
		other := NewHash[int](m, "other")
		require.NoError(t, other.SetMany(ctx, map[string]int{"a": 1, "b": 2}))
		require.NoError(t, m.Set(ctx, "user:42:profile", "p"))
		require.NoError(t, m.Set(ctx, "user:42:prefs", "q"))
		require.NoError(t, m.Set(ctx, "user:420:profile", "r"))
		require.NoError(t, m.Set(ctx, "tagged-1", 1, Tags("promo")))
		require.NoError(t, SetMany(ctx, m, map[string]int{"tagged-2": 2, "tagged-3": 3}, Tags("promo", "menu")))

		// Every kind in one call.
		require.NoError(t, m.Invalidate(ctx,
			Key("dashboard_summary"),
			d.metrics.Field("outlet-1"),
			other.AllFields(),
			d.leaderboard.Entry(leaderboardQuery{"Pune", 5}),
			Tag("promo"),
			Prefix("user:42:"),
		))
		assert.False(t, present(t, m, "dashboard_summary"))
		assert.True(t, present(t, m, "trending_items"))
		_, err := d.metrics.Get(ctx, "outlet-1")
		assert.ErrorIs(t, err, ErrMiss)
		_, err = d.metrics.Get(ctx, "outlet-2")
		assert.NoError(t, err)
		all, err := other.All(ctx)
		require.NoError(t, err)
		assert.Empty(t, all)
		for _, k := range []string{"tagged-1", "tagged-2", "tagged-3", "user:42:profile", "user:42:prefs"} {
			assert.False(t, present(t, m, k), k)
		}
		assert.True(t, present(t, m, "user:420:profile"), "a prefix names only what starts with it")

		before := d.loads.Load()
		_, err = d.leaderboard.Get(ctx, leaderboardQuery{"Pune", 5})
		require.NoError(t, err)
		_, err = d.leaderboard.Get(ctx, leaderboardQuery{"Pune", 20})
		require.NoError(t, err)
		assert.Equal(t, before+1, d.loads.Load(), "only the named memo entry was forgotten")

		require.NoError(t, m.Invalidate(ctx, d.leaderboard.All()))
		_, err = d.leaderboard.Get(ctx, leaderboardQuery{"Pune", 20})
		require.NoError(t, err)
		assert.Equal(t, before+2, d.loads.Load())
	})
}

func TestTagsAcrossManyEntries(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		h := NewHash[int](m, "sessions", Tags("shift:morning"))
		items := map[string]int{}
		for i := range 300 {
			items[fmt.Sprint("k", i)] = i
		}
		require.NoError(t, SetMany(ctx, m, items, Tags("shift:morning")))
		require.NoError(t, h.SetMany(ctx, items))
		var loads atomic.Int32
		for i := range 50 {
			_, err := GetOrLoad(ctx, m, fmt.Sprint("loaded-", i), func(ctx context.Context) (int, error) {
				loads.Add(1)
				return i, nil
			}, Tags("shift:morning"))
			require.NoError(t, err)
		}
		require.NoError(t, m.Set(ctx, "untagged", 1))

		require.NoError(t, m.Invalidate(ctx, Tag("shift:morning")))
		got, err := GetMany[int](ctx, m, "k0", "k150", "k299", "loaded-7", "untagged")
		require.NoError(t, err)
		assert.Equal(t, map[string]int{"untagged": 1}, got)
		all, err := h.All(ctx)
		require.NoError(t, err)
		assert.Empty(t, all)
		assert.Zero(t, m.Stats().Invalidations.Removed, "one generation moved, no entry deleted")
		assert.Equal(t, uint64(1), m.Stats().Invalidations.ByKind["tag"])
	})
}

func TestTagBookkeepingIsBounded(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		ctx := t.Context()
		tagKey := m.tagKey("hot")
		for round := range 20 {
			for i := range 50 {
				require.NoError(t, m.Set(ctx, fmt.Sprint("r", round, "-", i), i, TTL(time.Minute), Tags("hot")))
			}
			e.advance(2 * time.Minute)
		}
		require.NoError(t, m.Set(ctx, "last", 1, TTL(time.Minute), Tags("hot")))
		keys := allKeys(t, m.Client(), "test:{t:*")
		assert.Equal(t, []string{tagKey}, keys, "a tag is one key, whatever its entries")
		d, err := m.Client().PTTL(ctx, tagKey).Result()
		require.NoError(t, err)
		assert.True(t, d > 0 && d <= time.Minute+m.opts.LeaseTTL, "the tag expires with its entries: %v", d)
		got, err := Get[int](ctx, m, "last")
		require.NoError(t, err)
		assert.Equal(t, 1, got)
		e.advance(2 * time.Minute)
		ex, err := m.Client().Exists(ctx, tagKey).Result()
		require.NoError(t, err)
		assert.Zero(t, ex)
	})
}

func TestTagVoidsLoadInFlight(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		var version atomic.Int64
		g := newGate()
		mm := Memoize(m, "menu", func(ctx context.Context, outlet string) (int64, error) {
			v := version.Load()
			if v == 0 {
				if err := g.pass(ctx); err != nil {
					return 0, err
				}
			}
			return v, nil
		}, TagsFor(func(outlet string) []string { return []string{"outlet:" + outlet} }))
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, err := mm.Get(ctx, "42")
			assert.NoError(t, err)
		}()
		g.reached(t, "the load of version 0 to start")
		version.Store(1)
		require.NoError(t, m.Invalidate(ctx, Tag("outlet:42")))
		g.open()
		testredis.Recv(t, done, "the caller of the voided load to return")
		v, err := mm.Get(ctx, "42")
		require.NoError(t, err)
		assert.Equal(t, int64(1), v, "the load in flight when its tag was invalidated was not stored")
	})
}

func TestPrefixEscapesGlob(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		keys := []string{"a*b:1", "a*b:2", "aXb:1", "a?c:1", "abc:1", "a[x]:1", "ax:1", `a\d:1`, "ad:1", "a}b:1", "a%b:1"}
		for _, k := range keys {
			require.NoError(t, m.Set(ctx, k, k))
		}
		require.NoError(t, m.Invalidate(ctx, Prefix("a*b:"), Prefix("a?c"), Prefix("a[x]"), Prefix(`a\d`), Prefix("a}"), Prefix("a%")))
		var left []string
		for _, k := range keys {
			if present(t, m, k) {
				left = append(left, k)
			}
		}
		assert.Equal(t, []string{"aXb:1", "abc:1", "ax:1", "ad:1"}, left)
	})
}

func TestInvalidateBadInput(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		require.NoError(t, m.Set(ctx, "keep", 1, Tags("t")))
		h := NewHash[int](m, "h")
		require.NoError(t, h.Set(ctx, "f", 1))
		mm := Memoize(m, "m", func(ctx context.Context, c chan int) (int, error) { return 0, nil })
		for name, targets := range map[string][]Target{
			"empty key":    {Key("keep"), Key("")},
			"empty tag":    {Tag("t"), Tag("")},
			"zero target":  {Key("keep"), {}},
			"empty field":  {h.Field("")},
			"empty prefix": {Prefix("")},
			"bad argument": {Key("keep"), mm.Entry(make(chan int))},
		} {
			err := m.Invalidate(ctx, targets...)
			require.Error(t, err, name)
			if name != "bad argument" {
				assert.ErrorIs(t, err, ErrInvalidKey, name)
			}
		}
		assert.True(t, present(t, m, "keep"), "nothing else was touched")
		_, err := h.Get(ctx, "f")
		assert.NoError(t, err)
		assert.ErrorIs(t, m.Set(ctx, "x", 1, Tags("")), ErrInvalidKey)
		assertPanicsWith(t, ErrInvalidOption, func() {
			Memoize(m, "x", func(ctx context.Context, s string) (int, error) { return 0, nil }, TagsFor(func(int) []string { return nil }))
		}, "TagsFor of the wrong argument type")
	})
}

// TestNoStaleReadAfterInvalidate races loads of a versioned source against
// invalidations of every kind of target that names the entry.
func TestNoStaleReadAfterInvalidate(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		var source atomic.Int64
		slow := func() int64 {
			v := source.Load()
			time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
			return v
		}
		type reader func(ctx context.Context) (int64, error)
		type kind struct {
			name    string
			readers []reader
			target  Target
		}
		var kinds []kind
		var managers []*Manager
		for range 2 {
			managers = append(managers, e.manager(nil))
		}
		build := func(i int, m *Manager) (map[string]reader, map[string]Target) {
			mm := Memoize(m, "versioned", func(ctx context.Context, s string) (int64, error) { return slow(), nil },
				TagsFor(func(s string) []string { return []string{"tag:" + s} }))
			h := NewHash[int64](m, "versioned")
			rs := map[string]reader{
				"key": func(ctx context.Context) (int64, error) {
					return GetOrLoad(ctx, m, "item", func(context.Context) (int64, error) { return slow(), nil })
				},
				"prefix": func(ctx context.Context) (int64, error) {
					return GetOrLoad(ctx, m, "pre:item", func(context.Context) (int64, error) { return slow(), nil })
				},
				"field": func(ctx context.Context) (int64, error) {
					return h.GetOrLoad(ctx, "item", func(context.Context, string) (int64, error) { return slow(), nil })
				},
				"hash": func(ctx context.Context) (int64, error) {
					return h.GetOrLoad(ctx, "other", func(context.Context, string) (int64, error) { return slow(), nil })
				},
				"entry": func(ctx context.Context) (int64, error) { return mm.Get(ctx, "item") },
				"memo":  func(ctx context.Context) (int64, error) { return mm.Get(ctx, "other") },
				"tag":   func(ctx context.Context) (int64, error) { return mm.Get(ctx, "tagged") },
			}
			ts := map[string]Target{
				"key": Key("item"), "prefix": Prefix("pre:"), "field": h.Field("item"), "hash": h.AllFields(),
				"entry": mm.Entry("item"), "memo": mm.All(), "tag": Tag("tag:tagged"),
			}
			return rs, ts
		}
		r0, t0 := build(0, managers[0])
		r1, _ := build(1, managers[1])
		for name := range r0 {
			kinds = append(kinds, kind{name: name, readers: []reader{r0[name], r1[name]}, target: t0[name]})
		}
		var floor atomic.Int64
		var reads, stale atomic.Int64
		ctx := t.Context()
		deadline := time.Now().Add(2 * time.Second)
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					k := kinds[rand.IntN(len(kinds))]
					f := floor.Load()
					got, err := k.readers[i%2](ctx)
					if !assert.NoError(t, err) {
						return
					}
					reads.Add(1)
					if got < f {
						stale.Add(1)
						t.Errorf("%s: read version %d after an invalidation of version %d returned", k.name, got, f)
					}
				}
			})
		}
		wg.Go(func() {
			for time.Now().Before(deadline) {
				v := source.Add(1)
				targets := make([]Target, len(kinds))
				for i, k := range kinds {
					targets[i] = k.target
				}
				if !assert.NoError(t, managers[rand.IntN(2)].Invalidate(ctx, targets...)) {
					return
				}
				floor.Store(v)
				time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
			}
		})
		testredis.Wait(t, &wg, "the readers and the invalidator to stop at the deadline")
		assert.Zero(t, stale.Load())
		t.Logf("%d invalidations, %d reads", source.Load(), reads.Load())
	})
}

func TestInvalidateRoundTrips(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		counter := &commandCounter{}
		rdb := b.Client(t)
		require.NoError(t, rdb.Ping(t.Context()).Err())
		if c, ok := rdb.(*redis.ClusterClient); ok {
			// Count the round trips to each node: a hook on the
			// ClusterClient sees one pipeline, however many nodes it spans.
			require.NoError(t, c.ForEachShard(t.Context(), func(ctx context.Context, n *redis.Client) error {
				n.AddHook(counter)
				return nil
			}))
		} else {
			rdb.AddHook(counter)
		}
		m, err := New(rdb, &Options{Prefix: "test", Now: e.clock.Now})
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, m) })
		scriptsLoaded(t, m)
		ctx := t.Context()
		h := NewHash[int](m, "h")
		mm := Memoize(m, "m", func(ctx context.Context, i int) (int, error) { return i, nil })
		for _, n := range []int{1, 10, 500} {
			targets := mixedTargets(n, h, mm)
			counter.trips.Store(0)
			require.NoError(t, m.Invalidate(ctx, targets...))
			if b.Name != "cluster" {
				assert.Equal(t, int64(1), counter.trips.Load(), "%d targets: one pipelined round trip on a single node", n)
			} else {
				assert.LessOrEqual(t, counter.trips.Load(), int64(len(b.Cluster.Addrs())), "%d targets: a pipeline per master at most", n)
				if n == 500 {
					assert.Equal(t, int64(len(b.Cluster.Addrs())), counter.trips.Load(), "500 targets span every master")
				}
			}
		}
	})
}

// mixedTargets returns n targets of four kinds in turn: keys, hash fields,
// memo entries and whole memos.
func mixedTargets(n int, h *Hash[int], mm *Memo[int, int]) []Target {
	targets := make([]Target, 0, n)
	for i := 0; len(targets) < n; i++ {
		switch i % 4 {
		case 0:
			targets = append(targets, Key(fmt.Sprint("k", i)))
		case 1:
			targets = append(targets, h.Field(fmt.Sprint("f", i)))
		case 2:
			targets = append(targets, mm.Entry(i))
		case 3:
			targets = append(targets, mm.All())
		}
	}
	return targets
}

// TestKeyLeaseRef checks that the keys Invalidate builds for a Key target in
// one allocation are the ones every other path builds, for names that need
// escaping too.
func TestKeyLeaseRef(t *testing.T) {
	m := &Manager{prefix: "p:"}
	for _, k := range []string{"k", "", "a}b", "%7D", "x:l", "{k:y}", "é"} {
		assert.Equal(t, m.keyRef(k).withLease(), m.keyLeaseRef(k), "key %q", k)
	}
}
