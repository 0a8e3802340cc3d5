package cache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Concurrent reads share round trips.
//
// A read of one entry (readRaw's command: GET, HGET or MGET) goes out at
// once when no other is in flight. While one is, reads queue; when it
// returns, the queue goes out as one pipeline (one per node on a cluster),
// a command that several queued reads ask for being sent once, and the
// reads that queue meanwhile wait for that pipeline in turn. A hot key then
// costs Redis one GET per round trip, however many goroutines read it, and
// many keys share round trips, as with go-redis's pipelines.
//
// Every read queued was asked before the pipeline that answers it was
// sent, so its reply is as recent as a command of its own would be: no
// invalidation that returned before the read began is missed (the rule
// the load flights follow, see load.go). A reply is never shared with a
// read that began after its command went out.

// A read made to load on a miss (readLoaded's) may also take a miss
// hint: when a read of the same command, sent before it was asked, comes
// back with the entry absent, the queued read is answered "absent"
// without being sent. That read did not see the entry; the caller then
// loads, and the load reads the entry again after taking its lease (see
// acquireMany), so nothing it serves is older than its own call: the
// callers that arrive together on a cold entry share its load rather
// than reading it twice. Other reads (a plain Get, or one that does not
// load on a miss) are always sent.

// errMissHint answers a read that took a miss hint: the entry was absent.
var errMissHint = errors.New("cache: absent, as a read of the same command found it")

// readQueue holds the reads waiting for the round trip in flight.
type readQueue struct {
	mu     sync.Mutex             // protects the fields below
	busy   bool                   // a read, or a pipeline of them, is in flight
	queued []*queuedRead          // in order of arrival, one per command
	byArgs map[string]*queuedRead // queued, by the command's arguments
}

// queuedRead is one command of the next pipeline, and the reads waiting
// for it.
type queuedRead struct {
	cmd    redis.Cmder   // sent on behalf of every read that asked for it
	key    string        // cmd's argsKey
	done   chan struct{} // closed once cmd's reply (or err) is there
	err    error         // the pipeline's error when it was cut short: then cmd must not be read
	hint   bool          // every read waiting for it takes a miss hint
	absent bool          // answered by a miss hint, not sent
}

// read sends cmd, a read of one entry, sharing round trips as described
// above, and returns its error, as do does.
// With hint, the read may take a miss hint (see above): it then returns
// errMissHint.
func (m *Manager) read(ctx context.Context, st *counters, cmd redis.Cmder, hint bool) error {
	q := &m.reads
	q.mu.Lock()
	if !q.busy {
		q.busy = true
		q.mu.Unlock()
		err := m.do(ctx, st, cmd)
		m.readsReturned(cmd)
		return err
	}
	key := argsKey(cmd)
	r := q.byArgs[key]
	if r == nil {
		r = &queuedRead{cmd: copyCmd(cmd), key: key, done: make(chan struct{}), hint: hint}
		if q.byArgs == nil {
			q.byArgs = make(map[string]*queuedRead)
		}
		q.byArgs[key] = r
		q.queued = append(q.queued, r)
	} else if !hint {
		r.hint = false
	}
	q.mu.Unlock()
	err := m.await(ctx, r)
	if err == nil && r.absent {
		return errMissHint
	}
	if err == nil {
		err = takeReply(cmd, r.cmd)
	}
	m.count(ctx, st, err)
	return err
}

// isAbsent reports whether cmd, a read of readRaw's, found its entry
// absent: GET and HGET answered nil, MGET nil in the entry's place.
func isAbsent(cmd redis.Cmder) bool {
	switch c := cmd.(type) {
	case *redis.StringCmd:
		return errors.Is(c.Err(), redis.Nil)
	case *redis.SliceCmd:
		v := c.Val()
		return c.Err() == nil && len(v) > 0 && v[0] == nil
	}
	return false
}

