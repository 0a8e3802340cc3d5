package main

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/stockpot-go/cache"
)

// The cached parts of the dashboard: their keys and how long they live.
const (
	keySummary  = "dashboard_summary" // a plain key, cache.GetOrLoad
	keyTrending = "trending_items"
	keyLive     = "live_order_count"

	summaryTTL     = time.Hour
	metricsTTL     = time.Hour
	trendingTTL    = 5 * time.Minute
	liveTTL        = 30 * time.Second
	leaderboardTTL = 10 * time.Minute
)

// The application events that make the dashboard stale.
const (
	eventSubmitted = "invoice.submitted"
	eventCancelled = "invoice.cancelled"
)

// Dashboard reads the dashboard through the cache, and submits and cancels
// invoices, invalidating what each one changes.
type Dashboard struct {
	m           *cache.Manager
	store       *Store
	metrics     *cache.Hash[OutletMetrics]           // one Redis hash, a field per outlet
	leaderboard *cache.Memo[LeaderboardQuery, []Row] // an entry per (region, limit)
	outlets     []string                             // every outlet, region by region
}

// NewDashboard wires the store to the cache: the hash, the memo, the
// invalidation rules of the invoice events, and the warming jobs.
func NewDashboard(m *cache.Manager, store *Store) (*Dashboard, error) {
	d := &Dashboard{m: m, store: store, outlets: outletIDs()}
	d.metrics = cache.NewHash[OutletMetrics](m, "outlet_metrics", cache.TTL(metricsTTL), cache.RememberMissing())
	d.leaderboard = cache.Memoize(m, "franchise_leaderboard", d.loadLeaderboard,
		cache.TTL(leaderboardTTL), cache.TagsFor(leaderboardTags))

	m.OnEvent(eventSubmitted, d.invalidation)
	m.OnEvent(eventCancelled, d.invalidation)

	return d, errors.Join(
		// The summary is computed and stored under the store's read lock,
		// so that no invoice lands between the two: one that is submitted
		// meanwhile waits, and its Emit comes after the Set.
		m.Warm(keySummary, func(ctx context.Context) (int, error) {
			return 1, store.WithSummary(func(s Summary) error {
				return m.Set(ctx, keySummary, s, cache.TTL(summaryTTL))
			})
		}),
		// Every outlet in one scan and one HSET.
		d.metrics.WarmWith(func(context.Context) (map[string]OutletMetrics, error) {
			return store.AllOutletMetrics(), nil
		}),
		// The top ten of every region, and of all of them.
		d.leaderboard.WarmWith(func(context.Context) ([]LeaderboardQuery, error) {
			qs := []LeaderboardQuery{{Region: "", Limit: 10}}
			for _, r := range regions {
				qs = append(qs, LeaderboardQuery{Region: r, Limit: 10})
			}
			return qs, nil
		}),
	)
}

// regionTag is the tag of the cached entries computed from a region's sales.
func regionTag(region string) string { return "region:" + region }

// leaderboardTags tags a leaderboard with the regions its rows come from:
// its own, or every region for the leaderboard of all of them.
func leaderboardTags(q LeaderboardQuery) []string {
	if q.Region != "" {
		return []string{regionTag(q.Region)}
	}
	tags := make([]string, len(regions))
	for i, r := range regions {
		tags[i] = regionTag(r)
	}
	return tags
}

// invalidation is the rule of both invoice events: what an invoice changes.
func (d *Dashboard) invalidation(_ context.Context, payload any) []cache.Target {
	inv, ok := payload.(Invoice)
	if !ok {
		return nil
	}
	return []cache.Target{
		cache.Key(keySummary),
		d.metrics.Field(inv.Outlet), // that outlet's field only; the others stay
		cache.Key(keyTrending),
		cache.Key(keyLive),
		cache.Tag(regionTag(inv.Region)), // the leaderboards that rank its region
	}
}

