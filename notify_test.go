package cache

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// Tests of the lease notices (notify.go): a process waiting for another
// process's load, or for a lock, is told when it ends instead of polling.
// Their leases last notifyLeaseTTL, so that the slow poll that covers lost
// notices comes every 5s: a waiter that returns within notifiedWithin of
// the holder's end was told, not polled.

const (
	notifyLeaseTTL = 10 * time.Second
	notifiedWithin = 2 * time.Second
	// quietFor is how long a waiter is watched for commands it should not
	// send: polling the lease, at most every maxLeasePoll, would send
	// dozens in that time.
	quietFor = 300 * time.Millisecond
)

// cmdCount is a go-redis hook that counts the commands its client sends
// (those of a pipeline one by one) and keeps their names. The commands
// that set up a new connection (HELLO, CLIENT SETINFO) are not counted.
type cmdCount struct {
	mu    sync.Mutex // protects names
	names []string
}

func (c *cmdCount) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *cmdCount) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add(cmd)
		return next(ctx, cmd)
	}
}

func (c *cmdCount) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.add(cmds...)
		return next(ctx, cmds)
	}
}

func (c *cmdCount) add(cmds ...redis.Cmder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cmd := range cmds {
		switch name := cmd.Name(); name {
		case "hello", "client": // a new connection's set-up, not the Manager's
		default:
			c.names = append(c.names, name)
		}
	}
}

// n returns how many commands were sent.
func (c *cmdCount) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.names)
}

// since returns the names of the commands sent after the first n.
func (c *cmdCount) since(n int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.names[n:]...)
}

// managerOn returns a Manager of e on rdb (a client the test made, with
// hooks of its own, say), closed in cleanup.
func managerOn(t *testing.T, e *env, rdb redis.UniversalClient, opts Options) *Manager {
	t.Helper()
	if opts.Now == nil {
		opts.Now = e.clock.Now
	}
	if opts.Prefix == "" {
		opts.Prefix = "test"
	}
	m, err := New(rdb, &opts)
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	scriptsLoaded(t, m)
	return m
}

// countedManager returns a Manager of e on a client of its own whose
// commands are counted.
func countedManager(t *testing.T, e *env, opts Options) (*Manager, *cmdCount) {
	t.Helper()
	rdb := e.b.Client(t)
	c := &cmdCount{}
	rdb.AddHook(c)
	return managerOn(t, e, rdb, opts), c
}

// result is what a call in a goroutine of the test returned.
type result[T any] struct {
	v   T
	err error
}

// goLoad runs GetOrLoad of key on m with load in a goroutine, and returns
// where its result goes.
func goLoad[T any](ctx context.Context, m *Manager, key string, load func(context.Context) (T, error)) <-chan result[T] {
	out := make(chan result[T], 1)
	go func() {
		v, err := GetOrLoad(ctx, m, key, load)
		out <- result[T]{v, err}
	}()
	return out
}

// gated returns a loader that waits at g, then returns v.
func gated[T any](g *gate, v T) func(context.Context) (T, error) {
	return func(ctx context.Context) (T, error) {
		if err := g.pass(ctx); err != nil {
			var zero T
			return zero, err
		}
		return v, nil
	}
}

// counted returns a loader that counts its calls in n and returns v.
func counted[T any](n *atomic.Int32, v T) func(context.Context) (T, error) {
	return func(context.Context) (T, error) {
		n.Add(1)
		return v, nil
	}
}

// skipWithoutNotices skips a test of the lease notices on a ring, which has
// none: its waiters poll the lease (TestNotifyRingPolls).
func skipWithoutNotices(t *testing.T, b *testredis.Backend) {
	t.Helper()
	if b.Ring != nil {
		t.Skip("a Ring has no lease notices: its waiters poll the lease (TestNotifyRingPolls)")
	}
}

// awaitMarked waits until the lease (or lock) key is marked as awaited: a
// waiter has subscribed to its notices and marked it, so that the holder's
// end will publish it.
func awaitMarked(t *testing.T, rdb redis.UniversalClient, key string) {
	t.Helper()
	require.Eventually(t, func() bool { return rdb.Exists(t.Context(), key+awaitedSuffix).Val() == 1 },
		testredis.Timeout, time.Millisecond, "the waiter to mark %s as awaited", key)
}

// recvWithin returns the next value from ch, failing t when none comes
// within d (plus the time the process stalled meanwhile, which is not the
// code's): what names the value.
func recvWithin[T any](t *testing.T, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	var v T
	var ok bool
	took, stalled := timed(func() {
		timer := time.NewTimer(d + testredis.Timeout)
		defer timer.Stop()
		select {
		case v = <-ch:
			ok = true
		case <-timer.C:
		}
	})
	if !ok {
		t.Fatalf("%s: nothing after %v", what, took)
	}
	if took-stalled >= d {
		t.Errorf("%s took %v (the process stalled %v meanwhile), want under %v: the waiter was not told, it polled",
			what, took.Round(time.Millisecond), stalled.Round(time.Millisecond), d)
	}
	return v
}

