package cache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache"
)

// errStaleFence is what an OrderTable answers a write whose fence is not
// above the last one it accepted.
var errStaleFence = errors.New("stale fence: the lock was granted to someone else since")

// OrderTable stands in for the database table that a lock protects. Like
//
//	UPDATE orders SET status = $3, fence = $1 WHERE id = $2 AND fence < $1
//
// it remembers, per order, the highest fence it has accepted, and refuses a
// write with a lower or equal one. Its zero value is an empty table.
type OrderTable struct {
	mu     sync.Mutex // protects status and fence
	status map[int]string
	fence  map[int]int64
}

// SetStatus sets order id's status, if fence is above the last one the
// order was written with.
func (t *OrderTable) SetStatus(id int, status string, fence int64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if fence <= t.fence[id] {
		return errStaleFence
	}
	if t.status == nil {
		t.status, t.fence = map[int]string{}, map[int]int64{}
	}
	t.status[id], t.fence[id] = status, fence
	return nil
}

// Status returns order id's status.
func (t *OrderTable) Status(id int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.status[id]
}

// Order processing under a lock: one instance of the fleet moves order 42
// along at a time, and every write carries the lock's fence.
func ExampleManager_WithLock() {
	// An in-process Redis for the example; a service passes its own client.
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	m, err := cache.New(rdb, &cache.Options{Prefix: "pizzeria"})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	ctx := context.Background()
	var orders OrderTable

	for _, step := range []string{"paid", "baking", "out for delivery"} {
		err := m.WithLock(ctx, "order:42", 10*time.Second, func(ctx context.Context) error {
			lock, _ := cache.LockFromContext(ctx)
			return orders.SetStatus(42, step, lock.Fence())
		})
		if err != nil {
			fmt.Println("order 42:", err)
			return
		}
		fmt.Println("order 42:", orders.Status(42))
	}
	// Output:
	// order 42: paid
	// order 42: baking
	// order 42: out for delivery
}

// An inventory update under a lock: read, compute and write back the stock
// of flour without another instance doing the same in between.
func ExampleManager_WithLock_inventory() {
	// An in-process Redis for the example; a service passes its own client.
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	m, err := cache.New(rdb, &cache.Options{Prefix: "pizzeria"})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	// A deadline for the whole batch: a pizza that cannot get the lock by
	// then gives up with an error.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stock := m.Key("stock:flour_kg") // a key of the application's own
	rdb.Set(ctx, stock, 25, 0)

	var wg sync.WaitGroup
	for range 10 { // ten pizzas of 2 kg, ordered at once
		wg.Go(func() {
			err := m.WithLock(ctx, "inventory:flour", 5*time.Second, func(ctx context.Context) error {
				kg, err := rdb.Get(ctx, stock).Int()
				if err != nil {
					return err
				}
				if kg < 2 {
					return errors.New("out of flour")
				}
				return rdb.Set(ctx, stock, kg-2, 0).Err()
			}, cache.ExponentialRetry(time.Millisecond, 20*time.Millisecond))
			if err != nil {
				fmt.Println(err)
			}
		})
	}
	// Every WithLock returns by ctx's deadline; should one not, the example
	// fails rather than hangs.
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		panic("the ten orders did not take their flour within 20 seconds")
	}
	kg, _ := rdb.Get(ctx, stock).Int()
	fmt.Println("flour left:", kg, "kg")
	// Output:
	// flour left: 5 kg
}

func ExampleManager_TryLock() {
	// An in-process Redis for the example; a service passes its own client.
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	m, err := cache.New(rdb, &cache.Options{Prefix: "pizzeria"})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	ctx := context.Background()

	oven, err := m.TryLock(ctx, "oven:1", 30*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("first try: got oven 1")

	_, err = m.TryLock(ctx, "oven:1", 30*time.Second)
	if errors.Is(err, cache.ErrNotObtained) {
		fmt.Println("second try: oven 1 is busy")
	}

	if err := oven.Release(ctx); err != nil {
		fmt.Println(err)
		return
	}
	again, err := m.TryLock(ctx, "oven:1", 30*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("after release: got oven 1 again, with a higher fence:", again.Fence() > oven.Fence())
	_ = again.Release(ctx)
	// Output:
	// first try: got oven 1
	// second try: oven 1 is busy
	// after release: got oven 1 again, with a higher fence: true
}

// A holder whose lease ran out (here, Redis's clock is moved past it, as a
// long pause would) still believes it holds the lock. Its late write is
// refused by the store, because a newer holder wrote with a higher fence.
func ExampleLock_Fence() {
	// An in-process Redis for the example; a service passes its own client.
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	m, err := cache.New(rdb, &cache.Options{Prefix: "pizzeria"})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	ctx := context.Background()
	var orders OrderTable

	slow, _ := m.TryLock(ctx, "order:42", 10*time.Second)
	mr.FastForward(11 * time.Second) // slow pauses; its lease expires

	fast, _ := m.TryLock(ctx, "order:42", 10*time.Second)
	fmt.Println("fast:", orders.SetStatus(42, "cancelled", fast.Fence()))
	_ = fast.Release(ctx)

	fmt.Println("slow:", orders.SetStatus(42, "paid", slow.Fence()))
	fmt.Println("slow:", slow.Release(ctx))
	fmt.Println("order 42:", orders.Status(42))
	// Output:
	// fast: <nil>
	// slow: stale fence: the lock was granted to someone else since
	// slow: cache: lock lost: "order:42" is no longer held with this token
	// order 42: cancelled
}
