package cache

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stockpot-go/cache/internal/scripts"
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
	// The same work by hand, around the same loader: an application
	// without a cache library encodes what it loaded before it stores it.
	b.Run("cold/raw-mget-load-encode-set", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			if err := rdb.Del(ctx, rawKeys...).Err(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			vals := rawMGet(b)
			var missing []string
			for i, v := range vals {
				if v == nil {
					missing = append(missing, keys[i])
				}
			}
			loaded, err := load(ctx, missing)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range missing {
					enc, err := Msgpack.Marshal(loaded[k])
					if err != nil {
						return err
					}
					p.Set(ctx, "raw:"+k, enc, time.Hour)
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The lease protocol by hand, with raw go-redis: the commands a cold
	// batch sends (a read, a lease per miss with a read again, the store
	// script), none of the library's Go code around them. It is the floor
	// of a load that keeps one load per key across the fleet and no value
	// stored after an invalidation.
	b.Run("cold/raw-lease-protocol", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			if err := rdb.Del(ctx, rawKeys...).Err(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			rawMGet(b)
			token := newToken()
			if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range rawKeys {
					p.SetNX(ctx, k+leaseSuffix, token, 5*time.Second)
				}
				p.MGet(ctx, rawKeys...)
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			loaded, err := load(ctx, keys)
			if err != nil {
				b.Fatal(err)
			}
			rawStore(b, rdb, rawKeys, token, "", func(i int) any { return loaded[keys[i]] })
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
	fn := func(ctx context.Context, outlets []int) ([]benchItem, error) {
		out := make([]benchItem, len(outlets))
		for i, o := range outlets {
			out[i] = benchItem{Outlet: fmt.Sprint("outlet-", o), Orders: o, Revenue: 12.5}
		}
		return out, nil
	}
	metrics := MemoizeBatch(m, "metrics", fn)
	if err := metrics.WarmWith(func(ctx context.Context) ([]int, error) { return args, nil }); err != nil {
		b.Fatal(err)
	}
	// A warm by hand: the same batch function, each result encoded, one
	// pipelined SET each.
	b.Run("raw-load-encode-set", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rs, err := fn(ctx, args)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i, r := range rs {
					enc, err := Msgpack.Marshal(r)
					if err != nil {
						return err
					}
					p.Set(ctx, "raw:"+strconv.Itoa(i), enc, time.Hour)
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The lease protocol by hand (see cold/raw-lease-protocol in
	// BenchmarkGetOrLoadMany): a lease per entry and the memo's
	// generation in one pipeline, then the store script.
	rawMemo := make([]string, n)
	for i := range rawMemo {
		rawMemo[i] = "rawmemo{m}:e:" + strconv.Itoa(i)
	}
	const rawGen = "rawmemo{m}:g"
	if err := rdb.Set(ctx, rawGen, "7", 0).Err(); err != nil {
		b.Fatal(err)
	}
	b.Run("raw-lease-protocol", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			token := newToken()
			var gen *redis.StringCmd
			if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range rawMemo {
					p.SetNX(ctx, k+leaseSuffix, token, 5*time.Second)
				}
				gen = p.Get(ctx, rawGen)
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			rs, err := fn(ctx, args)
			if err != nil {
				b.Fatal(err)
			}
			rawStore(b, rdb, rawMemo, token, gen.Val(), func(i int) any { return rs[i] })
		}
	})
	b.Run("stockpot-warm", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.WarmAll(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// rawStore stores value(i) under each of keys with the store script, as a
// load does, while the lease keys[i]+leaseSuffix holds token (and, when
// gen is not "", while the generation beside the keys is gen).
func rawStore(b *testing.B, rdb *redis.Client, keys []string, token, gen string, value func(i int) any) {
	ctx := context.Background()
	var ks []string
	if gen != "" {
		ks = append(ks, keys[0][:strings.IndexByte(keys[0], '}')+1]+":g")
	}
	ks = append(ks, keys...)
	for _, k := range keys {
		ks = append(ks, k+leaseSuffix)
	}
	for _, k := range keys {
		ks = append(ks, k+leaseSuffix+awaitedSuffix)
	}
	args := []any{"0", "", "", token, gen, "0"}
	for i := range keys {
		enc, err := Msgpack.Marshal(value(i))
		if err != nil {
			b.Fatal(err)
		}
		args = append(args, enc, int64(3600000))
	}
	ns, err := rdb.EvalSha(ctx, scripts.StoreMany.Hash(), ks, args...).Int64Slice()
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range ns {
		if n != 1 {
			b.Fatal("a raw store was refused")
		}
	}
}
