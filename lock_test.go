package cache

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/scripts"
	"github.com/stockpot-go/cache/internal/testredis"
)

// lostWhileRunning runs WithLock on m with a fn that sends its lock's fence
// on entered, then waits for its context to end and returns the context's
// cause. It returns entered and a channel that receives WithLock's error
// and that cause.
func lostWhileRunning(t *testing.T, m *Manager, name string, ttl time.Duration) (<-chan int64, <-chan [2]error) {
	t.Helper()
	entered := make(chan int64, 1)
	out := make(chan [2]error, 1)
	go func() {
		var cause error
		err := m.WithLock(t.Context(), name, ttl, func(ctx context.Context) error {
			l, _ := LockFromContext(ctx)
			entered <- l.Fence()
			cause = awaitCancel(ctx)
			return ctx.Err()
		})
		out <- [2]error{err, cause}
	}()
	return entered, out
}

// awaitCancel waits, in a WithLock fn, for fn's context to end, and returns
// its cause; or, when it has not ended within testredis.Timeout, an error
// that says so.
func awaitCancel(ctx context.Context) error {
	t := time.NewTimer(testredis.Timeout)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return fmt.Errorf("fn's context was not cancelled within %v", testredis.Timeout)
	}
}

func TestLockBasics(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		rdb := b.Client(t)
		ctx := t.Context()

		wrote := time.Now()
		l, err := m.TryLock(ctx, "order:42", 10*time.Second)
		require.NoError(t, err)
		assert.Equal(t, "order:42", l.Name())
		assert.NotEmpty(t, l.Token())
		assert.Positive(t, l.Fence())

		val, err := rdb.Get(ctx, "test:{lock:order:42}").Result()
		require.NoError(t, err)
		assert.Equal(t, l.Token(), val, "the lock key holds the token")
		pttl, err := rdb.PTTL(ctx, "test:{lock:order:42}:fence").Result()
		require.NoError(t, err)
		assert.Equal(t, time.Duration(-1), pttl, "the fence counter never expires")

		left, err := l.TTL(ctx)
		require.NoError(t, err)
		assertTTL(t, 10*time.Second, left, wrote, "the lock's lease")
		require.NoError(t, l.Refresh(ctx, time.Minute))
		left, err = l.TTL(ctx)
		require.NoError(t, err)
		assert.Greater(t, left, 50*time.Second)

		require.NoError(t, l.Release(ctx))
		n, err := rdb.Exists(ctx, "test:{lock:order:42}").Result()
		require.NoError(t, err)
		assert.Zero(t, n, "released")
		assert.ErrorIs(t, l.Release(ctx), ErrLockLost, "a second Release")

		l2, err := m.Lock(ctx, "order:42", time.Second)
		require.NoError(t, err)
		assert.Greater(t, l2.Fence(), l.Fence())
		assert.NotEqual(t, l.Token(), l2.Token())
		require.NoError(t, l2.Release(ctx))
	})
}

func TestLockKeysEscaped(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		rdb := b.Client(t)
		ctx := t.Context()

		l, err := m.TryLock(ctx, "a}b%c", time.Second)
		require.NoError(t, err)
		keys := allKeys(t, rdb, "*")
		assert.ElementsMatch(t, []string{"test:{lock:a%7Db%25c}", "test:{lock:a%7Db%25c}:fence"}, keys)
		require.NoError(t, l.Release(ctx))
	})
}

