package main

import (
	"strings"
	"testing"
)

// input is three runs in the benchmark format, as run.sh appends them, with
// the lines around results that go test prints and benchfmt must skip.
const input = `date: 2026-12-02 12:00 UTC
nproc: 2
cpu-model: Test CPU
go-version: go1.26.8
redis-version: 7.0.15
goos: linux
goarch: amd64
pkg: github.com/stockpot-go/cache/benchmarks
cpu: AMD EPYC
BenchmarkHit/raw-go-redis-2         	   20000	     50000 ns/op	   13961 B/op	     194 allocs/op
BenchmarkHit/stockpot-2             	   20000	     55000 ns/op	   14244 B/op	     201 allocs/op
BenchmarkHitParallel/stockpot-2     	   20000	     40000 ns/op
BenchmarkHitParallel/go-redis-cache-2	   20000	     20000 ns/op
BenchmarkLocalHit/struct/stockpot-2 	 1000000	       300 ns/op	       0 B/op	       2 allocs/op
BenchmarkLocalHit/struct/otter-2    	 1000000	       100 ns/op
BenchmarkMiss/stockpot-2            	    1000	    500000 ns/op	      2168 redis-B	      2028 stored-B
BenchmarkMiss/go-redis-cache-2      	    1000	    300000 ns/op	       552.0 redis-B	       396.0 stored-B
PASS
ok  	github.com/stockpot-go/cache/benchmarks	10.0s
redis-version: 7.0.15
BenchmarkHit/raw-go-redis-2         	   20000	     60000 ns/op	   13961 B/op	     194 allocs/op
BenchmarkHit/stockpot-2             	   20000	     60000 ns/op	   14244 B/op	     201 allocs/op
BenchmarkHitParallel/stockpot-2     	   20000	     40000 ns/op
BenchmarkHitParallel/go-redis-cache-2	   20000	     40000 ns/op
BenchmarkLocalHit/struct/stockpot-2 	 1000000	       150 ns/op	       0 B/op	       2 allocs/op
BenchmarkLocalHit/struct/otter-2    	 1000000	       100 ns/op
PASS
redis-version: 7.0.15
BenchmarkHit/raw-go-redis-2         	   20000	     40000 ns/op	   13961 B/op	     194 allocs/op
BenchmarkHit/stockpot-2             	   20000	     48000 ns/op	   14244 B/op	     203 allocs/op
BenchmarkHitParallel/stockpot-2     	   20000	     40000 ns/op
BenchmarkHitParallel/go-redis-cache-2	   20000	     30000 ns/op
BenchmarkLocalHit/struct/stockpot-2 	 1000000	       210 ns/op	       0 B/op	       2 allocs/op
BenchmarkLocalHit/struct/otter-2    	 1000000	       100 ns/op
PASS
`

