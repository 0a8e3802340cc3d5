package cache

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// testClock is a clock tests move by hand.
type testClock struct {
	mu sync.Mutex // protects t
	t  time.Time
}

func newClock() *testClock {
	return &testClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a test's backend with one clock shared by its Managers.
type env struct {
	t     testing.TB
	b     *testredis.Backend
	clock *testClock
}

func newEnv(t testing.TB, b *testredis.Backend) *env {
	return &env{t: t, b: b, clock: newClock()}
}

// manager returns a new Manager on its own connection pool, closed in cleanup.
func (e *env) manager(opts *Options) *Manager {
	e.t.Helper()
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Now == nil {
		o.Now = e.clock.Now
	}
	if o.Prefix == "" {
		o.Prefix = "test"
	}
	m, err := New(e.b.Client(e.t), &o)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { _ = m.Close() })
	if o.Local != nil {
		require.Eventually(e.t, func() bool { return m.Stats().Local.Subscribed }, 10*time.Second, time.Millisecond,
			"the local tier's subscription did not come up")
	}
	return m
}

// advance moves both Redis's TTLs and the Managers' clock by d.
func (e *env) advance(d time.Duration) {
	e.t.Helper()
	e.b.FastForward(e.t, d)
	e.clock.Add(d)
}

// newMini returns a miniredis for tests that need only one backend.
func newMini(t testing.TB) *miniredis.Miniredis {
	mr, _ := testredis.Mini(t)
	return mr
}

// await waits for ch to close or ctx to end. Test loaders wait with it, so
// that a test that fails before opening their gate ends (Close cancels the
// loads) instead of hanging.
func await(ctx context.Context, ch <-chan struct{}) error {
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lastOwn is the stack of the last goroutine ownGoroutines counted, for
// failure messages.
var lastOwn string

// ownGoroutines counts the goroutines running the package's own code, not
// its tests' nor the Redis client's.
func ownGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "stockpot-go/cache.") && !strings.Contains(g, "_test.go") {
			n++
			lastOwn = g
		}
	}
	return n
}

// allKeys returns the keys matching pattern on rdb's backend, sorted: on a
// cluster, from every master (KEYS on a ClusterClient asks one master).
func allKeys(t testing.TB, rdb redis.UniversalClient, pattern string) []string {
	t.Helper()
	ctx := t.Context()
	var keys []string
	if c, ok := rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex // protects keys
		err := c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			found, err := n.Keys(ctx, pattern).Result()
			mu.Lock()
			defer mu.Unlock()
			keys = append(keys, found...)
			return err
		})
		require.NoError(t, err)
	} else {
		var err error
		keys, err = rdb.Keys(ctx, pattern).Result()
		require.NoError(t, err)
	}
	slices.Sort(keys)
	return keys
}

// assertPanicsWith asserts that f panics with an error matching target.
func assertPanicsWith(t testing.TB, target error, f func(), what string) {
	t.Helper()
	var got any
	func() {
		defer func() { got = recover() }()
		f()
	}()
	err, ok := got.(error)
	if !ok {
		t.Errorf("%s: panicked with %v, want an error matching %v", what, got, target)
		return
	}
	if !errors.Is(err, target) {
		t.Errorf("%s: panicked with %v, want an error matching %v", what, err, target)
	}
}
