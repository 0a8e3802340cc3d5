package cache

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/testredis"
)

// The benchmarks run against a real redis-server the harness starts, with a
// raw go-redis baseline in the same run: GET plus a MessagePack decode of
// the same payload. Compare ns/op and allocs/op of each to its baseline.

type benchRow struct {
	ID      int64             `json:"id"`
	Outlet  string            `json:"outlet"`
	Revenue float64           `json:"revenue"`
	Orders  int               `json:"orders"`
	Items   []string          `json:"items"`
	Tags    map[string]string `json:"tags"`
}

func benchPayload() []benchRow {
	rows := make([]benchRow, 20)
	for i := range rows {
		rows[i] = benchRow{
			ID: int64(i), Outlet: "outlet-42", Revenue: 1234.5 * float64(i), Orders: i * 3,
			Items: []string{"mango", "pista", "kulfi"}, Tags: map[string]string{"region": "Mumbai"},
		}
	}
	return rows
}

func benchSetup(b *testing.B) (*testredis.Server, *redis.Client, *Manager) {
	srv := testredis.Start(b)
	rdb := srv.Client(b)
	// A budget far above a read's time, so that a stall of the machine does
	// not fail a benchmark; the calls take the same path as with the
	// default budget (both are far below go-redis's own bound).
	m, err := New(rdb, &Options{Prefix: "bench", Timeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, m) })
	return srv, rdb, m
}

// rawBaseline stores payload under "raw" with the raw client and returns
// the baseline read: GET and a MessagePack decode, as an application
// without a cache library writes it.
func rawBaseline(b *testing.B, rdb *redis.Client, payload []benchRow) func() {
	ctx := context.Background()
	raw, err := Msgpack.Marshal(payload)
	if err != nil {
		b.Fatal(err)
	}
	if err := rdb.Set(ctx, "raw", raw, 0).Err(); err != nil {
		b.Fatal(err)
	}
	return func() {
		data, err := rdb.Get(ctx, "raw").Bytes()
		if err != nil {
			b.Fatal(err)
		}
		var v []benchRow
		if err := Msgpack.Unmarshal(data, &v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGet(b *testing.B) {
	_, rdb, m := benchSetup(b)
	ctx := context.Background()
	payload := benchPayload()
	rawGet := rawBaseline(b, rdb, payload)
	if err := m.Set(ctx, "dashboard", payload); err != nil {
		b.Fatal(err)
	}

	b.Run("raw-go-redis", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rawGet()
		}
	})
	b.Run("stockpot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Get[[]benchRow](ctx, m, "dashboard"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkMemoGet(b *testing.B) {
	_, rdb, m := benchSetup(b)
	ctx := context.Background()
	payload := benchPayload()
	rawGet := rawBaseline(b, rdb, payload)
	type query struct {
		Region string
		Limit  int
	}
	leaderboard := Memoize(m, "leaderboard", func(ctx context.Context, q query) ([]benchRow, error) {
		return payload, nil
	})
	q := query{Region: "Mumbai", Limit: 20}
	if _, err := leaderboard.Get(ctx, q); err != nil {
		b.Fatal(err)
	}
	memoGet := func() {
		if _, err := leaderboard.Get(ctx, q); err != nil {
			b.Fatal(err)
		}
	}

	b.Run("raw-go-redis", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rawGet()
		}
	})
	b.Run("stockpot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			memoGet()
		}
	})
	b.Run("parallel/raw-go-redis", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				rawGet()
			}
		})
	})
	b.Run("parallel/stockpot", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				memoGet()
			}
		})
	})
}

