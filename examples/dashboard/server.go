package main

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"expvar"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/promcache"
)

//go:embed index.html
var indexHTML []byte

// server is the dashboard's HTTP API, its page, and the admin endpoints.
type server struct {
	d     *Dashboard
	m     *cache.Manager
	token string    // the bearer token of /admin/stats
	log   io.Writer // where invoice events are told
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.index)
	mux.HandleFunc("GET /api/dashboard", s.dashboard)
	mux.HandleFunc("POST /api/invoices", s.submit)
	mux.HandleFunc("POST /api/invoices/{id}/cancel", s.cancel)
	mux.HandleFunc("GET /admin/stats", s.adminStats)
	mux.Handle("GET /debug/vars", expvar.Handler())
	// Prometheus reads the Manager's Stats at each scrape.
	reg := prometheus.NewRegistry()
	reg.MustRegister(promcache.NewCollector(s.m, nil))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

func (s *server) index(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'")
	_, _ = w.Write(indexHTML)
}

// dashboard serves GET /api/dashboard?region=&limit=: the whole dashboard,
// with the leaderboard of the region ("" for all) and limit (default 10).
func (s *server) dashboard(w http.ResponseWriter, r *http.Request) {
	q, err := leaderboardQuery(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	v, err := s.d.Read(r.Context(), q)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		View
		Regions []string   `json:"regions"`
		Menu    []MenuItem `json:"menu"`
	}{v, regions, menu})
}

// leaderboardQuery reads ?region=&limit=. Only known regions and sensible
// limits are taken: each query is a cache entry, and arbitrary input would
// fill Redis with entries nobody reads again.
func leaderboardQuery(r *http.Request) (LeaderboardQuery, error) {
	q := LeaderboardQuery{Region: r.URL.Query().Get("region"), Limit: 10}
	most := len(regionOf)
	if q.Region != "" {
		if !slices.Contains(regions, q.Region) {
			return q, fmt.Errorf("region %q: want one of %s, or none for all", q.Region, strings.Join(regions, ", "))
		}
		most = outletsPerRegion
	}
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > most {
			return q, fmt.Errorf("limit %q: want 1 to %d", l, most)
		}
		q.Limit = n
	}
	return q, nil
}

// submit serves POST /api/invoices with {"outlet", "item", "qty", "amount"}.
func (s *server) submit(w http.ResponseWriter, r *http.Request) {
	var n NewInvoice
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&n); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("the body: %w", err))
		return
	}
	start := time.Now()
	inv, err := s.d.Submit(r.Context(), n)
	s.answer(w, inv, err, "submitted", time.Since(start), http.StatusCreated)
}

// cancel serves POST /api/invoices/{id}/cancel.
func (s *server) cancel(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.Atoi(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("invoice id %q: not a number", r.PathValue("id")))
		return
	}
	start := time.Now()
	inv, err := s.d.Cancel(r.Context(), id)
	s.answer(w, inv, err, "cancelled", time.Since(start), http.StatusOK)
}

// answer answers a submission or a cancellation. An invoice recorded
// whose invalidation failed (Redis down) is still recorded: the answer
// says so, and the entries' TTLs bound how long the dashboard lags.
func (s *server) answer(w http.ResponseWriter, inv Invoice, err error, what string, took time.Duration, status int) {
	switch {
	case errors.Is(err, errBadInvoice):
		writeError(w, http.StatusBadRequest, err)
		return
	case errors.Is(err, errNoInvoice):
		writeError(w, http.StatusNotFound, err)
		return
	case errors.Is(err, errCancelled):
		writeError(w, http.StatusConflict, err)
		return
	}
	resp := struct {
		Invoice     Invoice  `json:"invoice"`
		Invalidated []string `json:"invalidated"`
		Warning     string   `json:"warning,omitempty"`
	}{Invoice: inv}
	for _, t := range s.d.invalidation(context.Background(), inv) {
		resp.Invalidated = append(resp.Invalidated, t.String())
	}
	if err != nil {
		resp.Invalidated = nil
		resp.Warning = "recorded, but the cache was not invalidated: " + err.Error()
	}
	fmt.Fprintf(s.log, "%s  invoice #%d %s: %s, %s; invalidated in %s\n",
		time.Now().Format("15:04:05"), inv.ID, what, inv.Outlet, rupees(inv.Total), short(took))
	writeJSON(w, status, resp)
}

// adminStats serves GET /admin/stats: m.Inspect, for the bearer of the
// admin token only. It scans the keyspace: an admin's tool, not a page's.
func (s *server) adminStats(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="stockpot dashboard admin"`)
		writeError(w, http.StatusUnauthorized, errors.New("an admin token is needed: Authorization: Bearer <token>"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	report, err := s.m.Inspect(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	writeJSON(w, http.StatusOK, report)
}

// authorized reports whether r carries the admin token, comparing in
// constant time.
func (s *server) authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) == 1
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}
