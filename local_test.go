package cache

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

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

// TestLocalTierInvalidatedEverywhere: every write and invalidation on one
// Manager drops the other's local copies, on every backend. On a cluster
// both subscribe on the master of the channel's slot, where PUBLISH goes;
// TestLocalTierClusterAcrossMasters has them on different masters.
func TestLocalTierInvalidatedEverywhere(t *testing.T) {
	testredis.Run(t, func(t *testing.T, be *testredis.Backend) {
		e := newEnv(t, be)
		opts := &Options{Local: &LocalOptions{TTL: time.Minute}}
		a, b := e.manager(opts), e.manager(opts) // subscribed
		localInvalidatedEverywhere(t, a, b, "")
		took := deliveries(t, a, b, 60)
		t.Logf("from the call of Invalidate until the other Manager has the message: median %v, 90th percentile %v",
			took[len(took)/2], took[len(took)*9/10])
	})
}

// localInvalidatedEverywhere checks that every kind of invalidation, and a
// write, on a drops b's local copies. The names it uses end with n, so that
// a test can call it again on the same Managers with another n.
func localInvalidatedEverywhere(t *testing.T, a, b *Manager, n string) {
	t.Helper()
	ctx := t.Context()
	var version atomic.Int64
	load := func(ctx context.Context, q leaderboardQuery) (int64, error) { return version.Load(), nil }
	ma, mb := Memoize(a, "board"+n, load, TTL(time.Hour)), Memoize(b, "board"+n, load, TTL(time.Hour))
	q := leaderboardQuery{"Pune", 5}
	// Each keeps a copy and serves it. A drop that arrives between a read
	// and its next (one of an earlier call's, which a cluster's bus may
	// deliver late to a Manager that subscribed since) makes the next
	// read go to Redis again: read until a copy is served.
	for _, x := range []struct {
		m  *Manager
		mm *Memo[leaderboardQuery, int64]
	}{{a, ma}, {b, mb}} {
		require.Eventually(t, func() bool {
			v, err := x.mm.Get(ctx, q)
			return err == nil && v == 0 && x.m.Stats().ByName["memo:board"+n].LocalHits > 0
		}, testredis.Timeout, time.Millisecond, "a copy in the local tier to be served")
	}

	// Every kind of invalidation on a reaches b's local tier.
	h := NewHash[int64](b, "h"+n)
	for i, target := range []Target{ma.Entry(q), ma.All(), Tag("t" + n), Key("k" + n), NewHash[int64](a, "h"+n).Field("f")} {
		version.Store(int64(i + 1))
		require.NoError(t, b.Set(ctx, "k"+n, version.Load(), Tags("t"+n)))
		_, err := GetOrLoad(ctx, b, "k"+n, func(context.Context) (int64, error) { return -1, nil }) // b keeps k locally
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
				r := localRef{slot: localSlot{name: "k" + n, space: spaceKeys}} // where GetOrLoad keeps it
				_, ok := localGet[struct{}, int64](b, b.kv, &r, nil)
				return !ok
			}, testredis.Timeout, time.Millisecond, "b's copy of k%s to be dropped by %v", n, target)
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
	require.NoError(t, b.Set(ctx, "menu"+n, "v1"))
	_, err := GetOrLoad(ctx, a, "menu"+n, func(context.Context) (string, error) { return "", nil })
	require.NoError(t, err)
	require.NoError(t, b.Set(ctx, "menu"+n, "v2"))
	require.Eventually(t, func() bool {
		v, err := GetOrLoad(ctx, a, "menu"+n, func(context.Context) (string, error) { return "", nil })
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

// TestLocalTierNeverServesDropped attacks the hits that build no key (a
// memo's struct argument, GetOrLoad's plain key): readers on two Managers
// read as fast as they can while entries are invalidated every way there
// is, by either Manager. Once an invalidation has returned, and its
// message has reached the other Manager, no read that starts may return a
// value loaded before it.
func TestLocalTierNeverServesDropped(t *testing.T) {
	srv := testredis.Start(t)
	clock := newClock()
	a, b := localManager(t, srv, clock), localManager(t, srv, clock)
	waitSubscribed(t, a, b)
	ctx := t.Context()
	var version atomic.Int64
	load := func(context.Context, leaderboardQuery) (int64, error) { return version.Load(), nil }
	loadKey := func(context.Context) (int64, error) { return version.Load(), nil }
	q := leaderboardQuery{"Pune", 5}
	memos := map[*Manager]*Memo[leaderboardQuery, int64]{}
	for _, m := range []*Manager{a, b} {
		memos[m] = Memoize(m, "board", load, TTL(time.Hour), Tags("boards"))
		m.OnEvent("board.changed", func(context.Context, any) []Target {
			return []Target{memos[m].Entry(q), Key("summary")}
		})
	}
	ways := []struct {
		name       string
		invalidate func(m *Manager) error
	}{
		{"entry", func(m *Manager) error { return m.Invalidate(ctx, memos[m].Entry(q), Key("summary")) }},
		{"tag", func(m *Manager) error { return m.Invalidate(ctx, Tag("boards"), Key("summary")) }},
		{"event", func(m *Manager) error { return m.Emit(ctx, "board.changed", nil) }},
		{"memo", func(m *Manager) error { return m.Invalidate(ctx, memos[m].All(), Prefix("sum")) }},
		{"forget", func(m *Manager) error {
			return errors.Join(memos[m].Forget(ctx, q), m.Delete(ctx, "summary"))
		}},
		{"refresh", func(m *Manager) error {
			_, err1 := memos[m].Refresh(ctx, q)
			_, err2 := Refresh(ctx, m, "summary", loadKey)
			return errors.Join(err1, err2)
		}},
	}

	var floor atomic.Int64 // no read that starts now may return less
	stop := make(chan struct{})
	var readers sync.WaitGroup
	var reads, stale atomic.Int64
	for _, m := range []*Manager{a, b, b} {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				f := floor.Load()
				v, err := memos[m].Get(ctx, q)
				w, err2 := GetOrLoad(ctx, m, "summary", loadKey)
				if err != nil || err2 != nil {
					t.Errorf("a read failed: %v, %v", err, err2)
					return
				}
				reads.Add(1)
				if v < f || w < f {
					stale.Add(1)
					t.Errorf("read %d (memo) and %d (key) after version %d was invalidated everywhere", v, w, f)
					return
				}
			}
		})
	}
	i := int64(0)
	for range 15 {
		for _, way := range ways {
			for _, m := range []*Manager{a, b} {
				i++
				version.Store(i)
				require.NoError(t, way.invalidate(m), way.name)
				require.Eventually(t, func() bool {
					sa, sb := a.Stats().Local, b.Stats().Local
					return sa.Received >= sb.Sent && sb.Received >= sa.Sent
				}, testredis.Timeout, 100*time.Microsecond, "the invalidation by %s to reach the other Manager", way.name)
				floor.Store(i)
			}
		}
	}
	close(stop)
	testredis.Wait(t, &readers, "the readers to stop")
	assert.Zero(t, stale.Load())
	hits := b.Stats().ByName["memo:board"].LocalHits + a.Stats().ByName["memo:board"].LocalHits
	t.Logf("%d invalidations, %d reads, %d memo local hits, %d key local hits", i, reads.Load(), hits,
		a.Stats().ByName["keys"].LocalHits+b.Stats().ByName["keys"].LocalHits)
	assert.Positive(t, hits, "the readers were served by the local tier")
	assert.Positive(t, a.Stats().ByName["keys"].LocalHits+b.Stats().ByName["keys"].LocalHits)
}

