package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
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

// warmMini returns an env on a fresh miniredis, for tests whose jobs do not
// need both backends.
func warmMini(t *testing.T) *env {
	return newEnv(t, &testredis.Backend{Name: "miniredis", Mini: miniredis.RunT(t)})
}

func TestWarmAllReportsEveryJob(t *testing.T) {
	m := warmMini(t).manager(nil)
	errBoom := errors.New("outlet database is down")
	require.NoError(t, m.Warm("summary", func(ctx context.Context) (int, error) {
		time.Sleep(2 * time.Millisecond) // a measurable duration
		return 1, nil
	}))
	require.NoError(t, m.Warm("empty", func(ctx context.Context) (int, error) { return 0, nil }))
	require.NoError(t, m.Warm("failing", func(ctx context.Context) (int, error) { return 2, errBoom }))
	require.NoError(t, m.Warm("panicking", func(ctx context.Context) (int, error) { panic("kaboom") }))
	require.NoError(t, m.Warm("trending", func(ctx context.Context) (int, error) { return 5, nil }))
	// Registering a name again replaces its job.
	require.NoError(t, m.Warm("trending", func(ctx context.Context) (int, error) { return 7, nil }))

	_, ok := m.LastWarm()
	assert.False(t, ok, "no warm yet")

	report, err := m.WarmAll(t.Context())
	require.Error(t, err)
	assert.ErrorIs(t, err, errBoom)
	var pe *PanicError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "kaboom", pe.Value)
	assert.NotEmpty(t, pe.Stack)
	assert.Contains(t, err.Error(), `"failing"`)
	assert.Contains(t, err.Error(), `"panicking"`)
	assert.NotContains(t, err.Error(), "summary")

	require.Len(t, report.Jobs, 5)
	names := make([]string, len(report.Jobs))
	for i, j := range report.Jobs {
		names[i] = j.Name
	}
	assert.Equal(t, []string{"empty", "failing", "panicking", "summary", "trending"}, names, "sorted by name")

	byName := make(map[string]WarmJob)
	for _, j := range report.Jobs {
		byName[j.Name] = j
	}
	assert.NoError(t, byName["summary"].Err)
	assert.Equal(t, 1, byName["summary"].Entries)
	assert.GreaterOrEqual(t, byName["summary"].Duration, 2*time.Millisecond)
	assert.NoError(t, byName["empty"].Err)
	assert.Equal(t, 0, byName["empty"].Entries)
	assert.ErrorIs(t, byName["failing"].Err, errBoom)
	assert.Equal(t, 2, byName["failing"].Entries, "a failing job's count is kept")
	require.ErrorAs(t, byName["panicking"].Err, &pe)
	assert.Equal(t, 0, byName["panicking"].Entries)
	assert.NoError(t, byName["trending"].Err)
	assert.Equal(t, 7, byName["trending"].Entries, "the replacing job ran")
	assert.GreaterOrEqual(t, report.Duration, byName["summary"].Duration)
	assert.Equal(t, m.now(), report.Started)
	assert.Equal(t, err.Error(), report.Err().Error())

	lines := strings.Split(report.String(), "\n")
	require.Len(t, lines, 5)
	assert.True(t, strings.HasPrefix(lines[0], "empty: 0 entries in "), lines[0])
	assert.Contains(t, lines[1], "failing: 2 entries in ")
	assert.Contains(t, lines[1], ", failed: outlet database is down")
	assert.Contains(t, lines[2], "failed: cache: panic: kaboom")
	assert.True(t, strings.HasPrefix(lines[3], "summary: 1 entry in "), lines[3])
	assert.NotContains(t, lines[3], "failed")

	last, ok := m.LastWarm()
	require.True(t, ok)
	assert.Equal(t, report, last)
	last.Jobs[0].Name = "changed"
	again, _ := m.LastWarm()
	assert.Equal(t, "empty", again.Jobs[0].Name, "LastWarm returns a copy")
}

func TestWarmAllNoJobs(t *testing.T) {
	m := warmMini(t).manager(nil)
	report, err := m.WarmAll(t.Context())
	require.NoError(t, err)
	assert.Empty(t, report.Jobs)
	assert.Empty(t, report.String())
}

