package cache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/envelope"
	"github.com/stockpot-go/cache/internal/testredis"
)

type leaderboardQuery struct {
	Region string
	Limit  int
}

type row struct {
	Outlet  string
	Revenue float64
}

func TestGetOrLoadZeroValueIsHit(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		var calls atomic.Int32
		count := func(ctx context.Context) (int, error) { calls.Add(1); return 0, nil }
		for range 3 {
			n, err := GetOrLoad(ctx, m, "live_orders", count, TTL(30*time.Second))
			require.NoError(t, err)
			assert.Equal(t, 0, n)
		}
		assert.Equal(t, int32(1), calls.Load(), "0 is cached and read back as a hit")

		var empty atomic.Int32
		for range 2 {
			v, err := GetOrLoad(ctx, m, "trending", func(ctx context.Context) ([]string, error) { empty.Add(1); return []string{}, nil })
			require.NoError(t, err)
			assert.Empty(t, v)
		}
		assert.Equal(t, int32(1), empty.Load())
		st := m.Stats().ByName["keys"]
		assert.Equal(t, uint64(2), st.Loads)
		assert.Equal(t, uint64(3), st.Hits)
	})
}

func TestNegativeCaching(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(&Options{NegativeTTL: 10 * time.Second})
		ctx := t.Context()
		var calls atomic.Int32
		lookup := func(ctx context.Context, outlet string) (outletMetrics, error) {
			calls.Add(1)
			return outletMetrics{}, ErrNotFound
		}
		h := NewHash[outletMetrics](m, "outlet_metrics")
		for range 3 {
			_, err := h.GetOrLoad(ctx, "outlet-404", lookup)
			assert.ErrorIs(t, err, ErrNotFound)
		}
		assert.Equal(t, int32(1), calls.Load(), "ErrNotFound is remembered")
		_, err := h.Get(ctx, "outlet-404")
		assert.ErrorIs(t, err, ErrNotFound)
		assert.Equal(t, uint64(3), m.Stats().ByName["hash:outlet_metrics"].NegativeHits)

		e.advance(11 * time.Second)
		_, err = h.GetOrLoad(ctx, "outlet-404", lookup)
		assert.ErrorIs(t, err, ErrNotFound)
		assert.Equal(t, int32(2), calls.Load(), "after NegativeTTL the loader runs again")

		// For plain keys as well.
		_, err = GetOrLoad(ctx, m, "user:9", func(ctx context.Context) (string, error) { return "", ErrNotFound })
		assert.ErrorIs(t, err, ErrNotFound)
		_, err = Get[string](ctx, m, "user:9")
		assert.ErrorIs(t, err, ErrNotFound)
	})
}

func TestLoaderPanic(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		g := newGate()
		boom := func(ctx context.Context) (int, error) {
			if err := g.pass(ctx); err != nil {
				return 0, err
			}
			panic("oven on fire")
		}
		var wg sync.WaitGroup
		errs := make([]error, 20)
		for i := range errs {
			wg.Go(func() { _, errs[i] = GetOrLoad(ctx, m, "k", boom) })
		}
		require.Eventually(t, func() bool { return m.Stats().ByName["keys"].SharedWaits == 19 }, testredis.Timeout, time.Millisecond,
			"19 callers to join the first one's load")
		g.open()
		testredis.Wait(t, &wg, "the callers of the panicking load to return")
		for _, err := range errs {
			var pe *PanicError
			require.ErrorAs(t, err, &pe)
			assert.Equal(t, "oven on fire", pe.Value)
			assert.Contains(t, string(pe.Stack), "TestLoaderPanic")
		}
		n, err := m.Client().Exists(ctx, m.keyRef("k").key).Result()
		require.NoError(t, err)
		assert.Zero(t, n, "nothing stored")
		require.Eventually(t, func() bool { // released in the background
			n, err := m.Client().Exists(ctx, m.keyRef("k").withLease().lease).Result()
			return err == nil && n == 0
		}, 5*time.Second, time.Millisecond, "the lease was not released")
		assert.Equal(t, uint64(1), m.Stats().ByName["keys"].LoadErrors)

		// An error that is a value of panic is unwrapped.
		_, err = GetOrLoad(ctx, m, "k2", func(ctx context.Context) (int, error) { panic(context.DeadlineExceeded) })
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	})
}

