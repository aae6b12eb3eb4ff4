#!/usr/bin/env bash
# Side-by-side benchmark: pushgate against the socket.io peer (loadtest/peers/socketio),
# against pushgate built at another commit, over Phoenix Channels, and over Pusher
# Channels against Sockudo; same load generator (pushgate-load), same machine, one run,
# one system at a time.
#
#   loadtest/bench/compare.sh [--quick] [--scenarios idle,bcast,maxdel,users,scale,big] ...
#   loadtest/bench/compare.sh --base 4d763d7 --sides pushgate,base,phoenix ...
#   loadtest/bench/compare.sh --sides pusher,sockudo --scenarios idle,bcast,maxdel ...
#
# Sides (--sides):
#   pushgate  the working tree's pushgate (target/release), Socket.IO clients
#   peer      the socket.io + Redis adapter peer
#   base      pushgate built at --base COMMIT in a temporary git worktree outside the
#             repo (target dir kept in $PUSHGATE_BENCH_BASE_DIR, default
#             ${TMPDIR:-/tmp}/pushgate-bench-base, so a second build compiles only
#             pushgate; the binary is copied to <results>/bin/), Socket.IO clients
#   phoenix   the working tree's pushgate, Phoenix Channels clients (--protocol phoenix)
#   pusher    the working tree's pushgate, ONE process without Redis, Pusher clients
#             (--protocol pusher) of app load-app:load-key:load-secret, each subscribed to
#             the public channel r0; pushes through the Pusher HTTP API to r0 (--push-api
#             pusher), i.e. a broadcast
#   sockudo   Sockudo (--sockudo-bin, default `sockudo` on PATH: `cargo install sockudo`,
#             which needs Debian's protobuf-compiler; never vendored), one process with
#             its local adapter and in-memory drivers, rate limits off, the same app,
#             clients and pushes as the side "pusher"
#   The Pusher sides run only the scenarios idle, bcast and maxdel, at sizes one process
#   holds (<= --per-proc: the 20k open-files cap applies to Sockudo as well).
#
# Every scenario starts a fresh redis-server on a free loopback port and fresh server
# processes (pushgate nodes sharing that Redis, or socket.io processes on the Redis
# adapter), runs pushgate-load against them, stops everything, and then does the same for
# the other side. JSON results go to loadtest/results/<date>/ (git-ignored); at the end
# loadtest/bench/render.py renders the tables into BENCHMARKS.md: pushgate vs the peer
# between `<!-- compare:begin -->` and `<!-- compare:end -->`, or (--section seam, the
# default when the sides include base or phoenix) pushgate vs its base commit and
# Phoenix between `<!-- seam:begin -->` and `<!-- seam:end -->`, or (--section pusher,
# the default when the sides include pusher or sockudo) pushgate vs Sockudo over Pusher
# between `<!-- pusher:begin -->` and `<!-- pusher:end -->`. --benchmarks FILE renders
# elsewhere (a trial run must not land in BENCHMARKS.md).
#
# Scenarios (sizes are flags, see --help):
#   idle    RSS per idle connection at each --idle-sizes
#   idlesolo  the same for one process of each pushgate side without Redis
#           (sizes <= --per-proc)
#   bcast   broadcast to all once a second at each --bcast-sizes (loss, p50, p99)
#   maxdel  broadcast rate stepped up (--maxdel-steps pushes/s to --maxdel-conns
#           connections) until p99 > 1 s or loss: highest deliveries/s with p99 <= 1 s
#   users   per-user pushes with acks and wait, rate stepped up (--users-steps)
#   usersnw the same with acks but without wait (the tool's 256 in-flight cap out of the way)
#   scale   pushgate only: maxdel with 3 nodes on one Redis (vs maxdel's 1 node)
#   big     pushgate only: --big-conns connections over many nodes, broadcast every 5 s
#
# Every process is started under `timeout`, so it stops by itself even if this script
# is killed; everything is on 127.0.0.1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
root="$(cd "$here/../.." && pwd)"
peer_dir="$root/loadtest/peers/socketio"
gw_bin="$root/target/release/pushgate"
load_bin="$root/target/release/pushgate-load"
secret="bench-secret"
# The Pusher app of the Pusher sides (pushgate-load's default app).
pusher_app_id=load-app
pusher_app_key=load-key
pusher_app_secret=load-secret
sockudo_bin="$(command -v sockudo || echo "$HOME/.cargo/bin/sockudo")"