// BenchmarkInvalidate invalidates 1, 10 and 500 mixed targets (keys, hash
// fields, memo entries, memo generations) and reports the round trips each
// call takes next to a raw go-redis DEL of one key.
func BenchmarkInvalidate(b *testing.B) {
	srv := testredis.Start(b)
	rdb := srv.Client(b)
	counter := &commandCounter{}
	rdb.AddHook(counter)
	m, err := New(rdb, &Options{Prefix: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, m) })
	scriptsLoaded(b, m)
	ctx := context.Background()
	h := NewHash[int](m, "h")
	mm := Memoize(m, "m", func(ctx context.Context, i int) (int, error) { return i, nil })
	b.Run("raw-go-redis-del", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := rdb.Del(ctx, "k").Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, n := range []int{1, 10, 500} {
		targets := mixedTargets(n, h, mm)
		b.Run(fmt.Sprint("targets=", n), func(b *testing.B) {
			b.ReportAllocs()
			counter.trips.Store(0)
			for b.Loop() {
				if err := m.Invalidate(ctx, targets...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(counter.trips.Load())/float64(b.N), "trips/op")
		})
	}
}

// BenchmarkStaleRead reports p50 and p99 latency of Memo.Get on plain hits
// and on stale hits while a 50 ms loader refreshes the entry over and over
// (the clock is moved ahead every 10 ms, so the entry is always stale).
func BenchmarkStaleRead(b *testing.B) {
	srv := testredis.Start(b)
	rdb := srv.Client(b)
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	m, err := New(rdb, &Options{Prefix: "bench", Now: clock})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, m) })
	ctx := context.Background()
	payload := benchPayload()
	var loads atomic.Int64
	feed := Memoize(m, "feed", func(ctx context.Context, user string) ([]benchRow, error) {
		loads.Add(1)
		time.Sleep(50 * time.Millisecond)
		return payload, nil
	}, TTL(time.Minute), Jitter(0), StaleFor(time.Hour))
	if _, err := feed.Get(ctx, "ana"); err != nil {
		b.Fatal(err)
	}
	measure := func(b *testing.B) {
		b.ReportAllocs()
		lat := make([]time.Duration, 0, 1<<16)
		for b.Loop() {
			t0 := time.Now()
			if _, err := feed.Get(ctx, "ana"); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
	}
	b.Run("hit", measure)
	b.Run("stale-during-refresh", func(b *testing.B) {
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			t := time.NewTicker(10 * time.Millisecond)
			defer t.Stop()
			for {
				offset.Add(int64(2 * time.Minute))
				select {
				case <-done:
					return
				case <-t.C:
				}
			}
		})
		before := loads.Load()
		measure(b)
		close(done)
		testredis.Wait(b, &wg, "the clock mover to stop")
		b.ReportMetric(float64(loads.Load()-before), "refreshes")
	})
}

