#!/usr/bin/env bash
# Faults under load (issue 9.6): what pushgate does when Redis dies, when a client stops
# reading, when hostile clients attack, and over a long steady run.
#
#   loadtest/bench/faults.sh redis-kill [--clients 300] [--rate 50] [--secs 40]
#                                       [--kill-at 12] [--down 5] [--ack-ms 3000]
#   loadtest/bench/faults.sh slow       [--clients 1000] [--stalled 3] [--secs 40]
#                                       [--rounds 3] [--pad 0]
#   loadtest/bench/faults.sh hostile    [--clients 1000] [--hostile 1000] [--secs 40]
#                                       [--rounds 3]
#   loadtest/bench/faults.sh soak       [--minutes 30] [--clients 2000] [--interval 15]
#                                       [--churn 200] [--rate 100]
#   common: [--results DIR] [--bin PATH]
#
# redis-kill  Two gateways on one fresh redis-server, --clients Socket.IO clients
#             (pushgate-load, one user each, acking), and loadtest/bench/faults-caller.js
#             sending acked pushes (`"ack": {"timeout_ms": --ack-ms}`) to random users at
#             --rate per second, alternating between the gateways. At --kill-at seconds
#             redis-server is killed with SIGKILL and restarted on the same port --down
#             seconds later. Every accepted push's report is then read
#             (GET /v1/pushes/{id}, from the other gateway for every other push) until
#             final. Counts: sent, 2xx, 503, other answers, acked, not delivered
#             (failed / timed_out / unknown), and lost (accepted, but the report never
#             became final or its counts do not add up). Exits 1 on a loss.
# slow        One gateway, --clients normal clients receiving a broadcast every second
#             (pushgate-load, p99 from send to receipt), beside --stalled raw clients
#             that join "/" and then never read (faults-clients.py stall), each also
#             sent 64 KiB pushes to its own user 4 times a second so that its queue
#             fills within the run. Runs without and with the stalled clients,
#             alternating, --rounds times each (--pad: filler bytes in each broadcast),
#             and reads pushgate_disconnects_total{reason="slow_client"}.
# hostile     One gateway with the default limits and a JWT secret, --clients normal
#             clients receiving a broadcast every second, beside --hostile attackers
#             (faults-clients.py hostile, from 127.0.0.99..199: malformed Engine.IO
#             and Socket.IO packets, oversized frames, connect floods, handshakes without
#             a token, raw garbage). Without and with the attack, alternating; refusals
#             from /metrics (limit refusals, connect errors, disconnect reasons).
# soak        Two gateways on one Redis, --clients connections taking acked per-user
#             pushes at --rate per second for --minutes, and --churn more connections
#             opened and closed every ~25 s; VmRSS and open files of each gateway every
#             --interval seconds into soak.csv and an ASCII plot (soak.txt).
#
# Results (JSON of each load run, CSVs, a summary.md of the figures) go to --results
# (default loadtest/results/faults-<date>/<subcommand>/, git-ignored). Every process runs under
# `timeout`, on 127.0.0.1, with Redis on a free port. Needs target/release/pushgate and
# pushgate-load (cargo build --release --workspace), redis-server, node 20, python3, curl.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
root="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
gw_bin="$target_dir/release/pushgate"
load_bin="$target_dir/release/pushgate-load"
secret="bench-secret"

cmd="${1:-}"
[ -n "$cmd" ] && shift || true
args="$*"
case "$cmd" in
  redis-kill|slow|hostile|soak) ;;
  -h|--help|"") sed -n '2,45p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown subcommand: $cmd (redis-kill, slow, hostile, soak)" >&2; exit 2 ;;
esac

