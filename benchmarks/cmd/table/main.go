// Command table turns the output of the benchmarks in this module (go test
// -bench, in the standard benchmark format, any number of runs appended to
// one another) into the Markdown summary of run.sh: ratios against the raw
// go-redis baseline, the stampede, the reads during expiry and the targets.
//
// Usage:
//
//	go run ./cmd/table results.txt
//
// With no file it reads standard input. Configuration lines ("key: value")
// in the input, such as those run.sh writes (date, nproc, cpu-model,
// go-version) and the benchmarks print (redis-version), describe the
// machine. Every number is the median over the runs; the range after a
// ratio is the lowest and highest ratio of a single run, where runs pair up.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: table [bench-output-file]")
		flag.PrintDefaults()
	}
	flag.Parse()
	in := io.Reader(os.Stdin)
	if flag.NArg() > 0 {
		f, err := os.Open(flag.Arg(0))
		if err != nil {
			fmt.Fprintln(os.Stderr, "table:", err)
			os.Exit(1)
		}
		defer f.Close()
		in = f
	}
	res, err := parse(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "table:", err)
		os.Exit(1)
	}
	if len(res.values) == 0 {
		fmt.Fprintln(os.Stderr, "table: no benchmark results in the input")
		os.Exit(1)
	}
	write(os.Stdout, res)
}

// results holds the parsed input.
type results struct {
	config map[string]string
	// values[name][unit] are a benchmark's values in the order of the
	// runs; name is without "Benchmark" and the -GOMAXPROCS suffix.
	values map[string]map[string][]float64
}

var procsSuffix = regexp.MustCompile(`-\d+$`)

// parse reads the benchmark format: configuration lines "key: value" and
// result lines "BenchmarkName-N  iterations  value unit  value unit ...".
func parse(r io.Reader) (*results, error) {
	res := &results{config: map[string]string{}, values: map[string]map[string][]float64{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "Benchmark") {
			f := strings.Fields(line)
			if len(f) < 4 || len(f)%2 != 0 {
				continue // a benchmark's name printed before its result, or a log line
			}
			if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
				continue
			}
			name := procsSuffix.ReplaceAllString(strings.TrimPrefix(f[0], "Benchmark"), "")
			if res.values[name] == nil {
				res.values[name] = map[string][]float64{}
			}
			for i := 2; i+1 < len(f); i += 2 {
				v, err := strconv.ParseFloat(f[i], 64)
				if err != nil {
					return nil, fmt.Errorf("%q: %v", line, err)
				}
				res.values[name][f[i+1]] = append(res.values[name][f[i+1]], v)
			}
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok && isConfigKey(k) {
			res.config[k] = strings.TrimSpace(v)
		}
	}
	return res, sc.Err()
}

// isConfigKey reports whether k is a configuration key of the benchmark
// format: it starts with a lower-case letter and holds no space and no
// upper-case letter.
func isConfigKey(k string) bool {
	if k == "" || k[0] < 'a' || k[0] > 'z' {
		return false
	}
	return !strings.ContainsAny(k, " \tABCDEFGHIJKLMNOPQRSTUVWXYZ")
}

// all returns the values of name in unit, in run order.
func (r *results) all(name, unit string) []float64 { return r.values[name][unit] }

