package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// Redis down is not an outage.
//
// Every command goes through one go-redis hook that the Manager adds to the
// client it is given (a hook, rather than a clone of the client, so that the
// application's own hooks, such as tracing, see the cache's commands too).
// The hook passes each command through a circuit breaker (sony/gobreaker):
// after
// Breaker.Failures consecutive failures it opens, and for Breaker.CoolDown
// every command fails at once with ErrUnavailable instead of waiting for a
// connection; then a few probe commands go through, and their success closes
// it again. Failures to reach Redis (refused or lost connections, timeouts)
// are wrapped so that they match ErrUnavailable; Redis's own replies
// (a miss, a script error) are not failures.
//
// With the breaker open or Redis failing, loaded reads (GetOrLoad,
// Memo.Get, Hash.GetOrLoad) call the loader and return its value, counted
// as degraded; callers in one process still share one load per key. Plain
// reads return an error matching ErrUnavailable; writes and invalidations
// return their error, and are not queued.

// BreakerOptions configure the circuit breaker in front of Redis.
type BreakerOptions struct {
	// Failures is how many consecutive failed commands open the breaker.
	// A negative value turns the breaker off.
	//
	// default: 5
	Failures int

	// CoolDown is how long the breaker stays open, failing every command at
	// once, before it lets probes through.
	//
	// default: 2s
	CoolDown time.Duration

	// Probes is how many commands the half-open breaker lets through. When
	// they all succeed it closes; when one fails it opens again.
	//
	// default: 1
	Probes int
}

// breakerHook is the go-redis hook every command goes through. It sees
// every command on the client, the application's too: while Redis is down
// they fail fast as well. After Close it lets every command pass untouched
// (go-redis cannot remove a hook).
type breakerHook struct {
	b      *breaker
	closed *atomic.Bool // the Manager's
}

// breaker is the circuit breaker and the Observer it tells of its state
// changes. gobreaker reports a change while it holds its lock, so the
// change is queued there and told after Execute returns.
type breaker struct {
	cb  *gobreaker.CircuitBreaker[struct{}]
	obs Observer // nil for none

	mu      sync.Mutex // protects pending
	pending []gobreaker.State
	tell    sync.Mutex // held while the queued changes are told, so they are told in order
}

func newBreaker(o BreakerOptions, obs Observer) *breaker {
	b := &breaker{obs: obs}
	failures := uint32(o.Failures)
	b.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		OnStateChange: func(_ string, _, to gobreaker.State) {
			if obs == nil {
				return
			}
			b.mu.Lock()
			b.pending = append(b.pending, to)
			b.mu.Unlock()
		},
		Name:        "redis",
		MaxRequests: uint32(o.Probes),
		Timeout:     o.CoolDown,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= failures },
		IsSuccessful: func(err error) bool {
			return err == nil || !unreachable(err)
		},
		IsExcluded: func(err error) bool {
			// The caller gave up: that says nothing about Redis.
			return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
		},
	})
	return b
}

// execute runs fn through the breaker, then tells the Observer of the state
// changes it caused.
func (b *breaker) execute(fn func() error) error {
	_, err := b.cb.Execute(func() (struct{}, error) { return struct{}{}, fn() })
	if b.obs != nil {
		b.flush()
	}
	return err
}

// flush tells the Observer of the queued state changes.
func (b *breaker) flush() {
	b.tell.Lock()
	defer b.tell.Unlock()
	b.mu.Lock()
	changes := b.pending
	b.pending = nil
	b.mu.Unlock()
	for _, to := range changes {
		b.obs.Observe(Event{Kind: EventBreakerState, Name: to.String(), N: 1})
	}
}

// unreachable reports whether err means Redis could not be reached or did
// not answer in time, as opposed to an answer (a miss, an error reply).
func unreachable(err error) bool {
	switch {
	case err == nil, errors.Is(err, redis.Nil):
		return false
	case errors.Is(err, ErrUnavailable):
		return true
	}
	var reply redis.Error
	if errors.As(err, &reply) {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, redis.ErrClosed) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, redis.ErrPoolTimeout)
}

func (h breakerHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h breakerHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.closed.Load() || connSetup(cmd) {
			return next(ctx, cmd)
		}
		err := h.b.execute(func() error { return next(ctx, cmd) })
		if err = unavailable(err); err != nil && errors.Is(err, ErrUnavailable) {
			cmd.SetErr(err)
		}
		return err
	}
}

func (h breakerHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.closed.Load() || len(cmds) > 0 && connSetup(cmds[0]) {
			return next(ctx, cmds)
		}
		err := h.b.execute(func() error { return pipelineErr(next(ctx, cmds), cmds) })
		if err = unavailable(err); err != nil && errors.Is(err, ErrUnavailable) {
			for _, c := range cmds {
				if c.Err() == nil || unreachable(c.Err()) || errors.Is(err, gobreaker.ErrOpenState) {
					c.SetErr(err)
				}
			}
		}
		return err
	}
}

// connSetup reports whether cmd is part of a new connection's handshake,
// which go-redis sends through the hooks while the command that needed the
// connection is itself in the breaker: counting it too would make every
// half-open probe that dials fail as "too many requests".
func connSetup(cmd redis.Cmder) bool {
	switch cmd.Name() {
	case "hello", "auth", "client", "select", "readonly":
		return true
	}
	return false
}

// pipelineErr is a pipeline's error as the breaker should judge it: the
// first error that means Redis is unreachable, else err.
func pipelineErr(err error, cmds []redis.Cmder) error {
	if err != nil && unreachable(err) {
		return err
	}
	for _, c := range cmds {
		if unreachable(c.Err()) {
			return c.Err()
		}
	}
	return err
}

// unavailable wraps an error that means Redis cannot be reached so that it
// matches ErrUnavailable; others are returned as they are.
func unavailable(err error) error {
	switch {
	case err == nil, errors.Is(err, ErrUnavailable):
		return err
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		return fmt.Errorf("%w: circuit breaker open", ErrUnavailable)
	case unreachable(err):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// BreakerState returns the circuit breaker's state: "closed" (Redis in
// use), "open" (failing fast) or "half-open" (probing); "off" without one.
func (m *Manager) BreakerState() string {
	if m.breaker == nil {
		return "off"
	}
	return m.breaker.cb.State().String()
}
