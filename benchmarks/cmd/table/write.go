package main

import (
	"fmt"
	"io"
	"strings"
)

// A rowSpec is a library's row in a table: its label and its sub-benchmark.
type rowSpec struct{ label, sub string }

var hitRows = []rowSpec{
	{"raw go-redis: GET + msgpack decode (the floor)", "raw-go-redis"},
	{"stockpot `Memo.Get` (Redis tier)", "stockpot"},
	{"stockpot `Memo.Get` (local tier, `Options.Local`: 2048 entries, 1 min)", "stockpot-local"},
	{"go-redis/cache `Once` (Redis tier)", "go-redis-cache"},
	{"go-redis/cache `Once` + `NewTinyLFU(2048, time.Minute)` (local tier)", "go-redis-cache-local"},
	{"rueidis `Do(GET)` + decode, a pooled connection per command", "rueidis"},
	{"rueidis `Do(GET)` + decode, auto-pipelined (its default)", "rueidis-auto"},
	{"rueidis `DoCache(GET)` + decode (client-side cache)", "rueidis-cached"},
	{"rockscache `Fetch2` + decode", "rockscache"},
}

var limitRows = []rowSpec{
	{"redis-benchmark GET, `-c 64`", "RedisBenchmark/get-c64"},
	{"redis-benchmark GET, `-c 64 -P 16`", "RedisBenchmark/get-c64-p16"},
}

var localRows = []rowSpec{
	{"stockpot `Memo.Get`, local tier", "stockpot"},
	{"sturdyc `GetOrFetch`", "sturdyc"},
	{"otter `GetIfPresent` (bare lookup, the floor)", "otter"},
}

var localKinds = []rowSpec{
	{"small struct", "struct"},
	{"string", "string"},
	{"int", "int"},
}

var missRows = []rowSpec{
	{"raw go-redis: GET, load, SET of the msgpack bytes", "raw-go-redis"},
	{"stockpot `Memo.Get`", "stockpot"},
	{"go-redis/cache `Once`", "go-redis-cache"},
	{"rockscache `Fetch2` (a hash: value, lock fields)", "rockscache"},
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
	writeMachine(w, r)
	writeHits(w, r)
	writeInterleaved(w, r)
	writeParallel(w, r)
	writeLocal(w, r)
	writeMiss(w, r)
	writeStampede(w, r)
	writeReads(w, r)
	writeLocks(w, r)
	writeTargets(w, r)
}

// has reports whether name has a value in unit.
func (r *results) has(name, unit string) bool {
	_, ok := r.median(name, unit)
	return ok
}

func writeMachine(w io.Writer, r *results) {
	cfg := func(keys ...string) string {
		for _, k := range keys {
			if v := r.config[k]; v != "" {
				return v
			}
		}
		return "?"
	}
	runs := 0
	for _, units := range r.values {
		runs = max(runs, len(units["ns/op"]))
	}
	fmt.Fprintf(w, "Machine: %s CPUs (nproc), %s, %s/%s; %s; redis-server %s on the same machine. Date: %s, stockpot %s. ",
		cfg("nproc"), cfg("cpu-model", "cpu"), cfg("goos"), cfg("goarch"),
		cfg("go-version"), cfg("redis-version"), cfg("date"), cfg("stockpot-commit"))
	if runs == 1 {
		fmt.Fprint(w, "One run.\n\n")
	} else {
		fmt.Fprintf(w, "Medians of %d runs; a ratio is the median of the runs' ratios, "+
			"the lowest and highest of them in brackets.\n\n", runs)
	}
}

func writeHits(w io.Writer, r *results) {
	if !r.has("Hit/raw-go-redis", "ns/op") {
		return
	}
	fmt.Fprintln(w, "**Cache hit**: the same 20-row payload, read warm; time per read. Parallel is `b.RunParallel` from "+
		"64 goroutines, each on 16 keys no other goroutine reads, or all on one hot key. Allocs are of the sequential read.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Read | Sequential | vs raw | Parallel, keys of its own | vs raw | Parallel, one hot key | vs raw | Allocs | vs raw |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, row := range hitRows {
		if !r.has("Hit/"+row.sub, "ns/op") {
			continue
		}
		fmt.Fprintf(w, "| %s", row.label)
		for _, g := range []string{"Hit", "HitParallelSpread", "HitParallel"} {
			name := g + "/" + row.sub
			fmt.Fprintf(w, " | %s | %s", r.get(name, "ns/op", dur), r.ratio(name, g+"/raw-go-redis", "ns/op"))
		}
		fmt.Fprintf(w, " | %s | %s |\n", r.get("Hit/"+row.sub, "allocs/op", count), r.allocs("Hit/"+row.sub, "Hit/raw-go-redis"))
	}
	fmt.Fprintln(w)
}

