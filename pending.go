package cache

import (
	"context"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stockpot-go/cache/internal/envelope"
)

// Invalidations that fail.
//
// An Invalidate that Redis fails (it cannot be reached, or answers with an
// error) returns its error, and its targets wait here: every read of this
// Manager treats the entries they name as misses (lookup asks covers), and
// a goroutine of the Manager's retries them, with a growing pause, until
// Redis takes them. Invalidating again is always safe, so a retry of
// targets already done, or done in part, does no harm. A target that
// waits longer than the longest time to live this Manager has stored an
// entry with, and than Options.DefaultTTL, is given up: the entries it
// named have expired. At most
// maxPending targets wait; beyond that the oldest are given up. Pending
// targets end with Close.

// maxPending bounds the targets waiting to be retried.
const maxPending = 10_000

// Retry pauses: from the first to the last, doubling.
const (
	retryFirst = 50 * time.Millisecond
	retryLast  = 5 * time.Second
)

// pendingInvalidations are the targets of failed invalidations.
type pendingInvalidations struct {
	n         atomic.Int64 // len(targets), read on every lookup
	longest   atomic.Int64 // the longest time an entry was stored for, in ns; MaxInt64 for ever
	retried   atomic.Uint64
	abandoned atomic.Uint64

	mu      sync.Mutex // protects the fields below
	targets []pendingTarget
	next    uint64 // the id of the next target
	running bool   // a retry goroutine runs
}

// pendingTarget is one target waiting, as lookup matches it.
type pendingTarget struct {
	id    uint64
	t     Target
	kind  targetKind
	key   string // the entry's key, the hash, the start of the memo's keys, or the plain keys' prefix
	field string
	tag   string
	since time.Time
}

// stored records that an entry was stored to live for keep (0: for ever).
func (p *pendingInvalidations) stored(keep time.Duration) {
	d := int64(keep)
	if keep <= 0 {
		d = math.MaxInt64
	}
	for {
		cur := p.longest.Load()
		if d <= cur || p.longest.CompareAndSwap(cur, d) {
			return
		}
	}
}

// add keeps targets for retrying, and starts retrying them.
func (p *pendingInvalidations) add(m *Manager, targets []Target) {
	now := time.Now()
	p.mu.Lock()
	for _, t := range targets {
		pt := pendingTarget{id: p.next, t: t, kind: t.kind, since: now}
		p.next++
		switch t.kind {
		case targetKey:
			pt.key = m.entryKey(t.name)
		case targetField:
			pt.key, pt.field = t.key, t.field
		case targetHash, targetEntry, targetMemo:
			pt.key = t.key
		case targetTag:
			pt.tag = t.name
		case targetPrefix:
			pt.key = m.keyPrefix(t.name)
		}
		p.targets = append(p.targets, pt)
	}
	if over := len(p.targets) - maxPending; over > 0 {
		p.targets = append(p.targets[:0], p.targets[over:]...)
		p.abandoned.Add(uint64(over))
	}
	p.n.Store(int64(len(p.targets)))
	start := !p.running
	p.running = true
	p.mu.Unlock()
	if start && !m.goBackground(m.retryInvalidations) {
		p.mu.Lock()
		p.running = false
		p.mu.Unlock()
	}
}

// covers reports whether a pending target names the entry ref, stored with
// the tags section tags.
func (p *pendingInvalidations) covers(ref entryRef, tags []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.targets {
		switch t.kind {
		case targetKey, targetEntry:
			if ref.kind != refField && ref.key == t.key {
				return true
			}
		case targetField:
			if ref.kind == refField && ref.key == t.key && ref.field == t.field {
				return true
			}
		case targetHash:
			if ref.kind == refField && ref.key == t.key {
				return true
			}
		case targetMemo:
			if ref.kind == refMemo && strings.HasPrefix(ref.key, t.key) {
				return true
			}
		case targetPrefix:
			if ref.kind == refKey && strings.HasPrefix(ref.key, t.key) {
				return true
			}
		case targetTag:
			for rest := tags; len(rest) > 0; {
				name, _, r, ok := envelope.NextTag(rest)
				if !ok {
					break
				}
				if string(name) == t.tag {
					return true
				}
				rest = r
			}
		}
	}
	return false
}

// batch returns the targets to retry now, giving up those that waited
// longer than any entry lives; ok is false, and the retrying ends, when
// none is left.
func (p *pendingInvalidations) batch(now time.Time) (ids map[uint64]bool, targets []Target, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	longest := time.Duration(p.longest.Load()) // at least Options.DefaultTTL: see New
	kept := p.targets[:0]
	for _, t := range p.targets {
		if now.Sub(t.since) > longest {
			p.abandoned.Add(1)
			continue
		}
		kept = append(kept, t)
	}
	p.targets = kept
	p.n.Store(int64(len(kept)))
	if len(kept) == 0 {
		p.running = false
		return nil, nil, false
	}
	ids = make(map[uint64]bool, len(kept))
	targets = make([]Target, len(kept))
	for i, t := range kept {
		ids[t.id] = true
		targets[i] = t.t
	}
	return ids, targets, true
}

// done removes the targets ids, retried with success.
func (p *pendingInvalidations) done(ids map[uint64]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := p.targets[:0]
	for _, t := range p.targets {
		if !ids[t.id] {
			kept = append(kept, t)
		}
	}
	p.targets = kept
	p.n.Store(int64(len(kept)))
	p.retried.Add(uint64(len(ids)))
}

// retryInvalidations retries the pending targets until none is left or the
// Manager closes.
func (m *Manager) retryInvalidations() {
	p := &m.pending
	pause := retryFirst
	for {
		if sleep(m.life, pause) != nil {
			return
		}
		ids, targets, ok := p.batch(time.Now())
		if !ok {
			return
		}
		ctx, cancel := context.WithTimeout(m.life, retryLast)
		err := m.invalidate(ctx, targets)
		cancel()
		if err != nil {
			pause = min(2*pause, retryLast)
			m.log.Debug("cache: retrying an invalidation failed; trying again", "targets", len(targets), "err", err)
			continue
		}
		p.done(ids)
		pause = retryFirst
	}
}
