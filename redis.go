package cache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/scripts"
)

// The Redis-call path.
//
// Every command the Manager sends goes through this file (but for the local
// tier's subscription, see local.go): do for one command, pipe for a
// pipeline, eval for a script, evalMany for many calls of a script in one
// pipeline, and node.do and node.pipe for the work planned per master (see
// forEachMaster in cluster.go). Here, and only
// here, a call
//
//   - passes the circuit breaker of the node it goes to (resilience.go),
//   - returns by its deadline: its caller's, or the end of its time budget
//     (budget.go), running on a pooled worker goroutine when go-redis would
//     not end it in time (exchange),
//   - is sent again while its cluster slot is migrating (slotBackoff, in
//     cluster.go),
//   - and, when it failed, is counted, once, as EventRedisError on the
//     counters of the name it served.
//
// A reply that means "no value" (redis.Nil) is not a failure, and neither
// is a call whose caller's context ended.
//
// The commands of a call cut short at its deadline are still being
// written by the goroutine that sends them: after an error, callers do not
// read the commands they queued (eval and evalMany return new commands
// holding the error).

// do sends cmd and returns its error.
func (m *Manager) do(ctx context.Context, st *counters, cmd redis.Cmder) error {
	return m.doOn(ctx, m.rdb, "", st, cmd)
}

// doOn sends cmd on the client c: m.rdb, or the node at addr.
func (m *Manager) doOn(ctx context.Context, c redis.UniversalClient, addr string, st *counters, cmd redis.Cmder) error {
	_, err := m.send(ctx, c, addr, cmd)
	m.count(ctx, st, err)
	return err
}

// send sends cmd on c (m.rdb, or the node at addr), and again while its
// slot is migrating. cut is as for exchange.
func (m *Manager) send(ctx context.Context, c redis.UniversalClient, addr string, cmd redis.Cmder) (cut bool, err error) {
	cl := call{c: c, addr: addr, cmd: cmd}
	cut, err = m.exchange(ctx, cl)
	if slotMoving(err) {
		start := time.Now()
		var pause time.Duration
		for slotMoving(err) && slotBackoff(ctx, start, &pause) {
			cut, err = m.exchange(ctx, cl)
		}
	}
	return cut, err
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
	return m.pipeOn(ctx, m.rdb, "", st, fn)
}

// pipeOn is pipe on the client c: m.rdb, or the node at addr.
func (m *Manager) pipeOn(ctx context.Context, c redis.UniversalClient, addr string, st *counters, fn func(redis.Pipeliner)) ([]redis.Cmder, error) {
	cmds, _, err := m.sendPipe(ctx, c, addr, fn)
	m.count(ctx, st, err)
	return cmds, err
}

// sendPipe is pipeOn without the counting. cut is as for exchange.
func (m *Manager) sendPipe(ctx context.Context, c redis.UniversalClient, addr string, fn func(redis.Pipeliner)) (cmds []redis.Cmder, cut bool, err error) {
	p := c.Pipeline()
	fn(p)
	cmds = p.Cmds()
	cut, err = m.exchange(ctx, call{c: c, addr: addr, pipe: p, cmds: cmds})
	if !cut {
		err = firstErr(cmds)
	}
	start := time.Now()
	var pause time.Duration
	for err != nil && !cut {
		var again []redis.Cmder
		for _, cmd := range cmds {
			if slotMoving(cmd.Err()) {
				again = append(again, cmd)
			}
		}
		if len(again) == 0 || !slotBackoff(ctx, start, &pause) {
			break
		}
		p := c.Pipeline()
		for _, cmd := range again {
			_ = p.Process(ctx, cmd)
		}
		if cut, err = m.exchange(ctx, call{c: c, addr: addr, pipe: p, cmds: again}); !cut {
			err = firstErr(cmds)
		}
	}
	return cmds, cut, err
}

// firstErr returns the first error of cmds that is a failure: not
// redis.Nil.
func firstErr[C redis.Cmder](cmds []C) error {
	for _, c := range cmds {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
	}
	return nil
}

