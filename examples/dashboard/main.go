// Command dashboard is a franchise sales dashboard cached with stockpot,
// over a generated month of invoices large enough that computing its
// figures really costs time:
//
//   - the summary under a plain key (cache.GetOrLoad, 1 h);
//   - per-outlet metrics in one Redis hash, a field per outlet (cache.NewHash);
//   - trending items (5 min) and today's order count (30 s, where 0 is a value);
//   - a leaderboard memoized per (region, limit), tagged by region (cache.Memoize);
//   - invoice events that invalidate only what an invoice changed (m.OnEvent, m.Emit);
//   - warming at start-up and daily (m.WarmAll, m.WarmEvery);
//   - the Manager's events fed to expvar by an Observer, served at /debug/vars;
//   - its Stats served to Prometheus at /metrics (promcache).
//
// It prints a scripted demo, then serves the dashboard over HTTP until
// Ctrl-C. With -demo (or DASHBOARD_DEMO=1) it exits after the demo. With
// REDIS_ADDR unset it runs on an in-process miniredis.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"expvar"
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
	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache"
)

type config struct {
	addr     string // where the HTTP server listens
	demo     bool   // run the demo and exit
	local    bool   // turn on the local tier
	invoices int    // how many invoices to generate
}

func main() {
	var cfg config
	flag.StringVar(&cfg.addr, "addr", "127.0.0.1:8080", "`address` the HTTP server listens on")
	flag.BoolVar(&cfg.demo, "demo", os.Getenv("DASHBOARD_DEMO") == "1", "run the scripted demo and exit (as DASHBOARD_DEMO=1)")
	flag.BoolVar(&cfg.local, "local", false, "turn on the in-process local tier (Options.Local)")
	flag.IntVar(&cfg.invoices, "invoices", 60_000, "how many invoices to generate")
	flag.Parse()

	// The Manager's events, served at /debug/vars as the variable "stockpot".
	obs := newExpvarObserver()
	expvar.Publish("stockpot", obs.root)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Stdout, cfg, obs)
	interrupted := ctx.Err() != nil
	stop()
	switch {
	case err != nil && interrupted:
		fmt.Println("\ninterrupted")
	case err != nil:
		fmt.Fprintln(os.Stderr, "dashboard:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer, cfg config, obs *expvarObserver) error {
	if cfg.invoices < 1 {
		return fmt.Errorf("-invoices %d: want at least 1", cfg.invoices)
	}
	fmt.Fprintln(out, "stockpot dashboard: a franchise sales dashboard cached on Redis")

	// Listen first, so that a busy port is told before anything else runs.
	var ln net.Listener
	if !cfg.demo {
		var err error
		if ln, err = listen(cfg.addr); err != nil {
			return err
		}
		defer ln.Close()
	}

	rdb, where, closeRedis, err := connect(ctx)
	if err != nil {
		return err
	}
	defer closeRedis()
	fmt.Fprintf(out, "  redis       %s\n", where)

	opts := &cache.Options{
		Prefix:   "scoopjoy",
		Observer: obs,
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if cfg.local {
		opts.Local = &cache.LocalOptions{MaxEntries: 10_000, TTL: 10 * time.Second}
	}
	m, err := cache.New(rdb, opts)
	if err != nil {
		return err
	}
	defer m.Close()

	start := time.Now()
	store := Generate(cfg.invoices, startOfDay(time.Now()))
	took := time.Since(start)
	invoices, lines := store.Len()
	fmt.Fprintf(out, "  data set    %s invoices (%s lines) of %d outlets in %d regions over %d days, generated in %s\n",
		num(invoices), num(lines), len(regionOf), len(regions), historyDays, short(took))
	if cfg.local {
		fmt.Fprintln(out, "  local tier  on: loaded reads are kept in process for up to 10s (-local)")
	}
	if ln != nil {
		fmt.Fprintf(out, "  dashboard   http://%s/ (served once the demo below has run)\n", ln.Addr())
	}

	d, err := NewDashboard(m, store)
	if err != nil {
		return err
	}
	if os.Getenv("REDIS_ADDR") != "" {
		// A clean start: an earlier run may have left entries computed
		// from invoices this run does not have.
		if err := m.Invalidate(ctx, cache.Key(keySummary), cache.Key(keyTrending), cache.Key(keyLive),
			d.metrics.AllFields(), d.leaderboard.All()); err != nil {
			return err
		}
		fmt.Fprintln(out, "  clean start the dashboard's entries an earlier run may have left are invalidated")
	}

	if err := runDemo(ctx, out, d, obs); err != nil {
		return err
	}
	if cfg.demo {
		return nil
	}
	return serve(ctx, out, ln, d, m)
}

// listen listens on addr, saying clearly when the port is taken.
func listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("%s is already in use (another dashboard still running?): stop it, or choose another address, as in -addr 127.0.0.1:8081", addr)
	}
	return ln, err
}

