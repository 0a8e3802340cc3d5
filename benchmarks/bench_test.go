package benchmarks

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bsm/redislock"
	gocache "github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/stockpot-go/cache"
)

// Every benchmark runs against one real redis-server (see TestMain) and has
// a raw go-redis row in the same run; cmd/table divides by it. The payload
// is the same everywhere: 20 rows of a small struct, about 2 KB of
// MessagePack.

type row struct {
	ID      int64             `json:"id" msgpack:"id"`
	Outlet  string            `json:"outlet" msgpack:"outlet"`
	Revenue float64           `json:"revenue" msgpack:"revenue"`
	Orders  int               `json:"orders" msgpack:"orders"`
	Items   []string          `json:"items" msgpack:"items"`
	Tags    map[string]string `json:"tags" msgpack:"tags"`
}

func payload() []row {
	rows := make([]row, 20)
	for i := range rows {
		rows[i] = row{
			ID: int64(i), Outlet: "outlet-42", Revenue: 1234.5 * float64(i), Orders: i * 3,
			Items: []string{"mango", "pista", "kulfi"}, Tags: map[string]string{"region": "Mumbai"},
		}
	}
	return rows
}

// errNotPayload is a read that returned something else than the payload.
var errNotPayload = errors.New("read something else than the payload")

// checkRows fails b unless rows is the payload's shape.
func checkRows(b *testing.B, rows []row, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
	if len(rows) != 20 || rows[19].Outlet != "outlet-42" || rows[19].Tags["region"] != "Mumbai" {
		b.Fatalf("got %d rows, not the payload", len(rows))
	}
}

// query is the argument of the memoized function, as a dashboard's
// leaderboard takes it. go-redis/cache takes a string key, so its rows build
// one from the query, as a caller of it would.
type query struct {
	Region string
	Limit  int
}

// key returns q's key for go-redis/cache, under prefix.
func (q query) key(prefix string) string {
	return prefix + "leaderboard:" + q.Region + ":" + strconv.Itoa(q.Limit)
}

// leaderboardQuery is the argument of the read scenarios' memos.
var leaderboardQuery = query{Region: "Mumbai", Limit: 20}

// runID makes this process's keys its own, so that a shared server named by
// REDIS_ADDR needs no flush and keeps no state between runs.
var runID = strconv.FormatInt(time.Now().UnixNano(), 36)

// key returns a raw key of this run.
func key(name string) string { return "bench:" + runID + ":" + name }

// seq numbers the entries and memos the benchmarks make, so that no run of
// a benchmark finds what an earlier one (with -count) stored.
var seq atomic.Int64

// uniq returns name followed by a number of its own.
func uniq(name string) string { return name + "-" + strconv.FormatInt(seq.Add(1), 10) }

// rotate returns s starting from its element number BENCH_RUN (modulo its
// length; run.sh numbers its runs from 1), so that over several runs every
// library takes every place in the order: a machine that is slower just
// after the setup, or as a process ages, does not always hurt the same one.
func rotate[T any](s []T) []T {
	n, _ := strconv.Atoi(os.Getenv("BENCH_RUN"))
	if len(s) == 0 || n <= 0 {
		return s
	}
	n %= len(s)
	return append(slices.Clone(s[n:]), s[:n]...)
}

// newManager returns a stockpot Manager over rdb, closed when b ends.
func newManager(b *testing.B, rdb redis.UniversalClient, opts *cache.Options) *cache.Manager {
	b.Helper()
	var o cache.Options
	if opts != nil {
		o = *opts
	}
	o.Prefix = "stockpot-bench-" + runID
	if o.Timeout == 0 {
		// The benchmarks measure the work, not the time budget: on a busy
		// shared machine a stall past the default 150ms would turn a read
		// into a fallback to the loader, and a lock into an error.
		o.Timeout = 5 * time.Second
	}
	m, err := cache.New(rdb, &o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { within(b, "the Manager to close", func() { _ = m.Close() }) })
	return m
}

// The stampede: a key nobody has cached, read at once by callersPerInstance
// goroutines in each of instances service instances (each with its own
// client, connection pool and cache object), with a loader that takes
// loadTime.
const (
	instances          = 4
	callersPerInstance = 250
	loadTime           = 50 * time.Millisecond
)

// loader is the slow function behind a cache: it counts its calls and takes
// loadTime.
type loader struct {
	calls atomic.Int64
	rows  []row
}

