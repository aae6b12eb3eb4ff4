#!/usr/bin/env bash
# Start N socket.io peer processes sharing one fresh redis-server, for load tests.
#
#   loadtest/peers/socketio/start.sh N [BASE_PORT]
#
# Processes listen on 127.0.0.1:BASE_PORT .. BASE_PORT+N-1 (default 4001). JWT_SECRET,
# HOST and BACKLOG are passed through. The script prints the targets, the pids (for
# `pushgate-load --pid`) and the Redis URL, writes them to $STATE_DIR (default
# /tmp/pushgate-peer-socketio), and runs until SIGINT/SIGTERM, then stops everything it
# started.
set -euo pipefail

n="${1:-}"
base="${2:-4001}"
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N [BASE_PORT]   (N >= 1 socket.io processes)" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${STATE_DIR:-/tmp/pushgate-peer-socketio}"
mkdir -p "$state"

command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install -y redis-server)" >&2; exit 1; }
command -v node >/dev/null || { echo "node not found (Node 20+ needed)" >&2; exit 1; }
if [ ! -d "$here/node_modules" ]; then
  (cd "$here" && npm ci --no-audit --no-fund)
fi

# A free TCP port on 127.0.0.1, found by binding port 0.
free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# Every process raises its own soft open-files limit as far as the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --loglevel warning >"$state/redis.log" 2>&1 &
pids+=("$!")
for _ in $(seq 50); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis_url="redis://127.0.0.1:$redis_port"

targets=()
node_pids=()
for i in $(seq 0 $((n - 1))); do
  port=$((base + i))
  PORT="$port" REDIS_URL="$redis_url" node "$here/server.js" >"$state/peer-$port.log" 2>&1 &
  pids+=("$!")
  node_pids+=("$!")
  targets+=("127.0.0.1:$port")
done

# Wait until every process answers /healthz.
for t in "${targets[@]}"; do
  ok=""
  for _ in $(seq 100); do
    if node -e "require('http').get('http://$t/healthz',r=>process.exit(r.statusCode==200?0:1)).on('error',()=>process.exit(1))"; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "peer $t did not start; see $state/peer-${t##*:}.log" >&2; exit 1; }
done

(IFS=,; echo "${targets[*]}") >"$state/targets"
(IFS=,; echo "${node_pids[*]}") >"$state/pids"
echo "$redis_url" >"$state/redis_url"
echo "redis    $redis_url"
echo "targets  $(cat "$state/targets")"
echo "pids     $(cat "$state/pids")"
echo "ready (Ctrl-C to stop)"
wait
