package cache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// keyRange returns "k<from>" .. "k<to-1>".
func keyRange(from, to int) []string {
	keys := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		keys = append(keys, fmt.Sprint("k", i))
	}
	return keys
}

// countingLoader loads each key as its own name's length, counting the
// loads of each key and the calls.
type countingLoader struct {
	mu    sync.Mutex // protects loads
	loads map[string]int
	calls atomic.Int32
}

func (c *countingLoader) load(ctx context.Context, keys []string) (map[string]int, error) {
	c.calls.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loads == nil {
		c.loads = make(map[string]int)
	}
	out := make(map[string]int, len(keys))
	for _, k := range keys {
		c.loads[k]++
		out[k] = len(k)
	}
	return out, nil
}

func TestGetOrLoadMany(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		ctx := t.Context()
		var c countingLoader
		require.NoError(t, m.Set(ctx, "k3", 333))
		got, err := GetOrLoadMany(ctx, m, []string{"k1", "k22", "k3", "k1"}, c.load)
		require.NoError(t, err)
		assert.Equal(t, map[string]int{"k1": 2, "k22": 3, "k3": 333}, got)
		assert.Equal(t, int32(1), c.calls.Load(), "one loader call for the misses")
		assert.Equal(t, map[string]int{"k1": 1, "k22": 1}, c.loads, "the hit and the repeat are not loaded")

		got, err = GetOrLoadMany(ctx, m, []string{"k1", "k22", "k3"}, c.load)
		require.NoError(t, err)
		assert.Equal(t, map[string]int{"k1": 2, "k22": 3, "k3": 333}, got)
		assert.Equal(t, int32(1), c.calls.Load(), "all hits now")
		st := m.Stats().ByName["keys"]
		assert.Equal(t, uint64(1+2), st.Sets, "the Set and the two loaded")

		v, err := Get[int](ctx, m, "k22")
		require.NoError(t, err)
		assert.Equal(t, 3, v, "stored as GetOrLoad stores")
	})
}

// 4 Managers × 50 goroutines ask overlapping batches of 100 cold keys:
// each key is loaded once across the fleet.
func TestGetOrLoadManyFleetStampede(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		ms := make([]*Manager, 4)
		for i := range ms {
			ms[i] = e.manager(nil)
		}
		var c countingLoader
		start := make(chan struct{})
		var wg sync.WaitGroup
		for g := range 200 {
			wg.Go(func() {
				if err := await(t.Context(), start); err != nil {
					return
				}
				from := (g % 5) * 20 // batches of 100 over 180 keys, overlapping
				keys := keyRange(from, from+100)
				got, err := GetOrLoadMany(t.Context(), ms[g%4], keys, c.load)
				assert.NoError(t, err)
				assert.Len(t, got, 100)
			})
		}
		close(start)
		testredis.Wait(t, &wg, "the batches to end")
		c.mu.Lock()
		defer c.mu.Unlock()
		assert.Len(t, c.loads, 180)
		for k, n := range c.loads {
			assert.Equal(t, 1, n, "key %s loaded %d times", k, n)
		}
		t.Logf("%d loader calls for 180 keys, 200 batches of 100 on 4 Managers", c.calls.Load())
	})
}

