package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
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
