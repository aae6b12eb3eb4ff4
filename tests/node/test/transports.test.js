"use strict";
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

describe("transports", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway();
  });
  after(h.cleanup);

  const socketInfo = async (s) => {
    const res = await h.api(gw, "GET", `/v1/sockets/${encodeURIComponent(s.id)}`);
    assert.equal(res.status, 200, `GET /v1/sockets/${s.id}: ${res.text}`);
    return res.body;
  };

  test("default options connect over polling, upgrade to websocket, and receive a push", async () => {
    const s = h.client(gw);
    // The Manager opens its engine synchronously, so the upgrade cannot be missed.
    const engine = s.io.engine;
    assert.equal(engine.transport.name, "polling", "socket.io-client starts on polling");
    const upgraded = h.waitFor(engine, "upgrade", 10_000);
    await h.connected(s);
    const [transport] = await upgraded;
    assert.equal(transport.name, "websocket");
    assert.equal(s.io.engine.transport.name, "websocket");
    await h.eventually(async () => (await socketInfo(s)).transport === "websocket", {
      what: 'GET /v1/sockets shows transport "websocket"',
    });

    const got = h.waitFor(s, "notice");
    const res = await h.push(gw, { to: { socket: s.id }, event: "notice", data: { n: 1 }, wait: true });
    assert.equal(res.status, 200);
    assert.equal(res.body.report.delivered, 1);
    assert.deepEqual(await got, [{ n: 1 }]);
  });

  test('transports: ["websocket"] connects directly and receives a push', async () => {
    const s = await h.connect(gw, { transports: ["websocket"] });
    assert.equal(s.io.engine.transport.name, "websocket");
    assert.equal((await socketInfo(s)).transport, "websocket");
    const got = h.waitFor(s, "notice");
    const res = await h.push(gw, { to: { socket: s.id }, event: "notice", data: "over ws", wait: true });
    assert.equal(res.body.report.delivered, 1);
    assert.deepEqual(await got, ["over ws"]);
  });

  test('transports: ["polling"] receives several pushes in a row, in order, and emits with ack', async () => {
    const s = await h.connect(gw, { transports: ["polling"] });
    assert.equal(s.io.engine.transport.name, "polling");
    assert.equal((await socketInfo(s)).transport, "polling");

    const rec = h.record(s, "tick");
    const N = 25;
    for (let i = 0; i < N; i++) {
      await h.push(gw, { to: { socket: s.id }, event: "tick", data: { i }, wait: true });
    }
    await rec.waitCount(N);
    assert.deepEqual(
      rec.data().map((d) => d.i),
      [...Array(N).keys()],
      "every polling push arrives once, in order"
    );

    // client -> server emit with an ack callback, over polling
    const res = await h.emitAck(s, "no-such-event", { x: 1 });
    assert.equal(res.ok, false);
    assert.equal(res.error.code, "unknown_event");

    // still on polling, still receiving
    const got = h.waitFor(s, "after");
    await h.push(gw, { to: { socket: s.id }, event: "after", data: [1, 2, 3], wait: true });
    assert.deepEqual(await got, [[1, 2, 3]]);
    assert.equal(s.io.engine.transport.name, "polling");
  });

  test("a push to all reaches polling, upgraded and websocket-only clients alike", async () => {
    const clients = await Promise.all([
      h.connect(gw, { transports: ["polling"] }),
      h.connect(gw, { transports: ["websocket"] }),
      h.connect(gw),
    ]);
    const gots = clients.map((c) => h.waitFor(c, "broadcast"));
    const res = await h.push(gw, { to: { all: true }, event: "broadcast", data: "everyone", wait: true });
    assert.equal(res.status, 200);
    // earlier tests' sockets are still connected too
    assert.ok(res.body.report.sockets >= 3, JSON.stringify(res.body));
    assert.equal(res.body.report.delivered, res.body.report.sockets);
    for (const g of gots) assert.deepEqual(await g, ["everyone"]);
  });
});
