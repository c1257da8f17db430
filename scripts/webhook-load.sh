#!/usr/bin/env bash
# End-to-end load on the webhook example: HTTP/1.1 keep-alive POSTs of Telegram updates, each
# answered with its webhook reply only after its session is saved in SQLite (WAL).
#   bash scripts/webhook-load.sh [seconds per run, default 10]
# Needs wrk (Debian: apt-get install wrk). wrk shares the machine's cores with the server.
# SMOKE=1 checks that the script still works, in seconds and without wrk: a debug build of the
# example answers three updates with the counts going up (CI runs it so).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
smoke=${SMOKE:-0}
if [ "$smoke" = 1 ]; then
  # The workspace's features, as the test run built them: nothing is compiled again.
  cargo build -q --workspace --all-features --example webhook_bot
  built=target/debug/examples/webhook_bot
else
  command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
  cargo build -q --release --features sqlite,webhook,metrics --example webhook_bot
  built=target/release/examples/webhook_bot
fi
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill -INT "$server" 2>/dev/null && wait "$server"; rm -rf "$work"' EXIT
cp "$built" "$work/"

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
if [ "$smoke" = 1 ]; then
  for n in 1 2 3; do
    body='{"update_id":'$n',"message":{"message_id":'$n',"date":1700000000,"text":"hi","from":{"id":42,"is_bot":false,"first_name":"Ada"},"chat":{"id":42,"type":"private"}}}'
    answer=$(curl -sS --max-time 5 http://127.0.0.1:8080/telegram -H 'Content-Type: application/json' \
      -H 'X-Telegram-Bot-Api-Secret-Token: change-me' -d "$body")
    case $answer in
      *"You have written $n messages."*) ;;
      *) echo "webhook-load smoke: update $n answered: $answer" >&2; cat "$work/server.log" >&2; exit 1 ;;
    esac
  done
  echo "webhook-load smoke: 3 updates answered, each after its save"
  exit 0
fi
for run in many one many one; do
  printf '%-5s ' "$run"
  wrk -t1 -c32 -d"${seconds}s" -s "$work/$run.lua" http://127.0.0.1:8080 |
    awk '/Requests\/sec/ {r=$2} /Latency/ {l=$2} /Non-2xx/ {e=$5} END {printf "%s req/s, mean latency %s%s\n", r, l, (e ? ", non-2xx " e : "")}'
done
