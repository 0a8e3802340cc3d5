package cache

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Following a Sentinel failover with the subscriptions.
//
// go-redis's failover client (redis.NewFailoverClient) moves its command
// connections to the new master as soon as Sentinel announces a switch,
// but not its pub/sub connections: they stay on the old master until
// Sentinel demotes it and closes its clients, which a sentinel does when it
// next looks at it, up to 10s after the switch of a planned failover. The
// messages published on the new master meanwhile (local-tier
// invalidations, lease notices) do not reach those subscriptions, which
// still look up. So on a failover client a Manager watches which server
// its commands go to (INFO server's run_id, every masterWatchEvery), and
// when that changes, ends its subscriptions, to be made anew on the new
// master: the local tier drops every copy once subscribed again, as after
// any lost subscription, and lease waiters look at their leases. A message
// published between the switch and the renewal is lost all the same; the
// renewal makes that window masterWatchEvery long instead of Sentinel's.
// Other clients need none of this: a server that restarts or a cluster
// node that fails closes its subscriptions itself.

// masterWatchEvery is how often a Manager on a failover client asks which
// server its commands go to.
const masterWatchEvery = 500 * time.Millisecond

// failoverClient reports whether rdb is go-redis's Sentinel failover client
// (it names its address so).
func failoverClient(rdb redis.UniversalClient) bool {
	c, ok := rdb.(*redis.Client)
	return ok && c.Options().Addr == "FailoverClient"
}

// watchMaster renews the Manager's subscriptions whenever the server its
// commands go to changes, until Close.
func (m *Manager) watchMaster() {
	tick := time.NewTicker(masterWatchEvery)
	defer tick.Stop()
	var last string
	for {
		select {
		case <-m.life.Done():
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(m.life, masterWatchEvery)
		cmd := redis.NewStringCmd(ctx, "info", "server")
		err := m.do(ctx, m.kv, cmd)
		cancel()
		if err != nil {
			continue
		}
		id := runID(cmd.Val())
		if id == "" || id == last {
			continue
		}
		if last != "" {
			m.log.Debug("cache: the master changed; subscribing again", "run_id", id)
			if m.local != nil {
				m.local.renewSub()
			}
			m.notes.renew()
		}
		last = id
	}
}

// runID returns the run_id of an INFO server reply, or "".
func runID(info string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "run_id:"); ok {
			return v
		}
	}
	return ""
}
