// Package cachetest gives tests of code that uses stockpot a Manager on a
// fresh in-process Redis (miniredis), with time under the test's control.
//
//	func TestLeaderboard(t *testing.T) {
//		env := cachetest.New(t, nil)
//		board := cache.Memoize(env.Manager, "leaderboard", compute, cache.TTL(10*time.Minute))
//		// ... first Get computes, second Get is a hit ...
//		env.Advance(11 * time.Minute)
//		// ... the entry has expired: the next Get computes again ...
//	}
//
// Two clocks decide when a cached value is old: Redis expires keys by its
// own clock, and the Manager decides an entry's freshness (and when a stale
// value is served, see cache.StaleFor) by Options.Now. Env.Advance moves
// both together, without sleeping, so a test sees exactly what a service
// would see after that much time.
//
// Everything New and Env.NewManager make is closed by t.Cleanup when the
// test ends: each Manager before its client, and the miniredis last.
package cachetest

import (
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache"
)

// start is the time an Env's Clock shows when New returns.
var start = time.Date(2026, time.January, 1, 9, 0, 0, 0, time.UTC)

// Env is a test's cache: a Manager on an in-process miniredis of its own,
// with the clock they share. Make one with New.
type Env struct {
	// Manager is the cache under test, on Client.
	Manager *cache.Manager
	// Redis is the in-process server, for inspecting keys (Redis.Keys,
	// Redis.TTL) or injecting faults (Redis.SetError).
	Redis *miniredis.Miniredis
	// Client is Manager's go-redis client, for the raw commands of the code
	// under test.
	Client *redis.Client
	// Clock is the time the Managers of the Env see, and Redis's TIME.
	Clock *Clock
}

// Timeout is the Options.Timeout of an Env's Managers whose options set
// none: the production default (150 ms) is a latency bound, which a busy
// test machine can exceed with no fault in the code under test. Set
// Options.Timeout to test how your code meets the budget.
const Timeout = 5 * time.Second

// New returns an Env: a Manager on a fresh in-process miniredis, closed
// with t.Cleanup when the test ends. opts may be nil for the Manager's
// defaults (but Timeout, see the constant); New copies it and replaces its
// Now with the Env's Clock. If the
// miniredis does not start or opts is invalid, New fails the test with
// t.Fatalf.
func New(t testing.TB, opts *cache.Options) *Env {
	t.Helper()
	mr := miniredis.RunT(t)
	e := &Env{Redis: mr, Clock: &Clock{now: start}}
	mr.SetTime(start)
	e.Client, e.Manager = e.open(t, opts)
	return e
}

// NewManager returns another Manager on the Env's miniredis, over a client
// (and so a connection pool) of its own, as another instance of a fleet
// would have. It shares the Env's Clock; opts is as for New. The Manager
// and its client are closed with t.Cleanup.
func (e *Env) NewManager(t testing.TB, opts *cache.Options) *cache.Manager {
	t.Helper()
	_, m := e.open(t, opts)
	return m
}

// open returns a client on the miniredis and a Manager over it, both closed
// when t ends.
func (e *Env) open(t testing.TB, opts *cache.Options) (*redis.Client, *cache.Manager) {
	t.Helper()
	var o cache.Options
	if opts != nil {
		o = *opts
	}
	o.Now = e.Clock.Now
	if o.Timeout == 0 {
		o.Timeout = Timeout
	}
	rdb := redis.NewClient(&redis.Options{Addr: e.Redis.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	m, err := cache.New(rdb, &o)
	if err != nil {
		t.Fatalf("cachetest: cache.New: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return rdb, m
}

// Advance moves time forward by d for Redis and for the Env's Managers at
// once: the miniredis's TTLs run down by d (FastForward, which removes the
// keys whose TTL ends), its TIME moves by d, and the Clock moves by d. A key
// stored with a one-minute TTL is gone after Advance(time.Minute): jitter
// (Options.Jitter) only ever shortens a TTL.
//
// Advance does not touch the wall clock, which the library still uses for
// how long it waits: retries, lease renewals and the refresh of a held lock.
// Advancing past a lock's lease therefore expires the lock in Redis, as a
// holder that stalled past its lease would see it.
func (e *Env) Advance(d time.Duration) {
	e.Clock.Add(d)
	e.Redis.SetTime(e.Clock.Now())
	e.Redis.FastForward(d)
}

// Clock is a clock that moves only when told to. An Env's Clock starts at
// 2026-01-01 09:00 UTC, so that runs are repeatable: a test stores the same
// timestamps, and draws the same lock fences, every time. It is safe for
// concurrent use.
type Clock struct {
	mu  sync.Mutex // protects now
	now time.Time
}

// Now returns the clock's time. Its method value is what an Env's Managers
// have as Options.Now.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Add moves the clock by d. It moves only the clock: Env.Advance also moves
// Redis.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
