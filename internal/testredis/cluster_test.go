package testredis

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestStartClusterAndMoveSlot(t *testing.T) {
	ctx := t.Context()
	start := time.Now()
	c := StartCluster(t)
	t.Logf("cluster started in %v", time.Since(start).Round(time.Millisecond))
	require.Len(t, c.Addrs(), 3)

	rdb := c.Client(t)
	require.NoError(t, rdb.Ping(ctx).Err())
	for i, addr := range c.Addrs() {
		node := redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { _ = node.Close() })
		info, err := node.ClusterInfo(ctx).Result()
		require.NoError(t, err)
		require.Contains(t, info, "cluster_state:ok", "node %d", i)
		require.Contains(t, info, "cluster_slots_ok:16384", "node %d", i)
		cfg, err := node.ConfigGet(ctx, "save").Result()
		require.NoError(t, err)
		require.Equal(t, "", cfg["save"], "no persistence")
	}

	// Keys land on every master.
	for i := range 300 {
		require.NoError(t, rdb.Set(ctx, "k"+strconv.Itoa(i), i, 0).Err())
	}
	owners := map[int]bool{}
	for i := range 300 {
		slot, err := rdb.ClusterKeySlot(ctx, "k"+strconv.Itoa(i)).Result()
		require.NoError(t, err)
		owners[c.SlotOwner(t, int(slot))] = true
	}
	require.Len(t, owners, 3, "300 keys spread over the three masters")

	// Move a slot holding more keys than one MIGRATE batch.
	const n = 2*migrateBatch + 17
	slot := int(rdb.ClusterKeySlot(ctx, "{moved}").Val())
	for i := range n {
		ttl := time.Duration(0)
		if i%2 == 0 {
			ttl = time.Hour
		}
		require.NoError(t, rdb.Set(ctx, fmt.Sprintf("{moved}:%d", i), i, ttl).Err())
	}
	from := c.SlotOwner(t, slot)
	to := (from + 1) % 3
	stale := c.Client(t) // its slot map still names the old owner
	require.NoError(t, stale.Ping(ctx).Err())

	c.MoveSlot(t, slot, to)

	require.Equal(t, to, c.SlotOwner(t, slot))
	for i, addr := range c.Addrs() {
		node := redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { _ = node.Close() })
		cnt, err := node.ClusterCountKeysInSlot(ctx, slot).Result()
		require.NoError(t, err)
		if i == to {
			require.Equal(t, int64(n), cnt, "the target holds the slot's keys")
		} else {
			require.Zero(t, cnt, "node %d", i)
		}
	}
	for i := range n {
		k := fmt.Sprintf("{moved}:%d", i)
		got, err := stale.Get(ctx, k).Int()
		require.NoError(t, err, "a client with the old slot map follows MOVED")
		require.Equal(t, i, got)
		ttl := stale.PTTL(ctx, k).Val()
		if i%2 == 0 {
			require.Greater(t, ttl, 59*time.Minute, "MIGRATE keeps TTLs")
		} else {
			require.Equal(t, time.Duration(-1), ttl)
		}
	}

	c.MoveSlot(t, slot, to) // to its owner: nothing to do
	require.Equal(t, to, c.SlotOwner(t, slot))
	c.MoveSlot(t, slot, from) // and back
	require.Equal(t, from, c.SlotOwner(t, slot))
	require.Equal(t, "0", rdb.Get(ctx, "{moved}:0").Val())
}

