package cache

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// ringShardTimeout is the Manager's budget in TestRingShardDownAndBack, and
// ringClientTimeout its ring client's timeouts: much longer, so that a call
// that waits for the client instead of its budget is seen.
const (
	ringShardTimeout  = 200 * time.Millisecond
	ringClientTimeout = 2 * time.Second
)

// TestRingShardDownAndBack: a Manager on a Ring of three shards, one of
// which stops answering (a blackhole: its packets are dropped, its data
// kept), is marked down by the Ring, and comes back. While it is silent,
// calls on its keys fail with ErrUnavailable within the budget, loaded
// reads of them are served by the loader, and the other shards' keys keep
// working (a breaker per shard). Once the Ring has marked it down, its keys
// live on the other shards, where its entries are misses. Once it is back,
// its keys are its own again; the test logs what such a key reads then:
// the entry the shard kept from before, not what was written meanwhile.
func TestRingShardDownAndBack(t *testing.T) {
	ctx := t.Context()
	r := testredis.StartRing(t)
	proxies := make([]*testredis.Proxy, 3)
	for i := range proxies {
		proxies[i] = testredis.NewProxy(t, r.Shard(i).Addr())
	}
	rdb := r.ClientWith(t, func(o *redis.RingOptions) {
		o.Dialer = testredis.DialVia(proxies...)
		o.HeartbeatFrequency = 100 * time.Millisecond
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = ringClientTimeout, ringClientTimeout, ringClientTimeout
		o.MaxRetries = -1
	})
	m, err := New(rdb, &Options{Prefix: "test", Timeout: ringShardTimeout, Breaker: BreakerOptions{Failures: 3, CoolDown: 100 * time.Millisecond}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	scriptsLoaded(t, m)

	// A key on each shard (by the shard of its entry's Redis key).
	keys := make([]string, 3)
	for i, found := 0, 0; found < 3; i++ {
		k := "k" + strconv.Itoa(i)
		if s := r.ShardOf(t, m.entryKey(k)); keys[s] == "" {
			keys[s] = k
			found++
		}
	}
	const dead = 0
	deadKey, liveKeys := keys[dead], keys[1:]
	for i, k := range keys {
		require.NoError(t, m.Set(ctx, k, "v"+strconv.Itoa(i), TTL(time.Hour)))
	}
	var loads atomic.Int64
	load := func(context.Context) (string, error) { loads.Add(1); return "loaded", nil }

	proxies[dead].SetBlackhole(true)
	t.Cleanup(func() { proxies[dead].SetBlackhole(false) })

	// Until the Ring marks the shard down: calls on its keys fail within
	// the budget, loaded reads fall back to the loader, and the other
	// shards' keys keep working.
	checkDown := func(what string) {
		t.Helper()
		for range 4 { // more consecutive failures than a breaker takes
			start := time.Now()
			err := m.Get(ctx, deadKey, new(string))
			took := time.Since(start)
			assert.ErrorIs(t, err, ErrUnavailable, "%s: Get of a key on the dead shard", what)
			assert.Less(t, took, ringClientTimeout, "%s: Get of a key on the dead shard waited for the client's timeout", what)
		}
		v, err := GetOrLoad(ctx, m, deadKey, load)
		assert.NoError(t, err, "%s: GetOrLoad of a key on the dead shard", what)
		assert.Equal(t, "loaded", v, "%s: GetOrLoad of a key on the dead shard", what)
		for i, k := range liveKeys {
			var got string
			assert.NoError(t, m.Get(ctx, k, &got), "%s: Get of a key on a live shard", what)
			assert.Equal(t, "v"+strconv.Itoa(i+1), got, "%s: Get of a key on a live shard", what)
		}
	}
	for i := range 5 {
		checkDown("shard down, call " + strconv.Itoa(i))
	}
	t.Logf("the dead shard's breaker: %v", m.Stats().Breakers)

	// Once the Ring has marked it down, its keys live on the other shards:
	// the entries that were there are misses, and the Manager works again.
	downAt := time.Now()
	require.Eventually(t, func() bool {
		c, err := rdb.GetShardClientForKey(m.entryKey(deadKey))
		return err == nil && c.Options().Addr != r.Shard(dead).Addr()
	}, testredis.Timeout, 5*time.Millisecond, "the Ring to mark the dead shard down")
	t.Logf("the Ring marked the shard down %v after the first failed calls", time.Since(downAt).Round(time.Millisecond))
	require.Eventually(t, func() bool { return errors.Is(m.Get(ctx, deadKey, new(string)), ErrMiss) }, testredis.Timeout, 5*time.Millisecond,
		"the Manager to use another shard for the dead shard's keys, where its entry is a miss")
	v, err := GetOrLoad(ctx, m, deadKey, load)
	require.NoError(t, err)
	assert.Equal(t, "loaded", v)
	loadsAt := loads.Load()
	v, err = GetOrLoad(ctx, m, deadKey, load)
	require.NoError(t, err)
	assert.Equal(t, "loaded", v)
	assert.Equal(t, loadsAt, loads.Load(), "the value loaded while the shard is down is cached on another shard")
	require.NoError(t, m.Set(ctx, deadKey, "written while down"))
	t.Logf("breakers with the shard marked down: %v", m.Stats().Breakers)

	// The shard comes back with its data: the Ring takes it back, and its
	// keys with it.
	proxies[dead].SetBlackhole(false)
	require.Eventually(t, func() bool {
		c, err := rdb.GetShardClientForKey(m.entryKey(deadKey))
		return err == nil && c.Options().Addr == r.Shard(dead).Addr()
	}, testredis.Timeout, 5*time.Millisecond, "the Ring to take the shard back")
	require.Eventually(t, func() bool { return m.Get(ctx, deadKey, new(string)) == nil }, testredis.Timeout, 5*time.Millisecond,
		"the Manager to use the shard again")
	var got string
	require.NoError(t, m.Get(ctx, deadKey, &got))
	// What the README warns of: the write made while the shard was down
	// went to another shard, and the entry the returning shard kept is
	// served again.
	t.Logf("after the shard came back, %q reads %q; written before it went down: %q, while it was down: %q", deadKey, got, "v0", "written while down")
	for i, k := range liveKeys {
		var got string
		require.NoError(t, m.Get(ctx, k, &got))
		assert.Equal(t, "v"+strconv.Itoa(i+1), got)
	}
}

// TestRingAllShardsDown: a Manager with a local tier made while a Ring has
// marked every shard down (where Ring.Subscribe panics) serves loaded reads
// from the loader, and subscribes once a shard is back.
func TestRingAllShardsDown(t *testing.T) {
	ctx := t.Context()
	r := testredis.StartRing(t)
	rdb := r.ClientWith(t, func(o *redis.RingOptions) {
		o.HeartbeatFrequency = 20 * time.Millisecond
		o.DialTimeout = 100 * time.Millisecond
		o.MaxRetries = -1
	})
	for i := range 3 {
		r.Shard(i).Kill()
	}
	require.Eventually(t, func() bool {
		_, err := rdb.GetShardClientForKey("k")
		return err != nil
	}, testredis.Timeout, 5*time.Millisecond, "the Ring to mark every shard down")

	m, err := New(rdb, &Options{Prefix: "test", Local: &LocalOptions{}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	v, err := GetOrLoad(ctx, m, "k", func(context.Context) (string, error) { return "loaded", nil })
	require.NoError(t, err)
	assert.Equal(t, "loaded", v)
	assert.False(t, m.Stats().Local.Subscribed)

	for i := range 3 {
		r.Shard(i).Restart()
	}
	require.Eventually(t, func() bool { return m.Stats().Local.Subscribed }, testredis.Timeout, 5*time.Millisecond,
		"the local tier to subscribe once the shards are back")
	require.NoError(t, m.Set(ctx, "k", "set"))
	v, err = GetOrLoad(ctx, m, "k", func(context.Context) (string, error) { return "loaded", nil })
	require.NoError(t, err)
	assert.Equal(t, "set", v)
}
