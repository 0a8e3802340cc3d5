package cache

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

type outletMetrics struct {
	Orders  int     `json:"orders"`
	Revenue float64 `json:"revenue"`
}

func TestHash(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		ctx := t.Context()
		metrics := NewHash[outletMetrics](m, "outlet_metrics", TTL(time.Hour), Jitter(0))
		assert.Equal(t, "outlet_metrics", metrics.Name())

		wrote := time.Now()
		require.NoError(t, metrics.Set(ctx, "outlet-1", outletMetrics{Orders: 10, Revenue: 99.5}))
		require.NoError(t, metrics.SetMany(ctx, map[string]outletMetrics{
			"outlet-2": {Orders: 0}, // a zero value is a hit
			"outlet-3": {Orders: 7, Revenue: 1},
		}))
		got, err := metrics.Get(ctx, "outlet-2")
		require.NoError(t, err)
		assert.Equal(t, outletMetrics{}, got)
		_, err = metrics.Get(ctx, "outlet-9")
		assert.ErrorIs(t, err, ErrMiss)

		all, err := metrics.All(ctx)
		require.NoError(t, err)
		assert.Equal(t, map[string]outletMetrics{
			"outlet-1": {Orders: 10, Revenue: 99.5}, "outlet-2": {}, "outlet-3": {Orders: 7, Revenue: 1},
		}, all)

		n, err := m.Client().Exists(ctx, metrics.key).Result()
		require.NoError(t, err)
		assert.Equal(t, int64(1), n, "one Redis hash holds every field")
		d, err := metrics.TTL(ctx)
		require.NoError(t, err)
		assertTTL(t, time.Hour, d, wrote, "the hash's TTL")

		require.NoError(t, metrics.Delete(ctx, "outlet-1"))
		_, err = metrics.Get(ctx, "outlet-1")
		assert.ErrorIs(t, err, ErrMiss)
		_, err = metrics.Get(ctx, "outlet-3")
		assert.NoError(t, err, "deleting one field leaves the others")

		require.NoError(t, metrics.Clear(ctx))
		all, err = metrics.All(ctx)
		require.NoError(t, err)
		assert.Empty(t, all)
	})
}

func TestHashFieldFreshness(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		ctx := t.Context()
		sessions := NewHash[string](m, "sessions", TTL(4*time.Hour), Jitter(0))
		require.NoError(t, sessions.Set(ctx, "old", "a"))
		e.advance(3 * time.Hour)
		require.NoError(t, sessions.Set(ctx, "new", "b")) // the hash lives 4 h from here
		e.advance(90 * time.Minute)

		_, err := sessions.Get(ctx, "old")
		assert.ErrorIs(t, err, ErrMiss, "a field expires with its own TTL though the hash lives on")
		v, err := sessions.Get(ctx, "new")
		require.NoError(t, err)
		assert.Equal(t, "b", v)
		all, err := sessions.All(ctx)
		require.NoError(t, err)
		assert.Equal(t, map[string]string{"new": "b"}, all)

		e.advance(3 * time.Hour)
		_, err = sessions.TTL(ctx)
		assert.ErrorIs(t, err, ErrMiss, "the whole hash expires after its TTL")
	})
}

func TestHashBadInput(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(&Options{MaxValueSize: 100, CompressAbove: -1})
		ctx := t.Context()
		rdb := m.Client()

		assertPanicsWith(t, ErrInvalidKey, func() { NewHash[int](m, "") }, "NewHash with no name")
		assertPanicsWith(t, ErrInvalidOption, func() { NewHash[int](m, "h", TTL(-1)) }, "NewHash with a negative TTL")
		assertPanicsWith(t, ErrInvalidOption, func() { NewHash[int](m, "h", TagsFor(func(string) []string { return nil })) }, "NewHash with TagsFor")

		h := NewHash[string](m, "h")
		_, err := h.Get(ctx, "")
		assert.ErrorIs(t, err, ErrInvalidKey)
		assert.ErrorIs(t, h.Set(ctx, "", "x"), ErrInvalidKey)
		assert.ErrorIs(t, h.SetMany(ctx, map[string]string{"ok": "x", "": "y"}), ErrInvalidKey)
		assert.ErrorIs(t, h.Delete(ctx, ""), ErrInvalidKey)
		assert.ErrorIs(t, h.SetMany(ctx, map[string]string{"ok": "x", "big": string(make([]byte, 200))}), ErrValueTooLarge)
		n, err := rdb.DBSize(ctx).Result()
		require.NoError(t, err)
		assert.Zero(t, n, "bad input wrote nothing")

		// A corrupt field is reported by All, which still returns the others.
		require.NoError(t, h.Set(ctx, "good", "yes"))
		require.NoError(t, rdb.HSet(ctx, h.key, "bad", "not an envelope").Err())
		all, err := h.All(ctx)
		assert.Equal(t, map[string]string{"good": "yes"}, all)
		var fe FieldErrors
		require.True(t, errors.As(err, &fe), "got %v", err)
		require.Len(t, fe, 1)
		assert.Equal(t, "bad", fe[0].Field)
		_, err = h.Get(ctx, "bad")
		assert.ErrorIs(t, err, ErrMiss)
		assert.Equal(t, uint64(2), m.Stats().ByName["hash:h"].DecodeErrors)
	})
}