// quiet checks that c counts no command for quietFor: a waiter that was
// told of nothing sends nothing while the lease is held.
func quiet(t *testing.T, c *cmdCount, what string) {
	t.Helper()
	from := c.n()
	time.Sleep(quietFor) // watching for commands that must not come
	if sent := c.since(from); len(sent) > 0 {
		t.Errorf("%s: sent %d commands in %v while the lease was held, want none (it polls?): %v",
			what, len(sent), quietFor, sent)
	}
}

// masters returns a client on each master of b (the server itself on a
// single node, each shard on a ring), for INFO and PUBSUB, closed in
// cleanup.
func masters(t *testing.T, b *testredis.Backend) []*redis.Client {
	t.Helper()
	var addrs []string
	switch {
	case b.Cluster != nil:
		addrs = b.Cluster.Addrs()
	case b.Ring != nil:
		for _, name := range b.Ring.Names() {
			addrs = append(addrs, b.Ring.Addrs()[name])
		}
	case b.Server != nil:
		addrs = []string{b.Server.Addr()}
	default:
		addrs = []string{b.Mini.Addr()}
	}
	var out []*redis.Client
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		t.Cleanup(func() { _ = c.Close() })
		out = append(out, c)
	}
	return out
}

// subscribers returns how many clients subscribe to the notice channel ch
// (sharded, on a cluster), on all masters.
func subscribers(t *testing.T, b *testredis.Backend, nodes []*redis.Client, ch string) int64 {
	t.Helper()
	var n int64
	for _, c := range nodes {
		var got map[string]int64
		var err error
		if b.Cluster != nil {
			got, err = c.PubSubShardNumSub(t.Context(), ch).Result()
		} else {
			got, err = c.PubSubNumSub(t.Context(), ch).Result()
		}
		require.NoError(t, err)
		n += got[ch]
	}
	return n
}

// publishes returns how many PUBLISH and SPUBLISH calls the masters ran
// (those of scripts included), from INFO commandstats.
func publishes(t *testing.T, nodes []*redis.Client) int64 {
	t.Helper()
	var n int64
	for _, c := range nodes {
		info, err := c.Info(t.Context(), "commandstats").Result()
		require.NoError(t, err)
		for line := range strings.Lines(info) {
			name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
			if !ok || name != "cmdstat_publish" && name != "cmdstat_spublish" {
				continue
			}
			calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
			k, err := strconv.ParseInt(calls, 10, 64)
			require.NoError(t, err, line)
			n += k
		}
	}
	return n
}

// TestNotifyWaiterIsTold: a process waiting for another's load sends a
// handful of commands to start waiting, none while it waits, and returns
// the holder's value as soon as it is stored, long before its poll.
func TestNotifyWaiterIsTold(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		skipWithoutNotices(t, b)
		e := newEnv(t, b)
		opts := Options{LeaseTTL: notifyLeaseTTL}
		a := managerOn(t, e, e.b.Client(t), opts)
		bm, count := countedManager(t, e, opts)
		ctx := t.Context()
		g := newGate()
		aGot := goLoad(ctx, a, "k", gated(g, "from A"))
		g.reached(t, "A's load to start")

		start := count.n()
		var bLoads atomic.Int32
		bGot := goLoad(ctx, bm, "k", counted(&bLoads, "from B"))
		awaitMarked(t, a.Client(), a.keyLeaseRef("k").lease)
		toWait := count.since(start)
		t.Logf("B's commands to start waiting: %v", toWait)
		assert.LessOrEqual(t, len(toWait), 6, "commands to start waiting: %v", toWait)
		quiet(t, count, "B, waiting for A's load")

		g.open()
		r := recvWithin(t, bGot, notifiedWithin, "B's value once A stored it")
		require.NoError(t, r.err)
		assert.Equal(t, "from A", r.v)
		assert.Zero(t, bLoads.Load(), "B loaded although A's value was stored")
		assert.Equal(t, "from A", testredis.Recv(t, aGot, "A's value").v)
		assert.Empty(t, allKeys(t, a.Client(), "*"+awaitedSuffix), "marks left behind")
	})
}