// eval runs the script s with EVALSHA, and with EVAL when the server does
// not have it (then it loads every script again, in the background: the
// server restarted or failed over).
func (m *Manager) eval(ctx context.Context, st *counters, s *scripts.Script, keys []string, args ...any) *redis.Cmd {
	cmd := redis.NewCmd(ctx, scriptArgs("evalsha", s.Hash(), keys, args)...)
	cut, err := m.send(ctx, m.rdb, "", cmd)
	if redis.HasErrorPrefix(err, "NOSCRIPT") {
		m.loadScriptsLater()
		cmd = redis.NewCmd(ctx, scriptArgs("eval", s.Src, keys, args)...)
		cut, err = m.send(ctx, m.rdb, "", cmd)
	}
	m.count(ctx, st, err)
	if cut {
		cmd = redis.NewCmd(ctx) // the first may still be being written
		cmd.SetErr(err)
	}
	return cmd
}

// scriptCall is one call of a script in evalMany.
type scriptCall struct {
	keys []string
	args []any
}

// evalMany runs s once per call, in one pipeline, and returns the replies
// in the order of calls; the calls the server answers NOSCRIPT are sent
// again with EVAL, in a second one (and every script is loaded again, in
// the background). When the pipeline was cut short at its deadline, every
// reply holds its error.
func (m *Manager) evalMany(ctx context.Context, st *counters, s *scripts.Script, calls []scriptCall) ([]*redis.Cmd, error) {
	out := make([]*redis.Cmd, len(calls))
	_, cut, err := m.sendPipe(ctx, m.rdb, "", func(p redis.Pipeliner) {
		for i, c := range calls {
			out[i] = redis.NewCmd(ctx, scriptArgs("evalsha", s.Hash(), c.keys, c.args)...)
			_ = p.Process(ctx, out[i])
		}
	})
	var again []int
	if !cut {
		for i, c := range out {
			if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				again = append(again, i)
			}
		}
	}
	if len(again) > 0 {
		m.loadScriptsLater()
		_, cut, err = m.sendPipe(ctx, m.rdb, "", func(p redis.Pipeliner) {
			for _, i := range again {
				c := calls[i]
				out[i] = redis.NewCmd(ctx, scriptArgs("eval", s.Src, c.keys, c.args)...)
				_ = p.Process(ctx, out[i])
			}
		})
		if err == nil {
			err = firstErr(out)
		}
	}
	m.count(ctx, st, err)
	if cut {
		for i := range out {
			out[i] = redis.NewCmd(ctx) // the first may still be being written
			out[i].SetErr(err)
		}
	}
	return out, err
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

// loadScripts loads every script on every master (SCRIPT LOAD), so that a
// load's first EVALSHA of each finds it instead of paying a NOSCRIPT reply
// and an EVAL. New starts it in the background, and eval again when a
// server answers NOSCRIPT.
func (m *Manager) loadScripts(ctx context.Context) error {
	return m.forEachMaster(ctx, func(ctx context.Context, n node) error {
		_, err := n.pipe(ctx, m.kv, func(p redis.Pipeliner) {
			for _, s := range scripts.All {
				p.ScriptLoad(ctx, s.Src)
			}
		})
		return err
	})
}

// loadScriptsLater loads the scripts in the background, unless that is
// under way.
func (m *Manager) loadScriptsLater() {
	if !m.scriptsLoading.CompareAndSwap(false, true) {
		return
	}
	if !m.goBackground(func() {
		defer m.scriptsLoading.Store(false)
		if err := m.loadScripts(m.life); err != nil && m.life.Err() == nil {
			m.log.Debug("cache: loading the scripts failed; they are sent whole until they are loaded", "err", err)
		}
	}) {
		m.scriptsLoading.Store(false)
	}
}

// call is one Redis call: a command, or a pipeline of commands, on a
// client.
type call struct {
	c    redis.UniversalClient // m.rdb, or one node of it
	addr string                // the node's address when c is one master of a cluster, else ""
	cmd  redis.Cmder           // the command; nil for a pipeline
	pipe redis.Pipeliner       // the pipeline
	cmds []redis.Cmder         // the pipeline's commands (Exec empties its queue)
}

// run sends the call.
func (cl *call) run(ctx context.Context) error {
	if cl.pipe != nil {
		_, err := cl.pipe.Exec(ctx)
		return err
	}
	return cl.c.Process(ctx, cl.cmd)
}

