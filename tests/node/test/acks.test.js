"use strict";
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

describe("acknowledged pushes", () => {
  let gw, acker1, acker2, silent;
  before(async () => {
    gw = await h.startGateway();
    [acker1, acker2, silent] = await Promise.all([
      h.connect(gw, { transports: ["websocket"] }),
      h.connect(gw, { transports: ["polling"] }),
      h.connect(gw),
    ]);
    const ackBack = (s) =>
      s.on("ask", (data, cb) => {
        assert.equal(typeof cb, "function", "the push asked for an ack, so the last argument is a callback");
        cb({ thanks: data });
      });
    ackBack(acker1);
    ackBack(acker2);
    silent.on("ask", () => {}); // receives, never calls back
    // the users are distinct rooms so each test picks its audience
    for (const [s, room] of [
      [acker1, "ackers"],
      [acker2, "ackers"],
      [acker1, "mixed"],
      [silent, "mixed"],
    ]) {
      const res = await h.api(gw, "POST", `/v1/rooms/${room}/join`, { sockets: [s.id] });
      assert.equal(res.status, 200, res.text);
    }
  });
  after(h.cleanup);

  test("two clients that call back → report {sockets:2, delivered:2, acked:2, timed_out:0, failed:0}", async () => {
    const res = await h.push(gw, { to: { room: "ackers" }, event: "ask", data: 1, ack: { timeout_ms: 3000 }, wait: true });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.body.report, { sockets: 2, delivered: 2, acked: 2, timed_out: 0, failed: 0 });
  });

  test("wait:true answers as soon as every client acked, long before a 60 s timeout", async () => {
    const res = await h.push(
      gw,
      { to: { room: "ackers" }, event: "ask", data: 2, ack: { timeout_ms: 60_000 }, wait: true },
      { timeout: 10_000 }
    );
    assert.deepEqual(res.body.report, { sockets: 2, delivered: 2, acked: 2, timed_out: 0, failed: 0 });
  });

  test("a client that never calls back is reported as timed_out", async () => {
    const res = await h.push(gw, { to: { room: "mixed" }, event: "ask", data: 3, ack: { timeout_ms: 1000 }, wait: true });
    assert.deepEqual(res.body.report, { sockets: 2, delivered: 2, acked: 1, timed_out: 1, failed: 0 });
  });

  test("without wait: 202 {id}, GET /v1/pushes/{id} is pending before the timeout and final after", async () => {
    const res = await h.push(gw, { to: { room: "mixed" }, event: "ask", data: 4, ack: { timeout_ms: 2500 } });
    assert.equal(res.status, 202, res.text);
    assert.equal(typeof res.body.id, "string");
    assert.deepEqual(Object.keys(res.body), ["id"]);
    const id = res.body.id;

    const pending = await h.api(gw, "GET", `/v1/pushes/${encodeURIComponent(id)}`);
    assert.equal(pending.status, 200, pending.text);
    assert.equal(pending.body.id, id);
    assert.equal(pending.body.state, "pending");
    assert.equal(pending.body.report.sockets, 2);
    assert.equal(pending.body.report.timed_out, 0);

    const final = await h.eventually(
      async () => {
        const r = await h.api(gw, "GET", `/v1/pushes/${encodeURIComponent(id)}`);
        return r.body.state === "final" && r.body;
      },
      { timeout: 10_000, what: "state final" }
    );
    assert.deepEqual(final.report, { sockets: 2, delivered: 2, acked: 1, timed_out: 1, failed: 0 });
  });

  test("without wait, a push becomes final once every client acked (long before a 60 s timeout)", async () => {
    const res = await h.push(gw, { to: { room: "ackers" }, event: "ask", data: 5, ack: { timeout_ms: 60_000 } });
    assert.equal(res.status, 202);
    const final = await h.eventually(
      async () => {
        const r = await h.api(gw, "GET", `/v1/pushes/${encodeURIComponent(res.body.id)}`);
        return r.body.state === "final" && r.body;
      },
      { timeout: 8000, what: "state final" }
    );
    assert.deepEqual(final.report, { sockets: 2, delivered: 2, acked: 2, timed_out: 0, failed: 0 });
  });

  test("a push without ack is final at once with acked 0", async () => {
    const res = await h.push(gw, { to: { room: "ackers" }, event: "plain", data: 6 });
    assert.equal(res.status, 202);
    const final = await h.eventually(
      async () => {
        const r = await h.api(gw, "GET", `/v1/pushes/${encodeURIComponent(res.body.id)}`);
        return r.body.state === "final" && r.body;
      },
      { what: "state final" }
    );
    assert.deepEqual(final.report, { sockets: 2, delivered: 2, acked: 0, timed_out: 0, failed: 0 });
  });

  test("GET /v1/pushes/{unknown id} is 404 with an error body", async () => {
    h.assertError(await h.api(gw, "GET", "/v1/pushes/does-not-exist"), 404);
  });

  test("ack arguments are passed through: a client may ack with any value, binary included", async () => {
    const s = await h.connect(gw, { transports: ["websocket"] });
    s.on("ask-bin", (data, cb) => cb(Buffer.from([1, 2, 3]), { more: true }));
    const res = await h.push(gw, { to: { socket: s.id }, event: "ask-bin", data: "x", ack: { timeout_ms: 3000 }, wait: true });
    assert.deepEqual(res.body.report, { sockets: 1, delivered: 1, acked: 1, timed_out: 0, failed: 0 });
  });

  test("client → server: pushgate:join with a callback is acked by the server", async () => {
    const res = await h.emitAck(acker1, "pushgate:join", "some-room");
    assert.equal(typeof res, "object");
    assert.equal(typeof res.ok, "boolean");
    // anonymous connections carry no join patterns
    assert.equal(res.ok, false);
    assert.equal(res.error.code, "forbidden");
  });

  test('client → server: an unknown event with a callback gets {ok:false, error:{code:"unknown_event"}}', async () => {
    for (const s of [acker1, acker2]) {
      const res = await h.emitAck(s, "whatever", 1, "two", { three: 3 });
      assert.equal(res.ok, false);
      assert.equal(res.error.code, "unknown_event");
      assert.equal(typeof res.error.message, "string");
    }
    // without a callback it is just ignored; the connection stays usable
    acker1.emit("whatever", "no ack");
    const got = h.waitFor(acker1, "still-here");
    await h.push(gw, { to: { socket: acker1.id }, event: "still-here", wait: true });
    await got;
    assert.ok(acker1.connected);
  });

  test("acks and client events are counted in metrics", async () => {
    await h.metricAtLeast(gw, "pushgate_acks_total", { outcome: "acked" }, 8);
    await h.metricAtLeast(gw, "pushgate_acks_total", { outcome: "timed_out" }, 2);
    await h.metricAtLeast(gw, "pushgate_client_events_total", { kind: "unknown" }, 3);
    await h.metricAtLeast(gw, "pushgate_client_events_total", { kind: "ack" }, 8);
  });
});
