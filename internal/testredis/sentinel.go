package testredis

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// SentinelMaster is the name under which a Sentinel's sentinels monitor
	// its master (FailoverOptions.MasterName).
	SentinelMaster = "stockpot"
	// sentinels is how many sentinel processes a Sentinel runs; a failover
	// needs two of them (the quorum, and a majority) to agree.
	sentinels = 3
	// sentinelDownAfter is the sentinels' down-after-milliseconds: how long
	// a master must not answer before a sentinel thinks it down.
	sentinelDownAfter = 1000
	// sentinelFailoverTimeout is the sentinels' failover-timeout, in
	// milliseconds: how long a promotion may take before it is given up,
	// and half the time a sentinel waits before leading a failover of a
	// master it led or voted on a failover of.
	sentinelFailoverTimeout = 3000
	// switchTimeout bounds the wait for the sentinels to name a new master.
	// A failover takes 1–3 s, but an election the sentinels fail (their
	// votes split) is tried again only 2 × failover-timeout later: one such
	// failover took 7.8 s.
	switchTimeout = 2 * Timeout
)

// Sentinel is a Redis Sentinel set-up of real processes on loopback ports: a
// master, a replica, and three redis-sentinel processes that monitor the
// master as SentinelMaster with a quorum of two, thinking it down after 1 s
// without an answer. A failover takes a few seconds. Its methods are safe for
// concurrent use, except Failover, KillMaster and Rejoin with each other.
type Sentinel struct {
	t         testing.TB
	data      []*Server // the master and the replica, in start order; roles change on failover
	sentinels []*Server
	admin     []*redis.SentinelClient // one per sentinel, for the harness's own commands

	mu    sync.Mutex               // protects nodes
	nodes map[string]*redis.Client // by address: a client on each data node, for the harness's own commands
}

// StartSentinel starts a Sentinel set-up for t and returns once every sentinel
// knows the master, the replica (synced) and the two other sentinels. Every
// process is killed in t.Cleanup. Starting it takes a few seconds, most of it
// the sentinels finding each other (they say hello every 2 s).
//
// It needs redis-server and redis-sentinel on PATH (Debian packages
// redis-server and redis-sentinel); without them it skips t with a loud
// message, or fails t when STOCKPOT_REQUIRE_REDIS=1.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	lookPath(t, "redis-server", "redis-server", "Sentinel tests")
	sbin := lookPath(t, "redis-sentinel", "redis-sentinel", "Sentinel tests")
	master := StartWith(t, Config{Args: []string{"--repl-diskless-sync-delay", "0"}})
	s := &Sentinel{t: t, data: []*Server{master, master.StartReplica(t)}, nodes: make(map[string]*redis.Client)}
	t.Cleanup(s.close)
	for i := range sentinels {
		dir := t.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		text := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 2\n"+
			"sentinel down-after-milliseconds %[1]s %[3]d\n"+
			"sentinel failover-timeout %[1]s %[4]d\n"+
			"sentinel parallel-syncs %[1]s 1\n",
			SentinelMaster, master.port, sentinelDownAfter, sentinelFailoverTimeout)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatalf("testredis: writing %s: %v", conf, err)
		}
		sn := newServer(sbin, dir, nil)
		sn.t, sn.conf = t, conf
		t.Cleanup(sn.Kill)
		if err := sn.startOnFreePort(t.Logf); err != nil {
			t.Fatalf("testredis: starting sentinel %d: %v", i, err)
		}
		s.sentinels = append(s.sentinels, sn)
		s.admin = append(s.admin, redis.NewSentinelClient(&redis.Options{
			Addr:         sn.Addr(),
			DialTimeout:  clientTimeout,
			ReadTimeout:  clientTimeout,
			WriteTimeout: clientTimeout,
		}))
	}
	s.waitReady(t)
	return s
}

// close closes the harness's clients; the processes are killed by the
// cleanups of their own.
func (s *Sentinel) close() {
	for _, a := range s.admin {
		_ = a.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.nodes {
		_ = c.Close()
	}
}

// SentinelAddrs returns the sentinels' addresses, "127.0.0.1:port".
func (s *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.sentinels))
	for i, sn := range s.sentinels {
		addrs[i] = sn.Addr()
	}
	return addrs
}

// Client returns a new failover client (redis.NewFailoverClient) with 5s
// dial, read and write timeouts, closed in t.Cleanup. It asks the sentinels
// for the master and follows it across failovers.
func (s *Sentinel) Client(t testing.TB) *redis.Client {
	t.Helper()
	return s.ClientWith(t, nil)
}

