package cache

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// shardsUsed returns the hash tags of the entries of the memo found in
// Redis, with how many entries each holds.
func shardsUsed(t *testing.T, rdb redis.UniversalClient, base string) map[string]int {
	t.Helper()
	tags := map[string]int{}
	for _, k := range allKeys(t, rdb, base+"*") {
		if strings.Contains(k, memoEntryInfix) {
			tags[hashTag(k)]++
		}
	}
	return tags
}

// A sharded memo hits, misses, loads each argument once across Managers,
// and forgets one entry or all of them, on every backend.
func TestShardedMemo(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		ctx := t.Context()
		var version atomic.Int64
		var calls sync.Map // leaderboardQuery -> *atomic.Int32
		g := newGate()
		load := func(ctx context.Context, q leaderboardQuery) (int64, error) {
			c, _ := calls.LoadOrStore(q, new(atomic.Int32))
			c.(*atomic.Int32).Add(1)
			if err := g.pass(ctx); err != nil {
				return 0, err
			}
			return version.Load()*1000 + int64(q.Limit), nil
		}
		count := func(q leaderboardQuery) int32 {
			c, ok := calls.Load(q)
			if !ok {
				return 0
			}
			return c.(*atomic.Int32).Load()
		}
		memos := []*Memo[leaderboardQuery, int64]{
			Memoize(e.manager(nil), "board", load, Shards(16)),
			Memoize(e.manager(nil), "board", load, Shards(16)),
		}
		const args = 64
		qs := make([]leaderboardQuery, args)
		for i := range qs {
			qs[i] = leaderboardQuery{Region: "r", Limit: i}
		}
		// Every argument asked by 4 callers on each Manager at once, its
		// load held until all have asked: one load per argument.
		var wg sync.WaitGroup
		for _, q := range qs {
			for i := range 8 {
				wg.Go(func() {
					v, err := memos[i%2].Get(ctx, q)
					assert.NoError(t, err)
					assert.Equal(t, int64(q.Limit), v)
				})
			}
		}
		require.Eventually(t, func() bool {
			var shared, lease uint64
			for _, mm := range memos {
				st := mm.m.Stats().ByName["memo:board"]
				shared, lease = shared+st.SharedWaits, lease+st.LeaseWaits
			}
			return shared+lease == args*7
		}, testredis.Timeout, time.Millisecond, "every caller but one per argument to wait for that one's load")
		g.open()
		testredis.Wait(t, &wg, "the callers to get their values")
		for _, q := range qs {
			assert.Equal(t, int32(1), count(q), "one load of %v across two Managers", q)
		}
		used := shardsUsed(t, memos[0].m.Client(), memos[0].base)
		assert.Len(t, used, 16, "64 arguments fill the 16 shards: %v", used)
		for tag := range used {
			assert.True(t, strings.HasPrefix(tag, "m:board%s16:"), "tag %q", tag)
		}

		// Hits, on both Managers.
		before := memos[0].m.Stats().ByName["memo:board"].Hits + memos[1].m.Stats().ByName["memo:board"].Hits
		for i, q := range qs {
			v, err := memos[i%2].Get(ctx, q)
			require.NoError(t, err)
			assert.Equal(t, int64(q.Limit), v)
		}
		after := memos[0].m.Stats().ByName["memo:board"].Hits + memos[1].m.Stats().ByName["memo:board"].Hits
		assert.Equal(t, uint64(args), after-before, "every argument a hit")

		// Forget one entry: only it is loaded again.
		version.Store(1)
		require.NoError(t, memos[1].Forget(ctx, qs[5]))
		for i, q := range qs {
			v, err := memos[i%2].Get(ctx, q)
			require.NoError(t, err)
			want := int64(q.Limit)
			if i == 5 {
				want += 1000
			}
			assert.Equal(t, want, v, "%v after Forget of %v", q, qs[5])
		}
		assert.Equal(t, int32(2), count(qs[5]))
		assert.Equal(t, int32(1), count(qs[6]))

		// ForgetAll: every entry, in every shard, is loaded again.
		version.Store(2)
		require.NoError(t, memos[0].ForgetAll(ctx))
		for i, q := range qs {
			v, err := memos[(i+1)%2].Get(ctx, q)
			require.NoError(t, err)
			assert.Equal(t, 2000+int64(q.Limit), v, "%v after ForgetAll", q)
		}
		for i, q := range qs {
			want := int32(2)
			if i == 5 {
				want = 3
			}
			assert.Equal(t, want, count(q), "loads of %v", q)
		}
		assert.Equal(t, uint64(1), memos[0].m.Stats().ByName["memo:board"].Deletes, "the stats keep the memo's name")
	})
}

