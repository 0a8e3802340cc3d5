// Command production shows how a service wires stockpot for production:
// a go-redis client with short timeouts and OpenTelemetry tracing and
// metrics (redisotel), a Manager with a logger, an OpenTelemetry Observer
// (otelcache), and its Stats served to Prometheus at /metrics (promcache).
//
// It serves GET /price?item=NAME, a memoized lookup, and /metrics on
// 127.0.0.1:8081, printing its spans to standard output. With REDIS_ADDR
// unset it runs on an in-process miniredis.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/otelcache"
	"github.com/stockpot-go/cache/promcache"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8081", "`address` the HTTP server listens on")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "production:", err)
		os.Exit(1)
	}
	fmt.Printf("serving http://%s/price?item=gelato and /metrics until Ctrl-C\n", ln.Addr())
	if err := run(ctx, ln, os.Stdout); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "production:", err)
		os.Exit(1)
	}
}

// run serves on ln until ctx ends, writing spans to spans.
func run(ctx context.Context, ln net.Listener, spans io.Writer) error {
	// Tracing: here to standard output; in production an OTLP exporter.
	exporter, err := stdouttrace.New(stdouttrace.WithWriter(spans))
	if err != nil {
		return err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	defer tp.Shutdown(context.Background())

	redisAddr := os.Getenv("REDIS_ADDR")
	if redisAddr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		redisAddr = mr.Addr()
	}
	// Short client timeouts: a Redis that does not answer costs a caller
	// little (the Manager's own budget, Options.Timeout, bounds each
	// operation too); see the README's "What to set on the client".
	rdb := redis.NewClient(&redis.Options{
		Addr:         redisAddr,
		DialTimeout:  time.Second,
		ReadTimeout:  500 * time.Millisecond,
		WriteTimeout: 500 * time.Millisecond,
		PoolTimeout:  time.Second,
	})
	defer rdb.Close()
	// redisotel adds its hooks to the client you give it: a span per
	// Redis command, under the cache's spans.
	if err := redisotel.InstrumentTracing(rdb, redisotel.WithTracerProvider(tp)); err != nil {
		return err
	}

	obs, err := otelcache.NewObserver(&otelcache.Options{TracerProvider: tp})
	if err != nil {
		return err
	}
	m, err := cache.New(rdb, &cache.Options{
		Prefix:   "shop",
		Observer: obs,
		Logger:   slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	defer m.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(promcache.NewCollector(m, nil))

	price := cache.Memoize(m, "price", func(ctx context.Context, item string) (int, error) {
		time.Sleep(10 * time.Millisecond) // the database
		return 100 * len(item), nil
	}, cache.TTL(time.Minute))

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /price", func(w http.ResponseWriter, r *http.Request) {
		ctx, span := tp.Tracer("shop").Start(r.Context(), "GET /price")
		defer span.End()
		p, err := price.Get(ctx, r.URL.Query().Get("item"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, p)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return ctx.Err()
}
