package cache

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Slot migrations.
//
// While Redis Cluster migrates a hash slot from one master to another, a
// command on that slot may be refused without running: TRYAGAIN for a
// multi-key command whose keys are not all on one side yet (every
// cache command that takes an entry with its lease or generation, whenever
// one of them does not exist), and MOVED or ASK redirects that go-redis
// follows only MaxRedirects times. go-redis retries TRYAGAIN a few times
// over some tens of milliseconds, and in a pipeline only when it answers a
// node's first command; a migration takes as long as its slot's keys take
// to copy. So the Manager sends such commands again itself, after a growing
// pause, for up to slotRetryFor.

// slotRetryFor bounds how long a command refused because its slot is
// migrating is sent again before its error is returned.
const slotRetryFor = 5 * time.Second

// slotMoving reports whether err is Redis Cluster's refusal of a command
// whose slot is being migrated: the command did not run, and will once the
// migration moves on.
func slotMoving(err error) bool {
	if err == nil {
		return false
	}
	if redis.IsTryAgainError(err) {
		return true
	}
	if _, ok := redis.IsMovedError(err); ok {
		return true
	}
	_, ok := redis.IsAskError(err)
	return ok
}

// slotBackoff waits before the next attempt of a command refused because its
// slot is migrating, and reports whether to make one: false when ctx has
// ended or slotRetryFor has passed since start. *pause grows from 8ms to
// 256ms.
func slotBackoff(ctx context.Context, start time.Time, pause *time.Duration) bool {
	if *pause == 0 {
		*pause = 8 * time.Millisecond
	}
	if time.Since(start)+*pause > slotRetryFor {
		return false
	}
	if sleep(ctx, *pause) != nil {
		return false
	}
	*pause = min(2**pause, 256*time.Millisecond)
	return true
}

// node is one master of the Redis the Manager uses, for the work that is
// planned per master: scans of the keyspace, INFO, loading the scripts.
type node struct {
	m    *Manager
	c    redis.UniversalClient
	addr string // the master's address on a cluster, the shard's on a ring, for its breaker; else ""
}

// do sends cmd to the node, through the Manager's Redis-call path.
func (n node) do(ctx context.Context, st *counters, cmd redis.Cmder) error {
	return n.m.doOn(ctx, n.c, n.addr, st, cmd)
}

// pipe sends the commands fn queues to the node as one pipeline, through
// the Manager's Redis-call path.
func (n node) pipe(ctx context.Context, st *counters, fn func(redis.Pipeliner)) ([]redis.Cmder, error) {
	return n.m.pipeOn(ctx, n.c, n.addr, st, fn)
}

// scan calls fn with every key of the node that matches pattern (SCAN,
// never KEYS).
func (n node) scan(ctx context.Context, st *counters, pattern string, fn func(key string)) error {
	var cursor uint64
	for {
		cmd := redis.NewScanCmd(ctx, nil, "scan", cursor, "match", pattern, "count", 1000)
		if err := n.do(ctx, st, cmd); err != nil {
			return err
		}
		keys, next := cmd.Val()
		for _, k := range keys {
			fn(k)
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// forEachMaster calls fn, concurrently, for every node that holds keys: each
// master of a cluster, each shard of a ring, else the client itself.
//
// On a cluster, go-redis first reloads the cluster's slots, with a command
// that the client bounds by its own timeouts only: forEachMaster stops
// waiting for it at the deadline of a call made on ctx, and returns an
// error matching ErrUnavailable. The calls fn makes have deadlines of their
// own.
func (m *Manager) forEachMaster(ctx context.Context, fn func(context.Context, node) error) error {
	switch c := m.rdb.(type) {
	case *redis.ClusterClient:
		return m.forEachClusterMaster(ctx, c, fn)
	case *redis.Ring:
		return c.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error {
			return fn(ctx, node{m: m, c: n, addr: n.Options().Addr})
		})
	}
	return fn(ctx, node{m: m, c: m.rdb})
}

func (m *Manager) forEachClusterMaster(ctx context.Context, c *redis.ClusterClient, fn func(context.Context, node) error) error {
	if err := ctx.Err(); err != nil {
		return callerGone(ctx)
	}
	// The work is abandoned when this returns early (the budget ran out, the
	// caller left) or the Manager closes: its calls then end at once.
	outer := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(m.life, cancel)()
	started := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	m.running.Add(1)
	go func() {
		defer m.running.Add(-1)
		done <- c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			once.Do(func() { close(started) })
			return fn(ctx, node{m: m, c: n, addr: n.Options().Addr})
		})
	}()
	var expired <-chan time.Time
	if end := m.budgetEnd(ctx, time.Now()); !end.IsZero() {
		t := time.NewTimer(time.Until(end))
		defer t.Stop()
		expired = t.C
	}
	select {
	case err := <-done:
		return err
	case <-started:
		return <-done
	case <-expired:
		return errBudget
	case <-outer.Done():
		return callerGone(outer)
	case <-m.life.Done():
		return ErrClosed
	}
}

// scriptGroups splits the entries idx of es into the groups one script call
// may take together (see slotGroups).
func (m *Manager) scriptGroups(es []entry, idx []int) [][]int {
	groups := m.slotGroups(len(idx), func(j int) string { return es[idx[j]].ref.key })
	for _, g := range groups {
		for k, j := range g {
			g[k] = idx[j]
		}
	}
	return groups
}

// keyGroups splits keys into the groups one command may take together
// (see slotGroups).
func (m *Manager) keyGroups(keys []string) [][]string {
	if m.oneNode && len(keys) > 0 {
		return [][]string{keys}
	}
	groups := m.slotGroups(len(keys), func(i int) string { return keys[i] })
	out := make([][]string, len(groups))
	for g, idx := range groups {
		out[g] = make([]string, len(idx))
		for k, i := range idx {
			out[g][k] = keys[i]
		}
	}
	return out
}

// slotGroups splits the indexes of n keys (key(i) the i-th) into the groups
// one command or script call may take together: all of them on a single
// node (where a command may take any keys), those of one hash slot on a
// cluster, those of one hash tag on a ring (whose shards are chosen by
// tag). Groups keep the keys' order.
func (m *Manager) slotGroups(n int, key func(i int) string) [][]int {
	if n == 0 {
		return nil
	}
	if m.oneNode || n == 1 {
		all := make([]int, n)
		for i := range all {
			all[i] = i
		}
		return [][]int{all}
	}
	_, cluster := m.rdb.(*redis.ClusterClient)
	at := make(map[string]int)
	var groups [][]int
	for i := range n {
		g := hashTag(key(i))
		if cluster {
			g = strconv.Itoa(slotOf(g))
		}
		j, ok := at[g]
		if !ok {
			j = len(groups)
			at[g] = j
			groups = append(groups, nil)
		}
		groups[j] = append(groups[j], i)
	}
	return groups
}

// hashTag returns the part of key that Redis Cluster hashes: between the
// first '{' and the next '}' when that is not empty, else the whole key.
func hashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// slotOf returns the cluster hash slot of a hash tag: CRC16 (XMODEM) mod
// 16384.
func slotOf(tag string) int {
	var crc uint16
	for i := 0; i < len(tag); i++ {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^tag[i]]
	}
	return int(crc) & 16383
}

var crc16Table = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()
