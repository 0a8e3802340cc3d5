package testredis

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	// replicatedNodeTimeout is the cluster-node-timeout of a replicated
	// cluster: a master that stops answering is marked failed after about
	// that long, and its replica takes over a second or two later.
	replicatedNodeTimeout = time.Second
	// failoverTimeout bounds how long the failover methods wait for a
	// replica to take over and every live node to agree, and Restart for
	// the node to be a replica in sync.
	failoverTimeout = 30 * time.Second
)

// StartReplicatedCluster starts a fresh Redis Cluster of three masters with
// one replica each (redis-cli --cluster create --cluster-replicas 1) and a
// cluster-node-timeout of 1s, so that a master killed is replaced by its
// replica within a few seconds. It waits until every node agrees on the
// slots and every replica is in sync, and is stopped in t.Cleanup. Addrs
// lists all six nodes; which of them are masters changes with
// KillMaster and Failover. It skips or fails t as StartCluster does.
func StartReplicatedCluster(t testing.TB) *Cluster {
	t.Helper()
	server, cli := clusterBinaries(t)
	c, err := startCluster(server, cli, t.TempDir(), clusterSpec{replicas: 1, nodeTimeout: replicatedNodeTimeout}, t.Logf)
	if err != nil {
		t.Fatalf("testredis: starting a replicated cluster: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Failover is a failover of a replicated cluster's master: planned, or after
// the master was killed.
type Failover struct {
	Old, New int       // indexes in Addrs of the master that was, and of its replica that took its slots
	Start    time.Time // when the master was killed, or the replica told to take over
	Done     time.Time // when every live node first agreed that New owned the slots
}

// KillMaster kills the master of slot with SIGKILL, then waits until its
// replica has taken over its slots and every live node agrees on that. The
// node stays down until Restart. Call it from the test's goroutine.
func (c *Cluster) KillMaster(t testing.TB, slot int) Failover {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), failoverTimeout)
	defer cancel()
	old, replica, err := c.shard(ctx, slot)
	if err != nil {
		t.Fatalf("testredis: killing the master of slot %d: %v", slot, err)
	}
	c.mu.Lock()
	c.down[old] = true
	c.mu.Unlock()
	c.nodes[old].Kill()
	f := Failover{Old: old, New: replica, Start: time.Now()}
	if err := c.waitOwner(ctx, slot, replica); err != nil {
		t.Fatalf("testredis: %s, the master of slot %d, was killed %v ago and its replica %s has not taken over: %v",
			c.nodes[old].Addr(), slot, time.Since(f.Start).Round(time.Millisecond), c.nodes[replica].Addr(), err)
	}
	f.Done = time.Now()
	return f
}

// Restart starts node i, killed by KillMaster, again on its port, with its
// cluster configuration but without its data, and waits until it has
// rejoined as a replica of the master that took its slots, is in sync with
// it, and no live node sees it as failed. Call it from the test's
// goroutine.
func (c *Cluster) Restart(t testing.TB, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), failoverTimeout)
	defer cancel()
	if err := c.nodes[i].start(); err != nil {
		t.Fatalf("testredis: restarting %s: %v", c.nodes[i].Addr(), err)
	}
	c.mu.Lock()
	c.down[i] = false
	c.mu.Unlock()
	if err := c.waitInSync(ctx, i); err != nil {
		t.Fatalf("testredis: %s restarted but is not a replica in sync: %v", c.nodes[i].Addr(), err)
	}
}

// Failover makes the replica of slot's master take over in a planned
// failover (CLUSTER FAILOVER on the replica: the master stops its clients,
// the replica catches up with it, then takes over), and waits until every
// live node agrees and the old master is a replica in sync. Call it from
// the test's goroutine.
func (c *Cluster) Failover(t testing.TB, slot int) Failover {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), failoverTimeout)
	defer cancel()
	old, replica, err := c.shard(ctx, slot)
	if err != nil {
		t.Fatalf("testredis: failing over the master of slot %d: %v", slot, err)
	}
	f := Failover{Old: old, New: replica, Start: time.Now()}
	if err := c.admin[replica].Do(ctx, "cluster", "failover").Err(); err != nil {
		t.Fatalf("testredis: CLUSTER FAILOVER on %s: %v", c.nodes[replica].Addr(), err)
	}
	if err := c.waitOwner(ctx, slot, replica); err != nil {
		t.Fatalf("testredis: CLUSTER FAILOVER sent to %s %v ago, and it has not taken slot %d over from %s: %v",
			c.nodes[replica].Addr(), time.Since(f.Start).Round(time.Millisecond), slot, c.nodes[old].Addr(), err)
	}
	f.Done = time.Now()
	if err := c.waitInSync(ctx, old); err != nil {
		t.Fatalf("testredis: after a planned failover, the old master %s is not a replica in sync: %v", c.nodes[old].Addr(), err)
	}
	return f
}