// BenchmarkBreakerOpen measures a loaded read with Redis down and the
// circuit breaker open, next to calling the loader alone in the same run:
// the difference is what the cache costs a caller during an outage.
func BenchmarkBreakerOpen(b *testing.B) {
	srv := testredis.Start(b)
	rdb := srv.ClientWith(b, func(o *redis.Options) { o.MaxRetries = -1; o.DialerRetries = 1 })
	m, err := New(rdb, &Options{Prefix: "bench", Timeout: defaultTimeout, Breaker: BreakerOptions{Failures: 1, CoolDown: time.Hour}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, m) })
	ctx := context.Background()
	payload := benchPayload()
	load := func(ctx context.Context, user string) ([]benchRow, error) {
		spin(20000) // a fast query, as fixed work: a sleep's granularity would drown the difference
		return payload, nil
	}
	feed := Memoize(m, "feed", load)
	srv.Kill()
	for deadline := time.Now().Add(testredis.Timeout); m.BreakerState() != "open"; {
		if time.Now().After(deadline) {
			b.Fatalf("the breaker did not open within %v of Redis being killed", testredis.Timeout)
		}
		_, _ = feed.Get(ctx, "ana")
	}
	b.Run("loader-alone", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := load(ctx, "ana"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("memo-get-breaker-open", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := feed.Get(ctx, "ana"); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The two alternated op by op (as in BenchmarkHitInterleaved): the
	// median of each and the difference, what the cache adds to the loader.
	b.Run("interleaved", func(b *testing.B) {
		alone := func() {
			if _, err := load(ctx, "ana"); err != nil {
				b.Fatal(err)
			}
		}
		open := func() {
			if _, err := feed.Get(ctx, "ana"); err != nil {
				b.Fatal(err)
			}
		}
		var loader, ours []time.Duration
		for i := 0; b.Loop(); i++ {
			if i%2 == 0 {
				loader = append(loader, timeOne(alone))
				ours = append(ours, timeOne(open))
			} else {
				ours = append(ours, timeOne(open))
				loader = append(loader, timeOne(alone))
			}
		}
		slices.Sort(loader)
		slices.Sort(ours)
		l, o := loader[len(loader)/2], ours[len(ours)/2]
		b.ReportMetric(float64(l.Nanoseconds()), "loader-ns")
		b.ReportMetric(float64(o.Nanoseconds()), "breaker-open-ns")
		b.ReportMetric(float64((o - l).Nanoseconds()), "added-ns")
	})
}

// spinSink keeps spin's work from being optimised away.
var spinSink int

// spin does n steps of arithmetic.
func spin(n int) {
	x := 0
	for i := range n {
		x += i * i
	}
	spinSink = x
}

// BenchmarkHitInterleaved alternates, op by op, the raw go-redis baseline
// (GET and decode) with the same hit through stockpot, so that both meet
// the same machine: on a shared machine, whose load changes from one
// second to the next, this compares them more closely than two benchmarks
// run one after the other. It reports the median time of each, their ratio
// and the difference. The variants show what bounding a call by its
// deadline costs: the default (a goroutine per call, the client not
// honouring context deadlines), a client with ContextTimeoutEnabled, and
// the budget off (no bound beyond the client's).
func BenchmarkHitInterleaved(b *testing.B) {
	srv, rdb, m := benchSetup(b)
	ctx := context.Background()
	payload := benchPayload()
	rawGet := rawBaseline(b, rdb, payload)
	if err := m.Set(ctx, "dashboard", payload); err != nil {
		b.Fatal(err)
	}
	ctxTimeouts, err := New(srv.ClientWith(b, func(o *redis.Options) { o.ContextTimeoutEnabled = true }),
		&Options{Prefix: "bench", Timeout: defaultTimeout})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, ctxTimeouts) })
	unbounded, err := New(srv.Client(b), &Options{Prefix: "bench", Timeout: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, unbounded) })
	type query struct {
		Region string
		Limit  int
	}
	compute := func(ctx context.Context, q query) ([]benchRow, error) { return payload, nil }
	memo := Memoize(m, "leaderboard", compute)
	q := query{Region: "Mumbai", Limit: 20}
	if _, err := memo.Get(ctx, q); err != nil {
		b.Fatal(err)
	}
	get := func(m *Manager) func() {
		return func() {
			if _, err := Get[[]benchRow](ctx, m, "dashboard"); err != nil {
				b.Fatal(err)
			}
		}
	}
	memoGet := func(m *Manager) func() {
		memo := Memoize(m, "leaderboard", compute)
		return func() {
			if _, err := memo.Get(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, c := range []struct {
		name string
		hit  func()
	}{
		{"Get", get(m)},
		{"Get/ContextTimeoutEnabled", get(ctxTimeouts)},
		{"Get/budget-off", get(unbounded)},
		{"MemoGet", memoGet(m)},
		{"MemoGet/ContextTimeoutEnabled", memoGet(ctxTimeouts)},
		{"MemoGet/budget-off", memoGet(unbounded)},
	} {
		b.Run(c.name, func(b *testing.B) {
			var raw, ours []time.Duration
			for i := 0; b.Loop(); i++ {
				if i%2 == 0 {
					raw = append(raw, timeOne(rawGet))
					ours = append(ours, timeOne(c.hit))
				} else {
					ours = append(ours, timeOne(c.hit))
					raw = append(raw, timeOne(rawGet))
				}
			}
			slices.Sort(raw)
			slices.Sort(ours)
			r, o := raw[len(raw)/2], ours[len(ours)/2]
			b.ReportMetric(float64(r.Nanoseconds()), "raw-ns")
			b.ReportMetric(float64(o.Nanoseconds()), "stockpot-ns")
			b.ReportMetric(float64(o)/float64(r), "ratio")
		})
	}
}

// timeOne returns how long f took.
func timeOne(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

// BenchmarkParallelReads measures reads from 64 goroutines (32 per
// GOMAXPROCS on the 2-core machines the README quotes), of one hot key
// and of 1000 keys, each goroutine its own share, next to raw go-redis
// GETs with a decode in the same run.
func BenchmarkParallelReads(b *testing.B) {
	_, rdb, m := benchSetup(b)
	ctx := context.Background()
	payload := benchPayload()
	raw, err := Msgpack.Marshal(payload)
	if err != nil {
		b.Fatal(err)
	}
	const n = 1000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprint("k", i)
		if err := m.Set(ctx, keys[i], payload); err != nil {
			b.Fatal(err)
		}
		if err := rdb.Set(ctx, "raw:"+keys[i], raw, 0).Err(); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64 // hands each goroutine its own offset
	for _, c := range []struct {
		name string
		read func(key string) error
		hot  bool
	}{
		{"hot/raw-go-redis", rawRead(ctx, rdb), true},
		{"hot/stockpot", stockpotRead(ctx, m), true},
		{"keys-1000/raw-go-redis", rawRead(ctx, rdb), false},
		{"keys-1000/stockpot", stockpotRead(ctx, m), false},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(32)
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(97))
				for pb.Next() {
					key := keys[0]
					if !c.hot {
						key = keys[i%n]
						i++
					}
					if err := c.read(key); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func rawRead(ctx context.Context, rdb *redis.Client) func(string) error {
	return func(key string) error {
		data, err := rdb.Get(ctx, "raw:"+key).Bytes()
		if err != nil {
			return err
		}
		var v []benchRow
		return Msgpack.Unmarshal(data, &v)
	}
}

func stockpotRead(ctx context.Context, m *Manager) func(string) error {
	return func(key string) error {
		_, err := Get[[]benchRow](ctx, m, key)
		return err
	}
}

// BenchmarkCompression reads the benchmark payload stored compressed (the
// default CompressAbove) and stored as encoded (CompressAbove 64 KiB, the
// default before), one read of each in turn, and reports the median of
// each, their ratio, and what each stores: the value's length and Redis's
// MEMORY USAGE of its key.
func BenchmarkCompression(b *testing.B) {
	srv, rdb, compressed := benchSetup(b)
	plain, err := New(srv.Client(b), &Options{Prefix: "bench-plain", Timeout: defaultTimeout, CompressAbove: 64 << 10})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, plain) })
	ctx := context.Background()
	payload := benchPayload()
	for _, m := range []*Manager{compressed, plain} {
		if err := m.Set(ctx, "dashboard", payload, NoExpiry()); err != nil {
			b.Fatal(err)
		}
	}
	stored := func(m *Manager) (length, usage int64) {
		key := m.entryKey("dashboard")
		length, err := rdb.StrLen(ctx, key).Result()
		if err != nil {
			b.Fatal(err)
		}
		usage, err = rdb.MemoryUsage(ctx, key).Result()
		if err != nil {
			b.Fatal(err)
		}
		return length, usage
	}
	get := func(m *Manager) func() {
		return func() {
			if _, err := Get[[]benchRow](ctx, m, "dashboard"); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("Get/compressed-vs-plain", func(b *testing.B) {
		var old, ours []time.Duration
		for i := 0; b.Loop(); i++ {
			if i%2 == 0 {
				old = append(old, timeOne(get(plain)))
				ours = append(ours, timeOne(get(compressed)))
			} else {
				ours = append(ours, timeOne(get(compressed)))
				old = append(old, timeOne(get(plain)))
			}
		}
		slices.Sort(old)
		slices.Sort(ours)
		o, n := old[len(old)/2], ours[len(ours)/2]
		b.ReportMetric(float64(o.Nanoseconds()), "plain-ns")
		b.ReportMetric(float64(n.Nanoseconds()), "compressed-ns")
		b.ReportMetric(float64(n)/float64(o), "ratio")
		pl, pu := stored(plain)
		cl, cu := stored(compressed)
		b.ReportMetric(float64(pl), "plain-B")
		b.ReportMetric(float64(cl), "compressed-B")
		b.ReportMetric(float64(pu), "plain-mem-B")
		b.ReportMetric(float64(cu), "compressed-mem-B")
	})
	for _, c := range []struct {
		name string
		m    *Manager
	}{{"Get/plain", plain}, {"Get/compressed", compressed}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			hit := get(c.m)
			for b.Loop() {
				hit()
			}
		})
	}
}
