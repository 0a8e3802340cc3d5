// Command table turns the output of the benchmarks in this module (go test
// -bench, in the standard benchmark format, any number of runs appended to
// one another) into the Markdown summary of run.sh: ratios against the raw
// go-redis baseline and the other libraries, the physical limit of the
// server, the local tier, the stored size, the stampede, the reads during
// expiry, the locks and the targets.
//
// Usage:
//
//	go run ./cmd/table results.txt
//
// With no file it reads standard input. The input is read with
// golang.org/x/perf/benchfmt; configuration lines ("key: value"), such as
// those run.sh writes (date, nproc, cpu-model, go-version) and the
// benchmarks print (redis-version), describe the machine. Every number is
// the median over the runs (golang.org/x/perf/benchmath, assuming nothing
// of the distribution); a ratio is the median of the runs' ratios when the
// runs pair up, with the lowest and highest of them.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"golang.org/x/perf/benchfmt"
	"golang.org/x/perf/benchmath"
)

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: table [bench-output-file]")
		flag.PrintDefaults()
	}
	flag.Parse()
	in, name := io.Reader(os.Stdin), "<stdin>"
	if flag.NArg() > 0 {
		f, err := os.Open(flag.Arg(0))
		if err != nil {
			fmt.Fprintln(os.Stderr, "table:", err)
			os.Exit(1)
		}
		defer f.Close()
		in, name = f, flag.Arg(0)
	}
	res, err := parse(in, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "table:", err)
		os.Exit(1)
	}
	for _, w := range res.warnings {
		fmt.Fprintln(os.Stderr, "table:", w)
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
	// runs; name is without "Benchmark" and the -GOMAXPROCS suffix, such
	// as "Hit/stockpot" or "LocalHit/struct/otter". unit is as printed
	// ("ns/op", "p50-ns"), not benchfmt's tidied unit.
	values map[string]map[string][]float64
	// warnings are the input's lines benchfmt could not read.
	warnings []string
}

// parse reads the benchmark format with benchfmt.
func parse(r io.Reader, fileName string) (*results, error) {
	res := &results{config: map[string]string{}, values: map[string]map[string][]float64{}}
	br := benchfmt.NewReader(r, fileName)
	for br.Scan() {
		switch rec := br.Result().(type) {
		case *benchfmt.SyntaxError:
			res.warnings = append(res.warnings, rec.Error())
		case *benchfmt.Result:
			for _, c := range rec.Config {
				if c.File {
					res.config[c.Key] = string(c.Value)
				}
			}
			name := benchName(rec.Name)
			if res.values[name] == nil {
				res.values[name] = map[string][]float64{}
			}
			for _, v := range rec.Values {
				unit, val := v.Unit, v.Value
				if v.OrigUnit != "" {
					unit, val = v.OrigUnit, v.OrigValue
				}
				res.values[name][unit] = append(res.values[name][unit], val)
			}
		}
	}
	return res, br.Err()
}

// benchName returns n without the -GOMAXPROCS suffix: the base name and its
// sub-benchmarks, joined by slashes.
func benchName(n benchfmt.Name) string {
	base, parts := n.Parts()
	var b strings.Builder
	b.Write(base)
	for _, p := range parts {
		if len(p) > 0 && p[0] == '/' {
			b.Write(p)
		}
	}
	return b.String()
}

// all returns the values of name in unit, in run order.
func (r *results) all(name, unit string) []float64 { return r.values[name][unit] }

// sample returns a benchmath sample of a copy of vs: NewSample sorts the
// values it is given, and the values kept here stay in run order, which
// pairs the runs for ratios.
func sample(vs []float64) *benchmath.Sample {
	return benchmath.NewSample(slices.Clone(vs), &benchmath.DefaultThresholds)
}

// median returns the median of vs, and false when there are none.
func median(vs []float64) (float64, bool) {
	if len(vs) == 0 {
		return 0, false
	}
	return benchmath.AssumeNothing.Summary(sample(vs), 0.95).Center, true
}

// median returns the median of name's values in unit, and false when there
// are none.
func (r *results) median(name, unit string) (float64, bool) { return median(r.all(name, unit)) }

// A ratio is one value over another: the median of the runs' ratios, with
// the lowest and highest of them, when the runs pair up (one value of each
// per run); the ratio of the medians otherwise.
type ratio struct {
	q, lo, hi float64
	paired    bool
}

// ratioVal returns name's values in unit over base's in baseUnit. Runs
// pair up when both have one value per run: a run in a slow minute then
// moves both sides.
func (r *results) ratioVal(name, unit, base, baseUnit string) (ratio, bool) {
	vs, bs := r.all(name, unit), r.all(base, baseUnit)
	if len(vs) == 0 || len(bs) == 0 {
		return ratio{}, false
	}
	for _, b := range bs {
		if b == 0 {
			return ratio{}, false
		}
	}
	if len(vs) == 1 || len(vs) != len(bs) {
		v, _ := median(vs)
		b, _ := median(bs)
		return ratio{q: v / b, lo: v / b, hi: v / b}, true
	}
	qs := make([]float64, len(vs))
	for i := range vs {
		qs[i] = vs[i] / bs[i]
	}
	q, _ := median(qs)
	return ratio{q: q, lo: slices.Min(qs), hi: slices.Max(qs), paired: true}, true
}

// String formats q as 1.05×, followed, when runs paired up, by the range of
// the runs' ratios.
func (q ratio) String() string {
	if !q.paired || q.lo == q.hi {
		return fmtRatio(q.q)
	}
	if q.lo >= 0.1 {
		return fmt.Sprintf("%s (%.2f–%.2f)", fmtRatio(q.q), q.lo, q.hi)
	}
	return fmt.Sprintf("%s (%s–%s)", fmtRatio(q.q), fmtRatio(q.lo), fmtRatio(q.hi))
}

// ratio formats name over base in unit, "baseline" when they are the same
// and "–" when either is missing.
func (r *results) ratio(name, base, unit string) string {
	if name == base {
		if _, ok := r.median(name, unit); ok {
			return "baseline"
		}
	}
	return r.ratioOf(name, unit, base, unit)
}

// ratioOf formats name's values in unit over base's in baseUnit.
func (r *results) ratioOf(name, unit, base, baseUnit string) string {
	q, ok := r.ratioVal(name, unit, base, baseUnit)
	if !ok {
		return "–"
	}
	return q.String()
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

// get formats name's median in unit with format, or "–".
func (r *results) get(name, unit string, format func(float64) string) string {
	v, ok := r.median(name, unit)
	if !ok {
		return "–"
	}
	return format(v)
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

// perSecond formats nanoseconds per operation as operations per second.
func perSecond(ns float64) string {
	if ns <= 0 {
		return "–"
	}
	n := 1e9 / ns
	switch {
	case n >= 1e6:
		return fmt.Sprintf("%.2fM/s", n/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fk/s", n/1e3)
	}
	return fmt.Sprintf("%.0f/s", n)
}

func count(v float64) string { return fmt.Sprintf("%.4g", v) }

func bytes(v float64) string { return fmt.Sprintf("%.0f B", v) }