// median returns the median of name's values in unit, and false when there
// are none.
func (r *results) median(name, unit string) (float64, bool) {
	vs := r.all(name, unit)
	if len(vs) == 0 {
		return 0, false
	}
	return median(vs), true
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ratio formats name over base in unit (see ratioOf).
func (r *results) ratio(name, base, unit string) string {
	if name == base {
		if _, ok := r.median(name, unit); ok {
			return "baseline"
		}
	}
	return r.ratioOf(name, unit, base, unit)
}

// ratioOf formats name's values in unit over base's in baseUnit (see
// ratioVal), followed, when runs pair up, by the lowest and highest ratio
// of a single run.
func (r *results) ratioOf(name, unit, base, baseUnit string) string {
	q, lo, hi, ok := r.ratioVal(name, unit, base, baseUnit)
	switch {
	case !ok:
		return "–"
	case lo == hi:
		return fmtRatio(q)
	}
	if lo >= 0.1 {
		return fmt.Sprintf("%s (%.2f–%.2f)", fmtRatio(q), lo, hi)
	}
	return fmt.Sprintf("%s (%s–%s)", fmtRatio(q), fmtRatio(lo), fmtRatio(hi))
}

// ratioVal returns name's values in unit over base's in baseUnit. When
// both have one value per run, it is the median of the runs' ratios, with
// the lowest and highest of them: runs pair up, so a run in a slow minute
// moves both sides. Otherwise it is the ratio of the medians.
func (r *results) ratioVal(name, unit, base, baseUnit string) (q, lo, hi float64, ok bool) {
	vs, bs := r.all(name, unit), r.all(base, baseUnit)
	if len(vs) == 0 || len(bs) == 0 || slices.Contains(bs, 0) {
		return 0, 0, 0, false
	}
	if len(vs) == 1 || len(vs) != len(bs) {
		q = median(vs) / median(bs)
		return q, q, q, true
	}
	qs := make([]float64, len(vs))
	for i := range vs {
		qs[i] = vs[i] / bs[i]
	}
	return median(qs), slices.Min(qs), slices.Max(qs), true
}

// fmtRatio formats a ratio as 1.05×, or as 1/98 when it is small.
func fmtRatio(q float64) string {
	if q > 0 && q < 0.1 {
		return fmt.Sprintf("1/%.0f", 1/q)
	}
	return fmt.Sprintf("%.2f×", q)
}

// allocs formats name's allocations over base's: the difference of the
// medians, and their ratio.
func (r *results) allocs(name, base string) string {
	v, ok1 := r.median(name, "allocs/op")
	b, ok2 := r.median(base, "allocs/op")
	switch {
	case !ok1 || !ok2 || b == 0:
		return "–"
	case name == base:
		return "baseline"
	}
	return fmt.Sprintf("%+g (%.2f×)", v-b, v/b)
}

// dur formats nanoseconds.
func dur(ns float64) string {
	switch {
	case ns >= 1e9:
		return fmt.Sprintf("%.2f s", ns/1e9)
	case ns >= 1e6:
		return fmt.Sprintf("%.1f ms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.1f µs", ns/1e3)
	}
	return fmt.Sprintf("%.0f ns", ns)
}

// get formats name's median in unit with format, or "–".
func (r *results) get(name, unit string, format func(float64) string) string {
	v, ok := r.median(name, unit)
	if !ok {
		return "–"
	}
	return format(v)
}

func count(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// A rowSpec is a library's row in a table: its label and its sub-benchmark.
type rowSpec struct{ label, sub string }

var hitRows = []rowSpec{
	{"raw go-redis: GET + msgpack decode (the floor)", "raw-go-redis"},
	{"stockpot `Memo.Get` (Redis tier)", "stockpot"},
	{"stockpot `Memo.Get` (local tier, `Options.Local`: 1000 entries, 1 min)", "stockpot-local"},
	{"go-redis/cache `Once` (Redis tier)", "go-redis-cache"},
	{"go-redis/cache `Once` + `NewTinyLFU(1000, time.Minute)` (local tier)", "go-redis-cache-local"},
}

var lockRows = []rowSpec{
	{"raw go-redis: SET NX PX + owner-checked DEL script", "raw-go-redis"},
	{"stockpot `TryLock` + `Release`", "stockpot"},
	{"bsm/redislock `Obtain` + `Release`", "redislock"},
}

var stampedeRows = []rowSpec{
	{"raw go-redis cache-aside (GET, load, SET)", "raw-go-redis"},
	{"stockpot `Memo.Get`", "stockpot"},
	{"go-redis/cache `Once`", "go-redis-cache"},
}

// readRows are the scenarios of BenchmarkReadDuringRefresh, each with the
// plain-hit scenario of the same library.
var readRows = []struct{ label, sub, plain string }{
	{"raw go-redis, plain hit", "raw-go-redis-hit", "raw-go-redis-hit"},
	{"stockpot, plain hit", "stockpot-hit", "stockpot-hit"},
	{"stockpot, `TTL(1s)` + `StaleFor(1m)`", "stockpot-stalefor", "stockpot-hit"},
	{"stockpot, `TTL(1s)` + `EarlyRefresh(1)`", "stockpot-earlyrefresh", "stockpot-hit"},
	{"go-redis/cache, plain hit", "go-redis-cache-hit", "go-redis-cache-hit"},
	{"go-redis/cache `Once`, `TTL: 1s` (expires)", "go-redis-cache-expiry", "go-redis-cache-hit"},
}

func write(w io.Writer, r *results) {
	cfg := func(k string) string {
		if v := r.config[k]; v != "" {
			return v
		}
		return "?"
	}
	runs := 0
	for _, units := range r.values {
		runs = max(runs, len(units["ns/op"]))
	}
	fmt.Fprintf(w, "Machine: %s CPUs (nproc), %s, %s/%s; %s; redis-server %s on the same machine. Date: %s. ",
		cfg("nproc"), firstOf(r.config["cpu-model"], cfg("cpu")), cfg("goos"), cfg("goarch"),
		cfg("go-version"), cfg("redis-version"), cfg("date"))
	if runs == 1 {
		fmt.Fprint(w, "One run.\n\n")
	} else {
		fmt.Fprintf(w, "Medians of %d runs; a ratio is the median of the runs' ratios, "+
			"the lowest and highest of them in brackets.\n\n", runs)
	}

	fmt.Fprintln(w, "**Cache hit**: the same 20-row payload, read warm. Parallel is `b.RunParallel` with "+
		"4 goroutines per CPU, all on one hot key or on a key each. Allocs are of the sequential read.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Read | Sequential | vs raw | Parallel, one key | vs raw | Parallel, a key each | vs raw | Allocs | vs raw |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, row := range hitRows {
		if _, ok := r.median("Hit/"+row.sub, "ns/op"); !ok {
			continue
		}
		fmt.Fprintf(w, "| %s", row.label)
		for _, g := range []string{"Hit", "HitParallel", "HitParallelSpread"} {
			name := g + "/" + row.sub
			fmt.Fprintf(w, " | %s | %s", r.get(name, "ns/op", dur), r.ratio(name, g+"/raw-go-redis", "ns/op"))
		}
		fmt.Fprintf(w, " | %s | %s |\n", r.get("Hit/"+row.sub, "allocs/op", count), r.allocs("Hit/"+row.sub, "Hit/raw-go-redis"))
	}

	if _, ok := r.median("HitInterleaved", "raw-go-redis-p50-ns"); ok {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "**Redis-tier hit, interleaved**: one read of each in turn, so that all are measured at the same moments "+
			"of a machine whose speed drifts; medians and means of single reads.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| Read | Median | vs raw | vs go-redis/cache | Mean | vs raw |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|")
		for _, row := range hitRows {
			p50, mean := row.sub+"-p50-ns", row.sub+"-mean-ns"
			if _, ok := r.median("HitInterleaved", p50); !ok {
				continue
			}
			vsRaw, vsGC, meanVsRaw := "baseline", "–", "baseline"
			if row.sub != "raw-go-redis" {
				vsRaw = r.ratioOf("HitInterleaved", p50, "HitInterleaved", "raw-go-redis-p50-ns")
				meanVsRaw = r.ratioOf("HitInterleaved", mean, "HitInterleaved", "raw-go-redis-mean-ns")
			}
			if row.sub == "stockpot" {
				vsGC = r.ratioOf("HitInterleaved", p50, "HitInterleaved", "go-redis-cache-p50-ns")
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", row.label,
				r.get("HitInterleaved", p50, dur), vsRaw, vsGC, r.get("HitInterleaved", mean, dur), meanVsRaw)
		}
	}

	fmt.Fprintln(w)
	fmt.Fprintf(w, "**Stampede**: one cold key read at once by 4 instances (a client, pool and cache object each) × 250 goroutines; the loader takes 50 ms.\n\n")
	fmt.Fprintln(w, "| Library | Loader calls per stampede | Median caller's wait | Wall time (all 1000 callers served) |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, row := range stampedeRows {
		name := "Stampede/" + row.sub
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", row.label,
			r.get(name, "loads/op", count), r.get(name, "p50-ns", dur), r.get(name, "ns/op", dur))
	}

	fmt.Fprintln(w)
	fmt.Fprintln(w, "**Reads while entries expire**: one entry with a 1 s TTL (the shortest go-redis/cache accepts), "+
		"read for 3 s at a steady 4 reads per millisecond (open loop: each read is a request of its own, "+
		"latency from its arrival); the loader takes 50 ms.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Scenario | p50 | p99 | p99.9 | p99 vs the same library's plain hit | Reads that waited ≥ 25 ms | Loads |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, row := range readRows {
		name := "ReadDuringRefresh/" + row.sub
		if _, ok := r.median(name, "p99-ns"); !ok {
			continue
		}
		vs := "–"
		if row.sub != row.plain {
			vs = r.ratio(name, "ReadDuringRefresh/"+row.plain, "p99-ns")
		}
		waited := r.get(name, "waits/op", count)
		if reads, ok := r.median(name, "reads/op"); ok && reads > 0 {
			waits, _ := r.median(name, "waits/op")
			waited = fmt.Sprintf("%s of %s (%.1f%%)", count(waits), count(reads), 100*waits/reads)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", row.label,
			r.get(name, "p50-ns", dur), r.get(name, "p99-ns", dur), r.get(name, "p99.9-ns", dur),
			vs, waited, r.get(name, "loads/op", count))
	}

	fmt.Fprintln(w)
	fmt.Fprintln(w, "**Lock**: obtain and release an uncontended lock (parallel: 4 goroutines per CPU, a lock each).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Lock | Time | vs raw | Parallel time | vs raw | Allocs | vs raw |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, row := range lockRows {
		seq, par := "Lock/"+row.sub, "LockParallel/"+row.sub
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", row.label,
			r.get(seq, "ns/op", dur), r.ratio(seq, "Lock/raw-go-redis", "ns/op"),
			r.get(par, "ns/op", dur), r.ratio(par, "LockParallel/raw-go-redis", "ns/op"),
			r.get(seq, "allocs/op", count), r.allocs(seq, "Lock/raw-go-redis"))
	}

	fmt.Fprintln(w)
	writeTargets(w, r)
}

