#!/usr/bin/env bash
# Development cluster on localhost: Redis + N pushgate gateways + HAProxy.
#
#   pm/dev-cluster.sh [start] [-n N]   start everything (default command)
#   pm/dev-cluster.sh stop             stop everything this script started
#   pm/dev-cluster.sh status           show what runs
#
# Environment:
#   PUSHGATE_NODES       number of gateways (default 3; -n wins)
#   PUSHGATE_BIN         gateway binary (default target/release/pushgate)
#   PUSHGATE_BASE_PORT   port of gw1; gwK listens on BASE_PORT+K-1 (default 3001)
#   PUSHGATE_LB_PORT     HAProxy port (default 3000)
#   PUSHGATE_LB_HOST     HAProxy bind address (default 127.0.0.1)
#   PUSHGATE_RUN_DIR     PIDs, logs, rendered config (default target/dev-cluster)
#   PUSHGATE_DEV_REDIS   1 (default) = the gateways share the Redis bus and are one
#                        cluster; 0 = each gateway is an independent single node.
# Every other PUSHGATE_* variable (API keys, JWT secret, ...) and RUST_LOG is
# passed on to the gateways unchanged.
#
# The run dir gets cluster.env (PUSHGATE_LB_URL, PUSHGATE_NODE_URLS,
# PUSHGATE_DEV_REDIS_URL) for scripts to source, one .log per process, and
# haproxy.sock (`echo "show servers state" | socat - UNIX:haproxy.sock`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

nodes=${PUSHGATE_NODES:-3}
bin=${PUSHGATE_BIN:-$repo/target/release/pushgate}
base_port=${PUSHGATE_BASE_PORT:-3001}
lb_port=${PUSHGATE_LB_PORT:-3000}
lb_host=${PUSHGATE_LB_HOST:-127.0.0.1}
run_dir=${PUSHGATE_RUN_DIR:-$repo/target/dev-cluster}
dev_redis=${PUSHGATE_DEV_REDIS:-1}
# HAProxy runs on this host: its X-Forwarded-For names the clients (per-address limits).
trusted_proxies=${PUSHGATE_TRUSTED_PROXIES:-127.0.0.1}
# The gateway drains for PUSHGATE_SHUTDOWN_TIMEOUT_MS (10 s by default) on SIGTERM.
gw_stop_secs=$(((${PUSHGATE_SHUTDOWN_TIMEOUT_MS:-10000} + 999) / 1000 + 10))

log() { printf 'dev-cluster: %s\n' "$*"; }
die() { printf 'dev-cluster: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

# --- processes -------------------------------------------------------------

# Start time of a process (field 22 of /proc/PID/stat), so that a PID file
# never makes us signal an unrelated process that reused the PID.
proc_start() {
    local stat rest
    local -a f
    [[ -r /proc/$1/stat ]] || return 1
    stat=$(<"/proc/$1/stat") || return 1
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    printf '%s\n' "${f[19]}"
}

# alive NAME: true if the process recorded in NAME.pid still runs.
alive() {
    local file=$run_dir/$1.pid pid start now
    [[ -f $file ]] || return 1
    read -r pid start <"$file" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -d /proc/$pid ]]; then
        now=$(proc_start "$pid") || return 1
        [[ $now == "$start" ]] || return 1
    fi
}

pid_of() { local pid _s; read -r pid _s <"$run_dir/$1.pid"; printf '%s\n' "$pid"; }

# spawn NAME CMD...: run CMD in the background, detached from the terminal's
# hangup, output to NAME.log, PID (and start time) to NAME.pid.
spawn() {
    local name=$1 pid start
    shift
    nohup "$@" </dev/null >>"$run_dir/$name.log" 2>&1 &
    pid=$!
    start=$(proc_start "$pid" || echo 0)
    printf '%s %s\n' "$pid" "$start" >"$run_dir/$name.pid"
}

# stop_one NAME SECONDS: SIGTERM, wait, then SIGKILL.
stop_one() {
    local name=$1 secs=$2 pid i
    if ! alive "$name"; then
        rm -f "$run_dir/$name.pid"
        return 0
    fi
    pid=$(pid_of "$name")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        alive "$name" || break
        sleep 0.1
    done
    if alive "$name"; then
        log "$name (pid $pid) did not stop in ${secs}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$run_dir/$name.pid"
}

