package cache

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockpot-go/cache/internal/testredis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBatchWaitsOnMoreSlotsThanSubscriptions: on a cluster, a batch waits
// on the leases of keys in more slots than a Manager keeps subscriptions
// for (maxNoteSubs). The keys it cannot be told of are polled: every key
// is loaded once, by the holder, and the waiter gets each value.
func TestBatchWaitsOnMoreSlotsThanSubscriptions(t *testing.T) {
	b := &testredis.Backend{Name: "cluster", Cluster: testredis.SharedCluster(t)}
	e := newEnv(t, b)
	holder, waiter := e.manager(nil), e.manager(nil)
	// Keys in distinct slots, more of them than subscriptions.
	var keys []string
	slots := map[int]bool{}
	for i := 0; len(keys) < maxNoteSubs+16; i++ {
		k := fmt.Sprintf("slot-key-%d", i)
		if s := slotOf("k:" + k); !slots[s] {
			slots[s] = true
			keys = append(keys, k)
		}
	}
	g := newGate()
	var loads atomic.Int64
	load := func(ctx context.Context, missing []string) (map[string]string, error) {
		loads.Add(int64(len(missing)))
		if err := g.pass(ctx); err != nil {
			return nil, err
		}
		out := make(map[string]string, len(missing))
		for _, k := range missing {
			out[k] = "v:" + k
		}
		return out, nil
	}
	ctx := t.Context()
	held := make(chan error, 1)
	go func() {
		_, err := GetOrLoadMany(ctx, holder, keys, load)
		held <- err
	}()
	g.reached(t, "the holder's batch load to start")
	got := make(chan map[string]string, 1)
	go func() {
		vals, err := GetOrLoadMany(ctx, waiter, keys, load)
		assert.NoError(t, err)
		got <- vals
	}()
	require.Eventually(t, func() bool { return waiter.Stats().ByName["keys"].LeaseWaits == uint64(len(keys)) },
		testredis.Timeout, time.Millisecond, "the waiter to wait on every key's lease")
	waiter.notes.mu.Lock()
	subs := len(waiter.notes.subs)
	waiter.notes.mu.Unlock()
	assert.Equal(t, maxNoteSubs, subs, "the waiter keeps at most maxNoteSubs subscriptions; the other keys are polled")
	g.open()
	require.NoError(t, testredis.Recv(t, held, "the holder's batch to return"))
	vals := testredis.Recv(t, got, "the waiter's batch to return")
	require.Len(t, vals, len(keys))
	for _, k := range keys {
		assert.Equal(t, "v:"+k, vals[k])
	}
	assert.EqualValues(t, len(keys), loads.Load(), "each key loaded once, by the holder")
}
