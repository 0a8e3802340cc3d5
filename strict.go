package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/scripts"
)

// The strict mode of the local tier (LocalOptions.Strict).
//
// Invariant: once a write, a store or an Invalidate of a strict Manager
// has returned, no strict Manager of the fleet serves a local copy made
// before it. Read leases (Chubby's, and Gray and Cheriton's) keep it:
//
//   - A Manager serves local copies only while it holds a read lease:
//     until its deadline, a time of its monotonic clock. It renews the
//     lease every Lease/3 through its subscription: it notes the time t0,
//     then a script (strict_heartbeat.lua) lists it in the fleet's
//     registry, for 2×Lease by Redis's clock, and publishes a heartbeat on
//     the Manager's own channel, at one instant. When the heartbeat comes
//     back on its subscription, the deadline moves to t0 + Lease −
//     Lease/10 (unless that has passed already). Redis delivers what it
//     publishes to a connection in the order it publishes it, whatever the
//     channel: every drop published before the heartbeat has been
//     received, and applied, by then. A Manager that cannot renew (Redis
//     away, its subscription dead or stuck, its process paused) stops
//     serving from its tier when its deadline passes, by itself.
//   - A writer publishes its drop with a script (strict_drop.lua) that, at
//     the same instant, reads the registry: the Managers listed may hold a
//     lease granted by a heartbeat published before the drop. Each applies
//     the drop, then acknowledges it on the writer's channel. The write
//     returns once every one listed has acknowledged, or once Lease has
//     passed on the writer's clock since the script returned: a lease
//     granted before the drop ends by then. A Manager not listed holds no
//     such lease: its listing ran out (its lease ran out before), or its
//     heartbeats all came after the drop, which it applied first (or it
//     subscribed after the drop, and cleared its tier then).
//   - A registry that Redis lost (an eviction, a restart, a failover
//     before it replicated) cannot say who holds a lease. It carries a
//     mark of the time from which it lists every Manager: a Lease after it
//     was made anew. Until then writers wait out every lease, listed or
//     not.
//   - A hit checks the lease without a clock read of its own: the clock of
//     the tier's cache (strictClock), which otter reads at the start of
//     every lookup, marks the lease lapsed when that read finds its
//     deadline passed; the hit then checks the mark (see lapsed).
//
// Copies are also kept only while the subscription is up, and dropped when
// it is made anew, as in the other mode: a lease granted on a subscription
// since lost covers copies made after the new one began, which every later
// drop reaches.
//
// A drop that could not be published is an error for its writer, and is
// published again in the background until it is or until the copies it
// would drop have all expired (LocalOptions.TTL). What the mode relies on:
// the Managers' monotonic clocks run at one rate (within Lease/10 over a
// Lease), Redis's clock does not jump forward by more than a Lease between
// a heartbeat and a drop (Redis's own key expiry relies on as much), and a
// failover loses at most a Lease of the registry's updates.

// strictTier is the strict mode's part of the local tier.
type strictTier struct {
	lease    time.Duration
	base     time.Time    // the origin of deadline, read with its monotonic clock
	baseUnix int64        // base in Unix ns
	deadline atomic.Int64 // the lease's end, in ns since base; it only moves forward
	lapsedAt atomic.Int64 // the latest deadline a clock read found passed (see strictClock)
	registry string       // the fleet's registry (see strict_drop.lua)
	own      string       // this Manager's channel: its heartbeats and the acknowledgements of its drops
	seq      atomic.Uint64
	kick     chan struct{} // asks for a heartbeat now: the subscription is up
	acks     chan ackTo    // acknowledgements to send

	mu    sync.Mutex               // protects beats and waits
	beats map[uint64]time.Duration // heartbeats sent and not back yet, by seq: t0 (since base)
	waits map[uint64]*dropWait     // drops of this Manager waiting for acknowledgements, by seq

	mixed                      atomic.Bool // a drop from a Manager not in strict mode was received (logged once)
	renewals, waitedOut, beatN atomic.Uint64
}

func (s *strictTier) waitedOutN() uint64 {
	if s == nil {
		return 0
	}
	return s.waitedOut.Load()
}

// ackTo is an acknowledgement to send: of drop seq, to the Manager id.
type ackTo struct {
	id  string
	seq uint64
}

