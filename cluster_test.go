package cache

import (
	"os"
	"testing"
	"time"

	"github.com/stockpot-go/cache/internal/testredis"
)

// TestMain stops the cluster that testredis.Run shares between the tests.
//
// The tests' Managers get a time budget of 10s unless a test sets one: the
// budget's own tests set theirs, and the others are about behaviours that
// must not depend on how busy the machine running them is (under the race
// detector, on a loaded machine, a pipeline of a few hundred scripts on
// miniredis takes seconds; the default, 150ms, is for a Redis whose
// callers are not starved of CPU).
func TestMain(m *testing.M) {
	timeoutDefault = 10 * time.Second
	os.Exit(testredis.Main(m))
}
