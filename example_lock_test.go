package cache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/stockpot-go/cache"
)

// errStaleFence is what the order store below answers a write whose fence is
// not above the last one it accepted.
var errStaleFence = errors.New("stale fence: the lock was granted to someone else since")

// fencedOrders stands in for the database table that a lock protects. Like
//
//	UPDATE orders SET status = $3, fence = $1 WHERE id = $2 AND fence < $1
//
// it remembers, per order, the highest fence it has accepted, and refuses a
// write with a lower or equal one.
type fencedOrders struct {
	mu     sync.Mutex // protects status and fence
	status map[int]string
	fence  map[int]int64
}

func newFencedOrders() *fencedOrders {
	return &fencedOrders{status: map[int]string{}, fence: map[int]int64{}}
}

func (s *fencedOrders) SetStatus(id int, status string, fence int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fence <= s.fence[id] {
		return errStaleFence
	}
	s.status[id], s.fence[id] = status, fence
	return nil
}

// Order processing under a lock: one instance of the fleet moves order 42
// along at a time, and every write carries the lock's fence.
func ExampleManager_WithLock() {
	m, done := newExampleManagerWith(&cache.Options{Prefix: "pizzeria"})
	defer done()
	ctx := context.Background()
	orders := newFencedOrders()

	for _, step := range []string{"paid", "baking", "out for delivery"} {
		err := m.WithLock(ctx, "order:42", 10*time.Second, func(ctx context.Context) error {
			lock, _ := cache.LockFromContext(ctx)
			return orders.SetStatus(42, step, lock.Fence())
		})
		if err != nil {
			fmt.Println("order 42:", err)
			return
		}
		fmt.Println("order 42:", orders.status[42])
	}
	// Output:
	// order 42: paid
	// order 42: baking
	// order 42: out for delivery
}

// An inventory update under a lock: read, compute and write back the stock
// of flour without another instance doing the same in between.
func ExampleManager_WithLock_inventory() {
	m, done := newExampleManagerWith(&cache.Options{Prefix: "pizzeria"})
	defer done()
	rdb := m.Client()
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
	exampleWithin("the ten orders to take their flour", wg.Wait)
	kg, _ := rdb.Get(ctx, stock).Int()
	fmt.Println("flour left:", kg, "kg")
	// Output:
	// flour left: 5 kg
}

func ExampleManager_TryLock() {
	m, done := newExampleManagerWith(&cache.Options{Prefix: "pizzeria"})
	defer done()
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
	m, mr, done := newExampleRedis(&cache.Options{Prefix: "pizzeria"})
	defer done()
	ctx := context.Background()
	orders := newFencedOrders()

	slow, _ := m.TryLock(ctx, "order:42", 10*time.Second)
	mr.FastForward(11 * time.Second) // slow pauses; its lease expires

	fast, _ := m.TryLock(ctx, "order:42", 10*time.Second)
	fmt.Println("fast:", orders.SetStatus(42, "cancelled", fast.Fence()))
	_ = fast.Release(ctx)

	fmt.Println("slow:", orders.SetStatus(42, "paid", slow.Fence()))
	fmt.Println("slow:", slow.Release(ctx))
	fmt.Println("order 42:", orders.status[42])
	// Output:
	// fast: <nil>
	// slow: stale fence: the lock was granted to someone else since
	// slow: cache: lock lost: "order:42" is no longer held with this token
	// order 42: cancelled
}
