package testredis

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ringShards is how many shards a Ring has.
const ringShards = 3

// Ring is three real redis-server processes on loopback ports, each a shard
// of the redis.Ring clients that Client makes. A redis.Ring picks a key's
// shard by consistent hashing of the key's hash tag over the shards it
// believes up, and marks a shard down after three failed heartbeats (PING,
// every HeartbeatFrequency, 500ms by default): so killing a shard's server
// moves that shard's keys to the others, and restarting it moves them back.
// Its methods are safe for concurrent use.
type Ring struct {
	shards []*Server       // in the order of Names
	admin  []*redis.Client // a client on each shard, for the harness's own commands

	closeOnce sync.Once
}

// StartRing starts three fresh redis-servers for t, the shards of a Ring, and
// waits until each answers PING. They are killed in t.Cleanup; a test may
// Kill and Restart a shard with [Ring.Shard].
//
// If redis-server is not on PATH, StartRing skips t with a loud message, or
// fails t when STOCKPOT_REQUIRE_REDIS=1.
func StartRing(t testing.TB) *Ring {
	t.Helper()
	bin := lookPath(t, "redis-server", "redis-server", "Redis Ring tests")
	r, err := startRing(bin, t.TempDir(), t.Logf)
	if err != nil {
		t.Fatalf("testredis: starting a ring: %v", err)
	}
	t.Cleanup(r.Close)
	for _, s := range r.shards {
		s.t = t // for Restart
	}
	return r
}

// startRing starts the shards in subdirectories of dir. On error, the
// processes it started are killed.
func startRing(bin, dir string, logf func(string, ...any)) (r *Ring, err error) {
	r = &Ring{}
	defer func() {
		if err != nil {
			r.Close()
			r = nil
		}
	}()
	for i := range ringShards {
		shardDir := filepath.Join(dir, "shard"+strconv.Itoa(i))
		if err := os.Mkdir(shardDir, 0o755); err != nil {
			return nil, err
		}
		s := newServer(bin, shardDir, nil)
		r.shards = append(r.shards, s)
		if err := s.startOnFreePort(logf); err != nil {
			return nil, fmt.Errorf("shard %d: %w", i, err)
		}
		r.admin = append(r.admin, redis.NewClient(&redis.Options{
			Addr:         s.Addr(),
			DialTimeout:  clientTimeout,
			ReadTimeout:  clientTimeout,
			WriteTimeout: clientTimeout,
		}))
	}
	return r, nil
}

// Names returns the shards' names, "shard0" to "shard2", in the order of
// [Ring.Shard]'s numbers.
func (r *Ring) Names() []string {
	names := make([]string, len(r.shards))
	for i := range r.shards {
		names[i] = "shard" + strconv.Itoa(i)
	}
	return names
}

// Addrs returns the shards' addresses by name: RingOptions.Addrs.
func (r *Ring) Addrs() map[string]string {
	addrs := make(map[string]string, len(r.shards))
	for i, name := range r.Names() {
		addrs[name] = r.shards[i].Addr()
	}
	return addrs
}

// Shard returns the i-th shard's server. On a ring from StartRing a test
// may Kill and Restart it; the shared ring's shards must be left running.
func (r *Ring) Shard(i int) *Server {
	return r.shards[i]
}

// Client returns a new ring client on the shards with 5s dial, read and
// write timeouts, closed in t.Cleanup.
func (r *Ring) Client(t testing.TB) *redis.Ring {
	t.Helper()
	return r.ClientWith(t, nil)
}

