package cache_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/anishathalye/porcupine"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	cache "github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/internal/testredis"
)

// The stale-set checker: a linearizability checker (porcupine) of the
// Redis tier against DESIGN property 4, under races, restarts, eviction,
// latency, and failovers of a cluster's masters and of a Sentinel set-up's,
// planned and by killing the master. The failover configurations set
// Options.WaitReplicas: without it, replication being asynchronous, a
// master that fails over may lose an invalidation it acknowledged, and the
// checker finds the stale reads that follow. The cluster's killed masters
// run only in the long run.
//
// A fleet of Managers, each on its own client, caches the items of a source
// (an in-process map of versions). Writers update an item's source version,
// then publish the change through one of the ways that name the item: an
// Invalidate of its Key, Hash.Field, Hash.AllFields, Memo.Entry, Memo.All,
// Tag or Prefix, or a Refresh (cache.Refresh, Hash.Refresh, Memo.Refresh)
// that loads it anew. A write's interval runs from before the source update
// to after the publishing call returns. Readers read items through
// GetOrLoad, Hash.GetOrLoad and Memo.Get, whose loaders read the source,
// and record the version they got. Each operation is recorded with its
// real call and return times; a write whose publishing call returned an
// error has an uncertain effect (its return is the end of the history); a
// read that returned an error is not recorded.
//
// The model is a register per item holding the newest version a write has
// published. A write moves it to its version, if newer; a read must return
// that version or a newer one. That is property 4: a value loaded before a
// write returned (an older version) is never served once it has returned.
// A read may return a newer version than the register's, from a write still
// in progress (its source is updated, its invalidation has not returned);
// and two reads during a write may see the new version then the old one,
// which property 4 allows until the write returns (a strict register would
// not). Histories are checked per item.
//
// The local tier (Options.Local) is off in TestStaleSetChecker: in its
// default mode it is eventually consistent by design.
// TestStaleSetCheckerStrictLocal runs every configuration again with the
// local tier on in strict mode, which must keep property 4 as the Redis
// tier does, and three configurations of its own: miniredis, Managers'
// subscriptions killed, and Managers whose subscription hangs for longer
// than their lease. The short run (under a second per configuration; 5s for the
// Sentinel ones, whose failover takes one or two) is part of the test
// suite; STOCKPOT_LONG=1 (or a duration, such as STOCKPOT_LONG=2m) runs
// each configuration that long instead (30s for "1"), as .ci/run does.

// TestStaleSetChecker runs the checker on each configuration.
func TestStaleSetChecker(t *testing.T) {
	for _, c := range checkConfigs {
		t.Run(c.name, func(t *testing.T) {
			if c.long && !longRun() {
				t.Skip("runs only with STOCKPOT_LONG set")
			}
			runChecker(t, c)
		})
	}
}

// TestStaleSetCheckerStrictLocal runs the checker on each configuration,
// and on strictFaultConfigs, with the local tier on in strict mode.
func TestStaleSetCheckerStrictLocal(t *testing.T) {
	for _, c := range append(slices.Clone(checkConfigs), strictFaultConfigs...) {
		t.Run(c.name, func(t *testing.T) {
			if c.long && !longRun() {
				t.Skip("runs only with STOCKPOT_LONG set")
			}
			runChecker(t, checkConfig{name: "strict-local/" + c.name, setup: func(t *testing.T) checkEnv {
				env := c.setup(t)
				env.opts.Local = &cache.LocalOptions{Strict: true, Lease: checkLease}
				return env
			}})
		})
	}
}

// TestStaleSetCheckerLocalControl is the positive control of the strict
// configurations: with the local tier in its default mode, the checker
// finds the stale reads of a Manager whose subscription hangs.
func TestStaleSetCheckerLocalControl(t *testing.T) {
	i := slices.IndexFunc(strictFaultConfigs, func(c checkConfig) bool { return c.name == "hung-subscription" })
	c := strictFaultConfigs[i]
	runChecker(t, checkConfig{name: "local-default/" + c.name, control: true, setup: func(t *testing.T) checkEnv {
		env := c.setup(t)
		env.opts.Local = &cache.LocalOptions{}
		return env
	}})
}

// checkLease is the lease of the strict local tier in the checker: short,
// so that the faults that outlast it fit in a short run.
const checkLease = 100 * time.Millisecond

// strictFaultConfigs are the strict local tier's own configurations:
// miniredis, and the faults of the tier's subscription (there each Manager
// is on a client named after it, so that the harness can find its
// connections).
var strictFaultConfigs = []checkConfig{
	{name: "miniredis", setup: func(t *testing.T) checkEnv {
		mr := miniredis.RunT(t)
		client := func() redis.UniversalClient {
			c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			t.Cleanup(func() { _ = c.Close() })
			return c
		}
		var clients []redis.UniversalClient
		for range fleetSize {
			clients = append(clients, client())
		}
		return checkEnv{clients: clients, raw: client()}
	}},
	{name: "kill-pubsub", setup: func(t *testing.T) checkEnv {
		srv := testredis.Start(t)
		var clients []redis.UniversalClient
		for i := range fleetSize {
			clients = append(clients, srv.ClientWith(t, func(o *redis.Options) { o.ClientName = "chk-" + strconv.Itoa(i) }))
		}
		raw := srv.Client(t)
		return checkEnv{clients: clients, raw: raw, faults: func(t *testing.T, until time.Time) {
			n := 0
			for pause(t, time.Duration(20+rand.IntN(80))*time.Millisecond, until) {
				// One Manager's subscription, or every one's.
				if rand.IntN(2) == 0 {
					n += killPubSubOf(t, raw, "chk-"+strconv.Itoa(rand.IntN(fleetSize)))
					continue
				}
				killed, err := raw.ClientKillByFilter(t.Context(), "TYPE", "pubsub").Result()
				require.NoError(t, err)
				n += int(killed)
			}
			t.Logf("%d pub/sub connections killed", n)
		}}
	}},
	{name: "hung-subscription", setup: func(t *testing.T) checkEnv {
		srv := testredis.Start(t)
		return checkEnv{clients: serverClients(t, srv), raw: srv.Client(t), fleetFaults: hangEvery}
	}},
}

