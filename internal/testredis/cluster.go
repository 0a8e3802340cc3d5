package testredis

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// clusterMasters is how many masters a Cluster has.
	clusterMasters = 3
	// clusterSlots is the number of hash slots of Redis Cluster.
	clusterSlots = 16384
	// clusterTimeout bounds how long startCluster waits for redis-cli to
	// create the cluster, and then for every node to agree on it; and how
	// long MoveSlot waits for the nodes to agree on the slot's new owner.
	clusterTimeout = 20 * time.Second
	// migrateBatch is how many keys MoveSlot moves with one MIGRATE.
	migrateBatch = 100
	// migrateTimeout is MIGRATE's timeout for one batch.
	migrateTimeout = 5 * time.Second
)

// Cluster is a Redis Cluster of real redis-server processes on loopback
// ports: three masters that share the 16384 hash slots, without replicas,
// created with redis-cli --cluster create. Its methods are safe for
// concurrent use, except MoveSlot with itself.
type Cluster struct {
	nodes []*Server       // the nodes, in the order of Addrs
	admin []*redis.Client // a client on each node, for the harness's own commands
	ids   []string        // the nodes' IDs

	mu   sync.Mutex // protects down
	down []bool     // by node: killed by KillMaster and not restarted

	closeOnce sync.Once
}

// clusterSpec is the shape of a cluster startCluster starts.
type clusterSpec struct {
	replicas    int           // replicas of each master
	nodeTimeout time.Duration // cluster-node-timeout
}

// plainCluster is the shape of StartCluster's and the shared cluster.
var plainCluster = clusterSpec{nodeTimeout: 2 * time.Second}

