package cache_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache"
)

func ExampleManager_WarmAll() {
	// An in-process Redis for the example; a service passes its own client.
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	m, err := cache.New(rdb, &cache.Options{Prefix: "scoopjoy"})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	ctx := context.Background()

	// The dashboard's summary, under a plain key.
	_ = m.Warm("dashboard_summary", func(ctx context.Context) (int, error) {
		return 1, m.Set(ctx, "dashboard_summary", Summary{Invoices: 1200, Revenue: 35210.5}, cache.TTL(time.Hour))
	})

	// Every outlet's metrics, one field each, overwritten in place.
	metrics := cache.NewHash[OutletMetrics](m, "outlet_metrics", cache.TTL(time.Hour))
	_ = metrics.WarmWith(func(ctx context.Context) (map[string]OutletMetrics, error) {
		return map[string]OutletMetrics{
			"Mumbai-07": {Orders: 412, Revenue: 391444},
			"Pune-03":   {Orders: 198, Revenue: 187020},
		}, nil
	})

	// The leaderboard of each region, refreshed while readers keep the old one.
	leaderboard := cache.Memoize(m, "franchise_leaderboard", func(ctx context.Context, q LeaderboardQuery) ([]Row, error) {
		return []Row{{Outlet: q.Region + "-07", Revenue: 391444}}, nil
	}, cache.TTL(24*time.Hour))
	_ = leaderboard.WarmWith(func(ctx context.Context) ([]LeaderboardQuery, error) {
		return []LeaderboardQuery{{"Mumbai", 20}, {"Pune", 20}, {"Delhi", 20}}, nil
	})

	// A job that fails is reported; the others are warmed all the same.
	errDown := errors.New("trending service unavailable")
	_ = m.Warm("trending_items", func(ctx context.Context) (int, error) { return 0, errDown })

	report, err := m.WarmAll(ctx)
	for _, job := range report.Jobs {
		fmt.Println(job.Name, job.Entries, job.Err)
	}
	fmt.Println(errors.Is(err, errDown))

	om, _ := metrics.Get(ctx, "Pune-03")
	rows, _ := leaderboard.Get(ctx, LeaderboardQuery{"Delhi", 20})
	fmt.Println(om, rows)
	// Output:
	// dashboard_summary 1 <nil>
	// hash:outlet_metrics 2 <nil>
	// memo:franchise_leaderboard 3 <nil>
	// trending_items 0 trending service unavailable
	// true
	// {198 187020} [{Delhi-07 391444}]
}

func ExampleManager_WarmEvery() {
	// An in-process Redis for the example; a service passes its own client.
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	m, err := cache.New(rdb, &cache.Options{Prefix: "scoopjoy"})
	if err != nil {
		panic(err)
	}
	defer m.Close()

	_ = m.Warm("dashboard_summary", func(ctx context.Context) (int, error) {
		return 1, m.Set(ctx, "dashboard_summary", Summary{Invoices: 1200, Revenue: 35210.5}, cache.TTL(25*time.Hour))
	})

	// Warm at once, then daily; across the fleet, one Manager warms a day.
	stop := m.WarmEvery(24 * time.Hour)
	defer stop()

	// The start-up warm runs in the background; a service goes on serving,
	// and the example waits for its report, 10 seconds at most.
	timeout := time.After(10 * time.Second)
	report, ok := m.LastWarm()
	for !ok {
		select {
		case <-timeout:
			panic("the start-up warm did not report within 10 seconds")
		case <-time.After(time.Millisecond):
		}
		report, ok = m.LastWarm()
	}
	for _, job := range report.Jobs {
		fmt.Println(job.Name, job.Entries, job.Err)
	}
	// Output:
	// dashboard_summary 1 <nil>
}