// killPubSubOf kills the pub/sub connections of the clients named name,
// and returns how many it killed.
func killPubSubOf(t *testing.T, raw redis.UniversalClient, name string) int {
	list, err := raw.ClientList(t.Context()).Result()
	require.NoError(t, err)
	n := 0
	for line := range strings.Lines(list) {
		if !strings.Contains(line, " name="+name+" ") || strings.Contains(line, " sub=0 ") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if id, ok := strings.CutPrefix(f, "id="); ok {
				if raw.ClientKillByFilter(t.Context(), "ID", id).Err() == nil {
					n++
				}
			}
		}
	}
	return n
}

// hangEvery makes the subscription of a Manager of the fleet hang (its
// messages wait unread, as when its process is paused) for two to four
// leases, one after the other, until the deadline.
func hangEvery(t *testing.T, fleet []*cache.Manager, until time.Time) {
	n := 0
	for pause(t, time.Duration(rand.IntN(50))*time.Millisecond, until) {
		release := cache.HoldLocalReceive(fleet[rand.IntN(len(fleet))])
		pause(t, time.Duration(2+rand.IntN(3))*checkLease, until.Add(4*checkLease))
		release()
		n++
	}
	t.Logf("%d subscriptions hung, %v or longer each", n, 2*checkLease)
}

// checkConfig is a configuration of the checker: the clients of the
// fleet's Managers and the faults injected while it runs.
type checkConfig struct {
	name  string
	setup func(t *testing.T) checkEnv
	// long runs the configuration only when STOCKPOT_LONG is set.
	long bool
	// control says the checker must find stale reads: a positive control.
	control bool
}

// checkEnv is what a configuration gives a run.
type checkEnv struct {
	clients []redis.UniversalClient // one per Manager
	raw     redis.UniversalClient   // for the harness's own commands
	// faults, when not nil, runs on the test's goroutine while the fleet
	// works, until the deadline.
	faults func(t *testing.T, until time.Time)
	// fleetFaults, when not nil, runs beside faults, given the fleet's
	// Managers.
	fleetFaults func(t *testing.T, fleet []*cache.Manager, until time.Time)
	// opts are the Managers' options, beside the checker's own.
	opts cache.Options
	// atLeast, when longer than the run checkDuration gives, is how long
	// the fleet runs: the time its faults need.
	atLeast time.Duration
}

// fleetSize is how many Managers a configuration gives.
const fleetSize = 3

var checkConfigs = []checkConfig{
	{name: "single-node", setup: func(t *testing.T) checkEnv {
		srv := testredis.Start(t)
		return checkEnv{clients: serverClients(t, srv), raw: srv.Client(t)}
	}},
	{name: "three-masters", setup: func(t *testing.T) checkEnv {
		c := testredis.SharedCluster(t)
		var clients []redis.UniversalClient
		for range fleetSize {
			clients = append(clients, c.Client(t))
		}
		return checkEnv{clients: clients, raw: c.Client(t)}
	}},
	{name: "restart", setup: func(t *testing.T) checkEnv {
		srv := testredis.Start(t)
		var clients []redis.UniversalClient
		for range fleetSize {
			// Without retries, a command the server dies under fails, as
			// it does when a server crashes.
			clients = append(clients, srv.ClientWith(t, func(o *redis.Options) { o.MaxRetries = -1 }))
		}
		return checkEnv{
			clients: clients,
			raw:     srv.Client(t),
			faults:  func(t *testing.T, until time.Time) { restartEvery(t, srv, until) },
			// A short cool-down, so the breaker lets traffic through soon
			// after the restart.
			opts: cache.Options{Breaker: cache.BreakerOptions{CoolDown: 50 * time.Millisecond}},
		}
	}},
	{name: "sentinel-failover", setup: sentinelConfig(false)},
	{name: "sentinel-kill", setup: sentinelConfig(true)},
	{name: "failover-planned", setup: failoverConfig(true)},
	{name: "failover-unplanned", setup: failoverConfig(false), long: true},
	{name: "evict-lru", setup: evictConfig("allkeys-lru")},
	{name: "evict-random", setup: evictConfig("allkeys-random")},
	{name: "latency", setup: func(t *testing.T) checkEnv {
		srv := testredis.Start(t)
		p := testredis.NewProxy(t, srv.Addr())
		p.SetLatency(2*time.Millisecond, 2*time.Millisecond)
		clients := serverClients(t, srv)
		clients[0] = srv.ClientWith(t, func(o *redis.Options) { o.Addr = p.Addr() })
		return checkEnv{clients: clients, raw: srv.Client(t)}
	}},
}

