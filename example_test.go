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

type Summary struct {
	Invoices int
	Revenue  float64
}

func ExampleManager_Set() {
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

	_ = m.Set(ctx, "dashboard_summary", Summary{Invoices: 1200, Revenue: 35210.5}, cache.TTL(time.Hour))
	s, err := cache.Get[Summary](ctx, m, "dashboard_summary")
	fmt.Println(s, err)

	_, err = cache.Get[Summary](ctx, m, "no_such_key")
	fmt.Println(errors.Is(err, cache.ErrMiss))

	// Zero values are hits.
	_ = m.Set(ctx, "live_order_count", 0, cache.TTL(30*time.Second))
	n, err := cache.Get[int](ctx, m, "live_order_count")
	fmt.Println(n, err)
	// Output:
	// {1200 35210.5} <nil>
	// true
	// 0 <nil>
}

func ExampleGetOrLoad() {
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

	computeSummary := func(ctx context.Context) (Summary, error) {
		fmt.Println("computing the summary")
		return Summary{Invoices: 1200, Revenue: 35210.5}, nil
	}
	for range 2 {
		s, err := cache.GetOrLoad(ctx, m, "dashboard_summary", computeSummary, cache.TTL(time.Hour))
		fmt.Println(s, err)
	}
	// Output:
	// computing the summary
	// {1200 35210.5} <nil>
	// {1200 35210.5} <nil>
}

type OutletMetrics struct {
	Orders  int
	Revenue float64
}

func ExampleNewHash() {
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

	metrics := cache.NewHash[OutletMetrics](m, "outlet_metrics", cache.TTL(time.Hour))
	_ = metrics.SetMany(ctx, map[string]OutletMetrics{
		"outlet-41": {Orders: 12, Revenue: 480},
		"outlet-42": {Orders: 0, Revenue: 0},
	})
	om, err := metrics.GetOrLoad(ctx, "outlet-43", func(ctx context.Context, outlet string) (OutletMetrics, error) {
		return OutletMetrics{Orders: 3, Revenue: 99}, nil
	})
	fmt.Println(om, err)

	_ = metrics.Delete(ctx, "outlet-41") // only that outlet's field
	all, _ := metrics.All(ctx)
	fmt.Println(len(all), all["outlet-42"], all["outlet-43"])
	// Output:
	// {3 99} <nil>
	// 2 {0 0} {3 99}
}

type LeaderboardQuery struct {
	Region string
	Limit  int
}

type Row struct {
	Outlet  string
	Revenue float64
}

func ExampleMemoize() {
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

	computeLeaderboard := func(ctx context.Context, q LeaderboardQuery) ([]Row, error) {
		fmt.Println("computing", q.Region, q.Limit)
		return []Row{{"Mumbai-07", 391444}, {"Mumbai-00", 389257}}[:q.Limit], nil
	}
	leaderboard := cache.Memoize(m, "franchise_leaderboard", computeLeaderboard, cache.TTL(10*time.Minute))

	rows, _ := leaderboard.Get(ctx, LeaderboardQuery{Region: "Mumbai", Limit: 2})
	fmt.Println(rows)
	rows, _ = leaderboard.Get(ctx, LeaderboardQuery{Region: "Mumbai", Limit: 2}) // cached
	fmt.Println(rows)
	rows, _ = leaderboard.Get(ctx, LeaderboardQuery{Region: "Mumbai", Limit: 1}) // another argument
	fmt.Println(rows)

	_ = leaderboard.ForgetAll(ctx) // every argument, one command
	rows, _ = leaderboard.Get(ctx, LeaderboardQuery{Region: "Mumbai", Limit: 1})
	fmt.Println(rows)
	// Output:
	// computing Mumbai 2
	// [{Mumbai-07 391444} {Mumbai-00 389257}]
	// [{Mumbai-07 391444} {Mumbai-00 389257}]
	// computing Mumbai 1
	// [{Mumbai-07 391444}]
	// computing Mumbai 1
	// [{Mumbai-07 391444}]
}

