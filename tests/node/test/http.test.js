"use strict";
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

const README_METRICS = [
  "pushgate_connections",
  "pushgate_connects_total",
  "pushgate_disconnects_total",
  "pushgate_connect_errors_total",
  "pushgate_pushes_total",
  "pushgate_deliveries_total",
  "pushgate_acks_total",
  "pushgate_push_write_seconds",
  "pushgate_client_joins_total",
  "pushgate_client_events_total",
  "pushgate_http_requests_total",
  "pushgate_http_request_seconds",
];

describe("HTTP API", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_API_KEYS: "k1,k2",
      PUSHGATE_MAX_BODY_BYTES: "1024",
      PUSHGATE_JWT_SECRET: h.SECRET,
      PUSHGATE_NODE_ID: "node-A_1",
    });
    gw.key = "k1";
  });
  after(h.cleanup);

  const tok = (sub, extra = {}) => ({ auth: { token: h.token({ sub, ...extra }) } });
  const enc = encodeURIComponent;

  describe("API keys", () => {
    test("no key → 401 with an error body", async () => {
      h.assertError(await h.api(gw, "GET", "/v1/nodes", undefined, { key: null }), 401);
      h.assertError(await h.api(gw, "POST", "/v1/push", { to: { all: true }, event: "e" }, { key: null }), 401);
    });

    test("wrong key → 401 with an error body", async () => {
      h.assertError(await h.api(gw, "GET", "/v1/nodes", undefined, { key: "k3" }), 401);
      h.assertError(await h.api(gw, "GET", "/v1/nodes", undefined, { key: "k1k2" }), 401);
    });

    test("either configured key → 200", async () => {
      for (const key of ["k1", "k2"]) {
        const res = await h.api(gw, "GET", "/v1/nodes", undefined, { key });
        assert.equal(res.status, 200, res.text);
      }
      const res = await h.api(gw, "POST", "/v1/push", { to: { all: true }, event: "e", wait: true }, { key: "k2" });
      assert.equal(res.status, 200, res.text);
    });

    test("/healthz, /readyz and /metrics need no key", async () => {
      const health = await h.api(gw, "GET", "/healthz", undefined, { key: null });
      assert.equal(health.status, 200);
      assert.deepEqual(health.body, { status: "ok" });
      const ready = await h.api(gw, "GET", "/readyz", undefined, { key: null });
      assert.equal(ready.status, 200);
      assert.deepEqual(ready.body, { status: "ready" });
      const metrics = await h.api(gw, "GET", "/metrics", undefined, { key: null });
      assert.equal(metrics.status, 200);
    });
  });

  describe("push validation", () => {
    test("malformed JSON → 400", async () => {
      h.assertError(await h.api(gw, "POST", "/v1/push", undefined, { raw: '{"to": {"all": true}, "event": ' }), 400);
      h.assertError(await h.api(gw, "POST", "/v1/push", undefined, { raw: "not json at all" }), 400);
    });

    test('unknown target {"to":{"group":"x"}} → 400', async () => {
      h.assertError(await h.api(gw, "POST", "/v1/push", { to: { group: "x" }, event: "e" }), 400);
    });

    test("a target naming two kinds at once, or none, → 400", async () => {
      h.assertError(await h.api(gw, "POST", "/v1/push", { to: { all: true, room: "r" }, event: "e" }), 400);
      h.assertError(await h.api(gw, "POST", "/v1/push", { to: {}, event: "e" }), 400);
      h.assertError(await h.api(gw, "POST", "/v1/push", { event: "e" }), 400);
    });

    test("missing event → 400", async () => {
      h.assertError(await h.api(gw, "POST", "/v1/push", { to: { all: true }, data: 1 }), 400);
    });

    test("reserved Socket.IO event names → 400", async () => {
      for (const event of ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"]) {
        h.assertError(await h.api(gw, "POST", "/v1/push", { to: { all: true }, event }), 400, event);
      }
    });

    test("ack.timeout_ms outside 1..300000 → 400", async () => {
      for (const timeout_ms of [0, 300_001, -5]) {
        h.assertError(
          await h.api(gw, "POST", "/v1/push", { to: { all: true }, event: "e", ack: { timeout_ms } }),
          400,
          `timeout_ms ${timeout_ms}`
        );
      }
    });

    test("a body over PUSHGATE_MAX_BODY_BYTES → 413", async () => {
      const res = await h.api(gw, "POST", "/v1/push", { to: { all: true }, event: "e", data: "x".repeat(2000) });
      h.assertError(res, 413);
      // just under the limit is fine
      const ok = await h.api(gw, "POST", "/v1/push", { to: { all: true }, event: "e", data: "x".repeat(900) });
      assert.equal(ok.status, 202, ok.text);
    });

    test("unknown route → 404 and wrong method → 405, both with error bodies", async () => {
      h.assertError(await h.api(gw, "GET", "/v1/no-such-route"), 404);
      h.assertError(await h.api(gw, "GET", "/v1/push"), 405);
    });
  });

  describe("batch", () => {
    test("a batch answers one result per push, with reports when waited for", async () => {
      const s = await h.connect(gw, tok("batcher"));
      const rec = h.record(s, "b");
      const res = await h.api(gw, "POST", "/v1/push/batch", {
        pushes: [
          { to: { socket: s.id }, event: "b", data: 1, wait: true },
          { to: { user: "batcher" }, event: "b", data: 2, wait: true },
          { to: { socket: s.id }, event: "b", data: 3 },
        ],
      });
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.results.length, 3);
      for (const r of res.body.results) assert.equal(typeof r.id, "string");
      assert.equal(new Set(res.body.results.map((r) => r.id)).size, 3, "distinct ids");
      assert.deepEqual(res.body.results[0].report, { sockets: 1, delivered: 1, acked: 0, timed_out: 0, failed: 0 });
      assert.deepEqual(res.body.results[1].report, { sockets: 1, delivered: 1, acked: 0, timed_out: 0, failed: 0 });
      await rec.waitCount(3);
      assert.deepEqual(rec.data().sort(), [1, 2, 3]);
      s.close();
    });

    test("a bad push at index 2 rejects the whole batch with 400 naming index 2; nothing is sent", async () => {
      const s = await h.connect(gw, tok("batcher2"));
      const rec = h.record(s, "b");
      const res = await h.api(gw, "POST", "/v1/push/batch", {
        pushes: [
          { to: { socket: s.id }, event: "b", data: 1 },
          { to: { socket: s.id }, event: "b", data: 2 },
          { to: { group: "x" }, event: "b", data: 3 },
        ],
      });
      const err = h.assertError(res, 400);
      assert.match(err.message, /\b2\b/, `message names index 2: ${err.message}`);
      await h.sentinel(gw, s);
      assert.equal(rec.items.length, 0, "no push of the rejected batch was delivered");
      s.close();
    });

    test("an empty batch → 400", async () => {
      h.assertError(await h.api(gw, "POST", "/v1/push/batch", { pushes: [] }), 400);
    });
  });

  describe("sockets, users, rooms, nodes", () => {
    test("GET /v1/sockets/{sid} describes the socket; unknown → 404", async () => {
      const s = await h.connect(gw, { ...tok("sam", { rooms: ["lobby"] }), transports: ["websocket"] });
      assert.ok(s.id.startsWith("node-A_1"), `socket id ${s.id} starts with the node id`);
      const res = await h.api(gw, "GET", `/v1/sockets/${enc(s.id)}`);
      assert.equal(res.status, 200, res.text);
      const b = res.body;
      assert.equal(b.id, s.id);
      assert.equal(b.node, "node-A_1");
      assert.equal(b.user, "sam");
      assert.equal(b.namespace, "/");
      assert.equal(b.transport, "websocket");
      assert.deepEqual(b.rooms, ["lobby"]);
      assert.equal(typeof b.connected_at, "number");
      h.assertError(await h.api(gw, "GET", `/v1/sockets/${enc(s.id + "zz")}`), 404);
      s.close();
    });

    test('DELETE /v1/sockets/{sid} disconnects the client with "io server disconnect"; unknown → 404', async () => {
      const s = await h.connect(gw, tok("del"));
      const sid = s.id; // socket.io-client clears s.id on disconnect
      const gone = h.waitFor(s, "disconnect");
      const res = await h.api(gw, "DELETE", `/v1/sockets/${enc(s.id)}`);
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.body, { disconnected: 1 });
      const [reason] = await gone;
      assert.equal(reason, "io server disconnect");
      await h.eventually(async () => (await h.api(gw, "GET", `/v1/sockets/${enc(sid)}`)).status === 404, {
        what: "GET of the disconnected socket answers 404",
      });
      h.assertError(await h.api(gw, "DELETE", `/v1/sockets/${enc("node-A_1-nope")}`), 404);
    });

    test("GET /v1/users/{uid} lists the user's sockets; DELETE /v1/users/{uid}/sockets disconnects them all", async () => {
      const u1 = await h.connect(gw, tok("ursula"));
      const u2 = await h.connect(gw, { ...tok("ursula"), transports: ["polling"] });
      const other = await h.connect(gw, tok("victor"));
      const res = await h.api(gw, "GET", "/v1/users/ursula");
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.user, "ursula");
      assert.deepEqual(res.body.sockets.map((s) => s.id).sort(), [u1.id, u2.id].sort());
      for (const s of res.body.sockets) {
        assert.equal(s.user, "ursula");
        assert.equal(s.namespace, "/");
      }

      const gone = [h.waitFor(u1, "disconnect"), h.waitFor(u2, "disconnect")];
      const del = await h.api(gw, "DELETE", "/v1/users/ursula/sockets");
      assert.equal(del.status, 200, del.text);
      assert.deepEqual(del.body, { disconnected: 2 });
      for (const g of gone) assert.equal((await g)[0], "io server disconnect");
      const after = await h.api(gw, "GET", "/v1/users/ursula");
      assert.equal(after.status === 404 || after.body.sockets.length === 0, true, after.text);
      assert.ok(other.connected, "another user's socket is untouched");
      await h.sentinel(gw, other);
      other.close();
    });

    test("rooms: join/leave by socket ids and by user, GET room, pushes follow membership", async () => {
      const w1 = await h.connect(gw, tok("wendy"));
      const w2 = await h.connect(gw, tok("wendy"));
      const x = await h.connect(gw, tok("xavier"));
      const room = "ops:all";
      const path = `/v1/rooms/${enc(room)}`;

      let res = await h.api(gw, "POST", `${path}/join`, { sockets: [x.id] });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.body, { room, sockets: 1 });
      res = await h.api(gw, "POST", `${path}/join`, { sockets: [x.id] });
      assert.deepEqual(res.body, { room, sockets: 0 }, "already a member: 0 newly joined");

      res = await h.api(gw, "POST", `${path}/join`, { user: "wendy" });
      assert.deepEqual(res.body, { room, sockets: 2 });

      res = await h.api(gw, "GET", path);
      assert.equal(res.status, 200);
      assert.equal(res.body.room, room);
      assert.equal(res.body.count, 3);
      assert.deepEqual(res.body.sockets.slice().sort(), [w1.id, w2.id, x.id].sort());

      const wInfo = await h.api(gw, "GET", `/v1/sockets/${enc(w1.id)}`);
      assert.ok(wInfo.body.rooms.includes(room));

      const recs = [w1, w2, x].map((s) => h.record(s, "ops"));
      let push = await h.push(gw, { to: { room }, event: "ops", data: "all three", wait: true });
      assert.equal(push.body.report.sockets, 3);
      await Promise.all(recs.map((r) => r.waitCount(1)));

      res = await h.api(gw, "POST", `${path}/leave`, { user: "wendy" });
      assert.deepEqual(res.body, { room, sockets: 2 });
      push = await h.push(gw, { to: { room }, event: "ops", data: "x only", wait: true });
      assert.equal(push.body.report.sockets, 1);

      res = await h.api(gw, "POST", `${path}/leave`, { sockets: [x.id] });
      assert.deepEqual(res.body, { room, sockets: 1 });
      res = await h.api(gw, "POST", `${path}/leave`, { sockets: [x.id] });
      assert.deepEqual(res.body, { room, sockets: 0 });
      res = await h.api(gw, "GET", path);
      assert.equal(res.body.count, 0);
      assert.deepEqual(res.body.sockets, []);

      for (const s of [w1, w2, x]) await h.sentinel(gw, s);
      assert.deepEqual(recs[0].data(), ["all three"]);
      assert.deepEqual(recs[1].data(), ["all three"]);
      assert.deepEqual(recs[2].data(), ["all three", "x only"]);
      for (const s of [w1, w2, x]) s.close();
    });

    test("room join with a bad body → 400", async () => {
      h.assertError(await h.api(gw, "POST", "/v1/rooms/r/join", { nobody: true }), 400);
      h.assertError(await h.api(gw, "POST", "/v1/rooms/r/join", undefined, { raw: "{" }), 400);
    });

    test("GET /v1/nodes lists this node with its connection count", async () => {
      const s1 = await h.connect(gw, tok("n1"));
      const s2 = await h.connect(gw, tok("n2"));
      let seen;
      const res = await h.eventually(
        async () => {
          const r = await h.api(gw, "GET", "/v1/nodes");
          seen = r.text;
          return r.body.nodes && r.body.nodes[0].connections === h.connectedCount(gw) && r;
        },
        { what: `GET /v1/nodes connections == ${h.connectedCount(gw)} (${seen})` }
      );
      assert.ok(h.connectedCount(gw) >= 2);
      assert.equal(res.body.nodes.length, 1);
      const [n] = res.body.nodes;
      assert.equal(n.id, "node-A_1");
      assert.equal(n.frontends.socketio, n.connections, `connections per frontend: ${JSON.stringify(n.frontends)}`);
      assert.equal(n.frontends.phoenix, 0);
      assert.equal(typeof n.started_at, "number");
      assert.ok(n.started_at <= Date.now() && n.started_at > Date.now() - 600_000, `started_at ${n.started_at}`);
      s1.close();
      s2.close();
    });
  });

  describe("metrics", () => {
    test("after some traffic /metrics has every README metric with the right values", async () => {
      // traffic: connects, a refused connect, a room push, a timed-out ack, a join and an unknown event
      await h.connectError(gw, {});
      const a = await h.connect(gw, tok("m1", { join: ["m:*"] }));
      const b = await h.connect(gw, tok("m2"));
      b.on("needs-ack", () => {}); // never acks
      assert.deepEqual(await h.emitAck(a, "pushgate:join", "m:room"), { ok: true, room: "m:room" });
      await h.emitAck(a, "bogus");

      const before = (await h.metric(gw, "pushgate_pushes_total", { target: "room" })) ?? 0;
      const got = h.waitFor(a, "m");
      await h.push(gw, { to: { room: "m:room" }, event: "m", data: 1, wait: true });
      await got;
      assert.equal(await h.metric(gw, "pushgate_pushes_total", { target: "room" }), before + 1);

      const res = await h.push(gw, { to: { socket: b.id }, event: "needs-ack", ack: { timeout_ms: 200 }, wait: true });
      assert.equal(res.body.report.timed_out, 1);
      await h.metricAtLeast(gw, "pushgate_acks_total", { outcome: "timed_out" }, 1);

      // connections gauge = the sockets connected right now (earlier tests closed theirs)
      let gauge;
      await h.eventually(async () => (gauge = await h.metric(gw, "pushgate_connections")) === h.connectedCount(gw), {
        what: `pushgate_connections (${gauge}) == sockets connected (${h.connectedCount(gw)})`,
      });
      assert.ok(h.connectedCount(gw) >= 2);

      const text = await h.metricsText(gw);
      const names = new Set(h.parseMetrics(text).map((s) => s.name));
      for (const name of README_METRICS) {
        const present = names.has(name) || names.has(`${name}_bucket`) || names.has(`${name}_count`);
        assert.ok(present, `/metrics has ${name}`);
      }
      assert.ok(names.has("pushgate_push_write_seconds_bucket"), "push_write_seconds is a histogram");
      await h.metricAtLeast(gw, "pushgate_connects_total", {}, 10);
      await h.metricAtLeast(gw, "pushgate_connect_errors_total", {}, 1);
      await h.metricAtLeast(gw, "pushgate_disconnects_total", {}, 3);
      await h.metricAtLeast(gw, "pushgate_http_requests_total", { status: "401" }, 4);
      await h.metricAtLeast(gw, "pushgate_http_requests_total", { status: "413" }, 1);
      await h.metricAtLeast(gw, "pushgate_client_events_total", { kind: "join" }, 1);
      await h.metricAtLeast(gw, "pushgate_client_events_total", { kind: "unknown" }, 1);
      await h.metricAtLeast(gw, "pushgate_client_joins_total", { op: "join", outcome: "ok" }, 1);
      await h.metricAtLeast(gw, "pushgate_deliveries_total", {}, 1);
      await h.metricAtLeast(gw, "pushgate_push_write_seconds_count", {}, 1);
      a.close();
      b.close();
    });
  });
});

describe("HTTP API without keys", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway();
  });
  after(h.cleanup);

  test("loopback callers are allowed without a key", async () => {
    const res = await h.api(gw, "GET", "/v1/nodes");
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.nodes.length, 1);
    assert.match(res.body.nodes[0].id, /^[A-Za-z0-9_-]{1,16}$/);
  });
});