func TestLoaderErrorIsNotCached(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		errUpstream := errors.New("upstream down")
		var calls atomic.Int32
		g := newGate() // holds the load until every caller has joined it
		fail := func(ctx context.Context) (string, error) {
			calls.Add(1)
			if err := g.pass(ctx); err != nil {
				return "", err
			}
			return "", errUpstream
		}
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() {
				_, err := GetOrLoad(ctx, m, "k", fail)
				assert.ErrorIs(t, err, errUpstream, "every waiter of the flight gets the error")
			})
		}
		require.Eventually(t, func() bool { return m.Stats().ByName["keys"].SharedWaits == 9 }, testredis.Timeout, time.Millisecond,
			"9 callers to join the first one's load")
		g.open()
		testredis.Wait(t, &wg, "the callers of the failing load to return")
		assert.Equal(t, int32(1), calls.Load(), "10 callers of one load: one loader call")
		v, err := GetOrLoad(ctx, m, "k", func(ctx context.Context) (string, error) { return "ok", nil })
		require.NoError(t, err, "the error was not remembered")
		assert.Equal(t, "ok", v)
	})
}

func TestWaiterCancel(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		g := newGate()
		slow := func(ctx context.Context) (string, error) {
			if err := g.pass(ctx); err != nil {
				return "", err
			}
			return "done", nil
		}
		// The first caller's context ends while the others wait: the load,
		// which runs under a context of its own, goes on for them.
		first, cancelFirst := context.WithCancel(t.Context())
		got := make(chan error, 1)
		go func() {
			_, err := GetOrLoad(first, m, "k", slow)
			got <- err
		}()
		g.reached(t, "the first caller's load to start")
		var wg sync.WaitGroup
		for range 5 {
			wg.Go(func() {
				v, err := GetOrLoad(t.Context(), m, "k", slow)
				assert.NoError(t, err)
				assert.Equal(t, "done", v)
			})
		}
		require.Eventually(t, func() bool { return m.Stats().ByName["keys"].SharedWaits == 5 }, testredis.Timeout, time.Millisecond,
			"5 callers to join the first one's load")
		cancelFirst()
		err := testredis.Recv(t, got, "the cancelled caller to return while the load is held")
		assert.ErrorIs(t, err, context.Canceled, "a cancelled waiter returns at once")
		g.open()
		testredis.Wait(t, &wg, "the other callers to get the load's value")
	})
}

func TestFleetStampede(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		var calls atomic.Int32
		g := newGate() // holds the load until every caller waits for it
		compute := func(ctx context.Context, q leaderboardQuery) ([]row, error) {
			calls.Add(1)
			if err := g.pass(ctx); err != nil {
				return nil, err
			}
			return []row{{"Mumbai-07", 391444}}, nil
		}
		memos := make([]*Memo[leaderboardQuery, []row], 4)
		for i := range memos {
			memos[i] = Memoize(e.manager(nil), "franchise_leaderboard", compute, TTL(10*time.Minute))
		}
		waits := func() (lease, shared uint64) {
			for _, mm := range memos {
				st := mm.m.Stats().ByName["memo:franchise_leaderboard"]
				lease += st.LeaseWaits
				shared += st.SharedWaits
			}
			return lease, shared
		}
		q := leaderboardQuery{Region: "Mumbai", Limit: 20}
		var wg sync.WaitGroup
		for i := range 1000 {
			wg.Go(func() {
				rows, err := memos[i%4].Get(t.Context(), q)
				assert.NoError(t, err)
				assert.Len(t, rows, 1)
			})
		}
		// Each Manager's first caller leads its flight, the other 249 join
		// it; the flights of the three Managers that did not get the lease
		// wait on it.
		require.Eventually(t, func() bool {
			lease, shared := waits()
			return lease == 3 && shared == 996
		}, testredis.Timeout, time.Millisecond, "every caller to wait for the one load")
		g.open()
		testredis.Wait(t, &wg, "the 1000 callers to get the value")
		assert.Equal(t, int32(1), calls.Load(), "4 Managers x 250 callers on one cold key: one load")
		lease, _ := waits()
		assert.Equal(t, uint64(3), lease, "the other three Managers waited on the lease")
	})
}

