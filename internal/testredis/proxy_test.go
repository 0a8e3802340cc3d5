package testredis

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// proxied returns a miniredis, a proxy in front of it and a client through
// the proxy that neither retries nor waits long for a reply.
func proxied(t *testing.T) (*miniredis.Miniredis, *Proxy, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	p := NewProxy(t, mr.Addr())
	rdb := redis.NewClient(&redis.Options{
		Addr:         p.Addr(),
		DialTimeout:  time.Second,
		ReadTimeout:  time.Second,
		WriteTimeout: time.Second,
		MaxRetries:   -1,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	return mr, p, rdb
}

// timed returns how long f took.
func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

func TestProxyForwards(t *testing.T) {
	ctx := t.Context()
	mr, p, rdb := proxied(t)
	require.Equal(t, mr.Addr(), p.Target())
	require.NoError(t, rdb.Set(ctx, "k", "v", 0).Err())
	require.Equal(t, "v", rdb.Get(ctx, "k").Val())
	big := strings.Repeat("x", 1<<20) // many chunks each way
	require.NoError(t, rdb.Set(ctx, "big", big, 0).Err())
	require.Equal(t, big, rdb.Get(ctx, "big").Val())
	require.Equal(t, int64(1), p.Accepted())
	require.Equal(t, 1, p.Conns())
}

func TestProxyLatency(t *testing.T) {
	ctx := t.Context()
	_, p, rdb := proxied(t)
	require.NoError(t, rdb.Ping(ctx).Err()) // connect first: the dial is not delayed

	p.SetLatency(100*time.Millisecond, 150*time.Millisecond)
	d := timed(func() { require.NoError(t, rdb.Ping(ctx).Err()) })
	require.GreaterOrEqual(t, d, 250*time.Millisecond, "a round trip pays both directions")

	// Pipelined commands are one chunk each way: one round trip's latency.
	d = timed(func() {
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := range 10 {
				p.Set(ctx, "k"+strconv.Itoa(i), i, 0)
			}
			return nil
		})
		require.NoError(t, err)
	})
	require.GreaterOrEqual(t, d, 250*time.Millisecond)
	require.Less(t, d, 10*250*time.Millisecond, "a pipeline pays the latency once, not per command")

	p.SetLatency(0, 0)
	d = timed(func() { require.NoError(t, rdb.Ping(ctx).Err()) })
	require.Less(t, d, 250*time.Millisecond, "latency removed while running")
}

func TestProxyDelayWhen(t *testing.T) {
	ctx := t.Context()
	_, p, rdb := proxied(t)
	require.NoError(t, rdb.Set(ctx, "k", "v", 0).Err())
	p.DelayWhen(MatchCommand("GET"), 300*time.Millisecond)

	d := timed(func() { require.Equal(t, "v", rdb.Get(ctx, "k").Val()) })
	require.GreaterOrEqual(t, d, 300*time.Millisecond, "GET is delayed")
	d = timed(func() { require.NoError(t, rdb.Set(ctx, "k", "w", 0).Err()) })
	require.Less(t, d, 300*time.Millisecond, "SET is not")

	p.DelayWhen(nil, 0)
	d = timed(func() { require.Equal(t, "w", rdb.Get(ctx, "k").Val()) })
	require.Less(t, d, 300*time.Millisecond, "the rule is removed")
}

func TestProxyDelaysSubscribe(t *testing.T) {
	ctx := t.Context()
	mr, p, rdb := proxied(t)
	p.DelayWhen(MatchCommand("subscribe"), 300*time.Millisecond)
	start := time.Now()
	ps := rdb.Subscribe(ctx, "news")
	t.Cleanup(func() { _ = ps.Close() })
	require.NoError(t, rdb.Ping(ctx).Err(), "other connections are not held back")
	require.Less(t, time.Since(start), 300*time.Millisecond)
	require.Empty(t, mr.PubSubNumSub("news")["news"], "not subscribed yet")
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	msg, err := ps.Receive(rctx)
	require.NoError(t, err, "the subscription is confirmed")
	require.IsType(t, &redis.Subscription{}, msg)
	require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)
}

func TestMatchCommand(t *testing.T) {
	m := MatchCommand("subscribe", "EVALSHA")
	for _, c := range []struct {
		chunk string
		want  bool
	}{
		{"*2\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n", true},
		{"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n", true},
		{"*4\r\n$7\r\nevalsha\r\n$40\r\nabc\r\n", true},
		{"*2\r\n$10\r\npsubscribe\r\n$4\r\nnews\r\n", false},
		{"*2\r\n$4\r\neval\r\n$3\r\nsha\r\n", false},
		{"*2\r\n$3\r\nget\r\n$1\r\nk\r\n", false},
	} {
		require.Equal(t, c.want, m([]byte(c.chunk)), "%q", c.chunk)
	}
}

func TestProxyBlackhole(t *testing.T) {
	ctx := t.Context()
	mr, p, _ := proxied(t)
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), ReadTimeout: 100 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	require.NoError(t, rdb.Set(ctx, "k", "v", 0).Err())

	p.SetBlackhole(true)
	err := rdb.Set(ctx, "k", "lost", 0).Err()
	require.Error(t, err, "no answer")
	require.ErrorContains(t, err, "timeout")
	fresh := redis.NewClient(&redis.Options{Addr: p.Addr(), ReadTimeout: 100 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = fresh.Close() })
	require.Error(t, fresh.Ping(ctx).Err(), "new connections are accepted but not answered")
	v, err := mr.Get("k")
	require.NoError(t, err)
	require.Equal(t, "v", v, "nothing was forwarded")

	p.SetBlackhole(false)
	require.NoError(t, rdb.Ping(ctx).Err(), "answered again, on a new connection")
	require.NoError(t, fresh.Ping(ctx).Err())
	require.Equal(t, "v", rdb.Get(ctx, "k").Val())
}

