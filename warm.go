package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Warming fills the cache ahead of its readers: at start-up, and on a
// schedule, so that the first reader of the day does not pay for the load.
//
// A warming job is a function that stores entries (with Memo.Refresh,
// Hash.SetMany, Set) and says how many it stored. Jobs are registered by
// name with Warm, or with the WarmWith methods of a Memo or a Hash, and run
// together by WarmAll. A job overwrites entries in place: readers keep
// getting the old value until the new one is stored, and never miss.
//
// WarmEvery runs WarmAll on a schedule. Across a fleet of Managers, one
// warms per period: each period of the schedule has a key in Redis that
// the first Manager to reach the period claims (SET NX), and only that
// Manager warms.

// WarmConcurrency is how many warming jobs WarmAll runs at once.
const WarmConcurrency = 4

// warmSkew is how far behind the clocks of a fleet's hosts may be and still
// see the claim of a period: a claim lives for its period's length and
// warmSkew more.
const warmSkew = time.Minute

// warmState is the Manager's warming jobs and the report of its last warm.
type warmState struct {
	mu   sync.Mutex // protects jobs and last
	jobs map[string]func(context.Context) (int, error)
	last *WarmReport // nil before the first WarmAll
}

// WarmJob is what one warming job did in a WarmAll.
type WarmJob struct {
	Name     string
	Entries  int           // entries the job reported it warmed
	Duration time.Duration // how long the job ran
	// Err is the job's error, nil when it succeeded. A job that panicked
	// has a *PanicError; one that did not start because the context ended
	// or the Manager was closed has that error.
	Err error
}

// String returns the job on one line: its name, entries, duration and, if
// it failed, its error.
func (j WarmJob) String() string {
	noun := "entries"
	if j.Entries == 1 {
		noun = "entry"
	}
	s := fmt.Sprintf("%s: %d %s in %v", j.Name, j.Entries, noun, roundDuration(j.Duration))
	if j.Err != nil {
		s += ", failed: " + strings.ReplaceAll(j.Err.Error(), "\n", "; ")
	}
	return s
}

// roundDuration rounds d to three or four significant digits, for reading.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// WarmReport is what a WarmAll did, job by job.
type WarmReport struct {
	Started  time.Time     // when the warm began, by the Manager's clock
	Duration time.Duration // how long it took
	Jobs     []WarmJob     // one per job, sorted by name
}

// String returns the report with one line per job, as WarmJob.String.
func (r WarmReport) String() string {
	lines := make([]string, len(r.Jobs))
	for i, j := range r.Jobs {
		lines[i] = j.String()
	}
	return strings.Join(lines, "\n")
}

// Err returns the errors of the jobs that failed, joined, each wrapped with
// its job's name; nil when every job succeeded.
func (r WarmReport) Err() error {
	var errs []error
	for _, j := range r.Jobs {
		if j.Err != nil {
			errs = append(errs, wrap(j.Err, "warm %q", j.Name))
		}
	}
	return errors.Join(errs...)
}

// Warm registers the warming job name, which WarmAll and WarmEvery run: fn
// stores entries and returns how many. Registering a name again replaces
// its job. Warm returns ErrInvalidKey for an empty name, ErrInvalidOption
// for a nil fn, and ErrClosed after Close.
//
// fn runs concurrently with the other jobs, and with itself when WarmAll
// is called concurrently. It should overwrite entries in place
// (Memo.Refresh, Hash.SetMany, Set) rather than delete them first, so that
// readers never miss. A panic in fn is recovered and reported as the job's
// error; a panic on a goroutine fn starts is not.
func (m *Manager) Warm(name string, fn func(ctx context.Context) (int, error)) error {
	switch {
	case m.closed.Load():
		return ErrClosed
	case name == "":
		return fmt.Errorf("%w: empty warming job name", ErrInvalidKey)
	case fn == nil:
		return fmt.Errorf("%w: nil function for warming job %q", ErrInvalidOption, name)
	}
	m.warm.mu.Lock()
	defer m.warm.mu.Unlock()
	if m.warm.jobs == nil {
		m.warm.jobs = make(map[string]func(context.Context) (int, error))
	}
	m.warm.jobs[name] = fn
	return nil
}