// writeTargets compares the results with stockpot's performance targets.
func writeTargets(w io.Writer, r *results) {
	fmt.Fprintln(w, "**Targets**")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Target | Measured | Met |")
	fmt.Fprintln(w, "|---|---|---|")
	verdict := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	// atMost judges a ratio that should be at most 1; within 2% of it is
	// a tie, which this machine's noise cannot break.
	atMost := func(q float64) string {
		if q > 1 && q <= 1.02 {
			return "tie (within 2%)"
		}
		return verdict(q <= 1)
	}
	// Redis-tier hit at most go-redis/cache's.
	if q, _, _, ok := r.ratioVal("HitInterleaved", "stockpot-p50-ns", "HitInterleaved", "go-redis-cache-p50-ns"); ok {
		fmt.Fprintf(w, "| Redis-tier hit ≤ go-redis/cache `Once` (interleaved, median read) | %s | %s |\n",
			r.ratioOf("HitInterleaved", "stockpot-p50-ns", "HitInterleaved", "go-redis-cache-p50-ns"), atMost(q))
	}
	for _, g := range []struct{ bench, label string }{
		{"Hit", "sequential"}, {"HitParallel", "parallel, one key"}, {"HitParallelSpread", "parallel, a key each"},
	} {
		if q, _, _, ok := r.ratioVal(g.bench+"/stockpot", "ns/op", g.bench+"/go-redis-cache", "ns/op"); ok {
			fmt.Fprintf(w, "| Redis-tier hit ≤ go-redis/cache `Once` (%s) | %s | %s |\n",
				g.label, r.ratio(g.bench+"/stockpot", g.bench+"/go-redis-cache", "ns/op"), atMost(q))
		}
	}
	// Local-tier hit at least 20 times as fast as go-redis/cache's.
	if q, lo, hi, ok := r.ratioVal("Hit/go-redis-cache-local", "ns/op", "Hit/stockpot-local", "ns/op"); ok {
		fmt.Fprintf(w, "| Local-tier hit ≥ 20× faster than go-redis/cache's local hit | %.0f× faster (%.0f–%.0f) | %s |\n",
			q, lo, hi, verdict(q >= 20))
	}
	// Stampede: one load for stockpot, one per instance for go-redis/cache.
	sp, ok1 := r.median("Stampede/stockpot", "loads/op")
	gc, ok2 := r.median("Stampede/go-redis-cache", "loads/op")
	if ok1 && ok2 {
		fmt.Fprintf(w, "| Stampede: 1 load for stockpot (go-redis/cache: 1 per instance) | %s vs %s | %s |\n",
			count(sp), count(gc), verdict(sp == 1))
	}
	// p99 during refresh within 2× of a plain hit.
	for _, sub := range []string{"stockpot-stalefor", "stockpot-earlyrefresh"} {
		name, plain := "ReadDuringRefresh/"+sub, "ReadDuringRefresh/stockpot-hit"
		if q, _, _, ok := r.ratioVal(name, "p99-ns", plain, "p99-ns"); ok {
			fmt.Fprintf(w, "| p99 during refresh ≤ 2× plain hit (%s) | %s vs %s: %s | %s |\n",
				strings.TrimPrefix(sub, "stockpot-"), r.get(name, "p99-ns", dur), r.get(plain, "p99-ns", dur),
				r.ratio(name, plain, "p99-ns"), verdict(q <= 2))
		}
	}
}

func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