// TestLockMutualExclusion has 20 goroutines on 4 Managers (4 connection
// pools) take one lock 5 times each: never two at once, and every fence is
// above the one before. (More contenders add nothing but load: on
// miniredis, whose scripts run in an interpreter, 100 of them polling the
// lock kept a race-detector build busy for half a minute.)
func TestLockMutualExclusion(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		managers := make([]*Manager, 4)
		for i := range managers {
			managers[i] = e.manager(nil)
		}
		const workers, rounds = 20, 5

		var (
			inside  atomic.Int32
			maxSeen atomic.Int32
			mu      sync.Mutex // protects fences
			fences  []int64
			wg      sync.WaitGroup
		)
		errs := make(chan error, workers*rounds)
		for w := range workers {
			m := managers[w%len(managers)]
			wg.Go(func() {
				for range rounds {
					err := m.WithLock(t.Context(), "inventory:flour", 5*time.Second, func(ctx context.Context) error {
						n := inside.Add(1)
						defer inside.Add(-1)
						for {
							old := maxSeen.Load()
							if n <= old || maxSeen.CompareAndSwap(old, n) {
								break
							}
						}
						l, ok := LockFromContext(ctx)
						if !ok {
							return errors.New("no Lock in fn's context")
						}
						mu.Lock()
						fences = append(fences, l.Fence())
						mu.Unlock()
						runtime.Gosched()
						return nil
					}, ExponentialRetry(5*time.Millisecond, 100*time.Millisecond))
					errs <- err
				}
			})
		}
		testredis.Wait(t, &wg, "20 workers to take the lock 5 times each")
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		assert.Equal(t, int32(1), maxSeen.Load(), "holders at once")
		require.Len(t, fences, workers*rounds)
		for i := 1; i < len(fences); i++ {
			require.Greater(t, fences[i], fences[i-1], "fence %d", i)
		}
	})
}

func TestLockLostAfterExpiry(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()

		l, err := m.TryLock(ctx, "order:7", time.Second)
		require.NoError(t, err)
		b.FastForward(t, 2*time.Second)
		assert.ErrorIs(t, l.Refresh(ctx, time.Second), ErrLockLost)
		_, err = l.TTL(ctx)
		assert.ErrorIs(t, err, ErrLockLost)
		assert.ErrorIs(t, l.Release(ctx), ErrLockLost)
	})
}

func TestLockReleaseByFormerHolder(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m1, m2 := e.manager(nil), e.manager(nil)
		ctx := t.Context()

		first, err := m1.TryLock(ctx, "order:7", time.Second)
		require.NoError(t, err)
		b.FastForward(t, 2*time.Second)
		wrote := time.Now()
		second, err := m2.TryLock(ctx, "order:7", 10*time.Second)
		require.NoError(t, err)
		assert.Greater(t, second.Fence(), first.Fence())

		assert.ErrorIs(t, first.Release(ctx), ErrLockLost)
		assert.ErrorIs(t, first.Refresh(ctx, time.Minute), ErrLockLost)
		left, err := second.TTL(ctx)
		require.NoError(t, err, "the second holder still holds the lock")
		assertTTL(t, 10*time.Second, left, wrote, "and its lease is untouched")
		_, err = m1.TryLock(ctx, "order:7", time.Second)
		assert.ErrorIs(t, err, ErrNotObtained)
		require.NoError(t, second.Release(ctx))
	})
}

func TestLockObtainSameTokenAgain(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()

		// An obtain whose reply was lost is tried again with the same token:
		// it gets the lock, and the fence, of the first attempt.
		// (A minute, so that a real server's clock does not end it first.)
		l, err := m.TryLock(ctx, "order:9", time.Minute)
		require.NoError(t, err)
		wrote := time.Now()
		fence, err := scripts.LockObtain.Run(ctx, m.rdb, l.keys, l.token, 5000).Int64()
		require.NoError(t, err)
		assert.Equal(t, l.Fence(), fence)
		left, err := l.TTL(ctx)
		require.NoError(t, err)
		assertTTL(t, 5*time.Second, left, wrote, "the lease was renewed for the second attempt's 5s")

		other, err := scripts.LockObtain.Run(ctx, m.rdb, l.keys, "another token", 5000).Int64()
		require.NoError(t, err)
		assert.Zero(t, other)
	})
}

