package cache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// TestWaitReplicasOptions: the settings New refuses, each with a message
// that names it.
func TestWaitReplicasOptions(t *testing.T) {
	_, rdb := testredis.Mini(t)
	for _, c := range []struct {
		name string
		o    Options
		want string
	}{
		{"negative count", Options{WaitReplicas: -1}, "negative WaitReplicas"},
		{"negative timeout", Options{WaitReplicas: 1, WaitReplicasTimeout: -time.Second}, "negative WaitReplicas"},
		{"timeout not below ReadTimeout", Options{WaitReplicas: 1, WaitReplicasTimeout: time.Minute}, "ReadTimeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := New(rdb, &c.o)
			require.ErrorIs(t, err, ErrInvalidOption)
			require.ErrorContains(t, err, c.want)
			require.Nil(t, m)
		})
	}
	short := redis.NewClient(&redis.Options{Addr: rdb.Options().Addr, ReadTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = short.Close() })
	_, err := New(short, &Options{WaitReplicas: 1}) // the default 250ms
	require.ErrorIs(t, err, ErrInvalidOption, "the default timeout against a client's 200ms ReadTimeout")
	m, err := New(short, &Options{WaitReplicas: 1, WaitReplicasTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	closeWithin(t, m)
}

// TestWaitReplicasNone: with no replica to acknowledge (miniredis answers
// WAIT with 0), every write the option covers says so, and loses nothing:
// the master has the write, a failed invalidation is retried, and a lock
// not known to be replicated is not granted (and is released).
func TestWaitReplicasNone(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		rdb := b.Client(t)
		m, err := New(rdb, &Options{Prefix: "w", WaitReplicas: 1, WaitReplicasTimeout: 20 * time.Millisecond})
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, m) })
		ctx := context.Background()
		exists := func(key string) bool {
			n, err := rdb.Exists(ctx, key).Result()
			require.NoError(t, err)
			return n == 1
		}

		err = m.Set(ctx, "k", "v")
		require.ErrorIs(t, err, ErrNotReplicated)
		require.ErrorContains(t, err, "0 of 1 replicas")
		require.True(t, exists(m.keyRef("k").key), "the master has the value")

		h := NewHash[string](m, "h")
		require.ErrorIs(t, h.Set(ctx, "f", "v"), ErrNotReplicated)
		// Keys on every master of a cluster: each is asked, none refuses
		// the marker (MOVED).
		many := map[string]int{}
		for i := range 32 {
			many[fmt.Sprint("m", i)] = i
		}
		require.ErrorIs(t, SetMany(ctx, m, many), ErrNotReplicated)

		_, err = Refresh(ctx, m, "r", func(context.Context) (int, error) { return 7, nil })
		require.ErrorIs(t, err, ErrNotReplicated, "a Refresh stores a value")

		err = m.Invalidate(ctx, Key("k"), Key("m1"), Key("m2"), Key("m3"), h.Field("f"), Tag("t"))
		require.ErrorIs(t, err, ErrNotReplicated)
		require.False(t, exists(m.keyRef("k").key), "the master deleted the entry")
		require.False(t, exists(m.keyRef("m1").key), "the master deleted the entry")
		require.Equal(t, 6, m.Stats().Invalidations.Pending, "the invalidation is retried")
		_, err = Get[string](ctx, m, "k")
		require.ErrorIs(t, err, ErrMiss)

		l, err := m.TryLock(ctx, "job", time.Minute)
		require.ErrorIs(t, err, ErrNotReplicated)
		require.Nil(t, l)
		require.Eventually(t, func() bool { return !exists(m.lockKey("job")) }, testredis.Timeout, time.Millisecond,
			"a lock not known to be replicated is released")
	})
}