func TestLeaseHolderClosed(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		a, other := e.manager(nil), e.manager(nil)
		g := newGate() // never opened: the load ends when its Manager closes
		hang := func(ctx context.Context) (string, error) { return "", g.pass(ctx) }
		aErr := make(chan error, 1)
		go func() {
			_, err := GetOrLoad(t.Context(), a, "k", hang)
			aErr <- err
		}()
		g.reached(t, "the lease holder's load to start")
		got := make(chan string, 1)
		go func() {
			v, err := GetOrLoad(t.Context(), other, "k", func(ctx context.Context) (string, error) { return "from other", nil })
			assert.NoError(t, err)
			got <- v
		}()
		require.Eventually(t, func() bool { return other.Stats().ByName["keys"].LeaseWaits == 1 }, testredis.Timeout, time.Millisecond,
			"the other Manager to wait on the lease")
		closeWithin(t, a)
		assert.ErrorIs(t, testredis.Recv(t, aErr, "the lease holder's caller to return on Close"), context.Canceled)
		v := testredis.Recv(t, got, "the waiter to take over the load after the lease holder closed")
		assert.Equal(t, "from other", v, "the waiter took over the load")
	})
}

func TestLeaseHolderDied(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		// A lease long enough that a real server's clock does not end it
		// before the test moves it on.
		// The waiter looks at the lease every second (LeaseTTL/2); the dead
		// lease lasts a minute, so that a real server's clock does not end
		// it before the test moves it on.
		m := e.manager(&Options{LeaseTTL: 2 * time.Second})
		ctx := t.Context()
		// A holder that died without releasing: its lease is there, nobody renews it.
		require.NoError(t, m.Client().Set(ctx, m.keyRef("k").withLease().lease, "dead-holder", time.Minute).Err())
		got := make(chan string, 1)
		go func() {
			v, err := GetOrLoad(ctx, m, "k", func(ctx context.Context) (string, error) { return "loaded", nil })
			assert.NoError(t, err)
			got <- v
		}()
		require.Eventually(t, func() bool { return m.Stats().ByName["keys"].LeaseWaits == 1 }, testredis.Timeout, time.Millisecond,
			"the caller to wait on the dead holder's lease")
		e.advance(61 * time.Second) // the dead holder's lease expires
		assert.Equal(t, "loaded", testredis.Recv(t, got, "the caller to take over the expired lease"))
	})
}

// TestNoStaleSetAfterForget races loads of a versioned source against
// Forget: a Get that starts after Forget returned never sees a value older
// than the source's version at that Forget.
func TestNoStaleSetAfterForget(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		var source atomic.Int64 // the version of the truth
		read := func(ctx context.Context, _ string) (int64, error) {
			v := source.Load()
			time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
			return v, nil
		}
		memos := []*Memo[string, int64]{
			Memoize(e.manager(nil), "versioned", read),
			Memoize(e.manager(nil), "versioned", read),
		}
		var floor atomic.Int64 // the version of the last Forget that returned
		var stale atomic.Int32
		ctx := t.Context()
		deadline := time.Now().Add(2 * time.Second)
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					f := floor.Load()
					got, err := memos[i%2].Get(ctx, "item")
					if !assert.NoError(t, err) {
						return
					}
					if got < f {
						stale.Add(1)
						t.Errorf("read version %d after a Forget of version %d returned", got, f)
					}
				}
			})
		}
		wg.Go(func() {
			for time.Now().Before(deadline) {
				v := source.Add(1)
				if !assert.NoError(t, memos[rand.IntN(2)].Forget(ctx, "item")) {
					return
				}
				floor.Store(v)
				time.Sleep(time.Duration(rand.IntN(4000)) * time.Microsecond)
			}
		})
		testredis.Wait(t, &wg, "the readers and the forgetter to stop at the deadline")
		assert.Zero(t, stale.Load())
		var voided, loads uint64
		for _, mm := range memos {
			c := mm.m.Stats().ByName["memo:versioned"]
			voided += c.VoidedStores
			loads += c.Loads
		}
		t.Logf("%d forgets, %d loads, %d voided stores", source.Load(), loads, voided)
		assert.Positive(t, voided, "the race exercised voided stores")
	})
}