clients=""; rate=""; secs=40; kill_at=12; down=5; ack_ms=3000; stalled=3; rounds=3
pad=0; hostile=1000; minutes=30; interval=15; churn=200; results=""
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --secs) secs="$2"; shift 2 ;;
    --kill-at) kill_at="$2"; shift 2 ;;
    --down) down="$2"; shift 2 ;;
    --ack-ms) ack_ms="$2"; shift 2 ;;
    --stalled) stalled="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --pad) pad="$2"; shift 2 ;;
    --hostile) hostile="$2"; shift 2 ;;
    --minutes) minutes="$2"; shift 2 ;;
    --interval) interval="$2"; shift 2 ;;
    --churn) churn="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --bin) gw_bin="$2"; shift 2 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
for f in "$gw_bin" "$load_bin"; do
  [ -x "$f" ] || { echo "missing $f (cargo build --release --workspace)" >&2; exit 2; }
done
for c in redis-server redis-cli node python3 curl timeout; do
  command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

[ -n "$results" ] || results="$root/loadtest/results/faults-$(date -u +%Y-%m-%d)/$cmd"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
log="$results/faults.log"
summary="$results/summary.md"
note() { echo "$*" | tee -a "$summary"; }

# ---- processes ------------------------------------------------------------------------
life=$(( minutes * 60 + 600 ))   # hard lifetime of every process we start (seconds)
wrappers=()      # pids of the `timeout` wrappers we started
gw_pids=()       # the gateways' own pids
targets=()
redis_port=""
redis_wrapper=""

stop_all() {
  local w
  for w in "${wrappers[@]}"; do kill -TERM "$w" 2>/dev/null || true; done
  for w in "${wrappers[@]}"; do wait "$w" 2>/dev/null || true; done
  wrappers=(); gw_pids=(); targets=(); redis_port=""; redis_wrapper=""
}
trap 'stop_all' EXIT
trap 'exit 130' INT TERM

start_gateway() { # name [VAR=value ...]: one gateway, on Redis when redis_port is set
  local name="$1" port w; shift
  port="$(free_port)"
  local env=(PUSHGATE_LISTEN="127.0.0.1:$port" PUSHGATE_NODE_ID="$name" RUST_LOG=warn)
  [ -n "$redis_port" ] && env+=(PUSHGATE_REDIS_URL="redis://127.0.0.1:$redis_port")
  env "${env[@]}" "$@" timeout -k 5 "$life" "$gw_bin" >>"$results/$name.log" 2>&1 &
  w="$!"; wrappers+=("$w"); gw_pids+=("$(child_of "$w")")
  targets+=("127.0.0.1:$port")
  wait_http "http://127.0.0.1:$port/readyz"
}
# Limits made for production traffic from many addresses are off for the load tool's
# clients (as in compare.sh); the hostile run sets them back.
bench_limits=(PUSHGATE_MAX_CONNECTIONS_PER_IP=0 PUSHGATE_CONNECT_RATE_PER_IP=0
  PUSHGATE_API_RATE=0 PUSHGATE_MAX_PENDING_ACKS=0 PUSHGATE_JWT_SECRET="$secret")

metric() { # target name [label-filter]: sum of the matching series
  curl -s "http://$1/metrics" | awk -v n="$2" -v f="${3:-}" '
    index($1, n) == 1 && (substr($1, length(n) + 1, 1) == "{" || $1 == n) \
      && (f == "" || index($1, f) > 0) { s += $NF } END { printf "%d\n", s }'
}
metric_lines() { # target prefix: the series, for the record
  curl -s "http://$1/metrics" | grep -E "^$2" | grep -v ' 0$' || true
}
proc_sample() { # pid: "rss_kib fds"
  local rss fds
  rss="$(rss_kib "$1" 2>/dev/null || echo 0)"
  fds="$(ls "/proc/$1/fd" 2>/dev/null | wc -l)"
  echo "$rss $fds"
}
# the figures of a pushgate-load JSON report, as one JSON line
load_figures() {
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lat, acc, c = r["latency"], r["deliveries"], r["connections"]
print(json.dumps({
  "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "p999_ms": lat["p999_ms"],
  "max_ms": lat["max_ms"], "expected": acc["expected"], "received": acc["received"],
  "lost": acc["lost"], "established": c["established"], "failed": c["failed"],
  "closed_during_run": c["closed_during_run"], "close_reasons": c["close_reasons"],
  "pushes_sent": r["pushes"]["sent"], "pushes_accepted": r["pushes"]["accepted"],
  "gateway_rss_peak_kib": [g["rss_kib_peak"] for g in r["gateway"]],
  "gateway_cpu_pct_push": [round(g["cpu_pct_push"] or 0, 1) for g in r["gateway"]],
}))
EOF
}

