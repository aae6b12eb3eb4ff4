"use strict";
// No sticky sessions, tested without a balancer: three clustered gateways, and every
// request of one long-polling session sent to a different gateway on purpose. The
// gateway that gets a request for another gateway's session forwards it (a poll, a
// post, a WebSocket upgrade with the bytes piped); a session whose gateway is dead or
// unknown answers as the protocol answers an unknown session, at once.
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

const eio = (gw, query, init = {}) =>
  fetch(`${gw.url}/socket.io/?EIO=4&${query}`, { signal: AbortSignal.timeout(40_000), ...init });
const longpoll = (gw, query, init = {}) =>
  fetch(`${gw.url}/socket/longpoll?vsn=2.0.0&${query}`, {
    signal: AbortSignal.timeout(40_000),
    headers: { accept: "application/json", "content-type": "application/json" },
    ...init,
  }).then(async (res) => ({ httpStatus: res.status, body: JSON.parse(await res.text()) }));
const forwards = (gw, labels) => h.metric(gw, "pushgate_cluster_forwards_total", labels);

describe("no sticky sessions: every gateway serves every session's requests", () => {
  let redis, nodes;

  before(async () => {
    ({ redis, nodes } = await h.startCluster(["f1", "f2", "f3"]));
    // Each gateway has published its address.
    await h.eventually(
      async () => {
        const r = await h.api(nodes[1], "GET", "/v1/nodes");
        return r.status === 200 && r.body.nodes.length === 3 && r.body.nodes.every((n) => n.address);
      },
      { what: "every gateway registered with its address" }
    );
  });
  after(h.cleanupCluster);

  /** A polling session opened on nodes[0] for `user`, connected to `/` through nodes[1]. */
  async function pollingSession(user) {
    const res = await eio(nodes[0], "transport=polling");
    assert.equal(res.status, 200);
    const open = JSON.parse((await res.text()).slice(1));
    const post = await eio(nodes[1], `transport=polling&sid=${open.sid}`, {
      method: "POST",
      body: `40${JSON.stringify({ token: h.token({ sub: user }) })}`,
    });
    assert.equal(post.status, 200, "POST through another gateway");
    assert.equal(await post.text(), "ok");
    const poll = await eio(nodes[2], `transport=polling&sid=${open.sid}`);
    assert.equal(poll.status, 200, "GET through a third gateway");
    const body = await poll.text();
    assert.match(body, /^40\{"sid":"/, body);
    return { sid: open.sid, socketId: JSON.parse(body.slice(2)).sid };
  }

  test("the Engine.IO sid names its gateway, and stays a secret distinct from the socket id", async () => {
    const res = await eio(nodes[0], "transport=polling");
    const open = JSON.parse((await res.text()).slice(1));
    assert.match(open.sid, /^f1~[A-Za-z0-9_-]{20}$/);
    const { socketId, sid } = await pollingSession("sid-check");
    assert.match(socketId, /^f1\./);
    assert.ok(!sid.includes(socketId.split(".")[1]));
    for (const n of nodes) assert.ok(!n.logs().includes(sid), "the sid is never logged at info level");
  });

  test("a polling session opened on one gateway is served by the others: posts, polls, pushes", async () => {
    const okBefore = await forwards(nodes[1], { frontend: "socketio", kind: "poll", outcome: "ok" });
    const { sid, socketId } = await pollingSession("pia");
    const where = await h.api(nodes[2], "GET", `/v1/sockets/${socketId}`);
    assert.equal(where.status, 200);
    assert.equal(where.body.node, "f1");
    assert.equal(where.body.transport, "polling");

    // A poll held on nodes[1] (forwarded to f1) receives a push sent through nodes[2].
    const held = eio(nodes[1], `transport=polling&sid=${sid}`);
    await h.sleep(200);
    const pushed = await h.push(nodes[2], { to: { user: "pia" }, event: "note", data: { n: 1 }, wait: true });
    assert.equal(pushed.body.report.delivered, 1);
    const res = await held;
    assert.equal(res.status, 200);
    assert.equal(await res.text(), '42["note",{"n":1}]');
    assert.ok(
      (await forwards(nodes[1], { frontend: "socketio", kind: "poll", outcome: "ok" })) > okBefore,
      "nodes[1] counted its forwards"
    );

    // The client closes through yet another gateway; the session is gone everywhere.
    const close = await eio(nodes[2], `transport=polling&sid=${sid}`, { method: "POST", body: "1" });
    assert.equal(close.status, 200);
    await h.eventually(async () => (await h.api(nodes[0], "GET", `/v1/sockets/${socketId}`)).status === 404, {
      what: "the closed socket left the registry",
    });
    const after = await eio(nodes[1], `transport=polling&sid=${sid}`);
    assert.equal(after.status, 400);
    assert.deepEqual(await after.json(), { code: 1, message: "Session ID unknown" });
  });

  test("a WebSocket upgrade on another gateway completes, and the session runs over the piped socket", async () => {
    const { sid, socketId } = await pollingSession("uma");
    const ws = h.rawWs(nodes[1], `EIO=4&transport=websocket&sid=${sid}`);
    await ws.opened;
    ws.send("2probe");
    assert.equal(await ws.next((m) => m === "3probe"), "3probe");
    ws.send("5");
    await h.eventually(async () => (await h.api(nodes[2], "GET", `/v1/sockets/${socketId}`)).body.transport === "websocket", {
      what: "the registry shows the upgraded transport",
    });
    assert.equal(await h.metric(nodes[1], "pushgate_cluster_forwarded_websockets"), 1);
    assert.ok((await forwards(nodes[1], { kind: "upgrade", outcome: "ok" })) >= 1);

    const pushed = await h.push(nodes[2], { to: { socket: socketId }, event: "over-ws", data: "piped", wait: true });
    assert.equal(pushed.body.report.delivered, 1);
    assert.equal(await ws.next((m) => typeof m === "string" && m.startsWith("42")), '42["over-ws","piped"]');
    // Client events go the other way: an ack-less event is accepted (no close).
    ws.send('42["hello"]');

    // After the upgrade, polling with that sid (through any gateway) is the owner's 400.
    const poll = await eio(nodes[2], `transport=polling&sid=${sid}`);
    assert.equal(poll.status, 400);
    assert.deepEqual(await poll.json(), { code: 3, message: "Bad request" });

    ws.ws.close();
    await ws.closed;
    await h.eventually(async () => (await h.metric(nodes[1], "pushgate_cluster_forwarded_websockets")) === 0, {
      what: "the pipe ended with the WebSocket",
    });
    await h.eventually(async () => (await h.api(nodes[0], "GET", `/v1/sockets/${socketId}`)).status === 404, {
      what: "the socket closed on its gateway",
    });
  });

  test("a Phoenix long-poll session opened on one gateway is served by the others", async () => {
    const token = h.token({ sub: "phil" });
    const opened = await longpoll(nodes[0], `token=${encodeURIComponent(token)}`);
    assert.equal(opened.httpStatus, 200);
    assert.equal(opened.body.status, 410);
    assert.match(opened.body.token, /^f1~[A-Za-z0-9_-]{27}$/);
    const session = `token=${encodeURIComponent(token)}&token=${encodeURIComponent(opened.body.token)}`;

    const join = await longpoll(nodes[1], session, {
      method: "POST",
      body: JSON.stringify(["1", "1", "pushgate", "phx_join", {}]),
    });
    assert.deepEqual(join.body, { status: 200 });
    const reply = await longpoll(nodes[2], session);
    assert.equal(reply.body.status, 200);
    const frames = reply.body.messages.map((m) => JSON.parse(m));
    const joined = frames.find((f) => f[3] === "phx_reply" && f[1] === "1");
    assert.equal(joined[4].status, "ok", JSON.stringify(frames));
    const socketId = joined[4].response.socket_id;
    assert.match(socketId, /^f1\./);

    const held = longpoll(nodes[2], session);
    await h.sleep(200);
    const pushed = await h.push(nodes[1], { to: { user: "phil" }, event: "note", data: { n: 2 }, wait: true });
    assert.equal(pushed.body.report.delivered, 1);
    const got = await held;
    assert.equal(got.body.status, 200);
    assert.deepEqual(got.body.messages.map((m) => JSON.parse(m)), [[null, null, "pushgate", "note", { n: 2 }]]);
    assert.ok((await forwards(nodes[2], { frontend: "phoenix", kind: "poll", outcome: "ok" })) >= 2);
  });

  test("a session of a dead or unknown gateway answers as an unknown session, at once", async () => {
    // A fourth gateway opens sessions, then is SIGKILLed: its lease is still live.
    const doomed = await h.startGateway({
      PUSHGATE_REDIS_URL: redis.url,
      PUSHGATE_NODE_ID: "f4",
      PUSHGATE_JWT_SECRET: h.SECRET,
      PUSHGATE_REGISTRY_TTL_MS: "3000",
    });
    const open = JSON.parse((await (await eio(doomed, "transport=polling")).text()).slice(1));
    const token = h.token({ sub: "dora" });
    const phx = await longpoll(doomed, `token=${encodeURIComponent(token)}`);
    assert.match(phx.body.token, /^f4~/);
    // nodes[0] learns f4's address while f4 runs.
    const warm = await eio(nodes[0], `transport=polling&sid=${open.sid}`, { method: "POST", body: "3" });
    assert.equal(warm.status, 200);
    await doomed.stop("SIGKILL");

    const noOwnerBefore = await forwards(nodes[0], { frontend: "socketio", outcome: "no_owner" });
    const started = Date.now();
    const res = await eio(nodes[0], `transport=polling&sid=${open.sid}`);
    assert.equal(res.status, 400);
    assert.deepEqual(await res.json(), { code: 1, message: "Session ID unknown" });
    assert.ok(Date.now() - started < 5000, "answered without waiting for a timeout");
    assert.ok((await forwards(nodes[0], { frontend: "socketio", outcome: "no_owner" })) > noOwnerBefore);

    // A node nobody knows.
    const ghost = await eio(nodes[1], "transport=polling&sid=ghost~AAAAAAAAAAAAAAAAAAAA");
    assert.equal(ghost.status, 400);
    assert.deepEqual(await ghost.json(), { code: 1, message: "Session ID unknown" });
    const ghostWs = h.rawWs(nodes[1], "EIO=4&transport=websocket&sid=ghost~AAAAAAAAAAAAAAAAAAAA");
    await assert.rejects(ghostWs.opened, /unexpected response 400/);

    // Phoenix: a GET with the dead gateway's token opens a new session here (as for any
    // unknown token), a POST gets 410.
    const session = `token=${encodeURIComponent(token)}&token=${encodeURIComponent(phx.body.token)}`;
    const again = await longpoll(nodes[1], session);
    assert.equal(again.body.status, 410);
    assert.match(again.body.token, /^f2~/);
    const post = await longpoll(nodes[2], session, { method: "POST", body: JSON.stringify(["1", "1", "pushgate", "phx_join", {}]) });
    assert.deepEqual(post.body, { status: 410 });
  });

  test("a request forwarded to one gateway that reaches another is refused with 421", async () => {
    const res = await eio(nodes[1], "transport=polling&sid=f1~AAAAAAAAAAAAAAAAAAAA", {
      headers: { "pushgate-forward-to": "f3" },
    });
    assert.equal(res.status, 421);
    assert.equal(res.headers.get("pushgate-forward-to"), "f2");
  });
});

describe("a single node (no Redis) keeps plain session ids", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway();
  });
  after(h.cleanup);

  test("the sid is 20 URL-safe characters and names no node", async () => {
    const open = JSON.parse((await (await eio(gw, "transport=polling")).text()).slice(1));
    assert.match(open.sid, /^[A-Za-z0-9_-]{20}$/);
    const ghost = await eio(gw, "transport=polling&sid=f1~AAAAAAAAAAAAAAAAAAAA");
    assert.equal(ghost.status, 400);
    assert.deepEqual(await ghost.json(), { code: 1, message: "Session ID unknown" });
  });
});
