# Shared by the scripts of loadtest/bench: sourced, never run. Starting processes the
# same way in every benchmark keeps their figures comparable.
#
# start_redis expects, from the sourcing script: `life` (hard lifetime of every process
# it starts, seconds), `results` (a directory for redis.log) and a `wrappers` array
# that its stop_all kills; `redis_nice` optionally (default 0).

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# A line to stderr, stamped, and to $log when the script keeps one.
say() {
  if [ -n "${log:-}" ]; then
    echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$log" >&2
  else
    echo "[$(date -u +%H:%M:%S)] $*" >&2
  fi
}

# The resident memory of process PID, in KiB.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# The arguments joined with commas.
join() { local IFS=,; echo "$*"; }

# The pid of the single child of a `timeout` wrapper.
child_of() {
  local w="$1" c=""
  for _ in $(seq 50); do
    c="$(tr -d ' ' <"/proc/$w/task/$w/children" 2>/dev/null || true)"
    [ -n "$c" ] && break
    sleep 0.05
  done
  echo "$c"
}

# Waits up to 20 s for URL to answer 200.
wait_http() { # url
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ] && return 0
    sleep 0.1
  done
  echo "$1 did not answer 200" >&2; return 1
}

# A redis-server of the run's own, without persistence, on PORT or a free port; sets
# redis_port and redis_wrapper (its `timeout` wrapper, also added to wrappers).
start_redis() { # [port]
  redis_port="${1:-$(free_port)}"
  nice -n "${redis_nice:-0}" timeout -k 5 "$life" redis-server --port "$redis_port" \
    --bind 127.0.0.1 --save "" --appendonly no --daemonize no --loglevel warning \
    --maxclients 10000 >>"$results/redis.log" 2>&1 &
  redis_wrapper="$!"
  wrappers+=("$redis_wrapper")
  for _ in $(seq 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis-server did not start" >&2; return 1
}