func TestLockFenceSurvivesDataLoss(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		rdb := b.Client(t)
		ctx := t.Context()

		l, err := m.TryLock(ctx, "order:1", time.Second)
		require.NoError(t, err)
		require.NoError(t, l.Release(ctx))
		for range 3 {
			l, err = m.TryLock(ctx, "order:1", time.Second)
			require.NoError(t, err)
			require.NoError(t, l.Release(ctx))
		}
		require.NoError(t, rdb.FlushAll(ctx).Err())
		after, err := m.TryLock(ctx, "order:1", time.Second)
		require.NoError(t, err)
		assert.Greater(t, after.Fence(), l.Fence(), "the counter starts again above the fences it gave")
	})
}

func TestLockRetry(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		holder := e.manager(nil)
		rdb, f := lockFaultyClient(t, b)
		m, err := New(rdb, &Options{Prefix: "test"})
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, m) })
		ctx := t.Context()

		held, err := holder.TryLock(ctx, "oven", time.Minute)
		require.NoError(t, err)

		_, err = m.TryLock(ctx, "oven", time.Second)
		assert.ErrorIs(t, err, ErrNotObtained)
		assert.Equal(t, 1, f.calls(scripts.LockObtain), "TryLock tries once")

		f.reset()
		_, err = m.Lock(ctx, "oven", time.Second, LinearRetry(time.Millisecond), MaxAttempts(3))
		assert.ErrorIs(t, err, ErrNotObtained)
		assert.NotErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, 3, f.calls(scripts.LockObtain), "MaxAttempts(3)")

		f.reset()
		_, err = m.Lock(ctx, "oven", time.Second, NoRetry())
		assert.ErrorIs(t, err, ErrNotObtained)
		assert.Equal(t, 1, f.calls(scripts.LockObtain), "NoRetry")

		f.reset()
		_, err = m.Lock(ctx, "oven", time.Second, ExponentialRetry(time.Millisecond, 4*time.Millisecond), MaxAttempts(5))
		assert.ErrorIs(t, err, ErrNotObtained)
		assert.Equal(t, 5, f.calls(scripts.LockObtain), "ExponentialRetry with MaxAttempts(5)")

		// A waiter gets the lock once its holder lets go.
		got := make(chan error, 1)
		go func() {
			l, err := m.Lock(ctx, "oven", time.Second, LinearRetry(2*time.Millisecond))
			if err == nil {
				err = l.Release(ctx)
			}
			got <- err
		}()
		require.Eventually(t, func() bool { return f.calls(scripts.LockObtain) >= 8 }, testredis.Timeout, time.Millisecond,
			"the waiter to try the held lock a few times")
		require.NoError(t, held.Release(ctx))
		require.NoError(t, testredis.Recv(t, got, "the waiter to get the released lock"))
	})
}

func TestLockContextEndsWhileWaiting(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		holder := e.manager(nil)

		_, err := holder.TryLock(t.Context(), "oven", time.Minute)
		require.NoError(t, err)

		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		_, err = m.Lock(ctx, "oven", time.Second)
		assert.ErrorIs(t, err, ErrNotObtained)
		assert.ErrorIs(t, err, context.DeadlineExceeded)

		err = m.WithLock(ctx, "oven", time.Second, func(context.Context) error {
			t.Error("fn ran without the lock")
			return nil
		})
		assert.ErrorIs(t, err, ErrNotObtained)
		assert.ErrorIs(t, err, context.DeadlineExceeded)

		cancelled, cancel2 := context.WithCancel(t.Context())
		cancel2()
		_, err = m.Lock(cancelled, "free", time.Second)
		assert.ErrorIs(t, err, ErrNotObtained)
		assert.ErrorIs(t, err, context.Canceled)
	})
}

