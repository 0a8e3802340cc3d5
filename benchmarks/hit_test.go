package benchmarks

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dtm-labs/rockscache"
	gocache "github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/stockpot-go/cache"
)

// The read benchmarks: every library reads the same payload from the same
// server, hit after hit, one read at a time (BenchmarkHit), in turn
// (BenchmarkHitInterleaved), and from parallelReaders goroutines at once,
// each on keys of its own (BenchmarkHitParallelSpread) or all on one hot key
// (BenchmarkHitParallel).
const (
	// parallelReaders is how many goroutines the parallel benchmarks read
	// from, as a service handling many requests at once; redis-benchmark's
	// row uses as many connections.
	parallelReaders = 64
	// hitKeys is how many entries each hit case keeps warm: slot 0 is the
	// hot key, and in BenchmarkHitParallelSpread reader i reads slots
	// i*keysPerReader to (i+1)*keysPerReader-1 in turn, keys no other
	// reader reads, so that a library that shares a GET among concurrent
	// readers of one key gains nothing there.
	hitKeys       = 1024
	keysPerReader = hitKeys / parallelReaders
	// localEntries is the size of every local tier in the hit cases: all
	// hitKeys fit.
	localEntries = 2 * hitKeys
)

// A hitCase reads the cached payload of one slot.
type hitCase struct {
	name string
	// redisTier is set when every read is a round trip to Redis (no
	// in-process copy): BenchmarkHitInterleaved compares those.
	redisTier bool
	get       func(ctx context.Context, slot int) ([]row, error)
}

// decode is the MessagePack decode of the payload, the same in every case
// that stores bytes.
func decode(data []byte, err error) ([]row, error) {
	if err != nil {
		return nil, err
	}
	var v []row
	err = msgpack.Unmarshal(data, &v)
	return v, err
}

