"use strict";
// No sticky sessions through a real HAProxy: pm/render-haproxy.sh's config (plain
// `balance roundrobin`, no stick table) in front of three clustered gateways. Polling-
// only socket.io clients, default socket.io clients (polling, then the upgrade) and
// phoenix.js LongPoll clients connect through it; their requests land on every gateway
// in turn and are forwarded to the one holding the session. They stay connected through
// several heartbeats, pushes to all and to each user reach every client once, and no
// client sees a connect error or a disconnect. HAProxy is required.
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { spawn, spawnSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const h = require("../harness");

const RENDER = path.resolve(__dirname, "../../../pm/render-haproxy.sh");
const POLLING = 6;
const DEFAULT = 6;
const LONGPOLL = 4;
const TOTAL = POLLING + DEFAULT + LONGPOLL;

describe("HAProxy round robin without stickiness: polling, upgrading and long-poll clients", () => {
  let nodes, lb, haproxy, dir;
  const haproxyLog = [];
  const sio = []; // {sock, user, kind, got: {all, user}, errors: [], disconnects: []}
  const phx = []; // {socket, user, got: {all, user}}

  before(async () => {
    const v = spawnSync("haproxy", ["-v"], { encoding: "utf8" });
    if (v.error || v.status !== 0) {
      throw new Error("haproxy is required for this test (Debian: apt-get install haproxy; .ci/run installs it)");
    }
    ({ nodes } = await h.startCluster(["rr1", "rr2", "rr3"], {
      // Heartbeats every second, so the test sees many of them go through
      // forwarded polls; a generous pong deadline, so a busy CI machine does
      // not turn a slow pong into a disconnect.
      PUSHGATE_PING_INTERVAL_MS: "1000",
      PUSHGATE_PING_TIMEOUT_MS: "10000",
      PUSHGATE_WORKER_THREADS: "1",
    }));
    const lbPort = await h.freePort();
    lb = { url: `http://127.0.0.1:${lbPort}`, port: lbPort };
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "pushgate-haproxy-rr-"));
    const cfg = path.join(dir, "haproxy.cfg");
    const servers = nodes.map((n, i) => `rr${i + 1}=127.0.0.1:${n.port}`).join(",");
    const r = spawnSync(RENDER, ["--servers", servers, "--listen", `127.0.0.1:${lbPort}`, "--maxconn", "1000", "--output", cfg], {
      encoding: "utf8",
    });
    assert.equal(r.status, 0, `render-haproxy.sh failed: ${r.stderr}`);
    const text = fs.readFileSync(cfg, "utf8");
    const clients = text.slice(text.search(/^backend be_clients$/m), text.search(/^backend be_api$/m));
    assert.match(clients, /^\s*balance roundrobin$/m, "be_clients balances round robin");
    const directives = text
      .split("\n")
      .filter((l) => !/^\s*#/.test(l))
      .join("\n");
    assert.doesNotMatch(directives, /stick|use-server|force-persist|cookie|balance (?!roundrobin)/, "no stickiness of any kind");
    const c = spawnSync("haproxy", ["-c", "-q", "-f", cfg], { encoding: "utf8" });
    assert.equal(c.status, 0, `haproxy -c rejects the rendered config: ${c.stderr}${c.stdout}`);
    haproxy = spawn("haproxy", ["-db", "-f", cfg], { stdio: ["ignore", "pipe", "pipe"] });
    for (const s of [haproxy.stdout, haproxy.stderr]) s.on("data", (d) => haproxyLog.push(d.toString()));
    await h.eventually(async () => (await h.api(lb, "GET", "/readyz").catch(() => ({}))).status === 200, {
      timeout: 10_000,
      what: "HAProxy answers /readyz",
    });
    // Every gateway in rotation (2 good checks each) before clients arrive.
    await h.sleep(4500);

    for (let i = 0; i < POLLING + DEFAULT; i++) {
      const kind = i < POLLING ? "polling" : "default";
      const user = `${kind[0]}u${i}`;
      const sock = h.client(lb, {
        auth: { token: h.token({ sub: user }) },
        ...(kind === "polling" ? { transports: ["polling"] } : {}),
      });
      const c = { sock, user, kind, errors: [], disconnects: [], got: { all: h.record(sock, "all"), user: h.record(sock, "user") } };
      sock.on("connect_error", (e) => c.errors.push(e.message));
      sock.on("disconnect", (reason) => c.disconnects.push(reason));
      sio.push(c);
    }
    await Promise.all(sio.map((c) => h.connected(c.sock)));
    for (let i = 0; i < LONGPOLL; i++) {
      const user = `lu${i}`;
      const socket = h.phoenixSocket(lb, { transport: "longpoll", token: h.token({ sub: user }) });
      await h.phoenixConnected(socket);
      const joined = await h.phoenixJoin(socket, "pushgate");
      assert.equal(joined.status, "ok", `phoenix ${user} joins pushgate: ${JSON.stringify(joined.response)}`);
      phx.push({ socket, user, got: { all: h.phoenixRecord(joined.channel, "all"), user: h.phoenixRecord(joined.channel, "user") } });
    }
  });

  after(async () => {
    if (haproxy && haproxy.exitCode === null) {
      const exited = new Promise((r) => haproxy.once("exit", r));
      haproxy.kill("SIGKILL");
      await exited;
    }
    await h.cleanupCluster();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  const sum = async (name, labels) => {
    let total = 0;
    for (const n of nodes) total += (await h.metric(n, name, labels)) ?? 0;
    return total;
  };

  test("every client stays connected through heartbeats over forwarded requests, and every push reaches it", async () => {
    // The default clients upgrade (through HAProxy, to whichever gateway).
    await h.eventually(() => sio.filter((c) => c.kind === "default").every((c) => c.sock.io.engine.transport.name === "websocket"), {
      what: "every default client upgraded to WebSocket",
    });
    for (const c of sio.filter((c) => c.kind === "polling")) assert.equal(c.sock.io.engine.transport.name, "polling");

    // The sessions are spread over the gateways.
    const where = {};
    await h.eventually(
      async () => {
        for (const c of sio) {
          const r = await h.api(lb, "GET", `/v1/sockets/${c.sock.id}`);
          if (r.status !== 200) return false;
          where[r.body.node] = (where[r.body.node] ?? 0) + 1;
        }
        return true;
      },
      { what: "every socket.io client registered" }
    );
    assert.ok(Object.keys(where).length >= 2, `round robin put every session on one gateway: ${JSON.stringify(where)}`);

    // Several heartbeats (1 s apart) go by over polls that mostly reach another gateway.
    await h.sleep(4000);

    const all = await h.push(lb, { to: { all: true }, event: "all", data: "everyone", wait: true });
    assert.deepEqual(all.body.report, { sockets: TOTAL, delivered: TOTAL, acked: 0, timed_out: 0, failed: 0 });
    for (const c of sio) {
      await c.got.all.waitCount(1);
      assert.deepEqual(c.got.all.data(), ["everyone"], `${c.kind} client ${c.user}`);
    }
    for (const p of phx) {
      await p.got.all.waitCount(1);
      assert.deepEqual(p.got.all.payloads(), [{ value: "everyone" }], `long-poll client ${p.user}`);
    }
    for (const c of sio) {
      const res = await h.push(lb, { to: { user: c.user }, event: "user", data: c.user, wait: true });
      assert.equal(res.body.report.delivered, 1, JSON.stringify(res.body));
    }
    for (const p of phx) {
      const res = await h.push(lb, { to: { user: p.user }, event: "user", data: { to: p.user }, wait: true });
      assert.equal(res.body.report.delivered, 1, JSON.stringify(res.body));
    }
    for (const c of sio) {
      await c.got.user.waitCount(1);
      assert.deepEqual(c.got.user.data(), [c.user]);
    }
    for (const p of phx) {
      await p.got.user.waitCount(1);
      assert.deepEqual(p.got.user.payloads(), [{ to: p.user }]);
    }

    // Forwarding did the work: requests were forwarded, and none failed.
    assert.ok((await sum("pushgate_cluster_forwards_total", { frontend: "socketio", kind: "poll", outcome: "ok" })) > 0);
    assert.ok((await sum("pushgate_cluster_forwards_total", { frontend: "phoenix", kind: "poll", outcome: "ok" })) > 0);
    for (const outcome of ["no_owner", "timeout", "failed"]) {
      assert.equal(await sum("pushgate_cluster_forwards_total", { outcome }), 0, `forwards with outcome ${outcome}`);
    }
    // No connect error, no disconnect, no phoenix error or reopen.
    for (const c of sio) {
      assert.deepEqual(c.errors, [], `${c.kind} client ${c.user}: connect errors`);
      assert.deepEqual(c.disconnects, [], `${c.kind} client ${c.user}: disconnects`);
      assert.ok(c.sock.connected);
    }
    for (const p of phx) {
      assert.deepEqual(p.socket.seen.errors, [], `long-poll client ${p.user}: errors`);
      assert.deepEqual(p.socket.seen.closes, [], `long-poll client ${p.user}: closes`);
      assert.equal(p.socket.seen.opens, 1, `long-poll client ${p.user} opened once`);
    }
    assert.equal(
      await sum("pushgate_disconnects_total", {}),
      0,
      `no gateway closed a connection\n${haproxyLog.join("").slice(-2000)}`
    );
  });
});
