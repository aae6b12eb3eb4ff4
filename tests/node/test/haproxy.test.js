"use strict";
// Real HAProxy (pm/render-haproxy.sh over pm/haproxy.cfg.tmpl) in front of three
// clustered gateways: clients connect through it, one gateway gets SIGTERM, and its
// clients reconnect through HAProxy to the other two and receive the next pushes,
// to all and to a user. Then TLS at HAProxy (--tls-cert) with socket.io-client and
// phoenix.js over https/wss, and per-address limits through X-Forwarded-For. HAProxy
// (and openssl, for the certificate) is required: a missing one fails the suite.
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { spawn, spawnSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const h = require("../harness");

const RENDER = path.resolve(__dirname, "../../../pm/render-haproxy.sh");
const CLIENTS = 9;

describe("HAProxy failover: a gateway stops, its clients move to the others", () => {
  let nodes, lb, stopHaproxy;
  const clients = []; // {sock, user, got: {all, user}}

  const nodeOf = async (sid) => {
    const r = await h.api(lb, "GET", `/v1/sockets/${sid}`);
    return r.status === 200 ? r.body.node : null;
  };

  before(async () => {
    ({ nodes } = await h.startCluster(["hp1", "hp2", "hp3"], {
      PUSHGATE_SHUTDOWN_TIMEOUT_MS: "500",
      PUSHGATE_WORKER_THREADS: "1",
    }));
    ({ lb, stop: stopHaproxy } = await h.startHaproxy(nodes, ["hp1", "hp2", "hp3"]));

    for (let i = 0; i < CLIENTS; i++) {
      const user = `hu${i}`;
      // A third WebSocket-only, the rest the default: long-polling, then the upgrade
      // (round robin: most of their requests reach a gateway that forwards them).
      const sock = h.client(lb, {
        auth: { token: h.token({ sub: user }) },
        ...(i % 3 === 0 ? { transports: ["websocket"] } : {}),
        reconnection: true,
        reconnectionDelay: 100,
        reconnectionDelayMax: 500,
        randomizationFactor: 0,
      });
      const c = { sock, user, got: { all: h.record(sock, "all"), user: h.record(sock, "user") } };
      clients.push(c);
      await h.connected(sock);
    }
  });

  after(async () => {
    if (stopHaproxy) await stopHaproxy();
    await h.cleanupCluster();
  });

  test("clients that reconnect after SIGTERM reach the other gateways and get the next pushes", async (t) => {
    // Where each client is, as the cluster registry says.
    const where = new Map();
    await h.eventually(
      async () => {
        for (const c of clients) where.set(c, await nodeOf(c.sock.id));
        return clients.every((c) => where.get(c));
      },
      { what: "every client registered" }
    );
    const perNode = {};
    for (const n of where.values()) perNode[n] = (perNode[n] ?? 0) + 1;
    const victimId = Object.entries(perNode).sort((a, b) => b[1] - a[1])[0][0];
    const victim = nodes[Number(victimId.slice(2)) - 1];
    const moving = clients.filter((c) => where.get(c) === victimId);
    assert.ok(moving.length >= 1, `no client on ${victimId}: ${JSON.stringify(perNode)}`);
    assert.ok(Object.keys(perNode).length >= 2, `HAProxy put every client on one gateway: ${JSON.stringify(perNode)}`);
    const oldIds = new Map(clients.map((c) => [c, c.sock.id]));

    const code = await victim.stop("SIGTERM", 10_000);
    assert.equal(code, 0, `the gateway exits 0 after SIGTERM\n${victim.logs()}`);

    // Each moved client is connected again, with a new socket id on another gateway.
    await h.eventually(
      async () => {
        for (const c of moving) {
          if (!c.sock.connected || c.sock.id === oldIds.get(c)) return false;
          const n = await nodeOf(c.sock.id);
          if (!n || n === victimId) return false;
        }
        return clients.every((c) => c.sock.connected);
      },
      { timeout: 20_000, what: `the clients of ${victimId} reconnected through HAProxy to the others` }
    );
    // Everyone (moved or not) is reachable from the cluster before the pushes.
    await h.eventually(async () => (await Promise.all(clients.map((c) => nodeOf(c.sock.id)))).every((n) => n && n !== victimId), {
      what: "every client registered on a live gateway",
    });

    // A client on another gateway whose transport passed through the stopped one (its
    // WebSocket piped there, or a poll forwarded there: no sticky sessions) reconnects
    // too. Its old session on its gateway then lives until its heartbeat runs out, and
    // a push to all counts it: at most one socket more per such client.
    const cutOff = clients.filter((c) => !moving.includes(c) && c.sock.id !== oldIds.get(c));
    const all = await h.push(lb, { to: { all: true }, event: "all", data: "after", wait: true });
    const { sockets, ...rest } = all.body.report;
    t.diagnostic(`${moving.length} clients on ${victimId} moved, ${cutOff.length} on other gateways reconnected; a push to all found ${sockets} sockets`);
    assert.ok(sockets >= CLIENTS && sockets <= CLIENTS + cutOff.length, JSON.stringify(all.body.report));
    assert.deepEqual(rest, { delivered: sockets, acked: 0, timed_out: 0, failed: 0 });
    for (const c of clients) {
      await c.got.all.waitCount(1);
      assert.deepEqual(c.got.all.data(), ["after"]);
    }
    for (const c of moving) {
      const res = await h.push(lb, { to: { user: c.user }, event: "user", data: c.user, wait: true });
      assert.equal(res.body.report.delivered, 1, JSON.stringify(res.body));
      await c.got.user.waitCount(1);
      assert.deepEqual(c.got.user.data(), [c.user]);
    }
    // Pushes through each remaining gateway directly reach the moved clients too.
    for (const n of nodes.filter((n) => n !== victim)) {
      const res = await h.push(n, { to: { users: moving.map((c) => c.user) }, event: "user", data: "direct", wait: true });
      assert.equal(res.body.report.delivered, moving.length, JSON.stringify(res.body));
    }
    for (const c of moving) await c.got.user.waitCount(3);
  });
});

describe("TLS at HAProxy (render-haproxy.sh --tls-cert), gateway with PUSHGATE_TRUSTED_PROXIES=127.0.0.1", () => {
  const https = require("node:https");
  let gw, haproxy, dir, lbPort;

  /** GET over TLS, trusting the test's self-signed certificate: resolves the status. */
  const httpsStatus = (p) =>
    new Promise((resolve, reject) => {
      https
        .get({ host: "127.0.0.1", port: lbPort, path: p, rejectUnauthorized: false }, (res) => {
          res.resume();
          resolve(res.statusCode);
        })
        .on("error", reject);
    });

  before(async () => {
    for (const cmd of ["haproxy", "openssl"]) {
      const v = spawnSync(cmd, [cmd === "haproxy" ? "-v" : "version"], { encoding: "utf8" });
      if (v.error || v.status !== 0) throw new Error(`${cmd} is required for this test (.ci/run installs it)`);
    }
    gw = await h.startGateway({
      PUSHGATE_JWT_SECRET: h.SECRET,
      PUSHGATE_TRUSTED_PROXIES: "127.0.0.1",
      PUSHGATE_MAX_CONNECTIONS_PER_IP: "2",
    });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "pushgate-haproxy-tls-"));
    const key = path.join(dir, "key.pem");
    const crt = path.join(dir, "crt.pem");
    const gen = spawnSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt, "-days", "1", "-subj", "/CN=127.0.0.1"], {
      encoding: "utf8",
    });
    assert.equal(gen.status, 0, gen.stderr);
    const pem = path.join(dir, "tls.pem");
    fs.writeFileSync(pem, fs.readFileSync(crt, "utf8") + fs.readFileSync(key, "utf8"));
    lbPort = await h.freePort();
    const cfg = path.join(dir, "haproxy.cfg");
    const r = spawnSync(
      RENDER,
      ["--servers", `gw1=127.0.0.1:${gw.port}`, "--listen", `127.0.0.1:${lbPort}`, "--maxconn", "1000", "--tls-cert", pem, "--output", cfg],
      { encoding: "utf8" }
    );
    assert.equal(r.status, 0, `render-haproxy.sh failed: ${r.stderr}`);
    const c = spawnSync("haproxy", ["-c", "-q", "-f", cfg], { encoding: "utf8" });
    assert.equal(c.status, 0, `haproxy -c rejects the TLS config: ${c.stderr}${c.stdout}`);
    haproxy = spawn("haproxy", ["-db", "-f", cfg], { stdio: "ignore" });
    await h.eventually(async () => (await httpsStatus("/readyz").catch(() => 0)) === 200, {
      timeout: 10_000,
      what: "HAProxy answers /readyz over TLS",
    });
  });

  after(async () => {
    if (haproxy && haproxy.exitCode === null) {
      const exited = new Promise((r) => haproxy.once("exit", r));
      haproxy.kill("SIGKILL");
      await exited;
    }
    await h.cleanup();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test("socket.io-client over https (polling, then the WebSocket upgrade) and phoenix.js over wss connect and receive pushes", async () => {
    const lb = { url: `https://127.0.0.1:${lbPort}`, port: lbPort };
    const s = h.client(lb, { auth: { token: h.token({ sub: "tls-user" }) }, rejectUnauthorized: false });
    await h.connected(s);
    await h.eventually(() => s.io.engine.transport.name === "websocket", { what: "upgraded to wss" });
    const got = h.waitFor(s, "over-tls");
    await h.push(gw, { to: { user: "tls-user" }, event: "over-tls", data: "hi" });
    assert.deepEqual(await got, ["hi"]);

    const WebSocket = require("ws");
    class InsecureWebSocket extends WebSocket {
      constructor(url, protocols) {
        super(url, protocols, { rejectUnauthorized: false });
      }
    }
    const phx = new h.PHOENIX["1.8"].Socket(`wss://127.0.0.1:${lbPort}/socket`, {
      transport: InsecureWebSocket,
      params: { token: h.token({ sub: "tls-phx" }) },
      reconnectAfterMs: () => 200,
    });
    try {
      phx.connect();
      await h.phoenixConnected(phx);
      assert.equal((await h.phoenixJoin(phx, "pushgate")).status, "ok");
    } finally {
      phx.disconnect();
    }
  });

  test("per-address limits count the clients' addresses from X-Forwarded-For, not HAProxy's", async () => {
    const lb = { url: `https://127.0.0.1:${lbPort}`, port: lbPort };
    const from = (ip) => ({ rejectUnauthorized: false, transports: ["websocket"], extraHeaders: { "x-forwarded-for": ip }, auth: { token: h.token({ sub: ip }) } });
    await h.connected(h.client(lb, from("203.0.113.5")));
    await h.connected(h.client(lb, from("203.0.113.5")));
    const refused = await h.connectError(lb, from("203.0.113.5"));
    assert.match(String(refused.description && refused.description.message), /403/);
    await h.connected(h.client(lb, from("203.0.113.6")));
    const sockets = (await h.api(gw, "GET", "/v1/nodes")).body.nodes[0].connections;
    assert.ok(sockets >= 3, `${sockets} connections through one HAProxy address`);
  });
});
