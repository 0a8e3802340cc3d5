package cache_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	cache "github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/internal/testredis"
)

// Deterministic reproductions of stale sets (DESIGN property 4: a value
// whose load began before an Invalidate of it returned is never stored or
// served after that Invalidate returns, whatever Redis loses). Each test
// sets up one known race or loss step by step, through the public API, and
// fails if the defect comes back.

// TestStaleSetTagMissesLoadInFlight: a load records its tag, then
// takes its lease. An Invalidate(Tag) (I1) between the two takes the tag's
// set away before the lease exists. The load then takes its lease and reads
// version 1; the source moves to version 2 and a second Invalidate(Tag) (I2)
// returns. I2 must void the load: version 1 is never stored after it.
//
// The loading Manager's client is behind a proxy adding 300ms per round
// trip, so the gap between the tag record and the lease is wide.
func TestStaleSetTagMissesLoadInFlight(t *testing.T) {
	ctx := t.Context()
	srv := testredis.Start(t)
	p := testredis.NewProxy(t, srv.Addr())
	p.SetLatency(150*time.Millisecond, 150*time.Millisecond)
	slow := newManager(t, srv.ClientWith(t, func(o *redis.Options) { o.Addr = p.Addr() }), nil)
	fast := newManager(t, srv.Client(t), nil)
	raw := srv.Client(t)

	const key, tag = "d1-item", "d1-tag"
	var source atomic.Int64
	source.Store(1)
	started := make(chan int64, 1)
	gate := make(chan struct{})
	load := func(ctx context.Context) (int64, error) {
		v := source.Load()
		select {
		case started <- v:
		default:
		}
		if err := await(ctx, gate); err != nil {
			return 0, err
		}
		return v, nil
	}
	done := make(chan error, 1)
	go func() {
		_, err := cache.GetOrLoad(ctx, slow, key, load, cache.Tags(tag))
		done <- err
	}()

	var listErr error // ends the polling, to be reported below
	require.Eventually(t, func() bool {
		keys, err := listBookkeepingKeys(ctx, raw, tag)
		listErr = err
		return err != nil || len(keys) > 0
	}, 10*time.Second, time.Millisecond, "the load did not record its tag")
	require.NoError(t, listErr, "listing the bookkeeping keys of %q", tag)
	require.NoError(t, fast.Invalidate(ctx, cache.Tag(tag)), "I1")
	select {
	case <-started:
		t.Fatal("set-up: the load took its lease before I1 returned; the gap between tag record and lease was not wide enough")
	default:
	}
	require.Equal(t, int64(1), testredis.Recv(t, started, "the load to start after I1"))
	source.Store(2)
	require.NoError(t, fast.Invalidate(ctx, cache.Tag(tag)), "I2")
	close(gate)
	require.NoError(t, testredis.Recv(t, done, "the load in flight to return"))

	got, err := cache.GetOrLoad(ctx, fast, key, func(context.Context) (int64, error) { return source.Load(), nil }, cache.Tags(tag))
	require.NoError(t, err)
	require.Equal(t, int64(2), got, "version 1, loaded before I2 returned, was stored after it")
}

// TestStaleSetMemoGenerationEvicted: ForgetAll moves a memo's generation;
// eviction then takes the generation key while an entry of the old
// generation survives. Memo.Get must not answer that entry, computed before
// a ForgetAll that returned.
func TestStaleSetMemoGenerationEvicted(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		ctx := t.Context()
		m := newManager(t, b.Client(t), nil)
		raw := b.Client(t)
		var source atomic.Int64
		source.Store(1)
		mm := cache.Memoize(m, "d2-memo", func(context.Context, string) (int64, error) { return source.Load(), nil })
		got, err := mm.Get(ctx, "a")
		require.NoError(t, err)
		require.Equal(t, int64(1), got)

		source.Store(2)
		require.NoError(t, mm.ForgetAll(ctx))
		entry, err := mm.Key("a")
		require.NoError(t, err)
		evict(t, raw, bookkeepingKeys(t, raw, "d2-memo", entry)...)

		got, err = mm.Get(ctx, "a")
		require.NoError(t, err)
		require.Equal(t, int64(2), got, "version 1, computed before ForgetAll returned, is served after it once the generation is evicted")
	})
}

