package testredis

import (
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestRingSpreadsKeys(t *testing.T) {
	ctx := t.Context()
	r := sharedRing(t)
	rdb := r.Client(t)
	const n = 300
	for i := range n {
		require.NoError(t, rdb.Set(ctx, "k"+strconv.Itoa(i), i, 0).Err())
	}
	var total int64
	for i, a := range r.admin {
		k, err := a.DBSize(ctx).Result()
		require.NoError(t, err)
		require.Positive(t, k, "shard %d holds some of the keys", i)
		total += k
	}
	require.Equal(t, int64(n), total)

	// A hash tag picks the shard, as on a cluster.
	shard := r.ShardOf(t, "{user:1}")
	require.Equal(t, shard, r.ShardOf(t, "x{user:1}y"))

	again := sharedRing(t)
	require.Same(t, r, again, "one ring per test binary")
	for i, a := range r.admin {
		k, err := a.DBSize(ctx).Result()
		require.NoError(t, err)
		require.Zero(t, k, "shard %d flushed", i)
	}
}

func TestRingFastForward(t *testing.T) {
	ctx := t.Context()
	r := sharedRing(t)
	rdb := r.Client(t)
	wrote := time.Now()
	for i := range 60 {
		require.NoError(t, rdb.Set(ctx, "k"+strconv.Itoa(i), i, 2*time.Second).Err())
		require.NoError(t, rdb.Set(ctx, "long"+strconv.Itoa(i), i, 10*time.Second).Err())
	}
	r.FastForward(t, 3*time.Second)
	for i := range 60 {
		require.Zero(t, rdb.Exists(ctx, "k"+strconv.Itoa(i)).Val(), "k%d expired", i)
		ttl, err := rdb.PTTL(ctx, "long"+strconv.Itoa(i)).Result()
		require.NoError(t, err)
		requireForwarded(t, 7*time.Second, ttl, wrote, "long"+strconv.Itoa(i))
	}
}

func TestRingShardDownAndBack(t *testing.T) {
	ctx := t.Context()
	r := StartRing(t)
	rdb := r.ClientWith(t, func(o *redis.RingOptions) {
		o.HeartbeatFrequency = 20 * time.Millisecond
		o.DialTimeout = 200 * time.Millisecond
		o.MaxRetries = -1
	})
	key := "k"
	shard := r.ShardOf(t, key)
	r.Shard(shard).Kill()
	require.Eventually(t, func() bool { return rdb.Set(ctx, key, 1, 0).Err() == nil }, Timeout, 5*time.Millisecond,
		"the ring to mark the dead shard down and put the key on another")
	r.Shard(shard).Restart()
	require.Eventually(t, func() bool {
		c, err := rdb.GetShardClientForKey(key)
		return err == nil && c.Options().Addr == r.Shard(shard).Addr()
	}, Timeout, 5*time.Millisecond, "the ring to take the shard back")
}
