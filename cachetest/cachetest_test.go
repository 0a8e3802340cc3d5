package cachetest_test

import (
	"context"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/cachetest"
	"github.com/stockpot-go/cache/internal/testredis"
)

// A memo entry is a hit until Advance moves past its TTL, and is then gone
// from Redis and loaded again.
func TestAdvancePastTTLExpiresMemoEntry(t *testing.T) {
	env := cachetest.New(t, nil)
	closeWithin(t, env.Manager)
	ctx := t.Context()
	var calls atomic.Int32
	price := cache.Memoize(env.Manager, "price", func(ctx context.Context, pizza string) (int, error) {
		calls.Add(1)
		return 1200, nil
	}, cache.TTL(time.Minute))

	for range 2 {
		p, err := price.Get(ctx, "margherita")
		require.NoError(t, err)
		require.Equal(t, 1200, p)
	}
	require.Equal(t, int32(1), calls.Load(), "the second Get is a hit")
	key, err := price.Key("margherita")
	require.NoError(t, err)
	require.True(t, env.Redis.Exists(key))

	env.Advance(50 * time.Second) // inside the TTL, which jitter shortens by a tenth at most
	_, err = price.Get(ctx, "margherita")
	require.NoError(t, err)
	require.Equal(t, int32(1), calls.Load(), "still fresh")

	env.Advance(time.Minute)
	require.False(t, env.Redis.Exists(key), "Redis expired the entry")
	p, err := price.Get(ctx, "margherita")
	require.NoError(t, err)
	require.Equal(t, 1200, p)
	require.Equal(t, int32(2), calls.Load(), "loaded again after the TTL")
}

// Past its TTL but inside StaleFor, an entry is still in Redis and the
// Manager, on the Env's clock, serves it stale and refreshes it.
func TestAdvanceIntoStaleWindow(t *testing.T) {
	env := cachetest.New(t, nil)
	closeWithin(t, env.Manager)
	ctx := t.Context()
	var version atomic.Int32
	tweets := cache.Memoize(env.Manager, "tweets", func(ctx context.Context, user string) (int32, error) {
		return version.Add(1), nil
	}, cache.TTL(time.Minute), cache.StaleFor(time.Hour))

	v, err := tweets.Get(ctx, "gopher")
	require.NoError(t, err)
	require.Equal(t, int32(1), v)

	env.Advance(2 * time.Minute)
	v, err = tweets.Get(ctx, "gopher")
	require.NoError(t, err)
	require.Equal(t, int32(1), v, "the stale value, at once")
	require.Eventually(t, func() bool {
		v, err := tweets.Get(ctx, "gopher")
		return err == nil && v == 2
	}, testredis.Timeout, 5*time.Millisecond, "the background refresh to store the new value")

	require.GreaterOrEqual(t, env.Manager.Stats().ByName["memo:tweets"].StaleHits, uint64(1))
	// The refresh counts its success just after storing the value.
	require.Eventually(t, func() bool {
		return env.Manager.Stats().ByName["memo:tweets"].RefreshesSucceeded == 1
	}, testredis.Timeout, time.Millisecond, "the refresh to be counted as succeeded")
}

// Clock.Add alone moves the Managers' idea of freshness, not Redis: a hash
// field past its TTL is a miss although the hash is still in Redis.
func TestClockDecidesFreshness(t *testing.T) {
	env := cachetest.New(t, nil)
	other := env.NewManager(t, nil)
	closeWithin(t, env.Manager, other)
	ctx := t.Context()
	sessions := cache.NewHash[string](env.Manager, "sessions", cache.TTL(time.Hour))
	require.NoError(t, sessions.Set(ctx, "c-1", "cart: 2 margheritas"))

	env.Clock.Add(2 * time.Hour)
	_, err := sessions.Get(ctx, "c-1")
	require.ErrorIs(t, err, cache.ErrMiss)
	_, err = cache.NewHash[string](other, "sessions").Get(ctx, "c-1")
	require.ErrorIs(t, err, cache.ErrMiss, "the second Manager shares the clock")
	require.Len(t, env.Redis.Keys(), 1, "Redis still holds the hash")
}