machine() {
  note "- date: $(date -u +'%Y-%m-%d %H:%M UTC'), commit \`$(git -C "$root" rev-parse --short HEAD)\`"
  note "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), $(free -g | awk '/^Mem:/ {print $2}') GiB, open files $(ulimit -n)/$(ulimit -Hn), Redis $(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2), Node $(node --version)"
  note "- load at start: \`$(uptime)\`"
  note "- command: \`loadtest/bench/faults.sh $cmd $args\`"
}

# ---- soak -----------------------------------------------------------------------------
# ASCII rendering of soak.csv: a table (one row per ~2 minutes) and RSS/fd plots.
render_soak() {
  python3 - "$results/soak.csv" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
if not rows:
    sys.exit("no samples")
gws = sorted({k.split("_")[0] for k in rows[0] if k.endswith("_rss_kib")})
step = max(1, len(rows) // 16)
pick = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
head = ["t (s)", "connections"] + [f"{g} RSS MiB" for g in gws] + [f"{g} fds" for g in gws]
print("| " + " | ".join(head) + " |")
print("|" + "|".join("---:" for _ in head) + "|")
for r in pick:
    cells = [r["t_s"], r["connections"]] + [f'{int(r[g + "_rss_kib"]) / 1024:.1f}' for g in gws] \
        + [r[g + "_fds"] for g in gws]
    print("| " + " | ".join(cells) + " |")

def plot(key, unit, scale):
    for g in gws:
        ys = [int(r[f"{g}_{key}"]) / scale for r in rows]
        lo, hi = 0.0, max(ys) * 1.1 or 1
        h, w = 8, min(len(ys), 90)
        cols = [ys[int(i * len(ys) / w)] for i in range(w)]
        print(f"\n{g} {key} ({unit}), {rows[0]['t_s']}..{rows[-1]['t_s']} s, 0..{hi:.0f}")
        for lvl in range(h, 0, -1):
            th = lo + (hi - lo) * (lvl - 0.5) / h
            print(f"{lo + (hi - lo) * lvl / h:8.1f} |" + "".join("#" if y >= th else " " for y in cols))
        print(" " * 9 + "+" + "-" * w)
print("```")
plot("rss_kib", "MiB", 1024)
plot("fds", "open files", 1)
print("```")
EOF
}

soak() {
  clients="${clients:-2000}"; rate="${rate:-100}"
  note "## soak: $minutes min, $clients connections + $churn churning, acked user pushes at $rate/s"
  machine
  start_redis
  start_gateway gw1 "${bench_limits[@]}"
  start_gateway gw2 "${bench_limits[@]}"
  local tg; tg="$(join "${targets[@]}")"
  say "soak: gateways ${gw_pids[*]} on Redis :$redis_port; $clients clients for $minutes min"
  timeout -k 5 $(( minutes * 60 + 300 )) "$load_bin" --quiet --label soak --target "$tg" \
    --jwt-secret "$secret" -n "$clients" --ramp-rate 500 --hold 5s --duration "${minutes}m" \
    --push user --push-rate "$rate" --ack-timeout-ms 5000 --pid "$(join "${gw_pids[@]}")" \
    --out "$results/soak-load.json" >>"$log" 2>&1 &
  local load=$! churner
  wrappers+=("$load")
  # Churn: $churn more connections (users u0..: some share a user with the main clients)
  # open, stay 20 s and close, round after round, until the main run ends.
  (
    i=0
    while kill -0 "$load" 2>/dev/null; do
      timeout -k 5 120 "$load_bin" --quiet --label "churn-$i" --target "$tg" \
        --jwt-secret "$secret" -n "$churn" --ramp-rate 50 --hold 20s --push-rate 0 \
        --out "$results/churn-$i.json" >>"$log" 2>&1 || true
      i=$((i + 1)); sleep 5
    done
  ) &
  churner=$!
  wrappers+=("$churner")
  echo "t_s,connections,$(for i in "${!gw_pids[@]}"; do printf 'gw%d_rss_kib,gw%d_fds,' $((i + 1)) $((i + 1)); done | sed 's/,$//')" \
    >"$results/soak.csv"
  local t0=$SECONDS line conns t
  while kill -0 "$load" 2>/dev/null; do
    conns=0
    for t in "${targets[@]}"; do conns=$(( conns + $(metric "$t" pushgate_connections) )); done
    line="$(( SECONDS - t0 )),$conns"
    for p in "${gw_pids[@]}"; do line="$line,$(proc_sample "$p" | tr ' ' ',')"; done
    echo "$line" >>"$results/soak.csv"
    sleep "$interval"
  done
  wait "$load" || say "the load tool exited with $?"
  wait "$churner" 2>/dev/null || true
  local churns; churns="$(ls "$results"/churn-*.json 2>/dev/null | wc -l)"
  note ""
  note "churn rounds: $churns x $churn connections"
  note "main load: $(load_figures "$results/soak-load.json")"
  note ""
  render_soak | tee "$results/soak.txt" | tee -a "$summary"
}

# ---- redis-kill ----------------------------------------------------------------------
wait_connections() { # count: until the gateways together hold that many connections
  local want="$1" n t
  for _ in $(seq 600); do
    n=0
    for t in "${targets[@]}"; do n=$(( n + $(metric "$t" pushgate_connections) )); done
    [ "$n" -ge "$want" ] && return 0
    sleep 0.2
  done
  echo "only $n of $want connections came up" >&2; return 1
}
readyz_codes() { # "gw1=200 gw2=503"
  local t i=1 out=""
  for t in "${targets[@]}"; do
    out="$out gw$i=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$t/readyz" || true)"
    i=$((i + 1))
  done
  echo "${out# }"
}

