#!/usr/bin/env bash
# A PostgreSQL primary with a streaming standby, from the machine's own binaries (initdb,
# pg_ctl, pg_basebackup), on spare ports, for the failover test (tests/pg_failover.rs).
# Every start makes a new pair: a failover leaves the old primary dead and the standby
# promoted, so a pair serves one run.
#
#   scripts/pg-standby.sh start sync    primary + standby, synchronous_standby_names = '*'
#   scripts/pg-standby.sh start async   the same, replication asynchronous
#   scripts/pg-standby.sh stop          stops both (immediate) and removes their files
#
# Environment: PG_PAIR_DIR (default /tmp/typed-session-pg), PG_PRIMARY_PORT (5441),
# PG_STANDBY_PORT (5442). Both serve database `test` to user `postgres`, trust auth, on
# 127.0.0.1. Each node's postmaster PID is the first line of $PG_PAIR_DIR/<node>/postmaster.pid.
#
# Nothing is fsynced (fsync = off): the test kills processes, not the machine, and what a
# killed process wrote is in the kernel's page cache. The standby is configured so that once
# promoted it waits for no standby of its own (synchronous_standby_names = ''): a new
# primary that waited for a standby that does not exist would accept no write.
set -euo pipefail

DIR=${PG_PAIR_DIR:-/tmp/typed-session-pg}
PRIMARY_PORT=${PG_PRIMARY_PORT:-5441}
STANDBY_PORT=${PG_STANDBY_PORT:-5442}
BIN=$(dirname "$(readlink -f "$(command -v initdb)")")

# PostgreSQL refuses to run as root: as root, run its tools as the postgres user.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

stop() {
  for node in primary standby; do
    if [ -f "$DIR/$node/postmaster.pid" ]; then
      as_pg "$BIN/pg_ctl" -D "$DIR/$node" -m immediate stop >/dev/null 2>&1 || true
    fi
  done
  rm -rf "$DIR"
}

case "${1:-}" in
  stop)
    stop
    exit 0
    ;;
  start)
    mode=${2:-sync}
    ;;
  *)
    echo "usage: $0 start [sync|async] | stop" >&2
    exit 2
    ;;
esac
case "$mode" in
  sync) standbys="'*'" ;;
  async) standbys="''" ;;
  *)
    echo "$0: mode must be sync or async, not $mode" >&2
    exit 2
    ;;
esac

stop
mkdir -p "$DIR"
[ "$(id -u)" = 0 ] && chown postgres "$DIR"

as_pg "$BIN/initdb" -D "$DIR/primary" -U postgres -A trust --no-sync >/dev/null
cat >>"$DIR/primary/postgresql.conf" <<EOF
port = $PRIMARY_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
fsync = off
full_page_writes = off
wal_level = replica
max_wal_senders = 4
wal_keep_size = 256MB
synchronous_commit = on
max_connections = 100
EOF
echo "host replication postgres 127.0.0.1/32 trust" >>"$DIR/primary/pg_hba.conf"
as_pg "$BIN/pg_ctl" -D "$DIR/primary" -l "$DIR/primary.log" -w start >/dev/null
as_pg "$BIN/createdb" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres test

# -R writes standby.signal and primary_conninfo; -X stream copies the WAL made meanwhile.
as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -D "$DIR/standby" \
  -R -X stream -c fast --no-sync
cat >>"$DIR/standby/postgresql.conf" <<EOF
port = $STANDBY_PORT
synchronous_standby_names = ''
hot_standby = on
EOF
as_pg "$BIN/pg_ctl" -D "$DIR/standby" -l "$DIR/standby.log" -w start >/dev/null

# Synchronous only now: with no standby yet, every commit (createdb's too) would wait.
psql -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d test -q \
  -c "ALTER SYSTEM SET synchronous_standby_names = $standbys" -c "SELECT pg_reload_conf()" >/dev/null

# Streaming (and, in sync mode, the synchronous standby) before anyone writes.
want=async
[ "$mode" = sync ] && want=sync
for _ in $(seq 200); do
  state=$(psql -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d test -Atc \
    "SELECT state || ' ' || sync_state FROM pg_stat_replication" 2>/dev/null || true)
  [ "$state" = "streaming $want" ] && break
  sleep 0.05
done
if [ "$state" != "streaming $want" ]; then
  echo "$0: the standby is not streaming ($state)" >&2
  exit 1
fi
echo "primary 127.0.0.1:$PRIMARY_PORT, standby 127.0.0.1:$STANDBY_PORT ($mode)"