func writeInterleaved(w io.Writer, r *results) {
	if !r.has("HitInterleaved", "raw-go-redis-p50-ns") {
		return
	}
	fmt.Fprintln(w, "**Redis-tier hit, interleaved**: one read of each library in turn, so that all are measured at the same moments "+
		"of a machine whose speed drifts; medians and means of single reads.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Read | Median | vs raw | Mean | vs raw |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, row := range hitRows {
		p50, mean := row.sub+"-p50-ns", row.sub+"-mean-ns"
		if !r.has("HitInterleaved", p50) {
			continue
		}
		vsRaw, meanVsRaw := "baseline", "baseline"
		if row.sub != "raw-go-redis" {
			vsRaw = r.ratioOf("HitInterleaved", p50, "HitInterleaved", "raw-go-redis-p50-ns")
			meanVsRaw = r.ratioOf("HitInterleaved", mean, "HitInterleaved", "raw-go-redis-mean-ns")
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", row.label,
			r.get("HitInterleaved", p50, dur), vsRaw, r.get("HitInterleaved", mean, dur), meanVsRaw)
	}
	fmt.Fprintln(w)
}

// throughputVs formats name's throughput over base's (their times
// inverted), in the parallel hit benchmark g or the physical-limit rows.
func (r *results) throughputVs(name, base string) string {
	if name == base {
		return "baseline"
	}
	q, ok := r.ratioVal(base, "ns/op", name, "ns/op")
	if !ok {
		return "–"
	}
	return q.String()
}

func writeParallel(w io.Writer, r *results) {
	if !r.has("HitParallelSpread/stockpot", "ns/op") {
		return
	}
	fmt.Fprintln(w, "**Parallel reads, throughput**: reads per second from 64 goroutines (the parallel columns above, inverted), "+
		"against stockpot's Redis tier and against the server's limit, redis-benchmark GET of the same payload "+
		"from 64 connections, without and with pipelining. Above 1× is more reads per second than the other.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Read | Keys of its own | vs stockpot | vs redis-benchmark `-c 64` | One hot key | vs stockpot |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	const limit = "RedisBenchmark/get-c64"
	for _, row := range hitRows {
		spread, hot := "HitParallelSpread/"+row.sub, "HitParallel/"+row.sub
		if !r.has(spread, "ns/op") {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", row.label,
			r.get(spread, "ns/op", perSecond), r.throughputVs(spread, "HitParallelSpread/stockpot"),
			r.throughputVs(spread, limit),
			r.get(hot, "ns/op", perSecond), r.throughputVs(hot, "HitParallel/stockpot"))
	}
	for _, row := range limitRows {
		if !r.has(row.sub, "ns/op") {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | | |\n", row.label,
			r.get(row.sub, "ns/op", perSecond), r.throughputVs(row.sub, "HitParallelSpread/stockpot"),
			r.throughputVs(row.sub, limit))
	}
	fmt.Fprintln(w)
}

func writeLocal(w io.Writer, r *results) {
	if !r.has("LocalHit/struct/otter", "ns/op") {
		return
	}
	fmt.Fprintln(w, "**Local-tier hit**: one warm entry held in process, read by its argument. sturdyc is given the string key "+
		"a caller builds from the argument (for the struct, as go-redis/cache's rows do); otter is looked up by the "+
		"argument itself. Parallel is `b.RunParallel` from one goroutine per CPU.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Argument | Read | Sequential | vs otter | vs sturdyc | Parallel | vs otter | vs sturdyc | Allocs |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, kind := range localKinds {
		for _, row := range localRows {
			seq, par := "LocalHit/"+kind.sub+"/"+row.sub, "LocalHitParallel/"+kind.sub+"/"+row.sub
			if !r.has(seq, "ns/op") {
				continue
			}
			otter, sturdyc := "LocalHit/"+kind.sub+"/otter", "LocalHit/"+kind.sub+"/sturdyc"
			potter, psturdyc := "LocalHitParallel/"+kind.sub+"/otter", "LocalHitParallel/"+kind.sub+"/sturdyc"
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", kind.label, row.label,
				r.get(seq, "ns/op", dur), r.ratio(seq, otter, "ns/op"), r.ratio(seq, sturdyc, "ns/op"),
				r.get(par, "ns/op", dur), r.ratio(par, potter, "ns/op"), r.ratio(par, psturdyc, "ns/op"),
				r.get(seq, "allocs/op", count))
		}
	}
	fmt.Fprintln(w)
}

