package cache

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/scripts"
)

// The Redis-call path.
//
// Every command the Manager sends goes through this file: do for one
// command, pipe for a pipeline, eval for a script, and node.do for the work
// planned per master (see forEachMaster in cluster.go). Here, and only here,
// a command refused because its cluster slot is migrating is sent again
// (see slotBackoff), and a call that failed is counted, once, as
// EventRedisError on the counters of the name it served. A reply that means
// "no value" (redis.Nil) is not a failure, and neither is a call whose
// caller's context ended.

// do sends cmd and returns its error.
func (m *Manager) do(ctx context.Context, st *counters, cmd redis.Cmder) error {
	return m.doOn(ctx, m.rdb, st, cmd)
}

// doOn sends cmd on the client c: m.rdb, or one node of it.
func (m *Manager) doOn(ctx context.Context, c redis.UniversalClient, st *counters, cmd redis.Cmder) error {
	err := send(ctx, c, cmd)
	m.count(ctx, st, err)
	return err
}

// send sends cmd on c, and again while its slot is migrating.
func send(ctx context.Context, c redis.UniversalClient, cmd redis.Cmder) error {
	err := c.Process(ctx, cmd)
	if slotMoving(err) {
		start := time.Now()
		var pause time.Duration
		for slotMoving(err) && slotBackoff(ctx, start, &pause) {
			err = c.Process(ctx, cmd)
		}
	}
	return err
}

// count counts err, the final error of a call made for st, when it is a
// failure.
func (m *Manager) count(ctx context.Context, st *counters, err error) {
	if err != nil && !errors.Is(err, redis.Nil) && ctx.Err() == nil {
		st.add(EventRedisError, 1)
	}
}

// pipe sends the commands fn queues as one pipeline (one per node on a
// cluster) and returns them with the first error that is not redis.Nil.
// The commands refused because their slot is migrating are sent again
// until they run, after the others: fn must not depend on the order of
// commands on different keys.
func (m *Manager) pipe(ctx context.Context, st *counters, fn func(redis.Pipeliner)) ([]redis.Cmder, error) {
	cmds, err := m.sendPipe(ctx, fn)
	m.count(ctx, st, err)
	return cmds, err
}

// sendPipe is pipe without the counting.
func (m *Manager) sendPipe(ctx context.Context, fn func(redis.Pipeliner)) ([]redis.Cmder, error) {
	cmds, _ := m.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		fn(p)
		return nil
	})
	err := firstErr(cmds)
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
		err = firstErr(cmds)
	}
	return cmds, err
}

// firstErr returns the first error of cmds that is a failure: not
// redis.Nil, nor the "no such key" of a RENAME of a missing key.
func firstErr(cmds []redis.Cmder) error {
	for _, c := range cmds {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) && !isNoSuchKey(err) {
			return err
		}
	}
	return nil
}

func isNoSuchKey(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such key")
}

// eval runs the script s with EVALSHA, and with EVAL when the server does
// not have it yet.
func (m *Manager) eval(ctx context.Context, st *counters, s *scripts.Script, keys []string, args ...any) *redis.Cmd {
	cmd := redis.NewCmd(ctx, scriptArgs("evalsha", s.Hash(), keys, args)...)
	err := send(ctx, m.rdb, cmd)
	if redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmd = redis.NewCmd(ctx, scriptArgs("eval", s.Src, keys, args)...)
		err = send(ctx, m.rdb, cmd)
	}
	m.count(ctx, st, err)
	return cmd
}

// scriptCall is one call of a script in evalMany.
type scriptCall struct {
	keys []string
	args []any
}

// evalMany runs s once per call, in one pipeline, and returns the replies
// in the order of calls; the calls the server answers NOSCRIPT are sent
// again with EVAL, in a second one.
func (m *Manager) evalMany(ctx context.Context, st *counters, s *scripts.Script, calls []scriptCall) ([]*redis.Cmd, error) {
	out := make([]*redis.Cmd, len(calls))
	_, err := m.sendPipe(ctx, func(p redis.Pipeliner) {
		for i, c := range calls {
			out[i] = redis.NewCmd(ctx, scriptArgs("evalsha", s.Hash(), c.keys, c.args)...)
			_ = p.Process(ctx, out[i])
		}
	})
	var again []int
	for i, c := range out {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		_, err = m.sendPipe(ctx, func(p redis.Pipeliner) {
			for _, i := range again {
				c := calls[i]
				out[i] = redis.NewCmd(ctx, scriptArgs("eval", s.Src, c.keys, c.args)...)
				_ = p.Process(ctx, out[i])
			}
		})
		if err == nil {
			err = firstCmdErr(out)
		}
	}
	m.count(ctx, st, err)
	return out, err
}

// firstCmdErr is firstErr for script replies.
func firstCmdErr(cmds []*redis.Cmd) error {
	for _, c := range cmds {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
	}
	return nil
}

// scriptArgs returns the arguments of an EVAL or EVALSHA command.
func scriptArgs(verb, script string, keys []string, args []any) []any {
	a := make([]any, 0, 3+len(keys)+len(args))
	a = append(a, verb, script, len(keys))
	for _, k := range keys {
		a = append(a, k)
	}
	return append(a, args...)
}
