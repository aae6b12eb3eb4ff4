#!/usr/bin/env bash
# CPU that idle connections cost, per heartbeat interval: what the big runs spend on
# nothing but keeping connections alive.
#
#   loadtest/bench/idle-cpu.sh [--conns N] [--measure S] PING_MS [PING_MS ...]
#
# For each interval, in turn: one gateway (release build, no Redis, one runtime
# thread, PUSHGATE_PING_INTERVAL_MS=PING_MS), N idle Socket.IO connections from one
# pushgate-load process; once they are up, the CPU ticks (1/100 s) that the gateway
# and the load tool use over S seconds. Prints one line per interval. Build first:
# cargo build --release --workspace.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
conns=15000
measure=60
intervals=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --conns) conns=$2; shift 2 ;;
        --measure) measure=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) intervals+=("$1"); shift ;;
    esac
done
[[ ${#intervals[@]} -gt 0 ]] || { echo "name at least one ping interval in ms" >&2; exit 2; }

gw_bin="$root/target/release/pushgate"
load_bin="$root/target/release/pushgate-load"
for b in "$gw_bin" "$load_bin"; do
    [[ -x $b ]] || { echo "$b is missing: cargo build --release --workspace" >&2; exit 2; }
done

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for ping in "${intervals[@]}"; do
    port="$(free_port)"
    PUSHGATE_LISTEN="127.0.0.1:$port" PUSHGATE_JWT_SECRET=idle-cpu PUSHGATE_WORKER_THREADS=1 \
        PUSHGATE_PING_INTERVAL_MS="$ping" PUSHGATE_PING_TIMEOUT_MS=60000 \
        PUSHGATE_MAX_CONNECTIONS_PER_IP=0 PUSHGATE_CONNECT_RATE_PER_IP=0 RUST_LOG=warn \
        "$gw_bin" >/dev/null 2>&1 &
    gw=$!
    until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.1; done
    # One push far in the future: the run is its hold, nothing is pushed meanwhile.
    "$load_bin" --quiet --target "127.0.0.1:$port" --jwt-secret idle-cpu -n "$conns" \
        --ramp-rate 3000 --hold "$((measure + 40))s" --duration 1s --push all \
        --push-rate 0.0001 --push-url "http://127.0.0.1:$port/v1/push" --workers 1 \
        >/dev/null 2>&1 &
    load=$!
    # Set-up done (N / 3000 per second, plus margin) before measuring.
    sleep $((conns / 3000 + 15))
    held=$(($(ls "/proc/$gw/fd" | wc -l) - 12))
    load_pids=$(pgrep -P "$load" -d ' ' || true)
    g0=$(ticks "$gw"); l0=0
    for p in $load $load_pids; do l0=$((l0 + $(ticks "$p"))); done
    sleep "$measure"
    g1=$(ticks "$gw"); l1=0
    for p in $load $load_pids; do l1=$((l1 + $(ticks "$p"))); done
    echo "ping ${ping} ms, ~${held} connections: gateway $((g1 - g0)) ticks, load tool $((l1 - l0)) ticks in ${measure} s"
    kill "$load" "$gw" 2>/dev/null || true
    wait 2>/dev/null || true
done