// serverClients returns fleetSize clients on srv.
func serverClients(t *testing.T, srv *testredis.Server) []redis.UniversalClient {
	var clients []redis.UniversalClient
	for range fleetSize {
		clients = append(clients, srv.Client(t))
	}
	return clients
}

// restartEvery kills the server and restarts it, without its data, every
// third of the run (every 5s in a long run), 200ms down each time.
func restartEvery(t *testing.T, srv *testredis.Server, until time.Time) {
	every := min(time.Until(until)/3, 5*time.Second)
	n := 0
	for pause(t, every, until) {
		srv.Kill()
		pause(t, 200*time.Millisecond, time.Now().Add(time.Hour))
		srv.Restart()
		n++
	}
	t.Logf("the server was killed and restarted %d times", n)
}

// sentinelConfig is a Sentinel set-up (a master, a replica, three
// sentinels) whose master is failed over while the fleet works, each Manager
// on a failover client of its own: by SENTINEL FAILOVER, or, when kill, by
// killing the master with SIGKILL (it then rejoins as a replica). The run
// lasts at least 5s, for a failover and the work after it; a long run fails
// over as often as the set-up allows (Sentinel tells a demoted master to
// follow the new one only up to 10s after the switch).
//
// Replication is asynchronous: a write the master acknowledged may not
// have reached the replica when it is promoted (killed master), or may reach
// the old master after the promotion and before Sentinel demotes it (planned
// failover); either way it is lost. The Managers set WaitReplicas, so that
// an invalidation returns once the replica has it, and one the replica
// cannot acknowledge (it was promoted, or the new master has none yet)
// returns an error: its effect is uncertain, as a failed write's.
func sentinelConfig(kill bool) func(t *testing.T) checkEnv {
	return func(t *testing.T) checkEnv {
		st := testredis.StartSentinel(t)
		var clients []redis.UniversalClient
		for range fleetSize {
			clients = append(clients, st.Client(t))
		}
		env := checkEnv{
			clients: clients,
			raw:     st.Client(t),
			// A short cool-down, so the breaker lets traffic through soon
			// after the switch.
			opts:    cache.Options{Breaker: cache.BreakerOptions{CoolDown: 50 * time.Millisecond}, WaitReplicas: 1},
			atLeast: 5 * time.Second,
		}
		env.faults = func(t *testing.T, until time.Time) {
			// Another failover waits up to 10s for the set-up to be ready:
			// it is made only when the run has time for it and after it.
			var n int
			for n == 0 || time.Until(until) > 15*time.Second {
				if kill {
					killed, took := st.KillMaster(t)
					t.Logf("the master was killed; the sentinels named a new one after %v", took.Round(time.Millisecond))
					st.Rejoin(t, killed)
				} else {
					_, took := st.Failover(t)
					t.Logf("SENTINEL FAILOVER: the sentinels named a new master after %v", took.Round(time.Millisecond))
				}
				n++
			}
			t.Logf("%d failovers", n)
		}
		return env
	}
}

// evictConfig is a server whose maxmemory is a little above what it uses
// at the start, with policy; a filler writes junk keys while the fleet
// works, so that the server evicts all the time.
func evictConfig(policy string) func(t *testing.T) checkEnv {
	return func(t *testing.T) checkEnv {
		srv := testredis.StartWith(t, testredis.Config{MaxMemoryPolicy: policy})
		clients := serverClients(t, srv)
		raw := srv.Client(t)
		ctx := t.Context()
		for _, c := range clients {
			require.NoError(t, c.Ping(ctx).Err())
		}
		used := usedMemory(t, raw)
		require.NoError(t, raw.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used+evictHeadroom, 10)).Err())
		// Fill the server up to its limit before the run.
		val := strings.Repeat("j", 16<<10)
		for i := 0; infoField(t, raw, "stats", "evicted_keys") == "0"; i++ {
			require.Less(t, i, 4*evictHeadroom/len(val), "the server does not evict")
			require.NoError(t, raw.Set(ctx, "junk:"+strconv.Itoa(4096+i), val, 0).Err())
		}
		return checkEnv{clients: clients, raw: raw, faults: func(t *testing.T, until time.Time) {
			fill(t, raw, until)
			evicted := infoField(t, raw, "stats", "evicted_keys")
			t.Logf("%s: %s keys evicted", policy, evicted)
		}}
	}
}

// evictHeadroom is how much memory an evicting server has beyond what it
// uses at the start: room for the connections the fleet opens (about 1.5
// MB), and for its entries and about 150 junk keys.
const evictHeadroom = 4 << 20

// fill writes a 16 KB junk key every millisecond until the deadline: about
// as many keys are evicted.
// Writes the server refuses (OOM, when what it holds beyond its keys
// outgrows maxmemory) are counted, not failed.
func fill(t *testing.T, raw redis.UniversalClient, until time.Time) {
	val := strings.Repeat("j", 16<<10)
	refused := 0
	for i := 0; pause(t, time.Millisecond, until); i++ {
		if err := raw.Set(t.Context(), "junk:"+strconv.Itoa(i%4096), val, 0).Err(); err != nil {
			require.ErrorContains(t, err, "OOM", "filling the server")
			refused++
		}
	}
	if refused > 0 {
		t.Logf("the server refused %d junk writes (OOM)", refused)
	}
}

func usedMemory(t *testing.T, raw redis.UniversalClient) int64 {
	n, err := strconv.ParseInt(infoField(t, raw, "memory", "used_memory"), 10, 64)
	require.NoError(t, err)
	return n
}