func TestWarmAllBoundedConcurrency(t *testing.T) {
	m := warmMini(t).manager(nil)
	ctx, cancel := context.WithTimeout(t.Context(), testredis.Timeout)
	defer cancel()
	// Each job waits until WarmConcurrency jobs run at once: fewer would
	// never get there, more would show in peak.
	var running, peak atomic.Int32
	full := make(chan struct{})
	var fullOnce sync.Once
	for i := range 3 * WarmConcurrency {
		require.NoError(t, m.Warm(fmt.Sprint("job-", i), func(ctx context.Context) (int, error) {
			n := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			if n == WarmConcurrency {
				fullOnce.Do(func() { close(full) })
			}
			select {
			case <-full:
			case <-ctx.Done():
				return 0, ctx.Err()
			}
			time.Sleep(time.Millisecond)
			return 1, nil
		}))
	}
	report, err := m.WarmAll(ctx)
	require.NoError(t, err)
	assert.Len(t, report.Jobs, 3*WarmConcurrency)
	assert.Equal(t, int32(WarmConcurrency), peak.Load())
}

func TestWarmReadersNeverMiss(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		var loads, version atomic.Int32
		g := newGate() // holds the warm's loads while the readers read
		leaderboard := Memoize(m, "leaderboard", func(ctx context.Context, region string) (string, error) {
			loads.Add(1)
			v := version.Load()
			if v > 0 {
				if err := g.pass(ctx); err != nil {
					return "", err
				}
			}
			return fmt.Sprintf("%s-v%d", region, v), nil
		})
		regions := []string{"Mumbai", "Pune", "Delhi", "Bengaluru", "Chennai", "Kolkata"}
		for _, r := range regions {
			v, err := leaderboard.Get(ctx, r)
			require.NoError(t, err)
			require.Equal(t, r+"-v0", v)
		}
		require.Equal(t, int32(len(regions)), loads.Load())
		missesBefore := m.Stats().ByName["memo:leaderboard"].Misses

		version.Store(1)
		require.NoError(t, leaderboard.WarmWith(func(ctx context.Context) ([]string, error) { return regions, nil }))

		stop := make(chan struct{})
		var stopOnce sync.Once
		var wg sync.WaitGroup
		stopReaders := func() {
			stopOnce.Do(func() { close(stop) })
			testredis.Wait(t, &wg, "the readers to stop")
		}
		t.Cleanup(stopReaders) // when the test ends early
		var reads, bad atomic.Int64
		for reader := range 8 {
			wg.Go(func() {
				for i := reader; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					r := regions[i%len(regions)]
					v, err := leaderboard.Get(ctx, r)
					if err != nil || (v != r+"-v0" && v != r+"-v1") {
						bad.Add(1)
						assert.NoError(t, err)
						assert.Contains(t, []string{r + "-v0", r + "-v1"}, v)
						return
					}
					reads.Add(1)
				}
			})
		}
		type result struct {
			report WarmReport
			err    error
		}
		warmed := make(chan result, 1)
		go func() {
			report, err := m.WarmAll(ctx)
			warmed <- result{report, err}
		}()
		g.reached(t, "the warm's first load")
		during := reads.Load()
		require.Eventually(t, func() bool { return reads.Load() >= during+100 }, testredis.Timeout, time.Millisecond,
			"100 reads while the warm's load is held")
		g.open()
		res := testredis.Recv(t, warmed, "WarmAll to return")
		stopReaders()
		report, err := res.report, res.err
		require.NoError(t, err)
		require.Len(t, report.Jobs, 1)
		assert.Equal(t, "memo:leaderboard", report.Jobs[0].Name)
		assert.Equal(t, len(regions), report.Jobs[0].Entries)

		assert.Zero(t, bad.Load(), "every read during the warm got a value")
		assert.Positive(t, reads.Load())
		assert.Equal(t, int32(2*len(regions)), loads.Load(), "only the warm loaded: readers never called the loader")
		assert.Equal(t, missesBefore, m.Stats().ByName["memo:leaderboard"].Misses, "no reader missed")
		for _, r := range regions {
			v, err := leaderboard.Get(ctx, r)
			require.NoError(t, err)
			assert.Equal(t, r+"-v1", v, "the warm stored the new value")
		}
	})
}