func writeMiss(w io.Writer, r *results) {
	if !r.has("Miss/stockpot", "stored-B") {
		return
	}
	fmt.Fprintln(w, "**Stored size and a miss**: a read of an argument nobody has read, whose loader returns the payload "+
		"at once, so the read loads and stores. Stored bytes are those of the entry's value (`STRLEN`, `HSTRLEN` for "+
		"rockscache's hash); Redis memory is `MEMORY USAGE` of its key.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Library | Stored bytes | vs go-redis/cache | Redis memory | Miss: load and store | vs raw | Allocs |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, row := range missRows {
		name := "Miss/" + row.sub
		if !r.has(name, "stored-B") {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", row.label,
			r.get(name, "stored-B", bytes), r.ratio(name, "Miss/go-redis-cache", "stored-B"),
			r.get(name, "redis-B", bytes), r.get(name, "ns/op", dur), r.ratio(name, "Miss/raw-go-redis", "ns/op"),
			r.get(name, "allocs/op", count))
	}
	fmt.Fprintln(w)
}

func writeStampede(w io.Writer, r *results) {
	if !r.has("Stampede/stockpot", "loads/op") {
		return
	}
	fmt.Fprintf(w, "**Stampede**: one cold key read at once by 4 instances (a client, pool and cache object each) × 250 goroutines; the loader takes 50 ms.\n\n")
	fmt.Fprintln(w, "| Library | Loader calls per stampede | Median caller's wait | Wall time (all 1000 callers served) |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, row := range stampedeRows {
		name := "Stampede/" + row.sub
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", row.label,
			r.get(name, "loads/op", count), r.get(name, "p50-ns", dur), r.get(name, "ns/op", dur))
	}
	fmt.Fprintln(w)
}

