package cache

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// failScripts is a hook that fails every script call while on.
type failScripts struct{ on atomic.Bool }

func (f *failScripts) DialHook(next redis.DialHook) redis.DialHook { return next }
func (f *failScripts) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if f.on.Load() && strings.HasPrefix(cmd.Name(), "eval") {
			cmd.SetErr(errors.New("injected script failure"))
			return cmd.Err()
		}
		return next(ctx, cmd)
	}
}
func (f *failScripts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A value loaded while Redis fails (degraded, not stored) must not go to a
// caller that joined the load after another process invalidated the key.
func TestDegradedLoadNotServedAfterInvalidate(t *testing.T) {
	mr, _ := testredis.Mini(t)
	b := &testredis.Backend{Name: "miniredis", Mini: mr}
	ctx := t.Context()
	rdbA := b.Client(t)
	faults := &failScripts{}
	rdbA.AddHook(faults)
	a, err := New(rdbA, &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, a) })
	other := newEnv(t, b).manager(nil) // another process

	var ver atomic.Int64
	ver.Store(1)
	var calls atomic.Int32
	g := newGate()
	load := func(ctx context.Context) (int64, error) {
		v := ver.Load()
		if calls.Add(1) == 1 { // the first load waits; the ones after it do not
			if err := g.pass(ctx); err != nil {
				return 0, err
			}
		}
		return v, nil
	}
	faults.on.Store(true)
	first := make(chan int64, 1)
	go func() {
		v, _ := GetOrLoad(ctx, a, "k", load)
		first <- v
	}()
	g.reached(t, "the degraded load of version 1 to start")

	ver.Store(2)
	require.NoError(t, other.Invalidate(ctx, Key("k")))

	second := make(chan int64, 1)
	go func() {
		v, _ := GetOrLoad(ctx, a, "k", load)
		second <- v
	}()
	require.Eventually(t, func() bool { return a.Stats().Total.SharedWaits == 1 }, testredis.Timeout, time.Millisecond,
		"the second caller to join the load in flight")
	g.open()
	assert.Equal(t, int64(1), testredis.Recv(t, first, "the first caller's value"), "the caller that started the load overlaps the invalidation")
	assert.Equal(t, int64(2), testredis.Recv(t, second, "the second caller's value"), "a caller that began after the invalidation returned")
}
