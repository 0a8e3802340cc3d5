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

// Redis down, slow or silent is not an outage.
//
// Every Redis call the Manager makes goes through a circuit breaker of its
// own (sony/gobreaker), in its own call path (redis.go): the client it was
// given is not changed, the application's commands on it are never judged
// nor failed by the Manager's breaker, and two Managers on one client have
// breakers of their own. After Breaker.Failures consecutive failures the
// breaker opens, and for Breaker.CoolDown every call fails at once with
// ErrUnavailable instead of waiting; then a few probe calls go through, and
// their success closes it again. A failure is a call that could not reach
// Redis (a refused or lost connection, a client timeout) or did not answer
// within its time budget (Options.Timeout, see budget.go); Redis's own
// replies (a miss, a script error) are not failures, nor is a call cut
// short by its caller's context, which says nothing about Redis.
//
// There is one breaker per node the calls go to: one for a single node or
// a Sentinel set-up, on a Redis Cluster one per master, found from the key
// of each call (ClusterClient.MasterForKey), and on a Ring one per shard
// (Ring.GetShardClientForKey). A master or shard that cannot be reached
// opens its own breaker only: the keys of the others keep using Redis, and
// the calls to its keys fail at once instead of each paying its budget
// (on a Ring, until the Ring marks the shard down and moves its keys to the
// others). A breaker never stands between the client and its own work:
// go-redis reloads the cluster's slots on a redirect, and a call that could
// not reach its node, got no reply in its budget or was refused by an open
// breaker asks it to (ReloadState, at most once a second, see
// reloadSlots), so a failover moves the keys to the promoted replica, with
// a breaker of its own, within about a second of the nodes agreeing on it,
// breaker or none.
//
// With the breaker open or Redis failing, loaded reads (GetOrLoad,
// Memo.Get, Hash.GetOrLoad) call the loader and return its value, counted
// as degraded; callers in one process still share one load per key. Plain
// reads return an error matching ErrUnavailable; writes and invalidations
// return their error, and are not queued.

// BreakerOptions configure the circuit breakers in front of Redis.
type BreakerOptions struct {
	// Failures is how many consecutive failed calls open a breaker. A call
	// that gets no reply within its time budget (Options.Timeout) is a
	// failure. A negative value turns the breakers off.
	//
	// default: 5
	Failures int

	// CoolDown is how long a breaker stays open, failing every call at
	// once, before it lets probes through.
	//
	// default: 2s
	CoolDown time.Duration

	// Probes is how many calls the half-open breaker lets through. When
	// they all succeed it closes; when one fails it opens again.
	//
	// default: 1
	Probes int
}

// breaker is the circuit breaker of one node and the Observer it tells of
// its state changes. gobreaker reports a change while it holds its lock, so
// the change is queued there and told once the call's outcome is recorded.
type breaker struct {
	cb   *gobreaker.TwoStepCircuitBreaker[struct{}]
	obs  Observer     // nil for none
	node string       // the node's address; "" for the only node, or a cluster whose slots are not known yet
	used atomic.Int64 // when a call last asked to go through, Unix ns

	mu      sync.Mutex // protects pending
	pending []gobreaker.State
	tell    sync.Mutex // held while the queued changes are told, so they are told in order
}

func newBreaker(o BreakerOptions, obs Observer, node string) *breaker {
	b := &breaker{obs: obs, node: node}
	b.used.Store(time.Now().UnixNano())
	failures := uint32(o.Failures)
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		OnStateChange: func(_ string, _, to gobreaker.State) {
			if obs == nil {
				return
			}
			b.mu.Lock()
			b.pending = append(b.pending, to)
			b.mu.Unlock()
		},
		Name:        "redis " + node,
		MaxRequests: uint32(o.Probes),
		Timeout:     o.CoolDown,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= failures },
		IsSuccessful: func(err error) bool {
			return err == nil || !unreachable(err)
		},
		IsExcluded: func(err error) bool {
			// Not sent, or cut short by its caller: that says nothing about Redis.
			return errors.Is(err, errNotSent) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
		},
	})
	return b
}

// errNotSent is the outcome of a call a breaker let through but that was
// not sent after all (another node's breaker refused its pipeline): it
// counts neither way.
var errNotSent = errors.New("cache: call not sent")

