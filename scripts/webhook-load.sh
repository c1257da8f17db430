#!/usr/bin/env bash
# End-to-end load on the webhook example: HTTP/1.1 keep-alive POSTs of Telegram updates, each
# answered with its webhook reply only after its session is saved in SQLite (WAL).
#   bash scripts/webhook-load.sh [seconds per run, default 10]
# Needs wrk (Debian: apt-get install wrk). wrk shares the machine's cores with the server.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build -q --release --features sqlite,webhook,metrics --example webhook_bot
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill -INT "$server" 2>/dev/null && wait "$server"; rm -rf "$work"' EXIT
cp target/release/examples/webhook_bot "$work/"

# One request per update; USER picks the sender (and private chat).
script() {
  cat <<LUA
local n = 0
request = function()
  n = n + 1
  local user = $1
  local body = string.format('{"update_id":%d,"message":{"message_id":%d,"date":1700000000,"text":"hi","from":{"id":%d,"is_bot":false,"first_name":"Ada"},"chat":{"id":%d,"type":"private"}}}', n, n, user, user)
  return wrk.format("POST", "/telegram", {["Content-Type"]="application/json", ["X-Telegram-Bot-Api-Secret-Token"]="change-me"}, body)
end
LUA
}
script 'math.random(1, 10000)' > "$work/many.lua"
script '42' > "$work/one.lua"

(cd "$work" && exec ./webhook_bot > server.log 2>&1) &
server=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break; sleep 0.1; done
for run in many one many one; do
  printf '%-5s ' "$run"
  wrk -t1 -c32 -d"${seconds}s" -s "$work/$run.lua" http://127.0.0.1:8080 |
    awk '/Requests\/sec/ {r=$2} /Latency/ {l=$2} /Non-2xx/ {e=$5} END {printf "%s req/s, mean latency %s%s\n", r, l, (e ? ", non-2xx " e : "")}'
done
