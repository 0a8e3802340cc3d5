package otelcache_test

import (
	"context"
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/otelcache"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func ExampleNewObserver() {
	mr, err := miniredis.Run() // your Redis
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	// Your tracer provider (here one that keeps the spans in memory); nil
	// Options use the global providers.
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	obs, err := otelcache.NewObserver(&otelcache.Options{TracerProvider: tp})
	if err != nil {
		panic(err)
	}
	m, err := cache.New(rdb, &cache.Options{Prefix: "shop", Observer: obs})
	if err != nil {
		panic(err)
	}
	defer m.Close()

	price := cache.Memoize(m, "price", func(ctx context.Context, item string) (int, error) {
		return len(item) * 100, nil
	})
	ctx, request := tp.Tracer("shop").Start(context.Background(), "GET /price")
	for range 2 {
		if _, err := price.Get(ctx, "gelato"); err != nil {
			panic(err)
		}
	}
	request.End()

	for _, s := range spans.Ended() {
		parent := "(root)"
		if s.Parent().SpanID() == request.SpanContext().SpanID() {
			parent = "under GET /price"
		}
		fmt.Println(s.Name(), parent)
	}
	// Output:
	// stockpot.load under GET /price
	// GET /price (root)
}