// TestNotifyBatchWaiterIsTold: a batch waiting for two leases held by two
// processes is told of each end, and returns once both are stored.
func TestNotifyBatchWaiterIsTold(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		skipWithoutNotices(t, b)
		e := newEnv(t, b)
		opts := Options{LeaseTTL: notifyLeaseTTL}
		a1, a2 := managerOn(t, e, e.b.Client(t), opts), managerOn(t, e, e.b.Client(t), opts)
		bm, count := countedManager(t, e, opts)
		ctx := t.Context()
		g1, g2 := newGate(), newGate()
		goLoad(ctx, a1, "x", gated(g1, "x from A1"))
		goLoad(ctx, a2, "y", gated(g2, "y from A2"))
		g1.reached(t, "A1's load to start")
		g2.reached(t, "A2's load to start")

		var bLoads atomic.Int32
		bGot := make(chan result[map[string]string], 1)
		go func() {
			v, err := GetOrLoadMany(ctx, bm, []string{"x", "y"}, func(_ context.Context, missing []string) (map[string]string, error) {
				bLoads.Add(1)
				out := make(map[string]string)
				for _, k := range missing {
					out[k] = k + " from B"
				}
				return out, nil
			})
			bGot <- result[map[string]string]{v, err}
		}()
		awaitMarked(t, a1.Client(), a1.keyLeaseRef("x").lease)
		awaitMarked(t, a1.Client(), a1.keyLeaseRef("y").lease)
		quiet(t, count, "B, waiting for both loads")

		g1.open()
		require.Eventually(t, func() bool { return a1.Client().Exists(ctx, a1.keyLeaseRef("x").lease).Val() == 0 },
			testredis.Timeout, time.Millisecond, "A1 to store x")
		select {
		case r := <-bGot:
			t.Fatalf("B returned %v, %v while y was still loading", r.v, r.err)
		case <-time.After(50 * time.Millisecond): // B takes x, and waits for y
		}
		quiet(t, count, "B, waiting for y after taking x")
		g2.open()
		r := recvWithin(t, bGot, notifiedWithin, "B's values once A2 stored y")
		require.NoError(t, r.err)
		assert.Equal(t, map[string]string{"x": "x from A1", "y": "y from A2"}, r.v)
		assert.Zero(t, bLoads.Load(), "B loaded although both values were stored")
	})
}

// TestNotifyLostSubscription: the server drops the waiter's subscription
// (CLIENT KILL TYPE pubsub) while it waits. The waiter subscribes again
// and goes quiet, and a notice published while its subscription is down
// is not needed: it still returns the value at once.
func TestNotifyLostSubscription(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		skipWithoutNotices(t, b)
		if b.Mini != nil {
			t.Skip("miniredis has no CLIENT KILL")
		}
		e := newEnv(t, b)
		opts := Options{LeaseTTL: notifyLeaseTTL}
		a := managerOn(t, e, e.b.Client(t), opts)
		bm, count := countedManager(t, e, opts)
		nodes := masters(t, b)
		ctx := t.Context()
		lease := a.keyLeaseRef("k").lease
		ch := bm.notes.channelOf(lease)
		kill := func() {
			t.Helper()
			var killed int64
			for _, c := range nodes {
				n, err := c.ClientKillByFilter(ctx, "TYPE", "pubsub").Result()
				require.NoError(t, err)
				killed += n
			}
			require.Positive(t, killed, "no subscription to kill")
		}

		g := newGate()
		goLoad(ctx, a, "k", gated(g, "from A"))
		g.reached(t, "A's load to start")
		var bLoads atomic.Int32
		bGot := goLoad(ctx, bm, "k", counted(&bLoads, "from B"))
		awaitMarked(t, a.Client(), lease)
		require.Equal(t, int64(1), subscribers(t, b, nodes, ch))

		// Dropped while nothing happens: B subscribes again, and stops
		// sending commands once it has.
		kill()
		require.Eventually(t, func() bool { return subscribers(t, b, nodes, ch) == 1 }, testredis.Timeout, 5*time.Millisecond,
			"B to subscribe again after its subscription was killed")
		require.Eventually(t, func() bool {
			n := count.n()
			time.Sleep(50 * time.Millisecond)
			return count.n() == n
		}, testredis.Timeout, time.Millisecond, "B to stop polling once subscribed again")
		quiet(t, count, "B, subscribed again")
		select {
		case r := <-bGot:
			t.Fatalf("B returned %q, %v while A still held the lease", r.v, r.err)
		default:
		}

		// Dropped as A stores: the notice may go to nobody.
		kill()
		g.open()
		r := recvWithin(t, bGot, notifiedWithin, "B's value once A stored it, its subscription killed")
		require.NoError(t, r.err)
		assert.Equal(t, "from A", r.v)
		assert.Zero(t, bLoads.Load())
	})
}

