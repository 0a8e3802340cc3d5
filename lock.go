package cache

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/scripts"
)

// A distributed lock is a Redis key, prefix:{lock:name}, that holds its
// holder's random token and expires after the lease time (SET NX PX). Every
// grant also increments the name's fence counter, prefix:{lock:name}:fence,
// in the same script; the counter shares the lock's hash slot and never
// expires, so the fence a grant returns is above every fence given before it.
// Refresh, TTL and Release run scripts that act only when the key still holds
// the caller's token.
//
// A lease can end while its holder still works: the holder pauses (a long
// garbage collection, a stopped VM) or loses Redis, the lease expires, and
// another process takes the lock. No lock on Redis can stop the first holder
// from writing after that. Fences can: see Lock.Fence.

// Lock is a distributed lock held through a Manager, obtained with
// Manager.Lock or Manager.TryLock. Its methods are safe for concurrent use.
type Lock struct {
	m     *Manager
	name  string
	keys  []string // the lock key and its fence counter
	token string
	fence int64
}

// Name returns the name the lock was obtained under.
func (l *Lock) Name() string {
	if l == nil {
		return ""
	}
	return l.name
}

// Token returns the lock's random token, which the lock key holds while
// this Lock holds it.
func (l *Lock) Token() string {
	if l == nil {
		return ""
	}
	return l.token
}

// Fence returns the lock's fencing token: a number that strictly increases
// with every grant of the lock's name, across every process and Manager
// sharing the Redis. The counter behind it never expires. It starts at
// Redis's clock in microseconds (so fences are large numbers, not 1, 2, 3),
// and starts there again when Redis loses it, as in a restart without
// persistence: above every fence it gave before, unless Redis's clock went
// back. Like the lock, the counter is only as durable as Redis: a failover to
// a replica that missed the latest grants can give a fence a second time.
//
// A lease can end while its holder is still working (a pause, a lost
// connection), and another process then obtains the lock: for a while, two
// processes believe they hold it. Fence makes that harmless for a resource
// that takes part. Pass Fence with every write to the protected resource;
// the resource remembers the highest fence it has accepted and refuses a
// write with a lower one. In SQL, with a fence column on the row:
//
//	UPDATE orders SET status = $3, fence = $1 WHERE id = $2 AND fence < $1
//
// An update that touches no row came from a holder whose lease had ended:
// the work must stop there. A resource that keeps one fence for several
// writes of one grant compares with <= instead of <.
func (l *Lock) Fence() int64 {
	if l == nil {
		return 0
	}
	return l.fence
}

// Refresh extends the lock's lease to ttl from now. It returns ErrLockLost
// when the lock is no longer held with this Lock's token: it expired, was
// released, or another holder has it now.
func (l *Lock) Refresh(ctx context.Context, ttl time.Duration) error {
	if l == nil {
		return errNilLock
	}
	if err := l.m.check(ctx); err != nil {
		return err
	}
	if err := checkLockTTL(ttl); err != nil {
		return err
	}
	_, err := l.refresh(ctx, ttl.Milliseconds())
	return err
}