func TestGetOrLoadManyLoaderResults(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		boom := errors.New("upstream down")

		// Partial results and an error: the values are stored and returned,
		// the error names the keys that failed.
		got, err := GetOrLoadMany(ctx, m, []string{"a", "b", "c"}, func(ctx context.Context, keys []string) (map[string]int, error) {
			return map[string]int{"a": 1, "zz": 9}, boom
		})
		assert.ErrorIs(t, err, boom)
		assert.ErrorContains(t, err, `2 of 3 failed to load ("b", "c")`)
		assert.Equal(t, map[string]int{"a": 1}, got, "keys it was not asked for are ignored")
		_, err = Get[int](ctx, m, "zz")
		assert.ErrorIs(t, err, ErrMiss, "a key the loader was not asked for is not stored")
		v, err := Get[int](ctx, m, "a")
		require.NoError(t, err)
		assert.Equal(t, 1, v)

		// Keys left out are misses, not stored: the next read loads them.
		var calls atomic.Int32
		leaveOut := func(ctx context.Context, keys []string) (map[string]int, error) {
			calls.Add(1)
			return map[string]int{}, nil
		}
		got, err = GetOrLoadMany(ctx, m, []string{"gone"}, leaveOut)
		require.NoError(t, err)
		assert.Empty(t, got)
		_, err = GetOrLoadMany(ctx, m, []string{"gone"}, leaveOut)
		require.NoError(t, err)
		assert.Equal(t, int32(2), calls.Load())
		// With RememberMissing, they are remembered as not found.
		_, err = GetOrLoadMany(ctx, m, []string{"gone"}, leaveOut, RememberMissing())
		require.NoError(t, err)
		got, err = GetOrLoadMany(ctx, m, []string{"gone"}, leaveOut, RememberMissing())
		require.NoError(t, err)
		assert.Empty(t, got)
		assert.Equal(t, int32(3), calls.Load(), "not found, remembered")
		assert.ErrorIs(t, m.Get(ctx, "gone", new(int)), ErrNotFound)

		// A panic is an error for the callers of that batch, and nothing is
		// stored.
		_, err = GetOrLoadMany(ctx, m, []string{"p"}, func(ctx context.Context, keys []string) (map[string]int, error) {
			panic("kaboom")
		})
		var pe *PanicError
		require.ErrorAs(t, err, &pe)
		assert.Equal(t, "kaboom", pe.Value)
		assert.ErrorIs(t, m.Get(ctx, "p", new(int)), ErrMiss)

		// Bad input.
		_, err = GetOrLoadMany(ctx, m, []string{"ok", ""}, leaveOut)
		assert.ErrorIs(t, err, ErrInvalidKey)
		_, err = GetOrLoadMany[int](ctx, m, []string{"ok"}, nil)
		assert.ErrorIs(t, err, ErrInvalidOption)
		_, err = GetOrLoadMany(ctx, m, []string{"ok"}, leaveOut, TagsFor(func(int) []string { return nil }))
		assert.ErrorIs(t, err, ErrInvalidOption)
	})
}

// A caller whose ctx ends returns at once; the load goes on for the others.
func TestGetOrLoadManyCallerCancels(t *testing.T) {
	m := newEnv(t, &testredis.Backend{Name: "miniredis", Mini: newMini(t)}).manager(nil)
	gate := make(chan struct{})
	started := make(chan struct{}, 1)
	load := func(ctx context.Context, keys []string) (map[string]int, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		if err := await(ctx, gate); err != nil {
			return nil, err
		}
		return map[string]int{"a": 1, "b": 2}, nil
	}
	short, cancel := context.WithCancel(t.Context())
	first := make(chan error, 1)
	go func() {
		_, err := GetOrLoadMany(short, m, []string{"a", "b"}, load)
		first <- err
	}()
	testredis.Recv(t, started, "the load to start")
	second := make(chan map[string]int, 1)
	go func() {
		got, err := GetOrLoadMany(t.Context(), m, []string{"b", "a"}, load)
		assert.NoError(t, err)
		second <- got
	}()
	require.Eventually(t, func() bool { return m.Stats().ByName["keys"].SharedWaits == 2 }, testredis.Timeout, time.Millisecond,
		"the second batch did not join the first's loads")
	cancel()
	assert.ErrorIs(t, testredis.Recv(t, first, "the cancelled caller to return"), context.Canceled)
	close(gate)
	got := testredis.Recv(t, second, "the other caller to get the values")
	assert.Equal(t, map[string]int{"a": 1, "b": 2}, got)
	assert.Equal(t, uint64(1), m.Stats().ByName["keys"].Loads)
}

func TestHashGetOrLoadMany(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		h := NewHash[int](m, "metrics", TTL(time.Hour), Tags("sales"))
		require.NoError(t, h.Set(ctx, "outlet-1", 100))
		var c countingLoader
		got, err := h.GetOrLoadMany(ctx, []string{"outlet-1", "outlet-22", "outlet-333"}, c.load)
		require.NoError(t, err)
		assert.Equal(t, map[string]int{"outlet-1": 100, "outlet-22": 9, "outlet-333": 10}, got)
		assert.Equal(t, int32(1), c.calls.Load())
		all, err := h.All(ctx)
		require.NoError(t, err)
		assert.Equal(t, got, all)
		require.NoError(t, m.Invalidate(ctx, Tag("sales")))
		all, err = h.All(ctx)
		require.NoError(t, err)
		assert.Empty(t, all, "the loaded fields carry the hash's tag")
	})
}