// StartCluster starts a fresh Redis Cluster for t and waits until every node
// says cluster_state:ok and agrees on the owner of every slot. It is stopped
// in t.Cleanup. Starting one takes a few seconds, most of it redis-cli's
// wait for the nodes to agree.
//
// It needs redis-server 7.0 or later and redis-cli on PATH; without them it
// skips t with a loud message, or fails t when STOCKPOT_REQUIRE_REDIS=1.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	server, cli := clusterBinaries(t)
	c, err := startCluster(server, cli, t.TempDir(), plainCluster, t.Logf)
	if err != nil {
		t.Fatalf("testredis: starting a cluster: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// clusterBinaries returns the paths of redis-server and redis-cli, skipping or
// failing t as lookPath does when one is missing or redis-server is older
// than 7.0 (the cluster's nodes use the cluster-port setting, and
// FastForward a script flag, both new in 7.0).
func clusterBinaries(t testing.TB) (server, cli string) {
	t.Helper()
	const what = "Redis Cluster tests"
	server = lookPath(t, "redis-server", "redis-server", what)
	cli = lookPath(t, "redis-cli", "redis-tools", what)
	major, version, err := serverMajor(server)
	if err != nil {
		t.Fatalf("testredis: %v", err)
	}
	if major < 7 {
		missing(t, "redis-server "+version+" is older than 7.0", what, "install redis-server 7.0 or later")
	}
	return server, cli
}

var versionRE = regexp.MustCompile(`v=(\d+)\.(\d+)\.(\d+)`)

// versions caches serverMajor's answers, by binary.
var versions sync.Map // string to versionInfo

type versionInfo struct {
	major   int
	version string
	err     error
}

// serverMajor returns the major version of the redis-server binary bin, and
// its whole version, from redis-server --version (run once per binary).
func serverMajor(bin string) (int, string, error) {
	if v, ok := versions.Load(bin); ok {
		vi := v.(versionInfo)
		return vi.major, vi.version, vi.err
	}
	major, version, err := readVersion(bin)
	versions.Store(bin, versionInfo{major, version, err})
	return major, version, err
}

func readVersion(bin string) (int, string, error) {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return 0, "", fmt.Errorf("%s --version: %w", bin, err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return 0, "", fmt.Errorf("%s --version printed no version: %q", bin, out)
	}
	major, _ := strconv.Atoi(string(m[1]))
	return major, fmt.Sprintf("%s.%s.%s", m[1], m[2], m[3]), nil
}

// startCluster starts the nodes of a cluster shaped as spec in
// subdirectories of dir, creates the cluster with redis-cli and waits until
// the nodes agree on it (and every replica is in sync). On error, the
// processes it started are killed.
func startCluster(server, cli, dir string, spec clusterSpec, logf func(string, ...any)) (c *Cluster, err error) {
	c = &Cluster{}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	for i := range clusterMasters * (1 + spec.replicas) {
		nodeDir := filepath.Join(dir, "node"+strconv.Itoa(i))
		if err := os.Mkdir(nodeDir, 0o755); err != nil {
			return nil, err
		}
		s := newServer(server, nodeDir, func(port int) ([]string, error) {
			bus, err := freePort()
			for err == nil && bus == port {
				bus, err = freePort()
			}
			if err != nil {
				return nil, fmt.Errorf("finding a free port for the cluster bus: %w", err)
			}
			return []string{
				"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d.conf", port)),
				"--cluster-node-timeout", strconv.FormatInt(spec.nodeTimeout.Milliseconds(), 10),
				"--cluster-port", strconv.Itoa(bus),
			}, nil
		})
		c.nodes = append(c.nodes, s)
		if err := s.startOnFreePort(logf); err != nil {
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
		c.admin = append(c.admin, redis.NewClient(&redis.Options{
			Addr:         s.Addr(),
			DialTimeout:  clientTimeout,
			ReadTimeout:  clientTimeout,
			WriteTimeout: clientTimeout,
		}))
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(spec.replicas), "--cluster-yes")
	cmd := exec.CommandContext(ctx, cli, args...)
	cmd.SysProcAttr = sysProcAttr()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("redis-cli --cluster create: %v; its output:\n%s", err, out.String())
	}

	for i, a := range c.admin {
		id, err := a.ClusterMyID(ctx).Result()
		if err != nil {
			return nil, fmt.Errorf("CLUSTER MYID on %s: %w", c.nodes[i].Addr(), err)
		}
		c.ids = append(c.ids, id)
	}
	c.down = make([]bool, len(c.nodes))
	if err := c.waitConsistent(ctx); err != nil {
		return nil, err
	}
	if spec.replicas > 0 {
		if err := c.waitReplicasInSync(ctx); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Addrs returns the nodes' addresses, "127.0.0.1:port": the three masters
// of a cluster without replicas; every node, master or replica, of one
// with them. MoveSlot, SlotOwner and the failover methods number the nodes
// in this order.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		addrs[i] = s.Addr()
	}
	return addrs
}

// Client returns a new cluster client with 5s dial, read and write timeouts,
// closed in t.Cleanup. It sends every command to its slot's master and
// follows MOVED and ASK redirects (up to go-redis's default MaxRedirects).
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	return c.ClientWith(t, nil)
}

// ClientWith returns a new cluster client, closed in t.Cleanup. It starts
// from the options Client uses and lets mod, if not nil, change them.
func (c *Cluster) ClientWith(t testing.TB, mod func(*redis.ClusterOptions)) *redis.ClusterClient {
	t.Helper()
	opt := &redis.ClusterOptions{
		Addrs:        c.Addrs(),
		DialTimeout:  clientTimeout,
		ReadTimeout:  clientTimeout,
		WriteTimeout: clientTimeout,
	}
	if mod != nil {
		mod(opt)
	}
	rdb := redis.NewClusterClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// Close kills the nodes and waits for them to exit. It is idempotent.
func (c *Cluster) Close() {
	c.closeOnce.Do(func() {
		for _, a := range c.admin {
			_ = a.Close()
		}
		for _, s := range c.nodes {
			s.Kill()
		}
	})
}

// FastForward emulates the passage of d for TTL purposes on every master, as
// [Server.FastForward] does on one server.
func (c *Cluster) FastForward(t testing.TB, d time.Duration) {
	t.Helper()
	if d <= 0 {
		return
	}
	masters, err := c.masters(t.Context())
	if err != nil {
		t.Fatalf("testredis: fast-forward: %v", err)
	}
	for _, i := range masters {
		if err := fastForwardDB(t.Context(), c.admin[i], 0, d, true); err != nil {
			t.Fatalf("testredis: fast-forward on %s: %v", c.nodes[i].Addr(), err)
		}
	}
}

// flushAll deletes every key on every master.
func (c *Cluster) flushAll(ctx context.Context) error {
	masters, err := c.masters(ctx)
	if err != nil {
		return err
	}
	for _, i := range masters {
		if err := c.admin[i].FlushAll(ctx).Err(); err != nil {
			return fmt.Errorf("FLUSHALL on %s: %w", c.nodes[i].Addr(), err)
		}
	}
	return nil
}

// live returns the indexes of the nodes that run (all but those
// KillMaster killed and Restart has not restarted).
func (c *Cluster) live() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for i := range c.nodes {
		if !c.down[i] {
			out = append(out, i)
		}
	}
	return out
}

