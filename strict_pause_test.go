//go:build unix

package cache

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// pauseLease is the lease of the Managers of TestStrictLocalPausedProcess.
const pauseLease = 200 * time.Millisecond

// TestStrictLocalPausedProcess pauses a whole process (SIGSTOP) that holds
// a local copy, invalidates the entry from this one, and resumes it
// (SIGCONT) as soon as the Invalidate returns: its first read must not
// answer the copy. In strict mode the Invalidate waits for the paused
// Manager's lease to end, and the resumed Manager finds it ended before it
// reads a message. In the default mode (the positive control) the
// Invalidate returns at once and the resumed process may answer its copy
// before it reads the message.
func TestStrictLocalPausedProcess(t *testing.T) {
	srv := testredis.Start(t)
	raw := srv.Client(t)
	ctx := t.Context()
	const rounds = 10
	for _, strict := range []bool{false, true} {
		prefix := fmt.Sprintf("paused-%v", strict)
		w, err := New(srv.Client(t), &Options{Prefix: prefix, Local: localOpts(time.Minute, strict, pauseLease)})
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, w) })
		c := startChild(t, srv.Addr(), prefix, strict)
		stale := 0
		var took []time.Duration
		for round := range rounds {
			src, key := fmt.Sprint(round), fmt.Sprint("k", round)
			require.NoError(t, raw.Set(ctx, prefix+":src", src, time.Minute).Err())
			c.ask(t, "ready")
			// A message of the round before may void the first copy.
			for i := 0; c.ask(t, "read "+key) != src+" local"; i++ {
				require.Less(t, i, 100, "the child does not keep a local copy")
			}
			if strict {
				registryComplete(t, w)
			}

			c.signal(t, syscall.SIGSTOP)
			require.NoError(t, raw.Set(ctx, prefix+":src", src+"-new", time.Minute).Err())
			start := time.Now()
			require.NoError(t, w.Invalidate(ctx, Key(key)))
			took = append(took, time.Since(start))
			c.signal(t, syscall.SIGCONT)
			got := c.ask(t, "read "+key)
			if strings.HasPrefix(got, src+" ") {
				stale++
			}
		}
		t.Logf("strict %v: the resumed process answered the invalidated copy in %d of %d rounds; Invalidate took %v (lease %v)",
			strict, stale, rounds, summarize(took), pauseLease)
		if strict {
			assert.Zero(t, stale)
			for _, d := range took {
				assert.Less(t, d, pauseLease+200*time.Millisecond, "an Invalidate waited past the lease")
			}
		} else {
			assert.Positive(t, stale, "the positive control: the default mode answers the copy")
		}
	}
}

// child is a process running TestStrictLocalPausedChild.
type child struct {
	cmd   *exec.Cmd
	in    io.Writer
	lines chan string
}

// startChild starts this test binary as a child process that runs a
// Manager on addr, stopped in cleanup.
func startChild(t *testing.T, addr, prefix string, strict bool) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestStrictLocalPausedChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "STOCKPOT_CHILD_REDIS="+addr, "STOCKPOT_CHILD_PREFIX="+prefix, fmt.Sprintf("STOCKPOT_CHILD_STRICT=%v", strict))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	require.NoError(t, err)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c := &child{cmd: cmd, in: in, lines: make(chan string, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), "child: "); ok {
				c.lines <- l
			}
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = in.Close()
		exited := make(chan error, 1)
		go func() { <-done; exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			assert.NoError(t, err, "the child process failed")
		case <-time.After(testredis.Timeout):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("the child process did not end within %v", testredis.Timeout)
		}
	})
	return c
}

// ask sends a command to the child and returns its answer.
func (c *child) ask(t *testing.T, cmd string) string {
	t.Helper()
	_, err := fmt.Fprintln(c.in, cmd)
	require.NoError(t, err)
	select {
	case l := <-c.lines:
		return l
	case <-time.After(testredis.Timeout):
		t.Fatalf("the child process did not answer %q within %v", cmd, testredis.Timeout)
		return ""
	}
}

func (c *child) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, c.cmd.Process.Signal(sig))
}

// TestStrictLocalPausedChild is the child process of
// TestStrictLocalPausedProcess: a Manager that answers the commands it
// reads on stdin ("ready": once it may serve local copies; "read KEY":
// the value of KEY, loaded from the key P:src, and whether it came from
// the local tier), until stdin ends.
func TestStrictLocalPausedChild(t *testing.T) {
	addr := os.Getenv("STOCKPOT_CHILD_REDIS")
	if addr == "" {
		t.Skip("the child process of TestStrictLocalPausedProcess")
	}
	strict := os.Getenv("STOCKPOT_CHILD_STRICT") == "true"
	prefix := os.Getenv("STOCKPOT_CHILD_PREFIX")
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	m, err := New(rdb, &Options{Prefix: prefix, Local: localOpts(time.Minute, strict, pauseLease)})
	require.NoError(t, err)
	defer closeWithin(t, m)
	load := func(ctx context.Context) (string, error) { return rdb.Get(ctx, prefix+":src").Result() }
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, key, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "ready":
			require.Eventually(t, func() bool {
				st := m.Stats().Local
				return st.Subscribed && (!strict || st.Leased)
			}, testredis.Timeout, time.Millisecond, "the child's local tier")
			fmt.Println("child: ready")
		case "read":
			before := m.kv.snapshot().LocalHits
			v, err := GetOrLoad(t.Context(), m, key, load)
			require.NoError(t, err)
			from := "redis"
			if m.kv.snapshot().LocalHits > before {
				from = "local"
			}
			fmt.Println("child: " + v + " " + from)
		}
	}
}