// TestStaleSetTagSetEvicted: eviction takes a tag's bookkeeping while an entry
// carrying the tag survives. Invalidate(Tag) must still remove the entry.
func TestStaleSetTagSetEvicted(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		ctx := t.Context()
		m := newManager(t, b.Client(t), nil)
		raw := b.Client(t)
		const key, tag = "d3-item", "d3-tag"
		var source atomic.Int64
		source.Store(1)
		get := func() (int64, error) {
			return cache.GetOrLoad(ctx, m, key, func(context.Context) (int64, error) { return source.Load(), nil }, cache.Tags(tag))
		}
		got, err := get()
		require.NoError(t, err)
		require.Equal(t, int64(1), got)

		evict(t, raw, bookkeepingKeys(t, raw, tag)...)
		source.Store(2)
		require.NoError(t, m.Invalidate(ctx, cache.Tag(tag)))

		got, err = get()
		require.NoError(t, err)
		require.Equal(t, int64(2), got, "version 1 is served after Invalidate(Tag) returned, the tag's set having been evicted")
	})
}

// TestStaleSetHashWarmVersionEvicted: a Hash.WarmWith job loads; the field
// is deleted meanwhile (which voids the warm's store), then eviction takes
// the hash's bookkeeping. The warm's store must stay void: Hash.Get never
// answers the value loaded before Delete returned.
func TestStaleSetHashWarmVersionEvicted(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		ctx := t.Context()
		m := newManager(t, b.Client(t), nil)
		raw := b.Client(t)
		h := cache.NewHash[int64](m, "d4-hash")
		var source atomic.Int64
		source.Store(1)
		started := make(chan int64, 1)
		gate := make(chan struct{})
		require.NoError(t, h.WarmWith(func(ctx context.Context) (map[string]int64, error) {
			v := source.Load()
			select {
			case started <- v:
			default:
			}
			if err := await(ctx, gate); err != nil {
				return nil, err
			}
			return map[string]int64{"f": v}, nil
		}))
		done := make(chan error, 1)
		go func() {
			_, err := m.WarmAll(ctx)
			done <- err
		}()
		require.Equal(t, int64(1), testredis.Recv(t, started, "the warm to start"))

		source.Store(2)
		require.NoError(t, h.Delete(ctx, "f"))
		evict(t, raw, bookkeepingKeys(t, raw, "d4-hash")...)
		close(gate)
		testredis.Recv(t, done, "the warm to end") // its error does not matter here

		got, err := h.Get(ctx, "f")
		if !errors.Is(err, cache.ErrMiss) {
			require.NoError(t, err)
			require.Equal(t, int64(2), got, "version 1, loaded before Delete returned, is served after it once the field version is evicted")
		}
	})
}

