package cache

import (
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// TestLocalTierClusterAcrossMasters: on a cluster, the local tier's
// invalidation messages reach Managers subscribed on another master than
// the one the message is published on. A Manager subscribes on the master
// of the channel's slot, but go-redis sends PUBLISH, which names no key, to
// any master (round robin); the cluster bus carries each PUBLISH to every
// node, so every message reaches every subscriber all the same. The test
// also moves the channel's slot after A and B subscribed, so that C, which
// subscribes after the move, is on another master than they are (Redis
// keeps plain subscriptions across slot moves), and checks messages in
// every direction. It measures how long a message takes to arrive.
func TestLocalTierClusterAcrossMasters(t *testing.T) {
	c := testredis.StartCluster(t)
	be := &testredis.Backend{Name: "cluster", Cluster: c}
	e := newEnv(t, be)
	opts := &Options{Local: &LocalOptions{TTL: time.Minute}}
	a, b := e.manager(opts), e.manager(opts) // subscribed
	nodes := masters(t, be)
	ch := a.local.channel
	slot := slotOf(hashTag(ch))
	from := c.SlotOwner(t, slot)
	to := (from + 1) % len(nodes)
	require.Equal(t, []int64{2, 0}, []int64{numSub(t, nodes[from], ch), numSub(t, nodes[to], ch)},
		"A's and B's subscriptions, on the master of the channel's slot")

	before := publishesOn(t, nodes)
	localInvalidatedEverywhere(t, a, b, "0")
	took := deliveries(t, a, b, 60)
	sent := publishesOn(t, nodes)
	elsewhere := 0
	for i := range nodes {
		if i != from {
			elsewhere += sent[i] - before[i]
		}
	}
	t.Logf("PUBLISHes per master (the subscribers are on master %d): %v", from, diff(sent, before))
	assert.Positive(t, elsewhere, "messages published on a master with no subscriber, and received")

	c.MoveSlot(t, slot, to)
	cm := e.manager(opts)
	require.Equal(t, []int64{2, 1}, []int64{numSub(t, nodes[from], ch), numSub(t, nodes[to], ch)},
		"A and B still subscribed on the slot's old master, C on its new one")
	localInvalidatedEverywhere(t, cm, b, "1")
	localInvalidatedEverywhere(t, b, cm, "2")
	localInvalidatedEverywhere(t, cm, a, "3")
	across := deliveries(t, cm, b, 60)
	t.Logf("from the call of Invalidate until the other Manager has the message: median %v, 90th percentile %v (subscribers on one master); median %v, 90th percentile %v (on two)",
		took[len(took)/2], took[len(took)*9/10], across[len(across)/2], across[len(across)*9/10])
	for _, m := range []*Manager{a, b, cm} {
		assert.Zero(t, m.Stats().Local.Resubscriptions, "subscriptions stayed up across the slot move")
	}
}

// numSub returns how many clients subscribe to ch on the node n (PUBSUB
// NUMSUB counts a node's own subscribers only).
func numSub(t *testing.T, n *redis.Client, ch string) int64 {
	t.Helper()
	got, err := n.PubSubNumSub(t.Context(), ch).Result()
	require.NoError(t, err)
	return got[ch]
}

// publishesOn returns how many PUBLISH and SPUBLISH calls each node ran
// (see publishes).
func publishesOn(t *testing.T, nodes []*redis.Client) []int {
	t.Helper()
	out := make([]int, len(nodes))
	for i, n := range nodes {
		out[i] = int(publishes(t, []*redis.Client{n}))
	}
	return out
}

func diff(after, before []int) []int {
	out := make([]int, len(after))
	for i := range after {
		out[i] = after[i] - before[i]
	}
	return out
}

// deliveries measures n invalidation messages from pub to sub: the time
// from the call of pub's Invalidate (whose Redis work comes first, then the
// message) until sub has received the message, sorted. A message that does
// not arrive within testredis.Timeout fails t.
func deliveries(t *testing.T, pub, sub *Manager, n int) []time.Duration {
	t.Helper()
	out := make([]time.Duration, 0, n)
	for i := range n {
		before := sub.local.received.Load()
		start := time.Now()
		require.NoError(t, pub.Invalidate(t.Context(), Key("delivery"+strconv.Itoa(i))))
		deadline := start.Add(testredis.Timeout)
		for sub.local.received.Load() == before {
			if time.Now().After(deadline) {
				t.Fatalf("message %d was not received within %v", i, testredis.Timeout)
			}
			time.Sleep(20 * time.Microsecond)
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out
}