// ClientWith returns a new failover client, closed in t.Cleanup. It starts
// from the options Client uses and lets mod, if not nil, change them.
func (s *Sentinel) ClientWith(t testing.TB, mod func(*redis.FailoverOptions)) *redis.Client {
	t.Helper()
	opt := &redis.FailoverOptions{
		MasterName:    SentinelMaster,
		SentinelAddrs: s.SentinelAddrs(),
		DialTimeout:   clientTimeout,
		ReadTimeout:   clientTimeout,
		WriteTimeout:  clientTimeout,
	}
	if mod != nil {
		mod(opt)
	}
	rdb := redis.NewFailoverClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// Master returns the data node that every sentinel names as the master,
// failing t when they do not agree or name an unknown node.
func (s *Sentinel) Master(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	addr, err := s.masterAddr(ctx)
	if err != nil {
		t.Fatalf("testredis: sentinel: %v", err)
	}
	m := s.server(addr)
	if m == nil {
		t.Fatalf("testredis: sentinel: the master %s is none of the data nodes", addr)
	}
	return m
}

// Replicas returns the running data nodes other than the master.
func (s *Sentinel) Replicas(t testing.TB) []*Server {
	t.Helper()
	master := s.Master(t)
	var out []*Server
	for _, d := range s.data {
		if d != master && d.running() {
			out = append(out, d)
		}
	}
	return out
}

// server returns the data node at addr, or nil.
func (s *Sentinel) server(addr string) *Server {
	for _, d := range s.data {
		if d.Addr() == addr {
			return d
		}
	}
	return nil
}

// masterAddr returns the address every sentinel gives for the master, or an
// error when one does not answer or they do not agree.
func (s *Sentinel) masterAddr(ctx context.Context) (string, error) {
	var addr string
	for i, a := range s.admin {
		got, err := a.GetMasterAddrByName(ctx, SentinelMaster).Result()
		if err != nil {
			return "", fmt.Errorf("sentinel %d: SENTINEL GET-MASTER-ADDR-BY-NAME: %w", i, err)
		}
		if len(got) != 2 {
			return "", fmt.Errorf("sentinel %d: SENTINEL GET-MASTER-ADDR-BY-NAME answered %q", i, got)
		}
		at := got[0] + ":" + got[1]
		if i > 0 && at != addr {
			return "", fmt.Errorf("sentinel %d names %s the master, sentinel 0 %s", i, at, addr)
		}
		addr = at
	}
	return addr, nil
}

// node returns the harness's client on the data node at addr.
func (s *Sentinel) node(addr string) *redis.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.nodes[addr]
	if c == nil {
		c = redis.NewClient(&redis.Options{
			Addr:         addr,
			DialTimeout:  time.Second,
			ReadTimeout:  clientTimeout,
			WriteTimeout: clientTimeout,
			MaxRetries:   -1,
		})
		s.nodes[addr] = c
	}
	return c
}

// ready returns nil once the set-up can fail over: every sentinel names
// the same master, which says role:master, and knows the two other
// sentinels; and every running data node but the master says it is the
// master's replica with its link up, and every sentinel knows it as a
// replica, neither down nor disconnected. Otherwise it says what is not so.
// (A sentinel refreshes what it knows of a replica's link only every 10 s,
// but every second once the master is down, before it picks the replica
// to promote; so the replica's own word is taken for its link.)
func (s *Sentinel) ready(ctx context.Context) error {
	addr, err := s.masterAddr(ctx)
	if err != nil {
		return err
	}
	if role, err := s.role(ctx, addr); err != nil || role != "master" {
		return fmt.Errorf("the master %s says role %q (%v)", addr, role, err)
	}
	var replicas []string
	for _, d := range s.data {
		if d.Addr() == addr || !d.running() {
			continue
		}
		info, err := s.node(d.Addr()).Info(ctx, "replication").Result()
		if err != nil {
			return fmt.Errorf("the replica %s: INFO: %w", d.Addr(), err)
		}
		of := infoField(info, "master_host") + ":" + infoField(info, "master_port")
		if infoField(info, "role") != "slave" || of != addr || infoField(info, "master_link_status") != "up" {
			return fmt.Errorf("the replica %s says role %q, master %s, link %q; want a replica of %s, link up",
				d.Addr(), infoField(info, "role"), of, infoField(info, "master_link_status"), addr)
		}
		replicas = append(replicas, d.Addr())
	}
	for i, a := range s.admin {
		m, err := a.Master(ctx, SentinelMaster).Result()
		if err != nil {
			return fmt.Errorf("sentinel %d: SENTINEL MASTER: %w", i, err)
		}
		if m["flags"] != "master" || m["num-other-sentinels"] != strconv.Itoa(sentinels-1) {
			return fmt.Errorf("sentinel %d: master flags %q, %s other sentinels known, want %q and %d",
				i, m["flags"], m["num-other-sentinels"], "master", sentinels-1)
		}
		known, err := a.Replicas(ctx, SentinelMaster).Result()
		if err != nil {
			return fmt.Errorf("sentinel %d: SENTINEL REPLICAS: %w", i, err)
		}
		for _, r := range replicas {
			j := slices.IndexFunc(known, func(k map[string]string) bool { return k["name"] == r })
			if j < 0 {
				return fmt.Errorf("sentinel %d does not know the replica %s", i, r)
			}
			if flags := known[j]["flags"]; flags != "slave" {
				return fmt.Errorf("sentinel %d: replica %s has flags %q, want %q", i, r, flags, "slave")
			}
		}
	}
	return nil
}

