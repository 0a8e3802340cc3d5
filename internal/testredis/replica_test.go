package testredis

import (
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestStartReplica(t *testing.T) {
	ctx := t.Context()
	m := Start(t)
	mc := m.Client(t)
	require.NoError(t, mc.Set(ctx, "before", "1", 0).Err(), "a write before the replica starts")

	r := m.StartReplica(t)
	require.NotEqual(t, m.Addr(), r.Addr())
	rc := r.Client(t)

	info, err := rc.Info(ctx, "replication").Result()
	require.NoError(t, err)
	require.Equal(t, "slave", infoField(info, "role"))
	require.Equal(t, "up", infoField(info, "master_link_status"), "StartReplica returns once the link is up")
	require.Equal(t, "1", rc.Get(ctx, "before").Val(), "the first sync brought the master's data")

	// A write on the master reaches the replica; WAIT says when.
	require.NoError(t, mc.Set(ctx, "after", "2", 0).Err())
	n, err := mc.Wait(ctx, 1, Timeout).Result()
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the replica acknowledged the write")
	require.Equal(t, "2", rc.Get(ctx, "after").Val())
	require.Error(t, rc.Set(ctx, "k", "v", 0).Err(), "a replica refuses writes")

	// Killed and restarted, it is a replica of the same master again.
	r.Kill()
	require.Error(t, rc.Ping(ctx).Err(), "PING after Kill")
	r.Restart()
	require.NoError(t, waitLinkUp(ctx, rc), "the restarted replica syncs again")
	require.Equal(t, "2", rc.Get(ctx, "after").Val())
	require.ErrorIs(t, rc.Get(ctx, "never").Err(), redis.Nil)
}