// newRueidis returns a rueidis client to the benchmarks' server, closed when
// tb ends.
func newRueidis(tb testing.TB, opt rueidis.ClientOption) rueidis.Client {
	tb.Helper()
	opt.InitAddress = []string{redisAddr}
	c, err := rueidis.NewClient(opt)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// hitCases returns, for each library, a read of the payload that hits, in
// the order cmd/table prints them. Every slot has been read, so it is warm.
func hitCases(b *testing.B) []hitCase {
	ctx := context.Background()
	rdb := newClient(b)
	rows := payload()
	queries := make([]query, hitKeys)
	for i := range queries {
		queries[i] = query{Region: "Mumbai", Limit: 20 + i}
	}

	// The floor: GET and a MessagePack decode, nothing else.
	data, err := msgpack.Marshal(rows)
	if err != nil {
		b.Fatal(err)
	}
	rawKeys := make([]string, hitKeys)
	prefix := key(uniq("raw")) + ":"
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range rawKeys {
			rawKeys[i] = queries[i].key(prefix)
			p.Set(ctx, rawKeys[i], data, time.Hour)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	raw := func(ctx context.Context, slot int) ([]row, error) {
		return decode(rdb.Get(ctx, rawKeys[slot]).Bytes())
	}

	leaderboard := func(context.Context, query) ([]row, error) { return rows, nil }
	memo := cache.Memoize(newManager(b, rdb, nil), uniq("leaderboard"), leaderboard, cache.TTL(time.Hour))
	// The same with stockpot's in-process tier, sized and timed as
	// go-redis/cache's TinyLFU below.
	localMemo := cache.Memoize(newManager(b, rdb, &cache.Options{
		Local: &cache.LocalOptions{MaxEntries: localEntries, TTL: time.Minute},
	}), uniq("leaderboard"), leaderboard, cache.TTL(time.Hour))

	once := func(c *gocache.Cache) func(ctx context.Context, slot int) ([]row, error) {
		prefix := key(uniq("gc")) + ":"
		return func(ctx context.Context, slot int) ([]row, error) {
			q := queries[slot]
			var v []row
			err := c.Once(&gocache.Item{
				Ctx: ctx, Key: q.key(prefix), Value: &v, TTL: time.Hour,
				Do: func(*gocache.Item) (any, error) { return leaderboard(ctx, q) },
			})
			return v, err
		}
	}
	// Two go-redis/cache instances: one on Redis only, one with the
	// in-process TinyLFU its README suggests.
	goredisCache := gocache.New(&gocache.Options{Redis: rdb})
	goredisCacheLocal := gocache.New(&gocache.Options{
		Redis:      rdb,
		LocalCache: gocache.NewTinyLFU(localEntries, time.Minute),
	})

	cases := []hitCase{
		{"raw-go-redis", true, raw},
		{"stockpot", true, func(ctx context.Context, slot int) ([]row, error) { return memo.Get(ctx, queries[slot]) }},
		{"stockpot-local", false, func(ctx context.Context, slot int) ([]row, error) { return localMemo.Get(ctx, queries[slot]) }},
		{"go-redis-cache", true, once(goredisCache)},
		{"go-redis-cache-local", false, once(goredisCacheLocal)},
	}
	cases = append(cases, rueidisCases(b, rawKeys)...)
	cases = append(cases, hitCase{"rockscache", true, rockscacheRead(rdb, queries, leaderboard)})
	warm(b, cases)
	return cases
}

// rueidisCases returns the reads of rawKeys with rueidis: it is a client,
// not a cache, so the caller writes the cache-aside around it. Three
// clients: one that takes a pooled connection for every command (as
// go-redis does), one that auto-pipelines concurrent commands on one
// connection (its default), and its server-assisted client-side cache
// (RESP3 tracking; a hit there is a local hit, still decoded from bytes).
func rueidisCases(b *testing.B, rawKeys []string) []hitCase {
	get := func(c rueidis.Client) func(ctx context.Context, slot int) ([]row, error) {
		return func(ctx context.Context, slot int) ([]row, error) {
			return decode(c.Do(ctx, c.B().Get().Key(rawKeys[slot]).Build()).AsBytes())
		}
	}
	cached := newRueidis(b, rueidis.ClientOption{CacheSizeEachConn: 16 << 20})
	return []hitCase{
		{"rueidis", true, get(newRueidis(b, rueidis.ClientOption{DisableCache: true, DisableAutoPipelining: true}))},
		{"rueidis-auto", true, get(newRueidis(b, rueidis.ClientOption{DisableCache: true}))},
		{"rueidis-cached", false, func(ctx context.Context, slot int) ([]row, error) {
			return decode(cached.DoCache(ctx, cached.B().Get().Key(rawKeys[slot]).Cache(), time.Minute).AsBytes())
		}},
	}
}

// rockscacheRead returns the read of queries[slot] with rockscache, which
// keeps each entry in a hash, reads it with a script, and shares one read
// among concurrent readers of a key (singleflight). Its values are strings.
func rockscacheRead(rdb *redis.Client, queries []query, load func(context.Context, query) ([]row, error)) func(ctx context.Context, slot int) ([]row, error) {
	rc := rockscache.NewClient(rdb, rockscache.NewDefaultOptions())
	prefix := key(uniq("rc")) + ":"
	return func(ctx context.Context, slot int) ([]row, error) {
		q := queries[slot]
		s, err := rc.Fetch2(ctx, q.key(prefix), time.Hour, func() (string, error) {
			v, err := load(ctx, q)
			if err != nil {
				return "", err
			}
			data, err := msgpack.Marshal(v)
			return string(data), err
		})
		if err != nil {
			return nil, err
		}
		return decode([]byte(s), nil)
	}
}

// warm reads every slot of every case twice (the first read may load), from
// a few goroutines, and checks what it read.
func warm(b *testing.B, cases []hitCase) {
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Go(func() {
			for _, c := range cases {
				for slot := w; slot < hitKeys; slot += 16 {
					for range 2 {
						v, err := c.get(ctx, slot)
						if err == nil && (len(v) != 20 || v[19].Tags["region"] != "Mumbai") {
							err = errNotPayload
						}
						if err != nil {
							errs <- err
							return
						}
					}
				}
			}
		})
	}
	within(b, "the hit cases to warm up", wg.Wait)
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkHit reads a cached payload, one read at a time.
func BenchmarkHit(b *testing.B) {
	ctx := context.Background()
	for _, c := range rotate(hitCases(b)) {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.get(ctx, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHitInterleaved reads the hot key of the Redis-tier cases in
// turn, one read of each per iteration (in an order that rotates), and
// reports each case's median and mean read as <name>-p50-ns and
// <name>-mean-ns. On a shared machine, whose speed drifts from one second
// to the next, this compares the cases at the same moments, where
// BenchmarkHit runs them one after another.
func BenchmarkHitInterleaved(b *testing.B) {
	ctx := context.Background()
	var cases []hitCase
	for _, c := range hitCases(b) {
		if c.redisTier {
			cases = append(cases, c)
		}
	}
	b.ReportAllocs()
	lat := make([][]time.Duration, len(cases))
	i := 0
	for b.Loop() {
		for k := range cases {
			j := (i + k) % len(cases)
			t0 := time.Now()
			if _, err := cases[j].get(ctx, 0); err != nil {
				b.Fatal(err)
			}
			lat[j] = append(lat[j], time.Since(t0))
		}
		i++
	}
	for j, c := range cases {
		var sum time.Duration
		for _, d := range lat[j] {
			sum += d
		}
		slices.Sort(lat[j])
		b.ReportMetric(float64(lat[j][len(lat[j])/2].Nanoseconds()), c.name+"-p50-ns")
		b.ReportMetric(float64(sum.Nanoseconds())/float64(len(lat[j])), c.name+"-mean-ns")
	}
}

// BenchmarkHitParallel is BenchmarkHit from parallelReaders goroutines at
// once, all reading one hot key: the case where sharing one GET among
// concurrent readers pays.
func BenchmarkHitParallel(b *testing.B) {
	benchHitParallel(b, func(int, int) int { return 0 })
}

// BenchmarkHitParallelSpread is BenchmarkHitParallel with keys of its own
// for each goroutine (keysPerReader of them, read in turn), so that no two
// reads in flight are of the same key.
func BenchmarkHitParallelSpread(b *testing.B) {
	benchHitParallel(b, func(reader, i int) int { return reader*keysPerReader + i%keysPerReader })
}

// benchHitParallel runs the hit cases with b.RunParallel from
// parallelReaders goroutines, reader r's read number i reading the slot
// slot(r, i) returns.
func benchHitParallel(b *testing.B, slot func(reader, i int) int) {
	ctx := context.Background()
	procs := runtime.GOMAXPROCS(0)
	for _, c := range rotate(hitCases(b)) {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism((parallelReaders + procs - 1) / procs)
			var next atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				reader := int(next.Add(1)-1) % parallelReaders
				for i := 0; pb.Next(); i++ {
					if _, err := c.get(ctx, slot(reader, i)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