// TestShardedMemoKeys checks the sharded layout: one shard is the
// unsharded layout byte for byte, and the keys of different memos, or of
// one memo with different shard counts, never meet.
func TestShardedMemoKeys(t *testing.T) {
	_, rdb := testredis.Mini(t)
	m, err := New(rdb, nil)
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	fn := func(ctx context.Context, s string) (int, error) { return 0, nil }
	plain, _ := Memoize(m, "s", fn).Key("Mumbai")
	one, _ := Memoize(m, "s", fn, Shards(1)).Key("Mumbai")
	assert.Equal(t, "stockpot:{m:s}:e:s:Mumbai", one, "Shards(1) keeps the unsharded layout")
	assert.Equal(t, plain, one)
	sharded, _ := Memoize(m, "s", fn, Shards(16)).Key("Mumbai")
	assert.Equal(t, fmt.Sprintf("stockpot:{m:s%%s16:%d}:e:s:Mumbai", shardOf("s:Mumbai", 16)), sharded)

	// Names that look like a shard's, and shard counts that share digits.
	type layout struct {
		name string
		n    int
	}
	var layouts []layout
	for _, name := range []string{"a", "a%", "a%s", "a%s2", "a%s2:1}", "a}", "a%s25:3", "a%25s2:1", "a:"} {
		for _, n := range []int{1, 2, 25, 250, maxShards} {
			layouts = append(layouts, layout{name, n})
		}
	}
	owner := map[string]layout{}
	bases := map[layout]string{}
	for _, l := range layouts {
		bases[l] = m.memoKeys(l.name, l.n).base
		k := m.memoKeys(l.name, l.n)
		for i, sh := range k.shards {
			for _, key := range []string{sh.entry + "s:x", sh.gen} {
				if prev, ok := owner[key]; ok {
					t.Errorf("%v and %v share key %s", prev, l, key)
				}
				owner[key] = l
				assert.True(t, strings.HasPrefix(key, k.base), "%s starts with its memo's base %s", key, k.base)
			}
			assert.Equal(t, sh.gen, k.gens[i])
		}
	}
	for key, l := range owner {
		for _, other := range layouts {
			if other != l && strings.HasPrefix(key, bases[other]) {
				t.Errorf("%s of %v starts with the base of %v", key, l, other)
			}
		}
	}

	// The shard of an argument is spread and stable.
	counts := make([]int, 16)
	for i := range 16_000 {
		counts[shardOf("i:"+fmt.Sprint(i), 16)]++
	}
	for s, c := range counts {
		assert.InDelta(t, 1000, c, 150, "shard %d of 16 holds %d of 16000 arguments", s, c)
	}
	assert.Equal(t, 11, shardOf("s:Mumbai", 16), "shardOf is part of the key layout: it must not change")
}

func TestShardsBadInput(t *testing.T) {
	_, rdb := testredis.Mini(t)
	m, err := New(rdb, nil)
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	fn := func(ctx context.Context, s string) (int, error) { return 0, nil }
	for _, n := range []int{0, -1, maxShards + 1} {
		assertPanicsWith(t, ErrInvalidOption, func() { Memoize(m, "x", fn, Shards(n)) }, fmt.Sprintf("Shards(%d)", n))
		assertPanicsWith(t, ErrInvalidOption, func() {
			MemoizeBatch(m, "x", func(ctx context.Context, s []string) ([]int, error) { return nil, nil }, Shards(n))
		}, fmt.Sprintf("MemoizeBatch with Shards(%d)", n))
	}
	assert.NotPanics(t, func() { Memoize(m, "x", fn, Shards(maxShards)) })
	_, err = GetOrLoad(t.Context(), m, "k", func(context.Context) (int, error) { return 1, nil }, Shards(4))
	assert.ErrorIs(t, err, ErrInvalidOption, "Shards applies to memos only")
	assertPanicsWith(t, ErrInvalidOption, func() { NewHash[int](m, "h", Shards(4)) }, "NewHash with Shards")
}

