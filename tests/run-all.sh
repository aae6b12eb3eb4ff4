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
PUSHGATE_BIN="$bin" npm test
