package cache

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"
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

// BenchmarkInvalidateTag measures Invalidate(Tag) of a tag carried by 1000
// entries, next to the raw cost of deleting 1000 keys in one pipelined
// DEL. A tag's invalidation deletes its generation: one command, whatever
// the number of entries.
func BenchmarkInvalidateTag(b *testing.B) {
	_, rdb, m := benchSetup(b)
	ctx := context.Background()
	const n = 1000
	items := make(map[string]int, n)
	keys := make([]string, n)
	for i := range n {
		k := fmt.Sprint("item-", i)
		items[k] = i
		keys[i] = "raw:" + k
	}
	b.Run("raw-go-redis-del-1000", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range keys {
					p.Set(ctx, k, 1, 0)
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := rdb.Del(ctx, keys...).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stockpot-tag-of-1000", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			if err := SetMany(ctx, m, items, Tags("sales")); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := m.Invalidate(ctx, Tag("sales")); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkInvalidateKeys measures Invalidate of 1000 keys (with their
// leases) next to one raw DEL of 1000 keys, per key.
func BenchmarkInvalidateKeys(b *testing.B) {
	_, rdb, m := benchSetup(b)
	ctx := context.Background()
	const n = 1000
	keys := make([]string, n)
	raw := make([]string, n)
	targets := make([]Target, n)
	for i := range n {
		keys[i] = fmt.Sprint("item-", i)
		raw[i] = "raw:" + keys[i]
		targets[i] = Key(keys[i])
	}
	b.Run("raw-go-redis-del-1000", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := rdb.Del(ctx, raw...).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stockpot-1000-keys", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := m.Invalidate(ctx, targets...); err != nil {
				b.Fatal(err)
			}
		}
	})
}
