package cache

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

func localManager(t *testing.T, srv *testredis.Server, clock *testClock) *Manager {
	t.Helper()
	m, err := New(srv.Client(t), &Options{Prefix: "test", Now: clock.Now, Local: &LocalOptions{TTL: time.Minute}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	return m
}

// waitSubscribed waits until every Manager's subscription is confirmed, so
// that no message published by a test is sent before it.
func waitSubscribed(t *testing.T, ms ...*Manager) {
	t.Helper()
	for _, m := range ms {
		require.Eventually(t, func() bool {
			n, err := m.Client().PubSubNumSub(t.Context(), m.local.channel).Result()
			return err == nil && n[m.local.channel] >= int64(len(ms))
		}, testredis.Timeout, time.Millisecond, "every Manager's subscription to the invalidation channel")
	}
}

func TestLocalTierInvalidatedEverywhere(t *testing.T) {
	srv := testredis.Start(t)
	clock := newClock()
	a, b := localManager(t, srv, clock), localManager(t, srv, clock)
	waitSubscribed(t, a, b)
	ctx := t.Context()
	var version atomic.Int64
	load := func(ctx context.Context, q leaderboardQuery) (int64, error) { return version.Load(), nil }
	ma, mb := Memoize(a, "board", load, TTL(time.Hour)), Memoize(b, "board", load, TTL(time.Hour))
	q := leaderboardQuery{"Pune", 5}
	for _, mm := range []*Memo[leaderboardQuery, int64]{ma, mb, ma, mb} {
		v, err := mm.Get(ctx, q)
		require.NoError(t, err)
		require.Equal(t, int64(0), v)
	}
	assert.Equal(t, uint64(1), a.Stats().ByName["memo:board"].LocalHits)
	assert.Equal(t, uint64(1), b.Stats().ByName["memo:board"].LocalHits)

	// Every kind of invalidation on a reaches b's local tier.
	h := NewHash[int64](b, "h")
	for i, target := range []Target{ma.Entry(q), ma.All(), Tag("t"), Key("k"), NewHash[int64](a, "h").Field("f")} {
		version.Store(int64(i + 1))
		require.NoError(t, b.Set(ctx, "k", version.Load(), Tags("t")))
		_, err := GetOrLoad(ctx, b, "k", func(context.Context) (int64, error) { return -1, nil }) // b keeps k locally
		require.NoError(t, err)
		_, err = h.GetOrLoad(ctx, "f", func(context.Context, string) (int64, error) { return version.Load(), nil })
		require.NoError(t, err)
		start := time.Now()
		require.NoError(t, a.Invalidate(ctx, target))
		switch target.kind {
		case targetEntry, targetMemo:
			require.Eventually(t, func() bool {
				v, err := mb.Get(ctx, q)
				return err == nil && v == version.Load()
			}, testredis.Timeout, time.Millisecond, "b to see the invalidation of %v", target)
		case targetTag, targetKey:
			require.Eventually(t, func() bool {
				r := localRef{slot: localSlot{name: "k", space: spaceKeys}} // where GetOrLoad keeps it
				_, ok := localGet[struct{}, int64](b, b.kv, &r, nil)
				return !ok
			}, testredis.Timeout, time.Millisecond, "b's copy of k to be dropped by %v", target)
		case targetField:
			require.Eventually(t, func() bool {
				r := b.local.nameRef(h.ref("f"))
				_, ok := localGet[struct{}, int64](b, h.st, &r, nil)
				return !ok
			}, testredis.Timeout, time.Millisecond, "b's copy of the field to be dropped")
		}
		t.Logf("%v reached the other Manager in %v", target, time.Since(start).Round(10*time.Microsecond))
	}
	assert.Positive(t, b.Stats().Local.Received)
	assert.Positive(t, a.Stats().Local.Sent)

	// A write on one drops the other's copy too.
	require.NoError(t, b.Set(ctx, "menu", "v1"))
	_, err := GetOrLoad(ctx, a, "menu", func(context.Context) (string, error) { return "", nil })
	require.NoError(t, err)
	require.NoError(t, b.Set(ctx, "menu", "v2"))
	require.Eventually(t, func() bool {
		v, err := GetOrLoad(ctx, a, "menu", func(context.Context) (string, error) { return "", nil })
		return err == nil && v == "v2"
	}, testredis.Timeout, time.Millisecond, "a's copy to be dropped by b's write")
}

func TestLocalTierResubscribes(t *testing.T) {
	srv := testredis.Start(t)
	clock := newClock()
	a, b := localManager(t, srv, clock), localManager(t, srv, clock)
	waitSubscribed(t, a, b)
	ctx := t.Context()
	_, err := GetOrLoad(ctx, b, "k", func(context.Context) (int, error) { return 1, nil })
	require.NoError(t, err)
	require.Equal(t, 1, b.local.c.EstimatedSize())

	// Kill every pub/sub connection on the server: b cannot know what it
	// misses while it is away, so it clears its tier and subscribes again.
	require.NoError(t, srv.Client(t).Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err())
	require.Eventually(t, func() bool { return b.Stats().Local.Resubscriptions >= 1 }, testredis.Timeout, time.Millisecond,
		"b to subscribe again after its connection was killed")
	assert.Zero(t, b.local.c.EstimatedSize(), "the local tier was cleared")
	assert.Positive(t, b.Stats().Local.Clears)

	// And it hears invalidations again.
	waitSubscribed(t, a, b)
	_, err = GetOrLoad(ctx, b, "k", func(context.Context) (int, error) { return 1, nil })
	require.NoError(t, err)
	require.NoError(t, a.Invalidate(ctx, Key("k")))
	require.Eventually(t, func() bool {
		r := localRef{slot: localSlot{name: "k", space: spaceKeys}} // where GetOrLoad keeps it
		_, ok := localGet[struct{}, int](b, b.kv, &r, nil)
		return !ok
	}, testredis.Timeout, time.Millisecond, "b's copy to be dropped by a's invalidation")
}

func TestLocalTierNeverOutlivesRedis(t *testing.T) {
	testredis.Run(t, func(t *testing.T, be *testredis.Backend) {
		e := newEnv(t, be)
		m := e.manager(&Options{Local: &LocalOptions{TTL: time.Hour}})
		ctx := t.Context()
		var calls atomic.Int32
		load := func(context.Context) (int32, error) { return calls.Add(1), nil }
		v, err := GetOrLoad(ctx, m, "live_orders", load, TTL(30*time.Second), Jitter(0))
		require.NoError(t, err)
		require.Equal(t, int32(1), v)
		v, err = GetOrLoad(ctx, m, "live_orders", load, TTL(30*time.Second), Jitter(0))
		require.NoError(t, err)
		assert.Equal(t, int32(1), v)
		assert.Equal(t, uint64(1), m.Stats().ByName["keys"].LocalHits)
		e.advance(31 * time.Second)
		v, err = GetOrLoad(ctx, m, "live_orders", load, TTL(30*time.Second), Jitter(0))
		require.NoError(t, err)
		assert.Equal(t, int32(2), v, "the local copy ended with the entry's TTL, not the local TTL")

		// The local tier's own TTL bounds it too.
		short := e.manager(&Options{Local: &LocalOptions{TTL: time.Second}})
		_, err = GetOrLoad(ctx, short, "x", load, TTL(time.Hour))
		require.NoError(t, err)
		e.clock.Add(2 * time.Second)
		_, err = GetOrLoad(ctx, short, "x", load, TTL(time.Hour))
		require.NoError(t, err)
		assert.Zero(t, short.Stats().ByName["keys"].LocalHits)
		assert.Equal(t, uint64(1), short.Stats().ByName["keys"].Hits, "read from Redis again")
	})
}

func TestLocalTierBadOptions(t *testing.T) {
	_, rdb := testredis.Mini(t)
	_, err := New(rdb, &Options{Local: &LocalOptions{TTL: -1}})
	assert.ErrorIs(t, err, ErrInvalidOption)
	_, err = New(rdb, &Options{Local: &LocalOptions{MaxEntries: -1}})
	assert.ErrorIs(t, err, ErrInvalidOption)
}

func TestLocalMessages(t *testing.T) {
	for _, c := range []struct {
		all  bool
		keys []string
	}{{true, nil}, {false, []string{"a", "", "b:c\n", "12:x"}}, {false, nil}} {
		id, all, keys, ok := decodeDrop(encodeDrop("me", c.all, c.keys))
		require.True(t, ok)
		assert.Equal(t, "me", id)
		assert.Equal(t, c.all, all)
		assert.Equal(t, c.keys, keys)
	}
	for _, bad := range []string{"", "no newline", "id\nx:abc", "id\n5:ab", "id\n-1:"} {
		_, _, _, ok := decodeDrop(bad)
		assert.False(t, ok, bad)
	}
}
