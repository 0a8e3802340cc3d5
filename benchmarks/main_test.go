package benchmarks

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisAddr is the address of the redis-server every benchmark uses: the
// REDIS_ADDR environment variable, or one TestMain starts.
var redisAddr string

// TestMain starts a redis-server on a free loopback port, without
// persistence, unless REDIS_ADDR names one, and kills it when the
// benchmarks end.
func TestMain(m *testing.M) {
	flag.Parse()
	redisAddr = os.Getenv("REDIS_ADDR")
	var stop func()
	if redisAddr == "" {
		var err error
		redisAddr, stop, err = startRedis()
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchmarks:", err)
			os.Exit(1)
		}
		stop = sync.OnceFunc(stop)
		// An interrupted run still kills its server and removes its
		// directory.
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() {
			<-sig
			stop()
			os.Exit(2)
		}()
	}
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		// Configuration lines, in the benchmark format, that benchstat and
		// cmd/table carry along with the results.
		if v, err := redisVersion(); err == nil {
			fmt.Printf("redis-version: %s\n", v)
		} else {
			fmt.Fprintln(os.Stderr, "benchmarks:", err)
		}
	}
	code := m.Run()
	if stop != nil {
		stop()
	}
	os.Exit(code)
}

// waitTimeout bounds the benchmarks' waits for their goroutines and for a
// Manager's Close: far above what they take, so that only a hang reaches it.
const waitTimeout = time.Minute

// within runs f on a goroutine of its own and waits for it to return,
// failing tb, with what did not happen, when it has not within waitTimeout.
// f must not call tb.FailNow. Call within from the benchmark's goroutine or
// a Cleanup function.
func within(tb testing.TB, what string, f func()) {
	tb.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	t := time.NewTimer(waitTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		tb.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
	}
}

// newClient returns a client to the benchmarks' redis-server with go-redis's
// default options, as a service would build it.
func newClient(tb testing.TB) *redis.Client {
	tb.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

func redisVersion() (string, error) {
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	info, err := rdb.Info(context.Background(), "server").Result()
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return v, nil
		}
	}
	return "", errors.New("no redis_version in INFO server")
}

// startRedis starts redis-server on a free loopback port, in a temporary
// directory and without persistence, and waits until it answers PING. It
// tries another port when the one it chose was taken in the meantime.
func startRedis() (addr string, stop func(), err error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil, fmt.Errorf("redis-server is not on PATH and REDIS_ADDR is not set: %w", err)
	}
	dir, err := os.MkdirTemp("", "stockpot-bench-redis-")
	if err != nil {
		return "", nil, err
	}
	for attempt := 1; ; attempt++ {
		addr, stop, err := startRedisOnce(bin, dir)
		if err == nil {
			return addr, func() { stop(); _ = os.RemoveAll(dir) }, nil
		}
		if attempt == 3 {
			_ = os.RemoveAll(dir)
			return "", nil, err
		}
	}
}

func startRedisOnce(bin, dir string) (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	cmd := exec.Command(bin,
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", dir,
	)
	cmd.Dir = dir
	cmd.SysProcAttr = sysProcAttr()
	out, err := os.Create(dir + "/redis.log")
	if err != nil {
		return "", nil, err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	if err := waitReady(addr, cmd.Process.Pid, exited); err != nil {
		stop()
		log, _ := os.ReadFile(dir + "/redis.log")
		return "", nil, fmt.Errorf("redis-server on %s: %v; its log:\n%s", addr, err, log)
	}
	return addr, stop, nil
}

// waitReady polls addr until the process pid answers PING there, the
// process exits, or 10 s pass.
func waitReady(addr string, pid int, exited <-chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ping(addr, pid)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING within 10s: %v", err)
		}
		select {
		case <-exited:
			return fmt.Errorf("exited before answering PING (last error: %v)", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ping checks that the server on addr answers PING and is process pid, not
// another server that took the port first.
func ping(addr string, pid int) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprint(c, "PING\r\nINFO server\r\n"); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	n, err := r.ReadString('\n') // the bulk string's length, $n
	if err != nil {
		return err
	}
	size, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(n), "$"))
	if err != nil {
		return fmt.Errorf("INFO server answered %q", strings.TrimSpace(n))
	}
	info := make([]byte, size)
	if _, err := io.ReadFull(r, info); err != nil {
		return err
	}
	want := "process_id:" + strconv.Itoa(pid)
	for l := range strings.Lines(string(info)) {
		if strings.TrimSpace(l) == want {
			return nil
		}
	}
	return fmt.Errorf("%s is served by another process", addr)
}
