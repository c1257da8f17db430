#!/usr/bin/env bash
# Runs a failover test RUNS times in a row (default 20) and prints one row per run:
# acknowledged, stored, lost, the longest pause. Exits non-zero if any run failed or lost an
# acknowledged update.
#
# usage: RUNS=20 TEST=with_wait_for_one_replica scripts/failover-runs.sh
#   TEST  Redis Cluster with WAIT (tests/cluster_failover.rs):
#           with_wait_for_one_replica (default: a master killed under load) or replica_lags
#           (its replica stopped and cut off first, then the master killed);
#         PostgreSQL with a synchronous standby (tests/pg_failover.rs):
#           pg_sync (the primary killed under load) or pg_sync_lags (the standby stopped and
#           cut off first)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-20}
test=${TEST:-with_wait_for_one_replica}
# The short names, each matching one test only (the no-WAIT variants also hold "replica_lags").
binary=cluster_failover
case "$test" in
  with_wait_for_one_replica) test=with_wait_for_one_replica_nothing_acknowledged_is_lost ;;
  replica_lags) test=with_wait_a_master_killed_while_its_replica_lags_loses_nothing_acknowledged ;;
  pg_sync)
    binary=pg_failover
    test=with_a_synchronous_standby_a_primary_killed_under_load_loses_nothing_acknowledged
    ;;
  pg_sync_lags)
    binary=pg_failover
    test=with_a_synchronous_standby_that_lags_a_primary_killed_loses_nothing_acknowledged
    ;;
esac
export TYPED_SESSION_REQUIRE_SERVERS=1
cargo test --quiet --all-features --test "$binary" --no-run 2>/dev/null
echo "| run | acknowledged | stored | lost | longest pause |"
echo "|---|---|---|---|---|"
bad=0
for ((run = 1; run <= runs; run++)); do
  if ! out=$(cargo test --quiet --all-features --test "$binary" "$test" -- --exact --nocapture 2>&1); then
    bad=1
  fi
  line=$(grep -o 'longest pause of an update [^;]*;.*acknowledged [0-9]*, stored [0-9]*, lost [0-9]*' <<< "$out" || true)
  if [ -z "$line" ]; then
    echo "| $run | failed | | | |"
    bad=1
    continue
  fi
  pause=$(sed -E 's/longest pause of an update ([^;]*);.*/\1/' <<< "$line")
  read -r acked stored lost < <(sed -E 's/.*acknowledged ([0-9]+), stored ([0-9]+), lost ([0-9]+)/\1 \2 \3/' <<< "$line")
  echo "| $run | $acked | $stored | $lost | $pause |"
  [ "$lost" = 0 ] || bad=1
done
exit $bad
