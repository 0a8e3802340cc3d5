package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/stockpot-go/cache/internal/testredis"
)

// A stampede across a fleet: many instances of a service, each with a
// Manager on a client of its own, ask one cold key at once. One instance
// loads it; the others wait for its value. fleetStampede runs one on a real
// Redis and measures what it cost: how many loads (one, across the fleet),
// how many Redis commands, per instance, and how long the callers waited.
// TestFleetStampedeCommands holds the fleet to a bound on those commands;
// TestFleetStampedeTable prints them for fleets and loads of several sizes.

// maxFleetCommandsPerInstance is the most Redis commands a stampede may
// cost per instance of the fleet (fleetResult.perInstance), whatever the
// load's duration and the number of instances.
const maxFleetCommandsPerInstance = 6

const (
	// fleetPoolSize is the connection pool of each instance's client (on
	// each node, on a cluster): small, since a fleet of 256 instances opens
	// that many pools on every node.
	fleetPoolSize = 4
	// fleetGrace is how long a stampede's callers may take beyond the
	// load's duration before the stampede fails.
	fleetGrace = 30 * time.Second
	// fleetSettle bounds the wait, once the last caller has returned, for
	// the background work the stampede started in the Managers (a load
	// job's last commands) to end, so that its commands are counted.
	fleetSettle = 2 * time.Second
	// fleetTableEnv turns TestFleetStampedeTable on when set to 1.
	fleetTableEnv = "STOCKPOT_FLEET_TABLE"
)

// fleetRuns numbers the stampedes of the test binary, so that each asks a
// key of its own.
var fleetRuns atomic.Int64

// fleetResult is what one stampede cost.
type fleetResult struct {
	backend  string        // "redis" (a single node) or "cluster"
	kind     string        // "key" (GetOrLoad) or "memo" (Memo.Get)
	managers int           // instances in the fleet, each a Manager on a client of its own
	callers  int           // callers per Manager
	load     time.Duration // how long the loader takes

	loads int64 // loader calls across the fleet: 1 when the stampede is deduplicated

	// commands is how many commands Redis ran from the callers' release
	// until the fleet's work was done: the sum over the masters of INFO
	// stats's total_commands_processed, less the INFO calls that read it.
	// As INFO counts them, the commands a script runs (redis.call) count
	// as well as the script's call, and a connection a client opened
	// meanwhile counts its HELLO and CLIENT SETINFO.
	commands int64
	// perInstance is commands / managers. INFO cannot tell the instances'
	// commands apart, so this spreads the loading instance's (a read, a
	// lease, a store: a handful) over the fleet: it is a waiting
	// instance's cost to within that handful divided by managers.
	perInstance float64

	wall    time.Duration // from the callers' release to the last one's return
	slowest time.Duration // the longest call, from its start to its return

	wrong      int    // callers that got an error, or a value other than the loader's
	firstWrong string // what the first of them got
	degraded   uint64 // loaded reads answered by the loader alone, Redis failing (Counters.Degraded)
	redisErrs  uint64 // Redis calls that failed (Counters.RedisErrors)
	unsettled  int    // Managers whose background work had not ended fleetSettle after the last return
}

// String describes r on one line, for logs and failure messages.
func (r fleetResult) String() string {
	s := fmt.Sprintf("%s, %s: %d Managers × %d callers, load %v: %d loads, %d commands (%.1f per instance), wall %v, slowest caller %v",
		r.backend, r.kind, r.managers, r.callers, r.load, r.loads, r.commands, r.perInstance,
		r.wall.Round(time.Millisecond), r.slowest.Round(time.Millisecond))
	if r.degraded > 0 || r.redisErrs > 0 {
		s += fmt.Sprintf("; %d degraded reads, %d Redis errors", r.degraded, r.redisErrs)
	}
	if r.unsettled > 0 {
		s += fmt.Sprintf("; %d Managers' background work still ran %v after the last caller returned (its later commands are not counted)", r.unsettled, fleetSettle)
	}
	return s
}

// fleetBackend returns the backend named name: "redis" for a fresh
// redis-server, "cluster" for the shared cluster (with every key deleted).
// It skips or fails t as testredis does when redis-server is missing.
func fleetBackend(t *testing.T, name string) *testredis.Backend {
	t.Helper()
	switch name {
	case "redis":
		return &testredis.Backend{Name: name, Server: testredis.Start(t)}
	case "cluster":
		return &testredis.Backend{Name: name, Cluster: testredis.SharedCluster(t)}
	}
	t.Fatalf("no fleet backend %q", name)
	return nil
}

