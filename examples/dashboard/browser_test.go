package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/internal/testredis"
)

// layoutCheck is a page that loads the dashboard in frames 420 and 1400
// px wide, submits an invoice in each (for an activity line), and writes
// what it measured as JSON into #result.
const layoutCheck = `<!doctype html>
<html><body>
<iframe id="w420" src="/" width="420" height="1400"></iframe>
<iframe id="w1400" src="/" width="1400" height="1400"></iframe>
<pre id="result">pending</pre>
<script>
"use strict";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function measure(id) {
  const frame = () => document.getElementById(id).contentDocument;
  for (let i = 0; i < 200 && !(frame().getElementById("outlets") && frame().querySelectorAll("#outlets tr").length > 1); i++) await sleep(100);
  const doc = frame();
  doc.getElementById("submit").click();
  for (let i = 0; i < 100 && doc.getElementById("log").textContent === ""; i++) await sleep(100);
  await sleep(300);
  const log = doc.getElementById("log"), outlets = doc.getElementById("outlets").closest("section");
  return {
    took: doc.getElementById("took").innerText,
    page_overflow: doc.documentElement.scrollWidth - doc.documentElement.clientWidth,
    log_text: log.textContent.length,
    log_overflow: log.scrollWidth - log.clientWidth,
    outlets_rows: doc.querySelectorAll("#outlets tr").length,
    outlets_scrolls: outlets.scrollWidth > outlets.clientWidth && getComputedStyle(outlets).overflowX === "auto",
  };
}
(async () => {
  const out = {};
  for (const id of ["w420", "w1400"]) out[id] = await measure(id);
  document.getElementById("result").textContent = JSON.stringify(out);
})().catch((e) => { document.getElementById("result").textContent = "error: " + e; });
</script>
</body></html>`

type layout struct {
	Took           string `json:"took"`
	PageOverflow   int    `json:"page_overflow"`
	LogText        int    `json:"log_text"`
	LogOverflow    int    `json:"log_overflow"`
	OutletsRows    int    `json:"outlets_rows"`
	OutletsScrolls bool   `json:"outlets_scrolls"`
}

// chromium returns the path of a headless-capable Chromium, or skips t
// (fails it with STOCKPOT_REQUIRE_BROWSER=1, as .ci/run sets).
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("STOCKPOT_REQUIRE_BROWSER") == "1" {
		t.Fatal("no chromium on PATH, and STOCKPOT_REQUIRE_BROWSER=1 (apt-get install chromium)")
	}
	t.Skip("no chromium on PATH: the page's layout is not checked (apt-get install chromium)")
	return ""
}

// runChromium runs the browser headless with args, bounded, and returns
// its standard output.
func runChromium(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir()}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v (did not finish within 90s?)\n%s", bin, args, err, stderr.Bytes())
	}
	return out
}

// TestPageInBrowser loads the dashboard page in a real headless Chromium,
// at 420 and 1400 px, and checks what a user sees: the served-by figure
// keeps "µs" or "ms" in lower case, no activity line runs out of its card,
// the page does not overflow sideways (the outlets table scrolls in its
// card instead). It also takes a screenshot at each width, kept in
// $DASHBOARD_SCREENSHOTS when that is set.
func TestPageInBrowser(t *testing.T) {
	bin := chromium(t)
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
	mux := http.NewServeMux()
	mux.Handle("/", (&server{d: d, m: m, token: "s3cret", log: io.Discard}).routes())
	mux.HandleFunc("GET /layout-check", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, layoutCheck)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(func() { testredis.Within(t, "the test server to close", srv.Close) })

	dom := runChromium(t, bin, "--virtual-time-budget=30000", "--dump-dom", srv.URL+"/layout-check")
	m2 := regexp.MustCompile(`<pre id="result">([^<]*)</pre>`).FindSubmatch(dom)
	if m2 == nil || bytes.Equal(m2[1], []byte("pending")) {
		t.Fatalf("the layout check did not finish in the browser:\n%s", dom)
	}
	var got map[string]layout
	if err := json.Unmarshal(bytes.ReplaceAll(m2[1], []byte("&amp;"), []byte("&")), &got); err != nil {
		t.Fatalf("the layout check's result %q: %v", m2[1], err)
	}
	for _, width := range []string{"w420", "w1400"} {
		l := got[width]
		if !regexp.MustCompile(`^· [0-9.]+(µs|ms)$`).MatchString(l.Took) {
			t.Errorf("%s: the served-by heading shows %q, want its figure with µs or ms in lower case", width, l.Took)
		}
		if l.PageOverflow > 0 {
			t.Errorf("%s: the page overflows sideways by %d px", width, l.PageOverflow)
		}
		if l.LogText == 0 || l.LogOverflow > 0 {
			t.Errorf("%s: the activity log (%d characters) runs %d px out of its card", width, l.LogText, l.LogOverflow)
		}
		if l.OutletsRows != 49 {
			t.Errorf("%s: the outlets table has %d rows, want a heading and 48 outlets", width, l.OutletsRows)
		}
	}
	if !got["w420"].OutletsScrolls {
		t.Errorf("at 420 px the outlets table should scroll inside its card: %+v", got["w420"])
	}

	dir := os.Getenv("DASHBOARD_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	for _, size := range []struct{ w, h int }{{420, 1800}, {1400, 1100}} {
		file := filepath.Join(dir, "dashboard-"+itoa(size.w)+".png")
		runChromium(t, bin, "--virtual-time-budget=10000", "--window-size="+itoa(size.w)+","+itoa(size.h),
			"--screenshot="+file, srv.URL+"/")
		f, err := os.Open(file)
		if err != nil {
			t.Fatalf("the screenshot at %d px: %v", size.w, err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("the screenshot at %d px: %v", size.w, err)
		}
		if b := img.Bounds(); b.Dx() != size.w || b.Dy() != size.h {
			t.Errorf("the screenshot at %d px is %v", size.w, b)
		}
		t.Logf("screenshot: %s", file)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
