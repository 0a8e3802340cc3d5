package cache

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Waiting for another process's load.
//
// A load whose lease another process holds is told when that load ends,
// instead of polling the lease. The waiter subscribes to the channel of
// the lease's slot (one subscription per channel and Manager, kept while
// the Manager lives), then marks the lease as awaited with COPY lease →
// lease:w, which also says whether the lease is still held: a lease that
// ended before the mark is read at once. The store and release scripts
// see the mark (a copy of the lease as the waiter found it: their own
// token, or that of a holder whose lease an invalidation deleted) and
// publish the lease on the channel; the waiter then reads the entry once.
// An invalidation itself publishes nothing. A notice is
// only a hint: what is served is always read from Redis after it. A notice
// that is lost (a dropped subscription, a holder that died) is covered by
// a slow poll, every half of LeaseTTL, which marks the lease again: a lease
// whose holder died expires at most LeaseTTL after its last renewal, and
// the next poll takes it over.
//
// On a single node every lease's notices share one channel (PUBLISH); on a
// cluster each hash slot has its own channel, in that slot, for sharded
// pub/sub (SPUBLISH, Redis 7), so that a notice goes to the subscribers of
// that slot only. On other clients (a ring), or while a subscription
// cannot be made, waiters poll the lease as before.

// awaitedSuffix is the suffix, after a lease key, of its mark: a copy of
// the lease made by a process that waits for it.
const awaitedSuffix = ":w"

// maxNoteSubs bounds the subscriptions a Manager keeps on a cluster (one
// per slot waited on); an idle one is closed to make room for a new one,
// and waiters poll while all are in use.
const maxNoteSubs = 64

// noteReadyWait bounds the wait for a new subscription to be confirmed:
// past it, the waiter polls this time.
const noteReadyWait = time.Second

// errNoNotices is returned by watch when no subscription can be had now.
var errNoNotices = errors.New("cache: lease notices unavailable")

// notifier keeps a Manager's subscriptions to lease notices and the
// watches waiting on them.
type notifier struct {
	m       *Manager
	sharded bool   // a cluster: a channel per slot, SSUBSCRIBE and SPUBLISH
	pub     string // the publishing command, for the scripts
	one     string // the channel of every lease, on a single node

	mu      sync.Mutex
	subs    map[string]*noteSub             // by channel
	watches map[string]map[*leaseWatch]bool // by lease key
	broken  time.Time                       // no new subscription before then
}

// noteSub is one subscription to a channel of notices.
type noteSub struct {
	channel string
	ps      *redis.PubSub
	ready   chan struct{} // closed once the subscription is confirmed
	gone    chan struct{} // closed when it ends
	closed  bool          // ended, or being closed; under notifier.mu
	watched int           // watches using it; under notifier.mu
}

// leaseWatch is one waiter's watch of some leases.
type leaseWatch struct {
	leases  []string
	subs    []*noteSub
	partial bool          // some leases have no subscription: poll them
	c       chan struct{} // has a value when told is worth a look

	mu   sync.Mutex
	told map[string]bool // leases told of since the last take
	all  bool            // a subscription was lost: look at every lease
}

// newNotifier returns the notifier of m, or nil when its client is
// neither a single node's nor a cluster's.
func newNotifier(m *Manager) *notifier {
	n := &notifier{m: m, subs: make(map[string]*noteSub), watches: make(map[string]map[*leaseWatch]bool)}
	switch m.rdb.(type) {
	case *redis.Client:
		n.pub, n.one = "PUBLISH", m.prefix+"{leases}:ended"
	case *redis.ClusterClient:
		n.pub, n.sharded = "SPUBLISH", true
	default:
		return nil
	}
	return n
}

// channelOf returns the channel on which lease's notices are published:
// on a cluster, a channel in lease's slot.
func (n *notifier) channelOf(lease string) string {
	if n == nil {
		return ""
	}
	if !n.sharded {
		return n.one
	}
	return n.m.prefix + "{" + slotTags()[slotOf(hashTag(lease))] + "}:ended"
}

// publisher returns the command that publishes notices, for the scripts.
func (n *notifier) publisher() string {
	if n == nil {
		return ""
	}
	return n.pub
}

// slotTags returns, for each cluster hash slot, a short hash tag in that
// slot.
var slotTags = sync.OnceValue(func() []string {
	tags := make([]string, 16384)
	for i, left := 0, len(tags); left > 0; i++ {
		t := strconv.FormatUint(uint64(i), 36)
		if s := slotOf(t); tags[s] == "" {
			tags[s] = t
			left--
		}
	}
	return tags
})

// watch subscribes to the channels of leases (waiting until each
// subscription is confirmed) and returns a watch told of their notices,
// to be ended with unwatch. A watch some of whose leases have no
// subscription (too many slots, or one not confirmed in time) is partial:
// its waiter polls. It returns errNoNotices when no subscription can be
// had now, and ctx's error when ctx ends first.
func (n *notifier) watch(ctx context.Context, leases []string) (*leaseWatch, error) {
	if n == nil {
		return nil, errNoNotices
	}
	w := &leaseWatch{leases: leases, c: make(chan struct{}, 1), told: make(map[string]bool)}
	n.mu.Lock()
	for _, l := range leases {
		ch := n.channelOf(l)
		s := n.subs[ch]
		if s == nil {
			var err error
			if s, err = n.subscribe(ch); err != nil {
				w.partial = true // this lease is polled
				continue
			}
		}
		if !containsSub(w.subs, s) {
			w.subs = append(w.subs, s)
			s.watched++
		}
		ws := n.watches[l]
		if ws == nil {
			ws = make(map[*leaseWatch]bool)
			n.watches[l] = ws
		}
		ws[w] = true
	}
	n.mu.Unlock()
	if len(w.subs) == 0 {
		n.unwatch(w)
		return nil, errNoNotices
	}
	t := time.NewTimer(noteReadyWait)
	defer t.Stop()
	expired := false
	for _, s := range w.subs {
		if expired {
			select {
			case <-s.ready:
			default:
				w.partial = true
			}
			continue
		}
		select {
		case <-s.ready:
		case <-s.gone:
			w.partial = true
		case <-ctx.Done():
			n.unwatch(w)
			return nil, ctx.Err()
		case <-t.C:
			expired, w.partial = true, true
		}
	}
	return w, nil
}

