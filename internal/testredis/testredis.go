// Package testredis is the test harness shared by the repository's tests.
//
// It gives a test an in-process miniredis ([Mini]), a real redis-server
// process on a free loopback port ([Start]) that the test can kill and
// restart to inject faults, a real Redis Cluster of three masters
// ([StartCluster]) whose slots the test can move between masters, three
// real servers as the shards of a redis.Ring ([StartRing]), any of which
// the test can kill, a replica of a server ([Server.StartReplica]), or a
// Sentinel set-up of a master, a replica and three sentinels
// ([StartSentinel]) that the test can fail over, planned or by killing the
// master. [Run] runs one behaviour test against miniredis, a server, the
// cluster and the ring, and [Backend.FastForward] moves TTLs forward on any
// of them, so tests never sleep for expiry.
//
// Tests that need a real server skip with a loud message when redis-server
// (or, for a cluster, redis-cli; for Sentinel, redis-sentinel) is not on
// PATH, unless the environment sets
// STOCKPOT_REQUIRE_REDIS=1, in which case the missing binary is a failure.
//
// No test waits without a bound: [Recv], [Wait], [Within] and [CloseWithin]
// wait at most [Timeout] for a value, a WaitGroup, a call or a Close, and
// fail the test with what did not happen; polled conditions use
// require.Eventually with the same Timeout.
package testredis

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// RequireEnv is the environment variable that turns a missing redis-server
// from a skip into a failure when set to a true value ("1", "true").
const RequireEnv = "STOCKPOT_REQUIRE_REDIS"

const (
	// startTimeout bounds how long Start and Restart wait for PING.
	startTimeout = 10 * time.Second
	// clientTimeout is the dial, read and write timeout of the clients that
	// Server.Client and Cluster.Client make, and of the harness's own. It
	// is generous: a busy machine running the race detector can starve a
	// process for a second, and a behaviour test must not take that for
	// Redis failing (the Manager's circuit breaker would open, and loads
	// fall back to the loader). Fault tests set short timeouts of their
	// own with ClientWith.
	clientTimeout = 5 * time.Second
	// startAttempts is how many free ports Start tries before giving up, in
	// case another process takes the port between choosing and binding it.
	startAttempts = 3
)

// Mini starts an in-process miniredis for t and a go-redis client on it; both
// are closed in t.Cleanup.
func Mini(t testing.TB) (*miniredis.Miniredis, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return mr, rdb
}

// Server is a real redis-server process listening on 127.0.0.1, started
// without persistence in a temporary directory. Its methods are safe for
// concurrent use.
type Server struct {
	t     testing.TB // the test given to Start; nil for a cluster's nodes
	bin   string
	dir   string
	log   string // path of the file that collects the server's stdout and stderr
	port  int
	extra func(port int) ([]string, error) // see newServer
	args  []string                         // extra's arguments for port
	conf  string                           // a config file, the process's first argument (a sentinel's); "" for none

	mu   sync.Mutex    // protects cmd and done
	cmd  *exec.Cmd     // nil when no process is running
	done chan struct{} // closed when cmd has exited
}

// Binary returns the path of the redis-server binary on PATH, or an error if
// there is none.
func Binary() (string, error) {
	return exec.LookPath("redis-server")
}

// loud holds the skip messages already printed to stderr, so that each is
// printed once per test binary.
var loud sync.Map

// lookPath returns the path of the binary name on PATH. If there is none, it
// calls missing, telling to install the Debian package pkg. what names the
// tests that need the binary.
func lookPath(t testing.TB, name, pkg, what string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		missing(t, fmt.Sprintf("%s not found (%v)", name, err), what,
			fmt.Sprintf("install %s (apt-get install %s) or put it on PATH", name, pkg))
	}
	return bin
}

// missing skips t with a loud message, because something the tests named
// what need is missing (problem) and remedy would fix it; the message goes to
// stderr too, once per test binary, so the skip is seen without -v. When
// STOCKPOT_REQUIRE_REDIS=1, missing fails t instead.
func missing(t testing.TB, problem, what, remedy string) {
	t.Helper()
	if required() {
		t.Fatalf("%s=1 but %s: %s", RequireEnv, problem, remedy)
	}
	msg := fmt.Sprintf("%s: %s SKIPPED; %s; set %s=1 to make this a failure", problem, what, remedy, RequireEnv)
	if _, printed := loud.LoadOrStore(msg, true); !printed {
		fmt.Fprintln(os.Stderr, "!!! testredis: "+msg)
	}
	t.Skip("!!! " + msg)
}

