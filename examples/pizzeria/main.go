// Command pizzeria runs Mario's pizzeria on stockpot, the way a fleet of
// order services would: three instances, each with its own Manager over
// its own Redis client, share
//
//   - order processing under a distributed lock per order, every write to
//     the orders table carrying the lock's fence, so that a holder whose
//     lease ran out cannot overwrite the holder after it;
//   - the flour inventory, updated read-modify-write under a lock;
//   - customer sessions, in one Redis hash with a 4h TTL;
//   - the kitchen's priority queue and the pizzas' popularity, sorted sets
//     on the raw client.
//
// With REDIS_ADDR unset it runs on an in-process miniredis.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache"
)

const (
	orderLease = 10 * time.Second // the lease of an order's lock; WithLock renews it
	stallLease = time.Second      // the lease of the holder that stalls
	flourKey   = "stock:flour_g"
	queueKey   = "kitchen_queue"
	popularKey = "pizza_popularity"
)

// The life of an order: each step is one write under the order's lock.
var steps = []string{"received", "accepted", "baking", "ready"}

func next(status string) string {
	for i, s := range steps[:len(steps)-1] {
		if s == status {
			return steps[i+1]
		}
	}
	return status
}

// order is a customer's order.
type order struct {
	ID      int
	Pizza   string
	Express bool
}

var orders = []order{
	{1, "margherita", false},
	{2, "diavola", true},
	{3, "margherita", false},
	{4, "quattro formaggi", false},
	{5, "margherita", true},
	{6, "diavola", false},
	{7, "margherita", false},
}

// Session is a customer's session, one field of the customer_sessions hash.
type Session struct {
	Customer   string
	LoggedInAt time.Time
	Cart       []string
}

// errStaleFence is the orders table's answer to a write from a lock holder
// that is no longer the latest.
var errStaleFence = errors.New("stale fence")

// ordersTable stands in for the orders table of a database. Like
//
//	UPDATE orders SET status = $3, fence = $1 WHERE id = $2 AND fence <= $1
//
// it keeps, per order, the highest fence it has accepted, and refuses a
// write with a lower one. (<=, not <: one grant of the lock may write an
// order more than once.)
type ordersTable struct {
	mu   sync.Mutex // protects rows
	rows map[int]*row
}

type row struct {
	status string
	fence  int64
	writes int
}

func (t *ordersTable) status(id int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r, ok := t.rows[id]; ok {
		return r.status
	}
	return steps[0]
}

func (t *ordersTable) write(id int, status string, fence int64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.rows[id]
	if !ok {
		r = &row{status: steps[0]}
		t.rows[id] = r
	}
	if fence < r.fence {
		return fmt.Errorf("%w: order %d has seen fence %d", errStaleFence, id, r.fence)
	}
	r.status, r.fence = status, fence
	r.writes++
	return nil
}

