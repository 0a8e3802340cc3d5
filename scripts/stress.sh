#!/usr/bin/env bash
# stress.sh hunts flakes: it runs the root package's tests under the race
# detector COUNT times (10 by default, as go test -count=10 would) while
# HOGS processes (2 by default) burn CPU beside them, and reports how many
# runs were green.
#
#   scripts/stress.sh                        # 10 runs, 2 CPU hogs
#   COUNT=3 RUN='TestFleetStampede' scripts/stress.sh
#
# Environment:
#   COUNT    runs of the test binary (default 10)
#   HOGS     CPU-bound processes run beside the tests (default 2, one per
#            core of a two-core machine; 0 for none)
#   RUN      -run regexp (default: every test)
#   TIMEOUT  -timeout of each run (default 15m)
#   OUT      directory for the logs (default: a new temporary directory)
#
# The test binary is built once with -race, then run COUNT times, each run a
# fresh process with -count=1: a run that panics or times out does not take
# the runs after it down with it, and each run's time and failures are
# reported on their own. STOCKPOT_REQUIRE_REDIS=1 is set, so a missing
# redis-server or redis-cli fails the runs instead of making them easier.
# The hogs are killed when the script ends, however it ends; they also stop
# on their own if the script is killed outright.
set -euo pipefail

COUNT="${COUNT:-10}"
HOGS="${HOGS:-2}"
RUN="${RUN:-.}"
TIMEOUT="${TIMEOUT:-15m}"

if ! [[ "$COUNT" =~ ^[1-9][0-9]*$ ]] || ! [[ "$HOGS" =~ ^[0-9]+$ ]]; then
	echo "stress.sh: COUNT must be a positive number and HOGS a number (COUNT='$COUNT', HOGS='$HOGS')" >&2
	exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="/usr/local/go/bin:$PATH"
fi
OUT="${OUT:-$(mktemp -d -t stockpot-stress-XXXXXX)}"
mkdir -p "$OUT"

hogs=()
stop_hogs() {
	if [ "${#hogs[@]}" -gt 0 ]; then
		kill "${hogs[@]}" 2>/dev/null || true
		wait "${hogs[@]}" 2>/dev/null || true
		hogs=()
	fi
}
tests="" # the pid of the running test binary
cleanup() {
	if [ -n "$tests" ]; then
		kill "$tests" 2>/dev/null || true
	fi
	stop_hogs
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fmt_secs() {
	printf '%dm%02ds' $(($1 / 60)) $(($1 % 60))
}

echo "stress: building the test binary with -race"
bin="$OUT/cache.test"
go test -race -c -o "$bin" .

# A hog spins in bash, and checks every 200000 steps (a second or so) that
# this script still runs, so that it ends even if the script is killed with
# SIGKILL.
for ((h = 0; h < HOGS; h++)); do
	bash -c 'while kill -0 "$1" 2>/dev/null; do for ((i = 0; i < 200000; i++)); do :; done; done' hog "$$" &
	hogs+=("$!")
done
runs="runs"
if [ "$COUNT" -eq 1 ]; then
	runs="run"
fi
echo "stress: $COUNT $runs of -run '$RUN' with $HOGS CPU hogs beside them (pids: ${hogs[*]:-none}) on $(nproc) cores; logs in $OUT"

export STOCKPOT_REQUIRE_REDIS=1
start=$SECONDS
green=0
failed_runs=()
for ((r = 1; r <= COUNT; r++)); do
	log="$OUT/run-$r.log"
	t0=$SECONDS
	status=0
	"$bin" -test.run "$RUN" -test.count=1 -test.timeout "$TIMEOUT" -test.v >"$log" 2>&1 &
	tests=$!
	wait "$tests" || status=$?
	tests=""
	took=$((SECONDS - t0))
	if [ "$status" -eq 0 ]; then
		green=$((green + 1))
		echo "run $r/$COUNT: ok in $(fmt_secs "$took")"
	else
		failed_runs+=("$r")
		echo "run $r/$COUNT: FAILED (exit $status) in $(fmt_secs "$took"); log: $log"
		# The failed tests, and what a panic or a timeout said.
		grep -E '^\s*--- FAIL|^panic:|^FAIL|timed out' "$log" | head -20 | sed 's/^/    /' || true
	fi
done
stop_hogs

echo
echo "stress: $green of $COUNT $runs green, with $HOGS CPU hogs, in $(fmt_secs $((SECONDS - start)))"
if [ "${#failed_runs[@]}" -gt 0 ]; then
	echo "stress: failed runs: ${failed_runs[*]} (logs in $OUT)"
	exit 1
fi
