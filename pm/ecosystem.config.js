// pm2 ecosystem for N pushgate gateways on one host.
//
//   cargo build --release
//   PUSHGATE_NODES=4 pm2 start pm/ecosystem.config.js
//   pm2 ls; pm2 logs pushgate-gw1; pm2 stop pm/ecosystem.config.js
//
// `pm2 stop|restart|delete pm/ecosystem.config.js` acts on the gateways the
// file names, so without PUSHGATE_NODES it must still name all of them: the
// count of the last start with PUSHGATE_NODES set is kept in
// target/pm2/nodes and used when the variable is unset. `pm2 stop
// /^pushgate-gw/` stops every gateway whatever the file says.
//
// Gateway K (gw1..gwN) listens on 127.0.0.1:(PUSHGATE_BASE_PORT + K - 1), so
// 3001..300N by default, behind HAProxy (pm/render-haproxy.sh -n N).
//
// Read from the environment of `pm2 start`:
//   PUSHGATE_NODES       number of gateways (default: the last count given, else 3)
//   PUSHGATE_BASE_PORT   port of gw1 (default 3001)
//   PUSHGATE_BIND_HOST   address the gateways listen on (default 127.0.0.1)
//   PUSHGATE_BIN         gateway binary (default target/release/pushgate)
//   PUSHGATE_REDIS_URL   passed on when set: the gateways form one cluster on
//                        that Redis (e.g. redis://127.0.0.1:6390). Unset = each
//                        gateway is an independent single node.
//   PUSHGATE_API_KEYS, PUSHGATE_JWT_SECRET, PUSHGATE_NAMESPACES, ... and RUST_LOG
//                        are inherited by the gateways as they are.
//
// pm2 stops a process with SIGINT (the gateway treats it like SIGTERM: it
// drains its queues for PUSHGATE_SHUTDOWN_TIMEOUT_MS, 10 s by default) and
// sends SIGKILL after kill_timeout, which is set above that.
"use strict";

const fs = require("fs");
const path = require("path");

const repo = path.resolve(__dirname, "..");

function intFromEnv(name, dflt, min, max) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new Error(`${name} must be an integer from ${min} to ${max}, got "${raw}"`);
  }
  return n;
}

// The count of the last `PUSHGATE_NODES=N pm2 start`, so that a later `pm2 stop`
// without the variable names every gateway that start started.
const nodesFile = path.join(repo, "target", "pm2", "nodes");
function rememberedNodes() {
  try {
    const n = Number(fs.readFileSync(nodesFile, "utf8").trim());
    return Number.isInteger(n) && n >= 1 && n <= 1000 ? n : 3;
  } catch {
    return 3;
  }
}
const nodes = intFromEnv("PUSHGATE_NODES", rememberedNodes(), 1, 1000);
if (process.env.PUSHGATE_NODES) {
  try {
    fs.mkdirSync(path.dirname(nodesFile), { recursive: true });
    fs.writeFileSync(nodesFile, `${nodes}\n`);
  } catch {
    // Read-only checkout: `pm2 stop /^pushgate-gw/` still stops them all.
  }
}
const basePort = intFromEnv("PUSHGATE_BASE_PORT", 3001, 1, 65535 - nodes + 1);
const host = process.env.PUSHGATE_BIND_HOST || "127.0.0.1";
const bin = path.resolve(repo, process.env.PUSHGATE_BIN || "target/release/pushgate");
const shutdownMs = intFromEnv("PUSHGATE_SHUTDOWN_TIMEOUT_MS", 10000, 0, 3600000);

const apps = [];
for (let k = 1; k <= nodes; k++) {
  const env = {
    PUSHGATE_LISTEN: `${host}:${basePort + k - 1}`,
    PUSHGATE_NODE_ID: `gw${k}`,
  };
  if (process.env.PUSHGATE_REDIS_URL) env.PUSHGATE_REDIS_URL = process.env.PUSHGATE_REDIS_URL;
  apps.push({
    name: `pushgate-gw${k}`,
    script: bin,
    cwd: repo,
    interpreter: "none", // a native binary, not a Node script
    exec_mode: "fork",
    instances: 1,
    env,
    autorestart: true,
    min_uptime: 5000, // a start that dies within 5 s counts as a failed one...
    max_restarts: 10, // ...and pm2 gives up after 10 of those (bad config)
    exp_backoff_restart_delay: 200,
    kill_timeout: shutdownMs + 5000,
    time: true, // timestamp log lines
  });
}

module.exports = { apps };
