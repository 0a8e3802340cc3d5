package cache

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// An option given to a call it does not apply to is an error at that call,
// and nothing is written.
func TestOptionsThatDoNotApply(t *testing.T) {
	mr, rdb := testredis.Mini(t)
	m, err := New(rdb, &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Close() })
	ctx := t.Context()
	tagsFor := TagsFor(func(string) []string { return nil })
	for name, opt := range map[string]Option{
		"StaleFor": StaleFor(time.Hour), "FetchOnMiss": FetchOnMiss(false), "EarlyRefresh": EarlyRefresh(1), "TagsFor": tagsFor,
	} {
		err := m.Set(ctx, "k", 1, opt)
		assert.ErrorIs(t, err, ErrInvalidOption, "Set with %s", name)
		assert.ErrorContains(t, err, name+" does not apply to Set")
		assert.ErrorIs(t, SetMany(ctx, m, map[string]int{"k": 1}, opt), ErrInvalidOption, "SetMany with %s", name)
	}
	_, err = GetOrLoad(ctx, m, "k", func(context.Context) (int, error) { return 1, nil }, tagsFor)
	assert.ErrorIs(t, err, ErrInvalidOption, "GetOrLoad with TagsFor")
	_, err = Refresh(ctx, m, "k", func(context.Context) (int, error) { return 1, nil }, tagsFor)
	assert.ErrorIs(t, err, ErrInvalidOption, "Refresh with TagsFor")
	assert.Empty(t, mr.Keys(), "nothing was written")

	// Where they apply, they are taken.
	require.NoError(t, m.Set(ctx, "k", 1, TTL(time.Minute), Jitter(0), Tags("t")))
	_, err = GetOrLoad(ctx, m, "j", func(context.Context) (int, error) { return 1, nil }, StaleFor(time.Hour), EarlyRefresh(1))
	require.NoError(t, err)
}

// A destination that cannot be written is an error that says so, not a
// miss, and it is not counted as a stored value that does not decode.
func TestGetIntoABadDestination(t *testing.T) {
	_, rdb := testredis.Mini(t)
	m, err := New(rdb, &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Close() })
	ctx := t.Context()
	require.NoError(t, m.Set(ctx, "k", "mango"))
	var typedNil *string
	var s string
	for name, dst := range map[string]any{"nil": nil, "typed nil": typedNil, "not a pointer": s} {
		err := m.Get(ctx, "k", dst)
		assert.ErrorIs(t, err, ErrInvalidOption, name)
		assert.NotErrorIs(t, err, ErrMiss, name)
	}
	assert.Zero(t, m.Stats().Total.DecodeErrors)
	assert.Zero(t, m.Stats().Total.Misses)
	require.NoError(t, m.Get(ctx, "k", &s))
	assert.Equal(t, "mango", s)
}

// A client with go-redis client-side caching on is refused: it would answer
// reads from a copy that invalidations do not reach in time.
func TestClientSideCachingRefused(t *testing.T) {
	mr, _ := testredis.Mini(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), Protocol: 3, ClientSideCacheConfig: &redis.ClientSideCacheConfig{}})
	t.Cleanup(func() { _ = rdb.Close() })
	_, err := New(rdb, nil)
	assert.ErrorIs(t, err, ErrInvalidOption)
	assert.ErrorContains(t, err, "client-side caching")
}

// A rule that panics is an error naming its event and its place; the other
// rules' targets are invalidated all the same, and Emit's caller goes on.
func TestEmitRulePanics(t *testing.T) {
	_, rdb := testredis.Mini(t)
	m, err := New(rdb, &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Close() })
	ctx := t.Context()
	require.NoError(t, m.Set(ctx, "summary", 1))
	m.OnEvent("invoice.submitted", func(ctx context.Context, p any) []Target { return []Target{Key("summary")} })
	m.OnEvent("invoice.submitted", func(ctx context.Context, p any) []Target { panic("no outlet") })
	err = m.Emit(ctx, "invoice.submitted", nil)
	var pe *PanicError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "no outlet", pe.Value)
	assert.ErrorContains(t, err, `event "invoice.submitted": rule 2`)
	_, err = Get[int](ctx, m, "summary")
	assert.ErrorIs(t, err, ErrMiss, "the first rule's target was invalidated")
}

// The nil *Lock of a failed Lock is safe to release: defer lock.Release(ctx)
// right after Lock is the idiom.
func TestNilLock(t *testing.T) {
	var l *Lock
	ctx := t.Context()
	assert.ErrorIs(t, l.Release(ctx), ErrNotObtained)
	assert.ErrorIs(t, l.Refresh(ctx, time.Second), ErrNotObtained)
	_, err := l.TTL(ctx)
	assert.ErrorIs(t, err, ErrNotObtained)
	assert.Zero(t, l.Fence())
	assert.Empty(t, l.Name())
}

// Errors say "cache:" once, on one line, and match every sentinel and
// context error they carry.
func TestErrorText(t *testing.T) {
	_, rdb := testredis.Mini(t)
	m, err := New(rdb, &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Close() })
	ctx := t.Context()
	held, err := m.Lock(ctx, "oven", time.Minute)
	require.NoError(t, err)
	defer held.Release(ctx)
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	_, lockErr := m.Lock(short, "oven", time.Minute)
	assert.ErrorIs(t, lockErr, ErrNotObtained)
	assert.ErrorIs(t, lockErr, context.DeadlineExceeded)
	for _, err := range []error{
		lockErr,
		m.Invalidate(ctx, Key("")),
		m.Set(ctx, "k", 1, TTL(-1)),
		m.Set(ctx, "k", func() {}),
	} {
		require.Error(t, err)
		msg := err.Error()
		assert.Equal(t, 1, strings.Count(msg, "cache:"), "%q", msg)
		assert.NotContains(t, msg, "\n")
	}
	var de *DecodeError
	assert.False(t, errors.As(lockErr, &de))
}
