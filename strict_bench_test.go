package cache

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// BenchmarkStrictLocalHit: a local hit in strict mode against one in the
// default mode, in alternating blocks of one run (the x-default metric is
// the ratio), for a memo with a string argument and for GetOrLoad of a
// plain key, alone and in b.RunParallel.
func BenchmarkStrictLocalHit(b *testing.B) {
	srv := testredis.Start(b)
	var ms [2]*Manager
	for i, strict := range []bool{false, true} {
		m, err := New(srv.Client(b), &Options{Prefix: "bench" + strconv.Itoa(i), Timeout: defaultTimeout,
			Local: &LocalOptions{TTL: time.Hour, Strict: strict}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { closeWithin(b, m) })
		waitReady(b, m)
		ms[i] = m
	}
	require.Eventually(b, func() bool { return ms[1].Stats().Local.Leased }, testredis.Timeout, time.Millisecond, "the strict Manager's lease")
	ctx := context.Background()
	payload := benchPayload()
	var memos [2]*Memo[string, []benchRow]
	load := func(context.Context) ([]benchRow, error) { return payload, nil }
	for i, m := range ms {
		memos[i] = Memoize(m, "feed", func(context.Context, string) ([]benchRow, error) { return payload, nil })
		for range 2 {
			if _, err := memos[i].Get(ctx, "ana"); err != nil {
				b.Fatal(err)
			}
			if _, err := GetOrLoad(ctx, m, "dashboard_summary", load); err != nil {
				b.Fatal(err)
			}
		}
	}
	if ms[1].Stats().ByName["memo:feed"].LocalHits == 0 {
		b.Fatal("the strict Manager has no local hit")
	}
	versus := func(name string, get func(i int) error) {
		base, strict := func() error { return get(0) }, func() error { return get(1) }
		b.Run(name+"/x-default", func(b *testing.B) { b.ReportMetric(alternate(b, 1, base, strict), "x-default") })
		b.Run(name+"/x-default/parallel", func(b *testing.B) { b.ReportMetric(alternate(b, 0, base, strict), "x-default") })
	}
	versus("memo/string", func(i int) error { _, err := memos[i].Get(ctx, "ana"); return err })
	versus("getorload/key", func(i int) error { _, err := GetOrLoad(ctx, ms[i], "dashboard_summary", load); return err })
}

// BenchmarkStrictInvalidate: the time of an Invalidate of a key that 1, 4
// or 16 other Managers keep in their local tier, in the default and in
// strict mode; and in strict mode with one of them hung (its subscription
// unread), which the Invalidate waits for until its lease (100ms here)
// ends.
func BenchmarkStrictInvalidate(b *testing.B) {
	srv := testredis.Start(b)
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		strict bool
		hung   bool
		n      int
	}{
		{"default/1", false, false, 1}, {"strict/1", true, false, 1},
		{"default/4", false, false, 4}, {"strict/4", true, false, 4},
		{"default/16", false, false, 16}, {"strict/16", true, false, 16},
		{"strict-one-hung/4", true, true, 4},
	} {
		b.Run(c.name, func(b *testing.B) {
			o := &Options{Prefix: "inv-" + c.name, Timeout: time.Second, Local: localOpts(time.Hour, c.strict, 100*time.Millisecond)}
			var fleet []*Manager
			for range c.n + 1 {
				m, err := New(srv.Client(b), o)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { closeWithin(b, m) })
				waitReady(b, m)
				fleet = append(fleet, m)
			}
			w, holders := fleet[0], fleet[1:]
			if c.strict {
				for _, m := range fleet {
					require.Eventually(b, func() bool { return m.Stats().Local.Leased }, testredis.Timeout, time.Millisecond, "the leases")
				}
				require.Eventually(b, func() bool { // the registry is complete
					before := w.Stats().Local.WaitedOut
					_ = w.Invalidate(ctx, Key("warm-up"))
					return w.Stats().Local.WaitedOut == before
				}, testredis.Timeout, time.Millisecond, "a drop that does not wait out the leases")
			}
			if c.hung {
				b.Cleanup(HoldLocalReceive(holders[0]))
			}
			load := func(context.Context) (int, error) { return 1, nil }
			for b.Loop() {
				b.StopTimer()
				for _, m := range holders {
					if _, err := GetOrLoad(ctx, m, "k", load); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				if err := w.Invalidate(ctx, Key("k")); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