func TestForgetVoidsLoadInFlight(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		var version atomic.Int64
		g := newGate()
		mm := Memoize(m, "menu", func(ctx context.Context, item string) (int64, error) {
			v := version.Load()
			if v == 0 {
				if err := g.pass(ctx); err != nil {
					return 0, err
				}
			}
			return v, nil
		})
		first := make(chan int64, 1)
		go func() {
			v, err := mm.Get(ctx, "kulfi")
			assert.NoError(t, err)
			first <- v
		}()
		g.reached(t, "the load of version 0 to start")
		version.Store(1)
		require.NoError(t, mm.Forget(ctx, "kulfi"))
		g.open()
		assert.Equal(t, int64(0), testredis.Recv(t, first, "the first caller's value"), "the caller whose call overlapped Forget gets its load")
		v, err := mm.Get(ctx, "kulfi")
		require.NoError(t, err)
		assert.Equal(t, int64(1), v, "the value loaded before Forget was not stored")
		assert.Equal(t, uint64(1), m.Stats().ByName["memo:menu"].VoidedStores)
	})
}

func TestForgetAllIsOneCommand(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		var calls atomic.Int32
		mm := Memoize(m, "leaderboard", func(ctx context.Context, q leaderboardQuery) (int, error) {
			calls.Add(1)
			return q.Limit, nil
		})
		// 100k entries, written straight to Redis in the memo's format,
		// under the memo's generation.
		const n = 100_000
		rdb := m.Client()
		require.NoError(t, rdb.Set(ctx, mm.shards[0].gen, "77", 0).Err())
		payload, err := m.encode(7, envelope.Header{WrittenAt: m.now().UnixMilli(), Gen: 77})
		require.NoError(t, err)
		for start := 0; start < n; start += 5000 {
			_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i := start; i < start+5000; i++ {
					k, err := mm.Key(leaderboardQuery{Region: "r", Limit: i})
					require.NoError(t, err)
					p.Set(ctx, k, payload, time.Hour)
				}
				return nil
			})
			require.NoError(t, err)
		}
		v, err := mm.Get(ctx, leaderboardQuery{Region: "r", Limit: 5})
		require.NoError(t, err)
		assert.Equal(t, 7, v, "a stored entry is a hit")
		require.Zero(t, calls.Load())

		// Count the commands ForgetAll sends.
		counter := &commandCounter{}
		counted := b.Client(t)
		require.NoError(t, counted.Ping(ctx).Err()) // connect first: the handshake is not ForgetAll's
		counted.AddHook(counter)
		cm, err := New(counted, &Options{Prefix: "test", Now: m.now})
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, cm) })
		scriptsLoaded(t, cm)
		counter.n.Store(0) // New loads the scripts
		cmm := Memoize(cm, "leaderboard", mm.fn)
		require.NoError(t, cmm.ForgetAll(ctx))
		assert.Equal(t, int64(1), counter.n.Load(), "ForgetAll of 100k entries is one command")

		for _, limit := range []int{0, 5, 99_999} {
			v, err := mm.Get(ctx, leaderboardQuery{Region: "r", Limit: limit})
			require.NoError(t, err)
			assert.Equal(t, limit, v, "after ForgetAll every entry is computed anew")
		}
		assert.Equal(t, int32(3), calls.Load())
	})
}

// commandCounter is a go-redis hook that counts the commands sent, and the
// round trips (a command alone, or a pipeline), leaving out a new
// connection's handshake.
type commandCounter struct{ n, trips atomic.Int64 }

func handshake(cmd redis.Cmder) bool {
	return cmd.Name() == "hello" || cmd.Name() == "client"
}

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !handshake(cmd) {
			c.n.Add(1)
			c.trips.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		counted := false
		for _, cmd := range cmds {
			if !handshake(cmd) {
				c.n.Add(1)
				counted = true
			}
		}
		if counted {
			c.trips.Add(1)
		}
		return next(ctx, cmds)
	}
}