// TestWaitReplicasFailover: a master with one replica. With WaitReplicas,
// a write that returns is on the replica at once, and with the replica
// stalled it returns ErrNotReplicated instead of an acknowledgement that a
// failover would undo. Without it (the control), an invalidation
// acknowledged while the replica stalls is lost when the replica is
// promoted, and the value it removed is served again.
func TestWaitReplicasFailover(t *testing.T) {
	master := testredis.Start(t)
	replica := master.StartReplica(t)
	ctx := context.Background()
	onReplica := replica.Client(t)
	newManager := func(o Options) *Manager {
		o.Prefix = "w"
		m, err := New(master.Client(t), &o)
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, m) })
		return m
	}
	// A timeout a replica on a busy machine meets when it is healthy.
	m := newManager(Options{WaitReplicas: 1, WaitReplicasTimeout: time.Second})
	control := newManager(Options{})
	exists := func(key string) bool {
		n, err := onReplica.Exists(ctx, key).Result()
		require.NoError(t, err)
		return n == 1
	}

	// Healthy: returned means replicated, no waiting.
	require.NoError(t, m.Set(ctx, "k1", "v1"))
	require.True(t, exists(m.keyRef("k1").key), "Set returned: the replica has the value")
	require.NoError(t, m.Invalidate(ctx, Key("k1")))
	require.False(t, exists(m.keyRef("k1").key), "Invalidate returned: the replica has the deletion")
	l, err := m.TryLock(ctx, "job", time.Minute)
	require.NoError(t, err)
	require.True(t, exists(m.lockKey("job")), "TryLock returned: the replica has the lock")
	require.NoError(t, l.Release(ctx))

	require.NoError(t, m.Set(ctx, "k2", "v2"))
	require.NoError(t, control.Set(ctx, "k3", "v3"))
	require.NoError(t, m.Set(ctx, "k3", "v3")) // replicated k3 too
	// The replica stalls, and its link drops (what the master had sent is
	// in its socket's buffer, and it would apply it on waking).
	replica.Freeze(t)
	require.NoError(t, master.Client(t).ClientKillByFilter(ctx, "type", "replica").Err())

	// Stalled replica: the option turns the acknowledgement into an error.
	began := time.Now()
	err = m.Invalidate(ctx, Key("k2"))
	took := time.Since(began)
	require.ErrorIs(t, err, ErrNotReplicated)
	require.Less(t, took, 5*time.Second, "returned within its timeout and budget")
	t.Logf("Invalidate with the replica stalled: %v after %v", err, took)
	_, err = m.TryLock(ctx, "job2", time.Minute)
	require.ErrorIs(t, err, ErrNotReplicated)

	// The control's invalidation is acknowledged, but the replica lacks it.
	require.NoError(t, control.Invalidate(ctx, Key("k3")))

	// The master is lost, the stalled replica promoted.
	master.Kill()
	replica.Thaw(t)
	require.NoError(t, onReplica.ReplicaOf(ctx, "no", "one").Err())
	promoted, err := New(onReplica, &Options{Prefix: "w"})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, promoted) })
	v, err := Get[string](ctx, promoted, "k3")
	require.NoError(t, err, "the control's acknowledged invalidation was lost: the old value is back")
	require.Equal(t, "v3", v)
	_, err = Get[string](ctx, promoted, "k1")
	require.ErrorIs(t, err, ErrMiss, "an invalidation the replica acknowledged survives")
	if errors.Is(err, ErrMiss) {
		t.Logf("after the failover: k1 (invalidated with WaitReplicas) is a miss; k3 (the control's invalidation) reads %q again", v)
	}
}

// BenchmarkWaitReplicas measures what WaitReplicas costs a write: Set and
// an Invalidate of one key, and TryLock with Release, on a master with one
// replica on the same machine, with the option (1 replica) and without,
// alternated op by op; it reports the median time of each and their ratio.
func BenchmarkWaitReplicas(b *testing.B) {
	master := testredis.Start(b)
	master.StartReplica(b)
	ctx := context.Background()
	newManager := func(n int) *Manager {
		m, err := New(master.Client(b), &Options{Prefix: "bench", Timeout: 5 * time.Second, WaitReplicas: n})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { closeWithin(b, m) })
		return m
	}
	plain, waiting := newManager(0), newManager(1)
	for _, c := range []struct {
		name string
		op   func(m *Manager) error
	}{
		{"Set", func(m *Manager) error { return m.Set(ctx, "k", "v") }},
		{"Invalidate", func(m *Manager) error { return m.Invalidate(ctx, Key("k")) }},
		{"TryLock+Release", func(m *Manager) error {
			l, err := m.TryLock(ctx, "job", time.Minute)
			if err != nil {
				return err
			}
			return l.Release(ctx)
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var without, with []time.Duration
			run := func(m *Manager, into *[]time.Duration) {
				start := time.Now()
				if err := c.op(m); err != nil {
					b.Fatal(err)
				}
				*into = append(*into, time.Since(start))
			}
			for i := 0; b.Loop(); i++ {
				if i%2 == 0 {
					run(plain, &without)
					run(waiting, &with)
				} else {
					run(waiting, &with)
					run(plain, &without)
				}
			}
			slices.Sort(without)
			slices.Sort(with)
			w, o := without[len(without)/2], with[len(with)/2]
			b.ReportMetric(float64(w.Nanoseconds()), "plain-ns")
			b.ReportMetric(float64(o.Nanoseconds()), "waiting-ns")
			b.ReportMetric(float64(o)/float64(w), "ratio")
		})
	}
}