func ExampleMemo_Refresh() {
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

	version := 1
	menu := cache.Memoize(m, "menu", func(ctx context.Context, outlet string) (int, error) {
		return version, nil
	})
	v, _ := menu.Get(ctx, "outlet-42")
	fmt.Println(v)
	version = 2
	v, _ = menu.Refresh(ctx, "outlet-42") // readers keep the old value until this stores the new one
	fmt.Println(v)
	v, _ = menu.Get(ctx, "outlet-42")
	fmt.Println(v)
	// Output:
	// 1
	// 2
	// 2
}

func ExampleGetOrLoad_notFound() {
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

	findCustomer := func(ctx context.Context) (string, error) {
		fmt.Println("querying the database")
		return "", cache.ErrNotFound // remembered for Options.NegativeTTL
	}
	for range 2 {
		_, err := cache.GetOrLoad(ctx, m, "customer:404", findCustomer)
		fmt.Println(err)
	}
	// Output:
	// querying the database
	// cache: not found
	// cache: not found
}

type Invoice struct {
	Outlet string
	Amount float64
}

func ExampleManager_OnEvent() {
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

	metrics := cache.NewHash[OutletMetrics](m, "outlet_metrics", cache.TTL(time.Hour))
	// When an invoice is submitted or cancelled, the summary, the trending
	// items, the live count and that outlet's metrics are stale.
	rule := func(ctx context.Context, payload any) []cache.Target {
		inv := payload.(Invoice)
		return []cache.Target{
			cache.Key("dashboard_summary"), cache.Key("trending_items"),
			cache.Key("live_order_count"), metrics.Field(inv.Outlet),
		}
	}
	m.OnEvent("invoice.submitted", rule)
	m.OnEvent("invoice.cancelled", rule)

	_ = m.Set(ctx, "dashboard_summary", Summary{Invoices: 1200})
	_ = metrics.SetMany(ctx, map[string]OutletMetrics{"outlet-41": {Orders: 12}, "outlet-42": {Orders: 7}})

	_ = m.Emit(ctx, "invoice.submitted", Invoice{Outlet: "outlet-42", Amount: 120})

	_, err = cache.Get[Summary](ctx, m, "dashboard_summary")
	fmt.Println(err)
	all, _ := metrics.All(ctx)
	fmt.Println(all)
	// Output:
	// cache: miss
	// map[outlet-41:{12 0}]
}

func ExampleTag() {
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

	_ = m.Set(ctx, "menu:outlet-41", []string{"mango"}, cache.Tags("menu"))
	_ = m.Set(ctx, "menu:outlet-42", []string{"pista"}, cache.Tags("menu"))
	_ = m.Set(ctx, "hours:outlet-42", "10-22")

	_ = m.Invalidate(ctx, cache.Tag("menu"))
	got, _ := cache.GetMany[any](ctx, m, "menu:outlet-41", "menu:outlet-42", "hours:outlet-42")
	fmt.Println(len(got))
	// Output:
	// 1
}

func ExampleManager_Invalidate() {
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

	metrics := cache.NewHash[OutletMetrics](m, "outlet_metrics")
	leaderboard := cache.Memoize(m, "leaderboard", func(ctx context.Context, q LeaderboardQuery) ([]Row, error) {
		return []Row{{"Mumbai-07", 391444}}, nil
	})
	_ = m.Set(ctx, "dashboard_summary", Summary{Invoices: 1200})
	_ = metrics.SetMany(ctx, map[string]OutletMetrics{"outlet-41": {Orders: 12}, "outlet-42": {Orders: 7}})
	_, _ = leaderboard.Get(ctx, LeaderboardQuery{Region: "Mumbai", Limit: 1})

	// Several kinds of target in one call, one round trip.
	err = m.Invalidate(ctx,
		cache.Key("dashboard_summary"),
		metrics.Field("outlet-42"),
		leaderboard.All(),
	)
	fmt.Println(err)
	all, _ := metrics.All(ctx)
	fmt.Println(len(all), m.Stats().Invalidations.ByKind["field"])

	// Bad input invalidates nothing.
	fmt.Println(errors.Is(m.Invalidate(ctx, cache.Key("")), cache.ErrInvalidKey))
	// Output:
	// <nil>
	// 1 1
	// true
}

