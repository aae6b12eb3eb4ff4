"use strict";
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

const EIO_PATH = "/socket.io/";
const get = (gw, query, init = {}) =>
  fetch(`${gw.url}${EIO_PATH}?${query}`, { signal: AbortSignal.timeout(10_000), ...init });
const json = async (res) => {
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
};

describe("raw Engine.IO / Socket.IO (default settings)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway();
  });
  after(h.cleanup);

  const handshake = async () => {
    const res = await get(gw, "EIO=4&transport=polling");
    assert.equal(res.status, 200);
    const body = await res.text();
    assert.ok(body.startsWith("0{"), `handshake body starts with 0{: ${body}`);
    return { res, open: JSON.parse(body.slice(1)) };
  };

  test("polling handshake: 200 text/plain, 0{...} with exactly sid, upgrades, pingInterval, pingTimeout, maxPayload", async () => {
    const { res, open } = await handshake();
    assert.match(res.headers.get("content-type"), /^text\/plain/);
    assert.deepEqual(Object.keys(open).sort(), ["maxPayload", "pingInterval", "pingTimeout", "sid", "upgrades"]);
    assert.equal(typeof open.sid, "string");
    assert.ok(open.sid.length > 0);
    assert.deepEqual(open.upgrades, ["websocket"]);
    assert.equal(open.pingInterval, 25000);
    assert.equal(open.pingTimeout, 20000);
    assert.equal(open.maxPayload, 1000000);
  });

  test("websocket handshake: the first frame is 0{...} with upgrades []", async () => {
    const r = h.rawWs(gw);
    await r.opened;
    const m = await r.next();
    assert.ok(typeof m === "string" && m.startsWith("0{"), m);
    const open = JSON.parse(m.slice(1));
    assert.deepEqual(Object.keys(open).sort(), ["maxPayload", "pingInterval", "pingTimeout", "sid", "upgrades"]);
    assert.deepEqual(open.upgrades, []);
    r.ws.close();
  });

  test('unknown sid → 400 {"code":1,"message":"Session ID unknown"}', async () => {
    const res = await get(gw, "EIO=4&transport=polling&sid=doesnotexist");
    assert.equal(res.status, 400);
    assert.deepEqual(await json(res), { code: 1, message: "Session ID unknown" });
  });

  test('unknown or missing transport → 400 {"code":0,"message":"Transport unknown"}', async () => {
    for (const q of ["EIO=4&transport=carrier-pigeon", "EIO=4"]) {
      const res = await get(gw, q);
      assert.equal(res.status, 400, q);
      assert.deepEqual(await json(res), { code: 0, message: "Transport unknown" }, q);
    }
  });

  test('EIO=3 or no EIO → 400 {"code":5,"message":"Unsupported protocol version"}', async () => {
    for (const q of ["EIO=3&transport=polling", "transport=polling"]) {
      const res = await get(gw, q);
      assert.equal(res.status, 400, q);
      assert.deepEqual(await json(res), { code: 5, message: "Unsupported protocol version" }, q);
    }
  });

  test("a POST without sid → 400 code 2 (bad handshake method)", async () => {
    const res = await get(gw, "EIO=4&transport=polling", { method: "POST", body: "40" });
    assert.equal(res.status, 400);
    assert.deepEqual(await json(res), { code: 2, message: "Bad handshake method" });
  });

  test("transport=websocket without Upgrade headers → 400 code 3", async () => {
    const res = await get(gw, "EIO=4&transport=websocket");
    assert.equal(res.status, 400);
    assert.deepEqual(await json(res), { code: 3, message: "Bad request" });
  });

  test("polling session: POST 40 joins /, the next GET carries 40{sid} with a Socket.IO id ≠ Engine.IO sid", async () => {
    const { open } = await handshake();
    const post = await get(gw, `EIO=4&transport=polling&sid=${open.sid}`, {
      method: "POST",
      body: "40",
      headers: { "content-type": "text/plain;charset=UTF-8" },
    });
    assert.equal(post.status, 200);
    assert.equal(await post.text(), "ok");
    const poll = await get(gw, `EIO=4&transport=polling&sid=${open.sid}`);
    assert.equal(poll.status, 200);
    const body = await poll.text();
    const packet = body.split("\x1e").find((p) => p.startsWith("40"));
    assert.ok(packet, `a 40 packet in ${body}`);
    const { sid } = JSON.parse(packet.slice(2));
    assert.equal(typeof sid, "string");
    assert.notEqual(sid, open.sid);
    const info = await h.api(gw, "GET", `/v1/sockets/${encodeURIComponent(sid)}`);
    assert.equal(info.status, 200, info.text);
    assert.equal(info.body.transport, "polling");
  });

  test("upgrade: a pending poll gets 6 after 2probe/3probe, 5 completes it, then polling with that sid → 400", async () => {
    const { open } = await handshake();
    const pendingPoll = get(gw, `EIO=4&transport=polling&sid=${open.sid}`);
    const r = h.rawWs(gw, `EIO=4&transport=websocket&sid=${open.sid}`);
    await r.opened;
    r.send("2probe");
    assert.equal(await r.next(), "3probe");
    const noop = await h.within(5000, pendingPoll, "the pending poll being answered");
    assert.equal(noop.status, 200);
    assert.equal(await noop.text(), "6");
    r.send("5");
    r.send("40");
    const connect = await r.next((m) => typeof m === "string" && m.startsWith("40"));
    assert.ok(JSON.parse(connect.slice(2)).sid);
    const after = await get(gw, `EIO=4&transport=polling&sid=${open.sid}`);
    assert.equal(after.status, 400);
    r.ws.close();
  });

  test("websocket Socket.IO: 40 → 40{sid}; 40/nope, → 44/nope,{message: Invalid namespace}", async () => {
    const r = h.rawWs(gw);
    await r.opened;
    await r.next((m) => m.startsWith("0"));
    r.send("40/nope,");
    const refused = await r.next((m) => m.startsWith("44"));
    assert.equal(refused, '44/nope,{"message":"Invalid namespace"}');
    r.send("40");
    const ok = await r.next((m) => m.startsWith("40"));
    const { sid } = JSON.parse(ok.slice(2));
    assert.equal(typeof sid, "string");
    // an event with an ack id is answered with an ACK packet of the same id
    r.send('4217["mystery",1]');
    const ack = await r.next((m) => m.startsWith("43"));
    const m = /^4317(\[.*\])$/.exec(ack);
    assert.ok(m, `ack 17: ${ack}`);
    const [res] = JSON.parse(m[1]);
    assert.equal(res.ok, false);
    assert.equal(res.error.code, "unknown_event");
    r.ws.close();
  });
});