// TestNotifyVoidedHolder: the key is invalidated while A loads it (its
// source moving from version 1 to 2 first). A's store is refused; B, which
// waited for it, is told and loads version 2 itself: it is never served
// A's version 1, which no longer is the key's value.
func TestNotifyVoidedHolder(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		skipWithoutNotices(t, b)
		e := newEnv(t, b)
		opts := Options{LeaseTTL: notifyLeaseTTL}
		a := managerOn(t, e, e.b.Client(t), opts)
		bm := managerOn(t, e, e.b.Client(t), opts)
		other := managerOn(t, e, e.b.Client(t), opts)
		ctx := t.Context()
		var source atomic.Int64
		source.Store(1)
		g := newGate()
		aGot := goLoad(ctx, a, "k", func(ctx context.Context) (int64, error) {
			v := source.Load()
			return v, g.pass(ctx)
		})
		g.reached(t, "A's load to start")
		var bLoads atomic.Int32
		bGot := goLoad(ctx, bm, "k", func(context.Context) (int64, error) {
			bLoads.Add(1)
			return source.Load(), nil
		})
		awaitMarked(t, a.Client(), a.keyLeaseRef("k").lease)

		source.Store(2)
		require.NoError(t, other.Invalidate(ctx, Key("k")))
		g.open()
		r := recvWithin(t, bGot, notifiedWithin, "B's value once A's store was refused")
		require.NoError(t, r.err)
		assert.Equal(t, int64(2), r.v, "B was served a value loaded before the invalidation")
		assert.Equal(t, int32(1), bLoads.Load(), "B loads once A's store is refused")
		ra := testredis.Recv(t, aGot, "A's value")
		require.NoError(t, ra.err)
		assert.Equal(t, int64(1), ra.v, "A's caller joined before its load began: it may take it")
		assert.Equal(t, uint64(1), a.Stats().ByName["keys"].VoidedStores)
		v, err := Get[int64](ctx, other, "k")
		require.NoError(t, err)
		assert.Equal(t, int64(2), v, "the stored value")
	})
}

// TestNotifyVoidedHolderNewLoadTold: the key is invalidated while A loads
// it, and another process, C, loads and stores it anew while A still runs.
// B, which waited for A's lease (its mark holds A's token), is told of C's
// store, not only of A's end or at its poll (LeaseTTL/2 later).
func TestNotifyVoidedHolderNewLoadTold(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		skipWithoutNotices(t, b)
		e := newEnv(t, b)
		opts := Options{LeaseTTL: notifyLeaseTTL}
		a := managerOn(t, e, e.b.Client(t), opts)
		bm := managerOn(t, e, e.b.Client(t), opts)
		c := managerOn(t, e, e.b.Client(t), opts)
		ctx := t.Context()
		g := newGate() // opened at the end only: A is slow
		defer g.open()
		goLoad(ctx, a, "k", gated(g, "from A"))
		g.reached(t, "A's load to start")
		var bLoads atomic.Int32
		bGot := goLoad(ctx, bm, "k", counted(&bLoads, "from B"))
		awaitMarked(t, a.Client(), a.keyLeaseRef("k").lease)

		require.NoError(t, c.Invalidate(ctx, Key("k")))
		v, err := GetOrLoad(ctx, c, "k", func(context.Context) (string, error) { return "from C", nil })
		require.NoError(t, err)
		require.Equal(t, "from C", v)
		r := recvWithin(t, bGot, notifiedWithin, "B's value once C stored it")
		require.NoError(t, r.err)
		assert.Equal(t, "from C", r.v)
		assert.Zero(t, bLoads.Load())
	})
}

// TestNotifyVoidedHolderLeaseFreeTold: the key is invalidated while A
// loads it, which frees its lease; nobody else loads it. An invalidation
// publishes nothing (it is a plain DEL), so B, which waited for A's lease,
// learns it is free when A's load ends (its refused store publishes the
// mark), not at its poll, and then loads the source as it is after the
// invalidation.
func TestNotifyVoidedHolderLeaseFreeTold(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		skipWithoutNotices(t, b)
		e := newEnv(t, b)
		opts := Options{LeaseTTL: notifyLeaseTTL}
		a := managerOn(t, e, e.b.Client(t), opts)
		bm := managerOn(t, e, e.b.Client(t), opts)
		other := managerOn(t, e, e.b.Client(t), opts)
		ctx := t.Context()
		g := newGate()
		defer g.open()
		aGot := goLoad(ctx, a, "k", gated(g, "from A"))
		g.reached(t, "A's load to start")
		var bLoads atomic.Int32
		bGot := goLoad(ctx, bm, "k", counted(&bLoads, "from B"))
		awaitMarked(t, a.Client(), a.keyLeaseRef("k").lease)

		require.NoError(t, other.Invalidate(ctx, Key("k")))
		g.open() // A's load ends; its store is refused
		r := recvWithin(t, bGot, notifiedWithin, "B's own load once the load it waited for ended with its store refused")
		require.NoError(t, r.err)
		assert.Equal(t, "from B", r.v, "B was served A's value, loaded before the invalidation")
		assert.Equal(t, int32(1), bLoads.Load())
		testredis.Recv(t, aGot, "A's result")
		assert.Equal(t, uint64(1), a.Stats().ByName["keys"].VoidedStores)
	})
}