func TestWarmWithStoresEntries(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()

		metrics := NewHash[outletMetrics](m, "outlet_metrics", TTL(time.Hour))
		require.NoError(t, metrics.Set(ctx, "Mumbai-01", outletMetrics{Orders: 1, Revenue: 10}))
		require.NoError(t, metrics.Set(ctx, "Closed-09", outletMetrics{Orders: 3, Revenue: 30}))
		fresh := map[string]outletMetrics{
			"Mumbai-01": {Orders: 120, Revenue: 5400},
			"Pune-03":   {Orders: 80, Revenue: 3100.5},
		}
		require.NoError(t, metrics.WarmWith(func(ctx context.Context) (map[string]outletMetrics, error) { return fresh, nil }))

		var loads atomic.Int32
		leaderboard := Memoize(m, "leaderboard", func(ctx context.Context, q leaderboardQuery) ([]row, error) {
			loads.Add(1)
			return []row{{Outlet: q.Region + "-01", Revenue: float64(q.Limit)}}, nil
		}, TTL(10*time.Minute))
		queries := []leaderboardQuery{{"Mumbai", 20}, {"Pune", 20}, {"Delhi", 5}}
		require.NoError(t, leaderboard.WarmWith(func(ctx context.Context) ([]leaderboardQuery, error) { return queries, nil }))

		report, err := m.WarmAll(ctx)
		require.NoError(t, err)
		require.Len(t, report.Jobs, 2)
		assert.Equal(t, "hash:outlet_metrics", report.Jobs[0].Name)
		assert.Equal(t, 2, report.Jobs[0].Entries)
		assert.Equal(t, "memo:leaderboard", report.Jobs[1].Name)
		assert.Equal(t, 3, report.Jobs[1].Entries)

		all, err := metrics.All(ctx)
		require.NoError(t, err)
		assert.Equal(t, map[string]outletMetrics{
			"Mumbai-01": {Orders: 120, Revenue: 5400},
			"Pune-03":   {Orders: 80, Revenue: 3100.5},
			"Closed-09": {Orders: 3, Revenue: 30},
		}, all, "fields are overwritten in place; others are kept")

		require.Equal(t, int32(3), loads.Load())
		for _, q := range queries {
			rows, err := leaderboard.Get(ctx, q)
			require.NoError(t, err)
			assert.Equal(t, []row{{Outlet: q.Region + "-01", Revenue: float64(q.Limit)}}, rows)
		}
		assert.Equal(t, int32(3), loads.Load(), "the warmed entries are hits")
	})
}

func TestWarmWithErrors(t *testing.T) {
	m := warmMini(t).manager(nil)
	ctx := t.Context()
	errDB := errors.New("db down")
	leaderboard := Memoize(m, "leaderboard", func(ctx context.Context, region string) (int, error) {
		switch region {
		case "Nowhere":
			return 0, ErrNotFound
		case "Broken":
			return 0, errDB
		}
		return len(region), nil
	})
	require.NoError(t, leaderboard.WarmWith(func(ctx context.Context) ([]string, error) {
		return []string{"Mumbai", "Nowhere", "Broken", "Pune"}, nil
	}))
	metrics := NewHash[int](m, "metrics")
	require.NoError(t, metrics.WarmWith(func(ctx context.Context) (map[string]int, error) { return nil, errDB }))

	report, err := m.WarmAll(ctx)
	require.ErrorIs(t, err, errDB)
	require.Len(t, report.Jobs, 2)
	assert.ErrorIs(t, report.Jobs[0].Err, errDB)
	assert.Equal(t, 0, report.Jobs[0].Entries)
	memo := report.Jobs[1]
	assert.ErrorIs(t, memo.Err, errDB)
	assert.Contains(t, memo.Err.Error(), "argument Broken")
	assert.NotContains(t, memo.Err.Error(), "Nowhere", "ErrNotFound is not a failure")
	assert.Equal(t, 2, memo.Entries, "the arguments after a failing one are warmed")
	v, err := leaderboard.Get(ctx, "Pune")
	require.NoError(t, err)
	assert.Equal(t, 4, v)
}

// claimRecorder records the period keys its client tried to claim.
type claimRecorder struct {
	mu     sync.Mutex // protects claims
	claims map[string]bool
}

func (c *claimRecorder) claimed(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.claims[key]
}