func writeReads(w io.Writer, r *results) {
	if !r.has("ReadDuringRefresh/stockpot-hit", "p99-ns") {
		return
	}
	fmt.Fprintln(w, "**Reads while entries expire**: one entry with a 1 s TTL (the shortest go-redis/cache accepts), "+
		"read for 3 s at a steady 4 reads per millisecond (open loop: each read is a request of its own, "+
		"latency from its arrival); the loader takes 50 ms.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Scenario | p50 | p99 | p99.9 | p99 vs the same library's plain hit | Reads that waited ≥ 25 ms | Loads |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, row := range readRows {
		name := "ReadDuringRefresh/" + row.sub
		if !r.has(name, "p99-ns") {
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
}

func writeLocks(w io.Writer, r *results) {
	if !r.has("Lock/raw-go-redis", "ns/op") {
		return
	}
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
}

// A target is a ratio stockpot should keep on one side of a bound.
type target struct {
	label string
	// name, unit over base, baseUnit is the measured ratio.
	name, unit, base, baseUnit string
	// bound is the ratio not to exceed, or with atLeast not to fall below.
	bound   float64
	atLeast bool
	// strict makes the bound itself a miss (faster than, not as fast as).
	strict bool
}

// targets are stockpot's performance targets, each as a ratio in one run.
var targets = func() []target {
	ts := []target{
		{label: "Redis-tier single read ≤ 1.05× raw GET + decode (interleaved, median read)",
			name: "HitInterleaved", unit: "stockpot-p50-ns", base: "HitInterleaved", baseUnit: "raw-go-redis-p50-ns", bound: 1.05},
		{label: "Redis-tier single read ≤ go-redis/cache `Once` (interleaved, median read)",
			name: "HitInterleaved", unit: "stockpot-p50-ns", base: "HitInterleaved", baseUnit: "go-redis-cache-p50-ns", bound: 1},
		{label: "One hot key, parallel reads per second ≥ go-redis/cache `Once`'s",
			name: "HitParallel/go-redis-cache", unit: "ns/op", base: "HitParallel/stockpot", baseUnit: "ns/op", bound: 1, atLeast: true},
		{label: "One hot key, parallel reads per second ≥ rockscache's",
			name: "HitParallel/rockscache", unit: "ns/op", base: "HitParallel/stockpot", baseUnit: "ns/op", bound: 1, atLeast: true},
		{label: "Keys of their own, parallel reads per second ≥ rueidis auto-pipelined",
			name: "HitParallelSpread/rueidis-auto", unit: "ns/op", base: "HitParallelSpread/stockpot", baseUnit: "ns/op", bound: 1, atLeast: true},
		{label: "Local-tier hit ≥ 20× faster than go-redis/cache's local hit",
			name: "Hit/go-redis-cache-local", unit: "ns/op", base: "Hit/stockpot-local", baseUnit: "ns/op", bound: 20, atLeast: true},
	}
	for _, kind := range localKinds {
		for _, g := range []struct{ bench, label string }{{"LocalHit", "sequential"}, {"LocalHitParallel", "parallel"}} {
			p := g.bench + "/" + kind.sub + "/"
			ts = append(ts,
				target{label: fmt.Sprintf("Local-tier hit ≤ 2× a bare otter lookup (%s argument, %s)", kind.label, g.label),
					name: p + "stockpot", unit: "ns/op", base: p + "otter", baseUnit: "ns/op", bound: 2},
				target{label: fmt.Sprintf("Local-tier hit faster than sturdyc (%s argument, %s)", kind.label, g.label),
					name: p + "stockpot", unit: "ns/op", base: p + "sturdyc", baseUnit: "ns/op", bound: 1, strict: true})
		}
	}
	return append(ts, target{label: "Stored bytes ≤ go-redis/cache's",
		name: "Miss/stockpot", unit: "stored-B", base: "Miss/go-redis-cache", baseUnit: "stored-B", bound: 1})
}()

// writeTargets compares the results with stockpot's performance targets.
func writeTargets(w io.Writer, r *results) {
	fmt.Fprintln(w, "**Targets** (a ratio of stockpot's to the other's in the same run; for the parallel rows, of reads per second)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Target | Measured | Met |")
	fmt.Fprintln(w, "|---|---|---|")
	for _, t := range targets {
		q, ok := r.ratioVal(t.name, t.unit, t.base, t.baseUnit)
		if !ok {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", t.label, q, t.verdict(q.q))
	}
	// Stampede: one load for stockpot, one per instance for go-redis/cache.
	sp, ok1 := r.median("Stampede/stockpot", "loads/op")
	gc, ok2 := r.median("Stampede/go-redis-cache", "loads/op")
	if ok1 && ok2 {
		fmt.Fprintf(w, "| Stampede: 1 load for stockpot (go-redis/cache: 1 per instance) | %s vs %s | %s |\n",
			count(sp), count(gc), yesNo(sp == 1, ""))
	}
	// p99 during refresh within 2× of a plain hit.
	for _, sub := range []string{"stockpot-stalefor", "stockpot-earlyrefresh"} {
		name, plain := "ReadDuringRefresh/"+sub, "ReadDuringRefresh/stockpot-hit"
		if q, ok := r.ratioVal(name, "p99-ns", plain, "p99-ns"); ok {
			t := target{bound: 2}
			fmt.Fprintf(w, "| p99 during refresh ≤ 2× plain hit (%s) | %s vs %s: %s | %s |\n",
				strings.TrimPrefix(sub, "stockpot-"), r.get(name, "p99-ns", dur), r.get(plain, "p99-ns", dur),
				q, t.verdict(q.q))
		}
	}
}

// verdict judges the measured ratio q against t: yes, a tie (within 2% of
// the bound, which this machine's noise cannot break), or no and by how
// much it misses.
func (t target) verdict(q float64) string {
	if t.atLeast {
		switch {
		case q >= t.bound && !(t.strict && q == t.bound):
			return "yes"
		case q >= t.bound/1.02:
			return "tie (within 2%)"
		}
		return yesNo(false, fmt.Sprintf("%.2f× short", t.bound/q))
	}
	switch {
	case q <= t.bound && !(t.strict && q == t.bound):
		return "yes"
	case q <= t.bound*1.02:
		return "tie (within 2%)"
	}
	return yesNo(false, fmt.Sprintf("%.2f× over", q/t.bound))
}

func yesNo(ok bool, miss string) string {
	switch {
	case ok:
		return "yes"
	case miss == "":
		return "**no**"
	}
	return "**no**, " + miss
}
