package cache

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"
)

// benchItem is the value of the batch benchmarks: a small struct, as a
// dashboard's per-outlet metrics.
type benchItem struct {
	Outlet  string  `json:"outlet"`
	Orders  int     `json:"orders"`
	Revenue float64 `json:"revenue"`
}

// BenchmarkGetOrLoadMany measures a batch of 100 keys, all hits and all
// cold, next to the raw go-redis baselines in the same run: an MGET and a
// decode of each value, and, for cold keys, that MGET then a pipelined SET
// of each value.
func BenchmarkGetOrLoadMany(b *testing.B) {
	_, rdb, m := benchSetup(b)
	ctx := context.Background()
	const n = 100
	keys := make([]string, n)
	rawKeys := make([]string, n)
	items := make(map[string]benchItem, n)
	for i := range keys {
		keys[i] = fmt.Sprint("outlet-", i)
		rawKeys[i] = "raw:" + keys[i]
		items[keys[i]] = benchItem{Outlet: keys[i], Orders: i, Revenue: 12.5 * float64(i)}
	}
	load := func(ctx context.Context, missing []string) (map[string]benchItem, error) {
		out := make(map[string]benchItem, len(missing))
		for _, k := range missing {
			out[k] = items[k]
		}
		return out, nil
	}
	encoded := make([][]byte, n)
	for i, k := range keys {
		b, err := Msgpack.Marshal(items[k])
		if err != nil {
			panic(err)
		}
		encoded[i] = b
	}
	rawMGet := func(b *testing.B) []any {
		vals, err := rdb.MGet(ctx, rawKeys...).Result()
		if err != nil {
			b.Fatal(err)
		}
		for _, v := range vals {
			if s, ok := v.(string); ok {
				var it benchItem
				if err := Msgpack.Unmarshal([]byte(s), &it); err != nil {
					b.Fatal(err)
				}
			}
		}
		return vals
	}
	rawSet := func(b *testing.B) {
		if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, k := range rawKeys {
				p.Set(ctx, k, encoded[i], 0)
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	rawSet(b)
	if _, err := GetOrLoadMany(ctx, m, keys, load); err != nil {
		b.Fatal(err)
	}
	b.Run("hits/raw-mget-decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rawMGet(b)
		}
	})
	b.Run("hits/stockpot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := GetOrLoadMany(ctx, m, keys, load); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cold/raw-mget-set", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			if err := rdb.Del(ctx, rawKeys...).Err(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			rawMGet(b)
			rawSet(b)
		}
	})
	b.Run("cold/stockpot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			if err := m.Delete(ctx, keys...); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if _, err := GetOrLoadMany(ctx, m, keys, load); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkMemoWarm measures Memo.WarmWith of 1000 entries next to the raw
// baseline of a pipelined SET of 1000 values (ns/op are per warm).
func BenchmarkMemoWarm(b *testing.B) {
	_, rdb, m := benchSetup(b)
	ctx := context.Background()
	const n = 1000
	args := make([]int, n)
	for i := range args {
		args[i] = i
	}
	encoded, err := Msgpack.Marshal(benchItem{Outlet: "outlet-1", Orders: 7, Revenue: 12.5})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("raw-pipelined-set", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i := range n {
					p.Set(ctx, fmt.Sprint("raw:", i), encoded, 0)
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
	metrics := MemoizeBatch(m, "metrics", func(ctx context.Context, outlets []int) ([]benchItem, error) {
		out := make([]benchItem, len(outlets))
		for i, o := range outlets {
			out[i] = benchItem{Outlet: fmt.Sprint("outlet-", o), Orders: o, Revenue: 12.5}
		}
		return out, nil
	})
	if err := metrics.WarmWith(func(ctx context.Context) ([]int, error) { return args, nil }); err != nil {
		b.Fatal(err)
	}
	b.Run("stockpot-warm", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.WarmAll(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
