package cache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// faultClient returns a client to srv with short timeouts and no dial
// retries, so that faults show quickly.
func faultClient(t *testing.T, addr string) *redis.Client {
	rdb := redis.NewClient(&redis.Options{
		Addr: addr, DialTimeout: 100 * time.Millisecond, ReadTimeout: 100 * time.Millisecond,
		WriteTimeout: 100 * time.Millisecond, MaxRetries: -1, DialerRetries: 1,
		PoolSize: 20,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// netWaits is a go-redis hook that counts, while on, the commands and
// dials that reach Redis and those of them that ended in a timeout. Added
// to a client after New, it runs inside the Manager's circuit breaker, so
// it sees only what the breaker lets through.
type netWaits struct {
	on             atomic.Bool
	sent, timeouts atomic.Int64
}

// isTimeout reports whether err is a timeout: a dial, read or write
// deadline, or a context's.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
}

func (w *netWaits) count(err error) {
	if w.on.Load() {
		w.sent.Add(1)
		if isTimeout(err) {
			w.timeouts.Add(1)
		}
	}
}

func (w *netWaits) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		w.count(err)
		return c, err
	}
}

func (w *netWaits) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		w.count(err)
		return err
	}
}

func (w *netWaits) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		w.count(err)
		return err
	}
}

func TestRedisKilledAndRestarted(t *testing.T) {
	srv := testredis.Start(t)
	rdb := faultClient(t, srv.Addr())
	m, err := New(rdb, &Options{Prefix: "test", Breaker: BreakerOptions{Failures: 3, CoolDown: 200 * time.Millisecond}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	waits := &netWaits{}
	rdb.AddHook(waits)
	const loaderTime = 2 * time.Millisecond
	square := Memoize(m, "square", func(ctx context.Context, n int) (int, error) {
		time.Sleep(loaderTime)
		return n * n, nil
	})
	ctx := t.Context()

	var phase atomic.Int32 // 0 up, 1 down, 2 back up
	var errs, calls atomic.Int64
	var slowest [3]atomic.Int64 // per phase, after the breaker opened (phase 1)
	var breakerOpened atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := (g*1000 + i) % 50
				start := time.Now()
				v, err := square.Get(ctx, n)
				took := time.Since(start)
				calls.Add(1)
				if err != nil || v != n*n {
					errs.Add(1)
					t.Errorf("Get(%d) = %d, %v", n, v, err)
				}
				p := phase.Load()
				if p != 1 || breakerOpened.Load() {
					for {
						cur := slowest[p].Load()
						if int64(took) <= cur || slowest[p].CompareAndSwap(cur, int64(took)) {
							break
						}
					}
				}
			}
		})
	}
	// Stops the readers if the test ends early; closed again below.
	var stopOnce sync.Once
	stopReaders := func() { stopOnce.Do(func() { close(stop) }) }
	t.Cleanup(func() { stopReaders(); testredis.Wait(t, &wg, "the readers to stop") })
	require.Eventually(t, func() bool { return m.Stats().ByName["memo:square"].Hits > 100 }, testredis.Timeout, time.Millisecond,
		"100 hits with Redis up")

	srv.Kill()
	phase.Store(1)
	require.Eventually(t, func() bool { return m.BreakerState() == "open" }, testredis.Timeout, time.Millisecond,
		"the breaker to open once Redis is killed")
	breakerOpened.Store(true)
	waits.on.Store(true)
	degradedAt := m.Stats().ByName["memo:square"].Degraded
	require.Eventually(t, func() bool { return m.Stats().ByName["memo:square"].Degraded > degradedAt+200 }, testredis.Timeout, time.Millisecond,
		"200 reads answered by the loader with Redis down")

	waits.on.Store(false)
	srv.Restart()
	hitsAt := m.Stats().ByName["memo:square"].Hits
	restarted := time.Now()
	phase.Store(2)
	require.Eventually(t, func() bool { return m.Stats().ByName["memo:square"].Hits > hitsAt+100 }, testredis.Timeout, time.Millisecond,
		"the Manager to use Redis again once it is back")
	t.Logf("Redis in use again %v after the restart", time.Since(restarted).Round(time.Millisecond))
	stopReaders()
	testredis.Wait(t, &wg, "the readers to stop")

	assert.Zero(t, errs.Load(), "no loaded read saw an error")
	assert.Equal(t, "closed", m.BreakerState())
	openMax := time.Duration(slowest[1].Load())
	t.Logf("%d calls; slowest call with the breaker open: %v (loader %v); %d commands and dials reached Redis while it was open",
		calls.Load(), openMax, loaderTime, waits.sent.Load())
	// Counted rather than timed: how long a call takes on a busy machine
	// says little about whether it waited for a timeout.
	assert.Zero(t, waits.timeouts.Load(), "with the breaker open, no call waits for a connection timeout")
}