// fleet is the instances of a stampede: a client of its own for each
// Manager, and a client on each master to read INFO with.
type fleet struct {
	rdbs  []redis.UniversalClient
	ms    []*Manager
	nodes []*redis.Client
}

// newFleet returns n Managers on b, each on a new client with a pool of
// fleetPoolSize connections (and no idle ones kept open), and a client on
// each of b's masters, connected. Its clients are closed in t.Cleanup, and
// by close.
func newFleet(t *testing.T, b *testredis.Backend, n int) *fleet {
	t.Helper()
	f := &fleet{}
	switch {
	case b.Server != nil:
		f.nodes = append(f.nodes, b.Server.Client(t))
		for range n {
			f.rdbs = append(f.rdbs, b.Server.ClientWith(t, func(o *redis.Options) {
				o.PoolSize, o.MinIdleConns = fleetPoolSize, 0
			}))
		}
	case b.Cluster != nil:
		for _, addr := range b.Cluster.Addrs() {
			node := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second})
			t.Cleanup(func() { _ = node.Close() })
			f.nodes = append(f.nodes, node)
		}
		for range n {
			f.rdbs = append(f.rdbs, b.Cluster.ClientWith(t, func(o *redis.ClusterOptions) {
				o.PoolSize, o.MinIdleConns = fleetPoolSize, 0
			}))
		}
	default:
		t.Fatalf("a fleet needs a real redis-server or cluster (INFO stats counts its commands), not %s", b.Name)
	}
	for _, node := range f.nodes {
		if err := node.Ping(t.Context()).Err(); err != nil {
			t.Fatalf("PING %s: %v", node.Options().Addr, err)
		}
	}
	for _, rdb := range f.rdbs {
		m, err := New(rdb, &Options{Prefix: "fleet"})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		f.ms = append(f.ms, m)
		t.Cleanup(func() { closeWithin(t, m) })
	}
	for _, m := range f.ms {
		scriptsLoaded(t, m)
	}
	return f
}

// fillPool opens up to n connections in c's pool (for a cluster's client,
// in each master's), PINGing each, so that the measured calls find them
// open: a connection opened while Redis counts costs three commands more
// (HELLO and two CLIENT SETINFO).
func fillPool(ctx context.Context, rdb redis.UniversalClient, n int) error {
	fill := func(ctx context.Context, c *redis.Client) error {
		conns := make([]*redis.Conn, 0, n)
		defer func() {
			for _, cn := range conns {
				_ = cn.Close() // back to the pool
			}
		}()
		for range n {
			cn := c.Conn()
			conns = append(conns, cn)
			if err := cn.Ping(ctx).Err(); err != nil {
				return err
			}
		}
		return nil
	}
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		return c.ForEachShard(ctx, fill)
	case *redis.Client:
		return fill(ctx, c)
	}
	return fmt.Errorf("no pool to fill in a %T", rdb)
}

// commandsProcessed returns the sum of total_commands_processed in INFO
// stats over the nodes. Redis counts an INFO after answering it: a read
// does not count itself, the next read does.
func (f *fleet) commandsProcessed(t *testing.T) int64 {
	t.Helper()
	var sum int64
	for _, node := range f.nodes {
		info, err := node.Info(t.Context(), "stats").Result()
		if err != nil {
			t.Fatalf("INFO stats on %s: %v", node.Options().Addr, err)
		}
		n := int64(-1)
		for line := range strings.Lines(info) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_commands_processed:"); ok {
				n, err = strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatalf("INFO stats on %s: total_commands_processed %q: %v", node.Options().Addr, v, err)
				}
			}
		}
		if n < 0 {
			t.Fatalf("INFO stats on %s has no total_commands_processed:\n%s", node.Options().Addr, info)
		}
		sum += n
	}
	return sum
}

// close closes the fleet's Managers and clients, each within
// testredis.Timeout.
func (f *fleet) close(t *testing.T) {
	t.Helper()
	for _, m := range f.ms {
		closeWithin(t, m)
	}
	for _, rdb := range f.rdbs {
		testredis.CloseWithin(t, "a fleet instance's client", rdb)
	}
	for _, node := range f.nodes {
		testredis.CloseWithin(t, "the client reading INFO", node)
	}
}