// Submit records an invoice, then invalidates what it changed.
func (d *Dashboard) Submit(ctx context.Context, n NewInvoice) (Invoice, error) {
	inv, err := d.store.Submit(n)
	if err != nil {
		return Invoice{}, err
	}
	return inv, d.emit(ctx, eventSubmitted, inv)
}

// Cancel cancels an invoice, then invalidates what it changed.
func (d *Dashboard) Cancel(ctx context.Context, id int) (Invoice, error) {
	inv, err := d.store.Cancel(id)
	if err != nil {
		return Invoice{}, err
	}
	return inv, d.emit(ctx, eventCancelled, inv)
}

// emit tells the cache of an invoice event. The invoice is already
// recorded, so its invalidation goes on when the caller's ctx ends (an HTTP
// client that went away): only a timeout stops it.
func (d *Dashboard) emit(ctx context.Context, event string, inv Invoice) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	return d.m.Emit(ctx, event, inv)
}

// The loaders: each counts its call in the context's load counter (see
// countLoads) and computes from the store.

func (d *Dashboard) loadSummary(ctx context.Context) (Summary, error) {
	countLoad(ctx)
	return d.store.Summary(), nil
}

// loadOutlets computes the metrics of outlets, one entry each, in one
// scan of the invoices when there are several; an unknown outlet is left
// out (and remembered as not found: see RememberMissing in New).
func (d *Dashboard) loadOutlets(ctx context.Context, outlets []string) (map[string]OutletMetrics, error) {
	countLoadN(ctx, len(outlets))
	out := make(map[string]OutletMetrics, len(outlets))
	if len(outlets) == 1 {
		if m, ok := d.store.OutletMetrics(outlets[0]); ok {
			out[outlets[0]] = m
		}
		return out, nil
	}
	all := d.store.AllOutletMetrics()
	for _, o := range outlets {
		if m, ok := all[o]; ok {
			out[o] = m
		}
	}
	return out, nil
}

func (d *Dashboard) loadTrending(ctx context.Context) ([]TrendingItem, error) {
	countLoad(ctx)
	return d.store.Trending(), nil
}

func (d *Dashboard) loadLive(ctx context.Context) (int, error) {
	countLoad(ctx)
	return d.store.LiveOrders(), nil
}

func (d *Dashboard) loadLeaderboard(ctx context.Context, q LeaderboardQuery) ([]Row, error) {
	countLoad(ctx)
	return d.store.Leaderboard(q), nil
}

// loadsKey is the context key of a read's load counter.
type loadsKey struct{}

// countLoads returns ctx with a counter that the loaders called under it
// add to. A loader runs under a context that keeps its first caller's
// values, so the counter tells whether a read computed its value or got it
// from the cache. A read that joined another caller's load in flight is
// counted as one the cache answered.
func countLoads(ctx context.Context) (context.Context, *atomic.Int64) {
	n := new(atomic.Int64)
	return context.WithValue(ctx, loadsKey{}, n), n
}

func countLoad(ctx context.Context) { countLoadN(ctx, 1) }

// countLoadN counts n entries computed.
func countLoadN(ctx context.Context, n int) {
	if c, ok := ctx.Value(loadsKey{}).(*atomic.Int64); ok {
		c.Add(int64(n))
	}
}

// Served says how one part of a read was served.
type Served struct {
	Part     string        `json:"part"`
	Computed int           `json:"computed"` // entries computed by this read
	Cached   int           `json:"cached"`   // entries the cache answered
	Took     time.Duration `json:"-"`
	TookUS   int64         `json:"took_us"`
}

func newServed(part string, computed, cached int, took time.Duration) Served {
	return Served{Part: part, Computed: computed, Cached: cached, Took: took, TookUS: took.Microseconds()}
}

// measure runs get, one cached read, and reports how it was served.
func measure[T any](ctx context.Context, part string, get func(context.Context) (T, error)) (T, Served, error) {
	ctx, loads := countLoads(ctx)
	start := time.Now()
	v, err := get(ctx)
	took := time.Since(start)
	if loads.Load() > 0 {
		return v, newServed(part, 1, 0, took), err
	}
	return v, newServed(part, 0, 1, took), err
}