// connect returns a client of the Redis at REDIS_ADDR, or of a miniredis
// started in process when it is unset, and the function that closes both.
func connect(ctx context.Context) (rdb *redis.Client, where string, closeAll func(), err error) {
	addr := os.Getenv("REDIS_ADDR")
	var mr *miniredis.Miniredis
	if addr == "" {
		if mr, err = miniredis.Run(); err != nil {
			return nil, "", nil, err
		}
		addr = mr.Addr()
		where = "embedded miniredis at " + addr + " (REDIS_ADDR=host:port for your own)"
	} else {
		where = addr + " (REDIS_ADDR)"
	}
	// Short timeouts: a cache that waits seconds for Redis is no cache.
	rdb = redis.NewClient(&redis.Options{
		Addr:         addr,
		DialTimeout:  time.Second,
		ReadTimeout:  200 * time.Millisecond,
		WriteTimeout: 200 * time.Millisecond,
	})
	closeAll = func() {
		_ = rdb.Close()
		if mr != nil {
			mr.Close()
		}
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		closeAll()
		return nil, "", nil, fmt.Errorf("cannot reach Redis at %s (REDIS_ADDR): %w; unset REDIS_ADDR for an embedded miniredis", addr, err)
	}
	return rdb, where, closeAll, nil
}

// serve serves the dashboard on ln until ctx ends, with the daily warming
// running, then shuts down: the HTTP server first (letting requests in
// flight finish), then the warming. The caller closes the rest.
func serve(ctx context.Context, out io.Writer, ln net.Listener, d *Dashboard, m *cache.Manager) error {
	token := os.Getenv("DASHBOARD_ADMIN_TOKEN")
	shownToken := "$DASHBOARD_ADMIN_TOKEN"
	if token == "" {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		token = hex.EncodeToString(b)
		shownToken = token
	}

	// Warm daily. One instance of a fleet warms a period, the first to
	// claim it in Redis: this one, now, unless another has warmed today.
	stopWarming := m.WarmEvery(24 * time.Hour)
	defer stopWarming()

	s := &server{d: d, m: m, token: token, log: out}
	srv := &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	base := "http://" + ln.Addr().String()
	fmt.Fprintf(out, "\n-- serving on %s until Ctrl-C; warming daily with m.WarmEvery(24h) --\n", base)
	fmt.Fprintf(out, "  dashboard   %s/\n", base)
	fmt.Fprintf(out, "  api         curl -s '%s/api/dashboard?region=Pune&limit=5'\n", base)
	fmt.Fprintf(out, "  submit      curl -s -X POST -d '{\"outlet\":\"Delhi-07\",\"item\":\"Sitaphal\",\"amount\":150}' %s/api/invoices\n", base)
	fmt.Fprintf(out, "  cancel      curl -s -X POST %s/api/invoices/ID/cancel\n", base)
	fmt.Fprintf(out, "  admin       curl -s -H 'Authorization: Bearer %s' %s/admin/stats\n", shownToken, base)
	fmt.Fprintf(out, "  metrics     %s/debug/vars (expvar \"stockpot\", fed by Options.Observer)\n", base)

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	fmt.Fprintln(out, "\nshutting down: the HTTP server, the daily warming, the Manager, Redis")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("HTTP server shutdown: %w", err)
	}
	return nil
}