redis_kill() {
  clients="${clients:-300}"; rate="${rate:-50}"
  note "## redis-kill: 2 gateways, $clients clients, acked pushes at $rate/s for $secs s; Redis SIGKILLed at ${kill_at}s, back ${down}s later"
  machine
  start_redis
  start_gateway gw1 "${bench_limits[@]}"
  start_gateway gw2 "${bench_limits[@]}"
  local tg; tg="$(join "${targets[@]}")"
  local ack_s=$(( (ack_ms + 999) / 1000 ))
  # The clients: one user each (u0..), acking every push; they only listen (push rate 0)
  # and stay for the whole run.
  timeout -k 5 $(( secs + ack_s + 200 )) "$load_bin" --quiet --label clients --target "$tg" \
    --jwt-secret "$secret" -n "$clients" --ramp-rate 500 --hold "$(( secs + ack_s + 10 ))s" \
    --push-rate 0 --out "$results/redis-kill-clients.json" >>"$log" 2>&1 &
  local clients_pid=$!
  wrappers+=("$clients_pid")
  wait_connections "$clients"
  say "redis-kill: $clients clients up on ${targets[*]}; caller starts"
  node "$here/faults-caller.js" --targets "$tg" --rate "$rate" --secs "$secs" \
    --users "$clients" --ack-ms "$ack_ms" --out "$results/redis-kill-caller.json" \
    >/dev/null 2>>"$log" &
  local caller=$! t_start=$SECONDS
  wrappers+=("$caller")
  sleep "$kill_at"
  local redis_pid; redis_pid="$(child_of "$redis_wrapper")"
  kill -KILL "$redis_pid"
  say "redis-kill: redis-server $redis_pid killed (SIGKILL) at $(( SECONDS - t_start )) s; readyz: $(readyz_codes)"
  sleep "$down"
  say "redis-kill: before restart, readyz: $(readyz_codes)"
  start_redis "$redis_port"
  local back; back="$(date +%s%3N)"
  say "redis-kill: redis-server restarted (empty) on :$redis_port at $(( SECONDS - t_start )) s"
  local ready=""
  for _ in $(seq 200); do
    [ "$(readyz_codes)" = "gw1=200 gw2=200" ] && { ready=$(( $(date +%s%3N) - back )); break; }
    sleep 0.1
  done
  say "redis-kill: both gateways ready ${ready:-(not within 20000)} ms after the restart"
  local rc=0
  wait "$caller" || rc=$?
  sleep 2
  local sockets; sockets="$(redis-cli -p "$redis_port" --scan --pattern 'pushgate:s:*' | wc -l)"
  wait "$clients_pid" || true
  note ""
  note "caller: \`$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); [d.pop(k) for k in ("timeline","targets","other_samples")]; print(json.dumps(d))' "$results/redis-kill-caller.json")\`"
  note ""
  note "clients: \`$(load_figures "$results/redis-kill-clients.json")\`"
  note ""
  note "both gateways ready ${ready:-?} ms after Redis came back; socket entries re-registered in the new Redis: $sockets of $clients"
  local t
  for t in "${targets[@]}"; do
    note "- $t: bus reconnects $(metric "$t" pushgate_bus_reconnects_total), connections $(metric "$t" pushgate_connections), acks $(metric_lines "$t" pushgate_acks_total | tr '\n' ' ')"
  done
  note ""
  note "per second (sent / accepted / refused 503 / no answer):"
  python3 - "$results/redis-kill-caller.json" <<'EOF' | tee -a "$summary"
import json, sys
d = json.load(open(sys.argv[1]))
cells = [f"{r['s']}:{r['sent']}/{r['accepted']}/{r['refused']}/{r['no_answer'] + r['other']}"
         for r in d["timeline"]]
print("`" + " ".join(cells) + "`")
EOF
  [ "$rc" = 0 ] || { say "redis-kill: LOSS (caller exit $rc): see $results/redis-kill-caller.json"; exit 1; }
}