func TestOutageErrors(t *testing.T) {
	srv := testredis.Start(t)
	rdb := faultClient(t, srv.Addr())
	m, err := New(rdb, &Options{Prefix: "test", Breaker: BreakerOptions{Failures: 2, CoolDown: time.Minute}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	ctx := t.Context()
	h := NewHash[int](m, "h")
	srv.Kill()
	for range 3 {
		assert.ErrorIs(t, m.Get(ctx, "k", new(int)), ErrUnavailable, "a plain read says Redis is unavailable")
	}
	assert.Equal(t, "open", m.Stats().Breaker)
	reached := &netWaits{}
	rdb.AddHook(reached)
	reached.on.Store(true)
	start := time.Now()
	assert.ErrorIs(t, m.Set(ctx, "k", 1), ErrUnavailable)
	assert.ErrorIs(t, h.Set(ctx, "f", 1), ErrUnavailable)
	_, err = h.Get(ctx, "f")
	assert.ErrorIs(t, err, ErrUnavailable)
	assert.ErrorIs(t, m.Invalidate(ctx, Key("k"), Tag("t")), ErrUnavailable, "a lost invalidation is an error the caller sees")
	_, err = m.TryLock(ctx, "l", time.Second)
	assert.ErrorIs(t, err, ErrUnavailable)
	t.Logf("6 calls with the breaker open took %v", time.Since(start))
	reached.on.Store(false)
	// Counted rather than timed: the open breaker fails the calls without
	// sending anything, so nothing can wait for Redis.
	assert.Zero(t, reached.sent.Load(), "the open breaker fails at once: no command or dial reached Redis")

	// 1000 concurrent callers of one key during the outage: one load.
	var loads atomic.Int32
	var wg sync.WaitGroup
	start = time.Now()
	g := newGate() // holds the load until all 1000 callers have joined it
	for range 1000 {
		wg.Go(func() {
			v, err := GetOrLoad(ctx, m, "hot", func(ctx context.Context) (string, error) {
				loads.Add(1)
				if err := g.pass(ctx); err != nil {
					return "", err
				}
				return "from the database", nil
			})
			assert.NoError(t, err)
			assert.Equal(t, "from the database", v)
		})
	}
	require.Eventually(t, func() bool { return m.Stats().ByName["keys"].SharedWaits == 999 }, testredis.Timeout, time.Millisecond,
		"999 callers to join the first one's load")
	g.open()
	testredis.Wait(t, &wg, "the 1000 callers to get the loaded value")
	assert.Equal(t, int32(1), loads.Load(), "singleflight holds while Redis is down")
	t.Logf("1000 callers during the outage: %d load, %v", loads.Load(), time.Since(start).Round(time.Millisecond))
	assert.Positive(t, m.Stats().ByName["keys"].Degraded)
}

// delayProxy forwards TCP connections to a server, delaying replies by a
// duration that can be changed while it runs. It is stopped in t.Cleanup,
// delayed replies and all.
type delayProxy struct {
	ln    net.Listener
	delay atomic.Int64
}

func startDelayProxy(t *testing.T, target string) *delayProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &delayProxy{ln: ln}
	var wg sync.WaitGroup
	stopped := make(chan struct{}) // closed in cleanup: delayed replies are dropped
	var mu sync.Mutex              // protects conns and closed
	var conns []net.Conn
	closed := false
	t.Cleanup(func() {
		close(stopped)
		_ = ln.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		testredis.Wait(t, &wg, "the proxy's goroutines to end")
	})
	wg.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				_ = client.Close()
				continue
			}
			mu.Lock()
			if closed { // accepted as the proxy stopped
				mu.Unlock()
				_, _ = client.Close(), server.Close()
				return
			}
			conns = append(conns, client, server)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(server, client) })
			wg.Go(func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := server.Read(buf)
					if n > 0 {
						delay := time.NewTimer(time.Duration(p.delay.Load()))
						select {
						case <-delay.C:
						case <-stopped:
							delay.Stop()
							return
						}
						if _, werr := client.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
	return p
}

func (p *delayProxy) Addr() string { return p.ln.Addr().String() }

func TestLatencyFault(t *testing.T) {
	srv := testredis.Start(t)
	proxy := startDelayProxy(t, srv.Addr())
	rdb := faultClient(t, proxy.Addr())
	m, err := New(rdb, &Options{Prefix: "test", Breaker: BreakerOptions{Failures: 3, CoolDown: time.Minute}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	ctx := t.Context()
	memo := Memoize(m, "m", func(ctx context.Context, n int) (string, error) { return fmt.Sprint("v", n), nil })
	for n := range 5 {
		_, err := memo.Get(ctx, n)
		require.NoError(t, err)
	}

	// Redis answers, far too late: a call that waited for the answer would
	// take the whole latency, whereas the client's timeouts are 100ms.
	const latency = 10 * time.Second
	proxy.delay.Store(int64(latency))
	var slowest time.Duration
	for i := range 20 {
		start := time.Now()
		v, err := memo.Get(ctx, i%5)
		took := time.Since(start)
		slowest = max(slowest, took)
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprint("v", i%5), v)
	}
	t.Logf("slowest loaded read with %v of latency: %v; breaker %s", latency, slowest, m.BreakerState())
	assert.Less(t, slowest, latency/2, "calls are bounded by the client's timeouts, not the latency")
	assert.Equal(t, "open", m.BreakerState())
}

// TestBreakerIsTheManagersOwn: the breaker judges and fails the Manager's
// calls only. The application's commands on the same client are never
// failed by it, a second Manager on the client has a breaker of its own,
// and the client's own hooks (tracing) still see the Manager's commands.
func TestBreakerIsTheManagersOwn(t *testing.T) {
	srv := testredis.Start(t)
	rdb := faultClient(t, srv.Addr())
	traced := &commandLog{}
	rdb.AddHook(traced)
	a, err := New(rdb, &Options{Prefix: "a", Breaker: BreakerOptions{Failures: 1, CoolDown: time.Minute}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, a) })
	b, err := New(rdb, &Options{Prefix: "b", Breaker: BreakerOptions{Failures: 1, CoolDown: time.Minute}})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, b) })
	scriptsLoaded(t, a)
	scriptsLoaded(t, b)
	ctx := t.Context()
	require.NoError(t, a.Set(ctx, "k", 1))
	assert.Contains(t, traced.names(), "set", "the client's hooks see the Manager's commands")

	srv.Kill()
	assert.ErrorIs(t, a.Get(ctx, "k", new(int)), ErrUnavailable)
	require.Equal(t, "open", a.BreakerState())
	assert.Equal(t, "closed", b.BreakerState(), "another Manager's breaker is its own")
	srv.Restart()
	require.Eventually(t, func() bool { return rdb.Ping(ctx).Err() == nil }, testredis.Timeout, 5*time.Millisecond,
		"the application's commands are not failed by a Manager's open breaker")
	assert.NoError(t, b.Set(ctx, "k", 2), "a Manager whose breaker is closed uses Redis")
	assert.ErrorIs(t, a.Get(ctx, "k", new(int)), ErrUnavailable, "an open breaker fails its Manager's calls until its cool-down ends")
}