// WarmWith registers the warming job "memo:NAME", which calls args for the
// arguments to warm and refreshes the memo's entry of each, as Refresh
// does, in batches of warmBatch: one call of the memo's batch function
// (MemoizeBatch; a call of its function per argument for Memoize), and one
// round trip per node to take the leases and one to store the results.
// Readers keep getting the old entries while the new ones are computed.
// The job counts the entries it stored; an argument whose result is not
// found is remembered as such, not counted, and not a failure. The errors
// of the other arguments are joined into the job's error, and do not stop
// the job.
//
// WarmWith returns ErrInvalidOption for a nil args, and ErrClosed after
// Close.
func (mm *Memo[A, R]) WarmWith(args func(ctx context.Context) ([]A, error)) error {
	if args == nil {
		return fmt.Errorf("%w: nil argument list for memo %q", ErrInvalidOption, mm.name)
	}
	return mm.m.Warm("memo:"+mm.name, func(ctx context.Context) (int, error) {
		list, err := args(ctx)
		if err != nil {
			return 0, err
		}
		n := 0
		var errs []error
		for start := 0; start < len(list); start += warmBatch {
			chunk := list[start:min(start+warmBatch, len(list))]
			es, which, err := mm.entries(ctx, chunk)
			if err != nil {
				return n, errors.Join(append(errs, err)...)
			}
			distinctArgs := make([]A, len(es))
			for i, e := range which {
				distinctArgs[e] = chunk[i]
			}
			outs, err := loadMany(ctx, mm.m, es, true, mm.loadMany(distinctArgs))
			if err != nil {
				return n, errors.Join(append(errs, err)...)
			}
			keys := make([]string, 0, len(outs))
			for i, o := range outs {
				switch {
				case o.err == nil:
					n++
					keys = append(keys, es[i].ref.key)
				case errors.Is(o.err, ErrNotFound):
				default:
					errs = append(errs, fmt.Errorf("argument %v: %w", distinctArgs[i], o.err))
				}
			}
			// Other instances' copies are older.
			if err := mm.m.dropEverywhere(ctx, false, keys); err != nil {
				errs = append(errs, err)
			}
		}
		return n, errors.Join(errs...)
	})
}

// warmBatch is how many arguments a memo's warming job refreshes at once.
const warmBatch = 1000

// WarmWith registers the warming job "hash:NAME", which calls load and
// stores every field it returns (SetMany). Fields are overwritten in place;
// fields that load does not return are kept. The job counts the fields it
// stored.
//
// WarmWith returns ErrInvalidOption for a nil load, and ErrClosed after
// Close.
func (h *Hash[T]) WarmWith(load func(ctx context.Context) (map[string]T, error)) error {
	if load == nil {
		return fmt.Errorf("%w: nil loader for hash %q", ErrInvalidOption, h.name)
	}
	return h.m.Warm("hash:"+h.name, func(ctx context.Context) (int, error) {
		// The store is conditional: an invalidation of the hash or of a
		// field while load runs voids it, and the job loads again.
		for attempt := 1; ; attempt++ {
			v, err := h.versions(ctx)
			if err != nil {
				return 0, err
			}
			items, err := load(ctx)
			if err != nil {
				return 0, err
			}
			stored, err := h.storeLoaded(ctx, items, v)
			switch {
			case err != nil:
				return 0, err
			case stored:
				return len(items), nil
			case attempt == maxWarmAttempts:
				return 0, fmt.Errorf("cache: hash %q: invalidated during each of %d loads; nothing stored", h.name, attempt)
			}
		}
	})
}

// maxWarmAttempts bounds how often a hash's warming job loads again after
// invalidations void its store.
const maxWarmAttempts = 3

// WarmAll runs every registered warming job, WarmConcurrency at a time, and
// returns a report with a line per job. A job that fails or panics does not
// stop the others; the error is the failed jobs' errors joined (as
// WarmReport.Err), nil when every job succeeded. The jobs' context ends
// when ctx does or when the Manager is closed.
//
// WarmAll returns ErrClosed after Close. Its report is kept for LastWarm.
func (m *Manager) WarmAll(ctx context.Context) (WarmReport, error) {
	if err := m.check(ctx); err != nil {
		return WarmReport{}, err
	}
	m.warm.mu.Lock()
	names := make([]string, 0, len(m.warm.jobs))
	for name := range m.warm.jobs {
		names = append(names, name)
	}
	slices.Sort(names)
	fns := make([]func(context.Context) (int, error), len(names))
	for i, name := range names {
		fns[i] = m.warm.jobs[name]
	}
	m.warm.mu.Unlock()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(m.life, func() { cancel(ErrClosed) })
	defer stop()

	r := WarmReport{Started: m.now(), Jobs: make([]WarmJob, len(names))}
	began := time.Now()
	sem := make(chan struct{}, WarmConcurrency) // a slot per running job
	var wg sync.WaitGroup
	for i := range names {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			r.Jobs[i] = runWarmJob(ctx, names[i], fns[i])
		})
	}
	wg.Wait()
	r.Duration = time.Since(began)

	last := r
	last.Jobs = slices.Clone(r.Jobs)
	m.warm.mu.Lock()
	m.warm.last = &last
	m.warm.mu.Unlock()
	return r, r.Err()
}