// Start starts a fresh redis-server for t on a free loopback port and waits
// until it answers PING. The server is killed in t.Cleanup.
//
// If redis-server is not on PATH, Start skips t with a loud message, or fails
// t when STOCKPOT_REQUIRE_REDIS=1.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Config{})
}

// Config is the set-up of a server started by StartWith. The zero Config is
// Start's: no memory limit.
type Config struct {
	// MaxMemory is redis-server's maxmemory, in bytes; 0 for no limit.
	// An empty server uses about 1 MB of it.
	MaxMemory int64

	// MaxMemoryPolicy is what the server does when MaxMemory is reached:
	// "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru",
	// "volatile-lfu", "volatile-random", "volatile-ttl" evict keys;
	// "noeviction" (redis-server's default, for "") refuses writes.
	MaxMemoryPolicy string

	// Args are further redis-server arguments, such as
	// []string{"--maxmemory-samples", "10"}.
	Args []string
}

// args returns the redis-server arguments of c.
func (c Config) args() []string {
	var args []string
	if c.MaxMemory > 0 {
		args = append(args, "--maxmemory", strconv.FormatInt(c.MaxMemory, 10))
	}
	if c.MaxMemoryPolicy != "" {
		args = append(args, "--maxmemory-policy", c.MaxMemoryPolicy)
	}
	return append(args, c.Args...)
}

// StartWith is Start with the set-up cfg, which Restart keeps. A setting
// redis-server refuses fails t with the server's output.
func StartWith(t testing.TB, cfg Config) *Server {
	t.Helper()
	bin := lookPath(t, "redis-server", "redis-server", "real-Redis tests")
	args := cfg.args()
	var extra func(int) ([]string, error)
	if len(args) > 0 {
		extra = func(int) ([]string, error) { return args, nil }
	}
	s := newServer(bin, t.TempDir(), extra)
	s.t = t
	t.Cleanup(s.Kill)
	if err := s.startOnFreePort(t.Logf); err != nil {
		t.Fatalf("testredis: %v", err)
	}
	return s
}

// newServer returns a Server, not yet started, whose process runs in dir and
// logs to dir/redis.log. extra, if not nil, gives the arguments to add to the
// common ones for a port (see startOnFreePort).
func newServer(bin, dir string, extra func(port int) ([]string, error)) *Server {
	return &Server{bin: bin, dir: dir, log: filepath.Join(dir, "redis.log"), extra: extra}
}

// startOnFreePort starts the server on a free port, trying up to
// startAttempts ports in case another process takes one between choosing and
// binding it. logf reports the failed attempts.
func (s *Server) startOnFreePort(logf func(format string, args ...any)) error {
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("finding a free port: %w", err)
		}
		s.port, s.args = port, nil
		if s.extra != nil {
			if s.args, err = s.extra(port); err != nil {
				return err
			}
		}
		err = s.start()
		if err == nil {
			return nil
		}
		if attempt == startAttempts {
			return err
		}
		logf("testredis: attempt %d: %v; retrying on another port", attempt, err)
	}
}

// Addr returns the server's address, "127.0.0.1:port". It stays the same
// across Kill and Restart.
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Client returns a new client to the server with 5s dial, read and write
// timeouts, closed in t.Cleanup.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	return s.ClientWith(t, nil)
}

// ClientWith returns a new client to the server, closed in t.Cleanup. It starts
// from the options Client uses and lets mod, if not nil, change them.
func (s *Server) ClientWith(t testing.TB, mod func(*redis.Options)) *redis.Client {
	t.Helper()
	opt := &redis.Options{
		Addr:         s.Addr(),
		DialTimeout:  clientTimeout,
		ReadTimeout:  clientTimeout,
		WriteTimeout: clientTimeout,
	}
	if mod != nil {
		mod(opt)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// Kill sends SIGKILL to the server and waits for the process to exit. The port
// is kept for Restart. Kill on a server that is not running does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

// Restart starts the server again on the same port, after killing it if it is
// still running, and waits until it answers PING. The data of the previous
// process is gone. On error Restart calls Fatal on the test given to Start, so
// call it from that test's goroutine.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		s.t.Fatalf("testredis: restart: %v", err)
	}
}

