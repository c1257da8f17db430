#!/usr/bin/env bash
# Runs the Telegraf/grammY anchors (../shared/anchors) and typed-session's port of the same
# workloads (benches/src/bin/anchor_bench/) back to back on this machine, and prints the ratios.
# Only this script needs Node; the project's tests do not.
#
# usage: scripts/compare-anchors.sh [ANCHORS_DIR]
#   ANCHORS_DIR  a writable copy of the anchors with `npm ci` done; without it, the script
#                copies ../shared/anchors to a temporary folder and runs `npm ci` there.
#   PARTS="A C D" (default) picks the anchors' parts, "A C D E" when POSTGRES_URL, MYSQL_URL and
#   REDIS_URL are set (E: @telegraf/session's server stores); NO_WAIT=1 skips their idle-wait.
#   POSTGRES_URL, MYSQL_URL, REDIS_URL, MONGODB_URL add those stores to our store rows.
#   The charts of BENCHMARKS.md (benches/charts/*.svg) are drawn again from the run, whose JSON
#   lines are kept beside them (benches/charts/results.jsonl).
#   SMOKE=1 checks that the script still works, in seconds: no anchors, a debug build, a few
#   hundred updates per row, results and charts under target/ (CI runs it so).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
anchors=${1:-}
smoke=${SMOKE:-0}
if [ "$smoke" = 1 ]; then
  anchors=
elif [ -z "$anchors" ]; then
  anchors=$(mktemp -d)/anchors
  cp -r "$root/../shared/anchors" "$anchors"
  chmod -R u+w "$anchors"
  (cd "$anchors" && npm_config_nodedir=/usr npm ci --no-audit --no-fund)
fi
out=${OUT:-$root/target/compare-anchors.jsonl}
charts=$root/benches/charts
if [ "$smoke" = 1 ]; then
  out=$root/target/compare-anchors-smoke.jsonl
  charts=$root/target/charts-smoke
fi
mkdir -p "$(dirname "$out")"
: > "$out"

parts="A C D"
if [ -n "${POSTGRES_URL:-}" ] && [ -n "${MYSQL_URL:-}" ] && [ -n "${REDIS_URL:-}" ]; then parts="A C D E"; fi
parts=${PARTS:-$parts}
if [ -n "$anchors" ]; then
  echo "# anchors: PARTS=$parts (about 7 minutes, 12 with E)" >&2
  (cd "$anchors" && OUT="$out.anchors" PARTS="$parts" ./run-all.sh > /dev/null)
  cat "$out.anchors" >> "$out"
fi

echo "# typed-session" >&2
if [ "$smoke" = 1 ]; then
  # The workspace's features, as the test run built them: nothing is compiled again.
  (cd "$root" && cargo build --quiet --workspace --all-features --bin anchor_bench)
  built=$root/target/debug/anchor_bench
  # Tiny rows, one pass each, never waiting for an idle machine.
  bench() { "$built" "$@" --updates 400 --users 40 --runs 1 --max_others 100; }
else
  (cd "$root" && cargo build --quiet --release -p typed-session-bench --bin anchor_bench)
  built=$root/target/release/anchor_bench
  bench() { "$built" "$@"; }
fi
for workload in seq conc; do
  for variant in baseline session; do
    for runtime in current-thread multi-thread; do
      bench --workload "$workload" --variant "$variant" --runtime "$runtime" | tee -a "$out"
    done
  done
done
bench --bench writes | tee -a "$out"
bench --bench store --store sqlite-memory | tee -a "$out"
bench --bench allocs | tee -a "$out"
# A server's own CPU time is part of the work here, not disturbance: no rejection.
server() { bench --bench store --max_others 100 --store "$@" | tee -a "$out"; }
# Part E beside the anchors': the raw driver and ours, one at a time and 100 in flight.
rows() {
  for workload in seq window; do
    for variant in raw session cached; do server "$1" --variant "$variant" --workload "$workload"; done
  done
}
rows sqlite-wal
# A commit per patch (SqliteStore::with_group_commit(false); group commit is the default),
# against the same raw rows.
for workload in seq window; do server sqlite-wal-single --workload "$workload"; done
# Durability::Full (synchronous=FULL): a sync of the log per commit, beside the anchors' `wal`.
for workload in seq window; do server sqlite-wal-full --workload "$workload"; done
if [ -n "${POSTGRES_URL:-}" ]; then rows postgres; fi
if [ -n "${MYSQL_URL:-}" ]; then rows mysql; fi
if [ -n "${REDIS_URL:-}" ]; then rows redis; fi
if [ -n "${REDIS_CLUSTER_URLS:-}" ]; then
  for workload in seq window; do server redis-cluster --workload "$workload"; done
fi
# SecantusDB (the MongoDB stand-in here) is a Python server: a smaller run, one timed pass.
if [ -n "${MONGODB_URL:-}" ]; then server mongodb --updates 2000 --users 100 --runs 1; fi

python3 "$root/scripts/ratios.py" "$out"
python3 "$root/scripts/charts.py" "$out" "$charts"
if [ "$smoke" != 1 ]; then cp "$out" "$charts/results.jsonl"; fi
