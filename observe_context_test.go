package cache

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

type ctxKey struct{}

// ctxRecorder is a ContextObserver that keeps each event with the value
// of ctxKey in the context it was told with ("" for Observe).
type ctxRecorder struct {
	mu     sync.Mutex // protects events, callers
	events []Event
	caller []string
}

func (r *ctxRecorder) Observe(e Event) { r.record(e, "") }

func (r *ctxRecorder) ObserveContext(ctx context.Context, e Event) {
	v, _ := ctx.Value(ctxKey{}).(string)
	if v == "" {
		v = "(a context without the caller's value)"
	}
	r.record(e, v)
}

func (r *ctxRecorder) record(e Event, caller string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	r.caller = append(r.caller, caller)
}

// of returns the events of kind k, and the caller each was told with.
func (r *ctxRecorder) of(k EventKind) (events []Event, callers []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, e := range r.events {
		if e.Kind == k {
			events, callers = append(events, e), append(callers, r.caller[i])
		}
	}
	return events, callers
}

// TestContextObserver checks that a ContextObserver gets the caller's
// context with loads (a failed one too), invalidations and locks, with
// their durations, and Observe for the rest.
func TestContextObserver(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		rec := &ctxRecorder{}
		m := newEnv(t, b).manager(&Options{Observer: rec})
		ctx := context.WithValue(t.Context(), ctxKey{}, "request-1")
		errBoom := errors.New("boom")
		memo := Memoize(m, "board", func(ctx context.Context, n int) (int, error) {
			if n < 0 {
				return 0, errBoom
			}
			time.Sleep(5 * time.Millisecond)
			return n, nil
		})
		_, err := memo.Get(ctx, 1)
		require.NoError(t, err)
		_, err = memo.Get(ctx, -1)
		require.ErrorIs(t, err, errBoom)
		require.NoError(t, m.Invalidate(ctx, memo.Entry(1), Key("k")))
		l, err := m.TryLock(ctx, "job", time.Second)
		require.NoError(t, err)
		_, err = m.TryLock(context.WithValue(t.Context(), ctxKey{}, "request-2"), "job", time.Second)
		require.ErrorIs(t, err, ErrNotObtained)
		require.NoError(t, l.Release(ctx))

		loads, callers := rec.of(EventLoad)
		require.Len(t, loads, 2)
		require.Equal(t, []string{"request-1", "request-1"}, callers, "the loads' context")
		require.GreaterOrEqual(t, loads[0].Duration, 5*time.Millisecond, "the load's duration")
		require.ErrorIs(t, loads[1].Err, errBoom)

		inv, callers := rec.of(EventInvalidate)
		require.Len(t, inv, 2, "one event per kind of target")
		require.Equal(t, []string{"request-1", "request-1"}, callers, "the invalidation's context")
		require.Positive(t, inv[0].Duration, "the invalidation's duration")

		obtained, callers := rec.of(EventLockObtained)
		require.Len(t, obtained, 1)
		require.Equal(t, []string{"request-1"}, callers, "the lock's context")
		require.Positive(t, obtained[0].Duration, "the time obtaining took")
		_, callers = rec.of(EventLockWait)
		require.Equal(t, []string{"request-2"}, callers, "the waiting caller's context")

		_, callers = rec.of(EventHit)
		require.Empty(t, callers, "no hit: each Get was a miss")
		_, callers = rec.of(EventMiss)
		require.NotEmpty(t, callers)
		for _, c := range callers {
			require.Empty(t, c, "a miss is told with Observe")
		}
	})
}

// TestContextObserverSharedLoad checks that a load that several callers
// share is told once, with the context of the caller that started it.
func TestContextObserverSharedLoad(t *testing.T) {
	rec := &ctxRecorder{}
	mr := newMini(t)
	m := newEnv(t, &testredis.Backend{Name: "miniredis", Mini: mr}).manager(&Options{Observer: rec})
	g := newGate()
	memo := Memoize(m, "board", func(ctx context.Context, n int) (int, error) {
		return n, g.pass(ctx)
	})
	first := context.WithValue(t.Context(), ctxKey{}, "first")
	done := make(chan error, 1)
	go func() {
		_, err := memo.Get(first, 1)
		done <- err
	}()
	g.reached(t, "the first caller's load")
	second := make(chan error, 1)
	go func() {
		_, err := memo.Get(context.WithValue(t.Context(), ctxKey{}, "second"), 1)
		second <- err
	}()
	require.Eventually(t, func() bool { return m.Stats().Total.SharedWaits == 1 }, testredis.Timeout, time.Millisecond,
		"the second caller did not join the first one's load")
	g.open()
	require.NoError(t, testredis.Recv(t, done, "the first caller's Get"))
	require.NoError(t, testredis.Recv(t, second, "the second caller's Get"))
	_, callers := rec.of(EventLoad)
	require.Equal(t, []string{"first"}, callers)
}