// FastForward emulates the passage of d on the server for TTL purposes, in
// every database: each key with a TTL gets PEXPIRE pttl-d, or is deleted when
// its PTTL is at most d. Keys without a TTL are untouched. Keys are found with
// SCAN, and each page is updated atomically by a script. This mirrors
// miniredis's FastForward, except for hash-field TTLs, which redis-server 7.0
// does not have.
func (s *Server) FastForward(t testing.TB, d time.Duration) {
	t.Helper()
	if d <= 0 {
		return
	}
	ctx := t.Context()
	rdb := s.Client(t)
	dbs, err := keyspaceDBs(ctx, rdb)
	if err != nil {
		t.Fatalf("testredis: fast-forward: %v", err)
	}
	for _, db := range dbs {
		if err := fastForwardDB(ctx, rdb, db, d, false); err != nil {
			t.Fatalf("testredis: fast-forward db %d: %v", db, err)
		}
	}
}

// fastForwardSrc shortens the TTL of each key by ARGV[1] milliseconds,
// deleting the keys whose TTL would reach zero. The keys are KEYS or, when
// there are none, ARGV[2] on.
const fastForwardSrc = `
local d = tonumber(ARGV[1])
local keys = KEYS
if #keys == 0 then
  keys = {unpack(ARGV, 2)}
end
for _, k in ipairs(keys) do
  local pttl = redis.call('PTTL', k)
  if pttl > 0 then
    if pttl <= d then
      redis.call('DEL', k)
    else
      redis.call('PEXPIRE', k, pttl - d)
    end
  end
end
return 0
`

var (
	// fastForwardScript takes the keys of a page of SCAN as KEYS, which on
	// a single server may be in any hash slots.
	fastForwardScript = redis.NewScript(fastForwardSrc)
	// fastForwardNodeScript takes them as ARGV, for a cluster node: a
	// script's KEYS must share one slot there, but the keys it touches
	// without declaring them may be in any of the node's slots when it
	// says so (Redis 7.0 or later).
	fastForwardNodeScript = redis.NewScript("#!lua flags=allow-cross-slot-keys\n" + fastForwardSrc)
)

// fastForwardDB applies fastForwardSrc to every key of database db on the
// server rdb is connected to, a page of SCAN at a time. On a cluster node
// (clusterNode), the keys go in ARGV (see fastForwardNodeScript).
func fastForwardDB(ctx context.Context, rdb *redis.Client, db int, d time.Duration, clusterNode bool) error {
	conn := rdb.Conn()
	defer conn.Close()
	if err := conn.Select(ctx, db).Err(); err != nil {
		return err
	}
	ms := d.Milliseconds()
	var cursor uint64
	for {
		keys, next, err := conn.Scan(ctx, cursor, "*", 500).Result()
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			var cmd *redis.Cmd
			if clusterNode {
				args := make([]any, 0, len(keys)+1)
				args = append(args, ms)
				for _, k := range keys {
					args = append(args, k)
				}
				cmd = fastForwardNodeScript.Run(ctx, conn, nil, args...)
			} else {
				cmd = fastForwardScript.Run(ctx, conn, keys, ms)
			}
			if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// keyspaceDBs returns the numbers of the databases that hold keys, from
// INFO keyspace.
func keyspaceDBs(ctx context.Context, rdb *redis.Client) ([]int, error) {
	info, err := rdb.Info(ctx, "keyspace").Result()
	if err != nil {
		return nil, err
	}
	var dbs []int
	for line := range strings.Lines(info) {
		name, _, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "db") {
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(name, "db"))
		if err != nil {
			return nil, fmt.Errorf("parsing INFO keyspace line %q: %w", line, err)
		}
		dbs = append(dbs, n)
	}
	return dbs, nil
}

// start starts the process on s.port and waits until it answers PING.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("server is already running")
	}
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy
	offset, err := logf.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}

	var first []string
	if s.conf != "" {
		first = []string{s.conf}
	}
	cmd := exec.Command(s.bin, append(first,
		"--save", "",
		"--appendonly", "no",
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
	)...)
	cmd.Args = append(cmd.Args, s.args...)
	cmd.Dir = s.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.cmd, s.done = cmd, done

	if err := waitPing(s.Addr(), cmd.Process.Pid, done); err != nil {
		s.killLocked()
		return fmt.Errorf("redis-server on %s: %v; its output:\n%s", s.Addr(), err, s.logSince(offset))
	}
	return nil
}

// killLocked kills the process, if any, and waits for it. s.mu must be held.
func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd, s.done = nil, nil
}

// logSince returns what the server wrote to its log from offset on.
func (s *Server) logSince(offset int64) string {
	f, err := os.Open(s.log)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", s.log, err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return fmt.Sprintf("(reading %s: %v)", s.log, err)
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", s.log, err)
	}
	return string(b)
}

