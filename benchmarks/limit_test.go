package benchmarks

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/dtm-labs/rockscache"
	gocache "github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/stockpot-go/cache"
)

// BenchmarkRedisBenchmark is the physical limit of the server: redis-server's
// own redis-benchmark sending GET of the payload's key from parallelReaders
// connections, one command at a time on each (get-c64) and 16 pipelined
// commands at a time (get-c64-p16), b.N requests in all. Its ns/op is the
// inverse of the throughput redis-benchmark reports, comparable with the
// ns/op of the parallel hit benchmarks (wall time over reads).
func BenchmarkRedisBenchmark(b *testing.B) {
	bin, err := exec.LookPath("redis-benchmark")
	if err != nil {
		b.Skip("redis-benchmark is not on PATH (apt-get install redis-tools)")
	}
	host, port, err := net.SplitHostPort(redisAddr)
	if err != nil {
		b.Fatal(err)
	}
	data, err := msgpack.Marshal(payload())
	if err != nil {
		b.Fatal(err)
	}
	k := key(uniq("redis-benchmark"))
	if err := newClient(b).Set(context.Background(), k, data, time.Hour).Err(); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		pipeline int
	}{{"get-c64", 1}, {"get-c64-p16", 16}} {
		b.Run(c.name, func(b *testing.B) {
			out, err := exec.Command(bin, "-h", host, "-p", port, "--csv",
				"-c", strconv.Itoa(parallelReaders), "-P", strconv.Itoa(c.pipeline),
				"-n", strconv.Itoa(b.N), "GET", k).Output()
			if err != nil {
				b.Fatalf("redis-benchmark: %v; its output:\n%s", err, out)
			}
			rps, err := requestsPerSecond(out)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(1e9/rps, "ns/op")
		})
	}
}

// requestsPerSecond returns the rps column of redis-benchmark's --csv
// output for one test.
func requestsPerSecond(out []byte) (float64, error) {
	recs, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("redis-benchmark's output %q: %v", out, err)
	}
	if len(recs) != 2 || len(recs[0]) < 2 || recs[0][1] != "rps" || len(recs[1]) < 2 {
		return 0, fmt.Errorf("redis-benchmark's output %q is not a header and one test", out)
	}
	rps, err := strconv.ParseFloat(recs[1][1], 64)
	if err != nil || rps <= 0 {
		return 0, fmt.Errorf("redis-benchmark's output %q: no requests per second", out)
	}
	return rps, nil
}

// A missCase reads an argument nobody has read yet, so that it loads (the
// loader returns the payload at once) and stores the entry; it returns the
// Redis key of the entry and how to measure what it stores there.
type missCase struct {
	name string
	read func(ctx context.Context, q query) (string, error)
	// hash names the field of a hash entry; "" for a string.
	hash string
}

// BenchmarkMiss reads arguments nobody has read, so that each read loads
// and stores, and reports, for the last entry stored, the bytes of the
// stored value (stored-B, what the payload becomes: encoding, compression
// and the library's own fields) and what Redis needs to hold it (redis-B,
// MEMORY USAGE of the key).
func BenchmarkMiss(b *testing.B) {
	ctx := context.Background()
	rdb := newClient(b)
	rows := payload()
	load := func(context.Context, query) ([]row, error) { return rows, nil }
	memo := cache.Memoize(newManager(b, rdb, nil), uniq("miss"), load, cache.TTL(time.Hour))
	gc := gocache.New(&gocache.Options{Redis: rdb})
	rc := rockscache.NewClient(rdb, rockscache.NewDefaultOptions())
	rawPrefix, gcPrefix, rcPrefix := key(uniq("raw-miss"))+":", key(uniq("gc-miss"))+":", key(uniq("rc-miss"))+":"

	cases := []missCase{
		{name: "raw-go-redis", read: func(ctx context.Context, q query) (string, error) {
			// Hand-written cache-aside: GET, and on the miss load and SET.
			k := q.key(rawPrefix)
			if _, err := decode(rdb.Get(ctx, k).Bytes()); !errors.Is(err, redis.Nil) {
				return k, fmt.Errorf("GET of a new key: %v", err)
			}
			v, err := load(ctx, q)
			if err != nil {
				return k, err
			}
			data, err := msgpack.Marshal(v)
			if err != nil {
				return k, err
			}
			return k, rdb.Set(ctx, k, data, time.Hour).Err()
		}},
		{name: "stockpot", read: func(ctx context.Context, q query) (string, error) {
			k, err := memo.Key(q)
			if err != nil {
				return k, err
			}
			_, err = memo.Get(ctx, q)
			return k, err
		}},
		{name: "go-redis-cache", read: func(ctx context.Context, q query) (string, error) {
			k := q.key(gcPrefix)
			var v []row
			return k, gc.Once(&gocache.Item{
				Ctx: ctx, Key: k, Value: &v, TTL: time.Hour,
				Do: func(*gocache.Item) (any, error) { return load(ctx, q) },
			})
		}},
		{name: "rockscache", hash: "value", read: func(ctx context.Context, q query) (string, error) {
			k := q.key(rcPrefix)
			_, err := rc.Fetch2(ctx, k, time.Hour, func() (string, error) {
				data, err := msgpack.Marshal(rows)
				return string(data), err
			})
			return k, err
		}},
	}
	for _, c := range rotate(cases) {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			var last string
			n := int(seq.Add(1_000_000)) // a range of arguments of its own
			for b.Loop() {
				n++
				k, err := c.read(ctx, query{Region: "Pune", Limit: n})
				if err != nil {
					b.Fatal(err)
				}
				last = k
			}
			b.StopTimer()
			var stored int64
			var err error
			if c.hash != "" {
				stored, err = rdb.HStrLen(ctx, last, c.hash).Result()
			} else {
				stored, err = rdb.StrLen(ctx, last).Result()
			}
			if err == nil && stored == 0 {
				err = fmt.Errorf("no entry at %q", last)
			}
			if err != nil {
				b.Fatal(err)
			}
			usage, err := rdb.MemoryUsage(ctx, last).Result()
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(stored), "stored-B")
			b.ReportMetric(float64(usage), "redis-B")
		})
	}
}