// dropWait is a drop waiting for acknowledgements.
type dropWait struct {
	acked  map[string]bool // by the acknowledging Manager's id; under strictTier.mu
	signal chan struct{}   // a new acknowledgement (capacity 1)
}

// Lease defaults and bounds.
const (
	leaseDefault = time.Second
	leaseMin     = 30 * time.Millisecond
)

func newStrictTier(o LocalOptions, registry, own string) *strictTier {
	base := time.Now()
	return &strictTier{
		lease:    o.Lease,
		base:     base,
		baseUnix: base.UnixNano(),
		registry: registry,
		own:      own,
		kick:     make(chan struct{}, 1),
		acks:     make(chan ackTo, 1024),
		beats:    map[uint64]time.Duration{},
		waits:    map[uint64]*dropWait{},
	}
}

// live reports whether the lease is held now.
func (s *strictTier) live() bool {
	return int64(time.Since(s.base)) < s.deadline.Load()
}

// lapsed reports whether a clock read found the lease's deadline passed,
// and no renewal came since. A hit calls it after the tier's cache read
// the clock (strictClock), so that the lease is checked without a clock
// read of its own: the copy is served at that read, when the lease was
// live; or, when a renewal came since, after it (the renewal applied every
// drop published before its heartbeat, and the generations the hit checks
// next show them).
func (s *strictTier) lapsed() bool {
	return s.lapsedAt.Load() >= s.deadline.Load()
}

// strictClock is the strict tier's clock, as its cache reads it: the
// Manager's (now), or the system's, which also checks the lease, marking
// it lapsed when its deadline has passed. otter reads it at the start of
// every lookup (GetIfPresent), so a hit pays one clock read, as in the
// default mode.
type strictClock struct {
	s   *strictTier
	now func() time.Time // nil for the system's
}

func (c strictClock) NowNano() int64 {
	s := c.s
	d := s.deadline.Load()
	mono := int64(time.Since(s.base))
	if mono >= d {
		s.lapse(d)
	}
	if c.now != nil {
		return c.now().UnixNano()
	}
	return s.baseUnix + mono
}

// lapse marks deadline d passed: lapsedAt moves forward only, so that a
// slow reader that found an older deadline passed does not hide a newer
// one.
func (s *strictTier) lapse(d int64) {
	for {
		l := s.lapsedAt.Load()
		if l >= d || s.lapsedAt.CompareAndSwap(l, d) {
			return
		}
	}
}

// Tick gives no ticks: expired copies are removed as they are met.
func (c strictClock) Tick(time.Duration) <-chan time.Time { return nil }

// registerFor is how long a heartbeat lists a Manager in the registry: a
// lease, and another for the updates a failover may lose.
func (s *strictTier) registerFor() int64 { return (2 * s.lease).Milliseconds() }

// registryTTL is how long the registry outlives the last heartbeat or drop.
func (s *strictTier) registryTTL() int64 { return max(time.Minute, 10*s.lease).Milliseconds() }

// heartbeats renews the lease every Lease/3, and at once when the
// subscription is up, until Close; then it takes the Manager off the
// registry.
func (m *Manager) heartbeats() {
	s := m.local.strict
	tick := time.NewTicker(s.lease / 3)
	defer tick.Stop()
	for {
		select {
		case <-m.life.Done():
			m.unregister()
			return
		case <-tick.C:
		case <-s.kick:
		}
		if m.local.ready.Load() {
			m.heartbeat()
		}
	}
}

// heartbeat lists the Manager in the registry and publishes a heartbeat,
// which renews the lease when it comes back (see renewed).
func (m *Manager) heartbeat() {
	s := m.local.strict
	seq := s.seq.Add(1)
	t0 := time.Since(s.base)
	s.mu.Lock()
	for q, t := range s.beats { // those that never came back
		if t0-t > s.lease {
			delete(s.beats, q)
		}
	}
	s.beats[seq] = t0
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(m.life, s.lease/3)
	defer cancel()
	err := m.eval(ctx, m.kv, scripts.StrictHeartbeat, []string{s.registry},
		m.local.id, s.registerFor(), s.own, "h"+strconv.FormatUint(seq, 10), s.registryTTL(), s.lease.Milliseconds()).Err()
	if err != nil && m.life.Err() == nil {
		m.log.Debug("cache: a heartbeat of the strict local tier failed", "err", err)
		return
	}
	s.beatN.Add(1)
}

