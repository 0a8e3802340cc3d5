package cache

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// strictOpts are a strict Manager's options with lease.
func strictOpts(lease time.Duration) *Options {
	return &Options{Local: &LocalOptions{TTL: time.Minute, Strict: true, Lease: lease}}
}

// localOpts are the local tier's options with ttl, in strict mode with
// lease or in the default mode.
func localOpts(ttl time.Duration, strict bool, lease time.Duration) *LocalOptions {
	if !strict {
		return &LocalOptions{TTL: ttl}
	}
	return &LocalOptions{TTL: ttl, Strict: true, Lease: lease}
}

// waitLeased waits until every Manager holds its read lease.
func waitLeased(t *testing.T, ms ...*Manager) {
	t.Helper()
	for _, m := range ms {
		require.Eventually(t, func() bool { return m.Stats().Local.Leased }, testredis.Timeout, time.Millisecond,
			"the strict local tier's lease did not come")
	}
}

// registryComplete waits until m's drops no longer wait for the leases
// to end: the fleet's registry is complete (see strict_drop.lua).
func registryComplete(t *testing.T, m *Manager) {
	t.Helper()
	require.Eventually(t, func() bool {
		before := m.Stats().Local.WaitedOut
		require.NoError(t, m.Invalidate(t.Context(), Key("registry-complete")))
		return m.Stats().Local.WaitedOut == before
	}, testredis.Timeout, 10*time.Millisecond, "a drop that does not wait for the leases to end")
}

// keptLocally reports whether m serves key (read by GetOrLoad) from its
// local tier, and what.
func keptLocally(m *Manager, key string) (int64, bool) {
	r := localRef{slot: localSlot{name: key, space: spaceKeys}}
	return localGet[struct{}, int64](m, m.kv, &r, nil)
}

// TestStrictLocalNoStaleCopyAfterReturn: in strict mode, once a write or
// an invalidation on one Manager returns, the other's copy is gone, at
// that instant, for every kind of target, on every backend.
func TestStrictLocalNoStaleCopyAfterReturn(t *testing.T) {
	testredis.Run(t, func(t *testing.T, be *testredis.Backend) {
		e := newEnv(t, be)
		a, b := e.manager(strictOpts(time.Second)), e.manager(strictOpts(time.Second))
		waitLeased(t, a, b)
		registryComplete(t, a)
		ctx := t.Context()
		var version atomic.Int64
		load := func(context.Context) (int64, error) { return version.Load(), nil }
		ma := Memoize(a, "board", func(context.Context, int) (int64, error) { return 0, nil })
		h := NewHash[int64](a, "h")
		writes := []struct {
			name string
			do   func() error
		}{
			{"Key", func() error { return a.Invalidate(ctx, Key("k")) }},
			{"Tag", func() error { return a.Invalidate(ctx, Tag("t")) }},
			{"Memo.All", func() error { return a.Invalidate(ctx, ma.All(), Key("k")) }}, // drops every copy
			{"Hash.Field", func() error { return a.Invalidate(ctx, h.Field("f"), Key("k")) }},
			{"Set", func() error { return a.Set(ctx, "k", version.Load()) }},
			{"Delete", func() error { return a.Delete(ctx, "k") }},
			{"Refresh", func() error { _, err := Refresh(ctx, a, "k", load); return err }},
		}
		var took []time.Duration
		for round := range 5 {
			for _, w := range writes {
				_, err := GetOrLoad(ctx, b, "k", load, Tags("t"))
				require.NoError(t, err)
				old := version.Load()
				v, err := GetOrLoad(ctx, b, "k", load)
				require.NoError(t, err)
				require.Equal(t, old, v)
				_, ok := keptLocally(b, "k")
				require.True(t, ok, "b keeps k")
				version.Add(1)
				start := time.Now()
				require.NoError(t, w.do())
				took = append(took, time.Since(start))
				if v, ok := keptLocally(b, "k"); ok {
					t.Fatalf("round %d, %s: b still serves its copy v%d once the write returned", round, w.name, v)
				}
			}
		}
		assert.Zero(t, a.Stats().Local.WaitedOut, "a waited for a lease's end")
		t.Logf("writes that drop the other Manager's copy took %v", summarize(took))
	})
}