// role returns the role the data node at addr gives in INFO replication.
func (s *Sentinel) role(ctx context.Context, addr string) (string, error) {
	info, err := s.node(addr).Info(ctx, "replication").Result()
	if err != nil {
		return "", err
	}
	return infoField(info, "role"), nil
}

// running reports whether the server's process runs.
func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// waitReady waits until ready, failing t after Timeout with what is not
// ready.
func (s *Sentinel) waitReady(t testing.TB) {
	t.Helper()
	if err := pollFor(Timeout, s.ready); err != nil {
		t.Fatalf("testredis: the Sentinel set-up is not ready to fail over: %v", err)
	}
}

// pollFor calls cond every 20ms until it returns nil or an error wrapping
// errStop, and returns its last error when it has not returned nil within d.
func pollFor(d time.Duration, cond func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		err := cond(ctx)
		if err == nil || errors.Is(err, errStop) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %v: %w", d, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Failover makes a planned failover: once the set-up is ready (see
// StartSentinel), it sends SENTINEL FAILOVER to a sentinel and waits until
// every sentinel names another data node the master and that node says
// role:master. It returns the new master and how long the switch took from
// the command. The old master becomes its replica; writes it took after the
// promotion and before it was told are lost, as Sentinel's are.
//
// Sentinel tells the old master to become a replica only when it next looks
// at it, up to 10 s after the switch: until then the old master is a master
// too, serving the clients that are still connected to it (subscriptions
// included). The next Failover or KillMaster waits for that.
func (s *Sentinel) Failover(t testing.TB) (master *Server, took time.Duration) {
	t.Helper()
	s.waitReady(t)
	old := s.Master(t).Addr()
	start := time.Now()
	err := pollFor(Timeout, func(ctx context.Context) error {
		err := s.admin[0].Failover(ctx, SentinelMaster).Err()
		if err != nil && (strings.HasPrefix(err.Error(), "INPROG") || strings.HasPrefix(err.Error(), "NOGOODSLAVE")) {
			return err // try again
		}
		if err != nil {
			return fmt.Errorf("%w: %w", errStop, err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("testredis: SENTINEL FAILOVER: %v", err)
	}
	return s.waitSwitch(t, old, start)
}

// errStop, wrapped in the error of a condition, stops poll.
var errStop = errors.New("not retried")

// KillMaster makes an unplanned failover: once the set-up is ready (see
// StartSentinel), it kills the master with SIGKILL and waits until every
// sentinel names another data node the master and that node says
// role:master. It returns the killed node, to give to Rejoin, and how long
// the switch took from the kill. Writes the replica had not received when
// the master died are lost.
func (s *Sentinel) KillMaster(t testing.TB) (killed *Server, took time.Duration) {
	t.Helper()
	s.waitReady(t)
	killed = s.Master(t)
	start := time.Now()
	killed.Kill()
	_, took = s.waitSwitch(t, killed.Addr(), start)
	return killed, took
}

// waitSwitch waits until every sentinel names a data node other than old the
// master, and that node says role:master, failing t after switchTimeout. It
// returns the new master and the time since start.
func (s *Sentinel) waitSwitch(t testing.TB, old string, start time.Time) (*Server, time.Duration) {
	t.Helper()
	var addr string
	err := pollFor(switchTimeout, func(ctx context.Context) error {
		var err error
		if addr, err = s.masterAddr(ctx); err != nil {
			return err
		}
		if addr == old {
			return fmt.Errorf("the sentinels still name %s the master", old)
		}
		if role, err := s.role(ctx, addr); err != nil || role != "master" {
			return fmt.Errorf("the new master %s says role %q (%v)", addr, role, err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("testredis: waiting for the master %s to be replaced: %v", old, err)
	}
	took := time.Since(start)
	m := s.server(addr)
	if m == nil {
		t.Fatalf("testredis: sentinel: the new master %s is none of the data nodes", addr)
	}
	return m, took
}

// Rejoin restarts a data node that KillMaster killed, empty, as a replica of
// the current master, and waits until it has synced and the sentinels know
// it as a replica in good health, so that the set-up can fail over again.
func (s *Sentinel) Rejoin(t testing.TB, killed *Server) {
	t.Helper()
	master := s.Master(t)
	killed.args = replicaArgs(master.Addr())
	if err := killed.start(); err != nil {
		t.Fatalf("testredis: restarting %s as a replica of %s: %v", killed.Addr(), master.Addr(), err)
	}
	s.waitReady(t)
}

// WaitClient waits until rdb, a client from Client or ClientWith, sends its
// commands to the master the sentinels name, failing t after Timeout. It
// sends INFO server on rdb.
func (s *Sentinel) WaitClient(t testing.TB, rdb *redis.Client) {
	t.Helper()
	want := strconv.Itoa(s.Master(t).port)
	var got string
	err := pollFor(Timeout, func(ctx context.Context) error {
		info, err := rdb.Info(ctx, "server").Result()
		if err != nil {
			return err
		}
		if got = infoField(info, "tcp_port"); got != want {
			return fmt.Errorf("the client's commands go to port %s, the master's is %s", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("testredis: waiting for a failover client to follow the master: %v", err)
	}
}
