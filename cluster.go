package cache

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Slot migrations.
//
// While Redis Cluster migrates a hash slot from one master to another, a
// command on that slot may be refused without running: TRYAGAIN for a
// multi-key command whose keys are not all on one side yet (every
// cache command that takes an entry with its lease or generation, whenever
// one of them does not exist), and MOVED or ASK redirects that go-redis
// follows only MaxRedirects times. go-redis retries TRYAGAIN a few times
// over some tens of milliseconds, and in a pipeline only when it answers a
// node's first command; a migration takes as long as its slot's keys take
// to copy. So the Manager sends such commands again itself, after a growing
// pause, for up to slotRetryFor.

// slotRetryFor bounds how long a command refused because its slot is
// migrating is sent again before its error is returned.
const slotRetryFor = 5 * time.Second

// slotMoving reports whether err is Redis Cluster's refusal of a command
// whose slot is being migrated: the command did not run, and will once the
// migration moves on.
func slotMoving(err error) bool {
	if err == nil {
		return false
	}
	if redis.IsTryAgainError(err) {
		return true
	}
	if _, ok := redis.IsMovedError(err); ok {
		return true
	}
	_, ok := redis.IsAskError(err)
	return ok
}

// slotBackoff waits before the next attempt of a command refused because its
// slot is migrating, and reports whether to make one: false when ctx has
// ended or slotRetryFor has passed since start. *pause grows from 8ms to
// 256ms.
func slotBackoff(ctx context.Context, start time.Time, pause *time.Duration) bool {
	if *pause == 0 {
		*pause = 8 * time.Millisecond
	}
	if time.Since(start)+*pause > slotRetryFor {
		return false
	}
	if sleep(ctx, *pause) != nil {
		return false
	}
	*pause = min(2**pause, 256*time.Millisecond)
	return true
}

// pipelined is m.rdb.Pipelined, except that the commands refused because
// their slot is migrating are sent again (see slotBackoff) until they run.
// Those commands run after the others of the pipeline, so fn must not
// depend on the order of commands on different keys. The error is the
// first command's error, as Pipelined's.
func (m *Manager) pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error) {
	cmds, err := m.rdb.Pipelined(ctx, fn)
	start := time.Now()
	var pause time.Duration
	for err != nil {
		var again []redis.Cmder
		for _, c := range cmds {
			if slotMoving(c.Err()) {
				again = append(again, c)
			}
		}
		if len(again) == 0 || !slotBackoff(ctx, start, &pause) {
			break
		}
		_, _ = m.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, c := range again {
				_ = p.Process(ctx, c)
			}
			return nil
		})
		err = nil
		for _, c := range cmds {
			if err = c.Err(); err != nil {
				break
			}
		}
	}
	return cmds, err
}