// instance is one process of the fleet, with a Manager over a client of
// its own.
type instance struct {
	name string
	m    *cache.Manager
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx); err != nil {
		if ctx.Err() != nil {
			fmt.Println("\ninterrupted")
			return
		}
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	addr := os.Getenv("REDIS_ADDR")
	// expire makes d pass for the leases in Redis: miniredis moves its TTLs
	// at once, a real Redis needs the time to pass.
	expire := func(ctx context.Context, d time.Duration) error {
		return pause(ctx, d)
	}
	howExpired := "slept"
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		addr = mr.Addr()
		expire = func(_ context.Context, d time.Duration) error {
			mr.FastForward(d)
			return nil
		}
		howExpired = "miniredis FastForward"
		fmt.Println("REDIS_ADDR unset: using an embedded miniredis at", addr)
	} else {
		fmt.Println("using Redis at", addr)
	}

	var fleet []*instance
	for _, name := range []string{"oven-a", "oven-b", "oven-c"} {
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		defer rdb.Close()
		m, err := cache.New(rdb, &cache.Options{Prefix: "pizzeria"})
		if err != nil {
			return err
		}
		defer m.Close()
		if err := rdb.Ping(ctx).Err(); err != nil {
			return err
		}
		fleet = append(fleet, &instance{name: name, m: m})
	}
	a, b, c := fleet[0], fleet[1], fleet[2]
	// Leftovers of an earlier run on a real Redis.
	if err := a.m.Client().Del(ctx, a.m.Key(queueKey), a.m.Key(popularKey), a.m.Key(flourKey)).Err(); err != nil {
		return err
	}

	start := time.Now()
	table := &ordersTable{rows: map[int]*row{}}

	// advance moves order o one step on, under its lock, as inst.
	advance := func(ctx context.Context, inst *instance, o order) error {
		asked := time.Now()
		return inst.m.WithLock(ctx, fmt.Sprintf("order:%d", o.ID), orderLease, func(ctx context.Context) error {
			lock, _ := cache.LockFromContext(ctx)
			waited := time.Since(asked)
			from := table.status(o.ID)
			to := next(from)
			if err := pause(ctx, 25*time.Millisecond); err != nil { // the work
				return err
			}
			if err := table.write(o.ID, to, lock.Fence()); err != nil {
				return err
			}
			fmt.Printf("  %s  %s  %-8s fence %d  waited %-6v %s → %s\n",
				since(start), inst.name, lock.Name(), lock.Fence(), waited.Round(time.Millisecond), from, to)
			return afterStep(ctx, inst.m, o, to)
		}, cache.ExponentialRetry(5*time.Millisecond, 50*time.Millisecond))
	}

	fmt.Println("\n-- orders: 3 instances take the steps of orders 1-6 as they come, one holder per order at a time --")
	fmt.Println("   (a fence grows by one with each grant of a lock name; a new name starts at Redis's clock in µs)")
	wctx, cancel := context.WithCancel(ctx) // the first failure stops the others
	defer cancel()
	jobs := make(chan order)
	go func() {
		defer close(jobs)
		for _, o := range orders[:6] {
			for range len(steps) - 1 {
				select {
				case jobs <- o:
				case <-wctx.Done():
					return
				}
			}
		}
	}()
	errs := make(chan error, len(fleet))
	var wg sync.WaitGroup
	for _, inst := range fleet {
		wg.Go(func() {
			for o := range jobs {
				if err := advance(wctx, inst, o); err != nil {
					errs <- fmt.Errorf("%s, order %d: %w", inst.name, o.ID, err)
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	for _, o := range orders[:6] {
		r := table.rows[o.ID]
		if r.status != "ready" || r.writes != len(steps)-1 {
			return fmt.Errorf("order %d: %s after %d writes, want ready after %d", o.ID, r.status, r.writes, len(steps)-1)
		}
	}
	fmt.Printf("  every order is ready after exactly %d writes: no step lost or taken twice\n", len(steps)-1)

	fmt.Println("\n-- a holder that stalls past its lease --")
	o := orders[6]
	stalled, err := c.m.Lock(ctx, "order:7", stallLease)
	if err != nil {
		return err
	}
	from := table.status(o.ID)
	fmt.Printf("  %s  %s  order:7  fence %d  lease %v, read %q, will write %q\n",
		since(start), c.name, stalled.Fence(), stallLease, from, next(from))
	fmt.Printf("  %s  %s  stalls (a long GC pause, a stopped VM: nothing of it runs, no refresh either)\n", since(start), c.name)
	if err := expire(ctx, stallLease+200*time.Millisecond); err != nil {
		return err
	}
	fmt.Printf("  %s  ...     %v pass (%s): its lease has run out in Redis\n",
		since(start), stallLease+200*time.Millisecond, howExpired)
	for range 2 {
		if err := advance(ctx, a, o); err != nil {
			return err
		}
	}
	fmt.Printf("  %s  %s  wakes up and writes %q with fence %d\n", since(start), c.name, next(from), stalled.Fence())
	err = table.write(o.ID, next(from), stalled.Fence())
	if !errors.Is(err, errStaleFence) {
		return fmt.Errorf("the late write: got %v, want a refusal", err)
	}
	fmt.Printf("  %s  orders table refuses it: %v\n", since(start), err)
	err = stalled.Release(ctx)
	fmt.Printf("  %s  %s  Release: %v (ErrLockLost: %t)\n", since(start), c.name, err, errors.Is(err, cache.ErrLockLost))
	fmt.Printf("  order 7 stays %q, as the latest holder left it\n", table.status(o.ID))

	fmt.Println("\n-- inventory: flour taken by 12 pizzas from 3 instances at once, under inventory:flour --")
	for _, locked := range []bool{true, false} {
		if err := a.m.Client().Set(ctx, a.m.Key(flourKey), 10000, 0).Err(); err != nil {
			return err
		}
		t0 := time.Now()
		holders := map[string]int{}
		var mu sync.Mutex // protects holders
		g := make(chan error, 12)
		for i := range 12 {
			inst := fleet[i%len(fleet)]
			go func() {
				use := func(ctx context.Context) error { return useFlour(ctx, inst, 250) }
				if !locked {
					g <- use(ctx)
					return
				}
				g <- inst.m.WithLock(ctx, "inventory:flour", 5*time.Second, func(ctx context.Context) error {
					mu.Lock()
					holders[inst.name]++
					mu.Unlock()
					return use(ctx)
				}, cache.ExponentialRetry(2*time.Millisecond, 20*time.Millisecond))
			}()
		}
		for range 12 {
			if err := <-g; err != nil {
				return err
			}
		}
		left, err := a.m.Client().Get(ctx, a.m.Key(flourKey)).Int()
		if err != nil {
			return err
		}
		lost := (left - 7000) / 250
		if locked {
			fmt.Printf("  with the lock:    10000 g → %d g in %v, want 7000 g; holders %s\n",
				left, time.Since(t0).Round(time.Millisecond), counts(holders))
		} else {
			fmt.Printf("  without the lock: 10000 g → %d g in %v: %d of 12 updates lost\n",
				left, time.Since(t0).Round(time.Millisecond), lost)
		}
	}

	fmt.Println("\n-- customer sessions: one hash, customer_sessions, 4h TTL, shared by the fleet --")
	sessionsOf := func(inst *instance) *cache.Hash[Session] {
		return cache.NewHash[Session](inst.m, "customer_sessions", cache.TTL(4*time.Hour))
	}
	if err := sessionsOf(a).Clear(ctx); err != nil {
		return err
	}
	loggedIn := time.Now().Truncate(time.Second)
	if err := sessionsOf(a).SetMany(ctx, map[string]Session{
		"c-101": {Customer: "Giulia", LoggedInAt: loggedIn},
		"c-102": {Customer: "Marco", LoggedInAt: loggedIn},
	}); err != nil {
		return err
	}
	fmt.Printf("  %s  oven-a  logs in c-101 (Giulia) and c-102 (Marco)\n", since(start))
	s, err := sessionsOf(b).Get(ctx, "c-101")
	if err != nil {
		return err
	}
	s.Cart = append(s.Cart, "margherita", "tiramisu")
	if err := sessionsOf(b).Set(ctx, "c-101", s); err != nil {
		return err
	}
	fmt.Printf("  %s  oven-b  reads c-101 (%s, logged in %s), adds to the cart: %v\n",
		since(start), s.Customer, s.LoggedInAt.Format(time.Kitchen), s.Cart)
	all, err := sessionsOf(c).All(ctx)
	if err != nil {
		return err
	}
	ttl, err := sessionsOf(c).TTL(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("  %s  oven-c  sees %d sessions, Giulia's cart %v; the hash expires in %v (4h, less the jitter)\n",
		since(start), len(all), all["c-101"].Cart, ttl.Round(time.Minute))
	if err := sessionsOf(c).Delete(ctx, "c-102"); err != nil {
		return err
	}
	_, err = sessionsOf(a).Get(ctx, "c-102")
	fmt.Printf("  %s  oven-c  logs c-102 out; oven-a reads it: %v\n", since(start), err)

	fmt.Println("\n-- the kitchen queue and the pizzas' popularity: sorted sets on the raw client --")
	rdb := a.m.Client()
	fmt.Printf("  %s holds %d orders, scored by due time; the kitchen takes the soonest first:\n",
		a.m.Key(queueKey), rdb.ZCard(ctx, a.m.Key(queueKey)).Val())
	for {
		zs, err := rdb.ZPopMin(ctx, a.m.Key(queueKey)).Result()
		if err != nil {
			return err
		}
		if len(zs) == 0 {
			break
		}
		due := time.Until(time.Unix(int64(zs[0].Score), 0)).Round(time.Minute)
		fmt.Printf("    %-8v due in %v\n", zs[0].Member, due)
	}
	top, err := rdb.ZRevRangeWithScores(ctx, a.m.Key(popularKey), 0, 2).Result()
	if err != nil {
		return err
	}
	var parts []string
	for _, z := range top {
		parts = append(parts, fmt.Sprintf("%v ×%d", z.Member, int(z.Score)))
	}
	fmt.Printf("  %s, top 3: %s\n", a.m.Key(popularKey), strings.Join(parts, ", "))

	fmt.Println("\n-- stats of customer_sessions, per instance --")
	for _, inst := range fleet {
		st := inst.m.Stats().ByName["hash:customer_sessions"]
		fmt.Printf("  %s  hits %d  misses %d  sets %d  deletes %d\n", inst.name, st.Hits, st.Misses, st.Sets, st.Deletes)
	}
	fmt.Printf("\ndone in %v\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// afterStep does the work that follows an order's step, still under the
// order's lock: an accepted order counts for its pizza's popularity, a
// baking one joins the kitchen queue, express orders due sooner.
func afterStep(ctx context.Context, m *cache.Manager, o order, status string) error {
	rdb := m.Client()
	switch status {
	case "accepted":
		return rdb.ZIncrBy(ctx, m.Key(popularKey), 1, o.Pizza).Err()
	case "baking":
		due := 25 * time.Minute
		if o.Express {
			due = 10 * time.Minute
		}
		due += time.Duration(o.ID) * time.Minute // later orders, later
		return rdb.ZAdd(ctx, m.Key(queueKey), redis.Z{
			Score:  float64(time.Now().Add(due).Unix()),
			Member: fmt.Sprintf("order:%d", o.ID),
		}).Err()
	}
	return nil
}

// useFlour takes grams of flour from the stock: a read, some work, a write.
// Two instances doing it at once both read the same stock, and one update
// is lost; under the inventory:flour lock they take turns.
func useFlour(ctx context.Context, inst *instance, grams int) error {
	rdb, key := inst.m.Client(), inst.m.Key(flourKey)
	have, err := rdb.Get(ctx, key).Int()
	if err != nil {
		return err
	}
	if err := pause(ctx, 3*time.Millisecond); err != nil { // weighing the dough
		return err
	}
	if have < grams {
		return fmt.Errorf("out of flour: %d g left", have)
	}
	return rdb.Set(ctx, key, have-grams, 0).Err()
}

// counts formats a count per instance, sorted by name.
func counts(m map[string]int) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s ×%d", n, m[n])
	}
	return strings.Join(parts, ", ")
}

// since formats the time since start, for the start of a line.
func since(start time.Time) string {
	return fmt.Sprintf("+%.3fs", time.Since(start).Seconds())
}

// pause waits for d, or until ctx ends (Ctrl-C), and then returns ctx's error.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