// ClientWith returns a new ring client on the shards, closed in t.Cleanup.
// It starts from the options Client uses and lets mod, if not nil, change
// them.
func (r *Ring) ClientWith(t testing.TB, mod func(*redis.RingOptions)) *redis.Ring {
	t.Helper()
	opt := &redis.RingOptions{
		Addrs:        r.Addrs(),
		DialTimeout:  clientTimeout,
		ReadTimeout:  clientTimeout,
		WriteTimeout: clientTimeout,
	}
	if mod != nil {
		mod(opt)
	}
	rdb := redis.NewRing(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// ShardOf returns the number of the shard on which a ring client with every
// shard up keeps key (by its hash tag, as redis.Ring does).
func (r *Ring) ShardOf(t testing.TB, key string) int {
	t.Helper()
	c, err := r.Client(t).GetShardClientForKey(key)
	if err != nil {
		t.Fatalf("testredis: the shard of %q: %v", key, err)
	}
	addr := c.Options().Addr
	for i, s := range r.shards {
		if s.Addr() == addr {
			return i
		}
	}
	t.Fatalf("testredis: the ring put %q on %q, which is none of its shards %v", key, addr, r.Addrs())
	return -1
}

// FastForward emulates the passage of d for TTL purposes on every shard, as
// [Server.FastForward] does on one server.
func (r *Ring) FastForward(t testing.TB, d time.Duration) {
	t.Helper()
	if d <= 0 {
		return
	}
	for i, a := range r.admin {
		if err := fastForwardDB(t.Context(), a, 0, d, false); err != nil {
			t.Fatalf("testredis: fast-forward on %s: %v", r.shards[i].Addr(), err)
		}
	}
}

// flushAll deletes every key on every shard.
func (r *Ring) flushAll(ctx context.Context) error {
	for i, a := range r.admin {
		if err := a.FlushAll(ctx).Err(); err != nil {
			return fmt.Errorf("FLUSHALL on %s: %w", r.shards[i].Addr(), err)
		}
	}
	return nil
}

// Close kills the shards and waits for them to exit. It is idempotent.
func (r *Ring) Close() {
	r.closeOnce.Do(func() {
		for _, a := range r.admin {
			_ = a.Close()
		}
		for _, s := range r.shards {
			s.Kill()
		}
	})
}

// sharedRingDirPrefix starts the name of a shared ring's directory, which
// goes on with the ID of the test process and a random suffix.
const sharedRingDirPrefix = "testredis-ring-"

var sharedRingState struct {
	mu  sync.Mutex // protects the fields below
	r   *Ring
	dir string
	err error // why it did not start; later tests fail at once with it
}

// sharedRing returns the test binary's shared ring, started on first use,
// with every key of every shard deleted. It skips or fails t as StartRing
// does.
func sharedRing(t testing.TB) *Ring {
	t.Helper()
	bin := lookPath(t, "redis-server", "redis-server", "Redis Ring tests")
	s := &sharedRingState
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r == nil && s.err == nil {
		removeStaleDirs()
		start := time.Now()
		s.dir, s.err = os.MkdirTemp("", sharedRingDirPrefix+strconv.Itoa(os.Getpid())+"-")
		if s.err == nil {
			s.r, s.err = startRing(bin, s.dir, t.Logf)
		}
		if s.err != nil {
			_ = os.RemoveAll(s.dir)
		} else {
			t.Logf("testredis: started the shared ring %v in %v", s.r.Addrs(), time.Since(start).Round(time.Millisecond))
		}
	}
	if s.err != nil {
		t.Fatalf("testredis: the shared ring did not start: %v", s.err)
	}
	if err := s.r.flushAll(t.Context()); err != nil {
		t.Fatalf("testredis: flushing the shared ring: %v", err)
	}
	return s.r
}

// SharedRing returns the Ring that Run shares between the tests of the test
// binary, started on first use, with every key of every shard deleted: what
// Run's "ring" subtests get. A test must leave its shards running. It skips
// or fails t as StartRing does.
func SharedRing(t testing.TB) *Ring {
	t.Helper()
	return sharedRing(t)
}

// stopSharedRing stops the shared ring, if one was started, and removes its
// directory.
func stopSharedRing() {
	s := &sharedRingState
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r != nil {
		s.r.Close()
		_ = os.RemoveAll(s.dir)
	}
	s.r, s.dir, s.err = nil, "", nil
}