func (c *claimRecorder) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *claimRecorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (c *claimRecorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if args := cmd.Args(); cmd.Name() == "set" && len(args) > 1 {
			if k, ok := args[1].(string); ok && strings.Contains(k, "{warm}:period:") {
				c.mu.Lock()
				c.claims[k] = true
				c.mu.Unlock()
			}
		}
		return err
	}
}

func TestWarmEveryOneWarmerPerPeriod(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		const interval = 50 * time.Millisecond
		e := newEnv(t, b)
		period := func() int64 { return e.clock.Now().UnixMilli() / interval.Milliseconds() }
		var mu sync.Mutex
		runs := make(map[int64]int) // warms per period, fleet-wide
		var ms []*Manager
		var recs []*claimRecorder
		for range 3 {
			rdb := b.Client(t)
			rec := &claimRecorder{claims: make(map[string]bool)}
			rdb.AddHook(rec)
			m, err := New(rdb, &Options{Prefix: "test", Now: e.clock.Now})
			require.NoError(t, err)
			t.Cleanup(func() { closeWithin(t, m) })
			require.NoError(t, m.Warm("dashboard", func(ctx context.Context) (int, error) {
				mu.Lock()
				defer mu.Unlock()
				runs[period()]++
				return 1, nil
			}))
			ms = append(ms, m)
			recs = append(recs, rec)
		}
		for _, m := range ms {
			stopWithin(t, m.WarmEvery(interval))
		}

		const periods = 4
		for range periods {
			n := period()
			key := ms[0].warmPeriodKey(interval, n)
			// Every Manager tries to claim the period, and one warms it.
			require.Eventually(t, func() bool {
				for _, rec := range recs {
					if !rec.claimed(key) {
						return false
					}
				}
				mu.Lock()
				defer mu.Unlock()
				return runs[n] > 0
			}, testredis.Timeout, time.Millisecond, "every Manager to try to claim period %d, and one to warm it", n)
			owner, err := ms[0].Client().Get(t.Context(), key).Result()
			require.NoError(t, err)
			assert.NotEmpty(t, owner)
			e.advance(interval)
		}

		mu.Lock()
		defer mu.Unlock()
		assert.Len(t, runs, periods)
		for n, c := range runs {
			assert.Equal(t, 1, c, "period %d was warmed %d times", n, c)
		}
		warmed := 0
		for _, m := range ms {
			if r, ok := m.LastWarm(); ok {
				warmed++
				assert.Equal(t, "dashboard", r.Jobs[0].Name)
			}
		}
		assert.Positive(t, warmed)
	})
}

// stopWithin has WarmEvery's stop function, stop, called in t.Cleanup,
// failing t when it does not return within testredis.Timeout (it waits for
// a warm in progress).
func stopWithin(t *testing.T, stop func()) {
	t.Cleanup(func() { testredis.Within(t, "WarmEvery's schedule to stop", stop) })
}

// warmScheduleRunning reports whether any goroutine runs a WarmEvery.
func warmScheduleRunning() bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Contains(string(buf[:n]), "cache.(*warmSchedule).run")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func TestWarmEveryStopAndClose(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		for _, end := range []string{"stop", "Close"} {
			t.Run(end, func(t *testing.T) {
				m := newEnv(t, b).manager(&Options{Prefix: end}) // a prefix of its own: periods of its own
				var runs atomic.Int32
				require.NoError(t, m.Warm("summary", func(ctx context.Context) (int, error) { runs.Add(1); return 1, nil }))
				require.NoError(t, m.Client().Ping(t.Context()).Err()) // the pool's first connection, before counting
				before := runtime.NumGoroutine()

				stop := m.WarmEvery(time.Hour)
				require.Eventually(t, func() bool { return runs.Load() == 1 }, testredis.Timeout, time.Millisecond, "the start-up warming")
				require.True(t, warmScheduleRunning())

				if end == "stop" {
					testredis.Within(t, "WarmEvery's stop to return", stop)
				} else {
					closeWithin(t, m)
				}
				require.False(t, warmScheduleRunning(), "the schedule ended before %s returned", end)
				goroutinesBack(t, before)
				// Idempotent, and after Close too.
				testredis.Within(t, "a second stop to return", stop)
				testredis.Within(t, "a third stop to return", stop)
				assert.Equal(t, int32(1), runs.Load())
			})
		}
	})
}

