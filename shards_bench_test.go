package cache

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/testredis"
)

// shardBackends are the Redis a sharding benchmark runs on: a real server,
// and the harness's three-master cluster.
func shardBackends(b *testing.B) []struct {
	name string
	rdb  redis.UniversalClient
} {
	srv := testredis.Start(b)
	c := testredis.SharedCluster(b)
	return []struct {
		name string
		rdb  redis.UniversalClient
	}{{"redis", srv.Client(b)}, {"cluster", c.Client(b)}}
}

func shardManager(b *testing.B, rdb redis.UniversalClient) *Manager {
	m, err := New(rdb, &Options{Prefix: "bench", Timeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, m) })
	scriptsLoaded(b, m)
	return m
}

// BenchmarkShardedMemoGetInterleaved alternates, op by op, a hit of an
// unsharded memo with the same hit of a memo of 16 shards (and, as the
// baseline of the file, a raw GET and decode of the same payload), so that
// both meet the same machine. It reports the median time of each and the
// ratio sharded/unsharded, on a single server and on the cluster. Each op
// reads one of 64 arguments in turn, so the sharded reads go to every
// shard. raw-spread-ratio is the same ratio for raw GETs of keys spread
// over 16 hash tags against GETs of one key: what spreading reads over
// the masters costs by itself (on a machine that runs every master).
func BenchmarkShardedMemoGetInterleaved(b *testing.B) {
	ctx := context.Background()
	payload := benchPayload()
	type query struct {
		Region string
		Limit  int
	}
	compute := func(ctx context.Context, q query) ([]benchRow, error) { return payload, nil }
	qs := make([]query, 64)
	for i := range qs {
		qs[i] = query{Region: "Mumbai", Limit: i}
	}
	raw, err := Msgpack.Marshal(payload)
	if err != nil {
		b.Fatal(err)
	}
	for _, be := range shardBackends(b) {
		m := shardManager(b, be.rdb)
		plain := Memoize(m, "leaderboard", compute)
		sharded := Memoize(m, "leaderboard", compute, Shards(16))
		for _, q := range qs {
			if _, err := plain.Get(ctx, q); err != nil {
				b.Fatal(err)
			}
			if _, err := sharded.Get(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
		// The raw baseline reads one key, or 16 keys of 16 hash tags in
		// turn (spread over the masters of a cluster, as the shards are).
		rawKeys := make([]string, 16)
		for i := range rawKeys {
			rawKeys[i] = fmt.Sprintf("raw{%d}", i)
			if err := be.rdb.Set(ctx, rawKeys[i], raw, 0).Err(); err != nil {
				b.Fatal(err)
			}
		}
		get := func(mm *Memo[query, []benchRow], i int) func() {
			return func() {
				if _, err := mm.Get(ctx, qs[i%len(qs)]); err != nil {
					b.Fatal(err)
				}
			}
		}
		rawGet := func(i int) func() {
			return func() {
				data, err := be.rdb.Get(ctx, rawKeys[i%len(rawKeys)]).Bytes()
				if err != nil {
					b.Fatal(err)
				}
				var v []benchRow
				if err := Msgpack.Unmarshal(data, &v); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.Run(be.name, func(b *testing.B) {
			var rs, rss, ps, ss []time.Duration
			for i := 0; b.Loop(); i++ {
				if i%2 == 0 {
					ps = append(ps, timeOne(get(plain, i)))
					ss = append(ss, timeOne(get(sharded, i)))
				} else {
					ss = append(ss, timeOne(get(sharded, i)))
					ps = append(ps, timeOne(get(plain, i)))
				}
				switch i % 8 {
				case 0:
					rs = append(rs, timeOne(rawGet(0)))
					rss = append(rss, timeOne(rawGet(i/4)))
				case 4:
					rss = append(rss, timeOne(rawGet(i/4)))
					rs = append(rs, timeOne(rawGet(0)))
				}
			}
			med := func(ds []time.Duration) time.Duration { slices.Sort(ds); return ds[len(ds)/2] }
			r, rsp, p, s := med(rs), med(rss), med(ps), med(ss)
			b.ReportMetric(float64(r.Nanoseconds()), "raw-ns")
			b.ReportMetric(float64(rsp)/float64(r), "raw-spread-ratio")
			b.ReportMetric(float64(p.Nanoseconds()), "unsharded-ns")
			b.ReportMetric(float64(s.Nanoseconds()), "sharded-ns")
			b.ReportMetric(float64(s)/float64(p), "ratio")
		})
	}
}

// BenchmarkShardedMemoKey measures the key of an argument alone (no Redis):
// what choosing the shard adds to a hit.
func BenchmarkShardedMemoKey(b *testing.B) {
	_, rdb := testredis.Mini(b)
	m, err := New(rdb, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, m) })
	type query struct {
		Region string
		Limit  int
	}
	compute := func(ctx context.Context, q query) (int, error) { return 0, nil }
	for _, n := range []int{1, 16} {
		mm := Memoize(m, "leaderboard", compute, Shards(n))
		b.Run(fmt.Sprint("shards=", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := mm.ref(query{Region: "Mumbai", Limit: i & 63}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkShardedForgetAll times ForgetAll of memos of 1, 16 and 256
// shards whose generations all exist (they are made again, untimed, before
// each call), on a single server and on the cluster, next to a raw DEL of
// one key. It reports the median and the 90th percentile of the calls, and
// the round trips per call: ns/op includes the untimed setup.
func BenchmarkShardedForgetAll(b *testing.B) {
	ctx := context.Background()
	for _, be := range shardBackends(b) {
		m := shardManager(b, be.rdb)
		report := func(b *testing.B, ds []time.Duration) {
			slices.Sort(ds)
			b.ReportMetric(float64(ds[len(ds)/2].Nanoseconds()), "median-ns")
			b.ReportMetric(float64(ds[len(ds)*9/10].Nanoseconds()), "p90-ns")
		}
		b.Run(be.name+"/raw-go-redis-del", func(b *testing.B) {
			var ds []time.Duration
			for b.Loop() {
				ds = append(ds, timeOne(func() {
					if err := be.rdb.Del(ctx, "k").Err(); err != nil {
						b.Fatal(err)
					}
				}))
			}
			report(b, ds)
		})
		for _, n := range []int{1, 16, 256} {
			mm := Memoize(m, fmt.Sprint("memo", n), func(ctx context.Context, i int) (int, error) { return i, nil }, Shards(n))
			b.Run(fmt.Sprintf("%s/shards=%d", be.name, n), func(b *testing.B) {
				var ds []time.Duration
				for b.Loop() {
					if _, err := m.pipe(ctx, m.kv, func(p redis.Pipeliner) {
						for _, g := range mm.gens {
							p.Set(ctx, g, "1", 0)
						}
					}); err != nil {
						b.Fatal(err)
					}
					ds = append(ds, timeOne(func() {
						if err := mm.ForgetAll(ctx); err != nil {
							b.Fatal(err)
						}
					}))
				}
				report(b, ds)
			})
		}
	}
}