// TestNotifyToldWhenHolderFails: A's load ends without a value stored (an
// error, DontStore, a panic): its lease is released, B is told, and loads
// at once, itself. It is never served the value A did not store.
func TestNotifyToldWhenHolderFails(t *testing.T) {
	fails := map[string]func(context.Context) (string, error){
		"error": func(context.Context) (string, error) { return "", errors.New("source down") },
		"DontStore": func(ctx context.Context) (string, error) {
			DontStore(ctx)
			return "partial from A", nil
		},
		"panic": func(context.Context) (string, error) { panic("loader bug") },
	}
	for name, fail := range fails {
		t.Run(name, func(t *testing.T) {
			testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
				skipWithoutNotices(t, b)
				e := newEnv(t, b)
				opts := Options{LeaseTTL: notifyLeaseTTL}
				a := managerOn(t, e, e.b.Client(t), opts)
				bm := managerOn(t, e, e.b.Client(t), opts)
				ctx := t.Context()
				g := newGate()
				aGot := goLoad(ctx, a, "k", func(ctx context.Context) (string, error) {
					if err := g.pass(ctx); err != nil {
						return "", err
					}
					return fail(ctx)
				})
				g.reached(t, "A's load to start")
				var bLoads atomic.Int32
				bGot := goLoad(ctx, bm, "k", counted(&bLoads, "from B"))
				awaitMarked(t, a.Client(), a.keyLeaseRef("k").lease)
				g.open()
				r := recvWithin(t, bGot, notifiedWithin, "B's own load once A's ended without a value")
				require.NoError(t, r.err)
				assert.Equal(t, "from B", r.v)
				assert.Equal(t, int32(1), bLoads.Load())
				ra := testredis.Recv(t, aGot, "A's result")
				if name == "DontStore" {
					assert.NoError(t, ra.err)
				} else {
					assert.Error(t, ra.err)
				}
			})
		})
	}
}

// TestNotifyNoPublishUncontended: loads and locks that nobody waits for
// publish nothing; a contended load, and a contended lock, publish one
// notice each; no mark is left behind.
func TestNotifyNoPublishUncontended(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		skipWithoutNotices(t, b)
		e := newEnv(t, b)
		opts := Options{LeaseTTL: notifyLeaseTTL}
		a := managerOn(t, e, e.b.Client(t), opts)
		bm := managerOn(t, e, e.b.Client(t), opts)
		nodes := masters(t, b)
		real := b.Mini == nil
		ctx := t.Context()
		var before int64
		if real {
			before = publishes(t, nodes)
		}
		for i := range 20 {
			k := "cold" + strconv.Itoa(i)
			_, err := GetOrLoad(ctx, a, k, func(context.Context) (int, error) { return i, nil })
			require.NoError(t, err)
			_, err = GetOrLoad(ctx, bm, k, func(context.Context) (int, error) { return -1, nil })
			require.NoError(t, err)
			l, err := a.Lock(ctx, k, time.Minute)
			require.NoError(t, err)
			require.NoError(t, l.Release(ctx))
		}
		_, err := GetOrLoad(ctx, a, "failing", func(context.Context) (int, error) { return 0, errors.New("down") })
		require.Error(t, err)
		if real {
			assert.Equal(t, before, publishes(t, nodes), "uncontended loads and locks published")
		}
		assert.Empty(t, allKeys(t, a.Client(), "*"+awaitedSuffix), "marks made without a waiter")

		// Contended: one notice each.
		g := newGate()
		goLoad(ctx, a, "hot", gated(g, "from A"))
		g.reached(t, "A's load to start")
		bGot := goLoad(ctx, bm, "hot", func(context.Context) (string, error) { return "from B", nil })
		awaitMarked(t, a.Client(), a.keyLeaseRef("hot").lease)
		g.open()
		r := recvWithin(t, bGot, notifiedWithin, "B's value")
		require.NoError(t, r.err)
		assert.Equal(t, "from A", r.v)
		held, err := a.TryLock(ctx, "oven", time.Minute)
		require.NoError(t, err)
		locked := make(chan result[*Lock], 1)
		go func() {
			l, err := bm.Lock(ctx, "oven", time.Minute, LinearRetry(time.Minute))
			locked <- result[*Lock]{l, err}
		}()
		awaitMarked(t, a.Client(), a.lockKey("oven"))
		require.NoError(t, held.Release(ctx))
		rl := recvWithin(t, locked, notifiedWithin, "B's lock once A released it")
		require.NoError(t, rl.err)
		require.NoError(t, rl.v.Release(ctx))
		if real {
			assert.Equal(t, before+2, publishes(t, nodes), "a contended load and a contended lock: one notice each")
		}
		assert.Empty(t, allKeys(t, a.Client(), "*"+awaitedSuffix), "marks left behind")
	})
}