func TestMemoGetMany(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		var batchCalls, oneCalls atomic.Int32
		var seen [][]leaderboardQuery
		var mu sync.Mutex
		boards := MemoizeBatch(m, "boards", func(ctx context.Context, qs []leaderboardQuery) ([]int, error) {
			batchCalls.Add(1)
			mu.Lock()
			seen = append(seen, slices.Clone(qs))
			mu.Unlock()
			out := make([]int, len(qs))
			for i, q := range qs {
				if q.Limit < 0 {
					return nil, ErrNotFound
				}
				out[i] = q.Limit * 10
			}
			return out, nil
		})
		qs := []leaderboardQuery{{"Mumbai", 5}, {"Pune", 20}, {"Mumbai", 5}}
		got, err := boards.Get(ctx, qs[1])
		require.NoError(t, err)
		assert.Equal(t, 200, got)
		rs, err := boards.GetMany(ctx, qs)
		require.NoError(t, err)
		assert.Equal(t, []int{50, 200, 50}, rs)
		assert.Equal(t, int32(2), batchCalls.Load(), "one call for Get, one for the miss of GetMany")
		assert.Equal(t, []leaderboardQuery{{"Mumbai", 5}}, seen[1], "the hit and the repeat are not computed")

		_, err = boards.GetMany(ctx, []leaderboardQuery{{"X", -1}})
		assert.ErrorIs(t, err, ErrNotFound)

		// A memo of a function of one argument computes each miss.
		one := Memoize(m, "one", func(ctx context.Context, q leaderboardQuery) (int, error) {
			oneCalls.Add(1)
			if q.Limit == 13 {
				return 0, errors.New("unlucky")
			}
			return q.Limit, nil
		})
		rs, err = one.GetMany(ctx, []leaderboardQuery{{"a", 1}, {"b", 13}, {"c", 3}})
		assert.ErrorContains(t, err, "1 of 3 arguments failed (at 1)")
		assert.Equal(t, []int{1, 0, 3}, rs)
		assert.Equal(t, int32(3), oneCalls.Load())
	})
}

// Memo.WarmWith refreshes its arguments with one call of a batch function
// and pipelined stores.
func TestMemoWarmWithBatches(t *testing.T) {
	m := newEnv(t, &testredis.Backend{Name: "redis", Server: testredis.Start(t)}).manager(nil)
	ctx := t.Context()
	var calls atomic.Int32
	var version atomic.Int64
	squares := MemoizeBatch(m, "squares", func(ctx context.Context, xs []int) ([]int64, error) {
		calls.Add(1)
		out := make([]int64, len(xs))
		for i, x := range xs {
			out[i] = int64(x*x) + version.Load()
		}
		return out, nil
	})
	xs := make([]int, warmBatch+500)
	for i := range xs {
		xs[i] = i
	}
	require.NoError(t, squares.WarmWith(func(ctx context.Context) ([]int, error) { return xs, nil }))
	report, err := m.WarmAll(ctx)
	require.NoError(t, err)
	assert.Equal(t, len(xs), report.Jobs[0].Entries)
	assert.Equal(t, int32(2), calls.Load(), "one call per batch of 1000")
	version.Store(1)
	_, err = m.WarmAll(ctx)
	require.NoError(t, err)
	v, err := squares.Get(ctx, 7)
	require.NoError(t, err)
	assert.Equal(t, int64(50), v, "the warm overwrote the entries")
	assert.Equal(t, int32(4), calls.Load(), "and Get hit")
}

// A loader can set its values' TTL, or keep them from being stored.
func TestLoaderControl(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		ctx := t.Context()
		var calls atomic.Int32
		token := func(ctx context.Context) (string, error) {
			calls.Add(1)
			SetTTL(ctx, 10*time.Second)
			return "token", nil
		}
		_, err := GetOrLoad(ctx, m, "token", token, TTL(time.Hour), Jitter(0))
		require.NoError(t, err)
		d, err := m.TTL(ctx, "token")
		require.NoError(t, err)
		assert.True(t, d > 0 && d <= 10*time.Second, "the loader's TTL: %v", d)

		partial := func(ctx context.Context) (string, error) {
			calls.Add(1)
			DontStore(ctx)
			return "partial", nil
		}
		for range 2 {
			v, err := GetOrLoad(ctx, m, "partial", partial)
			require.NoError(t, err)
			assert.Equal(t, "partial", v)
		}
		assert.Equal(t, int32(3), calls.Load(), "a value the loader kept from being stored is loaded again")
		assert.ErrorIs(t, m.Get(ctx, "partial", new(string)), ErrMiss)

		got, err := GetOrLoadMany(ctx, m, []string{"x", "y"}, func(ctx context.Context, keys []string) (map[string]int, error) {
			SetTTL(ctx, 5*time.Second)
			return map[string]int{"x": 1, "y": 2}, nil
		}, TTL(time.Hour), Jitter(0))
		require.NoError(t, err)
		assert.Len(t, got, 2)
		d, err = m.TTL(ctx, "y")
		require.NoError(t, err)
		assert.True(t, d > 0 && d <= 5*time.Second, "the batch loader's TTL: %v", d)

		SetTTL(ctx, time.Second) // outside a loader: nothing happens
		DontStore(ctx)
	})
}