func TestRefreshHasNoGap(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		var version atomic.Int64
		g := newGate()
		var gated atomic.Bool
		mm := Memoize(m, "summary", func(ctx context.Context, _ struct{}) (int64, error) {
			if gated.Load() {
				if err := g.pass(ctx); err != nil {
					return 0, err
				}
			}
			return version.Load(), nil
		})
		v, err := mm.Get(ctx, struct{}{})
		require.NoError(t, err)
		require.Equal(t, int64(0), v)

		version.Store(1)
		gated.Store(true)
		refreshed := make(chan int64, 1)
		go func() {
			v, err := mm.Refresh(ctx, struct{}{})
			assert.NoError(t, err)
			refreshed <- v
		}()
		g.reached(t, "the refresh's load to start")
		for range 50 {
			v, err := mm.Get(ctx, struct{}{})
			require.NoError(t, err, "readers never miss while a refresh runs")
			assert.Equal(t, int64(0), v)
		}
		g.open()
		assert.Equal(t, int64(1), testredis.Recv(t, refreshed, "the refresh's value"))
		v, err = mm.Get(ctx, struct{}{})
		require.NoError(t, err)
		assert.Equal(t, int64(1), v)
		st := m.Stats().ByName["memo:summary"]
		assert.Equal(t, uint64(2), st.Loads, "readers during the refresh did not load")
		assert.Equal(t, uint64(51), st.Hits)
	})
}

func TestMemoKeys(t *testing.T) {
	_, rdb := testredis.Mini(t)
	m, err := New(rdb, nil)
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	fn := func(ctx context.Context, a map[string]int) (int, error) { return 0, nil }
	mm := Memoize(m, "agg", fn)
	a := map[string]int{}
	bb := map[string]int{}
	for i := range 50 {
		a[fmt.Sprint(i)] = i
		bb[fmt.Sprint(49-i)] = 49 - i
	}
	ka, err := mm.Key(a)
	require.NoError(t, err)
	kb, err := mm.Key(bb)
	require.NoError(t, err)
	assert.Equal(t, ka, kb, "a map's key does not depend on insertion order")
	bb["0"] = 1
	kc, err := mm.Key(bb)
	require.NoError(t, err)
	assert.NotEqual(t, ka, kc)

	type q struct {
		Region string
		Limit  int
		Tags   []string
	}
	sq := Memoize(m, "q", func(ctx context.Context, a q) (int, error) { return 0, nil })
	seen := map[string]q{}
	for _, arg := range []q{
		{}, {Region: "Mumbai"}, {Region: "Mumbai", Limit: 20}, {Region: "Mumbai", Limit: 2},
		{Region: "Mumbai2"}, {Tags: []string{""}}, {Tags: []string{"a"}}, {Tags: []string{"a", ""}},
		{Region: strings.Repeat("x", 500)}, {Region: strings.Repeat("x", 501)},
	} {
		k, err := sq.Key(arg)
		require.NoError(t, err)
		if prev, ok := seen[k]; ok {
			t.Errorf("%+v and %+v share key %s", prev, arg, k)
		}
		seen[k] = arg
		assert.Less(t, len(k), 120, "long arguments are hashed")
		again, _ := sq.Key(arg)
		assert.Equal(t, k, again)
	}
	// Across Managers (processes) with one prefix, one argument is one key.
	m2, err := New(rdb, nil)
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m2) })
	k1, _ := sq.Key(q{Region: "Pune", Limit: 3})
	k2, _ := Memoize(m2, "q", sq.fn).Key(q{Region: "Pune", Limit: 3})
	assert.Equal(t, k1, k2)
	sk, _ := Memoize(m, "s", func(ctx context.Context, s string) (int, error) { return 0, nil }).Key("Mumbai")
	assert.Equal(t, "stockpot:{m:s}:e:s:Mumbai", sk, "string arguments stay readable")

	_, err = Memoize(m, "c", func(ctx context.Context, c chan int) (int, error) { return 0, nil }).Get(t.Context(), make(chan int))
	assert.Error(t, err, "an argument that cannot be encoded is an error")
}