// TestNotifyLockWaiterTold: a Lock waiting with a retry of a minute gets
// the lock as soon as its holder releases it; one whose context ends
// returns at once, leaving no goroutine behind.
func TestNotifyLockWaiterTold(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		skipWithoutNotices(t, b)
		e := newEnv(t, b)
		a := managerOn(t, e, e.b.Client(t), Options{})
		bm, count := countedManager(t, e, Options{})
		ctx := t.Context()
		key := a.lockKey("oven")
		lockB := func(ctx context.Context) <-chan result[*Lock] {
			out := make(chan result[*Lock], 1)
			go func() {
				l, err := bm.Lock(ctx, "oven", time.Minute, LinearRetry(time.Minute))
				out <- result[*Lock]{l, err}
			}()
			return out
		}

		held, err := a.TryLock(ctx, "oven", time.Minute)
		require.NoError(t, err)
		got := lockB(ctx)
		awaitMarked(t, a.Client(), key)
		quiet(t, count, "B, waiting for the lock")
		require.NoError(t, held.Release(ctx))
		r := recvWithin(t, got, notifiedWithin, "B's lock once A released it")
		require.NoError(t, r.err)
		require.NoError(t, r.v.Release(ctx))

		// A waiter whose context ends: its subscription, made above, stays.
		held, err = a.TryLock(ctx, "oven", time.Minute)
		require.NoError(t, err)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		got = lockB(wctx)
		awaitMarked(t, a.Client(), key)
		require.Equal(t, 1, watches(bm.notes), "B's watch of the lock")
		cancel()
		r = recvWithin(t, got, notifiedWithin, "B's Lock to return once its context ended")
		assert.ErrorIs(t, r.err, ErrNotObtained)
		assert.ErrorIs(t, r.err, context.Canceled)
		assert.Nil(t, r.v)
		assert.Zero(t, watches(bm.notes), "B's watch left behind")
		if n, one := goroutinesIn("cache.(*Manager).obtain"); n > 0 {
			t.Errorf("%d goroutines still wait for the lock, such as %s", n, one)
		}
		require.NoError(t, held.Release(ctx))
	})
}

// TestNotifyLockToldAfterMarkRace: the lock is released between B's first
// attempt and its mark (which then finds no lock), and taken by C before
// B's next attempt. B still marks C's lock, and is told when C releases it,
// instead of waiting its retry of a minute.
func TestNotifyLockToldAfterMarkRace(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		skipWithoutNotices(t, b)
		e := newEnv(t, b)
		a := managerOn(t, e, e.b.Client(t), Options{})
		c := managerOn(t, e, e.b.Client(t), Options{})
		ctx := t.Context()
		key := a.lockKey("oven")
		held, err := a.TryLock(ctx, "oven", time.Minute)
		require.NoError(t, err)
		var cLock atomic.Pointer[Lock]
		raced := make(chan struct{})
		var once sync.Once
		rdb := e.b.Client(t)
		rdb.AddHook(&beforeAfter{
			match: func(cmd redis.Cmder) bool {
				args := cmd.Args()
				return cmd.Name() == "copy" && len(args) > 1 && args[1] == key
			},
			before: func() { _ = held.Release(ctx) },
			after: func() {
				once.Do(func() {
					l, err := c.TryLock(ctx, "oven", time.Minute)
					if err == nil {
						cLock.Store(l)
					}
					close(raced)
				})
			},
		})
		bm := managerOn(t, e, rdb, Options{})
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		got := make(chan result[*Lock], 1)
		go func() {
			l, err := bm.Lock(wctx, "oven", time.Minute, LinearRetry(time.Minute))
			got <- result[*Lock]{l, err}
		}()
		testredis.Recv(t, raced, "B to mark the lock")
		l := cLock.Load()
		require.NotNil(t, l, "C did not get the lock A released")
		require.Eventually(t, func() bool { return bm.Stats().ByName["locks"].LockWaits >= 2 }, testredis.Timeout, time.Millisecond,
			"B to find C's lock held")
		require.NoError(t, l.Release(ctx))
		r := recvWithin(t, got, notifiedWithin, "B's lock once C released it")
		require.NoError(t, r.err)
		require.NoError(t, r.v.Release(ctx))
	})
}

// TestNotifyLockWaiterToldAfterRefresh: the holder refreshes its lock past
// the time the waiter's mark was made to last (a copy of the lock, with
// the lease it had then). The waiter, whose retry is a minute, is still
// told of the Release.
func TestNotifyLockWaiterToldAfterRefresh(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		skipWithoutNotices(t, b)
		e := newEnv(t, b)
		a := managerOn(t, e, e.b.Client(t), Options{})
		bm := managerOn(t, e, e.b.Client(t), Options{})
		ctx := t.Context()
		key := a.lockKey("oven")
		held, err := a.TryLock(ctx, "oven", 10*time.Second)
		require.NoError(t, err)
		got := make(chan result[*Lock], 1)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			l, err := bm.Lock(wctx, "oven", time.Minute, LinearRetry(time.Minute))
			got <- result[*Lock]{l, err}
		}()
		awaitMarked(t, a.Client(), key)
		// 9s on: the holder refreshes its lease (as WithLock does every
		// third of it), then 2s more, past the end of the lease it had
		// when the waiter marked it.
		e.advance(9 * time.Second)
		require.NoError(t, held.Refresh(ctx, 10*time.Second))
		e.advance(2 * time.Second)
		left, err := held.TTL(ctx)
		require.NoError(t, err, "the holder's lock")
		require.Greater(t, left, 7*time.Second)
		require.NoError(t, held.Release(ctx))
		r := recvWithin(t, got, notifiedWithin, "B's lock once A released it")
		require.NoError(t, r.err)
		require.NoError(t, r.v.Release(ctx))
	})
}

