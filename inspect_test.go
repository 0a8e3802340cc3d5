package cache

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

func TestInspect(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(&Options{Prefix: "scoopjoy"})
		other := newEnv(t, b).manager(&Options{Prefix: "other"})
		ctx := t.Context()
		items := map[string]int{}
		for i := range 120 {
			items[fmt.Sprint("k", i)] = i
		}
		require.NoError(t, SetMany(ctx, m, items))
		require.NoError(t, other.Set(ctx, "not-mine", 1))
		require.NoError(t, m.Client().Set(ctx, "scoopjoy*x", 1, time.Minute).Err()) // a glob character in a neighbour's key
		_, err := Memoize(m, "m", func(ctx context.Context, i int) (int, error) { return i, nil }).Get(ctx, 1)
		require.NoError(t, err)

		r, err := m.Inspect(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(122), r.Keys, "120 keys, one memo entry and its memo's generation, nothing of another prefix")
		assert.Len(t, r.SampleKeys, maxSampleKeys)
		for _, k := range r.SampleKeys {
			assert.True(t, strings.HasPrefix(k, "scoopjoy:"), k)
		}
		assert.Positive(t, r.Masters)
		if b.Name != "miniredis" {
			assert.Positive(t, r.UsedMemory, "INFO memory")
		}
		assert.Equal(t, uint64(120), r.Stats.ByName["keys"].Sets)
	})
}

func TestUsedMemory(t *testing.T) {
	assert.Equal(t, int64(1048576), usedMemory("# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n"))
	assert.Zero(t, usedMemory(""))
}
