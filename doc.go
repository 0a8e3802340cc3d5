// Package cache is stockpot, a cache for Go services on Redis that gets the
// hard parts right: one load per key across a fleet (no stampedes), no stale
// value stored after an invalidation, and clear errors for bad input.
//
// A service builds one Manager over its go-redis client at start-up:
//
//	m, err := cache.New(rdb, &cache.Options{Prefix: "scoopjoy"})
//	if err != nil { ... }
//	defer m.Close()
//
// Key-value caching, with a TTL (jittered) and zero values as hits:
//
//	err = m.Set(ctx, "dashboard_summary", summary, cache.TTL(time.Hour))
//	s, err := cache.Get[Summary](ctx, m, "dashboard_summary") // cache.ErrMiss on a miss
//	s, err = cache.GetOrLoad(ctx, m, "dashboard_summary", computeSummary)
//
// A typed Redis hash, one field per outlet:
//
//	metrics := cache.NewHash[OutletMetrics](m, "outlet_metrics", cache.TTL(time.Hour))
//	om, err := metrics.GetOrLoad(ctx, "outlet-42", computeOutletMetrics)
//
// A memoized function, computed once per argument across the fleet:
//
//	leaderboard := cache.Memoize(m, "leaderboard", computeLeaderboard, cache.TTL(10*time.Minute))
//	rows, err := leaderboard.Get(ctx, LeaderboardQuery{Region: "Mumbai", Limit: 20})
//	err = leaderboard.ForgetAll(ctx) // one command, however many entries
//
// Every value is stored in a small envelope (see the internal/envelope
// package for its byte layout) encoded with Options.Codec, MessagePack by
// default. Every key carries a Redis Cluster hash tag, so the scripts that
// read an entry together with its lease and generation touch one slot.
package cache