// Two Managers of an Env are two instances of one fleet: they share data,
// invalidations, loads and locks.
func TestManagersShareData(t *testing.T) {
	env := cachetest.New(t, &cache.Options{Prefix: "pizzeria"})
	a, b := env.Manager, env.NewManager(t, &cache.Options{Prefix: "pizzeria"})
	closeWithin(t, a, b)
	ctx := t.Context()

	require.NoError(t, a.Set(ctx, "special", "quattro formaggi"))
	got, err := cache.Get[string](ctx, b, "special")
	require.NoError(t, err)
	require.Equal(t, "quattro formaggi", got)

	require.NoError(t, b.Invalidate(ctx, cache.Key("special")))
	_, err = cache.Get[string](ctx, a, "special")
	require.ErrorIs(t, err, cache.ErrMiss)

	var loads atomic.Int32
	release := make(chan struct{})
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	defer open() // so that the load ends when the test fails first
	load := func(ctx context.Context) (int, error) {
		loads.Add(1)
		select {
		case <-release:
			return 42, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	var wg sync.WaitGroup
	for _, m := range []*cache.Manager{a, b, a, b} {
		wg.Go(func() {
			n, err := cache.GetOrLoad(ctx, m, "queue_length", load)
			assert.NoError(t, err)
			assert.Equal(t, 42, n)
		})
	}
	// Each Manager's first caller leads its flight and the second joins it;
	// the flight of the Manager that did not get the lease waits on it.
	require.Eventually(t, func() bool {
		var lease, shared uint64
		for _, m := range []*cache.Manager{a, b} {
			st := m.Stats().ByName["keys"]
			lease += st.LeaseWaits
			shared += st.SharedWaits
		}
		return lease == 1 && shared == 2
	}, testredis.Timeout, time.Millisecond, "the 4 callers did not all come to wait for the one load")
	open()
	testredis.Wait(t, &wg, "4 callers on 2 Managers to get the value")
	require.Equal(t, int32(1), loads.Load(), "one load across both Managers")

	lock, err := a.TryLock(ctx, "order:7", time.Minute)
	require.NoError(t, err)
	_, err = b.TryLock(ctx, "order:7", time.Minute)
	require.ErrorIs(t, err, cache.ErrNotObtained)
	require.NoError(t, lock.Release(ctx))
}

// Advancing past a lock's lease expires it in Redis: its holder finds it
// lost, and another Manager obtains it with a higher fence.
func TestAdvanceExpiresLock(t *testing.T) {
	env := cachetest.New(t, nil)
	other := env.NewManager(t, nil)
	closeWithin(t, env.Manager, other)
	ctx := t.Context()

	first, err := env.Manager.Lock(ctx, "inventory:flour", 10*time.Second)
	require.NoError(t, err)
	env.Advance(11 * time.Second)
	second, err := other.TryLock(ctx, "inventory:flour", 10*time.Second)
	require.NoError(t, err)
	require.Greater(t, second.Fence(), first.Fence())
	require.ErrorIs(t, first.Release(ctx), cache.ErrLockLost)
	require.NoError(t, second.Release(ctx))
}

// New copies opts: the caller's Options keep their Now, and the Manager has
// the rest of them.
func TestNewCopiesOptions(t *testing.T) {
	opts := &cache.Options{Prefix: "scoopjoy"}
	env := cachetest.New(t, opts)
	closeWithin(t, env.Manager)
	require.Nil(t, opts.Now)
	require.Equal(t, "scoopjoy:kitchen_queue", env.Manager.Key("kitchen_queue"))
}

// Redis's TIME follows the Clock, so code that reads the server's time
// agrees with the Managers.
func TestAdvanceMovesRedisTime(t *testing.T) {
	env := cachetest.New(t, nil)
	closeWithin(t, env.Manager)
	ctx := t.Context()
	before := env.Clock.Now()

	env.Advance(90 * time.Minute)
	require.Equal(t, before.Add(90*time.Minute), env.Clock.Now())
	now, err := env.Client.Time(ctx).Result()
	require.NoError(t, err)
	require.True(t, now.Equal(env.Clock.Now()), "TIME %v, clock %v", now, env.Clock.Now())
}

// When the test ends, its Managers, clients and miniredis are closed.
func TestCleanupClosesEverything(t *testing.T) {
	var env *cachetest.Env
	var other *cache.Manager
	var addr string
	// The subtest's end runs cachetest's own cleanup, Close included.
	testredis.Within(t, "the subtest to end and its cleanup to run", func() {
		t.Run("user", func(t *testing.T) {
			env = cachetest.New(t, nil)
			other = env.NewManager(t, nil)
			addr = env.Redis.Addr()
			require.NoError(t, env.Manager.Set(t.Context(), "k", 1))
		})
	})
	ctx := t.Context()

	require.ErrorIs(t, env.Manager.Set(ctx, "k", 1), cache.ErrClosed)
	require.ErrorIs(t, other.Set(ctx, "k", 1), cache.ErrClosed)
	require.ErrorIs(t, env.Client.Ping(ctx).Err(), redis.ErrClosed)

	_, err := net.DialTimeout("tcp", addr, time.Second)
	require.Error(t, err, "miniredis no longer listens")
}

// closeWithin closes ms when t ends, before cachetest's own cleanup, which
// waits for Close without a bound, gets to them: it fails t when one does
// not close within testredis.Timeout.
func closeWithin(t *testing.T, ms ...*cache.Manager) {
	t.Helper()
	t.Cleanup(func() {
		for _, m := range ms {
			testredis.CloseWithin(t, "the Manager", m)
		}
	})
}

// fatalTB records a test's Fatalf and ends its goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = format
	runtime.Goexit()
}

// Invalid Options fail the test, naming cache.New.
func TestNewFailsTheTestOnInvalidOptions(t *testing.T) {
	tb := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		cachetest.New(tb, &cache.Options{Prefix: "{bad}"})
		t.Error("New returned")
	}()
	testredis.Recv(t, done, "New to fail the test")
	require.Contains(t, tb.msg, "cache.New")
}

// The clock is safe for concurrent use.
func TestClockConcurrent(t *testing.T) {
	env := cachetest.New(t, nil)
	closeWithin(t, env.Manager)
	start := env.Clock.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				env.Clock.Add(time.Millisecond)
				_ = env.Clock.Now()
			}
		})
	}
	testredis.Wait(t, &wg, "8 goroutines to move the clock")
	require.Equal(t, start.Add(800*time.Millisecond), env.Clock.Now())
}