// infoField returns the field of INFO section.
func infoField(t *testing.T, raw redis.UniversalClient, section, field string) string {
	t.Helper()
	info, err := raw.Info(t.Context(), section).Result()
	require.NoError(t, err)
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	t.Fatalf("no %s in INFO %s", field, section)
	return ""
}

// pause waits d, or until the deadline, or until the test's context ends;
// it reports whether the deadline is still ahead.
func pause(t *testing.T, d time.Duration, until time.Time) bool {
	d = min(d, time.Until(until))
	if d > 0 {
		timer := time.NewTimer(d)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-t.Context().Done():
			return false
		}
	}
	return time.Now().Before(until)
}

// longRun reports whether STOCKPOT_LONG asks for the long runs.
func longRun() bool {
	v := os.Getenv("STOCKPOT_LONG")
	return v != "" && v != "0"
}

// failoverConfig is a replicated cluster (three masters with a replica
// each) whose masters fail over in turn while the fleet works: planned
// (CLUSTER FAILOVER on the replica), or unplanned (the master killed, its
// replica promoted, the killed node restarted as a replica). The clients
// have the README's recommended settings.
func failoverConfig(planned bool) func(t *testing.T) checkEnv {
	return func(t *testing.T) checkEnv {
		c := testredis.StartReplicatedCluster(t)
		var clients []redis.UniversalClient
		for range fleetSize {
			clients = append(clients, c.ClientWith(t, func(o *redis.ClusterOptions) {
				o.DialTimeout, o.ReadTimeout, o.WriteTimeout = 500*time.Millisecond, 500*time.Millisecond, 500*time.Millisecond
				o.ContextTimeoutEnabled = true
			}))
		}
		return checkEnv{
			clients: clients,
			raw:     c.Client(t),
			faults:  func(t *testing.T, until time.Time) { failOver(t, c, planned, until) },
			// An invalidation returns once the replica has it, so that the
			// replica a failover promotes has it too.
			opts: cache.Options{WaitReplicas: 1},
		}
	}
}

// failOver fails the masters over in turn, the first at once, then one
// every 2s after the last has ended, until the deadline.
func failOver(t *testing.T, c *testredis.Cluster, planned bool, until time.Time) {
	slots := []int{0, 6000, 12000} // one of each master's slot ranges
	n := 0
	var took []time.Duration
	for ok := true; ok; ok = pause(t, 2*time.Second, until) {
		slot := slots[n%len(slots)]
		n++
		if planned {
			f := c.Failover(t, slot)
			took = append(took, f.Done.Sub(f.Start).Round(time.Millisecond))
			continue
		}
		f := c.KillMaster(t, slot)
		took = append(took, f.Done.Sub(f.Start).Round(time.Millisecond))
		c.Restart(t, f.Old)
	}
	t.Logf("%d failovers (planned: %v), the nodes agreeing after %v", n, planned, took)
}

// checkDuration is how long each configuration runs: under a second, or
// what STOCKPOT_LONG asks for.
func checkDuration(t *testing.T) time.Duration {
	v := os.Getenv("STOCKPOT_LONG")
	if v == "" || v == "0" {
		return 800 * time.Millisecond
	}
	if v == "1" || strings.EqualFold(v, "true") {
		return 30 * time.Second
	}
	d, err := time.ParseDuration(v)
	require.NoError(t, err, "STOCKPOT_LONG is 1 or a duration")
	return d
}

const (
	checkReaders = 6
	checkWriters = 2
	// opTimeout bounds each operation of the fleet.
	opTimeout = 5 * time.Second
	// checkTimeout bounds porcupine's work on one item's history.
	checkTimeout = 2 * time.Minute
)

// source is the source of truth: a version per item, from 1.
type source struct {
	versions []atomic.Int64
}