// TestNotifyLockWaitersTakeTurns: three processes wait, with a retry of a
// minute, for a lock that each holds in turn: each Release tells the
// others, and the lock passes from one to the next at once.
func TestNotifyLockWaitersTakeTurns(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		skipWithoutNotices(t, b)
		e := newEnv(t, b)
		a := managerOn(t, e, e.b.Client(t), Options{})
		ctx := t.Context()
		held, err := a.TryLock(ctx, "oven", time.Minute)
		require.NoError(t, err)
		const waiters = 3
		var inside atomic.Int32
		done := make(chan error, waiters)
		for range waiters {
			m := managerOn(t, e, e.b.Client(t), Options{})
			go func() {
				l, err := m.Lock(ctx, "oven", time.Minute, LinearRetry(time.Minute))
				if err != nil {
					done <- err
					return
				}
				if inside.Add(1) != 1 {
					err = errors.New("two holders at once")
				}
				time.Sleep(20 * time.Millisecond) // holding it, so that the others mark it
				inside.Add(-1)
				done <- errors.Join(err, l.Release(ctx))
			}()
		}
		awaitMarked(t, a.Client(), a.lockKey("oven"))
		require.NoError(t, held.Release(ctx))
		for i := range waiters {
			require.NoError(t, recvWithin(t, done, notifiedWithin, "waiter "+strconv.Itoa(i+1)+" to take its turn"))
		}
	})
}

// beforeAfter is a go-redis hook that runs before and after around the
// commands that match.
type beforeAfter struct {
	match         func(redis.Cmder) bool
	before, after func()
}

func (h *beforeAfter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *beforeAfter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !h.match(cmd) {
			return next(ctx, cmd)
		}
		h.before()
		err := next(ctx, cmd)
		h.after()
		return err
	}
}

func (h *beforeAfter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestNotifyCloseWhileWaiting: B's Manager closes while B waits for A's
// load: B's caller returns at once, Close returns, and B's subscription and
// goroutines end.
func TestNotifyCloseWhileWaiting(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		skipWithoutNotices(t, b)
		e := newEnv(t, b)
		opts := Options{LeaseTTL: notifyLeaseTTL}
		a := managerOn(t, e, e.b.Client(t), opts)
		nodes := masters(t, b)
		ctx := t.Context()
		g := newGate()
		defer g.open()
		goLoad(ctx, a, "k", gated(g, "from A"))
		g.reached(t, "A's load to start")

		bm := managerOn(t, e, e.b.Client(t), opts)
		bGot := goLoad(ctx, bm, "k", func(context.Context) (string, error) { return "from B", nil })
		lease := a.keyLeaseRef("k").lease
		awaitMarked(t, a.Client(), lease)
		ch := bm.notes.channelOf(lease)
		require.Equal(t, int64(1), subscribers(t, b, nodes, ch))
		// A holds the lease and waits for nothing: the goroutines that
		// receive notices, or wait for a lease, are B's.
		n, _ := waitingGoroutines()
		require.Equal(t, 2, n, "B's goroutines receiving notices and waiting for the lease")

		took, stalled := timed(func() { closeWithin(t, bm) })
		within(t, took, stalled, notifiedWithin, "Close while a load waits")
		r := recvWithin(t, bGot, notifiedWithin, "B's caller to return on Close")
		if !errors.Is(r.err, ErrClosed) {
			t.Errorf("B's caller got %q, %v; want an error matching ErrClosed", r.v, r.err)
		}
		require.Eventually(t, func() bool { return subscribers(t, b, nodes, ch) == 0 }, testredis.Timeout, time.Millisecond,
			"B's subscription to end on Close")
		if n, one := waitingGoroutines(); n > 0 {
			t.Errorf("%d of B's goroutines still run after Close returned, such as %s", n, one)
		}
		assert.Zero(t, watches(bm.notes), "B's watch left behind")
	})
}

// goroutinesIn counts the goroutines running any of the functions fns (as
// a stack names them), and returns the stack of one of them.
func goroutinesIn(fns ...string) (n int, one string) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, f := range fns {
			if strings.Contains(g, f) {
				n++
				one = g
				break
			}
		}
	}
	return n, one
}