// exchange makes the call through the breaker of the node it goes to, and
// returns by its deadline (see budget.go). cut reports that the call was
// not made, or that its caller stopped waiting for it: then err says why,
// and the commands must not be read. Otherwise err is the call's error,
// wrapped to match ErrUnavailable when Redis could not be reached.
func (m *Manager) exchange(ctx context.Context, cl call) (cut bool, err error) {
	if ctx.Err() != nil {
		return true, callerGone(ctx)
	}
	if m.cluster != nil {
		defer func() {
			if err != nil && ctx.Err() == nil && unreachable(err) {
				m.reloadSlots(ctx)
			}
		}()
	}
	now := time.Now()
	budgetEnd := m.budgetEnd(ctx, now)
	if !budgetEnd.IsZero() && !now.Before(budgetEnd) {
		return true, errBudget
	}
	tk, err := m.admit(ctx, &cl)
	if err != nil {
		return true, err
	}
	end := budgetEnd
	callerEnd, ok := ctx.Deadline()
	byCaller := ok && (end.IsZero() || callerEnd.Before(end))
	if byCaller {
		end = callerEnd
	}
	switch {
	case end.IsZero() || (m.bound > 0 && end.Sub(now) >= m.bound):
		// go-redis ends the call in time by itself.
		err = cl.run(ctx)
	case m.ctxTimeouts:
		rctx := ctx
		if !byCaller {
			var cancel context.CancelFunc
			rctx, cancel = context.WithDeadline(ctx, end)
			defer cancel()
		}
		err = cl.run(rctx)
		switch {
		case err == nil:
		case ctx.Err() != nil:
			tk.fail(ctx.Err())
			return true, callerGone(ctx)
		case rctx.Err() != nil:
			if tk.many != nil {
				tk.judge(err, cl.cmds) // the commands say which node was late
			} else {
				tk.fail(errBudget)
			}
			return true, errBudget
		}
	default:
		var done bool
		if err, done = m.runBy(ctx, cl, tk, end, budgetEnd, byCaller); !done {
			return true, err
		}
	}
	tk.judge(err, cl.cmds)
	if m.cluster != nil && cl.c == m.rdb && !m.slotsKnown.Load() && !unreachable(err) {
		m.slotsKnown.Store(true) // go-redis has loaded the cluster's slots
	}
	return false, markUnavailable(err, &cl)
}

// markUnavailable makes err, and the errors of the call's commands, match
// ErrUnavailable when they mean Redis could not be reached.
func markUnavailable(err error, cl *call) error {
	if err == nil {
		return nil
	}
	w := unavailable(err)
	if cl.pipe == nil {
		if w != err && cl.cmd.Err() == err {
			cl.cmd.SetErr(w)
		}
		return w
	}
	for _, c := range cl.cmds {
		if ce := c.Err(); ce != nil && unreachable(ce) {
			c.SetErr(unavailable(ce))
		}
	}
	return w
}

// admit lets a call through the breakers of the nodes it goes to: on a
// cluster, the masters of the keys of its commands.
func (m *Manager) admit(ctx context.Context, cl *call) (tickets, error) {
	var tk tickets
	if m.breakers == nil {
		return tk, nil
	}
	if cl.pipe == nil || m.breakers.one != nil || cl.addr != "" {
		b := m.breakerFor(ctx, cl.addr, cl.cmd)
		t, err := b.allow()
		if err != nil {
			return tk, err
		}
		tk.one = t
		return tk, nil
	}
	// A pipeline on a cluster: one ticket per master it goes to.
	tk.route = make([]int, len(cl.cmds))
	for i, c := range cl.cmds {
		b := m.breakerFor(ctx, "", c)
		j := 0
		for j < len(tk.many) && tk.many[j].b != b {
			j++
		}
		if j == len(tk.many) {
			t, err := b.allow()
			if err != nil {
				tk.fail(errNotSent)
				return tickets{}, err
			}
			tk.many = append(tk.many, t)
		}
		tk.route[i] = j
	}
	if len(tk.many) == 1 {
		tk.one, tk.many, tk.route = tk.many[0], nil, nil
	}
	return tk, nil
}