# Every NAME with a PID file, in start order: redis, gw1.., haproxy.
components() {
    local f n
    [[ -f $run_dir/redis.pid ]] && echo redis
    for f in "$run_dir"/gw*.pid; do
        [[ -e $f ]] || continue
        n=${f##*/}
        echo "${n%.pid}"
    done | sort -V
    [[ -f $run_dir/haproxy.pid ]] && echo haproxy
    return 0
}

stop_all() {
    local n gws=()
    [[ -d $run_dir ]] || { log "nothing to stop (no $run_dir)"; return 0; }
    # Load balancer first (no new traffic), then the gateways together (they
    # drain in parallel), Redis last.
    stop_one haproxy 5
    while read -r n; do [[ $n == gw* ]] && gws+=("$n"); done < <(components)
    for n in "${gws[@]}"; do
        if alive "$n"; then kill -TERM "$(pid_of "$n")" 2>/dev/null || true; fi
    done
    for n in "${gws[@]}"; do stop_one "$n" "$gw_stop_secs"; done
    stop_one redis 5
    if [[ -f $run_dir/redis.dir ]]; then
        local d
        d=$(<"$run_dir/redis.dir")
        if [[ $d == */pushgate-redis.* && -d $d ]]; then rm -rf -- "$d"; fi
        rm -f "$run_dir/redis.dir"
    fi
    rm -f "$run_dir/cluster.env" "$run_dir/haproxy.sock"
    log "stopped (logs kept in $run_dir)"
}

# --- network probes (bash /dev/tcp; no curl needed) ---------------------------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_status PORT PATH: the status code of GET PATH, or nothing.
http_status() {
    local port=$1 path=$2 line
    (
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
        IFS= read -r -t 3 line <&3 || exit 1
        line=${line%$'\r'}
        [[ $line =~ ^HTTP/[0-9.]+\ ([0-9]{3}) ]] && printf '%s\n' "${BASH_REMATCH[1]}"
    ) 2>/dev/null || true
}

redis_ping() {
    local line
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 line <&3 || exit 1
        [[ ${line%$'\r'} == "+PONG" ]]
    ) 2>/dev/null
}

# wait_for WHAT SECONDS NAME CMD...: poll CMD until it succeeds; fail if the
# process NAME dies or time runs out.
wait_for() {
    local what=$1 secs=$2 name=$3 i
    shift 3
    for ((i = 0; i < secs * 10; i++)); do
        "$@" && return 0
        if ! alive "$name"; then
            fail "$what: $name exited; last lines of $run_dir/$name.log:" "$name"
        fi
        sleep 0.1
    done
    fail "$what: not ready after ${secs}s; last lines of $run_dir/$name.log:" "$name"
}

fail() {
    printf 'dev-cluster: error: %s\n' "$1" >&2
    if [[ -n ${2:-} && -f $run_dir/$2.log ]]; then tail -n 20 "$run_dir/$2.log" | sed 's/^/    /' >&2; fi
    log "stopping what was started" >&2
    stop_all >&2
    exit 1
}

gw_ready() { [[ $(http_status "$1" /readyz) == 200 ]]; }

# --- start -----------------------------------------------------------------

find_free_port() {
    local p
    for ((p = $1; p < $1 + 200; p++)); do
        port_in_use "$p" || { echo "$p"; return 0; }
    done
    return 1
}