func TestProxyReset(t *testing.T) {
	ctx := t.Context()
	_, p, rdb := proxied(t)
	ps := rdb.Subscribe(ctx, "news")
	t.Cleanup(func() { _ = ps.Close() })
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := ps.Receive(rctx)
	require.NoError(t, err)
	require.NoError(t, rdb.Ping(ctx).Err())
	require.Equal(t, 2, p.Conns(), "a pool connection and a pub/sub one")

	p.Reset()
	require.Zero(t, p.Conns())
	_, err = ps.Receive(rctx)
	require.Error(t, err, "the subscription saw its connection close")
	require.Eventually(t, func() bool { return rdb.Ping(ctx).Err() == nil },
		5*time.Second, 5*time.Millisecond, "the client reconnects")
}

// proxyGoroutines counts the goroutines running the proxy's code.
func proxyGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "testredis.(*Proxy)") || strings.Contains(g, "testredis.drain") {
			n++
		}
	}
	return n
}

func TestProxyCloseLeavesNoGoroutine(t *testing.T) {
	ctx := t.Context()
	mr := miniredis.RunT(t)
	p := NewProxy(t, mr.Addr())
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), ReadTimeout: 2 * time.Second, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	require.NoError(t, rdb.Ping(ctx).Err())

	// A chunk waiting out a long delay, and a connection in the blackhole.
	p.SetLatency(time.Hour, 0)
	errs := make(chan error, 1)
	go func() { errs <- rdb.Ping(ctx).Err() }()
	require.Eventually(t, func() bool { return proxyGoroutines() >= 5 }, 5*time.Second, time.Millisecond,
		"fewer than 5 proxy goroutines run: the ping did not reach the proxy's delay")
	p.SetBlackhole(true)
	hole := redis.NewClient(&redis.Options{Addr: p.Addr(), ReadTimeout: 2 * time.Second, MaxRetries: -1})
	t.Cleanup(func() { _ = hole.Close() })
	go func() { _ = hole.Ping(ctx).Err() }()
	require.Eventually(t, func() bool { return p.Accepted() == 2 }, 5*time.Second, time.Millisecond,
		"the proxy did not accept the blackholed client's connection")

	require.NoError(t, p.Close())
	// Close returns once each goroutine has said it is done; the last
	// frames of a goroutine (and of the one that waits for them) may still
	// be on its stack for a moment after that.
	require.Eventually(t, func() bool { return proxyGoroutines() == 0 }, time.Second, time.Millisecond,
		"the proxy's goroutines did not all exit within 1s of Close returning")
	require.NoError(t, p.Close(), "Close is idempotent")
	select {
	case err := <-errs:
		require.Error(t, err, "the delayed PING's connection was closed")
	case <-time.After(5 * time.Second):
		t.Fatal("the PING waiting in the proxy did not end within 5s of Close")
	}
}

func TestDialVia(t *testing.T) {
	ctx := t.Context()
	mr := miniredis.RunT(t)
	p := NewProxy(t, mr.Addr())
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), Dialer: DialVia(p)})
	t.Cleanup(func() { _ = rdb.Close() })
	require.NoError(t, rdb.Ping(ctx).Err())
	require.Equal(t, int64(1), p.Accepted(), "the client's address is the server's, its traffic goes through the proxy")

	other := miniredis.RunT(t)
	direct := redis.NewClient(&redis.Options{Addr: other.Addr(), Dialer: DialVia(p)})
	t.Cleanup(func() { _ = direct.Close() })
	require.NoError(t, direct.Ping(ctx).Err())
	require.Equal(t, int64(1), p.Accepted(), "other addresses are dialed directly")
}

// TestProxyClusterNode puts a proxy in front of one master of a cluster:
// blackholing it fails the commands on its slots only.
func TestProxyClusterNode(t *testing.T) {
	ctx := t.Context()
	c := sharedCluster(t)
	p := NewProxy(t, c.Addrs()[0])
	rdb := c.ClientWith(t, func(o *redis.ClusterOptions) {
		o.Dialer = DialVia(p)
		o.ReadTimeout = 200 * time.Millisecond
		o.MaxRetries = -1
	})
	// A key on the proxied master and one on another.
	keys := map[int]string{}
	for i := 0; len(keys) < 2; i++ {
		k := "k" + strconv.Itoa(i)
		slot, err := rdb.ClusterKeySlot(ctx, k).Result()
		require.NoError(t, err)
		if owner := c.SlotOwner(t, int(slot)); owner <= 1 && keys[owner] == "" {
			keys[owner] = k
		}
	}
	for _, k := range keys {
		require.NoError(t, rdb.Set(ctx, k, "v", 0).Err())
	}
	require.Positive(t, p.Accepted(), "the proxied master is reached through the proxy")

	p.SetBlackhole(true)
	require.Error(t, rdb.Get(ctx, keys[0]).Err(), "the proxied master does not answer")
	require.Equal(t, "v", rdb.Get(ctx, keys[1]).Val(), "the others do")
	p.SetBlackhole(false)
	require.Eventually(t, func() bool { return rdb.Get(ctx, keys[0]).Val() == "v" },
		5*time.Second, 5*time.Millisecond, "the proxied master answers again")
}
