package cache

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stockpot-go/cache/internal/testredis"
)

// TestMain runs the tests, stops the cluster that testredis.Run shares
// between them, and fails if any goroutine is left behind: every Manager
// the tests build is closed, and every client and server they start is
// closed or stopped in their cleanup.
//
// The tests' Managers get a time budget of 10s unless a test sets one: the
// budget's own tests set theirs, and the others are about behaviours that
// must not depend on how busy the machine running them is (under the race
// detector, on a loaded machine, a pipeline of a few hundred scripts on
// miniredis takes seconds; the default, 150ms, is for a Redis whose
// callers are not starved of CPU).
func TestMain(m *testing.M) {
	timeoutDefault = 10 * time.Second
	code := testredis.Main(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left behind by the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// slotOf agrees with Redis Cluster's own hash slots.
func TestSlotOf(t *testing.T) {
	c := testredis.SharedCluster(t)
	rdb := c.Client(t)
	for _, tag := range []string{"", "a", "k:dashboard_summary", "m:leaderboard", "123456789", "t:sales"} {
		want, err := rdb.ClusterKeySlot(t.Context(), tag).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := slotOf(tag); int64(got) != want {
			t.Errorf("slotOf(%q) = %d, want %d", tag, got, want)
		}
	}
}