describe("raw Engine.IO heartbeat and limits (ping 300 ms / timeout 200 ms)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_PING_INTERVAL_MS: "300",
      PUSHGATE_PING_TIMEOUT_MS: "200",
      PUSHGATE_CONNECT_TIMEOUT_MS: "2500",
      PUSHGATE_MAX_PAYLOAD: "20000",
    });
  });
  after(h.cleanup);

  test("the open packet carries the configured pingInterval, pingTimeout and maxPayload", async () => {
    const res = await get(gw, "EIO=4&transport=polling");
    const open = JSON.parse((await res.text()).slice(1));
    assert.equal(open.pingInterval, 300);
    assert.equal(open.pingTimeout, 200);
    assert.equal(open.maxPayload, 20000);
  });

  test('a websocket client that never answers pings is closed and counted as reason="ping_timeout"', async () => {
    const r = await h.rawSocketIo(gw);
    await h.within(2500, r.closed, "the server closing a client that ignores pings");
    assert.ok(r.pings >= 1, "it was pinged");
    await h.eventually(async () => (await h.metric(gw, "pushgate_disconnects_total", { reason: "ping_timeout" })) >= 1, {
      what: 'pushgate_disconnects_total{reason="ping_timeout"} >= 1',
    });
    const info = await h.api(gw, "GET", `/v1/sockets/${encodeURIComponent(r.sid)}`);
    assert.equal(info.status, 404);
  });

  test("a websocket client that answers 3 stays open past 1.5 s", async () => {
    const r = await h.rawSocketIo(gw, { answerPings: true });
    await h.sleep(1500);
    assert.equal(r.closeInfo, null, "still open");
    assert.ok(r.pings >= 3, `pinged ${r.pings} times`);
    const info = await h.api(gw, "GET", `/v1/sockets/${encodeURIComponent(r.sid)}`);
    assert.equal(info.status, 200);
    r.ws.close();
  });

  test("polling: the first poll returns exactly 2; answering 3 keeps the session alive", async () => {
    const res = await get(gw, "EIO=4&transport=polling");
    const { sid } = JSON.parse((await res.text()).slice(1));
    for (let i = 0; i < 4; i++) {
      const poll = await get(gw, `EIO=4&transport=polling&sid=${sid}`);
      assert.equal(poll.status, 200);
      assert.equal(await poll.text(), "2");
      const pong = await get(gw, `EIO=4&transport=polling&sid=${sid}`, { method: "POST", body: "3" });
      assert.equal(pong.status, 200);
      assert.equal(await pong.text(), "ok");
    }
  });

  test("polling: a session that stops polling is gone after the ping timeout (400 Session ID unknown)", async () => {
    const res = await get(gw, "EIO=4&transport=polling");
    const { sid } = JSON.parse((await res.text()).slice(1));
    await h.sleep(1500);
    const poll = await get(gw, `EIO=4&transport=polling&sid=${sid}`);
    assert.equal(poll.status, 400);
    assert.deepEqual(await json(poll), { code: 1, message: "Session ID unknown" });
  });

  test("a session that joins no namespace is closed after the connect timeout", async () => {
    const r = h.rawWs(gw, "EIO=4&transport=websocket", { answerPings: true });
    await r.opened;
    await h.within(8000, r.closed, "closing a session that never sent 40");
    assert.ok(r.pings >= 1, "it stayed up (answering pings) until the connect timeout");
  });

  test("a websocket message over maxPayload closes the connection", async () => {
    const r = await h.rawSocketIo(gw, { answerPings: true });
    r.send(`42["big","${"x".repeat(30_000)}"]`);
    await h.within(3000, r.closed, "closing after an oversized message");
  });

  test("a polling POST over maxPayload → 413", async () => {
    const res = await get(gw, "EIO=4&transport=polling");
    const { sid } = JSON.parse((await res.text()).slice(1));
    const post = await get(gw, `EIO=4&transport=polling&sid=${sid}`, {
      method: "POST",
      body: `42["big","${"x".repeat(30_000)}"]`,
    });
    assert.equal(post.status, 413);
  });
});
