#!/usr/bin/env bash
# Runs each fuzz target of fuzz/ for a bounded time and prints its executions and findings.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); not part of .ci/run,
# which must stay on stable and within its time budget.
#
# usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
status=0
for target in webhook_update record_decode patch_round_trip bot_api_answer; do
  log=$(mktemp)
  if cargo +nightly fuzz run -O "$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="FINDING (see fuzz/artifacts/$target)"
    status=1
  fi
  executions=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  echo "$target: $executions executions in ${seconds}s: $result"
  [ "$result" = ok ] || tail -30 "$log"
  rm -f "$log"
done
exit $status
