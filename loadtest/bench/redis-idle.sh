#!/usr/bin/env bash
# What idle sockets cost Redis: commands per second that a cluster of pushgate nodes
# makes Redis process while its connections sit idle, at several connection counts.
#
#   loadtest/bench/redis-idle.sh [--sizes 1000,10000,100000] [--window 60] \
#       [--per-proc 18000] [--rooms 100] [--ttl-ms 30000] [--ramp 2000] [--bin PATH]
#       [--out FILE]
#
# For each size N: a fresh redis-server on a free loopback port, ceil(N / per-proc)
# gateways on it (PUSHGATE_REGISTRY_TTL_MS=ttl-ms), and pushgate-load holding N
# Socket.IO connections, one user each, spread over --rooms rooms. Once every gateway
# counts its connections and a settle time of one TTL has passed (the registry writes
# of the ramp are done), Redis's `total_commands_processed` and `INFO commandstats` are
# read, again after --window seconds, and the connection counts are checked again. The
# difference, less this script's own INFO calls, is the idle cost. One markdown table
# row per size goes to stdout (and --out), the busiest commands beside it.
#
# --bin runs another pushgate binary (e.g. the base build of compare.sh) to compare.
# Limits made for production traffic are off, as in compare.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
root="$(cd "$here/../.." && pwd)"
bin="$root/target/release/pushgate"
load_bin="$root/target/release/pushgate-load"
sizes="1000,10000,100000"
window=60
per_proc=18000
rooms=100
ttl_ms=30000
ramp=2000
out=""
secret="bench-secret"

while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) sizes="$2"; shift 2 ;;
    --window) window="$2"; shift 2 ;;
    --per-proc) per_proc="$2"; shift 2 ;;
    --rooms) rooms="$2"; shift 2 ;;
    --ttl-ms) ttl_ms="$2"; shift 2 ;;
    --ramp) ramp="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
for f in "$bin" "$load_bin"; do
  [ -x "$f" ] || { echo "missing $f (cargo build --release --workspace)" >&2; exit 2; }
done
for c in redis-server redis-cli curl python3 timeout; do
  command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 2; }
done

export PUSHGATE_MAX_CONNECTIONS_PER_IP=0 PUSHGATE_CONNECT_RATE_PER_IP=0 PUSHGATE_API_RATE=0
work="$(mktemp -d "${TMPDIR:-/tmp}/pushgate-redis-idle.XXXXXX")"
pids=()
stop_all() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM


# Sum of pushgate_connections over the gateways (every frontend).
connections() {
  local t sum=0 n
  for t in "$@"; do
    n="$(curl -s "http://$t/metrics" | awk '/^pushgate_connections[{ ]/ { s += $NF } END { print s + 0 }')"
    sum=$((sum + n))
  done
  echo "$sum"
}

