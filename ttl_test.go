package cache

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

func TestTTL(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		ctx := t.Context()

		// The default TTL, shortened by up to the default 10% jitter.
		require.NoError(t, m.Set(ctx, "summary", 1))
		d, err := m.TTL(ctx, "summary")
		require.NoError(t, err)
		assert.True(t, d > 53*time.Minute && d <= time.Hour, "default TTL with jitter: %v", d)

		// An exact TTL without jitter.
		wrote := time.Now()
		require.NoError(t, m.Set(ctx, "live_orders", 0, TTL(30*time.Second), Jitter(0)))
		d, err = m.TTL(ctx, "live_orders")
		require.NoError(t, err)
		assertTTL(t, 30*time.Second, d, wrote, "an exact TTL")

		require.NoError(t, m.Set(ctx, "forever", "x", NoExpiry()))
		d, err = m.TTL(ctx, "forever")
		require.NoError(t, err)
		assert.Equal(t, NeverExpires, d)

		_, err = m.TTL(ctx, "absent")
		assert.ErrorIs(t, err, ErrMiss)

		// Expiry: the 30 s live count is gone after 31 s, 0 was a hit until then.
		e.advance(29 * time.Second)
		n, err := Get[int](ctx, m, "live_orders")
		require.NoError(t, err)
		assert.Equal(t, 0, n)
		e.advance(2 * time.Second)
		_, err = Get[int](ctx, m, "live_orders")
		assert.ErrorIs(t, err, ErrMiss)
		_, err = Get[string](ctx, m, "forever")
		assert.NoError(t, err)
	})
}

func TestJitterSpreadsExpiry(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(&Options{Jitter: 0.2})
		ctx := t.Context()
		items := map[string]int{}
		for i := range 200 {
			items[fmt.Sprint("warm-", i)] = i
		}
		require.NoError(t, SetMany(ctx, m, items, TTL(time.Hour)))
		seconds := map[int64]bool{}
		for k := range items {
			d, err := m.TTL(ctx, k)
			require.NoError(t, err)
			assert.True(t, d > 47*time.Minute && d <= time.Hour, "%s: %v", k, d)
			seconds[int64(d/time.Second)] = true
		}
		assert.Greater(t, len(seconds), 50, "a warm-up's entries expire spread over the jitter window")
	})
}
