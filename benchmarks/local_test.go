package benchmarks

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/viccon/sturdyc"

	"github.com/stockpot-go/cache"
)

// The local-tier hit: a value held in process, for three kinds of argument.
// stockpot's local tier is the Memo.Get of a Manager with Options.Local;
// sturdyc is an in-process cache read with GetOrFetch under a string key the
// caller builds from the argument; the bare otter lookup (GetIfPresent keyed
// by the argument itself, no TTL) is the floor, the in-process cache
// stockpot's local tier is built on.

// A localCase reads one warm in-process entry.
type localCase struct {
	name string
	get  func(ctx context.Context) ([]row, error)
}

// localArg is an argument kind of the local-hit benchmarks: the argument,
// and the string key a caller of sturdyc builds from it.
type localArg[A comparable] struct {
	kind string
	arg  A
	key  func(A) string
}

// localCases returns, for each library, a read of one warm entry under arg.
func localCases[A comparable](b *testing.B, a localArg[A]) []localCase {
	ctx := context.Background()
	rows := payload()
	load := func(context.Context, A) ([]row, error) { return rows, nil }

	memo := cache.Memoize(newManager(b, newClient(b), &cache.Options{
		Local: &cache.LocalOptions{MaxEntries: localEntries, TTL: time.Minute},
	}), uniq("local-"+a.kind), load, cache.TTL(time.Hour))

	sc := sturdyc.New[[]row](localEntries, 8, time.Minute, 10)
	fetch := func(ctx context.Context) ([]row, error) { return load(ctx, a.arg) }

	oc := otter.Must(&otter.Options[A, []row]{MaximumSize: localEntries})
	oc.Set(a.arg, rows)

	cases := []localCase{
		{"stockpot", func(ctx context.Context) ([]row, error) { return memo.Get(ctx, a.arg) }},
		{"sturdyc", func(ctx context.Context) ([]row, error) { return sc.GetOrFetch(ctx, a.key(a.arg), fetch) }},
		{"otter", func(context.Context) ([]row, error) {
			v, ok := oc.GetIfPresent(a.arg)
			if !ok {
				return nil, errNotPayload
			}
			return v, nil
		}},
	}
	for _, c := range cases {
		for range 2 { // the first may load
			v, err := c.get(ctx)
			checkRows(b, v, err)
		}
	}
	return rotate(cases)
}

// leaderboardArg, nameArg and idArg are the argument kinds: a small struct,
// a string and an int.
var (
	leaderboardArg = localArg[query]{"struct", leaderboardQuery, func(q query) string { return q.key("") }}
	nameArg        = localArg[string]{"string", "outlet-42", func(s string) string { return s }}
	idArg          = localArg[int]{"int", 4242, strconv.Itoa}
)

// BenchmarkLocalHit reads a warm in-process entry, one read at a time.
func BenchmarkLocalHit(b *testing.B) {
	benchLocal(b, leaderboardArg, false)
	benchLocal(b, nameArg, false)
	benchLocal(b, idArg, false)
}

// BenchmarkLocalHitParallel is BenchmarkLocalHit from one goroutine per CPU
// (a local hit does not wait, so more goroutines would only queue), all on
// the one entry.
func BenchmarkLocalHitParallel(b *testing.B) {
	benchLocal(b, leaderboardArg, true)
	benchLocal(b, nameArg, true)
	benchLocal(b, idArg, true)
}

func benchLocal[A comparable](b *testing.B, a localArg[A], parallel bool) {
	ctx := context.Background()
	b.Run(a.kind, func(b *testing.B) {
		for _, c := range localCases(b, a) {
			b.Run(c.name, func(b *testing.B) {
				b.ReportAllocs()
				if !parallel {
					for b.Loop() {
						if _, err := c.get(ctx); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := c.get(ctx); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	})
}