func TestWarmEveryFailureIsLoggedAndScheduleGoesOn(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		const interval = 20 * time.Millisecond
		e := newEnv(t, b)
		var logs warmLog
		m := e.manager(&Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		var runs atomic.Int32
		require.NoError(t, m.Warm("summary", func(ctx context.Context) (int, error) {
			runs.Add(1)
			return 0, errors.New("report service unavailable")
		}))
		stopWithin(t, m.WarmEvery(interval))

		require.Eventually(t, func() bool { return runs.Load() == 1 }, testredis.Timeout, time.Millisecond, "the start-up warming")
		require.Eventually(t, func() bool { return strings.Contains(logs.String(), "cache: warming failed") }, testredis.Timeout, time.Millisecond,
			"the failed warming to be logged")
		assert.Contains(t, logs.String(), "level=WARN")
		assert.Contains(t, logs.String(), "report service unavailable")
		r, ok := m.LastWarm()
		require.True(t, ok)
		assert.Error(t, r.Err())

		e.advance(interval)
		require.Eventually(t, func() bool { return runs.Load() == 2 }, testredis.Timeout, time.Millisecond, "the next period to warm again")
	})
}

// warmLog is a log destination safe for concurrent use.
type warmLog struct {
	mu sync.Mutex // protects b
	b  bytes.Buffer
}

