#!/usr/bin/env bash
# RSS per polling-only socket.io connection, side by side for several gateway binaries.
#
#   loadtest/bench/polling-rss.sh [--clients N] [--procs K] [--hold S] [--rounds R] \
#       [--transport polling|websocket] LABEL=BINARY [LABEL=BINARY ...]
#
# For each round and each binary, in turn: start a fresh single-node gateway on a free
# loopback port, read its RSS, connect N socket.io-client clients with
# `transports: ["polling"]` (`--transport websocket`: WebSocket-only clients, for
# comparison) from K Node processes (loadtest/bench/polling-clients.js), hold them
# for S seconds (longer than the 25 s ping interval, so every session has
# been through a ping/pong over polling), read the RSS again, count the gateway's
# established TCP connections, stop everything. Prints one line per run and, at the
# end, the mean KiB per client per binary and each one's ratio to the first.
#
# Needs node 20+ and `npm ci` in tests/node (socket.io-client is taken from there).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
clients=3000
procs=3
hold=40
rounds=1
transport=polling
bins=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --clients) clients=$2; shift 2 ;;
        --procs) procs=$2; shift 2 ;;
        --hold) hold=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --transport) transport=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *=*) bins+=("$1"); shift ;;
        *) echo "polling-rss: unknown argument $1" >&2; exit 2 ;;
    esac
done
((${#bins[@]} > 0)) || { echo "polling-rss: give at least one LABEL=BINARY" >&2; exit 2; }


work=$(mktemp -d /tmp/polling-rss.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

declare -A sum count
run_one() {
    local label=$1 bin=$2 port gw per i start idle conns ok
    port=$(free_port)
    PUSHGATE_LISTEN=127.0.0.1:$port RUST_LOG=warn timeout $((hold + 300)) "$bin" >"$work/$label.log" 2>&1 &
    local tpid=$!
    pids+=("$tpid")
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    # The gateway is timeout's child.
    gw=$(pgrep -P "$tpid")
    sleep 2
    start=$(rss_kib "$gw")
    per=$(((clients + procs - 1) / procs))
    local cpids=()
    for ((i = 0; i < procs; i++)); do
        timeout $((hold + 300)) node "$here/polling-clients.js" "http://127.0.0.1:$port" "$per" 500 "$transport" >"$work/c$i.out" 2>&1 &
        cpids+=("$!")
        pids+=("$!")
    done
    for ((i = 0; i < 1200; i++)); do
        ok=0
        for ((k = 0; k < procs; k++)); do
            grep -q '^connected\|^failed' "$work/c$k.out" 2>/dev/null && ok=$((ok + 1))
        done
        ((ok == procs)) && break
        sleep 0.25
    done
    if grep -q '^failed' "$work"/c*.out; then
        echo "$label: some clients failed: $(grep -h '^failed' "$work"/c*.out | head -1)" >&2
    fi
    sleep "$hold"
    idle=$(rss_kib "$gw")
    conns=$(ss -Htn state established "( sport = :$port )" | wc -l)
    local up
    up=$(grep -h '^status' "$work"/c*.out | tail -n "$procs" | awk '{s += $2} END {print s + 0}')
    for p in "${cpids[@]}"; do kill "$p" 2>/dev/null || true; done
    kill "$gw" 2>/dev/null || true
    wait "$tpid" 2>/dev/null || true
    for p in "${cpids[@]}"; do wait "$p" 2>/dev/null || true; done
    local kib
    kib=$(python3 -c "print(f'{($idle - $start) / $((per * procs)):.2f}')")
    printf '%-10s clients=%d (connected at end: %d) tcp=%d rss_start=%d KiB rss_idle=%d KiB per_client=%s KiB\n' \
        "$label" "$((per * procs))" "$up" "$conns" "$start" "$idle" "$kib"
    sum[$label]=$(python3 -c "print(${sum[$label]:-0} + $kib)")
    count[$label]=$((${count[$label]:-0} + 1))
    rm -f "$work"/c*.out
}

echo "# $(date -u +%FT%TZ) $(nproc) cores; $transport clients=$clients procs=$procs hold=${hold}s rounds=$rounds"
for ((r = 1; r <= rounds; r++)); do
    for spec in "${bins[@]}"; do
        run_one "${spec%%=*}" "${spec#*=}"
    done
done
first=""
for spec in "${bins[@]}"; do
    label=${spec%%=*}
    mean=$(python3 -c "print(f'{${sum[$label]} / ${count[$label]}:.2f}')")
    [[ -z $first ]] && first=$mean
    ratio=$(python3 -c "print(f'{$mean / $first:.2f}')")
    echo "mean $label: $mean KiB per $transport client (x$ratio of ${bins[0]%%=*})"
done