row() { # size
  local n="$1" rport nodes targets=() i port life
  nodes=$(( (n + per_proc - 1) / per_proc ))
  life=$(( n / ramp * 2 + window + ttl_ms / 1000 + 300 ))
  rport="$(free_port)"
  timeout -k 5 "$life" redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --loglevel warning --maxclients 10000 >>"$work/redis.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  for i in $(seq 0 $((nodes - 1))); do
    port="$(free_port)"
    PUSHGATE_LISTEN="127.0.0.1:$port" PUSHGATE_JWT_SECRET="$secret" \
      PUSHGATE_REDIS_URL="redis://127.0.0.1:$rport" PUSHGATE_NODE_ID="idle$i" \
      PUSHGATE_REGISTRY_TTL_MS="$ttl_ms" RUST_LOG=warn \
      timeout -k 5 "$life" "$bin" >>"$work/pushgate.log" 2>&1 &
    pids+=("$!"); targets+=("127.0.0.1:$port")
  done
  for t in "${targets[@]}"; do
    for _ in $(seq 200); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$t/readyz" || true)" = 200 ] && break
      sleep 0.1
    done
  done
  local target_list
  target_list="$(IFS=,; echo "${targets[*]}")"
  say "$n connections on $nodes gateway(s), Redis :$rport"
  # Several loopback source addresses past 40k connections, as compare.sh's big run.
  local sources=0
  [ "$n" -le 40000 ] || sources=$(( n / 20000 + 1 ))
  timeout -k 5 "$life" "$load_bin" --quiet --target "$target_list" --jwt-secret "$secret" \
    --sources "$sources" -n "$n" --ramp-rate "$ramp" --rooms "$rooms" --hold "${life}s" --push none --push-rate 0 \
    --out "$work/load-$n.json" >"$work/load-$n.txt" 2>&1 &
  local load=$!
  pids+=("$load")
  local deadline=$((SECONDS + n / ramp * 2 + 120)) held
  # Every connection up, or (some set-ups failed) at least 90 % by the deadline: the
  # table says how many were held.
  while held="$(connections "${targets[@]}")"; [ "$held" -lt "$n" ]; do
    if [ "$SECONDS" -gt "$deadline" ] && [ "$held" -ge $((n * 9 / 10)) ]; then
      say "$held of $n connections came up; measuring those"
      break
    fi
    if [ "$SECONDS" -gt "$deadline" ] || ! kill -0 "$load" 2>/dev/null; then
      say "only $held of $n connections came up; the load tool said:"
      tail -5 "$work/load-$n.txt" >&2
      stop_all
      echo "| $n | $nodes | only $held came up | - | - | - | - | - |"
      return 0
    fi
    sleep 1
  done
  say "$held connected; settling $((ttl_ms / 1000)) s"
  sleep $((ttl_ms / 1000))
  redis-cli -p "$rport" info commandstats >"$work/cs0"
  local c0 c1 t0 t1
  c0="$(redis-cli -p "$rport" info stats | awk -F: '/^total_commands_processed/ { print $2+0 }')"
  t0="$(date +%s.%N)"
  sleep "$window"
  c1="$(redis-cli -p "$rport" info stats | awk -F: '/^total_commands_processed/ { print $2+0 }')"
  t1="$(date +%s.%N)"
  redis-cli -p "$rport" info commandstats >"$work/cs1"
  local after
  after="$(connections "${targets[@]}")"
  local mem
  mem="$(redis-cli -p "$rport" info memory | awk -F: '/^used_memory:/ { printf "%.1f", $2 / 1048576 }')"
  stop_all
  # Our own INFO calls between the two reads: the second `info stats` counts itself, the
  # first `info commandstats` was before c0, so one call is ours.
  python3 - "$n" "$nodes" "$after" "$c0" "$c1" "$t0" "$t1" "$work/cs0" "$work/cs1" "$mem" <<'EOF'
import sys
n, nodes, after, c0, c1, t0, t1, f0, f1, mem = sys.argv[1:]
def stats(path):
    out = {}
    for line in open(path):
        if line.startswith("cmdstat_"):
            name, rest = line.strip()[8:].split(":", 1)
            out[name] = int(dict(kv.split("=") for kv in rest.split(","))["calls"])
    return out
a, b = stats(f0), stats(f1)
delta = {k: b[k] - a.get(k, 0) for k in b}
delta["info"] = delta.get("info", 0) - 3  # the script's own: two `info stats`, one `info commandstats`
delta = {k: v for k, v in delta.items() if v > 0}
secs = float(t1) - float(t0)
total = (int(c1) - int(c0) - 1) / secs
top = ", ".join(f"{k} {v / secs:.2f}" for k, v in sorted(delta.items(), key=lambda kv: -kv[1])[:5])
print(f"| {int(n):,} | {nodes} | {int(after):,} | {secs:.0f} s | {total:.2f} | {total / int(nodes):.2f} | {mem} MiB | {top or '-'} |")
EOF
}

header="| Idle connections | Gateways | Held at the end | Window | Redis commands/s | per gateway | Redis used_memory | Busiest commands (/s) |
|---:|---:|---:|---:|---:|---:|---:|---|"
echo "$header"
[ -z "$out" ] || echo "$header" >"$out"
IFS=, read -r -a list <<<"$sizes"
for n in "${list[@]}"; do
  line="$(row "$n")"
  echo "$line"
  [ -z "$out" ] || echo "$line" >>"$out"
done