// summarize gives the median and the largest of ds.
func summarize(ds []time.Duration) string {
	s := append([]time.Duration(nil), ds...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return "median " + s[len(s)/2].Round(time.Microsecond).String() + ", max " + s[len(s)-1].Round(time.Microsecond).String()
}

// TestStrictLocalHungSubscription: a Manager whose subscription hangs (its
// messages unread, as when its process is paused) keeps serving its stale
// copy in the other mode; in strict mode the invalidation waits for its
// lease to end, at most a lease, and the copy is never served after.
func TestStrictLocalHungSubscription(t *testing.T) {
	testredis.Run(t, func(t *testing.T, be *testredis.Backend) {
		ctx := t.Context()
		for _, strict := range []bool{false, true} {
			e := newEnv(t, be)
			lease := 300 * time.Millisecond
			opts := &Options{Prefix: "hung" + strconv.FormatBool(strict), Local: localOpts(time.Minute, strict, lease)}
			a, b := e.manager(opts), e.manager(opts)
			if strict {
				waitLeased(t, a, b)
				registryComplete(t, a)
			}
			load := func(context.Context) (int64, error) { return 1, nil }
			_, err := GetOrLoad(ctx, b, "k", load)
			require.NoError(t, err)
			release := HoldLocalReceive(b)
			start := time.Now()
			require.NoError(t, a.Invalidate(ctx, Key("k")))
			took := time.Since(start)
			_, stale := keptLocally(b, "k")
			if !strict {
				// The positive control: the other mode serves the copy.
				assert.True(t, stale, "without strict mode, b serves its copy while its subscription hangs")
				release()
				continue
			}
			assert.False(t, stale, "b served its copy once the invalidation returned")
			assert.Less(t, took, lease+200*time.Millisecond, "the invalidation waited past the lease")
			assert.Equal(t, uint64(1), a.Stats().Local.WaitedOut)
			assert.False(t, b.Stats().Local.Leased)
			t.Logf("with a Manager hung, the invalidation took %v (lease %v)", took.Round(time.Millisecond), lease)
			release()
			// b catches up: it applies the drop before its lease comes back.
			waitLeased(t, b)
			_, stale = keptLocally(b, "k")
			assert.False(t, stale)
		}
	})
}

// TestStrictLocalSubscriptionKilled: a Manager's subscription killed
// (CLIENT KILL) just before an invalidation: in the other mode it serves
// its stale copy until it notices, in strict mode never.
func TestStrictLocalSubscriptionKilled(t *testing.T) {
	srv := testredis.Start(t)
	ctx := t.Context()
	raw := srv.Client(t)
	const rounds = 20
	for _, strict := range []bool{false, true} {
		name := "sub-" + strconv.FormatBool(strict)
		opts := &Options{Prefix: name, Local: localOpts(time.Minute, strict, 300*time.Millisecond)}
		a, err := New(srv.Client(t), opts)
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, a) })
		b, err := New(srv.ClientWith(t, func(o *redis.Options) { o.ClientName = name }), opts)
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, b) })
		stale := 0
		for round := range rounds {
			key := "k" + strconv.Itoa(round)
			var ids []string
			require.Eventually(t, func() bool {
				ids = pubSubIDs(t, raw, name)
				return len(ids) > 0 && b.Stats().Local.Subscribed && (!strict || b.Stats().Local.Leased)
			}, testredis.Timeout, time.Millisecond, "b's subscription (and lease) to come back")
			_, err := GetOrLoad(ctx, b, key, func(context.Context) (int64, error) { return 1, nil })
			require.NoError(t, err)
			if _, ok := keptLocally(b, key); !ok {
				continue // the subscription dropped meanwhile
			}
			for _, id := range ids {
				require.NoError(t, raw.ClientKillByFilter(ctx, "ID", id).Err())
			}
			require.NoError(t, a.Invalidate(ctx, Key(key)))
			if _, ok := keptLocally(b, key); ok {
				stale++
			}
		}
		t.Logf("strict %v: b served an invalidated copy in %d of %d rounds", strict, stale, rounds)
		if strict {
			assert.Zero(t, stale)
		} else {
			assert.Positive(t, stale, "the positive control: without strict mode the copy is served until b notices")
		}
	}
}

// pubSubIDs returns the IDs of the pub/sub connections of the clients
// named name.
func pubSubIDs(t *testing.T, raw *redis.Client, name string) []string {
	t.Helper()
	list, err := raw.ClientList(t.Context()).Result()
	require.NoError(t, err)
	var ids []string
	for line := range strings.Lines(list) {
		f := map[string]string{}
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			f[k] = v
		}
		if f["name"] == name && f["sub"] != "0" && f["sub"] != "" {
			ids = append(ids, f["id"])
		}
	}
	return ids
}