// waitPing polls addr, backing off from 2ms to 50ms, until the process pid
// answers there, the process exits (exited is closed), or startTimeout passes.
func waitPing(addr string, pid int, exited <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	delay := 2 * time.Millisecond
	var lastErr error
	for {
		if lastErr = probe(addr, pid); lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING within %v: %v", startTimeout, lastErr)
		}
		select {
		case <-exited:
			return fmt.Errorf("process exited before answering PING (last error: %v)", lastErr)
		case <-time.After(delay):
		}
		delay = min(delay*2, 50*time.Millisecond)
	}
}

// probe sends PING and INFO server to addr and checks that the answer comes
// from process pid, not from another server that took the port.
func probe(addr string, pid int) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
		return err
	}
	if _, err := io.WriteString(c, "PING\r\nINFO server\r\n"); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line = strings.TrimSpace(line); line != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	if line, err = r.ReadString('\n'); err != nil {
		return err
	}
	n, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(line), "$"))
	if err != nil || !strings.HasPrefix(line, "$") {
		return fmt.Errorf("INFO server answered %q", strings.TrimSpace(line))
	}
	info := make([]byte, n)
	if _, err := io.ReadFull(r, info); err != nil {
		return err
	}
	want := "process_id:" + strconv.Itoa(pid)
	for l := range strings.Lines(string(info)) {
		if strings.TrimSpace(l) == want {
			return nil
		}
	}
	return fmt.Errorf("%s is served by another process (no %q in INFO server)", addr, want)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// required reports whether the environment makes a missing redis-server a
// failure.
func required() bool {
	v, err := strconv.ParseBool(os.Getenv(RequireEnv))
	return err == nil && v
}

// Backend is one Redis to run a behaviour test against: an in-process
// miniredis, a real redis-server, a Redis Cluster, or a redis.Ring.
type Backend struct {
	Name    string               // "miniredis", "redis", "cluster" or "ring"
	Mini    *miniredis.Miniredis // set on miniredis only
	Server  *Server              // set on a real server only
	Cluster *Cluster             // set on a cluster only
	Ring    *Ring                // set on a ring only
}

// Client returns a new client on the backend, closed in t.Cleanup: a
// *redis.ClusterClient on a cluster, a *redis.Ring on a ring, else a
// *redis.Client. Several calls
// give several connection pools on the same data, as several processes of a
// fleet would have.
func (b *Backend) Client(t testing.TB) redis.UniversalClient {
	t.Helper()
	switch {
	case b.Cluster != nil:
		return b.Cluster.Client(t)
	case b.Ring != nil:
		return b.Ring.Client(t)
	case b.Server != nil:
		return b.Server.Client(t)
	}
	rdb := redis.NewClient(&redis.Options{Addr: b.Mini.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// FastForward moves every TTL on the backend forward by d, expiring the keys
// whose TTL runs out: miniredis's FastForward, [Server.FastForward],
// [Cluster.FastForward] or [Ring.FastForward].
func (b *Backend) FastForward(t testing.TB, d time.Duration) {
	t.Helper()
	switch {
	case b.Cluster != nil:
		b.Cluster.FastForward(t, d)
	case b.Ring != nil:
		b.Ring.FastForward(t, d)
	case b.Server != nil:
		b.Server.FastForward(t, d)
	default:
		b.Mini.FastForward(d)
	}
}

// Run runs fn as a subtest once per backend: "miniredis" on a fresh
// miniredis; "redis" on a fresh real server from [Start]; "cluster" on a
// Redis Cluster of three masters; and "ring" on a redis.Ring over three
// real servers. The cluster is shared by the tests of the test binary,
// because starting one takes seconds, and so is the ring: each is started by
// the first test that needs it, has every key deleted (FLUSHALL on every
// master or shard) before each test, and is stopped by [Main]. So a test
// must leave its topology as it found it; one that moves slots starts its
// own with [StartCluster], one that kills a shard its own with [StartRing].
// The real-Redis subtests skip or fail as Start and StartCluster do when
// redis-server or redis-cli is missing.
//
// The subtests' names select backends: go test -run 'TestX/cluster'.
func Run(t *testing.T, fn func(t *testing.T, b *Backend)) {
	t.Helper()
	t.Run("miniredis", func(t *testing.T) {
		fn(t, &Backend{Name: "miniredis", Mini: miniredis.RunT(t)})
	})
	t.Run("redis", func(t *testing.T) {
		fn(t, &Backend{Name: "redis", Server: Start(t)})
	})
	t.Run("cluster", func(t *testing.T) {
		fn(t, &Backend{Name: "cluster", Cluster: sharedCluster(t)})
	})
	t.Run("ring", func(t *testing.T) {
		fn(t, &Backend{Name: "ring", Ring: sharedRing(t)})
	})
}