// caller is one caller of a stampede: what it got, and when.
type caller struct {
	v     string
	err   error
	took  time.Duration // from its call to its return
	ended time.Time
}

// fleetStampede runs a stampede on b and returns what it cost: managers
// Managers, each on a client of its own (a fleet of managers instances),
// are warmed up (their connections opened, their scripts loaded, a cache
// call made on another key); then perManager callers on each, released at
// once, ask one cold key, with GetOrLoad (kind "key") or a Memo's Get
// (kind "memo"), of a loader that takes load. Redis's commands are counted
// from the release until the last caller has returned and the Managers'
// background work has ended (see fleetResult.commands). The callers must
// all return within load plus fleetGrace. The fleet is closed before
// fleetStampede returns, and must leave no goroutine behind.
func fleetStampede(t *testing.T, b *testredis.Backend, managers, perManager int, load time.Duration, kind string) fleetResult {
	t.Helper()
	r := fleetResult{backend: b.Name, kind: kind, managers: managers, callers: perManager, load: load}
	run := fleetRuns.Add(1)
	key := fmt.Sprintf("cold:%s:%d", kind, run)
	want := fmt.Sprintf("loaded by run %d", run)
	var loads atomic.Int64
	loader := func(ctx context.Context) (string, error) {
		loads.Add(1)
		timer := time.NewTimer(load)
		defer timer.Stop()
		select {
		case <-timer.C:
			return want, nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}

	leaks := goleak.IgnoreCurrent()
	f := newFleet(t, b, managers)
	calls := fleetCalls(t, f, kind, key, perManager, loader)

	ctx, cancel := context.WithTimeout(t.Context(), load+fleetGrace)
	defer cancel()
	release := make(chan struct{})
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	defer open() // a test that fails before the release lets its callers go
	out, ready, done := startCallers(ctx, calls, perManager, release)
	testredis.Wait(t, ready, "the stampede's callers to be ready")
	tasks := make([]int64, managers)
	for i, m := range f.ms {
		tasks[i] = m.tasks.Load()
	}
	before := f.commandsProcessed(t)
	released := time.Now()
	open()
	testredis.WaitFor(t, done, load+fleetGrace,
		fmt.Sprintf("the %d callers of the stampede (%d Managers, a load of %v) to return", len(out), managers, load))
	r.unsettled = fleetSettled(f, tasks)
	r.commands = f.commandsProcessed(t) - before - int64(len(f.nodes)) // the first reads' INFO
	r.perInstance = float64(r.commands) / float64(managers)
	r.loads = loads.Load()
	r.tally(out, released, want)
	for _, m := range f.ms {
		s := m.Stats().Total
		r.degraded += s.Degraded
		r.redisErrs += s.RedisErrors
	}
	f.close(t)
	goleak.VerifyNone(t, leaks)
	return r
}

// startCallers starts perManager callers of each of calls, on ctx, held
// until release is closed. Each caller is counted done in ready once it
// waits for the release, and in done once it has returned, when its
// outcome in out is set.
func startCallers(ctx context.Context, calls []func(context.Context) (string, error), perManager int, release <-chan struct{}) (out []caller, ready, done *sync.WaitGroup) {
	ready, done = &sync.WaitGroup{}, &sync.WaitGroup{}
	out = make([]caller, len(calls)*perManager)
	for i := range out {
		call := calls[i/perManager]
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-release
			start := time.Now()
			v, err := call(ctx)
			out[i] = caller{v: v, err: err, took: time.Since(start), ended: time.Now()}
		}()
	}
	return out, ready, done
}

// tally sets r's times from the callers' outcomes, released at released,
// and counts those that did not get want.
func (r *fleetResult) tally(out []caller, released time.Time, want string) {
	for _, c := range out {
		r.wall = max(r.wall, c.ended.Sub(released))
		r.slowest = max(r.slowest, c.took)
		if c.err != nil || c.v != want {
			if r.wrong == 0 {
				r.firstWrong = fmt.Sprintf("%q, %v", c.v, c.err)
			}
			r.wrong++
		}
	}
}

