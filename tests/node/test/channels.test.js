"use strict";
// Phoenix Channels clients: the real `phoenix` npm client (1.8, and 1.7 over
// WebSocket: its LongPoll needs XMLHttpRequest, which Node 20 lacks) against the
// gateway binary, over both transports, beside socket.io-client on one and two nodes.
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const WebSocket = require("ws");
const h = require("../harness");
const phoenix18 = require("phoenix");
const phoenix17 = require("phoenix17");

const open = new Set();
after(async () => {
  for (const s of open) s.disconnect();
  open.clear();
});

/** A connected phoenix Socket to `gw` over `transport` ("websocket" | "longpoll"). */
function phx(gw, { transport = "websocket", params = {}, lib = phoenix18, ...opts } = {}) {
  const url = gw.url.replace(/^http/, "ws") + "/socket";
  const socket = new lib.Socket(url, {
    transport: transport === "longpoll" ? lib.LongPoll : WebSocket.WebSocket,
    params,
    reconnectAfterMs: () => 200,
    ...opts,
  });
  socket.errors = [];
  socket.onError((e) => socket.errors.push(e));
  socket.connect();
  open.add(socket);
  return socket;
}

/** Joins `topic`; resolves {status, response} ("ok", "error" or "timeout"). */
function join(socket, topic) {
  const channel = socket.channel(topic);
  channel.received = [];
  return new Promise((resolve) => {
    channel
      .join(5000)
      .receive("ok", (response) => resolve({ status: "ok", response, channel }))
      .receive("error", (response) => {
        channel.leave();
        resolve({ status: "error", response, channel });
      })
      .receive("timeout", () => resolve({ status: "timeout", channel }));
  });
}

/** Records every `event` on `channel` as [payload, ref]. */
function record(channel, event) {
  const got = [];
  channel.on(event, (payload, ref) => got.push([payload, ref]));
  return got;
}