func TestWithLock(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		rdb := b.Client(t)
		ctx := t.Context()
		key := m.lockKey("order:42")

		boom := errors.New("boom")
		var fence int64
		err := m.WithLock(ctx, "order:42", time.Second, func(ctx context.Context) error {
			l, ok := LockFromContext(ctx)
			require.True(t, ok)
			fence = l.Fence()
			n, err := rdb.Exists(ctx, key).Result()
			require.NoError(t, err)
			assert.Equal(t, int64(1), n, "held while fn runs")
			return boom
		})
		assert.ErrorIs(t, err, boom)
		assert.NotErrorIs(t, err, ErrLockLost)
		assert.Positive(t, fence)
		n, err := rdb.Exists(ctx, key).Result()
		require.NoError(t, err)
		assert.Zero(t, n, "released after fn")

		// Released even when the caller's context ended during fn.
		cctx, cancel := context.WithCancel(ctx)
		err = m.WithLock(cctx, "order:42", time.Second, func(ctx context.Context) error {
			cancel()
			testredis.Recv(t, ctx.Done(), "fn's context to end with the caller's")
			return ctx.Err()
		})
		assert.ErrorIs(t, err, context.Canceled)
		assert.NotErrorIs(t, err, ErrLockLost)
		n, err = rdb.Exists(ctx, key).Result()
		require.NoError(t, err)
		assert.Zero(t, n, "released after a cancelled fn")

		// Released when fn panics, and the panic goes on.
		assert.PanicsWithValue(t, "oops", func() {
			_ = m.WithLock(ctx, "order:42", time.Second, func(context.Context) error { panic("oops") })
		})
		n, err = rdb.Exists(ctx, key).Result()
		require.NoError(t, err)
		assert.Zero(t, n, "released after a panic")
	})
}

// TestWithLockRefreshes moves Redis's clock past the lease several times
// while fn runs; the refresher keeps the lease each time.
func TestWithLockRefreshes(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		rdb := b.Client(t)
		ctx := t.Context()
		key := m.lockKey("oven")
		const (
			ttl  = 3 * time.Second         // refreshed every second
			step = 1200 * time.Millisecond // what each FastForward takes off the lease
			// fresh is more than a FastForward leaves (ttl-step), so a
			// lease with more than fresh left was refreshed since; and a
			// FastForward then leaves it more than fresh-step (1.6s), which
			// the next refresh, due within a second, has ample time to beat
			// on a busy machine.
			fresh = ttl - 200*time.Millisecond
		)
		refreshed := func() {
			t.Helper()
			require.Eventually(t, func() bool {
				pttl, err := rdb.PTTL(ctx, key).Result()
				return err == nil && pttl > fresh
			}, testredis.Timeout, time.Millisecond, "a refresh of the lease")
		}

		err := m.WithLock(ctx, "oven", ttl, func(ctx context.Context) error {
			refreshed()
			for range 3 { // 3.6s in all, more than the lease's 3s
				b.FastForward(t, step)
				refreshed()
			}
			return ctx.Err()
		})
		require.NoError(t, err, "the lease outlived its ttl")
	})
}

func TestWithLockLostWhenKeyDeleted(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		rdb := b.Client(t)

		entered, out := lostWhileRunning(t, m, "order:42", 300*time.Millisecond)
		testredis.Recv(t, entered, "fn to start")
		require.NoError(t, rdb.Del(t.Context(), m.lockKey("order:42")).Err())
		res := testredis.Recv(t, out, "WithLock to return")
		assert.ErrorIs(t, res[1], ErrLockLost, "fn's context cause")
		assert.ErrorIs(t, res[0], ErrLockLost)
		assert.ErrorIs(t, res[0], context.Canceled, "fn's error is joined")
	})
}

func TestWithLockLostWhenLeaseExpires(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		other := newEnv(t, b).manager(nil)

		entered, out := lostWhileRunning(t, m, "order:42", 300*time.Millisecond)
		testredis.Recv(t, entered, "fn to start")
		b.FastForward(t, time.Second)
		// Someone else takes the lock before the next refresh, or not:
		// either way the refresher finds it is no longer its own.
		l, err := other.TryLock(t.Context(), "order:42", time.Minute)
		res := testredis.Recv(t, out, "WithLock to return")
		assert.ErrorIs(t, res[1], ErrLockLost, "fn's context cause")
		assert.ErrorIs(t, res[0], ErrLockLost)
		if err == nil {
			left, err := l.TTL(t.Context())
			require.NoError(t, err, "the new holder keeps the lock")
			assert.Greater(t, left, 50*time.Second)
		}
	})
}