# ---- slow and hostile: normal clients' p99 without and with the fault, side by side -----
# One load run of the normal clients against a fresh gateway: --clients connections, a
# broadcast every second for --secs. $1 = run name; the fault (a function started after
# the ramp, given the target) in $2 or "none".
normal_run() {
  local name="$1" fault="$2"; shift 2
  start_gateway gw "$@"
  local t="${targets[0]}"
  timeout -k 5 $(( secs + 120 )) "$load_bin" --quiet --label "$name" --target "$t" \
    --jwt-secret "$secret" -n "$clients" --sources 4 --ramp-rate 200 --hold 3s \
    --duration "${secs}s" --push all --push-rate 1 --pad "$pad" \
    --pid "${gw_pids[0]}" --out "$results/$name.json" >>"$log" 2>&1 &
  local load=$! fault_pid=""
  wrappers+=("$load")
  if [ "$fault" != none ]; then
    wait_connections "$clients"
    "$fault" "$t" "$name" &
    fault_pid=$!
    wrappers+=("$fault_pid")
  fi
  wait "$load" || say "$name: the load tool exited with $?"
  [ -z "$fault_pid" ] || wait "$fault_pid" || true
  local f; f="$(load_figures "$results/$name.json")"
  echo "$name $f" >>"$results/runs.txt"
  note "- $name: \`$f\`"
  metric_lines "$t" 'pushgate_(disconnects_total|connect_errors_total|limit_refusals_total|queue_overflows_total|delivery_failures_total)' \
    >"$results/$name.metrics"
  if [ "$fault" != none ]; then
    # (transport_error: the normal clients' own abrupt close at the end of the run)
    note "  - gateway refusals and disconnects (/metrics, non-zero): \`$(tr '\n' ' ' <"$results/$name.metrics")\`"
    note "  - the fault's own view: \`$(cat "$results/$name.fault" 2>/dev/null | tail -1)\`"
  fi
  stop_all
}
# p99 of each run and the ratio with / without per round (each round runs both, one
# after the other) and the median of those ratios
p99_table() { # prefix-without prefix-with
  python3 - "$results/runs.txt" "$1" "$2" <<'EOF'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    name, js = line.split(" ", 1)
    runs[name] = json.loads(js)
base, fault = sys.argv[2], sys.argv[3]
print("| round | p50 without (ms) | p50 with (ms) | p99 without (ms) | p99 with (ms) | p99 with / without | lost without | lost with |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
ratios = []
r = 1
while f"{base}-{r}" in runs and f"{fault}-{r}" in runs:
    a, b = runs[f"{base}-{r}"], runs[f"{fault}-{r}"]
    ratio = b["p99_ms"] / a["p99_ms"] if a["p99_ms"] else float("nan")
    ratios.append(ratio)
    print(f"| {r} | {a['p50_ms']:.1f} | {b['p50_ms']:.1f} | {a['p99_ms']:.1f} | {b['p99_ms']:.1f} | {ratio:.2f} | {a['lost']} | {b['lost']} |")
    r += 1
ratios.sort()
if ratios:
    k = len(ratios)
    median = ratios[k // 2] if k % 2 else (ratios[k // 2 - 1] + ratios[k // 2]) / 2
    print(f"\nmedian p99 ratio with / without over {k} rounds: {median:.2f}")
EOF
}

stall_fault() { # target name
  python3 "$here/faults-clients.py" stall --target "$1" --count "$stalled" --secret "$secret" \
    --secs "$(( secs + 3 ))" >"$results/$2.fault" 2>>"$log"
}
slow() {
  clients="${clients:-1000}"
  # At one small push a second a stalled client's queue would take minutes to fill
  # (on loopback the kernel's send buffer alone takes over 1 MB), and the heartbeat
  # closes it first (ping_timeout, within ping interval + timeout = 45 s); so the
  # stalled clients are also fed 64 KiB pushes to their own users (faults-clients.py),
  # and their queue overflows within seconds. The default queue settings apply.
  local queue="${PUSHGATE_QUEUE_CAPACITY:-256}"
  note "## slow: $clients clients, broadcast every second ($pad bytes of pad) for $secs s, without and with $stalled stalled clients, $rounds rounds; PUSHGATE_QUEUE_CAPACITY=$queue"
  machine
  : >"$results/runs.txt"
  local r
  for r in $(seq "$rounds"); do
    normal_run "slow-without-$r" none "${bench_limits[@]}" PUSHGATE_QUEUE_CAPACITY="$queue"
    normal_run "slow-with-$r" stall_fault "${bench_limits[@]}" PUSHGATE_QUEUE_CAPACITY="$queue"
  done
  note ""
  p99_table slow-without slow-with | tee -a "$summary"
}

hostile_fault() { # target name
  python3 "$here/faults-clients.py" hostile --target "$1" --count "$hostile" --secret "$secret" \
    --secs "$secs" --sources 100 --first-source 100 >"$results/$2.fault" 2>>"$log"
}
hostile() {
  clients="${clients:-1000}"
  note "## hostile: $clients clients, broadcast every second for $secs s, without and with $hostile attackers, $rounds rounds; default limits, JWT required"
  machine
  : >"$results/runs.txt"
  local r
  for r in $(seq "$rounds"); do
    normal_run "hostile-without-$r" none PUSHGATE_JWT_SECRET="$secret"
    normal_run "hostile-with-$r" hostile_fault PUSHGATE_JWT_SECRET="$secret"
  done
  note ""
  p99_table hostile-without hostile-with | tee -a "$summary"
}

# On one line with the call, so that bash reads nothing after it (the file may change
# while a long run is going).
"${cmd//-/_}"; exit $?