for (const transport of ["websocket", "longpoll"]) {
  describe(`phoenix 1.8 over ${transport}`, () => {
    let gw;
    before(async () => {
      gw = await h.startGateway({ PUSHGATE_JWT_SECRET: h.SECRET });
    });
    after(h.cleanup);

    test("a room allowed by the token's rooms or join claims is joined; others are refused as unauthorized", async () => {
      const s = phx(gw, { transport, params: { token: h.token({ sub: "ann", rooms: ["team:1"], join: ["chat:*"] }) } });
      const a = await join(s, "team:1");
      const b = await join(s, "chat:lobby");
      const c = await join(s, "secret");
      assert.equal(a.status, "ok");
      assert.equal(b.status, "ok");
      assert.deepEqual([c.status, c.response], ["error", { reason: "unauthorized" }]);
      const room = await h.api(gw, "GET", "/v1/rooms/chat:lobby");
      assert.equal(room.body.count, 1);
      const got = record(b.channel, "msg");
      await h.push(gw, { to: { room: "chat:lobby" }, event: "msg", data: { n: 1 } });
      await h.eventually(() => got.length === 1, { what: "room push" });
      assert.deepEqual(got[0], [{ n: 1 }, null]);
      await new Promise((r) => b.channel.leave().receive("ok", r));
      await h.eventually(async () => (await h.api(gw, "GET", "/v1/rooms/chat:lobby")).body.count === 0, {
        what: "left the room",
      });
      const after = await h.push(gw, { to: { room: "chat:lobby" }, event: "msg", wait: true });
      assert.equal(after.body.report.sockets, 0);
    });

    test("the pushgate topic carries pushes to all, to the user and to the socket, minus except", async () => {
      const s = phx(gw, { transport, params: { token: h.token({ sub: "bea" }) } });
      const j = await join(s, "pushgate");
      assert.equal(j.status, "ok");
      const id = j.response.socket_id;
      const info = await h.api(gw, "GET", `/v1/sockets/${id}`);
      assert.equal(info.body.frontend, "phoenix");
      assert.equal(info.body.transport, transport);
      assert.equal(info.body.user, "bea");
      const got = record(j.channel, "n");
      await h.push(gw, { to: { all: true }, event: "n", data: { to: "all" } });
      await h.push(gw, { to: { user: "bea" }, event: "n", data: { to: "user" } });
      await h.push(gw, { to: { socket: id }, event: "n", data: { to: "socket" } });
      await h.push(gw, { to: { user: "bea" }, event: "n", data: { to: "excepted" }, except: [id] });
      await h.push(gw, { to: { socket: id }, event: "n", data: [1, "two"] });
      await h.push(gw, { to: { socket: id }, event: "n" });
      await h.eventually(() => got.length === 5, { what: "five pushes" });
      assert.deepEqual(
        got.map(([p]) => p),
        [{ to: "all" }, { to: "user" }, { to: "socket" }, { value: [1, "two"] }, {}]
      );
    });

    test("an ack-tracked push carries a ref, and pushgate:ack counts in the report", async () => {
      const s = phx(gw, { transport, params: { token: h.token({ sub: "cid" }) } });
      const j = await join(s, "pushgate");
      j.channel.on("ask", (payload, ref) => j.channel.push("pushgate:ack", { ref }));
      const r = await h.push(gw, { to: { user: "cid" }, event: "ask", ack: { timeout_ms: 3000 }, wait: true });
      assert.deepEqual(r.body.report, { sockets: 1, delivered: 1, acked: 1, timed_out: 0, failed: 0 });
      const silent = phx(gw, { transport, params: { token: h.token({ sub: "dee" }) } });
      const k = await join(silent, "pushgate");
      const refs = record(k.channel, "ask");
      const t = await h.push(gw, { to: { user: "dee" }, event: "ask", ack: { timeout_ms: 500 }, wait: true });
      assert.deepEqual(t.body.report, { sockets: 1, delivered: 1, acked: 0, timed_out: 1, failed: 0 });
      assert.equal(typeof refs[0][1], "string", "the ref is a string");
    });

    if (transport === "websocket") {
      test("phoenix 1.8's authToken option authenticates the connection", async () => {
        // The token travels base64 in a subprotocol, where `/` is not allowed: pick a
        // token whose base64 has none (as an app must).
        let t;
        for (let i = 0; ; i++) {
          t = h.token({ sub: `fay${i}` });
          if (!Buffer.from(t).toString("base64").includes("/")) break;
        }
        const s = phx(gw, { transport, authToken: t });
        const j = await join(s, "pushgate");
        assert.equal(j.status, "ok");
        const info = await h.api(gw, "GET", `/v1/sockets/${j.response.socket_id}`);
        assert.match(info.body.user, /^fay/);
      });
    }

    test("a bad token refuses the connection: no channel joins", async () => {
      const s = phx(gw, { transport, params: { token: "not-a-jwt" } });
      let joined = false;
      join(s, "pushgate").then((j) => (joined = j.status === "ok"));
      await h.eventually(() => s.errors.length >= 2, { what: "onError on each refused attempt" });
      await h.sleep(500);
      assert.equal(joined, false, "no join while refused");
      assert.equal(s.isConnected(), false);
      assert.ok((await h.metric(gw, "pushgate_connect_errors_total", { frontend: "phoenix" })) >= 1);
      s.disconnect();
    });
  });
}

describe("phoenix clients beside socket.io clients", () => {
  after(h.cleanupCluster);

  test("a room push reaches Phoenix (1.7 and 1.8) and Socket.IO members on two nodes", async () => {
    const redis = await h.startRedis();
    const nodes = [];
    for (const id of ["p1", "p2"]) {
      nodes.push(
        await h.startGateway({ PUSHGATE_REDIS_URL: redis.url, PUSHGATE_NODE_ID: id, PUSHGATE_JWT_SECRET: h.SECRET })
      );
    }
    const t = h.token({ sub: "eve", rooms: ["ops"] });
    const a = await join(phx(nodes[0], { params: { token: t } }), "ops");
    const b = await join(phx(nodes[1], { params: { token: t }, lib: phoenix17 }), "ops");
    const c = await join(phx(nodes[1], { transport: "longpoll", params: { token: t } }), "ops");
    const sio = await h.connect(nodes[1], { auth: { token: t }, transports: ["websocket"] });
    const sioGot = h.record(sio, "alert");
    const got = [a, b, c].map((j) => {
      assert.equal(j.status, "ok");
      return record(j.channel, "alert");
    });
    await h.eventually(async () => (await h.api(nodes[0], "GET", "/v1/rooms/ops")).body.count === 4, {
      what: "four members registered",
    });
    const r = await h.push(nodes[0], { to: { room: "ops" }, event: "alert", data: { level: 2 }, wait: true });
    assert.equal(r.body.report.delivered, 4, JSON.stringify(r.body));
    await h.eventually(() => got.every((g) => g.length === 1) && sioGot.items.length === 1, { what: "all four got it" });
    for (const g of got) assert.deepEqual(g[0][0], { level: 2 });
    assert.deepEqual(sioGot.items[0], [{ level: 2 }]);
  });
});

