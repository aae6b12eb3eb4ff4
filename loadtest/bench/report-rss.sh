#!/usr/bin/env bash
# Memory a node holds per kept delivery report: a single gateway per binary, RSS read
# before and after --pushes pushes (batches of 1000 through POST /v1/push/batch, to a
# user nobody is, so every report is final at once and kept for 10 minutes, up to
# MAX_REPORTS = 200,000). Binaries run one after the other, --rounds times, alternating.
#
#   loadtest/bench/report-rss.sh [--pushes 200000] [--rounds 2] NAME=BINARY ...
#
# e.g. loadtest/bench/report-rss.sh base=/tmp/pushgate-base head=target/release/pushgate
# Prints one line per run: name, pushes, RSS before and after (KiB), bytes per report.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

pushes=200000
rounds=2
sides=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --pushes) pushes=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *=*) sides+=("$1"); shift ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done
((${#sides[@]} > 0)) || { echo "name at least one NAME=BINARY" >&2; exit 2; }
for s in "${sides[@]}"; do
    [[ -x ${s#*=} ]] || { echo "${s#*=} is not an executable" >&2; exit 2; }
done

run() { # name binary
    local name=$1 bin=$2 port pid before after
    port="$(free_port)"
    PUSHGATE_LISTEN="127.0.0.1:$port" PUSHGATE_API_RATE=0 PUSHGATE_WORKER_THREADS=1 \
        RUST_LOG=warn "$bin" >/dev/null 2>&1 &
    pid=$!
    wait_http "http://127.0.0.1:$port/readyz"
    sleep 1
    before="$(rss_kib "$pid")"
    python3 - "$port" "$pushes" <<'PY'
import json, sys, urllib.request
port, total = int(sys.argv[1]), int(sys.argv[2])
push = {"to": {"user": "nobody"}, "event": "e", "data": 1}
sent = 0
while sent < total:
    n = min(1000, total - sent)
    body = json.dumps({"pushes": [push] * n}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/push/batch", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        results = json.load(r)["results"]
        assert len(results) == n and all("id" in x for x in results), results[:3]
    sent += n
PY
    sleep 1
    after="$(rss_kib "$pid")"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    echo "$name pushes=$pushes rss_before_kib=$before rss_after_kib=$after bytes_per_report=$(( (after - before) * 1024 / pushes ))"
}

for ((r = 1; r <= rounds; r++)); do
    for s in "${sides[@]}"; do run "${s%%=*}" "${s#*=}"; done
done