// Tags, batch loads and warming reach the entries of every shard.
func TestShardedMemoTagsAndBatches(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		ctx := t.Context()
		var version atomic.Int64
		var batches, computed atomic.Int32
		squares := MemoizeBatch(m, "squares", func(ctx context.Context, xs []int) ([]int64, error) {
			batches.Add(1)
			computed.Add(int32(len(xs)))
			out := make([]int64, len(xs))
			for i, x := range xs {
				out[i] = int64(x*x) + version.Load()*1_000_000
			}
			return out, nil
		}, Shards(8), TagsFor(func(x int) []string { return []string{fmt.Sprint("parity:", x%2)} }))
		xs := make([]int, 40)
		for i := range xs {
			xs[i] = i
		}
		want := func(v int64) []int64 {
			out := make([]int64, len(xs))
			for i, x := range xs {
				out[i] = int64(x*x) + v*1_000_000
			}
			return out
		}
		got, err := squares.GetMany(ctx, xs)
		require.NoError(t, err)
		assert.Equal(t, want(0), got)
		assert.Equal(t, int32(1), batches.Load(), "one batch call for misses in 8 shards")
		assert.Len(t, shardsUsed(t, m.Client(), squares.base), 8)
		got, err = squares.GetMany(ctx, xs)
		require.NoError(t, err)
		assert.Equal(t, want(0), got)
		assert.Equal(t, int32(1), batches.Load(), "every entry a hit")

		// A tag reaches its entries in every shard, and only them.
		version.Store(1)
		require.NoError(t, m.Invalidate(ctx, Tag("parity:1")))
		got, err = squares.GetMany(ctx, xs)
		require.NoError(t, err)
		for i, x := range xs {
			w := int64(x * x)
			if x%2 == 1 {
				w += 1_000_000
			}
			assert.Equal(t, w, got[i], "%d after the tag of odd numbers", x)
		}
		assert.Equal(t, int32(60), computed.Load(), "the 20 odd numbers computed again")

		// A warm stores into every shard; the Gets after it hit.
		version.Store(2)
		require.NoError(t, squares.WarmWith(func(ctx context.Context) ([]int, error) { return xs, nil }))
		report, err := m.WarmAll(ctx)
		require.NoError(t, err)
		assert.Equal(t, len(xs), report.Jobs[0].Entries)
		n := batches.Load()
		for _, x := range xs {
			v, err := squares.Get(ctx, x)
			require.NoError(t, err)
			assert.Equal(t, int64(x*x)+2_000_000, v)
		}
		assert.Equal(t, n, batches.Load(), "the warmed entries are hits")
	})
}

// The local tier of another Manager drops its copies of a sharded memo's
// entries on every kind of invalidation.
func TestShardedMemoLocalTier(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		opts := &Options{Local: &LocalOptions{TTL: time.Hour}}
		a, c := e.manager(opts), e.manager(opts)
		ctx := t.Context()
		var version atomic.Int64
		load := func(ctx context.Context, q leaderboardQuery) (int64, error) { return version.Load(), nil }
		tags := TagsFor(func(q leaderboardQuery) []string { return []string{"region:" + q.Region} })
		ma := Memoize(a, "board", load, TTL(time.Hour), Shards(16), tags)
		mc := Memoize(c, "board", load, TTL(time.Hour), Shards(16), tags)
		qs := make([]leaderboardQuery, 8)
		for i := range qs {
			qs[i] = leaderboardQuery{Region: "Pune", Limit: i}
		}
		localHits := func() uint64 { return c.Stats().ByName["memo:board"].LocalHits }
		for _, target := range []Target{ma.Entry(qs[3]), ma.All(), Tag("region:Pune")} {
			for _, q := range qs { // kept in c's local tier
				_, err := mc.Get(ctx, q)
				require.NoError(t, err)
			}
			before := localHits()
			for _, q := range qs {
				_, err := mc.Get(ctx, q)
				require.NoError(t, err)
			}
			require.Equal(t, uint64(len(qs)), localHits()-before, "before %v, every entry a local hit", target)
			v := version.Add(1)
			require.NoError(t, a.Invalidate(ctx, target))
			require.Eventually(t, func() bool {
				got, err := mc.Get(ctx, qs[3])
				return err == nil && got == v
			}, testredis.Timeout, time.Millisecond, "the other Manager to drop its copy on %v", target)
		}
	})
}