// lockFaults fails the EVALSHA calls of chosen scripts and counts them all. A
// script can fail before it reaches Redis, or after it ran there (its reply
// lost).
type lockFaults struct {
	mu   sync.Mutex // protects fail, lose and n
	fail map[string]bool
	lose map[string]bool
	n    map[string]int
}

// errLockFault is the error lockFaults injects.
var errLockFault = errors.New("injected fault")

// lockFaultyClient returns a new client on b whose faults the returned
// lockFaults injects. The client is connected (on a cluster, it has loaded
// the slot map), so that a test's first lock does not pay for that.
func lockFaultyClient(t *testing.T, b *testredis.Backend) (redis.UniversalClient, *lockFaults) {
	t.Helper()
	f := &lockFaults{fail: map[string]bool{}, lose: map[string]bool{}, n: map[string]int{}}
	rdb := b.Client(t)
	require.NoError(t, rdb.Ping(t.Context()).Err())
	rdb.AddHook(f)
	return rdb, f
}

// set makes the calls of s fail with errLockFault before they reach Redis.
func (f *lockFaults) set(s *scripts.Script, failing bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[s.Hash()] = failing
}

// loseReply makes the calls of s run on Redis but fail with errLockFault.
func (f *lockFaults) loseReply(s *scripts.Script, losing bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lose[s.Hash()] = losing
}

func (f *lockFaults) calls(s *scripts.Script) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n[s.Hash()]
}

func (f *lockFaults) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.n)
}

func (f *lockFaults) DialHook(next redis.DialHook) redis.DialHook { return next }

func (f *lockFaults) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (f *lockFaults) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if args := cmd.Args(); cmd.Name() == "evalsha" && len(args) > 1 {
			sha, _ := args[1].(string)
			f.mu.Lock()
			f.n[sha]++
			fail, lose := f.fail[sha], f.lose[sha]
			f.mu.Unlock()
			if fail {
				cmd.SetErr(errLockFault)
				return errLockFault
			}
			if lose {
				if err := next(ctx, cmd); err != nil {
					return err // NOSCRIPT: the script did not run yet
				}
				cmd.SetErr(errLockFault)
				return errLockFault
			}
		}
		return next(ctx, cmd)
	}
}

func TestLockRedisErrors(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		rdb, f := lockFaultyClient(t, b)
		m, err := New(rdb, &Options{Prefix: "test"})
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, m) })
		ctx := t.Context()

		f.set(scripts.LockObtain, true)
		l, err := m.TryLock(ctx, "oven", time.Second)
		assert.ErrorIs(t, err, errLockFault)
		assert.Nil(t, l)
		l, err = m.Lock(ctx, "oven", time.Second)
		assert.ErrorIs(t, err, errLockFault)
		assert.Nil(t, l)
		err = m.WithLock(ctx, "oven", time.Second, func(context.Context) error {
			t.Error("fn ran without the lock")
			return nil
		})
		assert.ErrorIs(t, err, errLockFault)
		f.set(scripts.LockObtain, false)

		l, err = m.TryLock(ctx, "oven", time.Minute)
		require.NoError(t, err, "the failed attempts left the lock free")

		f.set(scripts.LockRefresh, true)
		assert.ErrorIs(t, l.Refresh(ctx, time.Minute), errLockFault)
		_, err = l.TTL(ctx)
		assert.ErrorIs(t, err, errLockFault)
		f.set(scripts.LockRefresh, false)

		f.set(scripts.Release, true)
		assert.ErrorIs(t, l.Release(ctx), errLockFault)
		f.set(scripts.Release, false)
		require.NoError(t, l.Release(ctx), "still held after the failed release")
	})
}

