package promcache_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/promcache"
)

func ExampleNewCollector() {
	mr, err := miniredis.Run() // your Redis
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	m, err := cache.New(rdb, &cache.Options{Prefix: "shop"})
	if err != nil {
		panic(err)
	}
	defer m.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(promcache.NewCollector(m, nil))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	price := cache.Memoize(m, "price", func(ctx context.Context, item string) (int, error) {
		return len(item) * 100, nil
	})
	for range 3 {
		if _, err := price.Get(context.Background(), "gelato"); err != nil {
			panic(err)
		}
	}

	// What Prometheus reads from /metrics:
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	lines := bufio.NewScanner(rec.Body)
	for lines.Scan() {
		if l := lines.Text(); strings.HasPrefix(l, "stockpot_hits_total") || strings.HasPrefix(l, "stockpot_misses_total") {
			fmt.Println(l)
		}
	}
	// Output:
	// stockpot_hits_total{name="keys"} 0
	// stockpot_hits_total{name="locks"} 0
	// stockpot_hits_total{name="memo:price"} 2
	// stockpot_misses_total{name="keys"} 0
	// stockpot_misses_total{name="locks"} 0
	// stockpot_misses_total{name="memo:price"} 1
}