# ---- options -------------------------------------------------------------------------
scenarios="idle,bcast,maxdel,users,scale"
sides="pushgate,peer"
base=""
section=""
idle_sizes="10000,50000,100000"
bcast_sizes="10000,20000,50000"
maxdel_conns=10000
maxdel_steps="2,4,6,8,12,16,24,32,48,64,96"
users_conns=10000
users_users=2500
users_steps="1000,2500,5000,10000,20000,35000,50000"
big_conns=1000000
big_ramp=5000
per_proc=18000
ramp=2000
idle_hold=20
bcast_secs=30
step_secs=10
big_hold=15
redis_nice=0
big_secs=40
big_drain=10
results=""
build=1
render_only=0
benchmarks="$root/BENCHMARKS.md"
cmdline="$(env | grep -E '^PUSHGATE_[A-Z_]+=' | sort | tr '\n' ' ' || true)loadtest/bench/compare.sh $*"

usage() {
  sed -n '2,40p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  cat <<EOF

Options (defaults in brackets):
  --quick                 small sizes to test the script (2k connections, short phases)
  --scenarios LIST        [$scenarios]  (also: big)
  --sides LIST            [$sides]  (pushgate, peer, base, phoenix, pusher, sockudo)
  --base COMMIT           build pushgate at COMMIT for the side "base"
  --sockudo-bin PATH      the Sockudo binary of the side "sockudo" [$sockudo_bin]
  --section NAME          BENCHMARKS.md section: compare (vs the peer), seam (vs
                          --base, Phoenix) or pusher (vs Sockudo) [seam when sides
                          include base or phoenix, pusher when they include pusher or
                          sockudo]
  --idle-sizes LIST       [$idle_sizes]
  --bcast-sizes LIST      [$bcast_sizes]
  --maxdel-conns N        [$maxdel_conns]   --maxdel-steps LIST [$maxdel_steps]
  --users-conns N         [$users_conns]   --users-users N [$users_users]
  --users-steps LIST      [$users_steps]
  --big-conns N           [$big_conns]   --big-ramp R [$big_ramp]
  --redis-nice N          run redis-server at this nice value [$redis_nice] (e.g. -5: on
                          one host shared with every gateway and the load tool, as if
                          Redis had a core of its own, as it would in production)
  --per-proc N            connections per server process [$per_proc] (20k open files each)
  --ramp R                connections per second [$ramp]
  --idle-hold S --bcast-secs S --step-secs S --big-hold S --big-secs S --big-drain S
  --results DIR           results directory (reused: the rendering covers all of it)
  --no-build              skip cargo build
  --render-only           only render DIR (with --results) into BENCHMARKS.md
  --benchmarks FILE       render into FILE instead of BENCHMARKS.md
Server settings: PUSHGATE_* variables in the environment reach the gateways as they are.
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --quick)
      idle_sizes=2000; bcast_sizes=2000; maxdel_conns=2000; maxdel_steps="5,20,60"
      users_conns=2000; users_users=500; users_steps="200,1000"; big_conns=6000
      per_proc=2000; idle_hold=4; bcast_secs=6; step_secs=4; big_hold=3; big_secs=10
      shift ;;
    --scenarios) scenarios="$2"; shift 2 ;;
    --sides) sides="$2"; shift 2 ;;
    --base) base="$2"; shift 2 ;;
    --sockudo-bin) sockudo_bin="$2"; shift 2 ;;
    --section) section="$2"; shift 2 ;;
    --idle-sizes) idle_sizes="$2"; shift 2 ;;
    --bcast-sizes) bcast_sizes="$2"; shift 2 ;;
    --maxdel-conns) maxdel_conns="$2"; shift 2 ;;
    --maxdel-steps) maxdel_steps="$2"; shift 2 ;;
    --users-conns) users_conns="$2"; shift 2 ;;
    --users-users) users_users="$2"; shift 2 ;;
    --users-steps) users_steps="$2"; shift 2 ;;
    --big-conns) big_conns="$2"; shift 2 ;;
    --big-ramp) big_ramp="$2"; shift 2 ;;
    --per-proc) per_proc="$2"; shift 2 ;;
    --ramp) ramp="$2"; shift 2 ;;
    --idle-hold) idle_hold="$2"; shift 2 ;;
    --bcast-secs) bcast_secs="$2"; shift 2 ;;
    --step-secs) step_secs="$2"; shift 2 ;;
    --big-hold) big_hold="$2"; shift 2 ;;
    --redis-nice) redis_nice="$2"; shift 2 ;;
    --big-secs) big_secs="$2"; shift 2 ;;
    --big-drain) big_drain="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --render-only) render_only=1; shift ;;
    --benchmarks) benchmarks="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