// masters returns the indexes of the live nodes that say they are masters
// (ROLE): every node of a cluster without replicas.
func (c *Cluster) masters(ctx context.Context) ([]int, error) {
	var out []int
	for _, i := range c.live() {
		role, err := c.admin[i].Do(ctx, "role").Slice()
		if err != nil {
			return nil, fmt.Errorf("ROLE on %s: %w", c.nodes[i].Addr(), err)
		}
		if len(role) > 0 && role[0] == "master" {
			out = append(out, i)
		}
	}
	return out, nil
}

// SlotOwner returns the index in Addrs of the master that owns slot.
func (c *Cluster) SlotOwner(t testing.TB, slot int) int {
	t.Helper()
	owner, err := c.slotOwner(t.Context(), slot)
	if err != nil {
		t.Fatalf("testredis: owner of slot %d: %v", slot, err)
	}
	return owner
}

func (c *Cluster) slotOwner(ctx context.Context, slot int) (int, error) {
	if slot < 0 || slot >= clusterSlots {
		return 0, fmt.Errorf("no slot %d", slot)
	}
	ranges, err := slotRanges(ctx, c.admin[c.live()[0]])
	if err != nil {
		return 0, err
	}
	for _, r := range ranges {
		if r.start <= slot && slot <= r.end {
			if i := slices.Index(c.Addrs(), r.owner); i >= 0 {
				return i, nil
			}
			return 0, fmt.Errorf("slot %d is owned by %s, not a node of the cluster", slot, r.owner)
		}
	}
	return 0, fmt.Errorf("slot %d has no owner", slot)
}

// slotRange is a range of slots and the address of the master that owns it.
type slotRange struct {
	start, end int
	owner      string
}

// slotRanges returns the slots' owners as the node a sees them (CLUSTER
// SHARDS), in slot order.
func slotRanges(ctx context.Context, a *redis.Client) ([]slotRange, error) {
	shards, err := a.ClusterShards(ctx).Result()
	if err != nil {
		return nil, err
	}
	var ranges []slotRange
	for _, sh := range shards {
		owner := "none"
		for _, n := range sh.Nodes {
			if n.Role == "master" && n.Health != "failed" {
				owner = net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10))
			}
		}
		for _, r := range sh.Slots {
			ranges = append(ranges, slotRange{int(r.Start), int(r.End), owner})
		}
	}
	slices.SortFunc(ranges, func(x, y slotRange) int { return x.start - y.start })
	return ranges, nil
}

// MoveSlot migrates slot, with its keys, from its owner to the master
// numbered to (an index in Addrs), the way redis-cli --cluster reshard does:
// CLUSTER SETSLOT IMPORTING on the target and MIGRATING on the source, then
// MIGRATE of the keys in batches found with CLUSTER GETKEYSINSLOT, then
// CLUSTER SETSLOT NODE on every master, the target first. It returns when
// every node agrees on the new owner. Clients may use the cluster meanwhile:
// during the move the source answers with ASK redirects for the keys it no
// longer has, and afterwards with MOVED. Moving a slot to its owner does
// nothing. Call MoveSlot from the test's goroutine.
func (c *Cluster) MoveSlot(t testing.TB, slot, to int) {
	t.Helper()
	if to < 0 || to >= len(c.nodes) {
		t.Fatalf("testredis: moving slot %d: no node %d (the cluster has %d)", slot, to, len(c.nodes))
	}
	ctx, cancel := context.WithTimeout(t.Context(), clusterTimeout)
	defer cancel()
	if err := c.moveSlot(ctx, slot, to); err != nil {
		t.Fatalf("testredis: moving slot %d to %s: %v", slot, c.nodes[to].Addr(), err)
	}
}

