#!/usr/bin/env bash
# Where a broadcast's time goes: one pushgate node (+ Redis, as in compare.sh), N
# connections, broadcast at RATE/s; `perf record -e cpu-clock -g` on the gateway for
# PERF_SECS in the middle of the push phase, the gateway's user/system CPU split from
# /proc, and the top symbols. Output under DIR (default loadtest/results/profile-<date>).
#
#   loadtest/bench/profile.sh [N=10000] [RATE=8] [DIR] [MODE=all|user]
#
# MODE=user: pushes to random users (N/4 users) with acks and wait, as compare.sh's
# users scenario.
#
# Needs `perf` (Debian: linux-perf); software event cpu-clock, so it works in VMs
# without hardware counters. Everything runs under `timeout` on 127.0.0.1.
set -euo pipefail

n="${1:-10000}"
rate="${2:-8}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
root="$(cd "$here/../.." && pwd)"
dir="${3:-$root/loadtest/results/profile-$(date -u +%Y-%m-%dT%H%M)}"
mode="${4:-all}"
push_args=(--push all)
if [ "$mode" = user ]; then
  push_args=(--push user --users "$((n / 4))" --ack-timeout-ms 5000 --wait)
fi
mkdir -p "$dir"
secs=20
perf_secs=10
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
command -v perf >/dev/null || { echo "perf not found (apt-get install -y linux-perf)" >&2; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

rport="$(free_port)"
timeout -k 5 300 redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
  --loglevel warning >"$dir/redis.log" 2>&1 &
pids+=("$!")
for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
gport="$(free_port)"
# Limits made for production traffic are off for the load tool (README "Limits").
PUSHGATE_LISTEN="127.0.0.1:$gport" PUSHGATE_JWT_SECRET=s PUSHGATE_REDIS_URL="redis://127.0.0.1:$rport" \
  PUSHGATE_MAX_CONNECTIONS_PER_IP=0 PUSHGATE_CONNECT_RATE_PER_IP=0 PUSHGATE_API_RATE=0 \
  PUSHGATE_MAX_PENDING_ACKS=0 RUST_LOG=warn timeout -k 5 300 "$root/target/release/pushgate" >"$dir/pushgate.log" 2>&1 &
w="$!"; pids+=("$w")
sleep 0.3
gw="$(tr -d ' ' <"/proc/$w/task/$w/children")"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$gport/readyz" >/dev/null && break; sleep 0.1; done

timeout -k 10 200 "$root/target/release/pushgate-load" --quiet --target "127.0.0.1:$gport" \
  --jwt-secret s -n "$n" --ramp-rate 2000 --hold 3s "${push_args[@]}" --push-rate "$rate" \
  --duration "${secs}s" --pid "$gw" --out "$dir/load.json" >"$dir/load.txt" 2>&1 &
lp="$!"; pids+=("$lp")

# wait for the push phase (ramp + hold), then 3 s more
sleep "$(( n / 2000 + 3 + 4 ))"
read -r u0 s0 < <(awk '{ print $14, $15 }' "/proc/$gw/stat")
timeout -k 5 $((perf_secs + 20)) perf record -e cpu-clock -F 999 -g -p "$gw" -o "$dir/perf.data" \
  -- sleep "$perf_secs" >"$dir/perf-record.log" 2>&1 || true
read -r u1 s1 < <(awk '{ print $14, $15 }' "/proc/$gw/stat")
wait "$lp" || true
hz="$(getconf CLK_TCK)"
{
  echo "gateway CPU during the ${perf_secs} s profile: user $(( (u1 - u0) * 100 / hz / perf_secs ))% system $(( (s1 - s0) * 100 / hz / perf_secs ))% of one core"
  grep -E '^(deliveries|latency|gateway|load tool)' "$dir/load.txt"
} | tee "$dir/summary.txt"
perf report -i "$dir/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12 >"$dir/by-dso.txt" || true
perf report -i "$dir/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -40 >"$dir/by-symbol.txt" || true
echo "--- by dso"; cat "$dir/by-dso.txt"
echo "--- top symbols"; head -30 "$dir/by-symbol.txt"