// TestStrictLocalRegistryLost: when Redis loses the registry, writers
// cannot know who holds a lease: they wait one out, once, then are fast
// again.
func TestStrictLocalRegistryLost(t *testing.T) {
	srv := testredis.Start(t)
	e := newEnv(t, &testredis.Backend{Name: "redis", Server: srv})
	lease := 200 * time.Millisecond
	a, b := e.manager(strictOpts(lease)), e.manager(strictOpts(lease))
	waitLeased(t, a, b)
	ctx := t.Context()
	registryComplete(t, a)

	require.NoError(t, srv.Client(t).Del(ctx, a.localRegistry()).Err())
	start := time.Now()
	require.NoError(t, a.Invalidate(ctx, Key("x")))
	took := time.Since(start)
	assert.GreaterOrEqual(t, took, lease/2, "an invalidation with the registry lost waits for the leases")
	assert.Positive(t, a.Stats().Local.WaitedOut)
	registryComplete(t, a)
}

// TestStrictLocalCloseUnregisters: a closed Manager leaves the registry,
// so that writers do not wait for it.
func TestStrictLocalCloseUnregisters(t *testing.T) {
	srv := testredis.Start(t)
	e := newEnv(t, &testredis.Backend{Name: "redis", Server: srv})
	a, b := e.manager(strictOpts(time.Second)), e.manager(strictOpts(time.Second))
	waitLeased(t, a, b)
	ids, err := srv.Client(t).ZRange(t.Context(), a.localRegistry(), 0, -1).Result()
	require.NoError(t, err)
	assert.Contains(t, ids, b.local.id)
	closeWithin(t, b)
	ids, err = srv.Client(t).ZRange(t.Context(), a.localRegistry(), 0, -1).Result()
	require.NoError(t, err)
	assert.NotContains(t, ids, b.local.id)
}

// TestStrictLocalNoLeaseWithoutRedis: a Manager that cannot reach Redis
// stops serving its local copies within a lease.
func TestStrictLocalNoLeaseWithoutRedis(t *testing.T) {
	srv := testredis.Start(t)
	e := newEnv(t, &testredis.Backend{Name: "redis", Server: srv})
	a := e.manager(strictOpts(100 * time.Millisecond))
	waitLeased(t, a)
	_, err := GetOrLoad(t.Context(), a, "k", func(context.Context) (int64, error) { return 1, nil })
	require.NoError(t, err)
	_, ok := keptLocally(a, "k")
	require.True(t, ok)
	srv.Freeze(t) // the subscription stays up, silent
	defer srv.Thaw(t)
	require.Eventually(t, func() bool { _, ok := keptLocally(a, "k"); return !ok }, testredis.Timeout, time.Millisecond,
		"a to stop serving once its lease ran out")
}

// TestStrictLocalLeaseCheckedByLookup: the lease is checked by the clock
// read of the tier's cache (strictClock), on every lookup: a hit after the
// deadline is a miss, and a renewal serves the copy again.
func TestStrictLocalLeaseCheckedByLookup(t *testing.T) {
	e := newEnv(t, &testredis.Backend{Name: "miniredis", Mini: miniredis.RunT(t)})
	m := e.manager(&Options{Local: &LocalOptions{TTL: time.Minute, Strict: true, Lease: time.Hour}})
	waitLeased(t, m)
	_, err := GetOrLoad(t.Context(), m, "k", func(context.Context) (int64, error) { return 1, nil })
	require.NoError(t, err)
	_, ok := keptLocally(m, "k")
	require.True(t, ok)
	s := m.local.strict
	s.deadline.Store(int64(time.Since(s.base))) // the lease ends now
	_, ok = keptLocally(m, "k")
	assert.False(t, ok, "a copy served after the lease's deadline")
	assert.False(t, m.Stats().Local.Leased)
	s.deadline.Store(int64(time.Since(s.base) + time.Hour)) // renewed
	_, ok = keptLocally(m, "k")
	assert.True(t, ok, "the copy once the lease is renewed")
}

