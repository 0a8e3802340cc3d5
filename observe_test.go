package cache

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu     sync.Mutex // protects events
	events []Event
}

func (r *recorder) Observe(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) count(k EventKind, name string) (n uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e.Kind == k && e.Name == name {
			n += e.N
		}
	}
	return n
}

func TestObserver(t *testing.T) {
	srv := testredis.Start(t)
	rec := &recorder{}
	rdb := faultClient(t, srv.Addr())
	m, err := New(rdb, &Options{Prefix: "test", Observer: rec, Breaker: BreakerOptions{Failures: 2, CoolDown: time.Minute}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	ctx := t.Context()
	errBoom := errors.New("boom")
	memo := Memoize(m, "board", func(ctx context.Context, n int) (int, error) {
		if n < 0 {
			return 0, errBoom
		}
		time.Sleep(time.Millisecond)
		return n, nil
	})
	for range 3 {
		_, err := memo.Get(ctx, 1)
		require.NoError(t, err)
	}
	_, err = memo.Get(ctx, -1)
	require.ErrorIs(t, err, errBoom)
	require.NoError(t, m.Invalidate(ctx, Key("a"), Key("b"), memo.All()))

	assert.Equal(t, uint64(2), rec.count(EventHit, "memo:board"))
	assert.Equal(t, uint64(2), rec.count(EventMiss, "memo:board"))
	assert.Equal(t, uint64(2), rec.count(EventLoad, "memo:board"))
	assert.Equal(t, uint64(1), rec.count(EventLoadError, "memo:board"))
	assert.Equal(t, uint64(2), rec.count(EventInvalidate, "key"))
	assert.Equal(t, uint64(1), rec.count(EventInvalidate, "memo"))
	rec.mu.Lock()
	var loads []Event
	for _, e := range rec.events {
		if e.Kind == EventLoad {
			loads = append(loads, e)
		}
	}
	rec.mu.Unlock()
	require.Len(t, loads, 2)
	assert.GreaterOrEqual(t, loads[0].Duration, time.Millisecond, "a load's duration is told")
	assert.ErrorIs(t, loads[1].Err, errBoom, "and its error")

	// The Observer's counts and Stats agree.
	st := m.Stats().ByName["memo:board"]
	assert.Equal(t, st.Hits, rec.count(EventHit, "memo:board"))
	assert.Equal(t, st.Loads, rec.count(EventLoad, "memo:board"))

	srv.Kill()
	for range 3 {
		_ = m.Get(ctx, "k", new(int))
	}
	assert.Equal(t, uint64(1), rec.count(EventBreakerState, "open"), "breaker changes are told")
	assert.Equal(t, "open", m.Stats().Breaker)
}

func TestEventKindNames(t *testing.T) {
	seen := map[string]bool{}
	for k := EventKind(0); k <= EventBreakerState; k++ {
		name := k.String()
		assert.NotEqual(t, "unknown", name, "kind %d", k)
		assert.False(t, seen[name], name)
		seen[name] = true
	}
	assert.Equal(t, "invalidate", EventInvalidate.String())
	assert.Equal(t, "breaker_state", EventBreakerState.String())
	var c Counters
	assert.Len(t, c.fields(), int(numCounted))
}

func TestLockStats(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		ctx := t.Context()
		// A lease a real server's clock cannot end while the test runs; the
		// test moves it on.
		l, err := m.TryLock(ctx, "order:1", 10*time.Second)
		require.NoError(t, err)
		_, err = m.Lock(ctx, "order:1", time.Second, LinearRetry(time.Millisecond), MaxAttempts(3))
		require.ErrorIs(t, err, ErrNotObtained)
		e.advance(11 * time.Second)
		require.ErrorIs(t, l.Release(ctx), ErrLockLost)
		st := m.Stats().ByName["locks"]
		assert.Equal(t, uint64(1), st.LocksObtained)
		assert.Equal(t, uint64(3), st.LockWaits)
		assert.Equal(t, uint64(1), st.LocksLost)
	})
}