// tickets are the breakers' tickets of one call: one, or on a cluster one
// per master a pipeline goes to, with the ticket of each of its commands.
type tickets struct {
	one   ticket
	many  []ticket
	route []int // per command of the pipeline: its ticket in many
}

// fail tells each breaker of the call that it failed with err (errBudget,
// or its caller's error, which no command of the call says).
func (tk *tickets) fail(err error) {
	tk.one.record(err)
	for _, t := range tk.many {
		t.record(err)
	}
}

// judge tells the breakers how a call that got its reply went: err for a
// command (cmds nil); for a pipeline, the first of its commands' errors
// that means Redis could not be reached, on each node it went to.
func (tk *tickets) judge(err error, cmds []redis.Cmder) {
	if tk.many == nil {
		if cmds != nil && !unreachable(err) {
			err = nil
			for _, c := range cmds {
				if unreachable(c.Err()) {
					err = c.Err()
					break
				}
			}
		}
		tk.one.record(err)
		return
	}
	errs := make([]error, len(tk.many))
	for i, c := range cmds {
		if j := tk.route[i]; errs[j] == nil && unreachable(c.Err()) {
			errs[j] = c.Err()
		}
	}
	for j, t := range tk.many {
		t.record(errs[j])
	}
}

// reloadSlots asks go-redis to reload its view of the cluster's slots, at
// most once a second: exchange calls it when a call on a cluster could not
// reach its node, did not answer within its budget, or was refused by an
// open breaker. go-redis reloads the slots by itself only on a MOVED or
// ASK reply, or every ClusterStateReloadInterval (a minute by default): a
// master that was killed sends neither, so without this its keys would go
// on to the dead node long after its replica took over.
func (m *Manager) reloadSlots(ctx context.Context) {
	now := time.Now().UnixNano()
	last := m.slotsReloaded.Load()
	if now-last > int64(time.Second) && m.slotsReloaded.CompareAndSwap(last, now) {
		m.cluster.ReloadState(ctx)
	}
}

// breakerFor returns the breaker of the node a call of cmd goes to: the
// only one, the node at addr, on a cluster the master of cmd's key (the
// cluster's as a whole while go-redis has not loaded its slots, or for a
// command without a key), on a ring the shard of cmd's key (the ring's as
// a whole for a command without a key, or when no shard is up).
func (m *Manager) breakerFor(ctx context.Context, addr string, cmd redis.Cmder) *breaker {
	bs := m.breakers
	switch {
	case bs.one != nil:
		return bs.one
	case addr != "":
		return bs.of(addr)
	case cmd == nil || (m.cluster != nil && !m.slotsKnown.Load()):
		return bs.of("")
	}
	key := cmdKey(cmd)
	if key == "" {
		return bs.of("")
	}
	var n *redis.Client
	var err error
	if ring, ok := m.rdb.(*redis.Ring); ok {
		n, err = ring.GetShardClientForKey(key)
	} else {
		n, err = m.cluster.MasterForKey(ctx, key)
	}
	if err != nil {
		return bs.of("")
	}
	return bs.of(n.Options().Addr)
}

// cmdKey returns the first key of cmd, "" for a command without one.
func cmdKey(cmd redis.Cmder) string {
	args := cmd.Args()
	i := 1
	switch cmd.Name() {
	case "eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro":
		if n, ok := args[min(2, len(args)-1)].(int); !ok || n == 0 {
			return ""
		}
		i = 3
	case "publish", "spublish", "script", "info", "ping", "scan":
		return ""
	}
	if len(args) <= i {
		return ""
	}
	s, _ := args[i].(string)
	return s
}

// The exchange.
//
// A call whose deadline comes before go-redis would end it runs on a
// worker, a goroutine of the Manager's (runBy), and its caller waits for
// it or for the deadline, whichever is first. The exchange it shares with
// the worker is reused when the caller took the result; when the caller
// stopped waiting, it belongs to the worker, which judges the call for the
// breaker when it ends, if the caller has not: a call cut short by its
// budget is a failure, one cut short by its caller's deadline is judged by
// its outcome within its budget.
//
// Workers are kept for workerIdle after their last call, and end on Close:
// handing a call to a worker that waits costs about half as much as
// starting a goroutine, whose stack grows anew to go-redis's depth each
// time. A worker stuck on a call its caller stopped waiting for is not
// given another until that call ends; a call that finds no worker waiting
// starts one.

