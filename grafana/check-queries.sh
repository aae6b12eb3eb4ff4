#!/usr/bin/env bash
# Evaluate every query of the Grafana dashboards against a real Prometheus that
# scrapes a real 2-node cluster under a little traffic, and fail if any query
# returns no data (a panel that would say "No data" on a healthy cluster).
#
#   grafana/check-queries.sh [DASHBOARD.json ...]
#
# Without files it checks grafana/dashboards/*.json. It starts, on free
# loopback ports: a redis-server, two gateways (target/debug/pushgate, or
# PUSHGATE_BIN) sharing it, and Debian's `prometheus` scraping both every
# second. Traffic: pushgate-load (target/debug/pushgate-load, or
# PUSHGATE_LOAD_BIN) connects clients to both nodes and sends ack-tracked room
# pushes; curl-free HTTP calls add user, all and socket pushes and signed Pusher
# HTTP API events. Then every
# panel query (and template variable query) is evaluated with $instance = .*
# and $__rate_interval = 15s through /api/v1/query. One line per query: "ok"
# with the number of series, or "EMPTY". Exit 0 if every query returned data,
# 1 if any did not, 2 if something could not be started. Needs redis-server,
# prometheus, python3 and both binaries (cargo build --workspace). About 30 s.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
bin=${PUSHGATE_BIN:-$target_dir/debug/pushgate}
load_bin=${PUSHGATE_LOAD_BIN:-$target_dir/debug/pushgate-load}
secret=check-queries-secret

die() { echo "check-queries: $*" >&2; exit 2; }

