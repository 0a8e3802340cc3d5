package cache

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Deadlines and time budgets.
//
// Every Redis call the Manager makes returns by a deadline: the earlier of
// its caller's context deadline and the end of its time budget
// (Options.Timeout). A loaded read, a write and a Refresh have one budget
// for all their Redis calls, carried in their context (withBudget); other
// calls (an invalidation's, whose work grows with what it names, a lock's
// attempts, background work) have one budget each. A budget counts only
// the time spent waiting for Redis: it is paused while the operation runs
// its loader or waits between the resends of a command refused during a
// slot migration, so that a loaded read returns within Timeout plus its
// loader; and once a load waits for another process's, each of its calls
// has a budget of its own (the wait is not bounded by the budget, but by
// that process's lease).
//
// go-redis bounds a command by the client's timeouts, and by the context's
// deadline only when the client has ContextTimeoutEnabled. So a call whose
// deadline comes before the client's own bound is made either with the
// deadline in its context (ContextTimeoutEnabled), or on a pooled worker
// goroutine that its caller stops waiting for at the deadline (see
// exchange): the
// command then finishes in the background, within the client's timeouts,
// and its connection goes back to the pool. A call that its budget cut
// short is a failure for the breaker; one that its caller's deadline cut
// short is judged by whether it answers within its budget.
//
// Calls cut short return an error that matches ErrUnavailable, and also
// the context's error when it was the caller's deadline or cancellation.

// defaultTimeout is Options.Timeout's default; see its comment.
const defaultTimeout = 150 * time.Millisecond

// timeoutDefault is the Timeout New gives a Manager whose Options have
// none: defaultTimeout, but for this package's tests (see TestMain).
var timeoutDefault = defaultTimeout

// errBudget is the error of a call that did not get its reply within its
// time budget.
var errBudget = fmt.Errorf("%w: no reply within the time budget (Options.Timeout)", ErrUnavailable)

// callerGone returns the error of a call cut short because its caller's
// context ended: it matches ErrUnavailable and ctx.Err().
func callerGone(ctx context.Context) error {
	return fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
}

// budget is an operation's time budget. It is a context, the operation's,
// so that every call made on it or on a context derived from it finds it
// (a load in flight runs on a context that keeps its caller's values).
type budget struct {
	context.Context

	mu     sync.Mutex    // protects the fields below
	end    time.Time     // when it runs out, while it runs
	left   time.Duration // what is left of it, while paused
	pauses int           // pauses in progress: paused when > 0
}

// budgetKey is the context key of an operation's budget.
type budgetKey struct{}

// Value returns the budget for budgetKey, else what the operation's context
// holds.
func (b *budget) Value(key any) any {
	if _, ok := key.(budgetKey); ok {
		return b
	}
	return b.Context.Value(key)
}

// budgetOf returns the budget ctx carries, or nil.
func budgetOf(ctx context.Context) *budget {
	b, _ := ctx.Value(budgetKey{}).(*budget)
	return b
}

// withBudget returns ctx with a time budget of Options.Timeout for the
// Redis calls of one operation. An operation called within another (with
// its context) shares its budget, unless that budget is paused: a loader
// that uses the cache gets budgets of its own.
func (m *Manager) withBudget(ctx context.Context) context.Context {
	if m.opts.Timeout <= 0 {
		return ctx
	}
	if b := budgetOf(ctx); b != nil && !b.paused() {
		return ctx
	}
	return &budget{Context: ctx, end: time.Now().Add(m.opts.Timeout)}
}

func (b *budget) paused() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pauses > 0
}

// pause stops the clock of ctx's budget, if it has one, until the returned
// function is called: the operation is waiting for something other than
// Redis. Pauses may nest.
func pause(ctx context.Context) (resume func()) {
	b := budgetOf(ctx)
	if b == nil {
		return func() {}
	}
	b.mu.Lock()
	if b.pauses == 0 {
		b.left = time.Until(b.end)
	}
	b.pauses++
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		b.pauses--
		if b.pauses == 0 {
			b.end = time.Now().Add(b.left)
		}
		b.mu.Unlock()
	}
}

// budgetEnd returns when the budget of a call made now on ctx ends: its
// operation's, or one of its own when ctx has none or its operation's is
// paused (a lease renewal while the loader runs). Zero: no budget.
func (m *Manager) budgetEnd(ctx context.Context, now time.Time) time.Time {
	if m.opts.Timeout <= 0 {
		return time.Time{}
	}
	if b := budgetOf(ctx); b != nil {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.pauses == 0 {
			return b.end
		}
	}
	return now.Add(m.opts.Timeout)
}

// clientBound is how long go-redis itself may take over one call on a
// client: its retries, each with a wait for a connection, dials and the
// write and read timeouts. Zero when it is unbounded (a timeout turned
// off) or unknown (a client type this package does not know).
func clientBound(c redis.UniversalClient) time.Duration {
	var (
		attempts                                  int
		poolWait, dial, write, read, backoff, gap time.Duration
		dials                                     int
	)
	switch c := c.(type) {
	case *redis.Client:
		o := c.Options()
		attempts, dials = o.MaxRetries+1, o.DialerRetries
		poolWait, dial, write, read = o.PoolTimeout, o.DialTimeout, o.WriteTimeout, o.ReadTimeout
		backoff, gap = o.MaxRetryBackoff, o.DialerRetryTimeout
	case *redis.ClusterClient:
		o := c.Options()
		attempts, dials = (o.MaxRedirects+1)*(max(o.MaxRetries, 0)+1), o.DialerRetries
		poolWait, dial, write, read = o.PoolTimeout, o.DialTimeout, o.WriteTimeout, o.ReadTimeout
		backoff, gap = o.MaxRetryBackoff, o.DialerRetryTimeout
	case *redis.Ring:
		o := c.Options()
		attempts, dials = o.MaxRetries+1, o.DialerRetries
		poolWait, dial, write, read = o.PoolTimeout, o.DialTimeout, o.WriteTimeout, o.ReadTimeout
		backoff, gap = o.MaxRetryBackoff, o.DialerRetryTimeout
	default:
		return 0
	}
	if poolWait <= 0 || dial <= 0 || write <= 0 || read <= 0 {
		return 0
	}
	dials = max(dials, 1)
	each := poolWait + time.Duration(dials)*dial + time.Duration(dials-1)*gap + write + read
	return time.Duration(max(attempts, 1))*each + time.Duration(max(attempts-1, 0))*backoff
}

// honoursContext reports whether go-redis bounds c's commands by their
// context's deadline (ContextTimeoutEnabled).
func honoursContext(c redis.UniversalClient) bool {
	switch c := c.(type) {
	case *redis.Client:
		return c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return c.Options().ContextTimeoutEnabled
	case *redis.Ring:
		return c.Options().ContextTimeoutEnabled
	}
	return false
}