// TestLockObtainReplyLost loses the reply of an obtain that took the lock:
// the caller gets the error, and the lock is given back rather than left
// taken for its whole lease.
func TestLockObtainReplyLost(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		rdb, f := lockFaultyClient(t, b)
		m, err := New(rdb, &Options{Prefix: "test"})
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, m) })
		other := newEnv(t, b).manager(nil)
		l, err := m.TryLock(t.Context(), "warm", time.Second) // loads the script
		require.NoError(t, err)
		require.NoError(t, l.Release(t.Context()))

		f.loseReply(scripts.LockObtain, true)
		_, err = m.TryLock(t.Context(), "oven", time.Hour)
		assert.ErrorIs(t, err, errLockFault)
		require.Eventually(t, func() bool {
			l, err := other.TryLock(t.Context(), "oven", time.Second)
			return err == nil && l.Release(t.Context()) == nil
		}, testredis.Timeout, time.Millisecond, "the lock to be given back")
	})
}

func TestWithLockLostWhenRefreshesFail(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		rdb, f := lockFaultyClient(t, b)
		m, err := New(rdb, &Options{Prefix: "test"})
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, m) })

		f.set(scripts.LockRefresh, true)
		// The refresher tries after ttl/3, and again every ttl/12 once a
		// refresh fails, until the lease (counted from when the obtain was
		// sent) runs out: a 3s lease leaves room for a second try even if
		// the obtain and the first try come more than a second late, as
		// they did with a 300ms, then a 2s lease on a busy machine.
		entered, out := lostWhileRunning(t, m, "oven", 3*time.Second)
		testredis.Recv(t, entered, "fn to start")
		res := testredis.Recv(t, out, "WithLock to return")
		assert.ErrorIs(t, res[1], ErrLockLost, "fn's context cause")
		assert.ErrorIs(t, res[1], errLockFault, "the cause tells why")
		assert.ErrorIs(t, res[0], ErrLockLost)
		assert.GreaterOrEqual(t, f.calls(scripts.LockRefresh), 2, "refreshes were tried again")
	})
}

// TestWithLockRedisRestart kills Redis while fn runs: the lease is lost, and
// once Redis is back, locks work again with fences above the old ones.
func TestWithLockRedisRestart(t *testing.T) {
	srv := testredis.Start(t)
	m, err := New(srv.Client(t), &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })

	entered, out := lostWhileRunning(t, m, "order:42", 300*time.Millisecond)
	fence := testredis.Recv(t, entered, "fn to start")
	srv.Kill()
	res := testredis.Recv(t, out, "WithLock to return")
	assert.ErrorIs(t, res[1], ErrLockLost, "fn's context cause")
	assert.ErrorIs(t, res[0], ErrLockLost)

	srv.Restart()
	var l *Lock
	require.Eventually(t, func() bool {
		l, err = m.TryLock(t.Context(), "order:42", time.Second)
		return err == nil
	}, testredis.Timeout, time.Millisecond, "a lock after the restart")
	assert.Greater(t, l.Fence(), fence, "the fence does not go back though Redis lost its counter")
	require.NoError(t, l.Release(t.Context()))
}

