"use strict";
// Cross-process figure for BENCHMARKS.md: pushes/s and deliveries/s through one
// gateway process versus three processes sharing one Redis, side by side in one run.
//
//   node tests/node/bench/cluster.js [--bin target/release/pushgate] [--sockets 300]
//        [--pushes 3000] [--concurrency 32]
//
// Each setup: start the processes, connect N socket.io-client WebSocket sockets
// (spread round-robin over the processes), then send P pushes to `all` over HTTP,
// C at a time, round-robin over the processes, without `wait`; pushes/s is accepted
// pushes over the time from the first request to the last answer; deliveries/s is
// client-received events over the time from the first request to the last event.
// Clients, gateways and Redis share the machine's cores. Bounded in count and time.
const path = require("node:path");
process.env.PUSHGATE_BIN ??= path.resolve(__dirname, "../../../target/release/pushgate");
const h = require("../harness");

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
};
const SOCKETS = Number(arg("sockets", 300));
const PUSHES = Number(arg("pushes", 3000));
const CONCURRENCY = Number(arg("concurrency", 32));

// Clients and pushes all come from loopback, faster than the production defaults of
// the per-address and API rate limits allow (README "Limits"): off for the bench.
const LIMITS_OFF = {
  PUSHGATE_MAX_CONNECTIONS_PER_IP: "0",
  PUSHGATE_CONNECT_RATE_PER_IP: "0",
  PUSHGATE_API_RATE: "0",
};

async function run(label, processes, withRedis) {
  const redis = withRedis ? await h.startRedis() : null;
  const nodes = [];
  for (let i = 0; i < processes; i++) {
    const cluster = redis ? { PUSHGATE_REDIS_URL: redis.url, PUSHGATE_NODE_ID: `b${i}` } : {};
    nodes.push(await h.startGateway({ ...LIMITS_OFF, ...cluster }));
  }
  let received = 0;
  let lastAt = 0;
  const sockets = [];
  for (let i = 0; i < SOCKETS; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(i + 50, SOCKETS); j++) batch.push(h.connect(nodes[j % processes], { transports: ["websocket"] }));
    sockets.push(...(await Promise.all(batch)));
  }
  for (const s of sockets) s.on("tick", () => ((received += 1), (lastAt = performance.now())));
  if (redis) {
    // Every node subscribed to the broadcast channel (it registers its sockets after).
    for (const s of sockets.slice(0, processes)) {
      const other = nodes.find((n) => n !== s.gateway) ?? nodes[0];
      await h.eventually(async () => (await h.api(other, "GET", `/v1/sockets/${s.id}`)).status === 200);
    }
  }
  const expected = PUSHES * SOCKETS;
  const start = performance.now();
  let next = 0;
  let accepted = 0;
  async function worker() {
    while (next < PUSHES) {
      const k = next++;
      const res = await h.api(nodes[k % processes], "POST", "/v1/push", { to: { all: true }, event: "tick", data: k });
      if (res.status === 202) accepted++;
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const pushedAt = performance.now();
  const deadline = Date.now() + 60_000;
  while (received < expected && Date.now() < deadline) await h.sleep(20);
  const pushSecs = (pushedAt - start) / 1000;
  const deliverSecs = ((lastAt || pushedAt) - start) / 1000;
  const row = {
    setup: label,
    sockets: SOCKETS,
    pushes: accepted,
    "pushes/s": Math.round(accepted / pushSecs),
    deliveries: received,
    expected,
    "deliveries/s": Math.round(received / deliverSecs),
  };
  await h.cleanupCluster();
  return row;
}

(async () => {
  const rows = [];
  rows.push(await run("1 process, in-process bus", 1, false));
  rows.push(await run("1 process + Redis", 1, true));
  rows.push(await run("3 processes + 1 Redis", 3, true));
  console.table(rows);
  console.log(JSON.stringify(rows));
  process.exit(0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
