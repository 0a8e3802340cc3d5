package cache

import (
	"context"
	"errors"
	"strconv"
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
	t.Cleanup(func() { closeWithin(t, m) })
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
	t.Cleanup(func() { closeWithin(t, m) })
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
	t.Cleanup(func() { closeWithin(t, m) })
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
	t.Cleanup(func() { closeWithin(t, m) })
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

// A value of another type than the destination is a miss that says it is a
// type mismatch, on both codecs; a nil read into an any that holds a value
// is a hit that leaves it nil.
func TestTypeMismatchAndNilIntoAny(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		ctx := t.Context()
		for _, codec := range []Codec{Msgpack, JSON} {
			m := e.manager(&Options{Codec: codec})
			require.NoError(t, m.Set(ctx, "n", 42))
			_, err := Get[string](ctx, m, "n")
			assert.ErrorIs(t, err, ErrMiss, "%T", codec)
			var de *DecodeError
			assert.ErrorAs(t, err, &de, "%T", codec)
			assert.ErrorContains(t, err, "type mismatch: the stored value does not decode into string")
			assert.Equal(t, 1, strings.Count(err.Error(), "cache:"), err.Error())

			h := NewHash[string](m, "h")
			require.NoError(t, m.Client().HSet(ctx, m.hashKeys("h").key, "f", "").Err())
			_, err = h.Get(ctx, "f")
			assert.ErrorIs(t, err, ErrMiss, "%T: a field that is not an envelope", codec)

			// Corrupt bytes are not called a type mismatch.
			require.NoError(t, m.Client().Set(ctx, m.entryKey("bad"), "junk", 0).Err())
			_, err = Get[string](ctx, m, "bad")
			assert.ErrorIs(t, err, ErrMiss)
			assert.NotContains(t, err.Error(), "type mismatch")

			require.NoError(t, m.Set(ctx, "nil", nil))
			var a any = 5
			require.NoError(t, m.Get(ctx, "nil", &a), "%T: nil is a hit", codec)
			assert.Nil(t, a, "%T", codec)
			a = "old"
			require.NoError(t, m.Set(ctx, "map", map[string]any{"x": "y"}))
			require.NoError(t, m.Get(ctx, "map", &a))
			assert.Equal(t, map[string]any{"x": "y"}, a, "%T: decoded afresh", codec)
		}
	})
}

// KeyBy keys a memo by the caller's text: arguments the canonical
// encoding refuses become keys, equal texts share an entry, and a KeyBy of
// another argument type is refused at Memoize.
func TestMemoKeyBy(t *testing.T) {
	_, rdb := testredis.Mini(t)
	m, err := New(rdb, nil)
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	ctx := t.Context()
	type req struct {
		ID   int
		Done func() // refused by the canonical encoding
	}
	var calls int
	memo := Memoize(m, "byid", func(ctx context.Context, r req) (int, error) { calls++; return r.ID * 2, nil },
		KeyBy(func(r req) string { return strconv.Itoa(r.ID) }))
	for range 2 {
		v, err := memo.Get(ctx, req{ID: 21, Done: func() {}})
		require.NoError(t, err)
		assert.Equal(t, 42, v)
	}
	assert.Equal(t, 1, calls, "one entry for equal texts")
	k, err := memo.Key(req{ID: 21})
	require.NoError(t, err)
	assert.True(t, strings.HasSuffix(k, ":u:21"), k)
	other, err := memo.Key(req{ID: 1})
	require.NoError(t, err)
	assert.NotEqual(t, k, other)
	byText := Memoize(m, "bytext", func(ctx context.Context, s string) (int, error) { return len(s), nil },
		KeyBy(func(s string) string { return s }))
	k1, err := byText.Key(strings.Repeat("a", 200))
	require.NoError(t, err)
	k2, err := byText.Key(strings.Repeat("a", 201))
	require.NoError(t, err)
	assert.Contains(t, k1, ":uh:", "a long text is hashed")
	assert.NotEqual(t, k1, k2)

	plain := Memoize(m, "plain", func(ctx context.Context, r req) (int, error) { return 0, nil })
	_, err = plain.Get(ctx, req{ID: 1, Done: func() {}})
	assert.ErrorIs(t, err, ErrInvalidKey, "a func is not a key without KeyBy")

	assertPanicsWith(t, ErrInvalidOption, func() {
		Memoize(m, "wrong", func(ctx context.Context, s string) (int, error) { return 0, nil }, KeyBy(func(int) string { return "" }))
	}, "KeyBy of another argument type")
	assertPanicsWith(t, ErrInvalidOption, func() {
		Memoize(m, "nil", func(ctx context.Context, s string) (int, error) { return 0, nil }, KeyBy[string](nil))
	}, "a nil KeyBy")
	err = m.Set(ctx, "k", 1, KeyBy(func(string) string { return "" }))
	assert.ErrorIs(t, err, ErrInvalidOption, "KeyBy on Set")
}
