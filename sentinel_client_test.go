package cache

import (
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// TestFailoverClientRecognised checks that the Manager tells go-redis's
// Sentinel failover client from the others by the address go-redis gives
// it, which the subscriptions' following of the master relies on
// (TestSentinelFailoverManagers checks the following itself).
func TestFailoverClientRecognised(t *testing.T) {
	fo := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "m", SentinelAddrs: []string{"127.0.0.1:1"}})
	t.Cleanup(func() { _ = fo.Close() })
	require.True(t, failoverClient(fo), "a failover client")

	one := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = one.Close() })
	require.False(t, failoverClient(one), "a single node's client")

	cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	t.Cleanup(func() { _ = cl.Close() })
	require.False(t, failoverClient(cl), "a cluster client")
}

func TestRunID(t *testing.T) {
	info := "# Server\r\nredis_version:7.0.15\r\nrun_id:4f1c2a\r\ntcp_port:6379\r\n"
	require.Equal(t, "4f1c2a", runID(info))
	require.Equal(t, "", runID("# Server\r\nredis_version:7.0.15\r\n"))
}
