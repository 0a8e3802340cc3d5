package cache

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/maypok86/otter/v2"

	"github.com/stockpot-go/cache/internal/testredis"
)

// BenchmarkLocalHit reads entries from the in-process tier: Memo.Get with a
// string, an int and a small struct argument, and GetOrLoad of a plain
// key, each next to a bare otter lookup of the same argument in an otter
// cache set up as the tier's (size bound, expiry), in the same run; and the
// Redis-tier hit of the same memo, for scale. Every row runs alone and in
// b.RunParallel.
func BenchmarkLocalHit(b *testing.B) {
	srv := testredis.Start(b)
	m, err := New(srv.Client(b), &Options{Prefix: "bench", Timeout: defaultTimeout, Local: &LocalOptions{TTL: time.Hour}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, m) })
	remote, err := New(srv.Client(b), &Options{Prefix: "bench", Timeout: defaultTimeout})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, remote) })
	waitReady(b, m)
	ctx := context.Background()
	payload := benchPayload()
	type query struct {
		Region string
		Limit  int
	}
	q := query{Region: "Mumbai", Limit: 20}
	byUser := Memoize(m, "feed", func(context.Context, string) ([]benchRow, error) { return payload, nil })
	byID := Memoize(m, "outlet", func(context.Context, int) ([]benchRow, error) { return payload, nil })
	byQuery := Memoize(m, "board", func(context.Context, query) ([]benchRow, error) { return payload, nil })
	load := func(context.Context) ([]benchRow, error) { return payload, nil }
	remoteFeed := Memoize(remote, "feed", func(context.Context, string) ([]benchRow, error) { return payload, nil })
	for range 2 { // the first Get loads, the second hits
		_, err1 := byUser.Get(ctx, "ana")
		_, err2 := byID.Get(ctx, 42)
		_, err3 := byQuery.Get(ctx, q)
		_, err4 := GetOrLoad(ctx, m, "dashboard_summary", load)
		_, err5 := remoteFeed.Get(ctx, "ana")
		for _, err := range []error{err1, err2, err3, err4, err5} {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	if hits := m.Stats().ByName["memo:board"].LocalHits; hits != 1 {
		b.Fatalf("the struct-argument memo has %d local hits after its second Get, not 1", hits)
	}

	row := func(name string, get func() error) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := get(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := get(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
	miss := func(ok bool) error {
		if !ok {
			return ErrMiss
		}
		return nil
	}
	// versus runs get and its otter baseline in alternating blocks, alone
	// and in b.RunParallel, and reports get's time over the baseline's:
	// the ratio holds when the machine's speed drifts between rows.
	versus := func(name string, base, get func() error) {
		b.Run(name+"/x-otter", func(b *testing.B) { b.ReportMetric(alternate(b, 1, base, get), "x-otter") })
		b.Run(name+"/x-otter/parallel", func(b *testing.B) { b.ReportMetric(alternate(b, 0, base, get), "x-otter") })
	}
	strs, ints, queries := bareOtter(b, payload, "ana"), bareOtter(b, payload, 42), bareOtter(b, payload, q)
	row("otter/string", func() error { _, ok := strs.GetIfPresent("ana"); return miss(ok) })
	row("memo/string", func() error { _, err := byUser.Get(ctx, "ana"); return err })
	row("otter/int", func() error { _, ok := ints.GetIfPresent(42); return miss(ok) })
	row("memo/int", func() error { _, err := byID.Get(ctx, 42); return err })
	row("otter/struct", func() error { _, ok := queries.GetIfPresent(q); return miss(ok) })
	row("memo/struct", func() error { _, err := byQuery.Get(ctx, q); return err })
	keys := bareOtter(b, payload, "dashboard_summary")
	row("otter/key", func() error { _, ok := keys.GetIfPresent("dashboard_summary"); return miss(ok) })
	row("getorload/key", func() error { _, err := GetOrLoad(ctx, m, "dashboard_summary", load); return err })
	versus("memo/string", func() error { _, ok := strs.GetIfPresent("ana"); return miss(ok) },
		func() error { _, err := byUser.Get(ctx, "ana"); return err })
	versus("memo/int", func() error { _, ok := ints.GetIfPresent(42); return miss(ok) },
		func() error { _, err := byID.Get(ctx, 42); return err })
	versus("memo/struct", func() error { _, ok := queries.GetIfPresent(q); return miss(ok) },
		func() error { _, err := byQuery.Get(ctx, q); return err })
	versus("getorload/key", func() error { _, ok := keys.GetIfPresent("dashboard_summary"); return miss(ok) },
		func() error { _, err := GetOrLoad(ctx, m, "dashboard_summary", load); return err })
	row("redis-tier/string", func() error { _, err := remoteFeed.Get(ctx, "ana"); return err })
}

// alternate runs base and get in alternating blocks of calls, b.N calls of
// each in all, on one goroutine (procs 1) or under b.RunParallel (procs
// 0), and returns the time get took over the time base took. The rows of
// row report allocations.
func alternate(b *testing.B, procs int, base, get func() error) float64 {
	const block = 256
	var tBase, tGet atomic.Int64
	run := func(next func() bool) {
		var dBase, dGet time.Duration
		for next() {
			for _, f := range []struct {
				fn func() error
				d  *time.Duration
			}{{base, &dBase}, {get, &dGet}} {
				start := time.Now()
				for range block {
					if err := f.fn(); err != nil {
						b.Error(err)
						return
					}
				}
				*f.d += time.Since(start)
			}
		}
		tBase.Add(int64(dBase))
		tGet.Add(int64(dGet))
	}
	if procs == 1 {
		n := 0
		run(func() bool { n += block; return n <= b.N })
	} else {
		b.RunParallel(func(pb *testing.PB) {
			run(func() bool { // a block for every block of b.N's share
				for range block {
					if !pb.Next() {
						return false
					}
				}
				return true
			})
		})
	}
	if tBase.Load() == 0 {
		return 0
	}
	return float64(tGet.Load()) / float64(tBase.Load())
}

// bareOtter returns an otter cache set up as the local tier's (10000
// entries, expiry after writing), holding v under k.
func bareOtter[K comparable, V any](b *testing.B, v V, k K) *otter.Cache[K, V] {
	c := otter.Must(&otter.Options[K, V]{MaximumSize: 10000, ExpiryCalculator: otter.ExpiryWriting[K, V](time.Hour)})
	b.Cleanup(func() { c.StopAllGoroutines() })
	c.Set(k, v)
	return c
}

// waitReady waits until m's local tier is in use.
func waitReady(tb testing.TB, m *Manager) {
	tb.Helper()
	for deadline := time.Now().Add(testredis.Timeout); !m.Stats().Local.Subscribed; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("the local tier was not in use within %v", testredis.Timeout)
		}
	}
}