has() { [[ ",$1," == *",$2,"* ]]; }
if [ -z "$section" ]; then
  section=compare
  if has "$sides" base || has "$sides" phoenix; then section=seam; fi
  if has "$sides" pusher || has "$sides" sockudo; then section=pusher; fi
fi
case "$section" in compare|seam|pusher) ;;
  *) echo "--section: compare, seam or pusher" >&2; exit 2 ;;
esac
for side in ${sides//,/ }; do
  case "$side" in pushgate|peer|base|phoenix|pusher|sockudo) ;;
    *) echo "--sides: unknown side $side (pushgate, peer, base, phoenix, pusher, sockudo)" >&2
       exit 2 ;;
  esac
done
# The Pusher sides: one server process each, Pusher clients, Pusher HTTP API pushes.
is_pusher_side() { [ "$1" = pusher ] || [ "$1" = sockudo ]; }
if has "$sides" sockudo && [ ! -x "$sockudo_bin" ]; then
  echo "--sides sockudo: no Sockudo binary at $sockudo_bin (apt-get install protobuf-compiler;" \
    "cargo install sockudo; or give --sockudo-bin)" >&2
  exit 2
fi
if has "$sides" base && [ -z "$base" ]; then
  echo "--sides base needs --base COMMIT" >&2; exit 2
fi

[ -n "$results" ] || results="$root/loadtest/results/$(date -u +%Y-%m-%dT%H%M)"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
summary="$results/summary.jsonl"
log="$results/compare.log"

render() {
  python3 "$here/render.py" --results "$results" --benchmarks "$benchmarks" \
    --section "$section"
}
if [ "$render_only" = 1 ]; then render; exit 0; fi

need=(redis-server redis-cli python3 jq curl timeout git)
has "$sides" peer && need+=(node)
for c in "${need[@]}"; do
  command -v "$c" >/dev/null || { echo "$c not found" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ "$build" = 1 ]; then
  say "building release binaries"
  (cd "$root" && cargo build --release -p pushgate -p pushgate-load) >>"$log" 2>&1
fi
head_commit="$(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(cd "$root" && git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  head_commit="$head_commit-dirty"
fi

