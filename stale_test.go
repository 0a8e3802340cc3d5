package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// gatedSource is an upstream whose calls can be held until released. A
// held call waits with its context too, so Close ends it.
type gatedSource struct {
	version atomic.Int64
	calls   atomic.Int32
	fail    atomic.Bool
	mu      sync.Mutex    // protects gate
	gate    chan struct{} // closed while calls go through
}

func newGatedSource() *gatedSource {
	s := &gatedSource{gate: make(chan struct{})}
	close(s.gate) // open
	return s
}

// hold makes the calls from now on wait until open.
func (s *gatedSource) hold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate = make(chan struct{})
}

// open lets the held calls, and those to come, go through.
func (s *gatedSource) open() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.gate)
}

func (s *gatedSource) fetch(ctx context.Context, user string) ([]string, error) {
	s.calls.Add(1)
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	if err := await(ctx, gate); err != nil {
		return nil, err
	}
	if s.fail.Load() {
		return nil, errors.New("upstream timed out")
	}
	return []string{fmt.Sprintf("%s-tweet-v%d", user, s.version.Load())}, nil
}

func TestStaleWhileRevalidate(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		ctx := t.Context()
		src := newGatedSource()
		tweets := Memoize(m, "tweets", src.fetch, TTL(15*time.Minute), Jitter(0), StaleFor(24*time.Hour))
		v, err := tweets.Get(ctx, "ana")
		require.NoError(t, err)
		require.Equal(t, []string{"ana-tweet-v0"}, v)

		e.advance(20 * time.Minute) // stale, within StaleFor
		src.version.Store(1)
		src.hold()
		for range 20 {
			v, err := tweets.Get(ctx, "ana") // returns while the loader is held
			require.NoError(t, err)
			assert.Equal(t, []string{"ana-tweet-v0"}, v, "the stale value, at once")
		}
		require.Eventually(t, func() bool { return src.calls.Load() == 2 }, testredis.Timeout, time.Millisecond,
			"the background refresh to call the source")
		src.open()
		require.Eventually(t, func() bool {
			v, err := tweets.Get(ctx, "ana")
			return err == nil && v[0] == "ana-tweet-v1"
		}, testredis.Timeout, time.Millisecond, "readers to get the refreshed value")
		require.Eventually(t, func() bool { return m.Stats().ByName["memo:tweets"].RefreshesSucceeded == 1 }, testredis.Timeout, time.Millisecond,
			"the refresh to be counted as succeeded")
		st := m.Stats().ByName["memo:tweets"]
		assert.Equal(t, int32(2), src.calls.Load(), "one refresh for 20 stale reads")
		assert.GreaterOrEqual(t, st.StaleHits, uint64(20))
		assert.Equal(t, uint64(1), st.RefreshesStarted)
		assert.Equal(t, uint64(1), st.RefreshesSucceeded)

		// Past StaleFor the entry is gone and a read waits for the load.
		e.advance(25 * time.Hour)
		src.version.Store(2)
		v, err = tweets.Get(ctx, "ana")
		require.NoError(t, err)
		assert.Equal(t, []string{"ana-tweet-v2"}, v)
	})
}

func TestRefreshFailureKeepsStale(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		ctx := t.Context()
		src := newGatedSource()
		h := NewHash[[]string](m, "feeds", TTL(time.Minute), Jitter(0), StaleFor(time.Hour))
		_, err := h.GetOrLoad(ctx, "ana", src.fetch)
		require.NoError(t, err)
		e.advance(2 * time.Minute)
		src.fail.Store(true)
		v, err := h.GetOrLoad(ctx, "ana", src.fetch)
		require.NoError(t, err)
		assert.Equal(t, []string{"ana-tweet-v0"}, v)
		require.Eventually(t, func() bool { return m.Stats().ByName["hash:feeds"].RefreshesFailed == 1 }, testredis.Timeout, time.Millisecond,
			"the refresh to fail")
		v, err = h.GetOrLoad(ctx, "ana", src.fetch)
		require.NoError(t, err, "a failed refresh keeps the stale value")
		assert.Equal(t, []string{"ana-tweet-v0"}, v)
	})
}

func TestFetchOnMissFalse(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		src := newGatedSource()
		src.hold()
		load := func(ctx context.Context) ([]string, error) { return src.fetch(ctx, "bo") }
		_, err := GetOrLoad(ctx, m, "feed:bo", load, FetchOnMiss(false))
		assert.ErrorIs(t, err, ErrMiss, "a cold miss returns at once")
		require.Eventually(t, func() bool { return src.calls.Load() == 1 }, testredis.Timeout, time.Millisecond,
			"the background load to call the source")
		src.open()
		require.Eventually(t, func() bool {
			v, err := GetOrLoad(ctx, m, "feed:bo", load, FetchOnMiss(false))
			return err == nil && len(v) == 1
		}, testredis.Timeout, time.Millisecond, "the value to arrive in the background")
		assert.Equal(t, int32(1), src.calls.Load())
	})
}