// load reads item i's version, then takes up to half a millisecond to
// answer, as a slow source would: the version may be outdated by then.
func (s *source) load(ctx context.Context, i int) (int64, error) {
	v := s.versions[i].Load()
	timer := time.NewTimer(time.Duration(rand.IntN(500)) * time.Microsecond)
	defer timer.Stop()
	select {
	case <-timer.C:
		return v, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// member is a Manager of the fleet with its Hash and Memo (the same names
// in every member).
type member struct {
	m    *cache.Manager
	hash *cache.Hash[int64]
	memo *cache.Memo[int, int64]
}

// checkItem is an item of the source as the fleet caches it.
type checkItem struct {
	name string
	read func(ctx context.Context, mb *member) (int64, error)
	// ways are the ways a write of the item can publish it.
	ways []publishWay
	// group is the batch read that reads the item with others of its kind.
	group int
}

// batchReads read several items of one kind in one call (GetOrLoadMany,
// Hash.GetOrLoadMany, Memo.GetMany), by group: the versions read, by item.
var batchReads = []func(ctx context.Context, mb *member, src *source, items []int) (map[int]int64, error){
	func(ctx context.Context, mb *member, src *source, items []int) (map[int]int64, error) {
		keys := make([]string, len(items))
		var opts []cache.Option
		for j, i := range items {
			keys[j] = kvKey(i)
			opts = append(opts, cache.Tags(kvTag(i)))
		}
		got, err := cache.GetOrLoadMany(ctx, mb.m, keys, func(ctx context.Context, missing []string) (map[string]int64, error) {
			out := make(map[string]int64, len(missing))
			for _, k := range missing {
				v, err := src.load(ctx, items[slices.Index(keys, k)])
				if err != nil {
					return out, err
				}
				out[k] = v
			}
			return out, nil
		}, append(opts, cache.TTL(checkTTL))...)
		return byItem(items, keys, got), err
	},
	func(ctx context.Context, mb *member, src *source, items []int) (map[int]int64, error) {
		fields := make([]string, len(items))
		for j, i := range items {
			fields[j] = fieldName(i - kvItems)
		}
		got, err := mb.hash.GetOrLoadMany(ctx, fields, func(ctx context.Context, missing []string) (map[string]int64, error) {
			out := make(map[string]int64, len(missing))
			for _, f := range missing {
				v, err := src.load(ctx, fieldItem(f))
				if err != nil {
					return out, err
				}
				out[f] = v
			}
			return out, nil
		})
		return byItem(items, fields, got), err
	},
	func(ctx context.Context, mb *member, src *source, items []int) (map[int]int64, error) {
		args := make([]int, len(items))
		for j, i := range items {
			args[j] = i - kvItems - fieldItems
		}
		got, err := mb.memo.GetMany(ctx, args)
		out := make(map[int]int64, len(items))
		if err == nil {
			for j, i := range items {
				out[i] = got[j]
			}
		}
		return out, err
	},
}

// byItem returns the values of got, by the item of each name.
func byItem(items []int, names []string, got map[string]int64) map[int]int64 {
	out := make(map[int]int64, len(got))
	for j, n := range names {
		if v, ok := got[n]; ok {
			out[items[j]] = v
		}
	}
	return out
}

type publishWay struct {
	name string
	do   func(ctx context.Context, mb *member) error
}

// The items: four plain keys in two prefixes and two tags, three fields of
// one tagged hash, four memo entries in two tags.
const (
	kvItems    = 4
	fieldItems = 3
	memoItems  = 4
	itemCount  = kvItems + fieldItems + memoItems
)

func kvKey(i int) string         { return fmt.Sprintf("p%d:item%d", i/2, i) }
func kvPrefix(i int) string      { return fmt.Sprintf("p%d:", i/2) }
func kvTag(i int) string         { return fmt.Sprintf("chk-kv-tag%d", i%2) }
func fieldName(i int) string     { return "f" + strconv.Itoa(i) }
func memoTag(arg int) string     { return fmt.Sprintf("chk-memo-tag%d", arg%2) }
func fieldItem(field string) int { n, _ := strconv.Atoi(field[1:]); return kvItems + n }
func memoItem(arg int) int       { return kvItems + fieldItems + arg }

const (
	checkHash    = "chk-hash"
	checkHashTag = "chk-hash-tag"
	checkMemo    = "chk-memo"
	checkTTL     = time.Hour
)

// newMember builds a member on rdb whose loaders read src.
func newMember(t *testing.T, rdb redis.UniversalClient, opts cache.Options, src *source) *member {
	opts.Prefix = "chk"
	mb := &member{m: newManager(t, rdb, &opts)}
	mb.hash = cache.NewHash[int64](mb.m, checkHash, cache.TTL(checkTTL), cache.Tags(checkHashTag))
	mb.memo = cache.Memoize(mb.m, checkMemo, func(ctx context.Context, arg int) (int64, error) {
		return src.load(ctx, memoItem(arg))
	}, cache.TTL(checkTTL), cache.TagsFor(func(arg int) []string { return []string{memoTag(arg)} }))
	return mb
}

// buildItems returns the items in order: item i's source version is
// src.versions[i].
func buildItems(src *source) []checkItem {
	var items []checkItem
	for i := range kvItems {
		key := kvKey(i)
		load := func(ctx context.Context) (int64, error) { return src.load(ctx, i) }
		opts := []cache.Option{cache.TTL(checkTTL), cache.Tags(kvTag(i))}
		items = append(items, checkItem{
			group: 0,
			name:  "key " + strconv.Quote(key),
			read: func(ctx context.Context, mb *member) (int64, error) {
				return cache.GetOrLoad(ctx, mb.m, key, load, opts...)
			},
			ways: []publishWay{
				invalidateWay("Key", func(*member) cache.Target { return cache.Key(key) }),
				invalidateWay("Prefix", func(*member) cache.Target { return cache.Prefix(kvPrefix(i)) }),
				invalidateWay("Tag", func(*member) cache.Target { return cache.Tag(kvTag(i)) }),
				{"Refresh", func(ctx context.Context, mb *member) error {
					_, err := cache.Refresh(ctx, mb.m, key, load, opts...)
					return err
				}},
			},
		})
	}
	loadField := func(ctx context.Context, field string) (int64, error) { return src.load(ctx, fieldItem(field)) }
	for i := range fieldItems {
		field := fieldName(i)
		items = append(items, checkItem{
			group: 1,
			name:  "field " + strconv.Quote(field),
			read: func(ctx context.Context, mb *member) (int64, error) {
				return mb.hash.GetOrLoad(ctx, field, loadField)
			},
			ways: []publishWay{
				invalidateWay("Hash.Field", func(mb *member) cache.Target { return mb.hash.Field(field) }),
				invalidateWay("Hash.AllFields", func(mb *member) cache.Target { return mb.hash.AllFields() }),
				invalidateWay("Tag", func(*member) cache.Target { return cache.Tag(checkHashTag) }),
				{"Hash.Refresh", func(ctx context.Context, mb *member) error {
					_, err := mb.hash.Refresh(ctx, field, loadField)
					return err
				}},
			},
		})
	}
	for arg := range memoItems {
		items = append(items, checkItem{
			group: 2,
			name:  fmt.Sprintf("memo entry %d", arg),
			read:  func(ctx context.Context, mb *member) (int64, error) { return mb.memo.Get(ctx, arg) },
			ways: []publishWay{
				invalidateWay("Memo.Entry", func(mb *member) cache.Target { return mb.memo.Entry(arg) }),
				invalidateWay("Memo.All", func(mb *member) cache.Target { return mb.memo.All() }),
				invalidateWay("Tag", func(*member) cache.Target { return cache.Tag(memoTag(arg)) }),
				{"Memo.Refresh", func(ctx context.Context, mb *member) error {
					_, err := mb.memo.Refresh(ctx, arg)
					return err
				}},
			},
		})
	}
	return items
}

func invalidateWay(name string, target func(*member) cache.Target) publishWay {
	return publishWay{name, func(ctx context.Context, mb *member) error {
		return mb.m.Invalidate(ctx, target(mb))
	}}
}

// checkOp is an operation of the history: porcupine's input.
type checkOp struct {
	item      int
	client    int // the worker, for the visualization; a new one after an uncertain write
	member    int
	write     bool
	way       string // the publishing way of a write, the read path of a read
	version   int64  // written, or read
	call, ret int64  // nanoseconds since the run began
	uncertain bool   // a write whose publishing call failed
}

// recorder collects the history.
type recorder struct {
	base    time.Time
	clients atomic.Int64 // the next client ID for a worker after an uncertain write

	mu         sync.Mutex // protects the fields below
	ops        []checkOp
	readErrors int
	readErr    error // the first
}

func (r *recorder) now() int64 { return time.Since(r.base).Nanoseconds() }

func (r *recorder) add(ops []checkOp, readErrors int, readErr error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, ops...)
	r.readErrors += readErrors
	if r.readErr == nil {
		r.readErr = readErr
	}
}

// runChecker runs the fleet on configuration c, then checks its history.
func runChecker(t *testing.T, c checkConfig) {
	env := c.setup(t)
	src := &source{versions: make([]atomic.Int64, itemCount)}
	for i := range src.versions {
		src.versions[i].Store(1)
	}
	items := buildItems(src)
	var fleet []*member
	for _, rdb := range env.clients {
		fleet = append(fleet, newMember(t, rdb, env.opts, src))
	}

	d := max(checkDuration(t), env.atLeast)
	rec := &recorder{base: time.Now()}
	rec.clients.Store(checkReaders + checkWriters)
	until := rec.base.Add(d)
	var wg sync.WaitGroup
	for w := range checkReaders {
		wg.Go(func() { readLoop(t.Context(), rec, w, fleet, items, src, until) })
	}
	for w := range checkWriters {
		wg.Go(func() { writeLoop(t.Context(), rec, checkReaders+w, fleet, items, src, until) })
	}
	if env.fleetFaults != nil {
		ms := make([]*cache.Manager, len(fleet))
		for i, mb := range fleet {
			ms[i] = mb.m
		}
		wg.Go(func() { env.fleetFaults(t, ms, until) })
	}
	if env.faults != nil {
		env.faults(t, until)
	}
	testredis.WaitFor(t, &wg, d+2*opTimeout, "the fleet's workers to stop")
	if env.opts.Local != nil {
		var hits, waitedOut uint64
		for _, mb := range fleet {
			st := mb.m.Stats()
			waitedOut += st.Local.WaitedOut
			for _, c := range st.ByName {
				hits += c.LocalHits
			}
		}
		t.Logf("%s: %d local hits; %d writes waited for a lease to end", c.name, hits, waitedOut)
	}

	checkHistory(t, c, items, rec)
}

// readLoop reads random items through random members until the deadline.
func readLoop(ctx context.Context, rec *recorder, client int, fleet []*member, items []checkItem, src *source, until time.Time) {
	var ops []checkOp
	errs := 0
	var firstErr error
	for time.Now().Before(until) && ctx.Err() == nil && len(ops) < maxReadsRecorded {
		i, j := rand.IntN(len(items)), rand.IntN(len(fleet))
		if rand.IntN(3) == 0 {
			ops = append(ops, batchRead(ctx, rec, client, fleet, j, items, src, items[i].group)...)
			continue
		}
		op := checkOp{item: i, client: client, member: j, way: "read", call: rec.now()}
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		v, err := items[i].read(octx, fleet[j])
		cancel()
		op.ret = rec.now()
		if err != nil {
			errs++
			if firstErr == nil {
				firstErr = fmt.Errorf("%s: %w", items[i].name, err)
			}
			sleepCtx(ctx, time.Millisecond)
			continue
		}
		op.version = v
		if time.Duration(op.ret-op.call) < fastRead && rand.IntN(fastReadSample) != 0 {
			// A local-tier hit: keep one in fastReadSample, so that a
			// run of millions of them stays a history porcupine can
			// check in bounded memory. Leaving reads out of a history
			// hides no stale read that is kept, and adds none.
			continue
		}
		ops = append(ops, op)
	}
	rec.add(ops, errs, firstErr)
}

// fastRead is a read quicker than any round trip to Redis (a local-tier
// hit); the checker keeps one in fastReadSample of them.
const (
	fastRead       = 20 * time.Microsecond
	fastReadSample = 64
)

// maxReadsRecorded bounds the reads one reader records: the history of a
// run whose reads are local-tier hits grows by the million, and checking
// it took porcupine gigabytes. The reader stops at the bound.
const maxReadsRecorded = 25000

// batchRead reads a random subset of the items of group through member j
// in one call, and returns a read for each item it returned.
func batchRead(ctx context.Context, rec *recorder, client int, fleet []*member, j int, items []checkItem, src *source, group int) []checkOp {
	var chosen []int
	for i, it := range items {
		if it.group == group && rand.IntN(2) == 0 {
			chosen = append(chosen, i)
		}
	}
	if len(chosen) == 0 {
		return nil
	}
	call := rec.now()
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	got, err := batchReads[group](octx, fleet[j], src, chosen)
	cancel()
	ret := rec.now()
	if err != nil {
		return nil
	}
	ops := make([]checkOp, 0, len(got))
	for _, i := range chosen {
		if v, ok := got[i]; ok {
			ops = append(ops, checkOp{item: i, client: client, member: j, way: "batch read", version: v, call: call, ret: ret})
		}
	}
	return ops
}

// writeLoop writes random items, publishing them in random ways through
// random members, until the deadline.
func writeLoop(ctx context.Context, rec *recorder, client int, fleet []*member, items []checkItem, src *source, until time.Time) {
	var ops []checkOp
	for time.Now().Before(until) && ctx.Err() == nil {
		i, j := rand.IntN(len(items)), rand.IntN(len(fleet))
		way := items[i].ways[rand.IntN(len(items[i].ways))]
		op := checkOp{item: i, client: client, member: j, write: true, way: way.name, call: rec.now()}
		op.version = src.versions[i].Add(1)
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		err := way.do(octx, fleet[j])
		cancel()
		op.ret = rec.now()
		if err != nil {
			op.uncertain = true
			client = int(rec.clients.Add(1)) - 1 // this worker's uncertain write stays open
		}
		ops = append(ops, op)
		sleepCtx(ctx, time.Duration(rand.IntN(2000))*time.Microsecond)
	}
	rec.add(ops, 0, nil)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
}

// staleModel is the register of one item under property 4 (see the top of
// this file). Its state is the newest published version.
var staleModel = porcupine.Model{
	Init: func() any { return int64(0) },
	Step: func(state, input, output any) (bool, any) {
		published := state.(int64)
		op := input.(checkOp)
		if op.write {
			return true, max(published, op.version)
		}
		return output.(int64) >= published, published
	},
	DescribeOperation: func(input, output any) string {
		return describeOp(input.(checkOp))
	},
	DescribeState: func(state any) string {
		return fmt.Sprintf("newest published: v%d", state.(int64))
	},
}

func describeOp(op checkOp) string {
	if !op.write {
		return fmt.Sprintf("read v%d (Manager %d)", op.version, op.member)
	}
	s := fmt.Sprintf("write v%d, %s (Manager %d)", op.version, op.way, op.member)
	if op.uncertain {
		s += ", failed: uncertain"
	}
	return s
}

// checkHistory checks the history of each item with porcupine, reports the
// counts, and fails t for each item with a stale read, printing its history
// around that read.
func checkHistory(t *testing.T, c checkConfig, items []checkItem, rec *recorder) {
	config := c.name
	end := int64(0)
	for _, op := range rec.ops {
		end = max(end, op.ret)
	}
	end++
	byItem := make([][]porcupine.Operation, len(items))
	var reads, writes, uncertain int
	for _, op := range rec.ops {
		ret := op.ret
		switch {
		case op.uncertain:
			uncertain++
			writes++
			ret = end
		case op.write:
			writes++
		default:
			reads++
		}
		var out any
		if !op.write {
			out = op.version
		}
		byItem[op.item] = append(byItem[op.item], porcupine.Operation{
			ClientId: op.client, Input: op, Call: op.call, Output: out, Return: ret,
		})
	}
	var staleReads, staleItems int
	missed := map[string]int{} // stale reads by the way of the newest write they missed
	for i, ops := range byItem {
		stale := staleReadsOf(ops)
		staleReads += len(stale)
		if len(stale) > 0 {
			staleItems++
		}
		for _, s := range stale {
			missed[wayFamily(ops[s.write].Input.(checkOp).way)]++
		}
		res := porcupine.CheckOperationsTimeout(staleModel, ops, checkTimeout)
		switch {
		case res == porcupine.Unknown:
			t.Errorf("%s: porcupine did not finish checking %s (%d operations) within %v", config, items[i].name, len(ops), checkTimeout)
		case (res == porcupine.Illegal) != (len(stale) > 0):
			t.Errorf("%s: %s: porcupine says %v but %d reads are stale: the checker is wrong", config, items[i].name, res, len(stale))
		case res == porcupine.Illegal && !c.control:
			t.Errorf("%s: %s: %d stale reads, the first:\n%s%s", config, items[i].name, len(stale),
				describeStale(ops, stale[0]), visualize(t, ops, i))
		}
	}
	t.Logf("%s: %d operations checked (%d reads, %d writes of which %d uncertain) on %d items; %d read errors (not recorded); %d stale reads on %d items",
		config, len(rec.ops), reads, writes, uncertain, len(items), rec.readErrors, staleReads, staleItems)
	if staleReads > 0 {
		t.Logf("%s: stale reads by the way the newest write they missed was published: %v", config, missed)
	}
	if rec.readErr != nil {
		t.Logf("%s: first read error: %v", config, rec.readErr)
	}
	require.Positive(t, reads, "no read succeeded")
	if c.control {
		require.Positive(t, staleReads, "the positive control found no stale read")
	}
}

// wayFamily returns the way a write was published, with the Refresh ways
// as one.
func wayFamily(way string) string {
	if strings.HasSuffix(way, "Refresh") {
		return "Refresh"
	}
	return way
}

// staleRead is a read that returned a version older than a write that had
// returned before the read began.
type staleRead struct {
	read, write int // indexes in the item's operations
}

// staleReadsOf finds the stale reads of one item's history directly: the
// verdict porcupine reaches with staleModel, read by read.
func staleReadsOf(ops []porcupine.Operation) []staleRead {
	var writes []int
	for i, op := range ops {
		if op.Input.(checkOp).write {
			writes = append(writes, i)
		}
	}
	var stale []staleRead
	for i, op := range ops {
		in := op.Input.(checkOp)
		if in.write {
			continue
		}
		newest := -1
		for _, w := range writes {
			win := ops[w].Input.(checkOp)
			if ops[w].Return < op.Call && win.version > in.version && (newest < 0 || win.version > ops[newest].Input.(checkOp).version) {
				newest = w
			}
		}
		if newest >= 0 {
			stale = append(stale, staleRead{read: i, write: newest})
		}
	}
	return stale
}

// describeStale prints the operations of an item from the call of the
// write a stale read missed to that read's return, in call order.
func describeStale(ops []porcupine.Operation, s staleRead) string {
	w, r := ops[s.write], ops[s.read]
	var window []int
	for i, op := range ops {
		if op.Return >= w.Call && op.Call <= r.Return {
			window = append(window, i)
		}
	}
	slices.SortFunc(window, func(a, b int) int { return int(ops[a].Call - ops[b].Call) })
	const most = 40
	var b strings.Builder
	fmt.Fprintf(&b, "    read v%d began %s after write v%d returned:\n", r.Input.(checkOp).version,
		time.Duration(r.Call-w.Return), w.Input.(checkOp).version)
	for n, i := range window {
		if n == most {
			fmt.Fprintf(&b, "    ... %d more\n", len(window)-most)
			break
		}
		op := ops[i]
		mark := ""
		switch i {
		case s.write:
			mark = "  <- the write"
		case s.read:
			mark = "  <- the stale read"
		}
		fmt.Fprintf(&b, "    %12s .. %-12s client %-3d %s%s\n", stamp(op.Call), stamp(op.Return), op.ClientId,
			describeOp(op.Input.(checkOp)), mark)
	}
	return b.String()
}

// stamp formats a time of the history, in milliseconds since the run began.
func stamp(ns int64) string {
	return strconv.FormatFloat(float64(ns)/1e6, 'f', 3, 64) + "ms"
}

// visualize writes porcupine's HTML view of an item's history to the
// test's artifact directory and says where.
func visualize(t *testing.T, ops []porcupine.Operation, item int) string {
	res, info := porcupine.CheckOperationsVerbose(staleModel, ops, checkTimeout)
	if res != porcupine.Illegal {
		return ""
	}
	path := filepath.Join(t.ArtifactDir(), fmt.Sprintf("item%d.html", item))
	if err := porcupine.VisualizePath(staleModel, info, path); err != nil {
		return fmt.Sprintf("    (no visualization: %v)\n", err)
	}
	return fmt.Sprintf("    visualization: %s (kept with go test -artifacts)\n", path)
}

// TestStaleModel checks the checker on small histories.
func TestStaleModel(t *testing.T) {
	w := func(v, call, ret int64, uncertain bool) porcupine.Operation {
		return porcupine.Operation{Input: checkOp{write: true, version: v, way: "Key", uncertain: uncertain}, Call: call, Return: ret}
	}
	r := func(v, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: checkOp{version: v}, Output: v, Call: call, Return: ret}
	}
	for _, c := range []struct {
		name  string
		ops   []porcupine.Operation
		stale int
	}{
		{"a read after a write returned gets its version", []porcupine.Operation{w(2, 0, 10, false), r(2, 11, 12)}, 0},
		{"a read after a write returned gets an older one", []porcupine.Operation{w(2, 0, 10, false), r(1, 11, 12)}, 1},
		{"reads during a write may see either version, in any order", []porcupine.Operation{w(2, 0, 10, false), r(2, 1, 2), r(1, 3, 4)}, 0},
		{"a read that began as the write returned overlaps it", []porcupine.Operation{w(2, 0, 10, false), r(1, 10, 12)}, 0},
		{"writes publish the newest version, whatever their order", []porcupine.Operation{w(2, 0, 10, false), w(3, 1, 5, false), r(2, 11, 12)}, 1},
		{"an uncertain write constrains nothing", []porcupine.Operation{w(2, 0, 100, true), r(1, 11, 12), r(2, 13, 14), r(1, 15, 16)}, 0},
		{"a newer version than any write's is not the checker's business", []porcupine.Operation{r(5, 0, 1)}, 0},
	} {
		stale := staleReadsOf(c.ops)
		require.Len(t, stale, c.stale, c.name)
		want := porcupine.Ok
		if c.stale > 0 {
			want = porcupine.Illegal
		}
		require.Equal(t, want, porcupine.CheckOperationsTimeout(staleModel, c.ops, time.Minute), c.name)
	}
}
