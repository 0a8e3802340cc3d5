package cache

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/envelope"
	"github.com/stockpot-go/cache/internal/testredis"
)

// BenchmarkTaggedGet measures a loaded read's hit with and without tags,
// next to the raw baseline: a tagged hit reads the tags' generations with
// the entry, in the same command on a single node.
func BenchmarkTaggedGet(b *testing.B) {
	_, rdb, m := benchSetup(b)
	ctx := context.Background()
	payload := benchPayload()
	rawGet := rawBaseline(b, rdb, payload)
	load := func(context.Context) ([]benchRow, error) { return payload, nil }
	type query struct {
		Region string
		Limit  int
	}
	plain := Memoize(m, "plain", func(ctx context.Context, q query) ([]benchRow, error) { return payload, nil })
	tagged := Memoize(m, "tagged", func(ctx context.Context, q query) ([]benchRow, error) { return payload, nil }, Tags("sales"))
	q := query{Region: "Mumbai", Limit: 20}
	cases := []struct {
		name string
		read func() error
	}{
		{"raw-go-redis", func() error { rawGet(); return nil }},
		{"GetOrLoad", func() error { _, err := GetOrLoad(ctx, m, "plain", load); return err }},
		{"GetOrLoad/tagged", func() error { _, err := GetOrLoad(ctx, m, "tagged", load, Tags("sales")); return err }},
		{"Memo.Get", func() error { _, err := plain.Get(ctx, q); return err }},
		{"Memo.Get/tagged", func() error { _, err := tagged.Get(ctx, q); return err }},
	}
	for _, c := range cases {
		if err := c.read(); err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.read(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The bulk invalidation benchmarks delete N cached entries next to the raw
// cost of deleting N keys: a pipelined multi-key DEL (one DEL of the N
// keys on a single node). Both delete keys that are there: each round
// stores them first, off the clock. ns/key is the time of a round divided
// by N.

// benchBulk returns a client and a Manager whose writes of many entries do
// not run out of their time budget on a loaded machine.
func benchBulk(b *testing.B) (*redis.Client, *Manager) {
	srv := testredis.Start(b)
	rdb := srv.Client(b)
	m, err := New(rdb, &Options{Prefix: "bench", Timeout: 30 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, m) })
	return rdb, m
}

// rawDelRound stores keys with a pipelined SET, off the clock, then
// deletes them with one DEL. They hold what the Manager stores for an int,
// with a TTL, as its entries do.
func rawDelRound(b *testing.B, ctx context.Context, rdb *redis.Client, keys []string) {
	b.StopTimer()
	stored := envelope.Append(nil, envelope.Header{WrittenAt: time.Now().UnixMilli()}, []byte{0x01})
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Set(ctx, k, stored, time.Hour)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	if n, err := rdb.Del(ctx, keys...).Result(); err != nil || n != int64(len(keys)) {
		b.Fatalf("DEL: %d deleted, %v", n, err)
	}
}

func reportPerKey(b *testing.B, n int) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/key")
}

// BenchmarkInvalidateTag measures Invalidate(Tag) of a tag carried by N
// entries. A tag's invalidation deletes its generation: one command,
// whatever the number of entries, which stay in Redis unread until their
// TTL ends (each round stores one entry again, off the clock, so that
// there is a generation to delete).
func BenchmarkInvalidateTag(b *testing.B) {
	rdb, m := benchBulk(b)
	ctx := context.Background()
	for _, n := range []int{1000, 100_000} {
		items := make(map[string]int, n)
		raw := make([]string, n)
		for i := range n {
			k := fmt.Sprint("item-", i)
			items[k] = i
			raw[i] = "raw:" + k
		}
		b.Run(fmt.Sprintf("raw-go-redis-del/n=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rawDelRound(b, ctx, rdb, raw)
			}
			reportPerKey(b, n)
		})
		tag := fmt.Sprint("sales-", n)
		b.Run(fmt.Sprintf("stockpot-tag/n=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			if err := SetMany(ctx, m, items, Tags(tag)); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				// The entries stay (unread) after an invalidation: one
				// more stored under the tag makes its generation again.
				b.StopTimer()
				if err := m.Set(ctx, "item-0", 0, Tags(tag)); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := m.Invalidate(ctx, Tag(tag)); err != nil {
					b.Fatal(err)
				}
			}
			reportPerKey(b, n)
		})
	}
}

// BenchmarkInvalidateKeys measures Invalidate of N Key targets: each
// entry deleted with its lease (which voids a load of it in flight).
func BenchmarkInvalidateKeys(b *testing.B) {
	rdb, m := benchBulk(b)
	ctx := context.Background()
	for _, n := range []int{1000, 10_000} {
		items := make(map[string]int, n)
		raw := make([]string, n)
		targets := make([]Target, n)
		for i := range n {
			k := fmt.Sprint("item-", i)
			items[k] = i
			raw[i] = "raw:" + k
			targets[i] = Key(k)
		}
		b.Run(fmt.Sprintf("raw-go-redis-del/n=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rawDelRound(b, ctx, rdb, raw)
			}
			reportPerKey(b, n)
		})
		b.Run(fmt.Sprintf("stockpot-keys/n=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				if err := SetMany(ctx, m, items); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := m.Invalidate(ctx, targets...); err != nil {
					b.Fatal(err)
				}
			}
			reportPerKey(b, n)
		})
	}
}