// fleetCalls warms up f's instances, perManager connections open each, and
// returns each Manager's call of key for kind, with loader.
func fleetCalls(t *testing.T, f *fleet, kind, key string, perManager int, loader func(context.Context) (string, error)) []func(context.Context) (string, error) {
	t.Helper()
	calls := make([]func(context.Context) (string, error), len(f.ms))
	warm := make([]func(context.Context) error, len(f.ms))
	// The warm-up is a stampede of its own, on a key in the cold key's
	// slot: each instance then holds its subscription to that slot's lease
	// notices, as an instance of a running service does after its first
	// wait there. That first wait costs it a connection and a SUBSCRIBE
	// more, once.
	warmKey := sameSlotKey("k:"+key, func(i int) string { return fmt.Sprintf("warm:%s:%d", key, i) }, "k:")
	// Its loader returns once every other instance waits on its lease
	// (or after 5s, when some never do).
	warmLoad := func(ctx context.Context) (string, error) {
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			waits := uint64(0)
			for _, m := range f.ms {
				waits += m.Stats().Total.LeaseWaits
			}
			if waits >= uint64(len(f.ms)-1) {
				break
			}
			if err := sleep(ctx, time.Millisecond); err != nil {
				return "", err
			}
		}
		return "warm", nil
	}
	for i, m := range f.ms {
		switch kind {
		case "key":
			calls[i] = func(ctx context.Context) (string, error) { return GetOrLoad(ctx, m, key, loader) }
			warm[i] = func(ctx context.Context) error {
				_, err := GetOrLoad(ctx, m, warmKey, warmLoad)
				return err
			}
		case "memo":
			memo := Memoize(m, "fleet", func(ctx context.Context, arg string) (string, error) {
				if arg != key {
					return warmLoad(ctx) // the warm-up's call, not counted
				}
				return loader(ctx)
			})
			calls[i] = func(ctx context.Context) (string, error) { return memo.Get(ctx, key) }
			warm[i] = func(ctx context.Context) error {
				_, err := memo.Get(ctx, warmKey)
				return err
			}
		default:
			t.Fatalf("no stampede of kind %q: key or memo", kind)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(f.ms))
	for i, rdb := range f.rdbs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := t.Context()
			if err := fillPool(ctx, rdb, min(perManager, fleetPoolSize)); err != nil {
				errs[i] = fmt.Errorf("opening connections: %w", err)
				return
			}
			if err := warm[i](ctx); err != nil {
				errs[i] = fmt.Errorf("the warm-up call: %w", err)
			}
		}()
	}
	testredis.Wait(t, &wg, fmt.Sprintf("the warm-up of %d instances", len(f.ms)))
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("warming the fleet up: %v", err)
	}
	return calls
}

// sameSlotKey returns the first of name(0), name(1), ... whose hash tag,
// prefix+name(i), is in the cluster slot of the hash tag tag.
func sameSlotKey(tag string, name func(i int) string, prefix string) string {
	want := slotOf(tag)
	for i := 0; ; i++ {
		if k := name(i); slotOf(prefix+k) == want {
			return k
		}
	}
}

// fleetSettled waits, for at most fleetSettle, until every Manager of f
// runs no more background work than before the stampede (tasks, by
// Manager), and returns how many still run more. It does not fail: work
// that outlives the stampede on purpose (a subscription, say) is not an
// error; only its later commands go uncounted.
func fleetSettled(f *fleet, tasks []int64) int {
	deadline := time.Now().Add(fleetSettle)
	for {
		busy := 0
		for i, m := range f.ms {
			if m.tasks.Load() > tasks[i] {
				busy++
			}
		}
		if busy == 0 || time.Now().After(deadline) {
			return busy
		}
		time.Sleep(time.Millisecond)
	}
}

// checkFleet fails t when r's stampede loaded more than once, or a caller
// did not get the loaded value.
func checkFleet(t *testing.T, r fleetResult) {
	t.Helper()
	if r.loads != 1 {
		t.Errorf("%v: the loader ran %d times across the fleet, want once", r, r.loads)
	}
	if r.wrong > 0 {
		t.Errorf("%v: %d of %d callers did not get the loaded value; the first got %s", r, r.wrong, r.managers*r.callers, r.firstWrong)
	}
}