// renewed handles the return of heartbeat seq on the subscription.
func (s *strictTier) renewed(seq uint64) {
	s.mu.Lock()
	t0, ok := s.beats[seq]
	for q := range s.beats {
		if q <= seq {
			delete(s.beats, q)
		}
	}
	s.mu.Unlock()
	if !ok {
		return
	}
	// A deadline already passed is not stored: a hit whose clock read
	// found the old one passed would take it for a renewal since (see
	// lapsed), and a write that waited for this lease to end may have
	// returned.
	d := int64(t0 + s.lease - s.lease/10)
	if d > s.deadline.Load() && d > int64(time.Since(s.base)) {
		s.deadline.Store(d) // only the receiving goroutine stores it
		s.renewals.Add(1)
	}
}

// unregister takes the closing Manager off the registry, so that writers
// do not wait for it.
func (m *Manager) unregister() {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_ = m.do(ctx, m.kv, redis.NewIntCmd(ctx, "zrem", m.local.strict.registry, m.local.id))
}

// publishStrict publishes the drop of keys (all of them when all) with
// acknowledgements, and waits for them or for the leases to end.
func (m *Manager) publishStrict(ctx context.Context, all bool, keys []string) error {
	t, s := m.local, m.local.strict
	seq := s.seq.Add(1)
	w := &dropWait{acked: map[string]bool{}, signal: make(chan struct{}, 1)}
	s.mu.Lock()
	s.waits[seq] = w
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.waits, seq)
		s.mu.Unlock()
	}()
	msg := encodeDrop(t.id+"/"+strconv.FormatUint(seq, 10), all, keys)
	cmd := m.eval(context.WithoutCancel(ctx), m.kv, scripts.StrictDrop, []string{s.registry},
		t.channel, msg, s.lease.Milliseconds(), s.registryTTL())
	sent := time.Now()
	if err := cmd.Err(); err != nil {
		m.republish(msg)
		return fmt.Errorf("%w: publishing a drop of the strict local tier: %w", ErrUnavailable, err)
	}
	t.sent.Add(1)
	incomplete, ids, ok := strictDropReply(cmd.Val())
	if !ok {
		return fmt.Errorf("%w: the strict local tier's drop script answered %v", ErrUnavailable, cmd.Val())
	}
	return s.await(ctx, w, t.id, ids, sent.Add(min(incomplete, s.lease)), sent.Add(s.lease))
}

// await waits until every Manager of ids but self has acknowledged w's
// drop and until the registry lists everyone (complete), or until the end
// of every lease granted before the drop (end).
func (s *strictTier) await(ctx context.Context, w *dropWait, self string, ids []string, complete, end time.Time) error {
	defer pause(ctx)() // waiting is not spending the Redis budget
	var timer *time.Timer
	for {
		now := time.Now()
		if !now.Before(end) {
			s.waitedOut.Add(1)
			return nil
		}
		if !now.Before(complete) && s.allAcked(w, self, ids) {
			return nil
		}
		wake := end
		if now.Before(complete) {
			wake = complete
		}
		if timer == nil {
			timer = time.NewTimer(wake.Sub(now))
			defer timer.Stop()
		} else {
			timer.Reset(wake.Sub(now))
		}
		select {
		case <-w.signal:
		case <-timer.C:
		case <-ctx.Done():
			return fmt.Errorf("%w: not every Manager confirmed the drop of its local copies: %w", ErrUnavailable, ctx.Err())
		}
	}
}

// allAcked reports whether every Manager of ids but self acknowledged w.
func (s *strictTier) allAcked(w *dropWait, self string, ids []string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if id != self && !w.acked[id] {
			return false
		}
	}
	return true
}

// acked handles the acknowledgement by id of this Manager's drop seq.
func (s *strictTier) acked(seq uint64, id string) {
	s.mu.Lock()
	w := s.waits[seq]
	if w != nil {
		w.acked[id] = true
	}
	s.mu.Unlock()
	if w != nil {
		select {
		case w.signal <- struct{}{}:
		default:
		}
	}
}