func (l *warmLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *warmLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestWarmAllEndsOnClose(t *testing.T) {
	m := warmMini(t).manager(nil)
	g := newGate() // never opened: the job waits until its context ends
	require.NoError(t, m.Warm("slow", func(ctx context.Context) (int, error) {
		_ = g.pass(ctx)
		return 0, context.Cause(ctx)
	}))
	done := make(chan error, 1)
	go func() {
		_, err := m.WarmAll(context.Background())
		done <- err
	}()
	g.reached(t, "the warming job to start")
	closeWithin(t, m)
	assert.ErrorIs(t, testredis.Recv(t, done, "WarmAll to end on Close"), ErrClosed)
}

func TestWarmAllContextEnded(t *testing.T) {
	m := warmMini(t).manager(nil)
	var ran atomic.Bool
	require.NoError(t, m.Warm("summary", func(ctx context.Context) (int, error) { ran.Store(true); return 1, nil }))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := m.WarmAll(ctx)
	assert.ErrorIs(t, err, context.Canceled)
	assert.False(t, ran.Load())
}

func TestWarmAfterClose(t *testing.T) {
	m := warmMini(t).manager(nil)
	memo := Memoize(m, "leaderboard", func(ctx context.Context, region string) (int, error) { return 1, nil })
	metrics := NewHash[int](m, "metrics")
	closeWithin(t, m)

	assert.ErrorIs(t, m.Warm("summary", func(ctx context.Context) (int, error) { return 0, nil }), ErrClosed)
	assert.ErrorIs(t, memo.WarmWith(func(ctx context.Context) ([]string, error) { return nil, nil }), ErrClosed)
	assert.ErrorIs(t, metrics.WarmWith(func(ctx context.Context) (map[string]int, error) { return nil, nil }), ErrClosed)
	_, err := m.WarmAll(t.Context())
	assert.ErrorIs(t, err, ErrClosed)
	stop := m.WarmEvery(time.Minute)
	testredis.Within(t, "stop after Close to return", stop) // it does nothing
	assert.False(t, warmScheduleRunning())
}

func TestWarmBadInput(t *testing.T) {
	m := warmMini(t).manager(nil)
	assert.ErrorIs(t, m.Warm("", func(ctx context.Context) (int, error) { return 0, nil }), ErrInvalidKey)
	assert.ErrorIs(t, m.Warm("summary", nil), ErrInvalidOption)

	memo := Memoize(m, "leaderboard", func(ctx context.Context, region string) (int, error) { return 1, nil })
	assert.ErrorIs(t, memo.WarmWith(nil), ErrInvalidOption)
	metrics := NewHash[int](m, "metrics")
	assert.ErrorIs(t, metrics.WarmWith(nil), ErrInvalidOption)

	report, err := m.WarmAll(t.Context())
	require.NoError(t, err)
	assert.Empty(t, report.Jobs, "nothing was registered")

	assert.PanicsWithValue(t, "cache: WarmEvery interval 0s is below a millisecond", func() { m.WarmEvery(0) })
	assert.Panics(t, func() { m.WarmEvery(time.Microsecond) })
}

func TestWarmJobString(t *testing.T) {
	for _, c := range []struct {
		job  WarmJob
		want string
	}{
		{WarmJob{Name: "summary", Entries: 1, Duration: 41234 * time.Microsecond}, "summary: 1 entry in 41.2ms"},
		{WarmJob{Name: "hash:outlet_metrics", Entries: 48, Duration: 1312345 * time.Microsecond}, "hash:outlet_metrics: 48 entries in 1.31s"},
		{WarmJob{Name: "trending", Duration: 850 * time.Microsecond, Err: errors.Join(errors.New("a"), errors.New("b"))}, "trending: 0 entries in 850µs, failed: a; b"},
	} {
		assert.Equal(t, c.want, c.job.String())
	}
}

// TestHashWarmNoStaleSet invalidates a field while a hash's warming job
// loads: the job's store is voided and it loads again, so the value read
// before the invalidation is never stored.
func TestHashWarmNoStaleSet(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		h := NewHash[int](m, "metrics")
		var version atomic.Int64
		loads := 0 // the job's loads, which run one after the other
		require.NoError(t, h.WarmWith(func(ctx context.Context) (map[string]int, error) {
			loads++
			v := int(version.Load())
			if loads == 1 {
				// The application changes the source and invalidates
				// while this load runs, after it read the source.
				version.Store(2)
				if !assert.NoError(t, m.Invalidate(ctx, h.Field("Pune-03"))) {
					return nil, errors.New("the invalidation failed")
				}
			}
			return map[string]int{"Pune-03": v, "Pune-04": v}, nil
		}))
		r, err := m.WarmAll(ctx)
		require.NoError(t, err)
		assert.Equal(t, 2, loads, "the voided store made the job load again")
		assert.Equal(t, 2, r.Jobs[0].Entries)
		v, err := h.Get(ctx, "Pune-03")
		require.NoError(t, err)
		assert.Equal(t, 2, v, "the value loaded before the invalidation was not stored")
		assert.Equal(t, uint64(1), m.Stats().ByName["hash:metrics"].VoidedStores)

		// A warm that keeps being invalidated gives up with an error, storing nothing.
		h2 := NewHash[int](m, "busy")
		require.NoError(t, h2.WarmWith(func(ctx context.Context) (map[string]int, error) {
			// A job runs on a goroutine of WarmAll's: assert, not require.
			if !assert.NoError(t, m.Invalidate(ctx, h2.Field("x"))) {
				return nil, errors.New("the invalidation failed")
			}
			return map[string]int{"x": 1}, nil
		}))
		_, err = m.WarmAll(ctx)
		require.Error(t, err)
		_, err = h2.Get(ctx, "x")
		assert.ErrorIs(t, err, ErrMiss)
	})
}

func TestRefreshKeyAndField(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		v, err := Refresh(ctx, m, "summary", func(context.Context) (int, error) { return 1, nil })
		require.NoError(t, err)
		assert.Equal(t, 1, v)
		v, err = Refresh(ctx, m, "summary", func(context.Context) (int, error) { return 2, nil })
		require.NoError(t, err)
		assert.Equal(t, 2, v)
		got, err := Get[int](ctx, m, "summary")
		require.NoError(t, err)
		assert.Equal(t, 2, got, "Refresh overwrites")

		h := NewHash[string](m, "h")
		s, err := h.Refresh(ctx, "f", func(context.Context, string) (string, error) { return "new", nil })
		require.NoError(t, err)
		assert.Equal(t, "new", s)
		s, err = h.Get(ctx, "f")
		require.NoError(t, err)
		assert.Equal(t, "new", s)

		_, err = Refresh[int](ctx, m, "", nil)
		assert.ErrorIs(t, err, ErrInvalidKey)
		_, err = Refresh[int](ctx, m, "k", nil)
		assert.ErrorIs(t, err, ErrInvalidOption)
		_, err = h.Refresh(ctx, "", nil)
		assert.ErrorIs(t, err, ErrInvalidKey)
	})
}