func TestMoveSlotUnderLoad(t *testing.T) {
	ctx := t.Context()
	c := StartCluster(t)
	rdb := c.Client(t)
	slot := int(rdb.ClusterKeySlot(ctx, "{load}").Val())
	const keys = 500
	for i := range keys {
		require.NoError(t, rdb.Set(ctx, fmt.Sprintf("{load}:%d", i), i, 0).Err())
	}

	stop := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	stopClients := func() {
		stopOnce.Do(func() { close(stop) })
		Wait(t, &wg, "the writers and readers to stop")
	}
	t.Cleanup(stopClients) // when the test ends early
	var mu sync.Mutex
	var errs []error
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				k := fmt.Sprintf("{load}:%d", (w*keys/4+j)%keys)
				var err error
				if j%3 == 0 {
					err = rdb.Set(ctx, k, k, 0).Err()
				} else {
					err = rdb.Get(ctx, k).Err()
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	from := c.SlotOwner(t, slot)
	for i := 1; i <= 3; i++ {
		c.MoveSlot(t, slot, (from+i)%3)
	}
	stopClients()
	require.Empty(t, errs)
	require.Equal(t, from, c.SlotOwner(t, slot))
}

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func TestClusterFastForward(t *testing.T) {
	ctx := t.Context()
	c := sharedCluster(t)
	rdb := c.Client(t)

	// Keys in many slots on every master, several SCAN pages on each.
	const n = 3000
	pipe := rdb.Pipeline()
	for i := range n {
		var ttl time.Duration
		switch i % 3 {
		case 0:
			ttl = 2 * time.Second
		case 1:
			ttl = 10 * time.Second
		}
		pipe.Set(ctx, "k"+strconv.Itoa(i), i, ttl)
	}
	wrote := time.Now()
	_, err := pipe.Exec(ctx)
	require.NoError(t, err)

	c.FastForward(t, 3*time.Second)

	require.Equal(t, int64(2*n/3), dbSize(t, c), "keys with a 2s TTL are gone")
	for i := range 30 {
		k := "k" + strconv.Itoa(i)
		ttl, err := rdb.PTTL(ctx, k).Result()
		require.NoError(t, err)
		switch i % 3 {
		case 0:
			require.Equal(t, time.Duration(-2), ttl, k)
		case 1:
			requireForwarded(t, 7*time.Second, ttl, wrote, k)
		case 2:
			require.Equal(t, time.Duration(-1), ttl, k)
		}
	}
}

func TestSharedClusterIsFlushed(t *testing.T) {
	ctx := t.Context()
	c := sharedCluster(t)
	rdb := c.Client(t)
	for i := range 100 {
		require.NoError(t, rdb.Set(ctx, "k"+strconv.Itoa(i), i, 0).Err())
	}
	require.Equal(t, int64(100), dbSize(t, c))

	again := sharedCluster(t)
	require.Same(t, c, again, "one cluster per test binary")
	require.Zero(t, dbSize(t, c), "every master flushed")
}

// dbSize returns the number of keys on the cluster's masters.
func dbSize(t *testing.T, c *Cluster) int64 {
	t.Helper()
	var n int64
	for _, a := range c.admin {
		k, err := a.DBSize(t.Context()).Result()
		require.NoError(t, err)
		n += k
	}
	return n
}

func TestServerMajor(t *testing.T) {
	bin, err := Binary()
	if err != nil {
		t.Skip("no redis-server")
	}
	major, version, err := serverMajor(bin)
	require.NoError(t, err)
	require.Positive(t, major)
	require.Regexp(t, `^\d+\.\d+\.\d+$`, version)
}

func TestRemoveStaleDirs(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("processGone is Linux-only")
	}
	exited := exec.Command("true")
	require.NoError(t, exited.Run())
	for _, prefix := range []string{sharedDirPrefix, sharedRingDirPrefix} {
		stale := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-test", prefix, exited.Process.Pid))
		live := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-test", prefix, os.Getppid()))
		for _, d := range []string{stale, live} {
			require.NoError(t, os.MkdirAll(d, 0o755))
			t.Cleanup(func() { _ = os.RemoveAll(d) })
		}

		removeStaleDirs()

		require.NoDirExists(t, stale, "the directory of an exited process is removed")
		require.DirExists(t, live, "the directory of a running process stays")
	}
}