func ExampleStaleFor() {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	// An in-process Redis for the example; a service passes its own client.
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	m, err := cache.New(rdb, &cache.Options{Prefix: "scoopjoy", Now: func() time.Time { return now }})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	ctx := context.Background()

	version := 1
	tweets := cache.Memoize(m, "tweets", func(ctx context.Context, user string) (string, error) {
		return fmt.Sprintf("%s's tweets, v%d", user, version), nil
	}, cache.TTL(15*time.Minute), cache.Jitter(0), cache.StaleFor(24*time.Hour))

	v, _ := tweets.Get(ctx, "ana")
	fmt.Println(v)

	// 20 minutes later the entry is stale: the old value comes back at once
	// and one refresh runs in the background.
	now = now.Add(20 * time.Minute)
	version = 2
	v, _ = tweets.Get(ctx, "ana")
	fmt.Println(v)

	// Here the example waits, 10 seconds at most, for the refresh to be
	// stored; a service would just go on serving.
	timeout := time.After(10 * time.Second)
	for m.Stats().ByName["memo:tweets"].RefreshesSucceeded == 0 {
		select {
		case <-timeout:
			panic("the background refresh was not stored within 10 seconds")
		case <-time.After(time.Millisecond):
		}
	}
	v, _ = tweets.Get(ctx, "ana")
	fmt.Println(v)
	// Output:
	// ana's tweets, v1
	// ana's tweets, v1
	// ana's tweets, v2
}

func ExampleObserverFunc() {
	// Count events per kind and name, as a metrics library would.
	var mu sync.Mutex
	counts := map[string]uint64{}
	observer := cache.ObserverFunc(func(e cache.Event) {
		mu.Lock()
		defer mu.Unlock()
		counts[e.Kind.String()+" "+e.Name] += e.N
	})
	// An in-process Redis for the example; a service passes its own client.
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	m, err := cache.New(rdb, &cache.Options{Prefix: "scoopjoy", Observer: observer})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	ctx := context.Background()
	for range 3 {
		_, _ = cache.GetOrLoad(ctx, m, "summary", func(ctx context.Context) (int, error) { return 1, nil })
	}
	mu.Lock()
	defer mu.Unlock()
	fmt.Println(counts["miss keys"], counts["load keys"], counts["hit keys"])
	// Output:
	// 1 1 2
}

func ExampleLocalOptions() {
	// An in-process Redis for the example; a service passes its own client.
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	m, err := cache.New(rdb, &cache.Options{
		Prefix: "scoopjoy",
		Local:  &cache.LocalOptions{MaxEntries: 10_000, TTL: 10 * time.Second},
	})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	ctx := context.Background()

	// The local tier serves once its subscription to the fleet's
	// invalidations is up; until then reads go to Redis. A service just
	// goes on serving; the example waits for it, 10 seconds at most.
	timeout := time.After(10 * time.Second)
	for !m.Stats().Local.Subscribed {
		select {
		case <-timeout:
			panic("the local tier did not subscribe within 10 seconds")
		case <-time.After(time.Millisecond):
		}
	}

	menu := cache.Memoize(m, "menu", func(ctx context.Context, outlet string) ([]string, error) {
		return []string{"mango", "pista"}, nil
	})
	for range 3 {
		_, _ = menu.Get(ctx, "outlet-42") // a load, then two in-process hits
	}
	st := m.Stats().ByName["memo:menu"]
	fmt.Println(st.Loads, st.LocalHits)
	// Output:
	// 1 2
}