func TestRefreshQueueDropsWhenFull(t *testing.T) {
	e := newEnv(t, &testredis.Backend{Name: "miniredis", Mini: newMini(t)})
	m := e.manager(&Options{RefreshWorkers: 1, RefreshQueue: 2})
	ctx := t.Context()
	src := newGatedSource()
	tweets := Memoize(m, "tweets", src.fetch, TTL(time.Minute), Jitter(0), StaleFor(time.Hour))
	for i := range 10 {
		_, err := tweets.Get(ctx, fmt.Sprint("user-", i))
		require.NoError(t, err)
	}
	e.advance(2 * time.Minute)
	src.hold()
	start := time.Now()
	for i := range 10 {
		_, err := tweets.Get(ctx, fmt.Sprint("user-", i))
		require.NoError(t, err)
	}
	elapsed := time.Since(start)
	st := m.Stats().ByName["memo:tweets"]
	assert.Equal(t, uint64(10), st.StaleHits, "every reader got the stale value though the queue is full")
	assert.GreaterOrEqual(t, st.RefreshesDropped, uint64(7), "one running, two queued, the rest dropped")
	src.open()
	t.Logf("10 stale reads with a held loader and a full queue took %v", elapsed)
}

func TestEarlyRefresh(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		ctx := t.Context()
		var calls atomic.Int32
		slow := func(ctx context.Context, q string) (int32, error) {
			time.Sleep(20 * time.Millisecond) // the load time XFetch scales by
			return calls.Add(1), nil
		}
		early := Memoize(m, "early", slow, TTL(time.Minute), Jitter(0), EarlyRefresh(1))
		never := Memoize(m, "never", slow, TTL(time.Minute), Jitter(0), EarlyRefresh(0))
		_, err := early.Get(ctx, "q")
		require.NoError(t, err)
		_, err = never.Get(ctx, "q")
		require.NoError(t, err)

		// Far from expiry, nothing fires.
		for range 50 {
			_, err := early.Get(ctx, "q")
			require.NoError(t, err)
		}
		assert.Zero(t, m.Stats().ByName["memo:early"].EarlyRefreshes)

		// A millisecond before expiry, with a 20 ms load, it fires (each read
		// with probability exp(-1/20) ≈ 0.95); with beta 0 it never does.
		e.clock.Add(time.Minute - time.Millisecond)
		for range 20 {
			_, err := early.Get(ctx, "q")
			require.NoError(t, err)
			_, err = never.Get(ctx, "q")
			require.NoError(t, err)
		}
		assert.Positive(t, m.Stats().ByName["memo:early"].EarlyRefreshes)
		assert.Zero(t, m.Stats().ByName["memo:never"].EarlyRefreshes)
		require.Eventually(t, func() bool { return m.Stats().ByName["memo:early"].RefreshesSucceeded >= 1 }, testredis.Timeout, time.Millisecond,
			"the early refresh to succeed")
		assert.Zero(t, m.Stats().ByName["memo:never"].RefreshesStarted)
	})
}

func TestStaleRefreshOncePerFleet(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		src := newGatedSource()
		var memos []*Memo[string, []string]
		for range 4 {
			memos = append(memos, Memoize(e.manager(nil), "tweets", src.fetch, TTL(time.Minute), Jitter(0), StaleFor(time.Hour)))
		}
		ctx := t.Context()
		for _, k := range []string{"ana", "bo", "cy"} {
			_, err := memos[0].Get(ctx, k)
			require.NoError(t, err)
		}
		e.advance(2 * time.Minute)
		src.hold()
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Go(func() {
				_, err := memos[i%4].Get(ctx, []string{"ana", "bo", "cy"}[i%3])
				assert.NoError(t, err)
			})
		}
		testredis.Wait(t, &wg, "40 stale reads to return while the refreshes are held")
		require.Eventually(t, func() bool { return src.calls.Load() >= 6 }, testredis.Timeout, time.Millisecond,
			"a refresh of each key to call the source")
		src.open()
		var started uint64
		require.Eventually(t, func() bool {
			started = 0
			for _, mm := range memos {
				started += mm.m.Stats().ByName["memo:tweets"].RefreshesSucceeded
			}
			return started == 3
		}, testredis.Timeout, time.Millisecond, "3 refreshes to succeed")
		assert.Equal(t, int32(6), src.calls.Load(), "3 loads, then one refresh per key across 4 Managers")
	})
}