// runWarmJob runs fn, turning a panic into a *PanicError.
func runWarmJob(ctx context.Context, name string, fn func(context.Context) (int, error)) (job WarmJob) {
	job.Name = name
	if ctx.Err() != nil {
		job.Err = context.Cause(ctx)
		return job
	}
	start := time.Now()
	defer func() {
		job.Duration = time.Since(start)
		if v := recover(); v != nil {
			job.Entries = 0
			job.Err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	job.Entries, job.Err = fn(ctx)
	return job
}

// LastWarm returns the report of the Manager's last WarmAll, the ones
// WarmEvery runs included, and false when there has been none.
func (m *Manager) LastWarm() (WarmReport, bool) {
	m.warm.mu.Lock()
	defer m.warm.mu.Unlock()
	if m.warm.last == nil {
		return WarmReport{}, false
	}
	r := *m.warm.last
	r.Jobs = slices.Clone(r.Jobs)
	return r, true
}

// WarmEvery runs WarmAll at once and then every interval, until stop is
// called or the Manager is closed. stop ends the schedule and waits for a
// warm in progress to end; calling it again does nothing. It must not be
// called from a warming job.
//
// Across a fleet, one Manager warms per period. Time is cut into periods of
// interval by the Manager's clock (Options.Now), counted from the Unix
// epoch, so WarmEvery(24*time.Hour) has one period a UTC day. Before it
// warms, a Manager claims the period with SET NX on the key
// prefix:{warm}:period:INTERVAL:N (INTERVAL in milliseconds, N the
// period's number); only the Manager whose claim succeeds warms, and the
// others wait for the next period. A Manager started mid-period therefore
// warms at once only when no other Manager has warmed that period. The
// claim lives for interval and a minute more, so the fleet's clocks must
// agree within a minute.
//
// When this Manager ran WarmAll less than interval ago (a warm at
// start-up), the schedule begins with the next period instead of warming
// again at once.
//
// A warm that fails is logged (Options.Logger) and the schedule goes on;
// LastWarm returns its report. The period stays claimed: the next warm is
// the next period's. A claim that fails because Redis does is tried again
// at the next tick. After Close, WarmEvery does nothing. It
// panics if interval is below a millisecond, as time.NewTicker does for a
// non-positive one.
func (m *Manager) WarmEvery(interval time.Duration) (stop func()) {
	if interval < time.Millisecond {
		panic(fmt.Sprintf("cache: WarmEvery interval %v is below a millisecond", interval))
	}
	s := &warmSchedule{m: m, every: interval, owner: warmOwner(), last: -1}
	ctx, cancel := context.WithCancel(m.life)
	done := make(chan struct{})
	if !m.goBackground(func() {
		defer close(done)
		s.run(ctx)
	}) {
		cancel()
		return func() {}
	}
	var once sync.Once
	return func() {
		once.Do(cancel)
		<-done
	}
}

// warmSchedule is one WarmEvery. Only its goroutine uses it.
type warmSchedule struct {
	m     *Manager
	every time.Duration
	owner string // the claim's value: who warmed the period
	last  int64  // the last period claimed, by this schedule or another Manager
}

func (s *warmSchedule) run(ctx context.Context) {
	if r, ok := s.m.LastWarm(); ok && s.m.now().Sub(r.Started) < s.every {
		// Just warmed (a WarmAll at start-up): begin with the next period.
		s.last = s.m.now().UnixMilli() / s.every.Milliseconds()
	}
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		s.tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tick claims the current period, if it has not been claimed yet, and warms
// when the claim is this schedule's.
func (s *warmSchedule) tick(ctx context.Context) {
	n := s.m.now().UnixMilli() / s.every.Milliseconds()
	if n == s.last {
		return
	}
	key := s.m.warmPeriodKey(s.every, n)
	cmd := redis.NewBoolCmd(ctx, "set", key, s.owner, "px", (s.every + warmSkew).Milliseconds(), "nx")
	err := s.m.do(ctx, s.m.kv, cmd)
	won := err == nil && cmd.Val()
	if errors.Is(err, redis.Nil) {
		err = nil // claimed by another Manager
	}
	if err != nil {
		if ctx.Err() == nil {
			s.m.log.Warn("cache: claiming a warming period failed; trying again at the next tick", "key", key, "err", err)
		}
		return
	}
	s.last = n
	if !won {
		return
	}
	if _, err := s.m.WarmAll(ctx); err != nil && ctx.Err() == nil {
		s.m.log.Warn("cache: warming failed", "period", n, "err", err)
	}
}

// warmOwner returns the value of a schedule's claims: the host, the process
// and a random part, so that an operator can tell who warmed a period.
func warmOwner() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	return host + ":" + strconv.Itoa(os.Getpid()) + ":" + hex.EncodeToString(b[:])
}