func (l *loader) load(ctx context.Context) ([]row, error) {
	l.calls.Add(1)
	t := time.NewTimer(loadTime)
	defer t.Stop()
	select {
	case <-t.C:
		return l.rows, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// A stampedeLib builds one instance of a library over rdb; its read of key n
// loads with l on a miss.
type stampedeLib struct {
	name     string
	instance func(b *testing.B, rdb *redis.Client, l *loader) func(ctx context.Context, n int) ([]row, error)
}

var stampedeLibs = []stampedeLib{
	{"raw-go-redis", func(b *testing.B, rdb *redis.Client, l *loader) func(context.Context, int) ([]row, error) {
		// Hand-written cache-aside: GET, and on a miss load and SET.
		return func(ctx context.Context, n int) ([]row, error) {
			k := key("stampede:" + strconv.Itoa(n))
			data, err := rdb.Get(ctx, k).Bytes()
			if err == nil {
				var v []row
				err = msgpack.Unmarshal(data, &v)
				return v, err
			}
			if !errors.Is(err, redis.Nil) {
				return nil, err
			}
			v, err := l.load(ctx)
			if err != nil {
				return nil, err
			}
			if data, err = msgpack.Marshal(v); err != nil {
				return nil, err
			}
			return v, rdb.Set(ctx, k, data, time.Hour).Err()
		}
	}},
	{"stockpot", func(b *testing.B, rdb *redis.Client, l *loader) func(context.Context, int) ([]row, error) {
		memo := cache.Memoize(newManager(b, rdb, nil), "stampede",
			func(ctx context.Context, _ int) ([]row, error) { return l.load(ctx) }, cache.TTL(time.Hour))
		return memo.Get
	}},
	{"go-redis-cache", func(b *testing.B, rdb *redis.Client, l *loader) func(context.Context, int) ([]row, error) {
		c := gocache.New(&gocache.Options{Redis: rdb})
		return func(ctx context.Context, n int) ([]row, error) {
			var v []row
			err := c.Once(&gocache.Item{
				Ctx: ctx, Key: key("gc-stampede:" + strconv.Itoa(n)), Value: &v, TTL: time.Hour,
				Do: func(*gocache.Item) (any, error) { return l.load(ctx) },
			})
			return v, err
		}
	}},
}

// BenchmarkStampede reports, per stampede, its wall time (ns/op: from the
// moment all callers are released until the last has its value), how many
// times the loader ran (loads/op), and the median caller's wait (p50-ns).
func BenchmarkStampede(b *testing.B) {
	ctx := context.Background()
	for _, lib := range rotate(stampedeLibs) {
		b.Run(lib.name, func(b *testing.B) {
			b.ReportAllocs()
			l := &loader{rows: payload()}
			gets := make([]func(context.Context, int) ([]row, error), instances)
			for i := range gets {
				gets[i] = lib.instance(b, newClient(b), l)
			}
			// stampede runs one stampede on a key nobody has read and
			// returns each caller's wait. With timed, it starts the timer
			// as the callers are released, and leaves it running.
			stampede := func(timed bool) []time.Duration {
				n := int(seq.Add(1))
				start := make(chan struct{})
				var t0 time.Time
				waits := make([]time.Duration, len(gets)*callersPerInstance)
				var wg sync.WaitGroup
				var failed atomic.Pointer[error]
				for i, get := range gets {
					for j := range callersPerInstance {
						wg.Go(func() {
							<-start
							v, err := get(ctx, n)
							waits[i*callersPerInstance+j] = time.Since(t0)
							if err == nil && len(v) != 20 {
								err = fmt.Errorf("got %d rows", len(v))
							}
							if err != nil {
								failed.CompareAndSwap(nil, &err)
							}
						})
					}
				}
				if timed {
					b.StartTimer()
				}
				t0 = time.Now()
				close(start)
				within(b, "the stampede's callers to get their values", wg.Wait)
				if err := failed.Load(); err != nil {
					b.Fatal(*err)
				}
				return waits
			}
			stampede(false) // fills the connection pools
			l.calls.Store(0)
			var waits []time.Duration
			for b.Loop() {
				b.StopTimer()
				waits = append(waits, stampede(true)...)
			}
			slices.Sort(waits)
			b.ReportMetric(float64(l.calls.Load())/float64(b.N), "loads/op")
			b.ReportMetric(float64(waits[len(waits)/2].Nanoseconds()), "p50-ns")
		})
	}
}

// Reads while entries expire. Each scenario reads one entry for readFor at a
// steady readsPerTick reads every millisecond (open loop: a read that waits
// does not delay the next arrivals, as with requests to a service), and
// reports the latency percentiles of the reads. The entries' TTL is 1 s, the
// shortest go-redis/cache takes (below 1 s it stores for an hour instead),
// so each expiring scenario sees two or three expiries of a loader that
// takes loadTime.
const (
	refreshTTL   = time.Second
	readFor      = 3 * time.Second
	readsPerTick = 4
)

// A readScenario is one entry and how it is read.
type readScenario struct {
	name string
	// setup returns the read, after reading once so that the entry is
	// stored.
	setup func(b *testing.B, l *loader) func(ctx context.Context) ([]row, error)
}

// memoRead returns a read of a memo of l under opts.
func memoRead(b *testing.B, l *loader, opts ...cache.Option) func(context.Context) ([]row, error) {
	memo := cache.Memoize(newManager(b, newClient(b), nil), uniq("feed"),
		func(ctx context.Context, _ query) ([]row, error) { return l.load(ctx) }, opts...)
	return func(ctx context.Context) ([]row, error) { return memo.Get(ctx, leaderboardQuery) }
}

// onceRead returns a read with go-redis/cache's Once of l with ttl.
func onceRead(b *testing.B, l *loader, ttl time.Duration) func(context.Context) ([]row, error) {
	c := gocache.New(&gocache.Options{Redis: newClient(b)})
	k := key(uniq("gc-feed"))
	return func(ctx context.Context) ([]row, error) {
		var v []row
		err := c.Once(&gocache.Item{
			Ctx: ctx, Key: k, Value: &v, TTL: ttl,
			Do: func(*gocache.Item) (any, error) { return l.load(ctx) },
		})
		return v, err
	}
}

var readScenarios = []readScenario{
	{"raw-go-redis-hit", func(b *testing.B, l *loader) func(context.Context) ([]row, error) {
		rdb := newClient(b)
		k := key(uniq("feed"))
		data, err := msgpack.Marshal(l.rows)
		if err != nil {
			b.Fatal(err)
		}
		if err := rdb.Set(context.Background(), k, data, time.Hour).Err(); err != nil {
			b.Fatal(err)
		}
		return func(ctx context.Context) ([]row, error) {
			data, err := rdb.Get(ctx, k).Bytes()
			if err != nil {
				return nil, err
			}
			var v []row
			err = msgpack.Unmarshal(data, &v)
			return v, err
		}
	}},
	{"stockpot-hit", func(b *testing.B, l *loader) func(context.Context) ([]row, error) {
		return memoRead(b, l, cache.TTL(time.Hour))
	}},
	{"stockpot-stalefor", func(b *testing.B, l *loader) func(context.Context) ([]row, error) {
		return memoRead(b, l, cache.TTL(refreshTTL), cache.StaleFor(time.Minute))
	}},
	{"stockpot-earlyrefresh", func(b *testing.B, l *loader) func(context.Context) ([]row, error) {
		return memoRead(b, l, cache.TTL(refreshTTL), cache.EarlyRefresh(1))
	}},
	{"go-redis-cache-hit", func(b *testing.B, l *loader) func(context.Context) ([]row, error) {
		return onceRead(b, l, time.Hour)
	}},
	{"go-redis-cache-expiry", func(b *testing.B, l *loader) func(context.Context) ([]row, error) {
		return onceRead(b, l, refreshTTL)
	}},
}

// BenchmarkReadDuringRefresh runs each scenario once per iteration (one
// iteration takes readFor, so the default -benchtime runs one) and reports
// p50-ns, p99-ns and p99.9-ns of its reads, waits (reads that took at least
// half the loader's time, so waited for it), reads and loads.
func BenchmarkReadDuringRefresh(b *testing.B) {
	ctx := context.Background()
	for _, sc := range rotate(readScenarios) {
		b.Run(sc.name, func(b *testing.B) {
			b.ReportAllocs()
			l := &loader{rows: payload()}
			get := sc.setup(b, l)
			v, err := get(ctx)
			checkRows(b, v, err)
			l.calls.Store(0)
			var lat []time.Duration
			for b.Loop() {
				lat = append(lat, readSteadily(b, get)...)
			}
			slices.Sort(lat)
			pct := func(p float64) float64 { return float64(lat[int(float64(len(lat)-1)*p)].Nanoseconds()) }
			waits := 0
			if i := slices.IndexFunc(lat, func(d time.Duration) bool { return d >= loadTime/2 }); i >= 0 {
				waits = len(lat) - i
			}
			b.ReportMetric(pct(0.50), "p50-ns")
			b.ReportMetric(pct(0.99), "p99-ns")
			b.ReportMetric(pct(0.999), "p99.9-ns")
			b.ReportMetric(float64(waits)/float64(b.N), "waits/op")
			b.ReportMetric(float64(len(lat))/float64(b.N), "reads/op")
			b.ReportMetric(float64(l.calls.Load())/float64(b.N), "loads/op")
		})
	}
}

// readSteadily starts readsPerTick reads of get every millisecond for
// readFor (a tenth of it with -short), each on a goroutine of its own, and
// returns their latencies, measured from the moment each was started.
func readSteadily(b *testing.B, get func(context.Context) ([]row, error)) []time.Duration {
	ctx := context.Background()
	readFor := readFor
	if testing.Short() {
		readFor /= 10 // a smoke run (.ci/run): the code runs, the figures mean little
	}
	lat := make([]time.Duration, int(readFor/time.Millisecond)*readsPerTick*2)
	var n atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(readFor); time.Now().Before(end); <-tick.C {
		for range readsPerTick {
			t0 := time.Now()
			wg.Go(func() {
				v, err := get(ctx)
				d := time.Since(t0)
				if err == nil && len(v) != 20 {
					err = fmt.Errorf("got %d rows", len(v))
				}
				if err != nil {
					failed.CompareAndSwap(nil, &err)
				}
				if i := n.Add(1) - 1; int(i) < len(lat) {
					lat[i] = d
				}
			})
		}
	}
	within(b, "the steady reads to return", wg.Wait)
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	return lat[:min(int(n.Load()), len(lat))]
}

// lockTTL is not a whole number of seconds, so that every library sends PX.
const lockTTL = 2500 * time.Millisecond

// rawRelease deletes a lock key while it holds the caller's token.
var rawRelease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

var errNotObtained = errors.New("lock not obtained")

// A lockCase obtains and releases the lock name, uncontended.
type lockCase struct {
	name string
	lock func(ctx context.Context, name string) error
}

func lockCases(b *testing.B) []lockCase {
	rdb := newClient(b)
	m := newManager(b, rdb, nil)
	locker := redislock.New(rdb)
	cases := []lockCase{
		{"raw-go-redis", func(ctx context.Context, name string) error {
			// A random token, SET NX PX, and an owner-checked DEL script.
			k, token := key("lock:"+name), rand.Text()
			ok, err := rdb.SetNX(ctx, k, token, lockTTL).Result()
			switch {
			case err != nil:
				return err
			case !ok:
				return errNotObtained
			}
			n, err := rawRelease.Run(ctx, rdb, []string{k}, token).Int()
			if err == nil && n != 1 {
				err = errors.New("lock lost")
			}
			return err
		}},
		{"stockpot", func(ctx context.Context, name string) error {
			l, err := m.TryLock(ctx, name, lockTTL)
			if err != nil {
				return err
			}
			return l.Release(ctx)
		}},
		{"redislock", func(ctx context.Context, name string) error {
			l, err := locker.Obtain(ctx, key("redislock:"+name), lockTTL, nil)
			if err != nil {
				return err
			}
			return l.Release(ctx)
		}},
	}
	// Load each one's scripts, so that none pays for it while measured.
	for _, c := range cases {
		if err := c.lock(context.Background(), "warm-up"); err != nil {
			b.Fatal(err)
		}
	}
	return cases
}

// BenchmarkLock obtains and releases an uncontended lock.
func BenchmarkLock(b *testing.B) {
	ctx := context.Background()
	for _, c := range rotate(lockCases(b)) {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.lock(ctx, "oven"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLockParallel is BenchmarkLock from 4 goroutines per CPU, each on
// a lock of its own.
func BenchmarkLockParallel(b *testing.B) {
	ctx := context.Background()
	var next atomic.Int64
	for _, c := range rotate(lockCases(b)) {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				name := "oven:" + strconv.FormatInt(next.Add(1), 10)
				for pb.Next() {
					if err := c.lock(ctx, name); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
