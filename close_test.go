package cache

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stockpot-go/cache/internal/testredis"
)

// TestCloseLeavesNoGoroutines: 200 Managers with a local tier over one
// client, used and closed, leave no goroutine behind while the client
// lives on.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	srv := testredis.Start(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	require.NoError(t, rdb.Ping(ctx).Err())
	before := goleak.IgnoreCurrent()
	for i := range 200 {
		m, err := New(rdb, &Options{Prefix: fmt.Sprint("m", i), Local: &LocalOptions{}})
		require.NoError(t, err)
		memo := Memoize(m, "m", func(ctx context.Context, n int) (int, error) { return n, nil })
		_, err = memo.Get(ctx, i)
		require.NoError(t, err)
		require.NoError(t, m.Close())
	}
	goleak.VerifyNone(t, before)
}

// TestCloseWithEveryOption: a Manager with every option on and every kind
// of background work under way (a load, a refresh, a warm-up schedule, a
// held lock, a command cut short at its deadline) ends it all on Close,
// within its bound.
func TestCloseWithEveryOption(t *testing.T) {
	srv := testredis.Start(t)
	proxy := testredis.NewProxy(t, srv.Addr())
	rdb := faultClient(t, proxy.Addr())
	ctx := t.Context()
	require.NoError(t, rdb.Ping(ctx).Err())
	before := goleak.IgnoreCurrent()

	clock := newClock()
	var events atomic.Int64
	m, err := New(rdb, &Options{
		Prefix: "test", Now: clock.Now, Timeout: testBudget,
		Local:    &LocalOptions{MaxEntries: 100, TTL: time.Minute},
		Observer: ObserverFunc(func(Event) { events.Add(1) }),
	})
	require.NoError(t, err)
	scriptsLoaded(t, m)

	// A stale entry whose refresh blocks until Close.
	refreshing := make(chan struct{})
	var calls atomic.Int64
	feed := Memoize(m, "feed", func(ctx context.Context, user string) (string, error) {
		if calls.Add(1) == 1 {
			return "first", nil
		}
		close(refreshing)
		<-ctx.Done()
		return "", ctx.Err()
	}, TTL(time.Minute), StaleFor(time.Hour), EarlyRefresh(1))
	_, err = feed.Get(ctx, "ana")
	require.NoError(t, err)
	clock.Add(2 * time.Minute)
	_, err = feed.Get(ctx, "ana")
	require.NoError(t, err)
	testredis.Recv(t, refreshing, "the refresh to start")

	// A load that blocks until Close, whose caller has gone.
	loading := make(chan struct{})
	gone, cancel := context.WithCancel(ctx)
	go func() {
		_, _ = GetOrLoad(gone, m, "slow", func(ctx context.Context) (int, error) {
			close(loading)
			<-ctx.Done()
			return 0, ctx.Err()
		})
	}()
	testredis.Recv(t, loading, "the load to start")
	cancel()

	// A warm-up schedule, a held lock, and a command cut short.
	m.Warm("w", func(ctx context.Context) (int, error) { return 0, nil })
	_ = m.WarmEvery(time.Hour)
	lockHeld := make(chan struct{})
	lockDone := make(chan error, 1)
	go func() {
		lockDone <- m.WithLock(ctx, "oven", time.Second, func(ctx context.Context) error {
			close(lockHeld)
			<-ctx.Done()
			return nil
		})
	}()
	testredis.Recv(t, lockHeld, "the lock to be held")
	proxy.SetBlackhole(true)
	assert.ErrorIs(t, m.Get(ctx, "k", new(int)), ErrUnavailable)

	var closeErr error
	took, stalled := timed(func() { closeErr = m.Close() })
	require.NoError(t, closeErr)
	t.Logf("Close took %v", took.Round(time.Millisecond))
	within(t, took, stalled, closeWait, "Close is bounded")
	testredis.Recv(t, lockDone, "WithLock to return")
	proxy.SetBlackhole(false)
	proxy.Reset()
	goleak.VerifyNone(t, before)
}

// TestShutdownGivesUp: Shutdown returns when its context ends, saying
// what still runs, here a loader that ignores its context; Close then
// waits for it again.
func TestShutdownGivesUp(t *testing.T) {
	m := newEnv(t, &testredis.Backend{Name: "miniredis", Mini: newMini(t)}).manager(nil)
	release := make(chan struct{})
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	defer open() // so that the loader ends, and the cleanup's Close returns, when the test fails first
	started := make(chan struct{})
	go func() {
		_, _ = GetOrLoad(context.Background(), m, "k", func(context.Context) (int, error) {
			close(started)
			<-release // ignores its context
			return 1, nil
		})
	}()
	testredis.Recv(t, started, "the load to start")
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	err := m.Shutdown(ctx)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.ErrorContains(t, err, "1 background tasks")
	open()
	assert.NoError(t, m.Close(), "Close waits for it again")
	assert.ErrorIs(t, m.Set(t.Context(), "k", 1), ErrClosed)
}
