package testredis

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestStartPing(t *testing.T) {
	s := Start(t)
	require.Contains(t, s.Addr(), "127.0.0.1:")
	rdb := s.Client(t)
	require.NoError(t, rdb.Ping(t.Context()).Err())

	// No persistence: the server must not write snapshots or an AOF.
	cfg, err := rdb.ConfigGet(t.Context(), "save").Result()
	require.NoError(t, err)
	require.Equal(t, "", cfg["save"])
	cfg, err = rdb.ConfigGet(t.Context(), "appendonly").Result()
	require.NoError(t, err)
	require.Equal(t, "no", cfg["appendonly"])
}

func TestStartGivesSeparateServers(t *testing.T) {
	a, b := Start(t), Start(t)
	require.NotEqual(t, a.Addr(), b.Addr())
	require.NoError(t, a.Client(t).Set(t.Context(), "k", "a", 0).Err())
	require.ErrorIs(t, b.Client(t).Get(t.Context(), "k").Err(), redis.Nil)
}

func TestKillRestart(t *testing.T) {
	ctx := t.Context()
	s := Start(t)
	addr := s.Addr()
	rdb := s.ClientWith(t, func(o *redis.Options) {
		o.MaxRetries = -1
		o.DialTimeout = 200 * time.Millisecond
	})
	require.NoError(t, rdb.Set(ctx, "k", "v", 0).Err())

	s.Kill()
	require.Error(t, rdb.Ping(ctx).Err(), "PING after Kill")
	s.Kill() // killing a dead server does nothing

	s.Restart()
	require.Equal(t, addr, s.Addr(), "Restart keeps the port")
	require.Eventually(t, func() bool { return rdb.Ping(ctx).Err() == nil },
		Timeout, 5*time.Millisecond, "the old client to reconnect after Restart")
	require.NoError(t, s.Client(t).Ping(ctx).Err())
	require.ErrorIs(t, rdb.Get(ctx, "k").Err(), redis.Nil, "data does not survive a restart")
}

func TestStartFailsWhenPortIsTaken(t *testing.T) {
	s := Start(t)
	s.Kill()
	other := miniredis.NewMiniRedis()
	require.NoError(t, other.StartAddr(s.Addr()))
	t.Cleanup(other.Close)

	err := s.start()
	require.Error(t, err, "another server holds the port")
	require.Contains(t, err.Error(), s.Addr())
}

func TestClientWith(t *testing.T) {
	s := Start(t)
	rdb := s.ClientWith(t, func(o *redis.Options) { o.DB = 3 })
	require.Equal(t, 3, rdb.Options().DB)
	require.Equal(t, clientTimeout, rdb.Options().ReadTimeout, "defaults are kept")
	require.NoError(t, rdb.Ping(t.Context()).Err())
}

// requireForwarded checks a TTL read after a FastForward: want, less at most
// the time since the write that set it began at (a real server's clock runs
// between the write and the read; miniredis's does not).
func requireForwarded(t *testing.T, want, got time.Duration, wrote time.Time, msg string) {
	t.Helper()
	least := want - time.Since(wrote) - time.Millisecond // PTTL is in whole milliseconds
	if got > want || got < least {
		t.Fatalf("%s: TTL %v, want %v less the %v since the write (at least %v)", msg, got, want, time.Since(wrote), least)
	}
}

func TestServerFastForward(t *testing.T) {
	ctx := t.Context()
	s := Start(t)
	rdb := s.Client(t)
	require.NoError(t, rdb.Set(ctx, "short", "v", 2*time.Second).Err())
	wrote := time.Now()
	require.NoError(t, rdb.Set(ctx, "long", "v", 10*time.Second).Err())
	require.NoError(t, rdb.Set(ctx, "forever", "v", 0).Err())
	require.NoError(t, rdb.HSet(ctx, "hash", "f", "v").Err())
	require.NoError(t, rdb.Expire(ctx, "hash", time.Second).Err())

	s.FastForward(t, 3*time.Second)

	require.ErrorIs(t, rdb.Get(ctx, "short").Err(), redis.Nil, "2s TTL forwarded 3s")
	require.ErrorIs(t, rdb.HGet(ctx, "hash", "f").Err(), redis.Nil, "1s TTL forwarded 3s")
	ttl, err := rdb.PTTL(ctx, "long").Result()
	require.NoError(t, err)
	requireForwarded(t, 7*time.Second, ttl, wrote, "10s TTL forwarded 3s")
	ttl, err = rdb.PTTL(ctx, "forever").Result()
	require.NoError(t, err)
	require.Equal(t, time.Duration(-1), ttl, "a key without TTL keeps none")
	require.Equal(t, "v", rdb.Get(ctx, "forever").Val())
}