// shard returns the master of slot and a live replica of it.
func (c *Cluster) shard(ctx context.Context, slot int) (master, replica int, err error) {
	if master, err = c.slotOwner(ctx, slot); err != nil {
		return 0, 0, err
	}
	lines, err := c.admin[master].ClusterNodes(ctx).Result()
	if err != nil {
		return 0, 0, fmt.Errorf("CLUSTER NODES on %s: %w", c.nodes[master].Addr(), err)
	}
	live := c.live()
	for line := range strings.Lines(lines) {
		f := strings.Fields(line)
		if len(f) < 4 || f[3] != c.ids[master] {
			continue
		}
		if i := slices.Index(c.ids, f[0]); i >= 0 && slices.Contains(live, i) && !flagged(f[2], "fail") {
			return master, i, nil
		}
	}
	return 0, 0, fmt.Errorf("%s, the master of slot %d, has no live replica", c.nodes[master].Addr(), slot)
}

// flagged reports whether the flags of a CLUSTER NODES line hold flag.
func flagged(flags, flag string) bool {
	return slices.Contains(strings.Split(flags, ","), flag)
}

// waitOwner polls, backing off from 5ms to 100ms, until every live node
// agrees that node owns slot and the cluster is consistent, or ctx ends.
func (c *Cluster) waitOwner(ctx context.Context, slot, node int) error {
	return poll(ctx, func() error {
		if err := c.consistent(ctx); err != nil {
			return err
		}
		owner, err := c.slotOwner(ctx, slot)
		if err == nil && owner != node {
			err = fmt.Errorf("slot %d is still owned by %s", slot, c.nodes[owner].Addr())
		}
		return err
	})
}

// waitInSync polls until node i is a replica whose link to its master is
// up and not syncing, no live node sees it as failed, and the cluster is
// consistent, or ctx ends.
func (c *Cluster) waitInSync(ctx context.Context, i int) error {
	return poll(ctx, func() error {
		if err := c.replicaInSync(ctx, i); err != nil {
			return err
		}
		for _, j := range c.live() {
			lines, err := c.admin[j].ClusterNodes(ctx).Result()
			if err != nil {
				return fmt.Errorf("CLUSTER NODES on %s: %w", c.nodes[j].Addr(), err)
			}
			for line := range strings.Lines(lines) {
				if f := strings.Fields(line); len(f) > 2 && f[0] == c.ids[i] && (flagged(f[2], "fail") || flagged(f[2], "fail?")) {
					return fmt.Errorf("%s sees %s as %s", c.nodes[j].Addr(), c.nodes[i].Addr(), f[2])
				}
			}
		}
		return c.consistent(ctx)
	})
}

// replicaInSync reports, as an error, why node i is not a replica in sync
// with its master (INFO replication).
func (c *Cluster) replicaInSync(ctx context.Context, i int) error {
	info, err := c.admin[i].Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("INFO replication on %s: %w", c.nodes[i].Addr(), err)
	}
	fields := make(map[string]string)
	for line := range strings.Lines(info) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			fields[k] = v
		}
	}
	for k, v := range map[string]string{"role": "slave", "master_link_status": "up", "master_sync_in_progress": "0"} {
		if fields[k] != v {
			return fmt.Errorf("%s says %s:%s, want %s", c.nodes[i].Addr(), k, fields[k], v)
		}
	}
	return nil
}

// waitReplicasInSync waits until every replica of the cluster is in sync
// with its master.
func (c *Cluster) waitReplicasInSync(ctx context.Context) error {
	masters, err := c.masters(ctx)
	if err != nil {
		return err
	}
	for _, i := range c.live() {
		if slices.Contains(masters, i) {
			continue
		}
		if err := poll(ctx, func() error { return c.replicaInSync(ctx, i) }); err != nil {
			return err
		}
	}
	return nil
}

// poll calls check, backing off from 5ms to 100ms, until it returns nil or
// ctx ends; then it returns check's last error.
func poll(ctx context.Context, check func() error) error {
	delay := 5 * time.Millisecond
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
}