# ---- the base build: pushgate at --base, in a temporary worktree outside the repo -----
base_bin=""
base_commit=""
base_wt=""
remove_base_worktree() {
  if [ -n "$base_wt" ]; then
    git -C "$root" worktree remove --force "$base_wt" >>"$log" 2>&1 || true
    base_wt=""
  fi
}
if [ -n "$base" ]; then
  sha="$(git -C "$root" rev-parse --verify --quiet "$base^{commit}")" \
    || { echo "--base $base: not a commit of this repository" >&2; exit 2; }
  base_commit="${sha:0:7}"
  base_bin="$results/bin/pushgate-$base_commit"
  if [ ! -x "$base_bin" ] || [ "$build" = 1 ]; then
    base_dir="${PUSHGATE_BENCH_BASE_DIR:-${TMPDIR:-/tmp}/pushgate-bench-base}"
    mkdir -p "$base_dir"
    base_dir="$(cd "$base_dir" && pwd)"
    case "$base_dir/" in "$root"/*)
      echo "PUSHGATE_BENCH_BASE_DIR must be outside the repository" >&2; exit 2 ;;
    esac
    base_wt="$base_dir/worktree-$base_commit-$$"
    trap 'remove_base_worktree' EXIT
    say "building pushgate at $base_commit in $base_wt (target dir $base_dir/target)"
    git -C "$root" worktree add --detach --force "$base_wt" "$sha" >>"$log" 2>&1
    (cd "$base_wt" && CARGO_TARGET_DIR="$base_dir/target" \
      cargo build --release --locked -p pushgate --bin pushgate) >>"$log" 2>&1 \
      || { echo "building $base_commit failed; see $log" >&2; exit 1; }
    mkdir -p "$results/bin"
    cp "$base_dir/target/release/pushgate" "$base_bin"
    remove_base_worktree
  fi
  [ -x "$base_bin" ] || { echo "no base binary at $base_bin" >&2; exit 1; }
fi
if has "$sides" peer && [ ! -d "$peer_dir/node_modules" ]; then
  (cd "$peer_dir" && npm ci --no-audit --no-fund) >>"$log" 2>&1
fi

# Machine description, once per results directory.
if [ ! -f "$results/machine.json" ]; then
  jq -n --arg nproc "$(nproc)" --arg free "$(free -g)" --arg kernel "$(uname -sr)" \
    --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" \
    --arg nofile "$(ulimit -n)/$(ulimit -Hn)" --arg node "$(node --version 2>/dev/null || echo none)" \
    --arg redis "$(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2)" \
    --arg rustc "$(rustc --version 2>/dev/null || echo unknown)" \
    --arg date "$(date -u +'%Y-%m-%d %H:%M UTC')" \
    --arg commit "$head_commit" \
    --arg uptime "$(uptime)" \
    --arg sockudo "$(has "$sides" sockudo && "$sockudo_bin" --version 2>/dev/null | head -1 || echo none)" \
    '{nproc:$nproc, free:$free, kernel:$kernel, cpu:$cpu, nofile:$nofile, node:$node,
      redis:$redis, rustc:$rustc, date:$date, commit:$commit, uptime_at_start:$uptime,
      sockudo:$sockudo}' \
    >"$results/machine.json"
fi
echo "$cmdline" >>"$results/commands.txt"

# ---- process management --------------------------------------------------------------
life=1800            # hard lifetime of every server process (seconds)
wrappers=()          # pids of the `timeout` wrappers we started
srv_pids=()          # the real server pids (for --pid)
targets=()
push_urls=()
redis_port=""

stop_all() {
  local w
  for w in "${wrappers[@]}"; do kill -TERM "$w" 2>/dev/null || true; done
  for w in "${wrappers[@]}"; do wait "$w" 2>/dev/null || true; done
  wrappers=(); srv_pids=(); targets=(); push_urls=(); redis_port=""
}
trap 'stop_all; remove_base_worktree' EXIT
trap 'exit 130' INT TERM

# The load tool connects from one loopback address at thousands a second and pushes at
# up to tens of thousands a second without an API key: pushgate's per-address and rate
# limits (README "Limits"), made for production traffic, are off for these runs unless
# set in the environment. Both sides of a comparison get the same; older builds ignore
# the variables.
export PUSHGATE_MAX_CONNECTIONS_PER_IP="${PUSHGATE_MAX_CONNECTIONS_PER_IP:-0}"
export PUSHGATE_CONNECT_RATE_PER_IP="${PUSHGATE_CONNECT_RATE_PER_IP:-0}"
export PUSHGATE_API_RATE="${PUSHGATE_API_RATE:-0}"
export PUSHGATE_MAX_PENDING_ACKS="${PUSHGATE_MAX_PENDING_ACKS:-0}"

start_pushgate() { # nodes [binary]
  local n="$1" bin="${2:-$gw_bin}" i port w
  start_redis
  for i in $(seq 0 $((n - 1))); do
    port="$(free_port)"
    PUSHGATE_LISTEN="127.0.0.1:$port" PUSHGATE_JWT_SECRET="$secret" \
      PUSHGATE_REDIS_URL="redis://127.0.0.1:$redis_port" PUSHGATE_NODE_ID="gw$i" \
      RUST_LOG=warn timeout -k 5 "$life" "$bin" >>"$results/pushgate.log" 2>&1 &
    w="$!"; wrappers+=("$w"); srv_pids+=("$(child_of "$w")")
    targets+=("127.0.0.1:$port"); push_urls+=("http://127.0.0.1:$port/v1/push")
  done
  for i in "${targets[@]}"; do wait_http "http://$i/readyz"; done
}

start_peer() { # processes
  local n="$1" i port w
  start_redis
  for i in $(seq 0 $((n - 1))); do
    port="$(free_port)"
    PORT="$port" REDIS_URL="redis://127.0.0.1:$redis_port" JWT_SECRET="$secret" \
      timeout -k 5 "$life" node "$peer_dir/server.js" >>"$results/peer.log" 2>&1 &
    w="$!"; wrappers+=("$w"); srv_pids+=("$(child_of "$w")")
    targets+=("127.0.0.1:$port"); push_urls+=("http://127.0.0.1:$port/push")
  done
  for i in "${targets[@]}"; do wait_http "http://$i/healthz"; done
}

# One pushgate process without Redis serving the Pusher app (the side "pusher").
start_pushgate_pusher() {
  local port w
  port="$(free_port)"
  PUSHGATE_LISTEN="127.0.0.1:$port" \
    PUSHGATE_PUSHER_APPS="$pusher_app_id:$pusher_app_key:$pusher_app_secret" \
    RUST_LOG=warn timeout -k 5 "$life" "$gw_bin" >>"$results/pushgate.log" 2>&1 &
  w="$!"; wrappers+=("$w"); srv_pids+=("$(child_of "$w")")
  targets+=("127.0.0.1:$port"); push_urls+=("http://127.0.0.1:$port/apps/$pusher_app_id/events")
  wait_http "http://127.0.0.1:$port/readyz"
}

# One Sockudo process: the same app, local adapter, in-memory drivers, no rate limits
# (its defaults allow 20 WebSocket connects a minute per IP and 100 API events a second),
# no metrics listener, app limits above any run's size.
start_sockudo() {
  local port w
  port="$(free_port)"
  HOST=127.0.0.1 PORT="$port" DEBUG=false \
    SOCKUDO_DEFAULT_APP_ID="$pusher_app_id" SOCKUDO_DEFAULT_APP_KEY="$pusher_app_key" \
    SOCKUDO_DEFAULT_APP_SECRET="$pusher_app_secret" SOCKUDO_DEFAULT_APP_ENABLED=true \
    SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=10000000 \
    SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=10000000 \
    SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=10000000 \
    ADAPTER_DRIVER=local CACHE_DRIVER=memory QUEUE_DRIVER=memory APP_MANAGER_DRIVER=memory \
    RATE_LIMITER_DRIVER=memory RATE_LIMITER_ENABLED=false METRICS_ENABLED=false \
    timeout -k 5 "$life" "$sockudo_bin" >>"$results/sockudo.log" 2>&1 &
  w="$!"; wrappers+=("$w"); srv_pids+=("$(child_of "$w")")
  targets+=("127.0.0.1:$port"); push_urls+=("http://127.0.0.1:$port/apps/$pusher_app_id/events")
  wait_http "http://127.0.0.1:$port/up"
}

procs_for() { echo $(( ($1 + per_proc - 1) / per_proc )); }

# run_load SCENARIO SIDE CONNS STEP NAME -- tool args...
run_load() {
  local scen="$1" side="$2" conns="$3" step="$4" name="$5"; shift 6
  local out="$results/$name.json" rc=0 t_max protocol=socketio commit=""
  [ "$side" = phoenix ] && protocol=phoenix
  local extra=()
  if is_pusher_side "$side"; then
    # Every connection subscribes to r0; pushes go through the Pusher HTTP API.
    protocol=pusher
    extra=(--pusher-app "$pusher_app_id:$pusher_app_key:$pusher_app_secret"
      --push-api pusher --rooms 1)
  fi
  case "$side" in pushgate|phoenix|pusher) commit="$head_commit" ;; base) commit="$base_commit" ;;
    sockudo) commit="$("$sockudo_bin" --version 2>/dev/null | head -1 || echo sockudo)" ;;
  esac
  local args=(--quiet --label "$name" --target "$(join "${targets[@]}")"
    --push-url "$(join "${push_urls[@]}")" --pid "$(join "${srv_pids[@]}")"
    --jwt-secret "$secret" -n "$conns" --out "$out" --protocol "$protocol" "${extra[@]}" "$@")
  t_max=$(( conns / 500 + 600 ))
  say "run $name: pushgate-load ${args[*]}"
  local busy0 busy1 t0 t1
  busy0="$(busy_ticks)"; t0="$(date +%s.%N)"
  timeout -k 10 "$t_max" "$load_bin" "${args[@]}" >"$results/$name.txt" 2>&1 || rc=$?
  busy1="$(busy_ticks)"; t1="$(date +%s.%N)"
  tail -n 12 "$results/$name.txt" | tee -a "$log" >&2
  local cmd
  cmd="target/release/pushgate-load $(printf '%q ' "${args[@]}" | sed "s#$results/#loadtest/results/$(basename "$results")/#g")"
  jq -cn --arg scen "$scen" --arg side "$side" --argjson conns "$conns" --arg step "$step" \
    --arg protocol "$protocol" --arg commit "$commit" \
    --arg name "$name" --argjson procs "${#srv_pids[@]}" --argjson rc "$rc" --arg cmd "$cmd" \
    --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --arg env "$(env | grep -E '^PUSHGATE_[A-Z_]+=' | sort | tr '\n' ' ' || true)" \
    --argjson busy "$(awk -v a="$busy0" -v b="$busy1" -v hz="$(getconf CLK_TCK)" 'BEGIN { print (b - a) / hz }')" \
    --argjson wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
    '{scenario:$scen, side:$side, protocol:$protocol, commit:$commit, conns:$conns,
      step:$step, name:$name, procs:$procs,
      rc:$rc, cmd:$cmd, json:($name + ".json"), loadavg_after:$load,
      machine_busy_s:$busy, wall_s:$wall, env:$env}' >>"$summary"
  return 0
}

# busy CPU ticks of the whole machine (user+nice+system+irq+softirq+steal)
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# the gateway binary a pushgate side runs
side_bin() { if [ "$1" = base ]; then echo "$base_bin"; else echo "$gw_bin"; fi; }

start_side() { # side procs
  case "$1" in
    peer) start_peer "$2" ;;
    pusher) start_pushgate_pusher ;;
    sockudo) start_sockudo ;;
    *) start_pushgate "$2" "$(side_bin "$1")" ;;
  esac
}

# Whether SIDE runs a scenario of N connections (the Pusher sides: one process).
side_fits() { # side n
  if is_pusher_side "$1" && [ "$2" -gt "$per_proc" ]; then
    say "skipping $1 at $2 connections: one process holds at most --per-proc $per_proc"
    return 1
  fi
  return 0
}

# The push target of a broadcast for SIDE: all, or the Pusher sides' channel r0.
bcast_to() { if is_pusher_side "$1"; then echo room; else echo all; fi; }

# field from a result file, or "" when absent
field() { jq -r "$2 // empty" "$results/$1.json" 2>/dev/null || true; }

# Pushes/s actually sent: sent / seconds of the push phase in the timeline (with `--wait`
# the tool's rate_per_s divides by the configured duration even when the phase ran longer).
achieved() {
  jq -r '.pushes.sent / ([.timeline[] | select(.phase == "push")] | length | if . == 0 then 1 else . end)' \
    "$results/$1.json" 2>/dev/null || echo 0
}

# True when a step result ends the stepping: p99 above LIMIT_MS, loss, or failure.
step_stops() { # name limit_ms
  local p99 lost failed
  p99="$(field "$1" .latency.p99_ms)"; lost="$(field "$1" .deliveries.lost)"
  failed="$(field "$1" .connections.failed)"
  [ -z "$p99" ] && return 0
  awk -v p="$p99" -v l="$2" -v lost="${lost:-1}" -v f="${failed:-1}" \
    'BEGIN { exit !(p > l || lost > 0 || f > 0) }'
}

IFS=, read -r -a side_list <<<"$sides"

# ---- scenarios -----------------------------------------------------------------------
if has "$scenarios" idle; then
  IFS=, read -r -a sizes <<<"$idle_sizes"
  for n in "${sizes[@]}"; do
    for side in "${side_list[@]}"; do
      side_fits "$side" "$n" || continue
      p="$(procs_for "$n")"
      start_side "$side" "$p"
      run_load idle "$side" "$n" "" "idle-$side-$n" -- --ramp-rate "$ramp" \
        --hold "${idle_hold}s" --push none --push-rate 0
      stop_all
    done
  done
fi

# pushgate alone, in-process bus (no Redis): the connection cost without the cluster
# registry; sizes of --idle-sizes that one process can hold; every pushgate side
if has "$scenarios" idlesolo; then
  IFS=, read -r -a sizes <<<"$idle_sizes"
  for n in "${sizes[@]}"; do
    [ "$n" -le "$per_proc" ] || continue
    for side in "${side_list[@]}"; do
      [ "$side" = peer ] && continue
      is_pusher_side "$side" && continue
      # (not substituted in the background command: child_of would find the substitution)
      bin="$(side_bin "$side")"
      port="$(free_port)"
      PUSHGATE_LISTEN="127.0.0.1:$port" PUSHGATE_JWT_SECRET="$secret" RUST_LOG=warn \
        timeout -k 5 "$life" "$bin" >>"$results/pushgate.log" 2>&1 &
      w="$!"; wrappers+=("$w"); srv_pids+=("$(child_of "$w")")
      targets+=("127.0.0.1:$port"); push_urls+=("http://127.0.0.1:$port/v1/push")
      wait_http "http://127.0.0.1:$port/readyz"
      run_load idlesolo "$side" "$n" "" "idlesolo-$side-$n" -- --ramp-rate "$ramp" \
        --hold "${idle_hold}s" --push none --push-rate 0
      stop_all
    done
  done
fi

if has "$scenarios" bcast; then
  IFS=, read -r -a sizes <<<"$bcast_sizes"
  for n in "${sizes[@]}"; do
    for side in "${side_list[@]}"; do
      side_fits "$side" "$n" || continue
      p="$(procs_for "$n")"
      start_side "$side" "$p"
      run_load bcast "$side" "$n" "" "bcast-$side-$n" -- --ramp-rate "$ramp" --hold 5s \
        --push "$(bcast_to "$side")" --push-rate 1 --duration "${bcast_secs}s"
      stop_all
    done
  done
fi

# stepped broadcast: scenario tag, side, node count
maxdel_run() {
  local tag="$1" side="$2" p="$3" rate
  side_fits "$side" "$maxdel_conns" || return 0
  IFS=, read -r -a steps <<<"$maxdel_steps"
  for rate in "${steps[@]}"; do
    start_side "$side" "$p"
    run_load "$tag" "$side" "$maxdel_conns" "$rate" "$tag-$side-p$p-r$rate" -- \
      --ramp-rate "$ramp" --hold 3s --push "$(bcast_to "$side")" --push-rate "$rate" \
      --duration "${step_secs}s"
    stop_all
    if step_stops "$tag-$side-p$p-r$rate" 1000; then break; fi
  done
}

if has "$scenarios" maxdel; then
  for side in "${side_list[@]}"; do
    maxdel_run maxdel "$side" "$(procs_for "$maxdel_conns")"
  done
fi

# users: acks requested and waited for (`wait: true`; the tool keeps at most 256 pushes in
# flight, so the rate is capped near 256 / API latency); usersnw: acks requested, no wait
for tag in users usersnw; do
  has "$scenarios" "$tag" || continue
  wait_arg=(--wait)
  [ "$tag" = usersnw ] && wait_arg=(--wait false)
  IFS=, read -r -a steps <<<"$users_steps"
  for side in "${side_list[@]}"; do
    # Pusher clients of the tool do not sign in: no user pushes.
    is_pusher_side "$side" && continue
    p="$(procs_for "$users_conns")"
    for rate in "${steps[@]}"; do
      start_side "$side" "$p"
      run_load "$tag" "$side" "$users_conns" "$rate" "$tag-$side-r$rate" -- \
        --ramp-rate "$ramp" --hold 3s --push user --users "$users_users" \
        --push-rate "$rate" --duration "${step_secs}s" --ack-timeout-ms 5000 "${wait_arg[@]}"
      stop_all
      if step_stops "$tag-$side-r$rate" 1000; then break; fi
      got="$(achieved "$tag-$side-r$rate")"
      if awk -v g="${got:-0}" -v r="$rate" 'BEGIN { exit !(g < 0.9 * r) }'; then break; fi
    done
  done
done

if has "$scenarios" scale && has "$sides" pushgate; then
  # the 1-process figure is maxdel's pushgate run (one node + Redis below --per-proc),
  # from this invocation or an earlier one into the same results directory
  if ! has "$scenarios" maxdel && ! compgen -G "$results/maxdel-pushgate-p1-r*.json" >/dev/null; then
    maxdel_run scale pushgate 1
  fi
  maxdel_run scale pushgate 3
fi

if has "$scenarios" big && has "$sides" pushgate; then
  p="$(procs_for "$big_conns")"
  say "big run: $big_conns connections over $p pushgate nodes"
  start_pushgate "$p"
  # Every 5 s: the load, what Redis is doing (CPU, clients and their buffers,
  # commands, memory) and the kernel's TCP memory, to see what stops a run that stops.
  (
    while sleep 5; do
      echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
      redis-cli -p "$redis_port" INFO cpu 2>&1 | grep -E '^used_cpu_(sys|user):' || true
      redis-cli -p "$redis_port" INFO clients 2>&1 | grep -E '^(connected_clients|blocked_clients|client_recent_max_output_buffer|client_recent_max_input_buffer):' || true
      redis-cli -p "$redis_port" INFO stats 2>&1 | grep -E '^(total_commands_processed|instantaneous_ops_per_sec|rejected_connections|client_output_buffer_limit_disconnections):' || true
      redis-cli -p "$redis_port" INFO memory 2>&1 | grep -E '^used_memory_human:' || true
      # The kernel's TCP memory (pages) against net.ipv4.tcp_mem: under pressure it
      # collapses receive queues (CPU) and beyond the limit drops segments.
      echo "tcp_mem $(cat /proc/sys/net/ipv4/tcp_mem) | $(grep '^TCP:' /proc/net/sockstat)"
      grep -E '^(MemAvailable|Committed_AS):' /proc/meminfo | tr -s ' ' | tr '\n' ' '; echo
    done
  ) >"$results/big-redis-samples.log" 2>&1 &
  local_sampler=$!
  run_load big pushgate "$big_conns" "" "big-pushgate-$big_conns" -- --ramp-rate "$big_ramp" \
    --hold "${big_hold}s" --push all --push-rate 0.2 --duration "${big_secs}s" --drain "${big_drain}s" \
    --connect-timeout 60s
  kill "$local_sampler" 2>/dev/null || true
  redis-cli -p "$redis_port" SLOWLOG GET 20 >"$results/big-redis-slowlog.txt" 2>&1 || true
  stop_all
fi

say "rendering into $benchmarks ($section section)"
render
say "done: $results"
