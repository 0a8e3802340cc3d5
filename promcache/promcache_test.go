package promcache_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/cachetest"
	"github.com/stockpot-go/cache/promcache"
	"github.com/stretchr/testify/require"
)

// traffic makes a known set of events on m: on memo "board" 2 misses and
// 2 loads (the first fails), then 2 hits; on "keys" 1 set, 1 hit, 1 miss;
// an invalidation of a tag and a key; one lock.
func traffic(t *testing.T, m *cache.Manager) {
	t.Helper()
	ctx := t.Context()
	fail := true
	board := cache.Memoize(m, "board", func(ctx context.Context, region string) (int, error) {
		if fail {
			fail = false
			return 0, errors.New("upstream down")
		}
		return len(region), nil
	})
	_, err := board.Get(ctx, "Mumbai")
	require.Error(t, err)
	for range 3 {
		_, err = board.Get(ctx, "Mumbai")
		require.NoError(t, err)
	}
	require.NoError(t, m.Set(ctx, "k", "v"))
	var s string
	require.NoError(t, m.Get(ctx, "k", &s))
	require.ErrorIs(t, m.Get(ctx, "absent", &s), cache.ErrMiss)
	require.NoError(t, m.Invalidate(ctx, cache.Tag("sales"), cache.Key("k")))
	require.NoError(t, m.WithLock(ctx, "job", time.Second, func(ctx context.Context) error { return nil }))
}

// TestScrapeMatchesStats scrapes the collector through promhttp and checks
// the series against what the traffic made, and that every one of them
// follows Prometheus's naming conventions.
func TestScrapeMatchesStats(t *testing.T) {
	env := cachetest.New(t, nil)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(promcache.NewCollector(env.Manager, nil))
	traffic(t, env.Manager)

	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}))
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, line := range []string{
		`stockpot_misses_total{name="memo:board"} 2`,
		`stockpot_loads_total{name="memo:board"} 2`,
		`stockpot_load_errors_total{name="memo:board"} 1`,
		`stockpot_hits_total{name="memo:board"} 2`,
		`stockpot_sets_total{name="keys"} 1`,
		`stockpot_hits_total{name="keys"} 1`,
		`stockpot_misses_total{name="keys"} 1`,
		`stockpot_locks_obtained_total{name="locks"} 1`,
		`stockpot_invalidations_total{kind="tag"} 1`,
		`stockpot_invalidations_total{kind="key"} 1`,
		`stockpot_breaker_state{state="closed"} 1`,
		`stockpot_breaker_state{state="open"} 0`,
		`stockpot_local_subscribed 0`,
		`# TYPE stockpot_hits_total counter`,
		`# TYPE stockpot_invalidations_pending gauge`,
	} {
		if !strings.Contains(string(body), line+"\n") {
			t.Errorf("the scrape lacks %q; it is:\n%s", line, body)
		}
	}

	problems, err := testutil.CollectAndLint(promcache.NewCollector(env.Manager, nil))
	require.NoError(t, err)
	require.Empty(t, problems, "metrics that break Prometheus's naming conventions")
}

// TestCollectAndCompare checks whole metric families, HELP and TYPE
// included, with testutil.
func TestCollectAndCompare(t *testing.T) {
	env := cachetest.New(t, nil)
	c := promcache.NewCollector(env.Manager, &promcache.Options{
		Namespace: "shop", ConstLabels: prometheus.Labels{"manager": "sessions"},
	})
	traffic(t, env.Manager)
	want := `
# HELP shop_loads_total Loader calls, counted as they start.
# TYPE shop_loads_total counter
shop_loads_total{manager="sessions",name="keys"} 0
shop_loads_total{manager="sessions",name="locks"} 0
shop_loads_total{manager="sessions",name="memo:board"} 2
# HELP shop_invalidation_events_total Emit calls; known="false" for events with no rule.
# TYPE shop_invalidation_events_total counter
shop_invalidation_events_total{known="false",manager="sessions"} 0
shop_invalidation_events_total{known="true",manager="sessions"} 0
`
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want),
		"shop_loads_total", "shop_invalidation_events_total"))
}

// TestEveryCounterExported fails when cache.Counters gains a field the
// collector does not export: the metric list must follow the struct.
func TestEveryCounterExported(t *testing.T) {
	env := cachetest.New(t, nil)
	traffic(t, env.Manager)
	c := promcache.NewCollector(env.Manager, nil)
	fields := reflect.TypeFor[cache.Counters]().NumField()
	families := map[string]bool{}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "name" {
					families[mf.GetName()] = true
				}
			}
		}
	}
	require.Len(t, families, fields, "one family labelled by name per field of cache.Counters")
	// Each of those families' totals is the Stats field's total.
	total := env.Manager.Stats().Total
	v := reflect.ValueOf(total)
	var sums []uint64
	for i := range fields {
		sums = append(sums, v.Field(i).Uint())
	}
	var got []uint64
	for _, name := range []string{"hits", "stale_hits", "local_hits", "misses", "negative_hits", "loads",
		"load_errors", "shared_waits", "lease_waits", "voided_stores", "sets", "deletes", "decode_errors",
		"redis_errors", "degraded_reads", "refreshes_started", "refreshes_succeeded", "refreshes_failed",
		"refreshes_dropped", "early_refreshes", "locks_obtained", "lock_waits", "locks_lost"} {
		got = append(got, uint64(sumOf(mfs, "stockpot_"+name+"_total")))
	}
	require.Equal(t, sums, got, "sum over names of each counter, in the order of cache.Counters' fields")
}

// TestScrapeDuringTraffic scrapes while readers run, for the race
// detector, and checks that counters never go down between scrapes.
func TestScrapeDuringTraffic(t *testing.T) {
	env := cachetest.New(t, nil)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(promcache.NewCollector(env.Manager, nil))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	board := cache.Memoize(env.Manager, "board", func(ctx context.Context, n int) (int, error) { return n, nil })
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				_, _ = board.Get(ctx, (g*1000+i)%50)
			}
		})
	}
	// At least 20 scrapes, and on until one has seen a read: a scrape
	// can come before the readers' first call has returned.
	last := 0.0
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 20 || (last == 0 && time.Now().Before(deadline)); i++ {
		mfs, err := reg.Gather()
		require.NoError(t, err)
		n := 0.0
		for _, name := range []string{"stockpot_hits_total", "stockpot_misses_total"} {
			n += sumOf(mfs, name)
		}
		require.GreaterOrEqual(t, n, last, "reads counted went down between scrapes")
		last = n
	}
	cancel()
	wg.Wait()
	require.Positive(t, last, "no read counted in 10 s of scrapes")
}

// sumOf returns the sum of the counter family name's series in mfs.
func sumOf(mfs []*dto.MetricFamily, name string) float64 {
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