// TTL returns the time left on the lock's lease. It returns ErrLockLost
// when the lock is no longer held with this Lock's token.
func (l *Lock) TTL(ctx context.Context) (time.Duration, error) {
	if l == nil {
		return 0, errNilLock
	}
	if err := l.m.check(ctx); err != nil {
		return 0, err
	}
	ms, err := l.refresh(ctx, 0)
	if err != nil {
		return 0, err
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// refresh runs the refresh script: with ms > 0 it extends the lease to ms
// milliseconds, with 0 it only reads it. It returns the lease's remaining
// milliseconds.
func (l *Lock) refresh(ctx context.Context, ms int64) (int64, error) {
	n, err := l.m.eval(ctx, l.m.locks, scripts.LockRefresh, []string{l.keys[0], l.keys[2]}, l.token, ms).Int64()
	switch {
	case err != nil:
		return 0, wrap(err, "lock %q", l.name)
	case n == -2:
		return 0, l.lost()
	}
	return n, nil
}

// Release gives the lock up, so that a waiter obtains it at once instead of
// when the lease expires. It deletes the lock only while this Lock's token
// holds it, and returns ErrLockLost otherwise: the lease expired (then
// someone else may have held the lock while this holder worked), or the
// lock was already released. Release still works after the Manager is
// closed, so that a deferred Release during shutdown frees the lock. On
// the nil *Lock of a Lock or TryLock that failed, Release (as Refresh and
// TTL) returns an error matching ErrNotObtained rather than panicking.
func (l *Lock) Release(ctx context.Context) error {
	if l == nil {
		return errNilLock
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	n, err := l.m.eval(ctx, l.m.locks, scripts.Release, []string{l.keys[0], l.keys[2]}, l.token, l.m.notes.channelOf(l.keys[0]), l.m.notes.publisher()).Int64()
	switch {
	case err != nil:
		return wrap(err, "lock %q", l.name)
	case n == 0:
		return l.lost()
	}
	return nil
}

// errNilLock is the error of a method called on the nil *Lock that a
// failed Lock or TryLock returns, as in the idiom defer lock.Release(ctx).
var errNilLock = fmt.Errorf("%w: the Lock is nil (Lock or TryLock failed)", ErrNotObtained)

// lost returns the error of a call that found the lock no longer held with
// l's token.
func (l *Lock) lost() error {
	l.m.locks.add(EventLockLost, 1)
	return fmt.Errorf("%w: %q is no longer held with this token", ErrLockLost, l.name)
}

// A LockOption is a setting of one Lock or WithLock call: how it waits for a
// lock that is held (LinearRetry, ExponentialRetry, NoRetry) and how many
// times it tries (MaxAttempts).
type LockOption func(*lockSettings)

// lockSettings are the LockOptions of one call.
type lockSettings struct {
	// wait returns how long to wait after the n-th attempt (from 1) found
	// the lock held; a negative wait gives up.
	wait        func(n int) time.Duration
	maxAttempts int   // 0 for no cap
	err         error // the first invalid option
}

// Default retry: exponential from 10ms to 500ms, with jitter, bounded only
// by the caller's context.
const (
	defaultRetryMin = 10 * time.Millisecond
	defaultRetryMax = 500 * time.Millisecond
)

// settleLock applies opts over the default retry.
func settleLock(opts []LockOption) lockSettings {
	s := lockSettings{wait: exponentialWait(defaultRetryMin, defaultRetryMax)}
	for _, o := range opts {
		if o == nil {
			s.fail(fmt.Errorf("%w: nil LockOption", ErrInvalidOption))
			continue
		}
		o(&s)
	}
	return s
}

func (s *lockSettings) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}

// LinearRetry makes Lock try again every d while the lock is held, until
// its context ends or MaxAttempts is reached.
func LinearRetry(d time.Duration) LockOption {
	return func(s *lockSettings) {
		if d <= 0 {
			s.fail(fmt.Errorf("%w: LinearRetry(%v) is not positive", ErrInvalidOption, d))
			return
		}
		s.wait = func(int) time.Duration { return d }
	}
}

// ExponentialRetry makes Lock try again while the lock is held after waits
// that double from minWait up to maxWait, each drawn at random between half
// of it and all of it (but not under minWait), so that waiters spread out.
// It is the default, from 10ms to 500ms.
func ExponentialRetry(minWait, maxWait time.Duration) LockOption {
	return func(s *lockSettings) {
		if minWait <= 0 || maxWait < minWait {
			s.fail(fmt.Errorf("%w: ExponentialRetry(%v, %v) needs 0 < min <= max", ErrInvalidOption, minWait, maxWait))
			return
		}
		s.wait = exponentialWait(minWait, maxWait)
	}
}

// exponentialWait returns the waits of ExponentialRetry(minWait, maxWait).
func exponentialWait(minWait, maxWait time.Duration) func(int) time.Duration {
	return func(n int) time.Duration {
		d := minWait
		for i := 1; i < n && d < maxWait; i++ {
			d *= 2
		}
		d = min(d, maxWait)
		lo := max(minWait, d/2)
		if d <= lo {
			return d
		}
		return lo + mrand.N(d-lo+1)
	}
}

// NoRetry makes Lock try once and return ErrNotObtained when the lock is
// held, as TryLock does.
func NoRetry() LockOption {
	return func(s *lockSettings) {
		s.wait = func(int) time.Duration { return -1 }
	}
}

// MaxAttempts makes Lock give up with ErrNotObtained after n attempts that
// found the lock held. Without it, only the context bounds the wait.
func MaxAttempts(n int) LockOption {
	return func(s *lockSettings) {
		if n < 1 {
			s.fail(fmt.Errorf("%w: MaxAttempts(%d) is below 1", ErrInvalidOption, n))
			return
		}
		s.maxAttempts = n
	}
}

// Lock obtains the distributed lock name for ttl, waiting while another
// holder has it. It tries again after the waits of its retry option
// (ExponentialRetry from 10ms to 500ms by default) until it obtains the lock,
// MaxAttempts is reached (ErrNotObtained) or ctx ends (an error that matches
// both ErrNotObtained and ctx.Err()). A Redis error is returned as it comes.
//
// The lock is held until Release, or until ttl passes without a Refresh.
// Pass Fence with the writes it protects; see Lock.Fence. An empty name is
// ErrInvalidKey; a ttl under a millisecond is ErrInvalidOption.
func (m *Manager) Lock(ctx context.Context, name string, ttl time.Duration, opts ...LockOption) (*Lock, error) {
	l, _, err := m.obtain(ctx, name, ttl, settleLock(opts))
	return l, err
}

// TryLock tries once to obtain the distributed lock name for ttl, and
// returns ErrNotObtained at once when another holder has it.
func (m *Manager) TryLock(ctx context.Context, name string, ttl time.Duration) (*Lock, error) {
	l, _, err := m.obtain(ctx, name, ttl, lockSettings{wait: func(int) time.Duration { return -1 }})
	return l, err
}

// WithLock runs fn while holding the distributed lock name, which it obtains
// as Lock does (waiting, with opts) and releases when fn returns, on a
// context of its own so that the release also happens when ctx has ended.
// While fn runs, the lease is refreshed to ttl every ttl/3 by a goroutine of
// the Manager's.
//
// If the lease is lost while fn runs (a refresh finds another holder, or
// Redis keeps failing until the lease would have expired), fn's context is
// cancelled with a cause that matches ErrLockLost (see context.Cause), and
// WithLock returns an error that matches ErrLockLost, joined with fn's error.
// fn should watch its context and stop writing at once; for writes that
// cannot be recalled in time, pass the Fence of the lock, which fn gets
// from LockFromContext.
//
// If the Manager is closed while fn runs, fn's context is cancelled with
// cause ErrClosed, the lock is released, and WithLock returns an error that
// matches ErrClosed. If fn panics, the lock is released and the panic goes
// on up the caller's stack.
func (m *Manager) WithLock(ctx context.Context, name string, ttl time.Duration, fn func(ctx context.Context) error, opts ...LockOption) (err error) {
	if fn == nil {
		return fmt.Errorf("%w: nil function", ErrInvalidOption)
	}
	l, expires, err := m.obtain(ctx, name, ttl, settleLock(opts))
	if err != nil {
		return err
	}
	fctx, cancel := context.WithCancelCause(context.WithValue(ctx, heldLockKey{}, l))
	defer cancel(nil)

	// The refresher runs until fn returns (stop) or the Manager closes.
	kctx, stop := context.WithCancel(m.life)
	defer stop()
	ended := make(chan struct{}) // closed when the refresher has stopped
	var lost error               // why the refresher stopped early; read after ended
	started := m.goBackground(func() {
		defer close(ended)
		lost = l.keep(kctx, ttl, expires)
		if lost != nil {
			cancel(lost)
		}
	})
	if !started {
		// Closed since obtain: give the lock back without running fn.
		return m.unlock(ctx, l, ErrClosed, nil)
	}

	defer func() {
		stop()
		<-ended
		err = m.unlock(ctx, l, lost, err)
	}()
	return fn(fctx)
}

// heldLockKey is the context key under which WithLock puts its Lock.
type heldLockKey struct{}

// LockFromContext returns the Lock that WithLock holds for the fn it runs,
// given that fn's context (or one derived from it).
func LockFromContext(ctx context.Context) (*Lock, bool) {
	l, ok := ctx.Value(heldLockKey{}).(*Lock)
	return l, ok
}

// unlock ends WithLock: it releases l unless its lease was lost, and returns
// the error of the whole call, given why the refresher stopped early (lost)
// and fn's error.
func (m *Manager) unlock(ctx context.Context, l *Lock, lost, fnErr error) error {
	if lost != nil && !errors.Is(lost, ErrClosed) {
		// Lost: the lock is not ours to release any more.
		return errors.Join(lost, fnErr)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lockReleaseTimeout)
	defer cancel()
	rerr := l.Release(rctx)
	switch {
	case errors.Is(rerr, ErrLockLost):
		// The lease expired between the last refresh and fn's return.
		return errors.Join(rerr, fnErr)
	case rerr != nil:
		m.log.Warn("cache: releasing a lock failed; it expires on its own", "lock", l.name, "err", rerr)
	}
	return errors.Join(lost, fnErr)
}

// keep refreshes l's lease to ttl every ttl/3 until ctx ends, and then
// returns nil, or ErrClosed when the Manager has closed. It returns early
// with an error matching ErrLockLost when the lease is lost: a refresh finds
// the lock no longer held with l's token, or refreshes fail until expires,
// when the lease would have run out.
func (l *Lock) keep(ctx context.Context, ttl time.Duration, expires time.Time) error {
	stopped := func() error {
		if l.m.life.Err() != nil {
			return ErrClosed
		}
		return nil
	}
	every := ttl / 3
	t := time.NewTimer(every)
	defer t.Stop()
	var failed error // the last refresh error, while Redis fails
	for {
		select {
		case <-ctx.Done():
			return stopped()
		case <-t.C:
		}
		if failed != nil && !time.Now().Before(expires) {
			l.m.locks.add(EventLockLost, 1)
			return fmt.Errorf("%w: %q: the lease ran out while Redis failed: %w", ErrLockLost, l.name, failed)
		}
		sent := time.Now()
		// A refresh still waiting when the lease runs out is too late.
		rctx, cancel := context.WithDeadline(ctx, expires)
		_, err := l.refresh(rctx, ttl.Milliseconds())
		late := rctx.Err() != nil
		cancel()
		switch {
		case err == nil:
			failed = nil
			expires = sent.Add(ttl)
			t.Reset(every)
		case errors.Is(err, ErrLockLost):
			return err
		case ctx.Err() != nil:
			return stopped()
		default:
			// Redis failed: try again soon, until the lease would have run out.
			if failed == nil || !late {
				failed = err // not an attempt the lease's end cut short: it says more
			}
			t.Reset(max(min(every/4, time.Until(expires)), time.Millisecond))
		}
	}
}

// obtain tries to take the lock name as s says, and returns it with the time
// its lease ends at the latest, by the local clock.
func (m *Manager) obtain(ctx context.Context, name string, ttl time.Duration, s lockSettings) (*Lock, time.Time, error) {
	if m.closed.Load() {
		return nil, time.Time{}, ErrClosed
	}
	if name == "" {
		return nil, time.Time{}, fmt.Errorf("%w: empty lock name", ErrInvalidKey)
	}
	if err := checkLockTTL(ttl); err != nil {
		return nil, time.Time{}, err
	}
	if s.err != nil {
		return nil, time.Time{}, s.err
	}
	key := m.lockKey(name)
	l := &Lock{m: m, name: name, keys: []string{key, fenceKey(key), key + awaitedSuffix}, token: rand.Text()}
	ms := ttl.Milliseconds()
	var timer *time.Timer
	var w *leaseWatch // told when the lock is released, once it waited
	mark := "0"       // "1": the attempt marks a held lock as awaited
	began := time.Now()
	for n := 1; ; n++ {
		if err := ctx.Err(); err != nil {
			return nil, time.Time{}, fmt.Errorf("%w: %w", ErrNotObtained, err)
		}
		sent := time.Now()
		fence, err := m.eval(ctx, m.locks, scripts.LockObtain, l.keys, l.token, ms, mark).Int64()
		if err != nil {
			var reply redis.Error
			if !errors.As(err, &reply) {
				// Without a reply from Redis, the script may have run.
				m.abandon(l)
			}
			if ctx.Err() != nil {
				return nil, time.Time{}, fmt.Errorf("%w: %w", ErrNotObtained, ctx.Err())
			}
			return nil, time.Time{}, wrap(err, "lock %q", name)
		}
		if fence > 0 {
			l.fence = fence
			if err := m.replicated(ctx, m.locks, key); err != nil {
				// Not known to survive a failover: not granted.
				m.abandon(l)
				return nil, time.Time{}, wrap(err, "lock %q", name)
			}
			m.locks.addCtx(ctx, EventLockObtained, time.Since(began))
			return l, sent.Add(ttl), nil
		}
		m.locks.addCtx(ctx, EventLockWait, 0)
		wait := s.wait(n)
		if wait < 0 || (s.maxAttempts > 0 && n >= s.maxAttempts) {
			if n == 1 {
				return nil, time.Time{}, fmt.Errorf("%w: %q is held", ErrNotObtained, name)
			}
			return nil, time.Time{}, fmt.Errorf("%w: %q is held after %d attempts", ErrNotObtained, name, n)
		}
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		} else {
			timer.Reset(wait)
		}
		if w == nil {
			// Be told when the lock is released (see notify.go): mark it
			// as awaited, which the holder's Release sees. The attempts
			// that follow mark it again, for a new holder, also when this
			// mark found the lock released: the next attempt may find it
			// taken by another.
			var err error
			if w, err = m.notes.watch(ctx, []string{key}); err == nil {
				defer m.notes.unwatch(w)
				mark = "1"
				marked := redis.NewIntCmd(ctx, "copy", key, key+awaitedSuffix, "replace")
				if err := m.do(ctx, m.locks, marked); err != nil || marked.Val() == 0 {
					continue // released meanwhile (or Redis failed): try again now
				}
			}
		}
		var told <-chan struct{}
		if w != nil {
			told = w.c
		}
		select {
		case <-timer.C:
		case <-told:
		case <-ctx.Done():
			return nil, time.Time{}, fmt.Errorf("%w: %w", ErrNotObtained, ctx.Err())
		}
	}
}

// abandon releases l, in the background and on a context of its own, after
// an obtain call got no reply: the script may have run and granted the lock
// (the reply lost to a timeout or a cancelled context), which would then
// stay taken for its whole lease. Close waits for it, up to
// lockReleaseTimeout.
func (m *Manager) abandon(l *Lock) {
	m.goBackground(func() {
		ctx, cancel := context.WithTimeout(context.Background(), lockReleaseTimeout)
		defer cancel()
		_ = m.eval(ctx, m.locks, scripts.Release, []string{l.keys[0], l.keys[2]}, l.token, m.notes.channelOf(l.keys[0]), m.notes.publisher()).Err()
	})
}

// lockReleaseTimeout bounds the releases that run on a context of their own.
const lockReleaseTimeout = time.Second

// checkLockTTL refuses a lease Redis cannot keep: PX counts milliseconds.
func checkLockTTL(ttl time.Duration) error {
	if ttl < time.Millisecond {
		return fmt.Errorf("%w: lock ttl %v is under a millisecond", ErrInvalidOption, ttl)
	}
	return nil
}
