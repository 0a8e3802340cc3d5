package cache

import (
	"os"
	"testing"

	"github.com/stockpot-go/cache/internal/testredis"
)

// TestMain stops the cluster that testredis.Run shares between the tests.
func TestMain(m *testing.M) { os.Exit(testredis.Main(m)) }
