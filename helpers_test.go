package cache

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
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
	e.t.Cleanup(func() { closeWithin(e.t, m) })
	scriptsLoaded(e.t, m)
	if o.Local != nil {
		require.Eventually(e.t, func() bool { return m.Stats().Local.Subscribed }, testredis.Timeout, time.Millisecond,
			"the local tier's subscription did not come up")
	}
	return m
}

// scriptsLoaded waits until m has loaded its scripts, which New starts in
// the background, so that a test that counts commands counts only its own.
func scriptsLoaded(t testing.TB, m *Manager) {
	t.Helper()
	require.Eventually(t, func() bool { return !m.scriptsLoading.Load() }, testredis.Timeout, time.Millisecond,
		"the Manager did not finish loading its scripts")
}

// closeWithin closes m, failing t when Close does not return within
// testredis.Timeout (it waits for the Manager's background work, loads in
// flight included) or returns an error. Tests close every Manager with it,
// in t.Cleanup or at the point the test closes it.
func closeWithin(t testing.TB, m *Manager) {
	t.Helper()
	testredis.CloseWithin(t, "the Manager", m)
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

// gate holds test loaders until the test opens it. A loader passes it with
// pass, which waits with the loader's context too (see await); the test
// waits for the first loader to arrive with reached, and lets them all go on
// with open. Nothing about the arrival is lost: a loader that arrives before
// the test waits for it is seen all the same.
type gate struct {
	first    chan struct{} // closed when the first loader reaches the gate
	opened   chan struct{} // closed by open
	firstDo  sync.Once
	openOnce sync.Once
}

func newGate() *gate {
	return &gate{first: make(chan struct{}), opened: make(chan struct{})}
}

// pass is called by a loader: it records the loader's arrival, then waits
// until the gate is open (nil) or ctx ends (ctx's error).
func (g *gate) pass(ctx context.Context) error {
	g.firstDo.Do(func() { close(g.first) })
	return await(ctx, g.opened)
}

// reached waits until a loader has reached the gate, failing t after
// testredis.Timeout with what, the loader that did not come.
func (g *gate) reached(t testing.TB, what string) {
	t.Helper()
	testredis.Recv(t, g.first, what)
}

// open lets the loaders waiting at the gate, and those to come, go on. It is
// idempotent.
func (g *gate) open() {
	g.openOnce.Do(func() { close(g.opened) })
}

// goroutinesBack polls, on the calling goroutine, until at most before
// goroutines run, failing t after testredis.Timeout. It polls itself rather
// than with require.Eventually, whose condition runs on a goroutine of its
// own that NumGoroutine would count.
func goroutinesBack(t testing.TB, before int) {
	t.Helper()
	deadline := time.Now().Add(testredis.Timeout)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines still run %v after the test ended its work, want at most %d", runtime.NumGoroutine(), testredis.Timeout, before)
		}
		time.Sleep(time.Millisecond)
	}
}

// ownGoroutines counts the goroutines running the package's own code, not
// its tests' nor the Redis client's, and returns the stack of one of them
// for failure messages.
func ownGoroutines() (n int, one string) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "stockpot-go/cache.") && !strings.Contains(g, "_test.go") {
			n++
			one = g
		}
	}
	return n, one
}

// assertTTL checks a TTL read from Redis: want, less at most the time
// since the write that set it began at (a real server's clock runs between
// the write and the read; miniredis's does not).
func assertTTL(t testing.TB, want, got time.Duration, wrote time.Time, msgAndArgs ...any) {
	t.Helper()
	least := want - time.Since(wrote) - time.Millisecond // PTTL is in whole milliseconds
	if got > want || got < least {
		assert.Fail(t, fmt.Sprintf("TTL %v, want %v less the %v since the write (at least %v)", got, want, time.Since(wrote), least), msgAndArgs...)
	}
}

// allKeys returns the keys matching pattern on rdb's backend, sorted: on a
// cluster, from every master, on a ring from every shard (KEYS on a
// ClusterClient or a Ring asks one node).
func allKeys(t testing.TB, rdb redis.UniversalClient, pattern string) []string {
	t.Helper()
	ctx := t.Context()
	var keys []string
	var forEach func(context.Context, func(context.Context, *redis.Client) error) error
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		forEach = c.ForEachMaster
	case *redis.Ring:
		forEach = c.ForEachShard
	}
	if forEach != nil {
		var mu sync.Mutex // protects keys
		err := forEach(ctx, func(ctx context.Context, n *redis.Client) error {
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
