package testredis

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestReplicatedClusterFailovers(t *testing.T) {
	ctx := t.Context()
	start := time.Now()
	c := StartReplicatedCluster(t)
	t.Logf("replicated cluster started in %v", time.Since(start).Round(time.Millisecond))
	require.Len(t, c.Addrs(), 6)
	masters, err := c.masters(ctx)
	require.NoError(t, err)
	require.Len(t, masters, 3, "three of the six nodes are masters")

	rdb := c.ClientWith(t, func(o *redis.ClusterOptions) { o.DialTimeout = 500 * time.Millisecond })
	const key = "{failover}"
	slot := int(rdb.ClusterKeySlot(ctx, key).Val())
	require.NoError(t, rdb.Set(ctx, key, "before", 0).Err())
	node, err := rdb.MasterForKey(ctx, key)
	require.NoError(t, err)
	require.Equal(t, int64(1), node.Do(ctx, "wait", 1, 5000).Val(), "the replica acknowledged the write")

	// Unplanned: the master is killed, its replica takes over with the
	// write it acknowledged.
	f := c.KillMaster(t, slot)
	t.Logf("killed %s: %s took over after %v", c.Addrs()[f.Old], c.Addrs()[f.New], f.Done.Sub(f.Start).Round(time.Millisecond))
	require.NotEqual(t, f.Old, f.New)
	require.Equal(t, f.New, c.SlotOwner(t, slot))
	// go-redis reloads a cluster's slots on a MOVED or ASK reply, or once a
	// minute (ClusterStateReloadInterval), not when a node cannot be
	// reached: the client must be told.
	require.Eventually(t, func() bool {
		rdb.ReloadState(ctx)
		return rdb.Get(ctx, key).Val() == "before"
	}, Timeout, 50*time.Millisecond, "the promoted replica does not serve the acknowledged write")
	// The shared helpers skip the dead node.
	require.NoError(t, c.flushAll(ctx))
	c.FastForward(t, time.Second)

	// The killed node comes back as a replica of the new master.
	c.Restart(t, f.Old)
	require.NoError(t, c.replicaInSync(ctx, f.Old))

	// Planned: the old master takes its slots back.
	require.NoError(t, rdb.Set(ctx, key, "after", 0).Err())
	g := c.Failover(t, slot)
	t.Logf("planned failover of %s to %s took %v", c.Addrs()[g.Old], c.Addrs()[g.New], g.Done.Sub(g.Start).Round(time.Millisecond))
	require.Equal(t, f.New, g.Old)
	require.Equal(t, f.Old, g.New)
	require.Equal(t, g.New, c.SlotOwner(t, slot))
	require.NoError(t, c.replicaInSync(ctx, g.Old))
	require.Eventually(t, func() bool { return rdb.Get(ctx, key).Val() == "after" }, Timeout, 10*time.Millisecond,
		"a planned failover lost a write")
}