// No value loaded before a ForgetAll (or Forget) of a sharded memo
// returned is served after it, by any Manager.
func TestShardedForgetAllRacesLoads(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		var source atomic.Int64 // the version of the truth
		read := func(ctx context.Context, _ int) (int64, error) {
			v := source.Load()
			time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
			return v, nil
		}
		memos := []*Memo[int, int64]{
			Memoize(e.manager(nil), "versioned", read, Shards(8)),
			Memoize(e.manager(nil), "versioned", read, Shards(8)),
		}
		var floor atomic.Int64 // the version of the last invalidation that returned
		var stale, reads atomic.Int64
		ctx := t.Context()
		deadline := time.Now().Add(2 * time.Second)
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					f := floor.Load()
					arg := rand.IntN(16)
					got, err := memos[i%2].Get(ctx, arg)
					if !assert.NoError(t, err) {
						return
					}
					reads.Add(1)
					if got < f {
						stale.Add(1)
						t.Errorf("read version %d of %d after an invalidation of version %d returned", got, arg, f)
					}
				}
			})
		}
		wg.Go(func() {
			for time.Now().Before(deadline) {
				v := source.Add(1)
				mm := memos[rand.IntN(2)]
				var err error
				if rand.IntN(4) == 0 {
					// Forget every argument, in one call.
					targets := make([]Target, 16)
					for a := range targets {
						targets[a] = mm.Entry(a)
					}
					err = mm.m.Invalidate(ctx, targets...)
				} else {
					err = mm.ForgetAll(ctx)
				}
				if !assert.NoError(t, err) {
					return
				}
				floor.Store(v)
				time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
			}
		})
		testredis.Wait(t, &wg, "the readers and the invalidator to stop at the deadline")
		assert.Zero(t, stale.Load())
		var voided, loads uint64
		for _, mm := range memos {
			c := mm.m.Stats().ByName["memo:versioned"]
			voided += c.VoidedStores
			loads += c.Loads
		}
		t.Logf("%d invalidations, %d reads, %d loads, %d voided stores", source.Load(), reads.Load(), loads, voided)
		assert.Positive(t, voided, "the race exercised voided stores")
	})
}

// perNode counts, per cluster node, the commands and round trips sent to it.
type perNode struct {
	mu    sync.Mutex // protects nodes
	nodes map[string]*nodeCounter
}

// nodeCounter is a commandCounter that leaves out the client's own
// CLUSTER commands (its reloads of the cluster's slots) too.
type nodeCounter struct{ commandCounter }

func (c *nodeCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	counted := c.commandCounter.ProcessHook(next)
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "cluster" {
			return next(ctx, cmd)
		}
		return counted(ctx, cmd)
	}
}

// countPerNode hooks a counter on every master of c, which must be
// connected.
func countPerNode(t *testing.T, c *redis.ClusterClient) *perNode {
	t.Helper()
	p := &perNode{nodes: map[string]*nodeCounter{}}
	require.NoError(t, c.ForEachMaster(t.Context(), func(ctx context.Context, n *redis.Client) error {
		counter := &nodeCounter{}
		p.mu.Lock()
		p.nodes[n.Options().Addr] = counter
		p.mu.Unlock()
		n.AddHook(counter)
		return nil
	}))
	return p
}

func (p *perNode) reset() {
	for _, c := range p.nodes {
		c.n.Store(0)
		c.trips.Store(0)
	}
}

// counts returns the commands and the round trips of each node, in the
// order of addrs.
func (p *perNode) counts(addrs []string) (cmds, trips []int64) {
	for _, a := range addrs {
		c := p.nodes[a]
		cmds, trips = append(cmds, c.n.Load()), append(trips, c.trips.Load())
	}
	return cmds, trips
}