// exchange states.
const (
	xRunning   = iota
	xDone      // the goroutine finished first: the caller takes the result
	xAbandoned // the caller stopped waiting: the exchange is the goroutine's
)

type exchange struct {
	ctx context.Context
	cl  call
	err error

	state  atomic.Int32
	done   chan struct{} // the goroutine's word that it finished first
	timer  *time.Timer   // the caller's, for the budget's end
	tk     tickets
	end    time.Time   // the budget's end; zero for none
	judged atomic.Bool // the breakers have been told
}

var exchanges = sync.Pool{New: func() any {
	x := &exchange{done: make(chan struct{}, 1), timer: time.NewTimer(time.Hour)}
	x.timer.Stop()
	return x
}}

// runBy runs the call on a goroutine and waits for it until end (its
// budget's end, or its caller's deadline when byCaller). done reports that
// the call finished in time, with err; otherwise err says why it was cut
// short, and the breakers were told or will be.
func (m *Manager) runBy(ctx context.Context, cl call, tk tickets, end, budgetEnd time.Time, byCaller bool) (err error, done bool) {
	x := exchanges.Get().(*exchange)
	x.ctx, x.cl, x.tk, x.end = ctx, cl, tk, budgetEnd
	x.state.Store(xRunning)
	x.judged.Store(false)
	select {
	case m.workers <- x:
	default:
		m.running.Add(1)
		go m.work(x)
	}
	var expired <-chan time.Time
	if !byCaller {
		x.timer.Reset(time.Until(end))
		expired = x.timer.C
	}
	select {
	case <-x.done:
		x.timer.Stop()
		return x.finish(), true
	case <-expired:
	case <-ctx.Done():
	}
	x.timer.Stop()
	if !x.state.CompareAndSwap(xRunning, xAbandoned) {
		<-x.done // it finished meanwhile
		return x.finish(), true
	}
	// A pipeline to several nodes is judged when it ends, by each node's
	// commands; a call to one node when its budget ends, unless it answers
	// in time.
	if byCaller {
		if !budgetEnd.IsZero() && tk.many == nil {
			time.AfterFunc(time.Until(budgetEnd), func() { x.judge(errBudget) })
		}
		return callerGone(ctx), false
	}
	if tk.many == nil {
		x.judge(errBudget)
	}
	return errBudget, false
}

// finish returns the result of a call that finished before its caller
// stopped waiting, and puts the exchange back for reuse.
func (x *exchange) finish() error {
	err := x.err
	*x = exchange{done: x.done, timer: x.timer}
	exchanges.Put(x)
	return err
}

// workerIdle is how long a worker waits for a call before it ends.
const workerIdle = 10 * time.Second

// work is a worker: it runs x, then the calls handed to it, until it has
// waited workerIdle for one or the Manager closes.
func (m *Manager) work(x *exchange) {
	defer m.running.Add(-1)
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		x.run()
		idle.Reset(workerIdle)
		select {
		case x = <-m.workers:
		case <-idle.C:
			return
		case <-m.life.Done():
			return
		}
	}
}

// run makes the exchange's call, and hands the result to its caller or,
// when the caller has gone, judges the call. It must not touch x once the
// caller has the result.
func (x *exchange) run() {
	err := x.cl.run(x.ctx)
	x.err = err
	if x.state.CompareAndSwap(xRunning, xDone) {
		x.done <- struct{}{}
		return
	}
	// Its caller has gone: judge the call now, unless that was done.
	if !x.end.IsZero() && time.Now().After(x.end) && x.tk.many == nil {
		x.judge(errBudget)
		return
	}
	if x.judged.CompareAndSwap(false, true) {
		x.tk.judge(err, x.cl.cmds)
	}
}

// judge tells the breakers of a call its caller stopped waiting for that it
// failed with err, unless they have been told.
func (x *exchange) judge(err error) {
	if x.judged.CompareAndSwap(false, true) {
		x.tk.fail(err)
	}
}