// TestFleetStampedeCommands: 64 instances of a service, each a Manager on a
// client of its own, ask one cold key at once, of a loader that takes
// 100ms, on a single node and on a cluster, with GetOrLoad and with a Memo.
// The loader runs once across the fleet, every caller gets its value, and
// the waiting costs Redis at most maxFleetCommandsPerInstance commands per
// instance, with one caller each or four (the callers that arrive while
// their instance's first read is out take its miss as a hint and join its
// load, see readbatch.go). Polling cost 18-35.
func TestFleetStampedeCommands(t *testing.T) {
	const (
		managers = 64
		load     = 100 * time.Millisecond
	)
	for _, backend := range []string{"redis", "cluster"} {
		t.Run(backend, func(t *testing.T) {
			b := fleetBackend(t, backend)
			for _, kind := range []string{"key", "memo"} {
				for _, perManager := range []int{1, 4} {
					t.Run(fmt.Sprintf("%s/%d", kind, perManager), func(t *testing.T) {
						// Callers scheduled late on a loaded machine (the
						// race detector, other test binaries) can arrive
						// after the load's result and read again: the bound
						// must hold in one of three stampedes.
						var r fleetResult
						for try := range 3 {
							r = fleetStampede(t, b, managers, perManager, load, kind)
							t.Logf("try %d: %v", try+1, r)
							checkFleet(t, r)
							if r.perInstance <= maxFleetCommandsPerInstance {
								break
							}
						}
						if r.perInstance > maxFleetCommandsPerInstance {
							t.Errorf("%v: %.1f Redis commands per instance in each of 3 stampedes, want at most %d whatever the load's duration",
								r, r.perInstance, maxFleetCommandsPerInstance)
						}
					})
				}
			}
		})
	}
}

// TestFleetStampedeTable measures stampedes of 4, 64 and 256 instances, 4
// callers each, of loaders of 100ms, 500ms and 2s, on a single node and on
// a cluster, and prints their cost as a markdown table, with the Redis
// commands that 1,000 instances would cost at the same rate per instance.
// It runs when STOCKPOT_FLEET_TABLE=1:
//
//	STOCKPOT_FLEET_TABLE=1 go test -timeout 20m -run TestFleetStampedeTable -v .
func TestFleetStampedeTable(t *testing.T) {
	if os.Getenv(fleetTableEnv) != "1" {
		t.Skipf("set %s=1 to measure stampedes of fleets of several sizes", fleetTableEnv)
	}
	const perManager = 4
	fleets := []int{4, 64, 256}
	loads := []time.Duration{100 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second}
	var rows []fleetResult
	for _, backend := range []string{"redis", "cluster"} {
		t.Run(backend, func(t *testing.T) {
			b := fleetBackend(t, backend)
			for _, n := range fleets {
				for _, load := range loads {
					t.Run(fmt.Sprintf("%d/%v", n, load), func(t *testing.T) {
						r := fleetStampede(t, b, n, perManager, load, "key")
						t.Log(r)
						checkFleet(t, r)
						rows = append(rows, r)
					})
				}
			}
		})
	}
	if len(rows) > 0 {
		fmt.Print(fleetTable(rows, fleets[len(fleets)-1]))
	}
}

// fleetTable returns rows as a markdown table, followed, for each backend
// and load, by a computed line for 1,000 instances at the per-instance
// rate of the fleet of from instances.
func fleetTable(rows []fleetResult, from int) string {
	var s strings.Builder
	fmt.Fprintf(&s, "\nStampedes on one cold key, %d callers per instance, kind %q:\n\n", rows[0].callers, rows[0].kind)
	s.WriteString("| backend | managers | load | loads | commands | per instance | wall time | slowest caller |\n")
	s.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		fmt.Fprintf(&s, "| %s | %d | %v | %d | %d | %.1f | %v | %v |\n", r.backend, r.managers, r.load, r.loads, r.commands,
			r.perInstance, r.wall.Round(time.Millisecond), r.slowest.Round(time.Millisecond))
	}
	for _, r := range rows {
		if r.managers == from {
			fmt.Fprintf(&s, "| %s | 1,000 (computed) | %v | | %.0f | %.1f | | |\n",
				r.backend, r.load, r.perInstance*1000, r.perInstance)
		}
	}
	fmt.Fprintf(&s, "\nThe computed lines are the commands per instance of %d Managers × 1,000.\n", from)
	return s.String()
}