// On the three-master cluster, a memo of 16 shards keeps its entries, and
// serves its hits, on every master, and forgets them all with one pipeline
// per master; an unsharded memo sits on one.
func TestShardedMemoSpreadsOverMasters(t *testing.T) {
	c := testredis.SharedCluster(t)
	rdb := c.Client(t)
	require.NoError(t, rdb.Ping(t.Context()).Err())
	require.NoError(t, rdb.ForEachMaster(t.Context(), func(ctx context.Context, n *redis.Client) error { return n.Ping(ctx).Err() }))
	counter := countPerNode(t, rdb)
	var addrs []string
	for a := range counter.nodes {
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)
	require.Len(t, addrs, 3)
	m, err := New(rdb, &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	scriptsLoaded(t, m)
	ctx := t.Context()
	load := func(ctx context.Context, i int) (int, error) { return i, nil }
	sharded := Memoize(m, "big", load, Shards(16))
	plain := Memoize(m, "small", load)
	const n = 3000
	for _, mm := range []*Memo[int, int]{sharded, plain} {
		args := make([]int, n)
		for i := range args {
			args[i] = i
		}
		_, err := mm.GetMany(ctx, args)
		require.NoError(t, err)
	}
	keysOn := func(base string) []int {
		out := make([]int, len(addrs))
		for i, a := range addrs {
			node := redis.NewClient(&redis.Options{Addr: a})
			keys, err := node.Keys(ctx, globEscape(base)+"*").Result()
			_ = node.Close()
			require.NoError(t, err)
			for _, k := range keys {
				if strings.Contains(k, memoEntryInfix) {
					out[i]++
				}
			}
		}
		return out
	}
	spread := keysOn(sharded.base)
	t.Logf("entries of a memo of 16 shards per master: %v", spread)
	for i, k := range spread {
		assert.Greater(t, k, n/10, "master %s holds %d of the %d entries", addrs[i], k, n)
	}
	alone := keysOn(plain.base)
	t.Logf("entries of an unsharded memo per master: %v", alone)
	holding := 0
	for _, k := range alone {
		if k > 0 {
			holding++
		}
	}
	assert.Equal(t, 1, holding, "an unsharded memo sits on one master")

	// Hits go to every master.
	counter.reset()
	for i := range n {
		v, err := sharded.Get(ctx, i)
		require.NoError(t, err)
		require.Equal(t, i, v)
	}
	cmds, trips := counter.counts(addrs)
	t.Logf("commands of %d hits per master: %v", n, cmds)
	assert.Equal(t, int64(n), cmds[0]+cmds[1]+cmds[2], "a hit is one command")
	assert.Equal(t, cmds, trips, "a hit is one round trip")
	for i, k := range cmds {
		assert.Greater(t, k, int64(n/10), "master %s served %d of %d hits", addrs[i], k, n)
	}

	// ForgetAll: one pipeline per master, a DEL per shard's slot.
	slots := map[int]bool{}
	for _, g := range sharded.gens {
		slots[slotOf(hashTag(g))] = true
	}
	loads := m.Stats().ByName["memo:big"].Loads
	counter.reset()
	require.NoError(t, sharded.ForgetAll(ctx))
	cmds, trips = counter.counts(addrs)
	t.Logf("ForgetAll of 16 shards: commands %v, round trips %v per master", cmds, trips)
	assert.Equal(t, []int64{1, 1, 1}, trips, "ForgetAll is one pipeline per master")
	assert.Equal(t, int64(len(slots)), cmds[0]+cmds[1]+cmds[2], "one DEL per shard's slot")
	for _, i := range []int{0, 7, n - 1} {
		v, err := sharded.Get(ctx, i)
		require.NoError(t, err)
		assert.Equal(t, i, v)
	}
	assert.Equal(t, loads+3, m.Stats().ByName["memo:big"].Loads, "every entry read after ForgetAll is loaded again")
}

// While an invalidation of a sharded memo waits to be retried, the Manager
// serves none of the entries it names, in any shard, and every other one.
func TestShardedPendingInvalidationIsAMiss(t *testing.T) {
	_, rdb := testredis.Mini(t)
	faults := &failPipelines{}
	rdb.AddHook(faults)
	m, err := New(rdb, &Options{Prefix: "test", Breaker: BreakerOptions{Failures: -1}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	ctx := t.Context()
	var version atomic.Int64
	load := func(ctx context.Context, i int) (int64, error) { return version.Load(), nil }
	menu := Memoize(m, "menu", load, Shards(8))
	other := Memoize(m, "menus", load, Shards(8)) // a name that starts like it
	const args = 32
	read := func(mm *Memo[int, int64], i int) int64 {
		t.Helper()
		v, err := mm.Get(ctx, i)
		require.NoError(t, err)
		return v
	}
	for i := range args {
		read(menu, i)
		read(other, i)
	}
	require.Len(t, shardsUsed(t, rdb, menu.base), 8)

	version.Store(1)
	faults.on.Store(true) // invalidations are pipelines: they fail; reads and loads go on
	require.Error(t, m.Invalidate(ctx, menu.Entry(3)))
	for i := range args {
		want := int64(0)
		if i == 3 {
			want = 1
		}
		assert.Equal(t, want, read(menu, i), "argument %d with a pending Entry(3)", i)
	}
	version.Store(2)
	require.Error(t, menu.ForgetAll(ctx))
	for i := range args {
		assert.Equal(t, int64(2), read(menu, i), "argument %d with a pending ForgetAll", i)
		assert.Equal(t, int64(0), read(other, i), "argument %d of another memo", i)
	}
	faults.on.Store(false)
	require.Eventually(t, func() bool { return m.Stats().Invalidations.Pending == 0 }, 10*time.Second, 5*time.Millisecond,
		"the failed invalidations were not retried")
}
