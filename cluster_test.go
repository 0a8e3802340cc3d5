package cache

import (
	"os"
	"testing"

	"github.com/stockpot-go/cache/internal/testredis"
)

// TestMain stops the cluster that testredis.Run shares between the tests.
func TestMain(m *testing.M) { os.Exit(testredis.Main(m)) }

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