// TestLocalArgCopiesNeverShared: two arguments share a local copy only
// when they share a Redis entry.
func TestLocalArgCopiesNeverShared(t *testing.T) {
	srv := testredis.Start(t)
	m := localManager(t, srv, newClock())
	waitSubscribed(t, m)
	ctx := t.Context()

	// A pointer's target may change under the same pointer: the key is
	// the target's, and so is the copy.
	type byPtr struct{ N *int }
	n := 1
	ptrs := Memoize(m, "ptr", func(_ context.Context, a byPtr) (int, error) { return *a.N, nil })
	assert.Nil(t, ptrs.layout, "a pointer argument is not kept under the argument")
	for range 2 {
		v, err := ptrs.Get(ctx, byPtr{&n})
		require.NoError(t, err)
		require.Equal(t, 1, v)
	}
	n = 2
	v, err := ptrs.Get(ctx, byPtr{&n})
	require.NoError(t, err)
	assert.Equal(t, 2, v, "the target changed: another entry")

	// Floats: 0 and -0 are one argument, every NaN one argument, 1 another.
	type byFloat struct {
		F    float64
		Note string `cache:"-"`
	}
	var calls atomic.Int32
	floats := Memoize(m, "float", func(_ context.Context, a byFloat) (string, error) {
		calls.Add(1)
		return fmt.Sprint(a.F), nil
	})
	require.NotNil(t, floats.layout)
	for _, c := range []struct {
		arg  byFloat
		want string
	}{
		{byFloat{F: 0}, "0"}, {byFloat{F: math.Copysign(0, -1)}, "0"}, {byFloat{F: 0, Note: "x"}, "0"},
		{byFloat{F: math.NaN()}, "NaN"}, {byFloat{F: -math.NaN()}, "NaN"}, {byFloat{F: math.NaN()}, "NaN"},
		{byFloat{F: 1}, "1"}, {byFloat{F: 1}, "1"},
	} {
		v, err := floats.Get(ctx, c.arg)
		require.NoError(t, err)
		assert.Equal(t, c.want, v, "%+v", c.arg)
	}
	assert.Equal(t, int32(3), calls.Load(), "one load per argument")
	assert.Positive(t, m.Stats().ByName["memo:float"].LocalHits)

	// Two memos of one type: one argument, two entries, two copies.
	double := func(_ context.Context, s string) (string, error) { return s + s, nil }
	upper := func(_ context.Context, s string) (string, error) { return strings.ToUpper(s), nil }
	d, u := Memoize(m, "double", double), Memoize(m, "upper", upper)
	for range 2 {
		v, err := d.Get(ctx, "ab")
		require.NoError(t, err)
		assert.Equal(t, "abab", v)
		v, err = u.Get(ctx, "ab")
		require.NoError(t, err)
		assert.Equal(t, "AB", v)
	}

	// Two arguments with one hash take turns in a slot; neither is served
	// the other's copy. Forge the collision: keep "ab"'s copy in "xy"'s
	// slot.
	xy := "xy"
	r := localRef{slot: localSlot{space: d.space, arg: d.layout.hash(m.local.seed, unsafe.Pointer(&xy))}, layout: d.layout}
	r.bucket = m.local.bucket(localKey(mustRef(t, d, "ab")))
	m.localPut(&r, localKeep(&r, "ab", "abab"), 0, m.local.begin(&r))
	_, ok := localGet[string, string](m, d.st, &r, &xy)
	assert.False(t, ok, "a copy kept for another argument is not served")
	v2, err := d.Get(ctx, "xy")
	require.NoError(t, err)
	assert.Equal(t, "xyxy", v2)
}

func mustRef[A, R any](t *testing.T, mm *Memo[A, R], a A) entryRef {
	t.Helper()
	ref, err := mm.ref(a)
	require.NoError(t, err)
	return ref
}