// TestStaleSetLocalTierBeforeSubscription: a Manager with a local tier
// reads a value before its first subscription is up; an invalidation
// published meanwhile does not reach it. Once it has subscribed it must not
// keep serving that value for the rest of its local TTL.
//
// The Manager's client is behind a proxy that holds SUBSCRIBE back 300ms.
func TestStaleSetLocalTierBeforeSubscription(t *testing.T) {
	ctx := t.Context()
	srv := testredis.Start(t)
	raw := srv.Client(t)
	local := &cache.Options{Local: &cache.LocalOptions{TTL: time.Minute}}
	other := newManager(t, srv.Client(t), local)
	var channel string
	require.Eventually(t, func() bool {
		chans, err := raw.PubSubChannels(ctx, "*").Result()
		if err != nil || len(chans) != 1 {
			return false
		}
		channel = chans[0]
		return true
	}, 10*time.Second, time.Millisecond, "the first Manager did not subscribe")
	// subscribers returns the number of subscribers to channel. It does not
	// call require: it runs in require.Eventually's conditions too.
	subscribers := func() (int64, error) {
		n, err := raw.PubSubNumSub(ctx, channel).Result()
		return n[channel], err
	}

	p := testredis.NewProxy(t, srv.Addr())
	p.DelayWhen(testredis.MatchCommand("subscribe"), 300*time.Millisecond)
	m := newManager(t, srv.ClientWith(t, func(o *redis.Options) { o.Addr = p.Addr() }), local)

	const key = "d5-item"
	var source atomic.Int64
	source.Store(1)
	load := func(context.Context) (int64, error) { return source.Load(), nil }
	got, err := cache.GetOrLoad(ctx, m, key, load)
	require.NoError(t, err)
	require.Equal(t, int64(1), got)
	source.Store(2)
	require.NoError(t, other.Invalidate(ctx, cache.Key(key)))
	n, err := subscribers()
	require.NoError(t, err, "counting the subscribers")
	require.Equal(t, int64(1), n, "set-up: the second Manager subscribed before the invalidation was published")

	var countErr error // ends the polling, to be reported below
	require.Eventually(t, func() bool {
		n, err := subscribers()
		countErr = err
		return err != nil || n == 2
	}, 10*time.Second, time.Millisecond, "the second Manager did not subscribe")
	require.NoError(t, countErr, "counting the subscribers")
	require.Eventually(t, func() bool {
		got, err := cache.GetOrLoad(ctx, m, key, load)
		return err == nil && got == 2
	}, 2*time.Second, 5*time.Millisecond,
		"version 1, read before an Invalidate that returned, is still served from the local tier 2s after the Manager subscribed (its local TTL is 1m)")
}

// TestStaleSetRefreshJoinsEarlierRefresh: the application updates its
// source, then calls Refresh to load the key anew, while a Refresh of the
// same key by the same Manager is loading the old version. When the second
// Refresh returns, the key must hold a version loaded after it was called:
// a refresh must not return, nor leave, a load that began before it.
func TestStaleSetRefreshJoinsEarlierRefresh(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		ctx := t.Context()
		m := newManager(t, b.Client(t), nil)
		const key = "r-item"
		var source atomic.Int64
		source.Store(1)
		started := make(chan int64, 1)
		gate := make(chan struct{})
		load := func(ctx context.Context) (int64, error) {
			v := source.Load()
			select {
			case started <- v:
				if err := await(ctx, gate); err != nil { // the first load waits
					return 0, err
				}
			default:
			}
			return v, nil
		}
		first := make(chan error, 1)
		go func() {
			_, err := cache.Refresh(ctx, m, key, load)
			first <- err
		}()
		require.Equal(t, int64(1), testredis.Recv(t, started, "the first Refresh to start loading"))

		source.Store(2)
		type result struct {
			v   int64
			err error
		}
		second := make(chan result, 1)
		go func() {
			v, err := cache.Refresh(ctx, m, key, load)
			second <- result{v, err}
		}()
		require.Eventually(t, func() bool { return m.Stats().ByName["keys"].SharedWaits == 1 }, 10*time.Second, time.Millisecond,
			"the second Refresh did not wait for the first")
		close(gate)
		require.NoError(t, testredis.Recv(t, first, "the first Refresh to return"))
		r := testredis.Recv(t, second, "the second Refresh to return")
		require.NoError(t, r.err)

		got, err := cache.Get[int64](ctx, m, key)
		require.NoError(t, err)
		require.Equal(t, int64(2), got, "the key holds version 1, loaded before the second Refresh was called, after it returned")
		require.Equal(t, int64(2), r.v, "the second Refresh returned version 1, loaded before it was called")
	})
}

// newManager returns a Manager over rdb with the tests' prefix, closed in
// t.Cleanup with testredis.CloseWithin.
func newManager(t testing.TB, rdb redis.UniversalClient, opts *cache.Options) *cache.Manager {
	t.Helper()
	var o cache.Options
	if opts != nil {
		o = *opts
	}
	if o.Prefix == "" {
		o.Prefix = "stale"
	}
	m, err := cache.New(rdb, &o)
	require.NoError(t, err)
	t.Cleanup(func() { testredis.CloseWithin(t, "the Manager", m) })
	return m
}

// await waits for gate to close or ctx to end: test loaders wait on their
// gates with it, so that a failed test ends them (Close cancels the loads)
// instead of hanging.
func await(ctx context.Context, gate <-chan struct{}) error {
	select {
	case <-gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