func TestLockBadInput(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		rdb := b.Client(t)
		ctx := t.Context()
		fn := func(context.Context) error { return nil }

		_, err := m.Lock(ctx, "", time.Second)
		assert.ErrorIs(t, err, ErrInvalidKey)
		_, err = m.TryLock(ctx, "", time.Second)
		assert.ErrorIs(t, err, ErrInvalidKey)
		assert.ErrorIs(t, m.WithLock(ctx, "", time.Second, fn), ErrInvalidKey)

		for _, ttl := range []time.Duration{0, -time.Second, time.Microsecond} {
			_, err = m.Lock(ctx, "oven", ttl)
			assert.ErrorIs(t, err, ErrInvalidOption, "ttl %v", ttl)
			_, err = m.TryLock(ctx, "oven", ttl)
			assert.ErrorIs(t, err, ErrInvalidOption, "ttl %v", ttl)
			assert.ErrorIs(t, m.WithLock(ctx, "oven", ttl, fn), ErrInvalidOption, "ttl %v", ttl)
		}
		for i, opt := range []LockOption{
			LinearRetry(0), ExponentialRetry(0, time.Second), ExponentialRetry(time.Second, time.Millisecond),
			MaxAttempts(0), nil,
		} {
			_, err = m.Lock(ctx, "oven", time.Second, opt)
			assert.ErrorIs(t, err, ErrInvalidOption, "option %d", i)
		}
		assert.ErrorIs(t, m.WithLock(ctx, "oven", time.Second, nil), ErrInvalidOption)

		l, err := m.TryLock(ctx, "oven", time.Second)
		require.NoError(t, err)
		assert.ErrorIs(t, l.Refresh(ctx, 0), ErrInvalidOption)
		require.NoError(t, l.Release(ctx))

		keys := allKeys(t, rdb, "*")
		assert.Equal(t, []string{"test:{lock:oven}:fence"}, keys, "bad input wrote nothing")
	})
}

func TestLockAfterClose(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()

		l, err := m.TryLock(ctx, "oven", time.Minute)
		require.NoError(t, err)
		closeWithin(t, m)

		_, err = m.Lock(ctx, "other", time.Second)
		assert.ErrorIs(t, err, ErrClosed)
		_, err = m.TryLock(ctx, "other", time.Second)
		assert.ErrorIs(t, err, ErrClosed)
		assert.ErrorIs(t, m.WithLock(ctx, "other", time.Second, func(context.Context) error { return nil }), ErrClosed)
		assert.ErrorIs(t, l.Refresh(ctx, time.Minute), ErrClosed)
		_, err = l.TTL(ctx)
		assert.ErrorIs(t, err, ErrClosed)
		assert.NoError(t, l.Release(ctx), "Release frees the lock after Close")
	})
}

// TestLockCloseWaitsForRefreshers closes a Manager while WithLock calls run:
// their fns see ErrClosed, their locks are released, and no goroutine
// outlives Close.
func TestLockCloseWaitsForRefreshers(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		rdb := b.Client(t)
		ctx := t.Context()
		require.NoError(t, rdb.Ping(ctx).Err())
		before := runtime.NumGoroutine()
		client := b.Client(t)
		m, err := New(client, &Options{Prefix: "test"})
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, m) })

		const n = 5
		var entered sync.WaitGroup
		entered.Add(n)
		out := make(chan [2]error, n)
		for i := range n {
			go func() {
				var cause error
				// A lease that cannot run out before Close, however late its
				// refreshes come.
				err := m.WithLock(ctx, fmt.Sprintf("oven:%d", i), time.Minute, func(ctx context.Context) error {
					entered.Done()
					cause = awaitCancel(ctx)
					return ctx.Err()
				})
				out <- [2]error{err, cause}
			}()
		}
		testredis.Wait(t, &entered, "5 WithLock calls to run their fn")
		// The control: refreshers run while the fns do (WithLock starts them
		// just before its fn, so the first may take a moment to appear).
		require.Eventually(t, refresherRunning, testredis.Timeout, time.Millisecond,
			"no refresher runs while the WithLock fns do: the check after Close tests nothing")
		closeWithin(t, m)
		assert.False(t, refresherRunning(), "a refresher outlived Close")

		for range n {
			res := testredis.Recv(t, out, "WithLock to return")
			assert.ErrorIs(t, res[1], ErrClosed, "fn's context cause")
			assert.ErrorIs(t, res[0], ErrClosed)
		}
		assert.Empty(t, allKeys(t, rdb, "test:{lock:*}"), "the locks were released")
		require.NoError(t, client.Close())
		goroutinesBack(t, before)
	})
}

// refresherRunning reports whether any goroutine is in Lock.keep.
func refresherRunning() bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Contains(string(buf[:n]), "cache.(*Lock).keep")
		}
		buf = make([]byte, 2*len(buf))
	}
}