// ticket is a call let through a breaker; record tells the breaker how it
// went, once.
type ticket struct {
	b    *breaker
	done func(error)
}

// allow lets a call through b, or returns an error matching ErrUnavailable
// when b is open (or half-open with its probes out).
func (b *breaker) allow() (ticket, error) {
	b.used.Store(time.Now().UnixNano())
	done, err := b.cb.Allow()
	if err != nil {
		if b.obs != nil {
			b.flush() // the cool-down's end may have moved it to half-open
		}
		if b.node != "" {
			return ticket{}, fmt.Errorf("%w: circuit breaker of %s open", ErrUnavailable, b.node)
		}
		return ticket{}, errBreakerOpen
	}
	return ticket{b: b, done: done}, nil
}

// errBreakerOpen is the error of a call refused by an open breaker.
var errBreakerOpen = fmt.Errorf("%w: circuit breaker open", ErrUnavailable)

// record tells the breaker the call's outcome, then the Observer of the
// state changes it caused.
func (t ticket) record(err error) {
	if t.b == nil {
		return
	}
	t.done(err)
	if t.b.obs != nil {
		t.b.flush()
	}
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

// breakers holds the breakers of the nodes the Manager's calls go to.
type breakers struct {
	o     BreakerOptions
	obs   Observer
	one   *breaker // the breaker of a client that is not a cluster or a ring
	nodes sync.Map // on a cluster or a ring: node address → *breaker
}

// of returns the breaker of the node at addr ("" for the cluster or ring
// as a whole), made on first use.
func (bs *breakers) of(addr string) *breaker {
	if bs.one != nil {
		return bs.one
	}
	if b, ok := bs.nodes.Load(addr); ok {
		return b.(*breaker)
	}
	b, _ := bs.nodes.LoadOrStore(addr, newBreaker(bs.o, bs.obs, addr))
	return b.(*breaker)
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

// unavailable wraps an error that means Redis cannot be reached so that it
// matches ErrUnavailable; others are returned as they are.
func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || !unreachable(err) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// BreakerState returns the state of the circuit breaker: "closed" (Redis
// in use), "open" (failing fast) or "half-open" (probing); "off" without
// one. On a cluster or a ring, with a breaker per master or shard, it is
// the state of the least healthy one ("open" when any is open) of those a
// call went to in the last 10s (see breakerIdle); Stats.Breakers has each.
func (m *Manager) BreakerState() string {
	if m.breakers == nil {
		return "off"
	}
	if m.breakers.one != nil {
		return m.breakers.one.cb.State().String()
	}
	worst := gobreaker.StateClosed
	m.breakers.inUse(func(_ string, b *breaker) bool {
		switch s := b.cb.State(); {
		case s == gobreaker.StateOpen:
			worst = s
			return false
		case s == gobreaker.StateHalfOpen:
			worst = s
		}
		return true
	})
	return worst.String()
}

// nodeBreakerStates returns the state of each node's breaker, by address,
// on a cluster or a ring; nil otherwise.
func (m *Manager) nodeBreakerStates() map[string]string {
	if m.breakers == nil || m.breakers.one != nil {
		return nil
	}
	out := make(map[string]string)
	m.breakers.inUse(func(node string, b *breaker) bool {
		if node == "" {
			node = "cluster"
		}
		out[node] = b.cb.State().String()
		return true
	})
	return out
}

// breakerIdle is how long a node's breaker may go without a call before
// it is dropped: the node is no longer one the calls go to (a master that
// failed over, a shard a Ring dropped), or none of its keys was used. A
// node that is used again gets a new, closed breaker.
const breakerIdle = 10 * time.Second

// inUse calls fn with each node's breaker, by address, until fn returns
// false, first dropping those no call has asked to go through for
// breakerIdle: a node that failed over would otherwise keep reporting the
// state it had when its last call went to it.
func (bs *breakers) inUse(fn func(node string, b *breaker) bool) {
	idle := time.Now().Add(-breakerIdle).UnixNano()
	bs.nodes.Range(func(k, v any) bool {
		b := v.(*breaker)
		if b.used.Load() < idle {
			bs.nodes.CompareAndDelete(k, v)
			return true
		}
		return fn(k.(string), b)
	})
}
