package cache_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// What the tests of package cache_test know of the cache's Redis keys. It is
// kept here, and only here, so that a change of key layout changes this
// file alone; the tests go through the public API for everything else.
//
// Beside its entries, the cache keeps bookkeeping keys: generations,
// versions, leases, tag sets. Each carries in its name the name of the memo,
// hash or tag it keeps books for. Eviction may take any of them, so a test
// simulates it by deleting them with the raw client: that is all eviction
// does.

// bookkeepingKeys returns, sorted, the keys on rdb's backend (every master
// of a cluster) whose names contain name, a memo's, hash's or tag's name,
// other than entries: Redis hashes (a Hash's fields live in one) and the
// keys listed in entries (Memo.Key names a memo entry's key). Choose names
// that no other key of the test contains.
func bookkeepingKeys(t testing.TB, rdb redis.UniversalClient, name string, entries ...string) []string {
	t.Helper()
	keys, err := listBookkeepingKeys(t.Context(), rdb, name, entries...)
	require.NoError(t, err, "listing the bookkeeping keys of %q", name)
	return keys
}

// listBookkeepingKeys is bookkeepingKeys returning the error instead of
// failing a test with it, for a condition polled by require.Eventually,
// which runs on a goroutine of its own where require must not be called.
func listBookkeepingKeys(ctx context.Context, rdb redis.UniversalClient, name string, entries ...string) ([]string, error) {
	pattern := "*" + globEscape(name) + "*"
	var mu sync.Mutex // protects keys
	var keys []string
	scan := func(ctx context.Context, node redis.UniversalClient) error {
		iter := node.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			k := iter.Val()
			if slices.Contains(entries, k) {
				continue
			}
			typ, err := node.Type(ctx, k).Result()
			if err != nil {
				return err
			}
			if typ == "hash" || typ == "none" {
				continue
			}
			mu.Lock()
			keys = append(keys, k)
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	if c, ok := rdb.(*redis.ClusterClient); ok {
		err = c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return scan(ctx, n) })
	} else {
		err = scan(ctx, rdb)
	}
	if err != nil {
		return nil, err
	}
	slices.Sort(keys)
	return keys, nil
}

// evict deletes keys with the raw client, one command each (so that keys of
// several cluster slots may be given), as eviction would.
func evict(t testing.TB, rdb redis.UniversalClient, keys ...string) {
	t.Helper()
	t.Logf("evicting %q", keys)
	for _, k := range keys {
		require.NoError(t, rdb.Del(t.Context(), k).Err(), "evicting %q", k)
	}
}

// globEscape escapes the characters SCAN's patterns give a meaning.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\^`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
