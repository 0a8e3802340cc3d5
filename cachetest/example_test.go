package cachetest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/cachetest"
)

// A test of code that caches a price for an hour: the second read is a hit,
// and an hour later the price is loaded again. In a test, pass its t to
// cachetest.New; an Example has no t, so this one passes a stand-in.
func Example() {
	t := &exampleT{}
	defer t.cleanup()

	env := cachetest.New(t, nil)
	ctx := context.Background()
	loads := 0
	loadPrice := func(ctx context.Context) (int, error) {
		loads++
		return 1200, nil
	}
	get := func() {
		p, err := cache.GetOrLoad(ctx, env.Manager, "price:margherita", loadPrice, cache.TTL(time.Hour))
		fmt.Println(p, err, "loads:", loads)
	}

	get()
	get() // a hit
	env.Advance(time.Hour)
	get() // expired: loaded again
	// Output:
	// 1200 <nil> loads: 1
	// 1200 <nil> loads: 1
	// 1200 <nil> loads: 2
}

// exampleT stands in for the *testing.T a test would pass: it keeps the
// cleanups and runs them, last first, when the example ends.
type exampleT struct {
	testing.TB
	cleanups []func()
}

func (t *exampleT) Helper()          {}
func (t *exampleT) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }
func (t *exampleT) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}

func (t *exampleT) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}
