package cache

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
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
	defer a.Close()
	other := newEnv(t, b).manager(nil) // another process

	var ver atomic.Int64
	ver.Store(1)
	started, release := make(chan struct{}), make(chan struct{})
	load := func(ctx context.Context) (int64, error) {
		v := ver.Load()
		select {
		case started <- struct{}{}:
			if err := await(ctx, release); err != nil {
				return 0, err
			}
		default:
		}
		return v, nil
	}
	faults.on.Store(true)
	first := make(chan int64, 1)
	go func() {
		v, _ := GetOrLoad(ctx, a, "k", load)
		first <- v
	}()
	<-started // the degraded load of version 1 runs

	ver.Store(2)
	require.NoError(t, other.Invalidate(ctx, Key("k")))

	second := make(chan int64, 1)
	go func() {
		v, _ := GetOrLoad(ctx, a, "k", load)
		second <- v
	}()
	require.Eventually(t, func() bool { return a.Stats().Total.SharedWaits == 1 }, 5*time.Second, time.Millisecond)
	close(release)
	require.Equal(t, int64(1), <-first, "the caller that started the load overlaps the invalidation")
	require.Equal(t, int64(2), <-second, "a caller that began after the invalidation returned")
}