func TestMemoBadInput(t *testing.T) {
	_, rdb := testredis.Mini(t)
	m, err := New(rdb, nil)
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	ctx := t.Context()
	fn := func(ctx context.Context, s string) (int, error) { return 1, nil }
	assertPanicsWith(t, ErrInvalidKey, func() { Memoize(m, "", fn) }, "Memoize with no name")
	assertPanicsWith(t, ErrInvalidOption, func() { Memoize[string, int](m, "x", nil) }, "Memoize of nil")
	assertPanicsWith(t, ErrInvalidOption, func() { Memoize(m, "x", fn, TTL(0)) }, "Memoize with a zero TTL")
	_, err = GetOrLoad(ctx, m, "", func(ctx context.Context) (int, error) { return 1, nil })
	assert.ErrorIs(t, err, ErrInvalidKey)
	_, err = GetOrLoad[int](ctx, m, "k", nil)
	assert.ErrorIs(t, err, ErrInvalidOption)
	_, err = NewHash[int](m, "h").GetOrLoad(ctx, "", func(ctx context.Context, f string) (int, error) { return 1, nil })
	assert.ErrorIs(t, err, ErrInvalidKey)

	// A loaded value too large to store is an error, and nothing is stored.
	small, err := New(rdb, &Options{MaxValueSize: 64, CompressAbove: -1})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, small) })
	_, err = GetOrLoad(ctx, small, "big", func(ctx context.Context) (string, error) { return strings.Repeat("x", 100), nil })
	assert.ErrorIs(t, err, ErrValueTooLarge)
	n, err := rdb.Exists(ctx, small.keyRef("big").key).Result()
	require.NoError(t, err)
	assert.Zero(t, n)
	require.Eventually(t, func() bool { // released in the background
		n, err := rdb.Exists(ctx, small.keyRef("big").withLease().lease).Result()
		return err == nil && n == 0
	}, 5*time.Second, time.Millisecond, "the lease was not released")
}

func TestHashGetOrLoad(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		var calls sync.Map
		compute := func(ctx context.Context, outlet string) (outletMetrics, error) {
			n, _ := calls.LoadOrStore(outlet, new(atomic.Int32))
			n.(*atomic.Int32).Add(1)
			return outletMetrics{Orders: len(outlet)}, nil
		}
		h := NewHash[outletMetrics](m, "outlet_metrics", TTL(time.Hour))
		var wg sync.WaitGroup
		for i := range 100 {
			wg.Go(func() {
				outlet := fmt.Sprint("outlet-", i%4)
				om, err := h.GetOrLoad(ctx, outlet, compute)
				assert.NoError(t, err)
				assert.Equal(t, len(outlet), om.Orders)
			})
		}
		testredis.Wait(t, &wg, "the 100 callers of 4 fields to return")
		for i := range 4 {
			n, _ := calls.Load(fmt.Sprint("outlet-", i))
			assert.Equal(t, int32(1), n.(*atomic.Int32).Load(), "one load per field")
		}
		all, err := h.All(ctx)
		require.NoError(t, err)
		assert.Len(t, all, 4)

		// Clear voids a field load in flight.
		g := newGate()
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, err := h.GetOrLoad(ctx, "late", func(ctx context.Context, f string) (outletMetrics, error) {
				if err := g.pass(ctx); err != nil {
					return outletMetrics{}, err
				}
				return outletMetrics{Orders: -1}, nil
			})
			assert.NoError(t, err)
		}()
		g.reached(t, "the field's load to start")
		require.NoError(t, h.Clear(ctx))
		g.open()
		testredis.Recv(t, done, "the caller of the voided field load to return")
		_, err = h.Get(ctx, "late")
		assert.ErrorIs(t, err, ErrMiss, "a load voided by Clear is not stored")
	})
}

func TestRedisDownDuringLoad(t *testing.T) {
	mr, rdb := testredis.Mini(t)
	m, err := New(rdb, nil)
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	ctx := t.Context()
	mr.Close()
	v, err := GetOrLoad(ctx, m, "k", func(ctx context.Context) (string, error) { return "from the loader", nil })
	require.NoError(t, err, "Redis down does not stop the caller from getting the value")
	assert.Equal(t, "from the loader", v)
	mm := Memoize(m, "m", func(ctx context.Context, i int) (int, error) { return i * 2, nil })
	n, err := mm.Get(ctx, 21)
	require.NoError(t, err)
	assert.Equal(t, 42, n)
	assert.Positive(t, m.Stats().Total.RedisErrors)
}
