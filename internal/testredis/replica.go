package testredis

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// replicaSyncTimeout bounds how long StartReplica waits for the replica's
// link to its master to come up after the first full sync.
const replicaSyncTimeout = Timeout

// StartReplica starts a fresh redis-server for t on a free loopback port as a
// replica of s (--replicaof), and returns it once the replica reports
// master_link_status:up, that is once it has loaded the master's data and
// follows its stream of writes. The replica is killed in t.Cleanup; its
// Restart starts it as a replica of s again.
//
// So that the first sync does not wait out redis-server's default
// repl-diskless-sync-delay of 5 s, StartReplica sets it to 0 on s with CONFIG
// SET, and starts the replica with it too (it may be promoted). It skips or
// fails t as Start does when redis-server is missing.
func (s *Server) StartReplica(t testing.TB) *Server {
	t.Helper()
	bin := lookPath(t, "redis-server", "redis-server", "real-Redis tests")
	args := replicaArgs(s.Addr())
	r := newServer(bin, t.TempDir(), func(int) ([]string, error) { return args, nil })
	r.t = t
	t.Cleanup(r.Kill)

	ctx, cancel := context.WithTimeout(context.Background(), replicaSyncTimeout)
	defer cancel()
	admin := s.Client(t)
	if err := admin.ConfigSet(ctx, "repl-diskless-sync-delay", "0").Err(); err != nil {
		t.Fatalf("testredis: CONFIG SET repl-diskless-sync-delay 0 on the master %s: %v", s.Addr(), err)
	}
	if err := r.startOnFreePort(t.Logf); err != nil {
		t.Fatalf("testredis: starting a replica of %s: %v", s.Addr(), err)
	}
	if err := waitLinkUp(ctx, r.Client(t)); err != nil {
		t.Fatalf("testredis: replica %s of %s: %v; its output:\n%s", r.Addr(), s.Addr(), err, r.logSince(0))
	}
	// The master counts a replica (for WAIT) once it has its first
	// acknowledgement, a little after the replica's link is up.
	if err := waitOnline(ctx, admin, r.port); err != nil {
		t.Fatalf("testredis: replica %s of %s: %v", r.Addr(), s.Addr(), err)
	}
	return r
}

// waitOnline polls INFO replication on master until it lists the replica
// on port as online, or ctx ends.
func waitOnline(ctx context.Context, master *redis.Client, port int) error {
	want := "port=" + strconv.Itoa(port) + ",state=online"
	var last string
	for {
		info, err := master.Info(ctx, "replication").Result()
		if err == nil {
			if strings.Contains(info, want) {
				return nil
			}
			last = info
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the master does not list it online (last INFO replication: %q): %w", last, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// replicaArgs returns the redis-server arguments of a replica of the server
// at addr, "host:port".
func replicaArgs(addr string) []string {
	host, port, _ := net.SplitHostPort(addr)
	return []string{"--replicaof", host, port, "--repl-diskless-sync-delay", "0"}
}

// waitLinkUp polls INFO replication on rdb, a replica, until it says
// master_link_status:up or ctx ends.
func waitLinkUp(ctx context.Context, rdb *redis.Client) error {
	var last string
	for {
		info, err := rdb.Info(ctx, "replication").Result()
		if err == nil {
			last = infoField(info, "master_link_status")
			if last == "up" {
				return nil
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("master_link_status not up (last seen: %q): %w", last, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// infoField returns the value of field in the text of an INFO reply, or "".
func infoField(info, field string) string {
	for line := range strings.Lines(info) {
		name, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && name == field {
			return value
		}
	}
	return ""
}
