// Command dashboard is a franchise sales dashboard cached with stockpot: a
// summary under a plain key, per-outlet metrics in one Redis hash, and a
// leaderboard memoized per region and limit, over a generated set of
// invoices large enough that computing them really costs time.
//
// With REDIS_ADDR unset it runs on an in-process miniredis.
package main

import (
	"cmp"
	"context"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache"
)

type invoice struct {
	Outlet string
	Region string
	Item   string
	Amount float64
}

// Summary is the dashboard's headline numbers.
type Summary struct {
	Invoices int     `json:"invoices"`
	Revenue  float64 `json:"revenue"`
}

// OutletMetrics are one outlet's numbers.
type OutletMetrics struct {
	Orders  int     `json:"orders"`
	Revenue float64 `json:"revenue"`
}

// LeaderboardQuery is the argument of the memoized leaderboard.
type LeaderboardQuery struct {
	Region string `json:"region"`
	Limit  int    `json:"limit"`
}

// Row is one line of the leaderboard.
type Row struct {
	Outlet  string  `json:"outlet"`
	Revenue float64 `json:"revenue"`
}

var (
	regions = []string{"Mumbai", "Pune", "Delhi", "Bengaluru"}
	items   = []string{"mango", "pista", "kulfi", "chikoo", "vanilla"}
)

func generate(n int) []invoice {
	r := rand.New(rand.NewPCG(1, 2))
	out := make([]invoice, n)
	for i := range out {
		region := regions[r.IntN(len(regions))]
		out[i] = invoice{
			Outlet: fmt.Sprintf("%s-%02d", region, r.IntN(12)),
			Region: region,
			Item:   items[r.IntN(len(items))],
			Amount: float64(50+r.IntN(500)) + 0.5,
		}
	}
	return out
}

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		addr = mr.Addr()
		fmt.Println("REDIS_ADDR unset: using an embedded miniredis at", addr)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()

	m, err := cache.New(rdb, &cache.Options{Prefix: "scoopjoy"})
	if err != nil {
		return err
	}
	defer m.Close()

	invoices := generate(60000)

	computeSummary := func(ctx context.Context) (Summary, error) {
		var s Summary
		for _, inv := range invoices {
			s.Invoices++
			s.Revenue += inv.Amount
		}
		return s, nil
	}
	computeOutlet := func(ctx context.Context, outlet string) (OutletMetrics, error) {
		var om OutletMetrics
		for _, inv := range invoices {
			if inv.Outlet == outlet {
				om.Orders++
				om.Revenue += inv.Amount
			}
		}
		if om.Orders == 0 {
			return om, cache.ErrNotFound
		}
		return om, nil
	}
	computeLeaderboard := func(ctx context.Context, q LeaderboardQuery) ([]Row, error) {
		byOutlet := map[string]float64{}
		for _, inv := range invoices {
			if inv.Region == q.Region {
				byOutlet[inv.Outlet] += inv.Amount
			}
		}
		rows := make([]Row, 0, len(byOutlet))
		for o, rev := range byOutlet {
			rows = append(rows, Row{o, rev})
		}
		slices.SortFunc(rows, func(a, b Row) int { return cmp.Compare(b.Revenue, a.Revenue) })
		return rows[:min(q.Limit, len(rows))], nil
	}

	metrics := cache.NewHash[OutletMetrics](m, "outlet_metrics", cache.TTL(time.Hour))
	leaderboard := cache.Memoize(m, "franchise_leaderboard", computeLeaderboard, cache.TTL(10*time.Minute))

	for round := 1; round <= 2; round++ {
		if ctx.Err() != nil {
			return nil
		}
		fmt.Printf("\n-- round %d --\n", round)
		start := time.Now()
		s, err := cache.GetOrLoad(ctx, m, "dashboard_summary", computeSummary, cache.TTL(time.Hour))
		if err != nil {
			return err
		}
		fmt.Printf("summary: %d invoices, revenue %.2f (%v)\n", s.Invoices, s.Revenue, time.Since(start).Round(time.Microsecond))

		start = time.Now()
		om, err := metrics.GetOrLoad(ctx, "Mumbai-03", computeOutlet)
		if err != nil {
			return err
		}
		fmt.Printf("outlet Mumbai-03: %d orders, %.2f (%v)\n", om.Orders, om.Revenue, time.Since(start).Round(time.Microsecond))

		start = time.Now()
		rows, err := leaderboard.Get(ctx, LeaderboardQuery{Region: "Mumbai", Limit: 3})
		if err != nil {
			return err
		}
		fmt.Printf("leaderboard Mumbai top 3: %v (%v)\n", rows, time.Since(start).Round(time.Microsecond))
	}

	fmt.Println("\n-- stats --")
	st := m.Stats()
	for _, name := range st.Names() {
		c := st.ByName[name]
		fmt.Printf("%-28s hits %d  misses %d  loads %d\n", name, c.Hits, c.Misses, c.Loads)
	}
	return nil
}