func (c *Cluster) moveSlot(ctx context.Context, slot, to int) error {
	from, err := c.slotOwner(ctx, slot)
	if err != nil || from == to {
		return err
	}
	src, dst := c.admin[from], c.admin[to]
	if err := dst.Do(ctx, "cluster", "setslot", slot, "importing", c.ids[from]).Err(); err != nil {
		return fmt.Errorf("SETSLOT IMPORTING on the target: %w", err)
	}
	if err := src.Do(ctx, "cluster", "setslot", slot, "migrating", c.ids[to]).Err(); err != nil {
		return fmt.Errorf("SETSLOT MIGRATING on the source: %w", err)
	}
	host, port, _ := net.SplitHostPort(c.nodes[to].Addr())
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, migrateBatch).Result()
		if err != nil {
			return fmt.Errorf("GETKEYSINSLOT: %w", err)
		}
		if len(keys) == 0 {
			break
		}
		args := []any{"migrate", host, port, "", 0, migrateTimeout.Milliseconds(), "keys"}
		for _, k := range keys {
			args = append(args, k)
		}
		if err := src.Do(ctx, args...).Err(); err != nil {
			return fmt.Errorf("MIGRATE of %d keys: %w", len(keys), err)
		}
	}
	// The target first, so that it owns the slot before the source sends
	// MOVED there; then the source, which ends its migration; then the rest.
	order := []int{to, from}
	for _, i := range c.live() {
		if i != to && i != from {
			order = append(order, i)
		}
	}
	for _, i := range order {
		if err := c.admin[i].Do(ctx, "cluster", "setslot", slot, "node", c.ids[to]).Err(); err != nil {
			return fmt.Errorf("SETSLOT NODE on %s: %w", c.nodes[i].Addr(), err)
		}
	}
	return c.waitConsistent(ctx)
}

// waitConsistent polls the nodes, backing off from 5ms to 100ms, until
// consistent reports no problem or ctx ends.
func (c *Cluster) waitConsistent(ctx context.Context) error {
	if err := poll(ctx, func() error { return c.consistent(ctx) }); err != nil {
		return fmt.Errorf("the nodes do not agree on the cluster: %w", err)
	}
	return nil
}

// consistent reports, as an error, the first thing that keeps the cluster
// from being ready: a live node whose CLUSTER INFO does not say
// cluster_state:ok with every slot ok and every node known, a node with a
// slot in migration, or two live nodes that disagree on a slot's owner.
func (c *Cluster) consistent(ctx context.Context) error {
	var first string
	live := c.live()
	for _, i := range live {
		a := c.admin[i]
		addr := c.nodes[i].Addr()
		info, err := a.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER INFO on %s: %w", addr, err)
		}
		fields := make(map[string]string)
		for line := range strings.Lines(info) {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
				fields[k] = v
			}
		}
		want := map[string]string{
			"cluster_state":       "ok",
			"cluster_slots_ok":    strconv.Itoa(clusterSlots),
			"cluster_known_nodes": strconv.Itoa(len(c.nodes)),
		}
		for k, v := range want {
			if fields[k] != v {
				return fmt.Errorf("%s says %s:%s, want %s", addr, k, fields[k], v)
			}
		}
		nodes, err := a.ClusterNodes(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER NODES on %s: %w", addr, err)
		}
		for line := range strings.Lines(nodes) {
			if strings.Contains(line, "myself") && strings.Contains(line, "[") {
				return fmt.Errorf("%s has a slot in migration: %s", addr, strings.TrimSpace(line))
			}
		}
		owners, err := c.owners(ctx, a)
		if err != nil {
			return fmt.Errorf("CLUSTER SHARDS on %s: %w", addr, err)
		}
		if i == live[0] {
			first = owners
		} else if owners != first {
			return fmt.Errorf("%s and %s disagree on the slots' owners: %s, and %s", c.nodes[live[0]].Addr(), addr, first, owners)
		}
	}
	return nil
}

