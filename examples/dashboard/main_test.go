package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/internal/testredis"
)

// TestDemo runs the scripted demo, as -demo does, and checks what it shows.
func TestDemo(t *testing.T) {
	t.Setenv("REDIS_ADDR", "") // the embedded miniredis
	var out bytes.Buffer
	var err error
	testredis.Within(t, "the demo to run", func() {
		err = run(t.Context(), &out, config{demo: true, invoices: 6000}, newExpvarObserver())
	})
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		`summary +computed .* 6,000 orders`,
		`outlet metrics +48 computed`,
		`summary +cache hit`,
		`outlet metrics +48 hits`,
		`live order count +cache hit .* 0 orders today`,
		`hash:outlet_metrics: 48 entries`,
		`memo:franchise_leaderboard: 5 entries`,
		`summary +computed .* 6,001 orders`,
		`outlet metrics +1 computed, 47 hits .* Pune-03`,
		`live order count +computed .* 1 order today`,
		`leaderboard Pune +computed`,
		`leaderboard Mumbai +cache hit`,
		`live order count +cache hit .* 0 orders today, a hit`,
		`hash:outlet_metrics +95 +49 +2 `, // two batch loads: the first read, and the one outlet after the invoice
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("the demo's output does not match %q:\n%s", want, out.String())
		}
	}
}

// TestHTTP exercises the API: reads, a submission, a cancellation, and the
// admin endpoint's token.
func TestHTTP(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	m, err := cache.New(rdb, &cache.Options{Prefix: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testredis.CloseWithin(t, "the Manager", m) })
	d, err := NewDashboard(m, Generate(3000, startOfDay(time.Now())))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer((&server{d: d, m: m, token: "s3cret", log: io.Discard}).routes())
	t.Cleanup(func() { testredis.Within(t, "the test server to close", srv.Close) })
	client := &http.Client{Timeout: testredis.Timeout}

	do := func(method, path, token, body string, wantStatus int, into any) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != wantStatus {
			t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, wantStatus, b)
		}
		if into != nil {
			if err := json.Unmarshal(b, into); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
		}
	}
	served := func(v View) map[string]Served {
		out := map[string]Served{}
		for _, s := range v.Served {
			out[s.Part] = s
		}
		return out
	}

	var v View
	do("GET", "/api/dashboard?region=Delhi&limit=3", "", "", 200, &v)
	if len(v.Outlets) != 48 || len(v.Leaderboard.Rows) != 3 || served(v)["summary"].Computed != 1 {
		t.Fatalf("first read: %d outlets, %d rows, served %+v", len(v.Outlets), len(v.Leaderboard.Rows), v.Served)
	}
	do("GET", "/api/dashboard?region=Delhi&limit=3", "", "", 200, &v)
	for _, s := range v.Served {
		if s.Computed != 0 {
			t.Errorf("second read: %s computed %d, want every part from the cache", s.Part, s.Computed)
		}
	}

	var sub struct {
		Invoice     Invoice  `json:"invoice"`
		Invalidated []string `json:"invalidated"`
	}
	do("POST", "/api/invoices", "", `{"outlet":"Delhi-07","item":"Sitaphal","amount":150}`, 201, &sub)
	if sub.Invoice.Region != "Delhi" || len(sub.Invalidated) != 5 {
		t.Fatalf("submit: %+v", sub)
	}
	do("GET", "/api/dashboard?region=Delhi&limit=3", "", "", 200, &v)
	if s := served(v)["outlet metrics"]; s.Computed != 1 || s.Cached != 47 || v.LiveOrders != 1 {
		t.Errorf("after a submission: outlets %+v, live count %d; want 1 computed, 47 cached, 1", s, v.LiveOrders)
	}

	cancel := "/api/invoices/" + strconv.Itoa(sub.Invoice.ID) + "/cancel"
	do("POST", cancel, "", "", 200, nil)
	do("POST", cancel, "", "", 409, nil)
	do("POST", "/api/invoices/999999/cancel", "", "", 404, nil)
	do("POST", "/api/invoices", "", `{"outlet":"Goa-01","item":"Sitaphal"}`, 400, nil)
	do("GET", "/api/dashboard?region=Goa", "", "", 400, nil)
	do("GET", "/api/dashboard", "", "", 200, &v)
	if v.LiveOrders != 0 {
		t.Errorf("after the cancellation: live count %d, want 0", v.LiveOrders)
	}

	do("GET", "/admin/stats", "", "", 401, nil)
	do("GET", "/admin/stats", "wrong", "", 401, nil)
	var report cache.Report
	do("GET", "/admin/stats", "s3cret", "", 200, &report)
	if report.Keys == 0 || report.Stats.Total.Loads == 0 {
		t.Errorf("admin stats: %d keys, %d loads", report.Keys, report.Stats.Total.Loads)
	}
	do("GET", "/debug/vars", "", "", 200, nil)
	scrape := httpGet(t, client, srv.URL+"/metrics")
	stats := m.Stats().ByName
	for _, want := range []string{
		fmt.Sprintf(`stockpot_hits_total{name="hash:outlet_metrics"} %d`, stats["hash:outlet_metrics"].Hits),
		fmt.Sprintf(`stockpot_loads_total{name="memo:franchise_leaderboard"} %d`, stats["memo:franchise_leaderboard"].Loads),
		fmt.Sprintf(`stockpot_misses_total{name="keys"} %d`, stats["keys"].Misses),
		`stockpot_invalidations_total{kind="tag"} 2`, // the submission and the cancellation
		`stockpot_breaker_state{state="closed"} 1`,
	} {
		if !strings.Contains(scrape, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, scrape)
		}
	}
	do("GET", "/", "", "", 200, nil)
}

// TestFiguresDoNotDependOnTheClock checks that the seven-day figures are
// those of the generated history's calendar, whatever the time of day or
// the day the program runs: a history that ended years ago has the same
// trending flavours and last-seven-days revenues as one that ends today.
func TestFiguresDoNotDependOnTheClock(t *testing.T) {
	today := Generate(3000, startOfDay(time.Now()))
	past := Generate(3000, time.Date(2020, 3, 1, 0, 0, 0, 0, time.UTC))
	trending := today.Trending()
	if len(trending) == 0 || trending[0].Item != "Alphonso Mango" {
		t.Fatalf("trending = %v, want Alphonso Mango first (mango season)", trending)
	}
	if got := past.Trending(); !slices.Equal(got, trending) {
		t.Errorf("trending of a history that ended in 2020 = %v, want %v as for one that ends today", got, trending)
	}
	now, then := today.AllOutletMetrics(), past.AllOutletMetrics()
	for outlet, m := range now {
		if m.Last7Days == 0 {
			t.Errorf("%s: no revenue in the last 7 days", outlet)
		}
		if then[outlet].Last7Days != m.Last7Days {
			t.Errorf("%s: last 7 days' revenue %d for a history that ended in 2020, %d for today's", outlet,
				then[outlet].Last7Days, m.Last7Days)
		}
	}
}

// httpGet returns the body of a GET of url, failing t unless it is a 200.
func httpGet(t *testing.T, client *http.Client, url string) string {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d, %v: %s", url, resp.StatusCode, err, b)
	}
	return string(b)
}