files=("$@")
if ((${#files[@]} == 0)); then
    shopt -s nullglob
    files=("$here"/dashboards/*.json)
    shopt -u nullglob
    ((${#files[@]})) || die "no dashboards in $here/dashboards"
fi
for c in redis-server prometheus python3; do
    command -v "$c" >/dev/null 2>&1 || die "$c is required (Debian: apt-get install redis-server prometheus python3)"
done
[[ -x $bin ]] || die "no gateway binary at $bin (cargo build, or set PUSHGATE_BIN)"
[[ -x $load_bin ]] || die "no load generator at $load_bin (cargo build -p pushgate-load, or set PUSHGATE_LOAD_BIN)"

work=$(mktemp -d "${TMPDIR:-/tmp}/pushgate-check-queries.XXXXXX")
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Free loopback ports, chosen by the kernel (bound and released at once).
read -r redis_port gw1_port gw2_port prom_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()')

wait_http() { # URL SECONDS LOG: until URL answers 200
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        if python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "check-queries: $1 not ready after $2 s; last lines of $3:" >&2
    tail -n 20 "$3" | sed 's/^/    /' >&2
    exit 2
}

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for i in 1 2; do
    port_var=gw${i}_port
    PUSHGATE_LISTEN=127.0.0.1:${!port_var} PUSHGATE_NODE_ID=gw$i \
        PUSHGATE_REDIS_URL=redis://127.0.0.1:$redis_port PUSHGATE_REDIS_PREFIX=checkq \
        PUSHGATE_JWT_SECRET=$secret PUSHGATE_WORKER_THREADS=1 RUST_LOG=warn \
        PUSHGATE_PUSHER_APPS=1:checkq-key:checkq-secret \
        "$bin" >"$work/gw$i.log" 2>&1 &
    pids+=($!)
done
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: pushgate
    static_configs:
      - targets: ["127.0.0.1:$gw1_port", "127.0.0.1:$gw2_port"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)

wait_http "http://127.0.0.1:$gw1_port/readyz" 20 "$work/gw1.log"
wait_http "http://127.0.0.1:$gw2_port/readyz" 20 "$work/gw2.log"
wait_http "http://127.0.0.1:$prom_port/-/ready" 30 "$work/prometheus.log"
echo "check-queries: redis :$redis_port, gateways :$gw1_port :$gw2_port, prometheus :$prom_port"

# Traffic: 20 clients over both nodes in 4 rooms, ack-tracked room pushes through both.
"$load_bin" --quiet --target "127.0.0.1:$gw1_port,127.0.0.1:$gw2_port" -n 20 --ramp-rate 100 \
    --jwt-secret "$secret" --rooms 4 --users 5 --push room --push-rate 20 --ack-timeout-ms 2000 \
    --hold 1s --duration 6s --drain 3s >"$work/load.log" 2>&1 &
load_pid=$!
pids+=($load_pid)
sleep 3
# The other target kinds, a batch and a few reads, through either node.
python3 - "$gw1_port" "$gw2_port" <<'PY'
import hashlib, hmac, json, sys, time, urllib.request, urllib.error
ports = sys.argv[1:]
def pusher_event(i):
    # A Pusher HTTP API trigger, signed as the Pusher server SDKs sign it.
    body = json.dumps({"name": "e", "channel": "r1", "data": "{}"}).encode()
    params = {"auth_key": "checkq-key", "auth_timestamp": str(int(time.time())),
              "auth_version": "1.0", "body_md5": hashlib.md5(body).hexdigest()}
    query = "&".join(f"{k}={params[k]}" for k in sorted(params))
    path = "/apps/1/events"
    sig = hmac.new(b"checkq-secret", f"POST\n{path}\n{query}".encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"http://127.0.0.1:{ports[i % 2]}{path}?{query}&auth_signature={sig}",
        method="POST", data=body, headers={"content-type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code
def call(i, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{ports[i % 2]}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code
for i in range(10):
    call(i, "POST", "/v1/push", {"to": {"all": True}, "event": "e"})
    call(i, "POST", "/v1/push", {"to": {"user": "u1"}, "event": "e"})
    call(i, "POST", "/v1/push", {"to": {"users": ["u1", "u2"]}, "event": "e"})
    call(i, "POST", "/v1/push", {"to": {"socket": "gw1.00000000000000"}, "event": "e"})
    call(i, "POST", "/v1/push/batch", {"pushes": [{"to": {"room": "r1"}, "event": "e"}]})
    call(i, "GET", "/v1/nodes")
    call(i, "GET", "/v1/rooms/r1")
    pusher_event(i)
PY
if ! wait "$load_pid"; then
    echo "check-queries: pushgate-load failed:" >&2
    tail -n 30 "$work/load.log" | sed 's/^/    /' >&2
    exit 2
fi
sleep 3 # two more scrapes after the clients left

python3 - "http://127.0.0.1:$prom_port" "${files[@]}" <<'PY'
import json, re, sys, urllib.parse, urllib.request

prom, paths = sys.argv[1], sys.argv[2:]

def queries(node, where):
    if isinstance(node, dict):
        if node.get("type") not in (None, "row") and isinstance(node.get("title"), str):
            where = node["title"]
        if isinstance(node.get("expr"), str):
            yield where, node.get("legendFormat", ""), node["expr"]
        for key, value in node.items():
            if key == "templating":
                for var in value.get("list", []):
                    q = var.get("query")
                    q = q.get("query", "") if isinstance(q, dict) else (q or "")
                    m = re.fullmatch(r"label_values\(\s*(.*?)\s*,\s*\w+\s*\)", q.strip(), re.S)
                    if var.get("type") == "query" and m:
                        yield f"variable ${var.get('name')}", "", m.group(1)
                continue
            yield from queries(value, where)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item, where)

def grafana_to_promql(expr):
    expr = expr.replace("$__rate_interval", "15s").replace("${__rate_interval}", "15s")
    expr = expr.replace("$__interval", "5s").replace("${__interval}", "5s")
    return re.sub(r"\$\{?instance\}?", ".*", expr)

failed = total = 0
for path in paths:
    dash = json.load(open(path, encoding="utf-8"))
    for where, legend, expr in queries(dash, "dashboard"):
        total += 1
        q = grafana_to_promql(expr)
        url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            answer = json.load(urllib.request.urlopen(url, timeout=10))
        except Exception as e:  # a PromQL error answers 400 with a JSON body
            body = getattr(e, "read", lambda: b"")().decode(errors="replace")
            print(f"ERROR  {where} [{legend}]: {q}\n       {e} {body}")
            failed += 1
            continue
        result = answer.get("data", {}).get("result", [])
        label = f"{where}" + (f" [{legend}]" if legend else "")
        if result:
            print(f"ok     {label}: {len(result)} series: {q}")
        else:
            print(f"EMPTY  {label}: {q}")
            failed += 1
print(f"check-queries: {total - failed} of {total} dashboard queries returned data")
sys.exit(1 if failed else 0)
PY
