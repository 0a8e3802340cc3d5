package cache

import (
	"context"
	"crypto/rand"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The lock benchmarks obtain and release an uncontended lock on a real
// redis-server, next to the raw go-redis way to do the same in the same run:
// a random token, SET key token NX PX, and an owner-checked DEL script run
// with EVALSHA. Each side makes two round trips per lock.

// benchLockTTL is not a whole number of seconds, so that go-redis sends the
// raw SET with PX.
const benchLockTTL = 2500 * time.Millisecond

// rawLockRelease is the owner-checked DEL of the raw baseline.
var rawLockRelease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// rawLock obtains and releases key as raw go-redis code would.
func rawLock(ctx context.Context, rdb redis.UniversalClient, key string) error {
	token := rand.Text()
	ok, err := rdb.SetNX(ctx, key, token, benchLockTTL).Result()
	switch {
	case err != nil:
		return err
	case !ok:
		return ErrNotObtained
	}
	n, err := rawLockRelease.Run(ctx, rdb, []string{key}, token).Int()
	switch {
	case err != nil:
		return err
	case n != 1:
		return ErrLockLost
	}
	return nil
}

// stockpotLock obtains and releases name with m.
func stockpotLock(ctx context.Context, m *Manager, name string) error {
	l, err := m.TryLock(ctx, name, benchLockTTL)
	if err != nil {
		return err
	}
	return l.Release(ctx)
}

func BenchmarkLock(b *testing.B) {
	_, rdb, m := benchSetup(b)
	ctx := context.Background()
	// Load the scripts, so that neither side pays for it while measured.
	if err := rawLock(ctx, rdb, "raw-lock"); err != nil {
		b.Fatal(err)
	}
	if err := stockpotLock(ctx, m, "oven"); err != nil {
		b.Fatal(err)
	}

	b.Run("raw-go-redis", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := rawLock(ctx, rdb, "raw-lock"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stockpot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := stockpotLock(ctx, m, "oven"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkLockParallel is BenchmarkLock from many goroutines at once, each
// on a lock of its own.
func BenchmarkLockParallel(b *testing.B) {
	_, rdb, m := benchSetup(b)
	ctx := context.Background()
	if err := rawLock(ctx, rdb, "raw-lock"); err != nil {
		b.Fatal(err)
	}
	if err := stockpotLock(ctx, m, "oven"); err != nil {
		b.Fatal(err)
	}

	var next atomic.Int64
	b.Run("raw-go-redis", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			key := "raw-lock:" + strconv.FormatInt(next.Add(1), 10)
			for pb.Next() {
				if err := rawLock(ctx, rdb, key); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("stockpot", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			name := "oven:" + strconv.FormatInt(next.Add(1), 10)
			for pb.Next() {
				if err := stockpotLock(ctx, m, name); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