// Summary returns the summary: cache-aside under a plain key.
func (d *Dashboard) Summary(ctx context.Context) (Summary, Served, error) {
	return measure(ctx, "summary", func(ctx context.Context) (Summary, error) {
		return cache.GetOrLoad(ctx, d.m, keySummary, d.loadSummary, cache.TTL(summaryTTL))
	})
}

// Trending returns the trending items, which live five minutes.
func (d *Dashboard) Trending(ctx context.Context) ([]TrendingItem, Served, error) {
	return measure(ctx, "trending items", func(ctx context.Context) ([]TrendingItem, error) {
		return cache.GetOrLoad(ctx, d.m, keyTrending, d.loadTrending, cache.TTL(trendingTTL))
	})
}

// LiveOrders returns today's order count, which lives 30 seconds. 0 is a
// value like any other: cached, and a hit.
func (d *Dashboard) LiveOrders(ctx context.Context) (int, Served, error) {
	return measure(ctx, "live order count", func(ctx context.Context) (int, error) {
		return cache.GetOrLoad(ctx, d.m, keyLive, d.loadLive, cache.TTL(liveTTL))
	})
}

// Leaderboard returns the memoized leaderboard of q.
func (d *Dashboard) Leaderboard(ctx context.Context, q LeaderboardQuery) ([]Row, Served, error) {
	region := q.Region
	if region == "" {
		region = "all"
	}
	return measure(ctx, "leaderboard "+region, func(ctx context.Context) ([]Row, error) {
		return d.leaderboard.Get(ctx, q)
	})
}

// Outlets returns every outlet's metrics with one batch read: the fields
// the hash holds in one round trip, and one load for all those it lacks
// (from the loader alone if Redis is down).
func (d *Dashboard) Outlets(ctx context.Context) ([]OutletMetrics, Served, error) {
	start := time.Now()
	ctx, loads := countLoads(ctx)
	all, err := d.metrics.GetOrLoadMany(ctx, d.outlets, d.loadOutlets)
	if err != nil {
		return nil, Served{}, err
	}
	out := make([]OutletMetrics, 0, len(d.outlets))
	for _, o := range d.outlets {
		out = append(out, all[o])
	}
	computed := int(loads.Load())
	return out, newServed("outlet metrics", computed, len(d.outlets)-computed, time.Since(start)), nil
}

// View is the whole dashboard, as GET /api/dashboard answers it.
type View struct {
	Summary     Summary         `json:"summary"`
	Outlets     []OutletMetrics `json:"outlets"`
	Trending    []TrendingItem  `json:"trending"`
	LiveOrders  int             `json:"live_order_count"`
	Leaderboard struct {
		Query LeaderboardQuery `json:"query"`
		Rows  []Row            `json:"rows"`
	} `json:"leaderboard"`
	// Served says how each part was served, in the order it was read.
	Served []Served      `json:"served"`
	Took   time.Duration `json:"-"`
	TookUS int64         `json:"took_us"`
}

// Read reads the whole dashboard, with the leaderboard of q.
func (d *Dashboard) Read(ctx context.Context, q LeaderboardQuery) (View, error) {
	var v View
	start := time.Now()
	s := make([]Served, 5)
	errs := make([]error, 5)
	v.Summary, s[0], errs[0] = d.Summary(ctx)
	v.Outlets, s[1], errs[1] = d.Outlets(ctx)
	v.Trending, s[2], errs[2] = d.Trending(ctx)
	v.LiveOrders, s[3], errs[3] = d.LiveOrders(ctx)
	v.Leaderboard.Query = q
	v.Leaderboard.Rows, s[4], errs[4] = d.Leaderboard(ctx, q)
	v.Served = s
	v.Took = time.Since(start)
	v.TookUS = v.Took.Microseconds()
	return v, errors.Join(errs...)
}
