#!/usr/bin/env bash
# Starts a local Redis Cluster of 3 masters and 3 replicas on 127.0.0.1:7000-7005 from the
# machine's redis-server, unless one already answers there. Idempotent: a node that runs is
# left alone, and the cluster is created only when its slots are not all assigned. Nothing is
# kept on disk beyond the nodes' cluster files under $DIR (default: /tmp/typed-session-cluster).
#
#   scripts/redis-cluster.sh          start (or check) the cluster
#   scripts/redis-cluster.sh stop     stop its nodes (by the PIDs they wrote)
set -euo pipefail

DIR=${REDIS_CLUSTER_DIR:-/tmp/typed-session-cluster}
PORTS=(7000 7001 7002 7003 7004 7005)

if [ "${1:-}" = stop ]; then
  for port in "${PORTS[@]}"; do
    pidfile="$DIR/$port/redis.pid"
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  exit 0
fi

for port in "${PORTS[@]}"; do
  if redis-cli -p "$port" ping >/dev/null 2>&1; then
    continue
  fi
  mkdir -p "$DIR/$port"
  # A stale cluster file would name nodes that no longer exist: start each node afresh.
  rm -f "$DIR/$port/nodes.conf"
  redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 2000 --dir "$DIR/$port" \
    --save "" --appendonly no --daemonize yes --pidfile "$DIR/$port/redis.pid" \
    --logfile "$DIR/$port/redis.log"
done

for port in "${PORTS[@]}"; do
  for _ in $(seq 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
done

# Up, with every master's replica connected and in sync (writes that wait for a replica
# need one).
cluster_ok() {
  redis-cli -p 7000 cluster info 2>/dev/null | grep -q 'cluster_state:ok' || return 1
  local port role
  for port in "${PORTS[@]}"; do
    role=$(redis-cli -p "$port" info replication 2>/dev/null | tr -d '\r')
    if grep -q '^role:master' <<<"$role" && ! grep -q 'state=online' <<<"$role"; then
      return 1
    fi
  done
}

if ! cluster_ok; then
  if ! redis-cli -p 7000 cluster info 2>/dev/null | grep -q 'cluster_slots_assigned:16384'; then
    redis-cli --cluster create 127.0.0.1:7000 127.0.0.1:7001 127.0.0.1:7002 \
      127.0.0.1:7003 127.0.0.1:7004 127.0.0.1:7005 --cluster-replicas 1 --cluster-yes >/dev/null
  fi
fi
for _ in $(seq 300); do
  cluster_ok && break
  sleep 0.1
done
cluster_ok || { echo "redis-cluster: the cluster on 7000-7005 is not ok" >&2; exit 1; }
echo "redis-cluster: ok on 127.0.0.1:7000-7005"