func TestServerFastForwardManyKeysAndDBs(t *testing.T) {
	ctx := t.Context()
	s := Start(t)
	db0 := s.Client(t)
	db5 := s.ClientWith(t, func(o *redis.Options) { o.DB = 5 })

	const n = 2000 // several SCAN pages
	pipe := db0.Pipeline()
	for i := range n {
		ttl := time.Duration(0)
		if i%2 == 0 {
			ttl = time.Second
		}
		pipe.Set(ctx, "k"+strconv.Itoa(i), i, ttl)
	}
	_, err := pipe.Exec(ctx)
	require.NoError(t, err)
	require.NoError(t, db5.Set(ctx, "other", "v", time.Second).Err())

	s.FastForward(t, time.Second)

	require.Equal(t, int64(n/2), db0.DBSize(ctx).Val(), "keys with a 1s TTL are gone, the others stay")
	require.Equal(t, int64(0), db5.DBSize(ctx).Val(), "other databases are forwarded too")
}

func TestMini(t *testing.T) {
	mr, rdb := Mini(t)
	ctx := t.Context()
	require.NoError(t, rdb.Set(ctx, "k", "v", time.Second).Err())
	require.True(t, mr.Exists("k"))
	mr.FastForward(2 * time.Second)
	require.ErrorIs(t, rdb.Get(ctx, "k").Err(), redis.Nil)
}

func TestRun(t *testing.T) {
	var names []string
	Run(t, func(t *testing.T, b *Backend) {
		names = append(names, b.Name)
		switch b.Name {
		case "miniredis":
			require.NotNil(t, b.Mini)
			require.Nil(t, b.Server)
			require.Nil(t, b.Cluster)
		case "redis":
			require.Nil(t, b.Mini)
			require.NotNil(t, b.Server)
			require.Nil(t, b.Cluster)
		case "cluster":
			require.Nil(t, b.Mini)
			require.Nil(t, b.Server)
			require.NotNil(t, b.Cluster)
			require.IsType(t, &redis.ClusterClient{}, b.Client(t))
		case "ring":
			require.Nil(t, b.Mini)
			require.Nil(t, b.Server)
			require.Nil(t, b.Cluster)
			require.NotNil(t, b.Ring)
			require.IsType(t, &redis.Ring{}, b.Client(t))
		}
		ctx := t.Context()

		// Two clients are two pools on the same data.
		c1, c2 := b.Client(t), b.Client(t)
		require.NotSame(t, c1, c2)
		require.NoError(t, c1.Set(ctx, "short", "v", 2*time.Second).Err())
		start := time.Now()
		require.NoError(t, c1.Set(ctx, "long", "v", 10*time.Second).Err())
		require.NoError(t, c1.Set(ctx, "forever", "v", 0).Err())
		require.Equal(t, "v", c2.Get(ctx, "short").Val())

		b.FastForward(t, 3*time.Second)

		require.ErrorIs(t, c2.Get(ctx, "short").Err(), redis.Nil)
		requireForwarded(t, 7*time.Second, c2.PTTL(ctx, "long").Val(), start, "10s TTL forwarded 3s")
		require.Equal(t, time.Duration(-1), c2.PTTL(ctx, "forever").Val())
	})
	if !t.Failed() {
		require.Contains(t, names, "miniredis")
		if _, err := Binary(); err == nil {
			require.Subset(t, names, []string{"miniredis", "redis"})
		}
		if required() {
			require.Equal(t, []string{"miniredis", "redis", "cluster", "ring"}, names)
		}
	}
}

func TestStartWithMaxMemory(t *testing.T) {
	ctx := t.Context()
	for _, policy := range []string{"allkeys-lru", "allkeys-random", "volatile-lru"} {
		t.Run(policy, func(t *testing.T) {
			s := StartWith(t, Config{MaxMemory: 2 << 20, MaxMemoryPolicy: policy, Args: []string{"--maxmemory-samples", "7"}})
			rdb := s.Client(t)
			check := func() {
				t.Helper()
				cfg, err := rdb.ConfigGet(ctx, "maxmemory*").Result()
				require.NoError(t, err)
				require.Equal(t, strconv.Itoa(2<<20), cfg["maxmemory"])
				require.Equal(t, policy, cfg["maxmemory-policy"])
				require.Equal(t, "7", cfg["maxmemory-samples"])
			}
			check()

			// Write 8 MB: the keys that may be evicted are, and no write fails.
			const n = 2000
			val := strings.Repeat("x", 4<<10)
			ttl := time.Duration(0)
			if policy == "volatile-lru" {
				ttl = time.Hour // only keys with a TTL may be evicted
			}
			for i := range n {
				require.NoError(t, rdb.Set(ctx, "k"+strconv.Itoa(i), val, ttl).Err())
			}
			size, err := rdb.DBSize(ctx).Result()
			require.NoError(t, err)
			require.Less(t, size, int64(n), "keys were evicted")
			info, err := rdb.Info(ctx, "stats").Result()
			require.NoError(t, err)
			require.NotContains(t, info, "evicted_keys:0\r\n")

			s.Restart()
			check()
		})
	}
	t.Run("noeviction", func(t *testing.T) {
		s := StartWith(t, Config{MaxMemory: 2 << 20, MaxMemoryPolicy: "noeviction"})
		rdb := s.Client(t)
		val := strings.Repeat("x", 4<<10)
		var err error
		for i := 0; i < 2000 && err == nil; i++ {
			err = rdb.Set(ctx, "k"+strconv.Itoa(i), val, 0).Err()
		}
		require.ErrorContains(t, err, "OOM", "writes over maxmemory are refused")
	})
}
