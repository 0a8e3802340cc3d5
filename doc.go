// Package cache is stockpot, a cache for Go services on Redis that gets the
// hard parts right: one load per key across a fleet (no stampedes), no stale
// value stored after an invalidation, Redis down is not an outage, and bad
// input gets a clear error.
//
// A service builds one Manager over its go-redis client at start-up:
//
//	m, err := cache.New(rdb, &cache.Options{Prefix: "scoopjoy"})
//	if err != nil { ... }
//	defer m.Close()
//
// Key-value caching with jittered TTLs, zero values as hits, and a typed
// Redis hash with one field per outlet:
//
//	err = m.Set(ctx, "dashboard_summary", summary, cache.TTL(time.Hour))
//	s, err := cache.GetOrLoad(ctx, m, "dashboard_summary", computeSummary)
//	metrics := cache.NewHash[OutletMetrics](m, "outlet_metrics", cache.TTL(time.Hour))
//	om, err := metrics.GetOrLoad(ctx, "outlet-42", computeOutletMetrics)
//
// A memoized function, computed once per argument across the fleet, and
// stale-while-revalidate for slow upstreams:
//
//	leaderboard := cache.Memoize(m, "leaderboard", computeLeaderboard, cache.TTL(10*time.Minute))
//	rows, err := leaderboard.Get(ctx, LeaderboardQuery{Region: "Mumbai", Limit: 20})
//	tweets := cache.Memoize(m, "tweets", fetchTweets, cache.TTL(15*time.Minute), cache.StaleFor(24*time.Hour))
//
// Invalidation of keys, hash fields, memo entries, tags and prefixes in one
// call, and from application events:
//
//	err = m.Invalidate(ctx, cache.Key("dashboard_summary"), metrics.Field("outlet-42"), leaderboard.All())
//	m.OnEvent("invoice.submitted", rule)
//	err = m.Emit(ctx, "invoice.submitted", invoice)
//
// Warming, distributed locks with fencing tokens, an optional in-process
// tier (Options.Local; in strict mode it keeps the guarantee above across
// the fleet, under read leases), a time budget for each operation's Redis work
// (Options.Timeout) and circuit breakers (Options.Breaker) that keep a slow
// or dead Redis from becoming an outage, counters (Stats) and an Observer
// for metrics complete it:
//
//	m.Warm("dashboard", warmDashboard); stop := m.WarmEvery(24 * time.Hour)
//	err = m.WithLock(ctx, "order:42", 10*time.Second, processOrder)
//
// Every value is stored in a small envelope (see the internal/envelope
// package for its byte layout) encoded with Options.Codec, MessagePack by
// default. Every key carries a Redis Cluster hash tag, so the scripts that
// read an entry together with its lease and generation touch one slot.
// A memo's entries share its slot, so that ForgetAll is one command; a
// memo too large for one node of a cluster is spread over several slots
// with Shards.
// Package cachetest gives tests a Manager on an in-process Redis with a
// clock they control.
package cache
