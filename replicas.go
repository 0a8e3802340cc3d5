package cache

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Writes that survive a failover (Options.WaitReplicas).
//
// Redis replicates asynchronously: a master acknowledges a write before
// its replicas have it, and a replica promoted after the master is lost
// lacks what it had not received. For a cache that loses an invalidation,
// and so serves the entry it removed, or a lock grant, so that two callers
// hold one lock. WAIT blocks a connection until the replicas have
// acknowledged every write made on that connection, which go-redis's pool
// does not let a caller choose; but a replica applies the replication
// stream in order, so a write made after another has returned is
// acknowledged after it. So once a write has returned, replicated sends to
// each master it wrote to one pipeline (one connection) of a small write
// of its own, the marker, and WAIT: when WAIT counts enough replicas, they
// have the marker, and with it everything the master applied before.
//
// The marker is P{SLOT}:w, in a slot of the keys written (SLOT: a short
// tag of that slot, see slotTags), so that a cluster's node takes it; it
// expires after a second.

// markerTTL is how long a marker key stays.
const markerTTL = time.Second

// checkWaitTimeout reports an Options.WaitReplicasTimeout that the
// client's ReadTimeout would cut short: WAIT blocks for up to that long
// before it replies.
func checkWaitTimeout(rdb redis.UniversalClient, o Options) error {
	if o.WaitReplicas <= 0 {
		return nil
	}
	var read time.Duration
	switch c := rdb.(type) {
	case *redis.Client:
		read = c.Options().ReadTimeout
	case *redis.ClusterClient:
		read = c.Options().ReadTimeout
	case *redis.Ring:
		read = c.Options().ReadTimeout
	}
	if read > 0 && o.WaitReplicasTimeout >= read {
		return fmt.Errorf("%w: WaitReplicasTimeout %v is not shorter than the client's ReadTimeout %v",
			ErrInvalidOption, o.WaitReplicasTimeout, read)
	}
	return nil
}

// replicaTarget is a master to ask WAIT of, and a marker key it takes.
type replicaTarget struct {
	c      redis.UniversalClient
	addr   string // the master's address on a cluster, for its breaker; else ""
	marker string
}

// replicated returns once Options.WaitReplicas replicas of every master
// that holds one of keys have acknowledged the writes made there before it
// was called, or with an error: one matching ErrNotReplicated when fewer
// did within Options.WaitReplicasTimeout. It returns nil at once when the
// option is off or keys is empty.
func (m *Manager) replicated(ctx context.Context, st *counters, keys ...string) error {
	want := m.opts.WaitReplicas
	if want <= 0 || len(keys) == 0 {
		return nil
	}
	targets, err := m.replicaTargets(ctx, keys)
	if err != nil {
		return err
	}
	if len(targets) == 0 { // a Ring with no shard up: nobody to ask
		return fmt.Errorf("%w: no master to ask", ErrNotReplicated)
	}
	wait := m.opts.WaitReplicasTimeout
	// The WAIT may take its whole timeout: that is not Redis being slow.
	if m.opts.Timeout > 0 {
		ctx = &budget{Context: ctx, end: time.Now().Add(m.opts.Timeout + wait)}
	}
	if len(targets) == 1 {
		return m.waitReplicas(ctx, st, targets[0], want, wait)
	}
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.waitReplicas(ctx, st, t, want, wait)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// waitReplicas writes t's marker and waits for want replicas of t.
func (m *Manager) waitReplicas(ctx context.Context, st *counters, t replicaTarget, want int, wait time.Duration) error {
	var acked *redis.IntCmd
	_, err := m.pipeOn(ctx, t.c, t.addr, st, func(p redis.Pipeliner) {
		p.Set(ctx, t.marker, "1", markerTTL)
		acked = redis.NewIntCmd(ctx, "wait", want, wait.Milliseconds())
		_ = p.Process(ctx, acked)
	})
	if err != nil {
		return err
	}
	if got := int(acked.Val()); got < want {
		where := ""
		if t.addr != "" {
			where = " of " + t.addr
		}
		return fmt.Errorf("%w: %d of %d replicas%s within %v", ErrNotReplicated, got, want, where, wait)
	}
	return nil
}

// replicaTargets returns the masters that hold keys: the client itself on
// a single node, each master of a key on a cluster, each shard on a ring.
func (m *Manager) replicaTargets(ctx context.Context, keys []string) ([]replicaTarget, error) {
	switch c := m.rdb.(type) {
	case *redis.ClusterClient:
		var out []replicaTarget
		seen := make(map[string]bool)
		for _, k := range keys {
			n, err := c.MasterForKey(ctx, k)
			if err != nil {
				return nil, unavailable(err)
			}
			addr := n.Options().Addr
			if seen[addr] {
				continue
			}
			seen[addr] = true
			out = append(out, replicaTarget{c: n, addr: addr, marker: m.markerOf(k)})
		}
		return out, nil
	case *redis.Ring:
		var mu sync.Mutex
		var out []replicaTarget
		err := c.ForEachShard(ctx, func(_ context.Context, n *redis.Client) error {
			mu.Lock()
			out = append(out, replicaTarget{c: n, marker: m.markerOf(keys[0])})
			mu.Unlock()
			return nil
		})
		return out, unavailable(err)
	}
	return []replicaTarget{{c: m.rdb, marker: m.markerOf(keys[0])}}, nil
}

// markerOf returns the marker key in key's slot.
func (m *Manager) markerOf(key string) string {
	return m.prefix + "{" + slotTags()[slotOf(hashTag(key))] + "}:w"
}