describe("phoenix protocol edges over a raw WebSocket", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_PHOENIX_TIMEOUT_MS: "1500", PUSHGATE_MAX_PAYLOAD: "2000" });
  });
  after(h.cleanup);

  /** A raw WebSocket with a queue of parsed frames and its close code. */
  async function raw() {
    const ws = new WebSocket(gw.url.replace(/^http/, "ws") + "/socket/websocket?vsn=2.0.0");
    const frames = [];
    ws.closed = new Promise((resolve) => ws.on("close", (code) => resolve(code)));
    ws.on("message", (m) => frames.push(JSON.parse(m.toString())));
    await new Promise((resolve, reject) => {
      ws.on("open", resolve);
      ws.on("error", reject);
    });
    ws.frames = frames;
    ws.next = () => h.eventually(() => frames.shift(), { what: "a frame" });
    return ws;
  }

  test("heartbeats are answered; unknown events and unjoined topics get error replies", async () => {
    const ws = await raw();
    ws.send(JSON.stringify([null, "1", "phoenix", "heartbeat", {}]));
    assert.deepEqual(await ws.next(), [null, "1", "phoenix", "phx_reply", { status: "ok", response: {} }]);
    ws.send(JSON.stringify(["2", "2", "pushgate", "phx_join", {}]));
    assert.equal((await ws.next())[4].status, "ok");
    ws.send(JSON.stringify(["2", "3", "pushgate", "shout", {}]));
    assert.deepEqual((await ws.next())[4], { status: "error", response: { reason: "unknown event" } });
    ws.send(JSON.stringify(["9", "4", "elsewhere", "shout", {}]));
    assert.deepEqual((await ws.next())[4], { status: "error", response: { reason: "unmatched topic" } });
    ws.close();
  });

  test("a silent client is closed after PUSHGATE_PHOENIX_TIMEOUT_MS and leaves the hub", async () => {
    const ws = await raw();
    ws.send(JSON.stringify(["1", "1", "pushgate", "phx_join", {}]));
    const id = (await ws.next())[4].response.socket_id;
    assert.equal((await h.api(gw, "GET", `/v1/sockets/${id}`)).status, 200);
    const code = await h.within(5000, ws.closed, "server closes the silent socket");
    assert.equal(code, 1011);
    assert.equal((await h.api(gw, "GET", `/v1/sockets/${id}`)).status, 404);
  });

  test("malformed and oversize frames close only their own connection", async () => {
    const good = phx(gw, { heartbeatIntervalMs: 500 });
    const j = await join(good, "pushgate");
    const got = record(j.channel, "still");
    const cases = [
      ["not json", 1007],
      [JSON.stringify(["1", "1", "pushgate"]), 1007],
      [JSON.stringify([1, 2, 3, 4, 5]), 1007],
      [JSON.stringify(["1", "1", "pushgate", "phx_join", { pad: "x".repeat(3000) }]), 1009],
    ];
    for (const [frame, expected] of cases) {
      const ws = await raw();
      ws.send(frame);
      assert.equal(await h.within(3000, ws.closed, `close for ${frame.slice(0, 20)}`), expected);
    }
    await h.push(gw, { to: { all: true }, event: "still" });
    await h.eventually(() => got.length === 1, { what: "the good client still receives" });
    assert.ok((await h.metric(gw, "pushgate_connections", { frontend: "phoenix" })) >= 1);
  });

  test("event names Phoenix reserves are refused by the API", async () => {
    for (const event of ["phx_reply", "heartbeat", "presence_diff", "chan_reply_7"]) {
      const r = await h.api(gw, "POST", "/v1/push", { to: { all: true }, event });
      assert.equal(r.status, 400, event);
      assert.match(r.body.error.message, /Phoenix/);
    }
  });
});