// hintAbsent answers, with a miss hint, the queued reads that take one
// and are of the same command as one of sent that found its entry absent;
// q.mu is held.
func (q *readQueue) hintAbsent(sent []redis.Cmder) {
	for _, c := range sent {
		if !isAbsent(c) {
			continue
		}
		r := q.byArgs[argsKey(c)]
		if r == nil || !r.hint {
			continue
		}
		delete(q.byArgs, r.key)
		q.queued = slices.DeleteFunc(q.queued, func(x *queuedRead) bool { return x == r })
		r.absent = true
		close(r.done)
	}
}

// await waits for r, until ctx ends or its time budget does.
func (m *Manager) await(ctx context.Context, r *queuedRead) error {
	var expire <-chan time.Time
	if end := m.budgetEnd(ctx, time.Now()); !end.IsZero() {
		t := time.NewTimer(time.Until(end))
		defer t.Stop()
		expire = t.C
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return callerGone(ctx)
	case <-expire:
		return errBudget
	}
}

// readsReturned is called when the read in flight returned: the reads
// queued meanwhile go out, or the queue is idle again.
func (m *Manager) readsReturned(sent redis.Cmder) {
	q := &m.reads
	q.mu.Lock()
	if len(q.queued) > 0 {
		q.hintAbsent([]redis.Cmder{sent})
	}
	if len(q.queued) == 0 {
		q.busy = false
		q.mu.Unlock()
		return
	}
	q.mu.Unlock()
	if !m.goBackground(m.sendQueuedReads) {
		m.failQueuedReads(ErrClosed)
	}
}

// sendQueuedReads sends the queued reads as one pipeline, and again while
// reads queued during it, then leaves the queue idle.
func (m *Manager) sendQueuedReads() {
	q := &m.reads
	for {
		q.mu.Lock()
		batch := q.queued
		q.queued, q.byArgs = nil, nil
		if len(batch) == 0 {
			q.busy = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		// The pipeline has a budget of its own; each read waits within
		// its own (await).
		_, cut, err := m.sendPipe(m.life, m.rdb, "", func(p redis.Pipeliner) {
			for _, r := range batch {
				_ = p.Process(m.life, r.cmd)
			}
		})
		for _, r := range batch {
			if cut {
				r.err = err
			}
			close(r.done)
		}
		if !cut {
			q.mu.Lock()
			if len(q.queued) > 0 {
				sent := make([]redis.Cmder, len(batch))
				for i, r := range batch {
					sent[i] = r.cmd
				}
				q.hintAbsent(sent)
			}
			q.mu.Unlock()
		}
	}
}

// failQueuedReads ends every queued read with err.
func (m *Manager) failQueuedReads(err error) {
	q := &m.reads
	q.mu.Lock()
	batch := q.queued
	q.queued, q.byArgs, q.busy = nil, nil, false
	q.mu.Unlock()
	for _, r := range batch {
		r.err = err
		close(r.done)
	}
}

// argsKey returns a key naming cmd's arguments, injectively.
func argsKey(cmd redis.Cmder) string {
	var b strings.Builder
	for _, a := range cmd.Args() {
		s, ok := a.(string)
		if !ok {
			s = fmt.Sprint(a)
		}
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	return b.String()
}

// copyCmd returns a new command with cmd's arguments, of cmd's type (one
// of those readRaw sends).
func copyCmd(cmd redis.Cmder) redis.Cmder {
	ctx := context.Background()
	switch cmd.(type) {
	case *redis.SliceCmd:
		return redis.NewSliceCmd(ctx, cmd.Args()...)
	default:
		return redis.NewStringCmd(ctx, cmd.Args()...)
	}
}

// takeReply gives dst the reply of src, a command of its type that was
// sent for it, and returns its error.
func takeReply(dst, src redis.Cmder) error {
	err := src.Err()
	switch d := dst.(type) {
	case *redis.StringCmd:
		d.SetVal(src.(*redis.StringCmd).Val())
	case *redis.SliceCmd:
		d.SetVal(src.(*redis.SliceCmd).Val())
	}
	dst.SetErr(err)
	return err
}
