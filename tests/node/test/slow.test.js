"use strict";
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

describe("slow clients", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_QUEUE_CAPACITY: "16" });
  });
  after(h.cleanup);

  test("a client that stops reading is disconnected as slow while a normal client gets every push in order", { timeout: 60_000 }, async () => {
    // A raw Engine.IO/Socket.IO client that joins "/" and then stops reading its socket.
    const slow = await h.rawSocketIo(gw);
    assert.equal(typeof slow.sid, "string");
    slow.ws._socket.pause();

    const normal = await h.connect(gw, { transports: ["websocket"] });
    const seqs = [];
    normal.on("big", (d) => seqs.push(d.seq));
    let normalDisconnect = null;
    normal.on("disconnect", (reason) => (normalDisconnect = reason));

    // 64 KiB per message; keep pushing (≈200 at first) until the gateway reports an overflow.
    const pad = "x".repeat(64 * 1024);
    let sent = 0;
    for (let round = 0; round < 8; round++) {
      const n = round === 0 ? 200 : 50;
      for (let i = 0; i < n; i++) {
        const res = await h.push(gw, { to: { all: true }, event: "big", data: { seq: sent++, pad } });
        assert.equal(res.status, 202, res.text);
      }
      if (((await h.metric(gw, "pushgate_queue_overflows_total")) ?? 0) >= 1) break;
    }

    await h.eventually(() => seqs.length >= sent || normalDisconnect, {
      timeout: 30_000,
      what: `normal client receiving all ${sent} pushes`,
    });
    assert.equal(normalDisconnect, null, "the normal client stays connected");
    assert.deepEqual(seqs, [...Array(sent).keys()], `the normal client got all ${sent} pushes in order`);

    // The paused client's connection must have been closed by the server: once it reads
    // again it drains what the kernel buffered and then sees the end of the connection.
    slow.ws._socket.resume();
    await h.within(15_000, slow.closed, "server closing the slow client's connection");

    await h.metricAtLeast(gw, "pushgate_queue_overflows_total", {}, 1);
    const slowDisconnects = await h.eventually(
      async () => (await h.metric(gw, "pushgate_disconnects_total", { reason: "slow_client" })) >= 1,
      { what: 'pushgate_disconnects_total{reason="slow_client"} >= 1' }
    );
    assert.ok(slowDisconnects);
    const sock = await h.api(gw, "GET", `/v1/sockets/${encodeURIComponent(slow.sid)}`);
    assert.equal(sock.status, 404, "the slow socket is gone");

    // the normal client is still served
    const got = h.waitFor(normal, "after");
    const res = await h.push(gw, { to: { all: true }, event: "after", data: "still here", wait: true });
    assert.equal(res.body.report.sockets, 1);
    assert.deepEqual(await got, ["still here"]);
  });

  test("a push to a socket whose queue is full reports it as failed", { timeout: 60_000 }, async () => {
    const gw2 = await h.startGateway({ PUSHGATE_QUEUE_CAPACITY: "100000", PUSHGATE_QUEUE_BYTES: "2000000" });
    const slow = await h.rawSocketIo(gw2);
    slow.ws._socket.pause();
    const pad = "y".repeat(64 * 1024);
    let failed = 0;
    for (let i = 0; i < 400; i++) {
      const res = await h.push(gw2, { to: { socket: slow.sid }, event: "big", data: { i, pad }, wait: true });
      const r = res.body.report;
      if (r.sockets === 0) break; // already disconnected as slow
      assert.equal(r.sockets, 1);
      assert.equal(r.delivered + r.failed, 1, JSON.stringify(r));
      failed += r.failed;
      if (failed) break;
    }
    assert.ok(failed >= 1, "a delivery that cannot be queued is reported as failed");
    await h.metricAtLeast(gw2, "pushgate_delivery_failures_total", {}, 1);
    slow.ws._socket.resume();
    await h.within(15_000, slow.closed, "server closing the slow client's connection");
    await gw2.stop();
  });
});
