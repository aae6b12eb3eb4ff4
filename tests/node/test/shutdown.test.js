"use strict";
const { describe, test, after } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

describe("graceful shutdown", () => {
  after(h.cleanup);

  test('SIGTERM: queued pushes are delivered, clients get "transport close" (so they reconnect), exit code 0', { timeout: 30_000 }, async () => {
    const gw = await h.startGateway({ PUSHGATE_SHUTDOWN_TIMEOUT_MS: "5000" });
    const ws = await h.connect(gw, { transports: ["websocket"] });
    const polling = await h.connect(gw, { transports: ["polling"] });
    const upgraded = await h.connect(gw);
    const clients = [ws, polling, upgraded];
    const recs = clients.map((c) => h.record(c, "last-words"));
    const disconnects = clients.map((c) => h.waitFor(c, "disconnect", 20_000));

    // handed to every queue (wait:true) before the signal: all of it must still arrive
    for (let i = 0; i < 20; i++) {
      const res = await h.push(gw, { to: { all: true }, event: "last-words", data: { i, pad: "z".repeat(4000) }, wait: true });
      assert.equal(res.body.report.delivered, 3);
    }
    const raw = await h.rawSocketIo(gw);
    const code = gw.stop("SIGTERM", 20_000);
    const closeInfo = await h.within(15_000, raw.closed, "the raw websocket being closed");
    assert.equal(closeInfo.code, 1001, "WebSocket close 1001 going away");
    assert.ok(
      !raw.messages.some((m) => typeof m === "string" && m.startsWith("41")),
      `no Socket.IO DISCONNECT packet before the close: ${JSON.stringify(raw.messages)}`
    );
    const reasons = (await Promise.all(disconnects)).map(([reason]) => reason);
    assert.deepEqual(reasons, ["transport close", "transport close", "transport close"]);
    for (const r of recs) {
      assert.deepEqual(
        r.data().map((d) => d.i),
        [...Array(20).keys()],
        "every push queued before SIGTERM was delivered before the close"
      );
    }
    assert.equal(await code, 0, `exit code\n${gw.logs()}`);
  });

  /** A gateway with a client that stopped reading and has far more queued than the kernel
   * buffers hold, so the drain stays busy for the whole shutdown timeout. */
  const drainingGateway = async () => {
    const gw = await h.startGateway({
      PUSHGATE_SHUTDOWN_TIMEOUT_MS: "4000",
      PUSHGATE_QUEUE_CAPACITY: "1000000",
      PUSHGATE_QUEUE_BYTES: "1000000000",
      PUSHGATE_MAX_BODY_BYTES: "4000000",
    });
    const stuck = await h.rawSocketIo(gw);
    stuck.ws._socket.pause();
    const pad = "q".repeat(1_000_000);
    for (let i = 0; i < 40; i++) {
      const res = await h.push(gw, { to: { socket: stuck.sid }, event: "big", data: { i, pad }, wait: true });
      assert.equal(res.body.report.delivered, 1, JSON.stringify(res.body));
    }
    const ok = await h.api(gw, "GET", "/readyz");
    assert.deepEqual([ok.status, ok.body], [200, { status: "ready" }]);
    return { gw, stuck };
  };

  test("during the drain /readyz answers 503 draining and the API answers 503", { timeout: 40_000 }, async () => {
    const { gw, stuck } = await drainingGateway();
    const code = gw.stop("SIGTERM", 30_000);
    let last;
    const draining = await h.eventually(
      async () => {
        try {
          const r = await h.api(gw, "GET", "/readyz");
          last = `${r.status} ${r.text}`;
          return r.status === 503 && r;
        } catch (e) {
          last = `fetch error ${e.cause?.code || e.message}`;
          throw new Error(last);
        }
      },
      { timeout: 3000, interval: 20, what: "/readyz answering 503 after SIGTERM" }
    );
    assert.deepEqual(draining.body, { status: "draining" });
    h.assertError(await h.api(gw, "POST", "/v1/push", { to: { all: true }, event: "late" }), 503, "push while draining");
    const health = await h.api(gw, "GET", "/healthz");
    assert.deepEqual([health.status, health.body], [200, { status: "ok" }], "healthz stays ok while the process runs");
    assert.equal(await code, 0);
    stuck.ws._socket.resume();
  });

  test("a drain that cannot finish ends at the shutdown timeout: new connections refused meanwhile, clients get transport close, exit 0", { timeout: 40_000 }, async () => {
    const { gw, stuck } = await drainingGateway();
    const normal = await h.connect(gw, { transports: ["websocket"] });
    const normalGone = h.waitFor(normal, "disconnect", 30_000);
    const code = gw.stop("SIGTERM", 30_000);
    await h.sleep(200);
    assert.ok(gw.running, "still draining the stuck client's queue");
    await assert.rejects(h.connect(gw, { transports: ["websocket"], timeout: 3000 }), "a new connection is refused while draining");
    assert.equal(await code, 0, `exit code\n${gw.logs()}`);
    assert.equal((await normalGone)[0], "transport close");
    stuck.ws._socket.resume();
  });
});
