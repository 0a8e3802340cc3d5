package testredis

import (
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestSentinelFailover(t *testing.T) {
	ctx := t.Context()
	s := StartSentinel(t)
	rdb := s.Client(t)
	first := s.Master(t)
	require.NoError(t, rdb.Set(ctx, "k", "1", 0).Err())
	n, err := rdb.Wait(ctx, 1, Timeout).Result()
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the replica acknowledged the write")

	// Planned: SENTINEL FAILOVER promotes the replica, which has the data.
	second, took := s.Failover(t)
	t.Logf("SENTINEL FAILOVER: the sentinels named the new master after %v", took)
	require.NotEqual(t, first.Addr(), second.Addr())
	s.WaitClient(t, rdb)
	require.Equal(t, "1", rdb.Get(ctx, "k").Val(), "the promoted replica has the acknowledged write")
	require.NoError(t, rdb.Set(ctx, "k", "2", 0).Err(), "the client writes to the new master")

	// Unplanned: the master dies; the old master, now its replica, is promoted.
	n, err = rdb.Wait(ctx, 1, Timeout).Result()
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the demoted master replicates the new master")
	killed, took := s.KillMaster(t)
	t.Logf("kill -9 of the master: the sentinels named the new master after %v", took)
	require.Equal(t, second.Addr(), killed.Addr())
	require.Equal(t, first.Addr(), s.Master(t).Addr())
	s.WaitClient(t, rdb)
	require.Equal(t, "2", rdb.Get(ctx, "k").Val())

	// The killed node comes back as a replica, and the set-up can fail over again.
	s.Rejoin(t, killed)
	require.NoError(t, rdb.Set(ctx, "k", "3", 0).Err())
	n, err = rdb.Wait(ctx, 1, Timeout).Result()
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the rejoined node replicates the master")
	got, err := s.node(killed.Addr()).Get(ctx, "k").Result()
	require.NoError(t, err)
	require.Equal(t, "3", got)
	require.ErrorIs(t, rdb.Get(ctx, "never").Err(), redis.Nil)
}