// TestClosedManagerIsCollected: nothing of a closed Manager stays
// reachable from the client it was given, local tier included.
func TestClosedManagerIsCollected(t *testing.T) {
	srv := testredis.Start(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	collected := make(chan struct{})
	func() {
		m, err := New(rdb, &Options{Prefix: "test", Local: &LocalOptions{}})
		require.NoError(t, err)
		memo := Memoize(m, "m", func(ctx context.Context, n int) (int, error) { return n, nil })
		_, err = memo.Get(ctx, 1)
		require.NoError(t, err)
		require.NoError(t, m.Close())
		runtime.AddCleanup(m, func(ch chan struct{}) { close(ch) }, collected)
	}()
	require.Eventually(t, func() bool {
		runtime.GC()
		select {
		case <-collected:
			return true
		default:
			return false
		}
	}, testredis.Timeout, 10*time.Millisecond, "a closed Manager is still reachable")
	require.NoError(t, rdb.Ping(ctx).Err())
}

// TestClusterMasterDownOpensItsBreakerOnly: on a cluster, a master that
// does not answer opens its own breaker: its keys' loaded reads fall back
// to the loader within their budget, the other masters' keys keep being
// read from Redis, and once the master answers again its keys are read
// from it.
func TestClusterMasterDownOpensItsBreakerOnly(t *testing.T) {
	c := testredis.SharedCluster(t)
	addrs := c.Addrs()
	proxy := testredis.NewProxy(t, addrs[0])
	rdb := c.ClientWith(t, func(o *redis.ClusterOptions) { o.Dialer = testredis.DialVia(proxy) })
	m := slowManager(t, proxy, rdb, Options{Breaker: BreakerOptions{Failures: 3, CoolDown: 300 * time.Millisecond}})
	ctx := t.Context()

	// A key on the master behind the proxy, and one on another master.
	var down, up string
	for i := 0; down == "" || up == ""; i++ {
		k := fmt.Sprint("k", i)
		n, err := rdb.MasterForKey(ctx, m.entryKey(k))
		require.NoError(t, err)
		if n.Options().Addr == addrs[0] {
			down = cmp.Or(down, k)
		} else {
			up = cmp.Or(up, k)
		}
	}
	var loads atomic.Int64
	load := sleepLoader("v", &loads)
	for _, k := range []string{down, up} {
		_, err := GetOrLoad(ctx, m, k, load)
		require.NoError(t, err)
	}

	proxy.SetBlackhole(true)
	for range 5 {
		var err error
		took, stalled := timed(func() { _, err = GetOrLoad(ctx, m, down, load) })
		require.NoError(t, err)
		within(t, took, stalled, testBudget+testLoaderTime+slack, "a loaded read of the silent master's key")
	}
	st := m.Stats()
	assert.Equal(t, "open", st.Breakers[addrs[0]], "the silent master's breaker: %v", st.Breakers)
	for a, s := range st.Breakers {
		if a != addrs[0] {
			assert.Equal(t, "closed", s, "the breaker of %s", a)
		}
	}
	assert.Equal(t, "open", st.Breaker)
	hits := st.ByName["keys"].Hits
	degraded := st.ByName["keys"].Degraded
	for range 10 {
		v, err := GetOrLoad(ctx, m, up, load)
		require.NoError(t, err)
		require.Equal(t, "v", v)
	}
	st = m.Stats()
	assert.Equal(t, hits+10, st.ByName["keys"].Hits, "the other masters' keys are read from Redis")
	assert.Equal(t, degraded, st.ByName["keys"].Degraded)

	proxy.SetBlackhole(false)
	require.Eventually(t, func() bool {
		before := m.Stats().ByName["keys"].Hits
		_, err := GetOrLoad(ctx, m, down, load)
		return err == nil && m.Stats().ByName["keys"].Hits > before
	}, testredis.Timeout, 20*time.Millisecond, "the master's keys are read from Redis once it answers again")
	assert.Equal(t, "closed", m.Stats().Breakers[addrs[0]])
}

// TestBreakerOfFormerNodeDropped: on a cluster, the breaker of a node no
// call has gone to for breakerIdle (a master that failed over and came
// back as a replica) no longer makes BreakerState "open", nor appears in
// Stats.Breakers; a call to that address again starts a closed breaker.
func TestBreakerOfFormerNodeDropped(t *testing.T) {
	c := testredis.SharedCluster(t)
	m, err := New(c.Client(t), &Options{Prefix: "idle"})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	const gone = "127.0.0.1:1"
	b := m.breakers.of(gone)
	for range 5 {
		tk, err := b.allow()
		require.NoError(t, err)
		tk.record(syscall.ECONNREFUSED)
	}
	require.Equal(t, "open", m.BreakerState())
	require.Equal(t, "open", m.Stats().Breakers[gone])

	b.used.Store(time.Now().Add(-breakerIdle - time.Second).UnixNano())
	require.Equal(t, "closed", m.BreakerState(), "a breaker no call went to for breakerIdle")
	require.NotContains(t, m.Stats().Breakers, gone)
	require.Equal(t, "closed", m.breakers.of(gone).cb.State().String(), "the address used again")
}