// lineLog keeps the lines a Manager logs.
type lineLog struct {
	mu    sync.Mutex // protects lines
	lines []string
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestStrictLocalMixedFleet: a strict Manager applies the drops of a
// Manager in the default mode, which waits for no acknowledgement, and
// says once, in its log, that the strict guarantee does not cover them.
func TestStrictLocalMixedFleet(t *testing.T) {
	e := newEnv(t, &testredis.Backend{Name: "miniredis", Mini: miniredis.RunT(t)})
	logs := &lineLog{}
	o := strictOpts(time.Second)
	o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b := e.manager(o)
	a := e.manager(&Options{Local: &LocalOptions{TTL: time.Minute}})
	waitLeased(t, b)
	for range 2 {
		_, err := GetOrLoad(t.Context(), b, "k", func(context.Context) (int64, error) { return 1, nil })
		require.NoError(t, err)
		require.NoError(t, a.Invalidate(t.Context(), Key("k")))
		require.Eventually(t, func() bool { _, ok := keptLocally(b, "k"); return !ok }, testredis.Timeout, time.Millisecond,
			"b to apply the drop of a Manager in the default mode")
	}
	logs.mu.Lock()
	defer logs.mu.Unlock()
	require.Len(t, logs.lines, 1)
	assert.Contains(t, logs.lines[0], "not in strict mode")
}

// TestStrictLocalDropPublishedAgain: a write whose drop cannot be
// published (its script fails) returns an error, and the drop is published
// again, in the background, once Redis runs the script.
func TestStrictLocalDropPublishedAgain(t *testing.T) {
	mr, _ := testredis.Mini(t)
	rdb := (&testredis.Backend{Name: "miniredis", Mini: mr}).Client(t)
	faults := &failScripts{}
	rdb.AddHook(faults)
	a, err := New(rdb, &Options{Prefix: "test", Local: &LocalOptions{Strict: true}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, a) })
	waitLeased(t, a)
	faults.on.Store(true)
	err = a.Set(t.Context(), "k", 1)
	require.ErrorIs(t, err, ErrUnavailable)
	sent := a.Stats().Local.Sent
	faults.on.Store(false)
	require.Eventually(t, func() bool { return a.Stats().Local.Sent > sent }, testredis.Timeout, time.Millisecond,
		"the drop to be published again")
	v, err := Get[int](t.Context(), a, "k")
	require.NoError(t, err)
	assert.Equal(t, 1, v, "the write itself was made")
}

func TestStrictLocalBadOptions(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	for _, lo := range []LocalOptions{{Strict: true, Lease: 10 * time.Millisecond}, {Strict: true, Lease: -time.Second}, {Lease: time.Second}} {
		_, err := New(rdb, &Options{Local: &lo})
		assert.ErrorIs(t, err, ErrInvalidOption, "%+v", lo)
	}
}

// TestStrictLocalMessages: heartbeats, acknowledgements and drops that do
// not parse are ignored, never a panic, never a lease or an
// acknowledgement.
func TestStrictLocalMessages(t *testing.T) {
	s := newStrictTier(LocalOptions{Lease: time.Second}, "reg", "own")
	s.beats[7] = time.Duration(0)
	s.beats[5] = -2 * time.Second // sent so long ago that its lease has ended
	s.onOwn("h5")
	assert.Zero(t, s.deadline.Load(), "a heartbeat whose lease has ended renewed it")
	w := &dropWait{acked: map[string]bool{}, signal: make(chan struct{}, 1)}
	s.waits[3] = w
	for _, bad := range []string{"", "h", "hx", "h-7", "h7x", "h 7", "a", "a3", "a3\n", "ax\nid", "a-3\nid", "z7", "\n", "h18446744073709551616"} {
		s.onOwn(bad)
	}
	assert.Zero(t, s.deadline.Load(), "a malformed heartbeat renewed the lease")
	assert.Empty(t, w.acked)
	s.onOwn("h7")
	assert.Positive(t, s.deadline.Load())
	assert.True(t, s.live())
	s.onOwn("a3\nother")
	s.onOwn("a4\nother") // no such drop
	assert.Equal(t, map[string]bool{"other": true}, w.acked)
	assert.True(t, s.allAcked(w, "me", []string{"me", "other"}))
	assert.False(t, s.allAcked(w, "me", []string{"third"}))

	for _, c := range []struct {
		in  string
		id  string
		seq uint64
	}{{"ABC", "ABC", 0}, {"ABC/12", "ABC", 12}, {"ABC/x", "ABC", 0}, {"/5", "", 5}, {"ABC/", "ABC", 0}} {
		id, seq := splitSender(c.in)
		assert.Equal(t, c.id, id, c.in)
		assert.Equal(t, c.seq, seq, c.in)
	}
	// A strict drop is a drop to a Manager in the other mode.
	id, all, keys, ok := decodeDrop(encodeDrop("ABC/12", false, []string{"k"}))
	require.True(t, ok)
	assert.Equal(t, "ABC/12", id)
	assert.False(t, all)
	assert.Equal(t, []string{"k"}, keys)

	for _, bad := range []any{nil, "x", []any{}, []any{"1"}, []any{int64(0), int64(1)}} {
		_, _, ok := strictDropReply(bad)
		assert.False(t, ok, "%v", bad)
	}
	d, ids, ok := strictDropReply([]any{int64(250), "A", "B"})
	require.True(t, ok)
	assert.Equal(t, 250*time.Millisecond, d)
	assert.Equal(t, []string{"A", "B"}, ids)
}
