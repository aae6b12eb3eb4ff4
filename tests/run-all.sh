#!/usr/bin/env bash
# Runs every test of the project: Rust unit and integration tests (the workspace,
# loadtest included), then the Node suite that drives the real gateway binary with
# the real socket.io-client and phoenix clients. Needs cargo, Node 20+, npm,
# redis-server (the cluster tests start their own on free ports), haproxy (the
# failover test) and Debian's chromium (the dev console test).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --workspace"
cargo test --workspace

echo "== Node suite (tests/node) against target/debug/pushgate"
cargo build --bin pushgate
# The binary is where cargo put it: CARGO_TARGET_DIR when set, else target/.
bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/pushgate"
cd tests/node
npm ci --no-audit --no-fund
# Each test has its own timeout and each file force-exits (package.json); this bounds
# the whole suite as well, so a hang fails CI with a message instead of running out
# its time.
PUSHGATE_BIN="$bin" timeout --kill-after=30 40m npm test || {
  rc=$?
  [ "$rc" -ne 124 ] || echo "the Node suite did not finish within 40 minutes" >&2
  exit "$rc"
}