// waitingGoroutines counts the goroutines that receive lease notices or
// wait for another process's load.
func waitingGoroutines() (n int, one string) {
	return goroutinesIn("cache.(*notifier).receive", "cache.awaitLoads")
}

// watches returns how many leases n watches for its waiters.
func watches(n *notifier) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.watches)
}

// TestNotifyClusterSlotMoveWhileWaiting: the slot of the lease (and of its
// notices' channel) moves to another master while B waits. The server ends
// B's sharded subscription; B subscribes on the new owner and is told of
// A's store there.
func TestNotifyClusterSlotMoveWhileWaiting(t *testing.T) {
	c := testredis.StartCluster(t)
	b := &testredis.Backend{Name: "cluster", Cluster: c}
	e := newEnv(t, b)
	opts := Options{LeaseTTL: notifyLeaseTTL}
	a := managerOn(t, e, c.Client(t), opts)
	bm, count := countedManager(t, e, opts)
	nodes := masters(t, b)
	ctx := t.Context()
	lease := a.keyLeaseRef("k").lease
	ch := bm.notes.channelOf(lease)
	slot := slotOf(hashTag(lease))
	require.Equal(t, slot, slotOf(hashTag(ch)), "the channel is in the lease's slot")

	g := newGate()
	defer g.open()
	goLoad(ctx, a, "k", gated(g, "from A"))
	g.reached(t, "A's load to start")
	var bLoads atomic.Int32
	bGot := goLoad(ctx, bm, "k", counted(&bLoads, "from B"))
	awaitMarked(t, a.Client(), lease)
	from := c.SlotOwner(t, slot)
	to := (from + 1) % len(nodes)
	require.Equal(t, int64(1), subscribers(t, b, nodes[from:from+1], ch))

	c.MoveSlot(t, slot, to)
	require.Eventually(t, func() bool { return subscribers(t, b, nodes[to:to+1], ch) == 1 }, testredis.Timeout, 5*time.Millisecond,
		"B to subscribe on the slot's new owner")
	assert.Zero(t, subscribers(t, b, nodes[from:from+1], ch), "B still subscribes on the old owner")
	require.Eventually(t, func() bool { return a.Client().Exists(ctx, lease+awaitedSuffix).Val() == 1 }, testredis.Timeout, time.Millisecond,
		"the mark on the new owner")
	require.Eventually(t, func() bool {
		n := count.n()
		time.Sleep(50 * time.Millisecond)
		return count.n() == n
	}, testredis.Timeout, time.Millisecond, "B to stop polling once subscribed again")
	select {
	case r := <-bGot:
		t.Fatalf("B returned %q, %v while A still held the lease", r.v, r.err)
	default:
	}
	g.open()
	r := recvWithin(t, bGot, notifiedWithin, "B's value once A stored it on the slot's new owner")
	require.NoError(t, r.err)
	assert.Equal(t, "from A", r.v)
	assert.Zero(t, bLoads.Load())
}

// TestNotifyRingPolls: on a ring, where there are no notices, waiters poll
// the lease: one load, its value served to the waiter, and no mark made.
func TestNotifyRingPolls(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		if b.Cluster != nil {
			t.Skip("a ring is of single nodes")
		}
		addr := masters(t, b)[0].Options().Addr
		ring := func() *redis.Ring {
			if b.Ring != nil {
				return b.Ring.Client(t) // three shards
			}
			r := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"one": addr}})
			t.Cleanup(func() { _ = r.Close() })
			return r
		}
		e := newEnv(t, b)
		opts := Options{LeaseTTL: notifyLeaseTTL}
		a, bm := managerOn(t, e, ring(), opts), managerOn(t, e, ring(), opts)
		require.Nil(t, bm.notes, "a ring has notices")
		ctx := t.Context()
		g := newGate()
		var aLoads, bLoads atomic.Int32
		aGot := goLoad(ctx, a, "k", func(ctx context.Context) (string, error) {
			aLoads.Add(1)
			return gated(g, "from A")(ctx)
		})
		g.reached(t, "A's load to start")
		bGot := goLoad(ctx, bm, "k", counted(&bLoads, "from B"))
		require.Eventually(t, func() bool { return bm.Stats().ByName["keys"].LeaseWaits == 1 }, testredis.Timeout, time.Millisecond,
			"B to wait on A's lease")
		g.open()
		r := recvWithin(t, bGot, notifiedWithin, "B's value, polled")
		require.NoError(t, r.err)
		assert.Equal(t, "from A", r.v)
		assert.Equal(t, "from A", testredis.Recv(t, aGot, "A's value").v)
		assert.Equal(t, int32(1), aLoads.Load()+bLoads.Load(), "loads")
		assert.Empty(t, allKeys(t, a.Client(), "*"+awaitedSuffix), "marks made on a ring")
	})
}
