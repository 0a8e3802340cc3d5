#!/usr/bin/env bash
# run.sh runs the comparison benchmarks of this folder and prints a Markdown
# summary: ratios against raw go-redis and the other libraries, the server's
# physical limit (redis-benchmark), the local tier, the stored size, the
# stampede, reads while entries expire, locks, the targets, the machine and
# the date.
#
#   benchmarks/run.sh            # 5 runs
#   COUNT=3 benchmarks/run.sh    # fewer runs
#
# Environment:
#   COUNT      runs of the whole suite (default 5); each run is a fresh process
#              with a fresh redis-server; runs alternate between libraries,
#              and each starts the order of the libraries from another one
#              (BENCH_RUN), so that a slow minute on a shared machine hits
#              them all alike
#   BENCH      -bench regexp (default ".")
#   BENCHTIME  -benchtime of each benchmark (default 1s)
#   REDIS_ADDR a redis-server to use instead of starting one per run
#   OUT        directory for the raw results, benchstat's summary and the
#              table (default: a new temporary directory)
#
# Without REDIS_ADDR every run starts its own redis-server (no persistence,
# a free loopback port) and kills it at the end, so redis-server must be on
# PATH (apt-get install redis-server); without redis-benchmark
# (apt-get install redis-tools) its row is skipped. A run takes about three minutes.
set -euo pipefail

COUNT="${COUNT:-5}"
BENCH="${BENCH:-.}"
BENCHTIME="${BENCHTIME:-1s}"

cd "$(dirname "${BASH_SOURCE[0]}")"

if ! [[ "$COUNT" =~ ^[1-9][0-9]*$ ]]; then
	echo "run.sh: COUNT must be a positive number, not '$COUNT'" >&2
	exit 2
fi
if [ -z "${REDIS_ADDR:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
	echo "run.sh: redis-server is not on PATH and REDIS_ADDR is not set;" \
		"install it (apt-get install redis-server) or point REDIS_ADDR at a server" >&2
	exit 1
fi

OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/stockpot-bench.XXXXXX")}"
mkdir -p "$OUT"
results="$OUT/results.txt"

echo "building the benchmarks" >&2
go test -c -o "$OUT/benchmarks.test" .
go build -o "$OUT/table" ./cmd/table
# benchstat at the version of golang.org/x/perf in go.mod, the one cmd/table
# reads the results with.
go build -o "$OUT/benchstat" golang.org/x/perf/cmd/benchstat

# The machine, as configuration lines of the benchmark format, which
# benchstat and cmd/table read along with the results.
cpu_model="$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)"
{
	echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "nproc: $(nproc)"
	echo "cpu-model: ${cpu_model:-unknown}"
	echo "go-version: $(go env GOVERSION)"
	echo "stockpot-commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} >"$results"

# A run that fails (a benchmark's error on a machine that stalled) does not
# stop the others: the table leaves out what it did not measure, and run.sh
# says so and exits with an error at the end.
failed=()
for i in $(seq 1 "$COUNT"); do
	echo "run $i of $COUNT" >&2
	if ! BENCH_RUN="$i" "$OUT/benchmarks.test" -test.run '^$' -test.bench "$BENCH" -test.benchmem \
		-test.benchtime "$BENCHTIME" -test.timeout 15m | tee -a "$results" >&2; then
		failed+=("$i")
	fi
done

"$OUT/benchstat" "$results" >"$OUT/benchstat.txt"
"$OUT/table" "$results" >"$OUT/table.md"

echo
echo "## benchstat"
echo
echo '```'
cat "$OUT/benchstat.txt"
echo '```'
echo
echo "## Summary"
echo
cat "$OUT/table.md"
echo
echo "Reproduce with \`COUNT=$COUNT benchmarks/run.sh\` from the repository root."
echo "Raw results, benchstat's output and the table are in $OUT." >&2
if [ "${#failed[@]}" -gt 0 ]; then
	echo "run.sh: run(s) ${failed[*]} of $COUNT failed (their errors are in $results)" >&2
	exit 1
fi
