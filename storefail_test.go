package cache

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/scripts"
	"github.com/stockpot-go/cache/internal/testredis"
)

// oomStore is a hook that, once the store script has been refused for
// lack of memory, lifts the memory limit before the Manager sees the
// refusal: what the Manager does next runs with Redis healthy again.
type oomStore struct {
	admin   *redis.Client
	refused chan struct{}
}

func (h *oomStore) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *oomStore) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.check([]redis.Cmder{cmd})
		return err
	}
}
func (h *oomStore) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.check(cmds)
		return err
	}
}

func (h *oomStore) check(cmds []redis.Cmder) {
	for _, c := range cmds {
		args := c.Args()
		if len(args) > 1 && args[1] == scripts.StoreMany.Hash() && c.Err() != nil && strings.HasPrefix(c.Err().Error(), "OOM") {
			if err := h.admin.ConfigSet(context.Background(), "maxmemory", "0").Err(); err != nil {
				panic(err)
			}
			select {
			case h.refused <- struct{}{}:
			default:
			}
		}
	}
}

// TestFailedStoreReleasesLease: when Redis refuses a loaded value's store
// (out of memory here), the load gives its lease up, so that the next
// caller loads at once instead of waiting for the lease to expire.
func TestFailedStoreReleasesLease(t *testing.T) {
	srv := testredis.Start(t)
	admin := srv.Client(t)
	rdb := srv.Client(t)
	h := &oomStore{admin: admin, refused: make(chan struct{}, 1)}
	rdb.AddHook(h)
	m, err := New(rdb, &Options{Prefix: "test", LeaseTTL: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	ctx := t.Context()
	lease := m.keyLeaseRef("k").lease
	v, err := GetOrLoad(ctx, m, "k", func(ctx context.Context) (string, error) {
		// Redis is out of memory by the time the value is stored.
		if err := admin.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
			return "", err
		}
		return "v", nil
	})
	testredis.Recv(t, h.refused, "the store refused for lack of memory")
	require.NoError(t, err, "the loaded value is returned though it was not stored")
	assert.Equal(t, "v", v)
	require.Eventually(t, func() bool {
		n, err := admin.Exists(ctx, lease).Result()
		return err == nil && n == 0
	}, testredis.Timeout, 5*time.Millisecond, "the lease of the load whose store failed was not released")
}