// owners returns the slots' owners as the node a sees them, as a string
// ("0-5460:127.0.0.1:41001 ...") in slot order.
func (c *Cluster) owners(ctx context.Context, a *redis.Client) (string, error) {
	ranges, err := slotRanges(ctx, a)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, r := range ranges {
		fmt.Fprintf(&b, "%d-%d:%s ", r.start, r.end, r.owner)
	}
	return strings.TrimSpace(b.String()), nil
}

// The cluster that Run shares between the tests of a test binary: starting
// one takes seconds, so Run starts it once and flushes it before each test.
var shared struct {
	mu  sync.Mutex // protects the fields below
	c   *Cluster
	dir string
	err error // why it did not start; later tests fail at once with it
}

// sharedCluster returns the test binary's shared cluster, started on first
// use, with every key of every master deleted. It skips or fails t as
// StartCluster does.
func sharedCluster(t testing.TB) *Cluster {
	t.Helper()
	server, cli := clusterBinaries(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.c == nil && shared.err == nil {
		removeStaleDirs()
		start := time.Now()
		shared.dir, shared.err = os.MkdirTemp("", sharedDirPrefix+strconv.Itoa(os.Getpid())+"-")
		if shared.err == nil {
			shared.c, shared.err = startCluster(server, cli, shared.dir, plainCluster, t.Logf)
		}
		if shared.err != nil {
			_ = os.RemoveAll(shared.dir)
		} else {
			t.Logf("testredis: started the shared cluster %v in %v", shared.c.Addrs(), time.Since(start).Round(time.Millisecond))
		}
	}
	if shared.err != nil {
		t.Fatalf("testredis: the shared cluster did not start: %v", shared.err)
	}
	if err := shared.c.flushAll(t.Context()); err != nil {
		t.Fatalf("testredis: flushing the shared cluster: %v", err)
	}
	return shared.c
}

// SharedCluster returns the Redis Cluster that Run shares between the
// tests of the test binary, started on first use, with every key of every
// master deleted: what Run's "cluster" subtests get. A test must leave its
// topology as it found it. It skips or fails t as StartCluster does.
func SharedCluster(t testing.TB) *Cluster {
	t.Helper()
	return sharedCluster(t)
}

// sharedDirPrefix starts the name of a shared cluster's directory, which
// goes on with the ID of the test process and a random suffix.
const sharedDirPrefix = "testredis-cluster-"

// removeStaleDirs removes the shared clusters' and rings' directories left behind by
// test processes that have exited without calling Main (a test binary that
// timed out, say); their redis-servers died with them.
func removeStaleDirs() {
	for _, prefix := range []string{sharedDirPrefix, sharedRingDirPrefix} {
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*-*"))
		for _, d := range dirs {
			pid, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(d), prefix), "-")
			if n, err := strconv.Atoi(pid); err == nil && n != os.Getpid() && processGone(n) {
				_ = os.RemoveAll(d)
			}
		}
	}
}

// StopShared stops the cluster and the ring that Run shares between tests,
// if they were started, and removes their directories. Main calls it.
func StopShared() {
	stopSharedRing()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.c != nil {
		shared.c.Close()
		_ = os.RemoveAll(shared.dir)
	}
	shared.c, shared.dir, shared.err = nil, "", nil
}

// Main runs m's tests, stops the cluster and ring Run shares between them, and
// returns the exit code for os.Exit. A package whose tests use Run calls it
// from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testredis.Main(m)) }
//
// Without it, the cluster's processes die with the test binary (on Linux,
// by their parent-death signal; elsewhere they stay), and its temporary
// directory stays until the next test binary that starts a shared cluster
// removes it.
func Main(m *testing.M) int {
	code := m.Run()
	StopShared()
	return code
}