// strictDropReply parses strict_drop.lua's reply.
func strictDropReply(v any) (incomplete time.Duration, ids []string, ok bool) {
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return 0, nil, false
	}
	ms, ok := a[0].(int64)
	if !ok {
		return 0, nil, false
	}
	for _, x := range a[1:] {
		id, ok := x.(string)
		if !ok {
			return 0, nil, false
		}
		ids = append(ids, id)
	}
	return time.Duration(ms) * time.Millisecond, ids, true
}

// republish publishes a drop that could not be, in the background, until
// it is, or until every copy it would drop has expired (the tier's TTL).
func (m *Manager) republish(msg string) {
	t := m.local
	m.goBackground(func() {
		giveUp := time.Now().Add(t.ttl)
		backoff := 20 * time.Millisecond
		for time.Now().Before(giveUp) {
			if sleep(m.life, backoff) != nil {
				return
			}
			backoff = min(2*backoff, time.Second)
			ctx, cancel := context.WithTimeout(m.life, time.Second)
			err := m.eval(ctx, m.kv, scripts.StrictDrop, []string{t.strict.registry},
				t.channel, msg, t.strict.lease.Milliseconds(), t.strict.registryTTL()).Err()
			cancel()
			if err == nil {
				t.sent.Add(1)
				return
			}
		}
	})
}

// sendAcks publishes the acknowledgements the receiving goroutine queues,
// until Close.
func (m *Manager) sendAcks() {
	s := m.local.strict
	for {
		var batch []ackTo
		select {
		case <-m.life.Done():
			return
		case a := <-s.acks:
			batch = append(batch, a)
		}
		for len(batch) < 128 {
			select {
			case a := <-s.acks:
				batch = append(batch, a)
				continue
			default:
			}
			break
		}
		ctx, cancel := context.WithTimeout(m.life, s.lease)
		c, addr := m.pubClient() // on a Ring, the shard may change
		_, err := m.pipeOn(ctx, c, addr, m.kv, func(p redis.Pipeliner) {
			for _, a := range batch {
				p.Publish(ctx, m.localOwnChannel(a.id), "a"+strconv.FormatUint(a.seq, 10)+"\n"+m.local.id)
			}
		})
		cancel()
		if err != nil && m.life.Err() == nil {
			// The writers wait for the end of this Manager's lease instead.
			m.log.Debug("cache: acknowledging drops of the strict local tier failed", "err", err)
		}
	}
}

// ack queues the acknowledgement of a drop applied; when the queue is
// full it is not sent, and its writer waits for the lease to end.
func (s *strictTier) ack(id string, seq uint64) {
	select {
	case s.acks <- ackTo{id, seq}:
	default:
	}
}

// onOwn handles a message on this Manager's own channel: a heartbeat
// back ("h" seq) or the acknowledgement of a drop ("a" seq, newline, the
// acknowledging Manager's id). Malformed ones are ignored.
func (s *strictTier) onOwn(payload string) {
	switch {
	case strings.HasPrefix(payload, "h"):
		if seq, err := strconv.ParseUint(payload[1:], 10, 64); err == nil {
			s.renewed(seq)
		}
	case strings.HasPrefix(payload, "a"):
		n, id, ok := strings.Cut(payload[1:], "\n")
		if seq, err := strconv.ParseUint(n, 10, 64); ok && err == nil && id != "" {
			s.acked(seq, id)
		}
	}
}

// splitSender splits the sender of a drop into the sending Manager's id
// and the drop's sequence number, 0 for a drop that asks for no
// acknowledgement (from a Manager not in strict mode).
func splitSender(sender string) (id string, seq uint64) {
	id, n, found := strings.Cut(sender, "/")
	if !found {
		return sender, 0
	}
	seq, err := strconv.ParseUint(n, 10, 64)
	if err != nil {
		return id, 0
	}
	return id, seq
}

// errNotStrict is logged, once, when a strict Manager receives a drop from
// one that is not.
var errNotStrict = errors.New("cache: a Manager of the fleet is not in strict mode (LocalOptions.Strict): its writes do not wait for the others' local copies to be dropped")