func containsSub(subs []*noteSub, s *noteSub) bool {
	for _, x := range subs {
		if x == s {
			return true
		}
	}
	return false
}

// subscribe starts the subscription to ch; n.mu is held.
func (n *notifier) subscribe(ch string) (*noteSub, error) {
	m := n.m
	if time.Now().Before(n.broken) {
		return nil, errNoNotices
	}
	if n.sharded && len(n.subs) >= maxNoteSubs {
		var idle *noteSub
		for _, s := range n.subs {
			if s.watched == 0 {
				idle = s
				break
			}
		}
		if idle == nil {
			return nil, errNoNotices
		}
		n.closeSub(idle)
	}
	s := &noteSub{channel: ch, ready: make(chan struct{}), gone: make(chan struct{})}
	if n.sharded {
		s.ps = m.rdb.SSubscribe(m.life, ch)
	} else {
		s.ps = m.rdb.Subscribe(m.life, ch)
	}
	if !m.goBackground(func() { n.receive(s) }) {
		_ = s.ps.Close()
		return nil, ErrClosed
	}
	n.subs[ch] = s
	return s, nil
}

// closeSub ends s; n.mu is held.
func (n *notifier) closeSub(s *noteSub) {
	if s.closed {
		return
	}
	s.closed = true
	close(s.gone)
	if n.subs[s.channel] == s {
		delete(n.subs, s.channel)
	}
	_ = s.ps.Close()
}

// unwatch ends w.
func (n *notifier) unwatch(w *leaseWatch) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, l := range w.leases {
		if ws := n.watches[l]; ws != nil {
			delete(ws, w)
			if len(ws) == 0 {
				delete(n.watches, l)
			}
		}
	}
	for _, s := range w.subs {
		s.watched--
	}
	w.subs = nil
}

// receive takes s's messages until s is closed, fails or the Manager
// closes. A subscription that fails or is ended by the server (its slot
// moved) is dropped, and every watch on it is told to look at all its
// leases: notices may have been lost.
func (n *notifier) receive(s *noteSub) {
	m := n.m
	stop := context.AfterFunc(m.life, func() { _ = s.ps.Close() })
	defer stop()
	for {
		msg, err := s.ps.Receive(m.life)
		if err == nil {
			switch x := msg.(type) {
			case *redis.Subscription:
				switch x.Kind {
				case "subscribe", "ssubscribe":
					n.mu.Lock()
					select {
					case <-s.ready:
					default:
						close(s.ready)
					}
					n.mu.Unlock()
					continue
				}
				err = errors.New("cache: lease notices: " + x.Kind + " " + x.Channel)
			case *redis.Message:
				n.tell(decodeLeases(x.Payload))
				continue
			default:
				continue
			}
		}
		n.mu.Lock()
		wasClosed := s.closed
		n.closeSub(s)
		if !wasClosed && m.life.Err() == nil {
			// Not a new subscription for a while: the server may refuse
			// them (a proxy without pub/sub), or be down.
			n.broken = time.Now().Add(time.Second)
			m.log.Debug("cache: lease notices lost; waiters poll", "channel", s.channel, "err", err)
		}
		n.tellAllLocked(s)
		n.mu.Unlock()
		return
	}
}

// renew ends every subscription (the watches on them are told to look at
// all their leases); the next watches make them anew. See failover.go.
func (n *notifier) renew() {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, s := range n.subs {
		n.closeSub(s)
		n.tellAllLocked(s)
	}
}

// tell wakes the watches of leases.
func (n *notifier) tell(leases []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, l := range leases {
		for w := range n.watches[l] {
			w.mu.Lock()
			w.told[l] = true
			w.mu.Unlock()
			w.wake()
		}
	}
}

// tellAllLocked wakes every watch on s, to look at all its leases.
func (n *notifier) tellAllLocked(s *noteSub) {
	for _, ws := range n.watches {
		for w := range ws {
			if containsSub(w.subs, s) {
				w.mu.Lock()
				w.all = true
				w.mu.Unlock()
				w.wake()
			}
		}
	}
}

func (w *leaseWatch) wake() {
	select {
	case w.c <- struct{}{}:
	default:
	}
}

// take returns which of leases were told of since the last take (all of
// them after a lost subscription), and forgets them.
func (w *leaseWatch) take(leases []string) []bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]bool, len(leases))
	for i, l := range leases {
		out[i] = w.all || w.told[l]
		delete(w.told, l)
	}
	w.all = false
	return out
}

// decodeLeases parses a notice: lease keys, each as its length, ':' and
// the key. A malformed rest is ignored.
func decodeLeases(msg string) []string {
	var out []string
	for msg != "" {
		i := strings.IndexByte(msg, ':')
		if i <= 0 {
			return out
		}
		n, err := strconv.Atoi(msg[:i])
		if err != nil || n < 0 || n > len(msg)-i-1 {
			return out
		}
		out = append(out, msg[i+1:i+1+n])
		msg = msg[i+1+n:]
	}
	return out
}