func parseInput(t *testing.T) *results {
	t.Helper()
	r, err := parse(strings.NewReader(input), "input")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestParse(t *testing.T) {
	r := parseInput(t)
	if got := r.all("Hit/stockpot", "ns/op"); len(got) != 3 || got[0] != 55000 || got[2] != 48000 {
		t.Errorf("Hit/stockpot ns/op = %v, want the three runs' [55000 60000 48000]", got)
	}
	if got := r.all("LocalHit/struct/otter", "ns/op"); len(got) != 3 {
		t.Errorf("LocalHit/struct/otter ns/op = %v, want three values (sub-benchmarks kept, -2 dropped)", got)
	}
	if got := r.all("Miss/go-redis-cache", "stored-B"); len(got) != 1 || got[0] != 396 {
		t.Errorf("Miss/go-redis-cache stored-B = %v, want [396] in the unit as printed", got)
	}
	for k, want := range map[string]string{"nproc": "2", "cpu-model": "Test CPU", "redis-version": "7.0.15"} {
		if got := r.config[k]; got != want {
			t.Errorf("config %q = %q, want %q", k, got, want)
		}
	}
	if m, _ := r.median("Hit/stockpot", "allocs/op"); m != 201 {
		t.Errorf("median allocs = %v, want 201", m)
	}
}

func TestRatio(t *testing.T) {
	r := parseInput(t)
	// The runs' ratios are 1.1, 1.0 and 1.2: the median is of the ratios,
	// not the ratio of the medians (55000/50000).
	q, ok := r.ratioVal("Hit/stockpot", "ns/op", "Hit/raw-go-redis", "ns/op")
	if !ok || !q.paired || !near(q.q, 1.1) || !near(q.lo, 1.0) || !near(q.hi, 1.2) {
		t.Errorf("ratio = %+v, want 1.10 (1.00–1.20) paired", q)
	}
	if got, want := q.String(), "1.10× (1.00–1.20)"; got != want {
		t.Errorf("ratio formats as %q, want %q", got, want)
	}
	if got := r.ratio("Hit/raw-go-redis", "Hit/raw-go-redis", "ns/op"); got != "baseline" {
		t.Errorf("a row against itself formats as %q, want baseline", got)
	}
	if got := r.ratio("Hit/nothing", "Hit/raw-go-redis", "ns/op"); got != "–" {
		t.Errorf("a missing row formats as %q, want –", got)
	}
	// Throughputs: stockpot's over go-redis/cache's is go-redis/cache's time
	// over stockpot's, per run: 0.5, 1.0, 0.75.
	if got, want := r.throughputVs("HitParallel/stockpot", "HitParallel/go-redis-cache"), "0.75× (0.50–1.00)"; got != want {
		t.Errorf("throughput ratio = %q, want %q", got, want)
	}
	// One run of each: the ratio of the values, without a range.
	if got, want := r.ratio("Miss/stockpot", "Miss/go-redis-cache", "stored-B"), "5.12×"; got != want {
		t.Errorf("stored-size ratio = %q, want %q", got, want)
	}
}

// TestRatioAfterMedian takes medians first: they must leave the values in
// run order, or the ratios pair one run's value with another's.
func TestRatioAfterMedian(t *testing.T) {
	r := &results{values: map[string]map[string][]float64{
		"a": {"ns/op": {1, 3, 2}},
		"b": {"ns/op": {1, 1, 3}},
	}}
	r.median("a", "ns/op")
	r.median("b", "ns/op")
	// Runs' ratios: 1, 3, 2/3 (sorted values would give 1, 2, 1).
	q, ok := r.ratioVal("a", "ns/op", "b", "ns/op")
	if !ok || !near(q.q, 1) || !near(q.lo, 2.0/3) || !near(q.hi, 3) {
		t.Errorf("ratio = %+v, want 1 (0.67–3)", q)
	}
}

func TestVerdict(t *testing.T) {
	atMost := target{bound: 2}
	atLeast := target{bound: 1, atLeast: true}
	faster := target{bound: 1, strict: true}
	for _, c := range []struct {
		t    target
		q    float64
		want string
	}{
		{atMost, 1.5, "yes"},
		{atMost, 2.03, "tie (within 2%)"},
		{atMost, 3, "**no**, 1.50× over"},
		{atLeast, 1.2, "yes"},
		{atLeast, 0.99, "tie (within 2%)"},
		{atLeast, 0.25, "**no**, 4.00× short"},
		{faster, 0.9, "yes"},
		{faster, 1, "tie (within 2%)"},
		{faster, 1.5, "**no**, 1.50× over"},
	} {
		if got := c.t.verdict(c.q); got != c.want {
			t.Errorf("%+v.verdict(%v) = %q, want %q", c.t, c.q, got, c.want)
		}
	}
}

func TestWrite(t *testing.T) {
	var b strings.Builder
	write(&b, parseInput(t))
	out := b.String()
	for _, want := range []string{
		"Machine: 2 CPUs (nproc), Test CPU, linux/amd64; go1.26.8; redis-server 7.0.15",
		"Medians of 3 runs",
		"| stockpot `Memo.Get` (Redis tier) | 55.0 µs | 1.10× (1.00–1.20) |",
		"| small struct | stockpot `Memo.Get`, local tier | 210 ns | 2.10× (1.50–3.00) |",
		"| Local-tier hit ≤ 2× a bare otter lookup (small struct argument, sequential) | 2.10× (1.50–3.00) | **no**, 1.05× over |",
		"| One hot key, parallel reads per second ≥ go-redis/cache `Once`'s | 0.75× (0.50–1.00) | **no**, 1.33× short |",
		"| Stored bytes ≤ go-redis/cache's | 5.12× | **no**, 5.12× over |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the table lacks %q; it is:\n%s", want, out)
		}
	}
	// Rows of benchmarks that did not run are left out, not printed empty.
	if strings.Contains(out, "rockscache `Fetch2`") || strings.Contains(out, "**Stampede**") {
		t.Errorf("the table has rows for benchmarks not in the input:\n%s", out)
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