func TestCloseEndsRefreshes(t *testing.T) {
	e := newEnv(t, &testredis.Backend{Name: "miniredis", Mini: newMini(t)})
	before, _ := ownGoroutines() // others' goroutines may still be ending
	m := e.manager(&Options{RefreshWorkers: 3})
	ctx := t.Context()
	src := newGatedSource()
	tweets := Memoize(m, "tweets", src.fetch, TTL(time.Minute), StaleFor(time.Hour))
	for _, k := range []string{"a", "b"} {
		_, err := tweets.Get(ctx, k)
		require.NoError(t, err)
	}
	e.advance(2 * time.Minute)
	src.hold() // refreshes block until their context ends
	for _, k := range []string{"a", "b"} {
		_, err := tweets.Get(ctx, k)
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return src.calls.Load() == 4 }, testredis.Timeout, time.Millisecond,
		"the refreshes of both keys to call the source")
	during, _ := ownGoroutines()
	require.Greater(t, during, before)
	closeWithin(t, m) // cancels the held refreshes and waits for them
	assert.Equal(t, uint64(2), m.Stats().ByName["memo:tweets"].RefreshesFailed, "in-flight refreshes saw their context cancelled before Close returned")
	// A goroutine whose work Close waited for may still be on its way out
	// (past its last statement) when Close returns: poll for its end.
	if !assert.Eventually(t, func() bool { n, _ := ownGoroutines(); return n <= before }, testredis.Timeout, time.Millisecond,
		"every goroutine the Manager started to end after Close") {
		_, one := ownGoroutines()
		t.Logf("one of the goroutines left:\n%s", one)
	}
	_, err := tweets.Get(ctx, "a")
	assert.ErrorIs(t, err, ErrClosed)
}

// TestRefreshBacksOffWhenUpstreamFails: stale reads of an entry whose
// upstream fails do not call it at the rate of the reads: a failed refresh
// holds the next one back, for longer after each failure in a row, and a
// success lifts the backoff.
func TestRefreshBacksOffWhenUpstreamFails(t *testing.T) {
	e := newEnv(t, &testredis.Backend{Name: "miniredis", Mini: newMini(t)})
	m := e.manager(nil)
	ctx := t.Context()
	src := newGatedSource()
	feed := Memoize(m, "feed", src.fetch, TTL(time.Minute), Jitter(0), StaleFor(24*time.Hour))
	_, err := feed.Get(ctx, "ana")
	require.NoError(t, err)
	e.advance(2 * time.Minute) // stale
	src.fail.Store(true)
	// failedAndEnded waits until n refreshes have failed and the last has
	// ended, so that the reads after it are held back by the backoff alone,
	// not joined to a refresh still in flight.
	failedAndEnded := func(n uint64, what string) {
		t.Helper()
		require.Eventually(t, func() bool {
			if m.Stats().ByName["memo:feed"].RefreshesFailed < n {
				return false
			}
			m.refresh.mu.Lock()
			defer m.refresh.mu.Unlock()
			return len(m.refresh.pending) == 0
		}, testredis.Timeout, time.Millisecond, what)
	}
	v, err := feed.Get(ctx, "ana") // starts the first refresh
	require.NoError(t, err)
	require.Equal(t, []string{"ana-tweet-v0"}, v, "the stale value")
	failedAndEnded(1, "the first refresh did not fail and end")
	for range 100 {
		v, err := feed.Get(ctx, "ana")
		require.NoError(t, err)
		require.Equal(t, []string{"ana-tweet-v0"}, v, "the stale value")
	}
	assert.Equal(t, int32(2), src.calls.Load(), "one refresh for 100 stale reads of a failing upstream")

	// Past the backoff, one more refresh; its backoff is longer.
	e.clock.Add(refreshBackoffMin)
	_, err = feed.Get(ctx, "ana")
	require.NoError(t, err)
	failedAndEnded(2, "the refresh past the backoff did not fail and end")
	e.clock.Add(refreshBackoffMin)
	for range 10 {
		_, err = feed.Get(ctx, "ana")
		require.NoError(t, err)
	}
	assert.Equal(t, int32(3), src.calls.Load(), "the second backoff is longer than the first")

	// Once the upstream works again, a refresh stores its value and the
	// backoff is gone.
	src.fail.Store(false)
	src.version.Store(1)
	e.clock.Add(refreshBackoffMax)
	require.Eventually(t, func() bool {
		v, err := feed.Get(ctx, "ana")
		return err == nil && v[0] == "ana-tweet-v1"
	}, 5*time.Second, time.Millisecond, "no refresh stored the upstream's value once it worked again")
	require.Eventually(t, func() bool {
		m.refresh.mu.Lock()
		defer m.refresh.mu.Unlock()
		return len(m.refresh.failing) == 0
	}, 5*time.Second, time.Millisecond, "a success forgets the failures")
}
