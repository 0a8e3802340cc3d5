package cache

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// An Invalidate that fails because Redis cannot be reached returns its
// error, and is not lost: it is retried in the background, and reaches the
// other Managers once Redis is back.
func TestFailedInvalidateIsRetried(t *testing.T) {
	srv := testredis.Start(t)
	p := testredis.NewProxy(t, srv.Addr())
	ctx := t.Context()
	rdbA := srv.ClientWith(t, func(o *redis.Options) {
		o.Addr = p.Addr()
		o.ReadTimeout, o.WriteTimeout, o.DialTimeout = 200*time.Millisecond, 200*time.Millisecond, 200*time.Millisecond
		o.MaxRetries = -1
	})
	a, err := New(rdbA, &Options{Prefix: "test", Breaker: BreakerOptions{Failures: -1}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, a) })
	b, err := New(srv.Client(t), &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, b) })

	var version atomic.Int64
	version.Store(1)
	load := func(context.Context) (int64, error) { return version.Load(), nil }
	_, err = GetOrLoad(ctx, b, "summary", load)
	require.NoError(t, err)
	require.NoError(t, b.Set(ctx, "tagged", 1, Tags("menus")))

	version.Store(2)
	p.SetBlackhole(true)
	require.Error(t, a.Invalidate(ctx, Key("summary"), Tag("menus")), "Redis cannot be reached")
	st := a.Stats().Invalidations
	assert.Equal(t, 2, st.Pending, "both targets wait to be retried")
	assert.Zero(t, st.Retried)
	got, err := GetOrLoad(ctx, b, "summary", load)
	require.NoError(t, err)
	require.Equal(t, int64(1), got, "not invalidated yet")

	p.SetBlackhole(false)
	require.Eventually(t, func() bool { return a.Stats().Invalidations.Pending == 0 }, 10*time.Second, 5*time.Millisecond,
		"the failed invalidation was not retried")
	assert.Equal(t, uint64(2), a.Stats().Invalidations.Retried)
	_, err = Get[int](ctx, b, "tagged")
	assert.ErrorIs(t, err, ErrMiss, "the tag invalidation reached the entry another Manager stored")
	got, err = GetOrLoad(ctx, b, "summary", load)
	require.NoError(t, err)
	assert.Equal(t, int64(2), got, "the key invalidation reached the other Manager")
}

// While an invalidation waits to be retried, the Manager does not serve
// what it names, though Redis still holds it: loaded reads load, plain
// reads miss, whatever the target kind.
func TestPendingInvalidationIsAMiss(t *testing.T) {
	_, rdb := testredis.Mini(t)
	faults := &failPipelines{}
	rdb.AddHook(faults)
	m, err := New(rdb, &Options{Prefix: "test", Breaker: BreakerOptions{Failures: -1}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	ctx := t.Context()

	var version atomic.Int64
	version.Store(1)
	load := func(context.Context) (int64, error) { return version.Load(), nil }
	menu := Memoize(m, "menu", func(ctx context.Context, outlet string) (int64, error) { return version.Load(), nil })
	metrics := NewHash[int64](m, "metrics")
	loadField := func(ctx context.Context, f string) (int64, error) { return version.Load(), nil }
	for _, k := range []string{"summary", "orders:1", "orders:2"} {
		_, err := GetOrLoad(ctx, m, k, load)
		require.NoError(t, err)
	}
	require.NoError(t, m.Set(ctx, "tagged", int64(1), Tags("sales")))
	for _, o := range []string{"outlet-1", "outlet-2"} {
		_, err := menu.Get(ctx, o)
		require.NoError(t, err)
		_, err = metrics.GetOrLoad(ctx, o, loadField)
		require.NoError(t, err)
	}

	version.Store(2)
	faults.on.Store(true) // invalidations are pipelines: they fail; reads and loads go on
	err = m.Invalidate(ctx, Key("summary"), Prefix("orders:"), Tag("sales"), menu.Entry("outlet-1"), metrics.Field("outlet-1"))
	require.Error(t, err)
	require.Equal(t, 5, m.Stats().Invalidations.Pending)

	for _, k := range []string{"summary", "orders:1", "orders:2"} {
		v, err := GetOrLoad(ctx, m, k, load)
		require.NoError(t, err)
		assert.Equal(t, int64(2), v, k)
	}
	_, err = Get[int64](ctx, m, "tagged")
	assert.ErrorIs(t, err, ErrMiss, "a plain read of an entry carrying a pending tag")
	v, err := menu.Get(ctx, "outlet-1")
	require.NoError(t, err)
	assert.Equal(t, int64(2), v)
	v, err = metrics.GetOrLoad(ctx, "outlet-1", loadField)
	require.NoError(t, err)
	assert.Equal(t, int64(2), v)
	v, err = menu.Get(ctx, "outlet-2")
	require.NoError(t, err)
	assert.Equal(t, int64(1), v, "an entry no target names is served")

	require.Error(t, m.Invalidate(ctx, menu.All(), metrics.AllFields()))
	v, err = menu.Get(ctx, "outlet-2")
	require.NoError(t, err)
	assert.Equal(t, int64(2), v, "a pending memo All")
	v, err = metrics.GetOrLoad(ctx, "outlet-2", loadField)
	require.NoError(t, err)
	assert.Equal(t, int64(2), v, "a pending AllFields")

	faults.on.Store(false)
	require.Eventually(t, func() bool { return m.Stats().Invalidations.Pending == 0 }, 10*time.Second, 5*time.Millisecond,
		"the failed invalidations were not retried")
}

// Pending invalidations are bounded: they end with Close, and a target
// that waited longer than any entry lives is given up.
func TestPendingInvalidationBounds(t *testing.T) {
	_, rdb := testredis.Mini(t)
	faults := &failPipelines{}
	rdb.AddHook(faults)
	m, err := New(rdb, &Options{Prefix: "test", Breaker: BreakerOptions{Failures: -1}})
	require.NoError(t, err)
	ctx := t.Context()
	faults.on.Store(true)
	require.Error(t, m.Invalidate(ctx, Key("k")))
	closeWithin(t, m) // Close ends the retries
	assert.Equal(t, 1, m.Stats().Invalidations.Pending, "still pending at Close")

	var p pendingInvalidations
	p.stored(time.Second)
	p.mu.Lock()
	p.targets = append(p.targets, pendingTarget{t: Key("k"), kind: targetKey, key: "x", since: time.Now()})
	p.mu.Unlock()
	_, _, ok := p.batch(time.Now().Add(2 * time.Second))
	assert.False(t, ok, "given up once every entry it could name has expired")
	assert.Equal(t, uint64(1), p.abandoned.Load())
}

// failPipelines is a hook that fails every pipeline while on, with an
// error that says Redis could not be reached; single commands go through.
type failPipelines struct{ on atomic.Bool }

// errInjected is a network error, as an unreachable Redis gives.
var errInjected error = injectedNetError{}

type injectedNetError struct{}

func (injectedNetError) Error() string   { return "injected: connection refused" }
func (injectedNetError) Timeout() bool   { return false }
func (injectedNetError) Temporary() bool { return false }

func (f *failPipelines) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (f *failPipelines) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (f *failPipelines) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if f.on.Load() {
			for _, c := range cmds {
				c.SetErr(errInjected)
			}
			return errInjected
		}
		return next(ctx, cmds)
	}
}