start_all() {
    local missing=() i port n v

    if ! [[ $nodes =~ ^[0-9]+$ ]] || ((nodes < 1 || nodes > 64)); then die "nodes must be 1..64, got '$nodes'"; fi
    for v in base_port lb_port; do
        [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a port number, got '${!v}'"
    done
    [[ $dev_redis == 0 || $dev_redis == 1 ]] || die "PUSHGATE_DEV_REDIS must be 0 or 1, got '$dev_redis'"

    # Binaries first, all of them, before anything is started.
    command -v redis-server >/dev/null 2>&1 || missing+=("redis-server (Debian: apt-get install redis-server)")
    command -v haproxy >/dev/null 2>&1 || missing+=("haproxy (Debian: apt-get install haproxy)")
    if [[ ! -x $bin ]]; then
        missing+=("the gateway binary $bin (run 'cargo build --release' in $repo, or set PUSHGATE_BIN)")
    fi
    if ((${#missing[@]})); then
        printf 'dev-cluster: error: missing %s\n' "${missing[@]}" >&2
        exit 1
    fi

    mkdir -p "$run_dir"
    while read -r n; do
        if alive "$n"; then die "$n is already running (see $run_dir); run '$0 stop' first"; fi
    done < <(components)
    rm -f "$run_dir"/*.pid "$run_dir"/*.log "$run_dir/cluster.env"

    if port_in_use "$lb_port"; then die "port $lb_port (PUSHGATE_LB_PORT) is in use"; fi
    for ((i = 1; i <= nodes; i++)); do
        port=$((base_port + i - 1))
        ((port != lb_port)) || die "gateway port $port collides with PUSHGATE_LB_PORT"
        if port_in_use "$port"; then die "port $port (gw$i) is in use"; fi
    done

    # Many connections need many descriptors; take what the hard limit allows.
    local hard
    hard=$(ulimit -Hn)
    if [[ $hard == unlimited ]]; then ulimit -n 1048576 2>/dev/null || true; else ulimit -n "$hard" 2>/dev/null || true; fi

    # Redis: a free port, nothing persisted, a temp dir removed on stop.
    local redis_port redis_dir
    redis_port=$(find_free_port "${PUSHGATE_DEV_REDIS_PORT:-6390}") || die "no free port for Redis"
    redis_dir=$(mktemp -d "${TMPDIR:-/tmp}/pushgate-redis.XXXXXX")
    printf '%s\n' "$redis_dir" >"$run_dir/redis.dir"
    spawn redis redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$redis_dir" --daemonize no --logfile ""
    wait_for "Redis on port $redis_port" 10 redis redis_ping "$redis_port"
    local redis_url="redis://127.0.0.1:$redis_port"
    log "redis      $redis_url (pid $(pid_of redis))"

    if [[ $dev_redis == 1 ]]; then
        log "the gateways are one cluster on the Redis bus at $redis_url"
    else
        log "PUSHGATE_DEV_REDIS=0: the gateways are independent nodes (a push reaches only the clients of the node that received it, and long-polling clients through HAProxy fail once a request reaches another node: use WebSocket clients)"
    fi

    # Gateways.
    local urls=()
    for ((i = 1; i <= nodes; i++)); do
        port=$((base_port + i - 1))
        if [[ $dev_redis == 1 ]]; then
            spawn "gw$i" env PUSHGATE_LISTEN="127.0.0.1:$port" PUSHGATE_NODE_ID="gw$i" \
                PUSHGATE_TRUSTED_PROXIES="$trusted_proxies" PUSHGATE_REDIS_URL="$redis_url" "$bin"
        else
            spawn "gw$i" env -u PUSHGATE_REDIS_URL PUSHGATE_LISTEN="127.0.0.1:$port" \
                PUSHGATE_TRUSTED_PROXIES="$trusted_proxies" PUSHGATE_NODE_ID="gw$i" "$bin"
        fi
        urls+=("http://127.0.0.1:$port")
    done
    for ((i = 1; i <= nodes; i++)); do
        port=$((base_port + i - 1))
        wait_for "gateway gw$i on port $port" 20 "gw$i" gw_ready "$port"
        log "gw$i        http://127.0.0.1:$port (pid $(pid_of "gw$i"))"
    done

    # HAProxy: about two descriptors per proxied connection.
    local nofile maxconn cfg=$run_dir/haproxy.cfg
    nofile=$(ulimit -n)
    if [[ $nofile == unlimited ]]; then nofile=1048576; fi
    maxconn=$(((nofile - 256) / 2))
    if ((maxconn > 100000)); then maxconn=100000; fi
    ((maxconn >= 100)) || fail "ulimit -n is $nofile: too low for HAProxy"
    "$here/render-haproxy.sh" -n "$nodes" -p "$base_port" -H 127.0.0.1 \
        -l "$lb_host:$lb_port" -m "$maxconn" --stats-socket "$run_dir/haproxy.sock" \
        -o "$cfg" || fail "rendering the HAProxy config failed"
    haproxy -c -q -f "$cfg" >"$run_dir/haproxy-check.log" 2>&1 ||
        fail "HAProxy rejects $cfg:" haproxy-check
    spawn haproxy haproxy -db -f "$cfg"
    wait_for "HAProxy on port $lb_port" 10 haproxy gw_ready "$lb_port"
    log "haproxy    http://$lb_host:$lb_port (pid $(pid_of haproxy), maxconn $maxconn)"

    {
        printf 'PUSHGATE_LB_URL=%q\n' "http://127.0.0.1:$lb_port"
        printf 'PUSHGATE_NODE_URLS=%q\n' "${urls[*]}"
        printf 'PUSHGATE_DEV_REDIS_URL=%q\n' "$redis_url"
    } >"$run_dir/cluster.env"
    local stop_cmd="$0 stop"
    if [[ -n ${PUSHGATE_RUN_DIR:-} ]]; then stop_cmd="PUSHGATE_RUN_DIR=$(printf '%q' "$run_dir") $stop_cmd"; fi
    log "up: $nodes gateways behind http://$lb_host:$lb_port; logs in $run_dir; stop with: $stop_cmd"
}

status_all() {
    local n any=0
    [[ -d $run_dir ]] || { log "not running (no $run_dir)"; return 1; }
    while read -r n; do
        any=1
        if alive "$n"; then
            printf '%-8s running (pid %s)\n' "$n" "$(pid_of "$n")"
        else
            printf '%-8s not running\n' "$n"
        fi
    done < <(components)
    ((any)) || { log "not running"; return 1; }
    if [[ -f $run_dir/cluster.env ]]; then cat "$run_dir/cluster.env"; fi
    return 0
}

cmd=start
if [[ $# -gt 0 && $1 != -* ]]; then
    cmd=$1
    shift
fi
while [[ $# -gt 0 ]]; do
    case $1 in
        -n | --nodes) [[ $# -ge 2 ]] || die "$1 needs a value"; nodes=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
done

case $cmd in
    start) start_all ;;
    stop) stop_all ;;
    status) status_all ;;
    help) usage ;;
    *) die "unknown command '$cmd' (start, stop, status)" ;;
esac
