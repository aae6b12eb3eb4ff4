"use strict";
// Pusher Channels clients: the real `pusher-js` client (its Node build) and the real
// `pusher` server SDK against the gateway binary, beside socket.io-client and phoenix
// on one and two nodes.
const { describe, test, before, after, afterEach } = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const h = require("../harness");
const {
  APP,
  OTHER,
  APPS,
  sdk,
  pjs,
  closePusherClients,
  pusherConnected,
  subscribe,
  recordOn,
  pushgateId,
  raw,
  signedUrl,
} = require("../pusher-harness");

afterEach(closePusherClients);

describe("pusher-js and the pusher SDK on one node", () => {
  let gw, api;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_PUSHER_APPS: APPS, PUSHGATE_PUSHER_MAX_CONNECTIONS: "20" });
    api = sdk(gw);
  });
  after(h.cleanup);

  test("connects with a 123.456 socket id; a public channel gets SDK events and /v1 room pushes", async () => {
    const c = await pusherConnected(pjs(gw));
    assert.match(c.connection.socket_id, /^\d+\.\d+$/);
    const id = pushgateId(c.connection.socket_id);
    const info = await h.api(gw, "GET", `/v1/sockets/${id}`);
    assert.equal(info.status, 200, info.text);
    assert.equal(info.body.frontend, "pusher");
    const { channel, ok } = await subscribe(c, "news");
    assert.ok(ok);
    const got = recordOn(channel, "flash");
    await api.trigger("news", "flash", { from: "sdk" });
    const r = await h.push(gw, { to: { room: "news" }, event: "flash", data: { from: "v1" }, wait: true });
    assert.equal(r.body.report.delivered, 1);
    await h.push(gw, { to: { room: "news" }, event: "flash", data: "plain text" });
    await h.eventually(() => got.length === 3, { what: "three events" });
    assert.deepEqual(got, [{ from: "sdk" }, { from: "v1" }, "plain text"]);
    assert.equal(await h.metric(gw, "pushgate_connections", { frontend: "pusher" }), 1);
    c.unsubscribe("news");
    await h.eventually(async () => (await h.api(gw, "GET", "/v1/rooms/news")).body.count === 0, {
      what: "unsubscribed from the room",
    });
    const after = await h.push(gw, { to: { room: "news" }, event: "flash", wait: true });
    assert.equal(after.body.report.sockets, 0);
  });

  test("a private channel needs the app's signature; a wrong one is refused with 4009 and status 401", async () => {
    const c = await pusherConnected(pjs(gw));
    const good = await subscribe(c, "private-team");
    assert.ok(good.ok);
    const got = recordOn(good.channel, "msg");
    await api.trigger("private-team", "msg", { n: 1 });
    await h.eventually(() => got.length === 1, { what: "private event" });

    const forged = await pusherConnected(
      pjs(gw, { auth: (socketId, name) => ({ auth: `${APP.key}:${"0".repeat(64)}` }) })
    );
    const bad = await subscribe(forged, "private-team");
    assert.equal(bad.ok, false);
    assert.equal(bad.error.status, 401);
    assert.match(bad.error.error, /invalid signature/);
    await h.eventually(() => forged.errors.some((e) => e.data && e.data.code === 4009), { what: "pusher:error 4009" });
    const wrongKey = await pusherConnected(
      pjs(gw, { auth: (socketId, name) => sdk(gw, OTHER).authorizeChannel(socketId, name) })
    );
    assert.equal((await subscribe(wrongKey, "private-team")).ok, false, "another app's signature");
    const room = await h.api(gw, "GET", "/v1/rooms/private-team");
    assert.equal(room.body.count, 1, "only the signed subscriber joined the room");
  });

  test("a private-encrypted channel's ciphertext is relayed untouched: pusher-js decrypts it", async () => {
    const c = await pusherConnected(pjs(gw));
    const { channel, ok } = await subscribe(c, "private-encrypted-vault");
    assert.ok(ok);
    const got = recordOn(channel, "secret");
    await api.trigger("private-encrypted-vault", "secret", { code: 1234 });
    await h.eventually(() => got.length === 1, { what: "decrypted event" });
    assert.deepEqual(got[0], { code: 1234 });
  });

  test("client events reach the other subscribers of a private channel, never the sender", async () => {
    const a = await pusherConnected(pjs(gw));
    const b = await pusherConnected(pjs(gw));
    const sio = await h.connect(gw, { transports: ["websocket"] });
    const ca = await subscribe(a, "private-chat");
    const cb = await subscribe(b, "private-chat");
    assert.ok(ca.ok && cb.ok);
    const sioSocket = await h.api(gw, "POST", "/v1/rooms/private-chat/join", { sockets: [sio.id] });
    assert.equal(sioSocket.body.sockets, 1);
    const sioGot = h.record(sio, "client-typing");
    const atA = recordOn(ca.channel, "client-typing");
    const atB = recordOn(cb.channel, "client-typing");
    assert.ok(ca.channel.trigger("client-typing", { who: "a" }));
    await h.eventually(() => atB.length === 1 && sioGot.items.length === 1, { what: "b and the socket.io member got it" });
    assert.deepEqual(atB[0], { who: "a" });
    assert.deepEqual(sioGot.items[0], [{ who: "a" }]);
    // Ordering proof that nothing reached the sender: a push after it arrives first.
    const marker = recordOn(ca.channel, "marker");
    await h.push(gw, { to: { room: "private-chat" }, event: "marker", wait: true });
    await h.eventually(() => marker.length === 1, { what: "marker" });
    assert.equal(atA.length, 0, "the sender does not get its own client event");
  });

  test("client events are refused on public channels, unsubscribed channels and past the rate", async () => {
    const ws = await raw(gw);
    await ws.next((f) => f.event === "pusher:connection_established");
    ws.sendJson({ event: "pusher:subscribe", data: { auth: "", channel: "lobby" } });
    await ws.next((f) => f.event === "pusher_internal:subscription_succeeded");
    ws.sendJson({ event: "client-hi", channel: "lobby", data: {} });
    const e1 = await ws.next((f) => f.event === "pusher:error");
    assert.equal(e1.data.code, null);
    assert.match(e1.data.message, /only allowed on private and presence channels/);
    ws.sendJson({ event: "client-hi", channel: "private-none", data: {} });
    assert.match((await ws.next((f) => f.event === "pusher:error")).data.message, /not subscribed/);

    const c = await pusherConnected(pjs(gw));
    const { channel } = await subscribe(c, "private-burst");
    const other = await pusherConnected(pjs(gw));
    const o = await subscribe(other, "private-burst");
    const got = recordOn(o.channel, "client-burst");
    for (let i = 0; i < 15; i++) channel.trigger("client-burst", { i });
    await h.eventually(() => c.errors.some((e) => e.data && e.data.code === 4301), { what: "4301 for the 11th" });
    await h.sleep(300);
    assert.equal(got.length, 10, "ten per second pass");
    channel.trigger("client-burst", { big: "x".repeat(11 * 1024) });
    await h.eventually(() => c.errors.filter((e) => e.data && /larger than/.test(e.data.message)).length === 1, {
      what: "a too-large client event refused",
    });
  });

  test("sign-in makes the connection its user's: /v1 user pushes and the SDK's sendToUser reach pusher.user", async () => {
    const c = await pusherConnected(pjs(gw, { user: { id: "ann", name: "Ann" } }));
    const got = recordOn(c.user, "note");
    c.signin();
    await c.user.signinDonePromise;
    assert.equal(c.user.user_data.id, "ann");
    await h.eventually(() => c.user.serverToUserChannel && c.user.serverToUserChannel.subscribed, {
      what: "#server-to-user-ann subscribed",
    });
    const user = await h.api(gw, "GET", "/v1/users/ann");
    assert.equal(user.body.sockets.length, 1);
    assert.equal(user.body.sockets[0].frontend, "pusher");
    await h.push(gw, { to: { user: "ann" }, event: "note", data: { via: "v1" } });
    await h.push(gw, { to: { users: ["ann", "bob"] }, event: "note", data: { via: "users" } });
    await api.sendToUser("ann", "note", { via: "sdk" });
    await h.eventually(() => got.length === 3, { what: "three user events" });
    assert.deepEqual(got, [{ via: "v1" }, { via: "users" }, { via: "sdk" }]);
    // pushes to all and to the socket arrive without a channel: pusher.bind.
    const global = recordOn(c, "broadcast");
    await h.push(gw, { to: { all: true }, event: "broadcast", data: 1 });
    await h.push(gw, { to: { socket: pushgateId(c.connection.socket_id) }, event: "broadcast", data: 2 });
    await h.eventually(() => global.length === 2, { what: "all and socket pushes" });
  });

  test("a forged sign-in is refused with pusher:error 4009 and the connection closes", async () => {
    const ws = await raw(gw);
    const hello = await ws.next((f) => f.event === "pusher:connection_established");
    const { socket_id } = JSON.parse(hello.data);
    const user_data = JSON.stringify({ id: "mallory" });
    ws.sendJson({ event: "pusher:signin", data: { auth: `${APP.key}:${"ab".repeat(32)}`, user_data } });
    const err = await ws.next((f) => f.event === "pusher:error");
    assert.equal(err.data.code, 4009);
    assert.equal((await h.within(3000, ws.closed, "close")).code, 4009);
    // A correctly signed id in the further apps' reserved prefix is refused too.
    const ws3 = await raw(gw);
    const hello3 = JSON.parse((await ws3.next((f) => f.event === "pusher:connection_established")).data);
    const reserved = JSON.stringify({ id: `pusher:${OTHER.id}:alice` });
    const sig = crypto.createHmac("sha256", APP.secret).update(`${hello3.socket_id}::user::${reserved}`).digest("hex");
    ws3.sendJson({ event: "pusher:signin", data: { auth: `${APP.key}:${sig}`, user_data: reserved } });
    assert.match((await ws3.next((f) => f.event === "pusher:error")).data.message, /reserved/);
    assert.equal((await h.within(3000, ws3.closed, "close")).code, 4009);
    // Subscribing to another user's channel is refused as well.
    const ws2 = await raw(gw);
    await ws2.next((f) => f.event === "pusher:connection_established");
    ws2.sendJson({ event: "pusher:subscribe", data: { auth: "", channel: "#server-to-user-ann" } });
    const refused = await ws2.next((f) => f.event === "pusher:subscription_error");
    assert.equal(JSON.parse(refused.data).status, 403);
    assert.ok(socket_id);
  });

  test("every HTTP API call through the SDK answers as Pusher does", async () => {
    const a = await pusherConnected(pjs(gw));
    const b = await pusherConnected(pjs(gw));
    await subscribe(a, "stats-1");
    const sa = await subscribe(a, "stats-2");
    const sb = await subscribe(b, "stats-2");
    await subscribe(b, "private-stats");
    const atA = recordOn(sa.channel, "tick");
    const atB = recordOn(sb.channel, "tick");

    // trigger: several channels, socket_id exclusion, info in the answer.
    const res = await api.trigger(["stats-1", "stats-2"], "tick", { n: 1 }, {
      socket_id: a.connection.socket_id,
      info: "subscription_count",
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {
      channels: { "stats-1": { subscription_count: 1 }, "stats-2": { subscription_count: 2 } },
    });
    await h.eventually(() => atB.length === 1, { what: "b got the tick" });
    const marker = recordOn(sa.channel, "marker");
    await api.trigger("stats-2", "marker", {});
    await h.eventually(() => marker.length === 1, { what: "a got the marker" });
    assert.equal(atA.length, 0, "socket_id excluded a");

    // triggerBatch, with and without info.
    const batch = await api.triggerBatch([
      { channel: "stats-2", name: "tick", data: { n: 2 } },
      { channel: "stats-1", name: "tick", data: { n: 3 }, info: "subscription_count" },
    ]);
    assert.deepEqual(await batch.json(), { batch: [{}, { subscription_count: 1 }] });
    await h.eventually(() => atB.length === 2 && atA.length === 1, { what: "batch delivered" });

    // GET /channels with prefix filter and counts; GET /channels/{name}.
    const all = await (await api.get({ path: "/channels", params: { info: "subscription_count" } })).json();
    assert.deepEqual(all.channels["stats-2"], { subscription_count: 2 });
    assert.deepEqual(all.channels["private-stats"], { subscription_count: 1 });
    const filtered = await (await api.get({ path: "/channels", params: { filter_by_prefix: "private-st" } })).json();
    assert.deepEqual(Object.keys(filtered.channels), ["private-stats"]);
    const one = await (await api.get({ path: "/channels/stats-2", params: { info: "subscription_count" } })).json();
    assert.deepEqual(one, { occupied: true, subscription_count: 2 });
    assert.deepEqual(await (await api.get({ path: "/channels/empty-one" })).json(), { occupied: false });
    await assert.rejects(api.get({ path: "/channels", params: { info: "user_count" } }), (e) => e.status === 400);
    await assert.rejects(api.get({ path: "/channels/stats-1/users" }), (e) => e.status === 400);

    // terminate_connections closes the user's Pusher connections with 4009.
    const t = await pusherConnected(pjs(gw, { user: { id: "tom" } }));
    t.signin();
    await t.user.signinDonePromise;
    const closed = new Promise((resolve) => t.connection.bind("state_change", (s) => s.current !== "connected" && resolve(s)));
    const term = await api.terminateUserConnections("tom");
    assert.equal(term.status, 200);
    await h.within(5000, closed, "tom disconnected");
    await h.eventually(() => t.errors.some((e) => e.error && e.error.data && e.error.data.code === 4009) || t.connection.state === "disconnected", {
      what: "4009 close, no reconnect",
    });
    assert.equal((await h.api(gw, "GET", "/v1/users/tom")).body.sockets.length, 0);
    const metrics = await h.metric(gw, "pushgate_http_requests_total", { route: "/apps/{app_id}/events", status: "200" });
    assert.ok(metrics >= 1, `events counted: ${metrics}`);
  });

  test("a wrong signature, an expired timestamp, a wrong key or app are refused with 401/404", async () => {
    const wrongSecret = sdk(gw, { ...APP, secret: "not-the-secret" });
    await assert.rejects(wrongSecret.trigger("x", "e", {}), (e) => e.status === 401 && /invalid signature/.test(e.body));
    const wrongKey = sdk(gw, { ...APP, key: "nope" });
    await assert.rejects(wrongKey.trigger("x", "e", {}), (e) => e.status === 401 && /unknown auth_key/.test(e.body));
    const wrongApp = sdk(gw, { ...APP, id: "999" });
    await assert.rejects(wrongApp.trigger("x", "e", {}), (e) => e.status === 404);
    const body = JSON.stringify({ name: "e", channel: "x", data: "{}" });
    const old = Math.floor(Date.now() / 1000) - 601;
    const expired = await fetch(signedUrl(gw, "POST", `/apps/${APP.id}/events`, body, { timestamp: old }), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    assert.equal(expired.status, 401);
    assert.match((await expired.json()).error.message, /timestamp expired/);
    const fresh = await fetch(signedUrl(gw, "POST", `/apps/${APP.id}/events`, body), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    assert.equal(fresh.status, 200, "the same request signed now is accepted");
    const tampered = await fetch(signedUrl(gw, "POST", `/apps/${APP.id}/events`, body), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: body.replace("\"e\"", "\"f\""),
    });
    assert.equal(tampered.status, 401, "body_md5 covers the body");
    const badBody = JSON.stringify({ name: "e", channel: "bad channel", data: "{}" });
    const badChannel = await fetch(signedUrl(gw, "POST", `/apps/${APP.id}/events`, badBody), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: badBody,
    });
    assert.equal(badChannel.status, 400);
    assert.match((await badChannel.json()).error.message, /invalid channel name/);
    await assert.rejects(api.trigger("x", "pusher:error", {}), (e) => e.status === 400);
    await assert.rejects(api.trigger("x", "e", "y".repeat(10 * 1024 + 1)), (e) => e.status === 413);
  });

  test("pusher-js with an unknown app key gets 4001 and does not reconnect", async () => {
    const c = pjs(gw, { app: { ...APP, key: "no-such-key" } });
    await h.eventually(() => c.connection.state === "failed" || c.connection.state === "disconnected", {
      what: "refused",
    });
    const ws = await raw(gw, { key: "no-such-key" });
    const err = await ws.next((f) => f.event === "pusher:error");
    assert.equal(err.data.code, 4001);
    assert.equal((await ws.closed).code, 4001);
    assert.ok((await h.metric(gw, "pushgate_connect_errors_total", { frontend: "pusher", reason: "unknown_app" })) >= 2);
  });

  test("protocol edges: ping/pong, unknown and malformed messages, protocol versions", async () => {
    const ws = await raw(gw);
    await ws.next((f) => f.event === "pusher:connection_established");
    ws.sendJson({ event: "pusher:ping", data: {} });
    assert.deepEqual(await ws.next(), { event: "pusher:pong", data: {} });
    ws.sendJson({ event: "pusher:bogus", data: {} });
    const unknown = await ws.next((f) => f.event === "pusher:error");
    assert.match(unknown.data.message, /unknown event "pusher:bogus"/);
    ws.sendJson("not json");
    assert.match((await ws.next((f) => f.event === "pusher:error")).data.message, /not JSON/);
    ws.sendJson({ event: "pusher:subscribe", data: { channel: "a b" } });
    const bad = await ws.next((f) => f.event === "pusher:subscription_error");
    assert.equal(JSON.parse(bad.data).status, 400);
    ws.sendJson({ event: "pusher:subscribe", data: { auth: "", channel: "presence-room" } });
    const presence = await ws.next((f) => f.event === "pusher:subscription_error");
    assert.equal(JSON.parse(presence.data).status, 401, "a presence channel needs a signature");
    assert.match(JSON.parse(presence.data).error, /missing auth signature/);
    ws.sendJson({ event: "pusher:ping", data: {} });
    await ws.next((f) => f.event === "pusher:pong");
    ws.close();

    const none = await raw(gw, { query: "client=js" });
    assert.equal((await none.next()).data.code, 4008);
    assert.equal((await none.closed).code, 4008);
    const old = await raw(gw, { query: "protocol=3" });
    assert.equal((await old.closed).code, 4007);
  });

  test("an ack-tracked push counts its Pusher deliveries as unackable, not timed out", async () => {
    const c = await pusherConnected(pjs(gw));
    await subscribe(c, "acks");
    const sio = await h.connect(gw, { transports: ["websocket"] });
    await h.api(gw, "POST", "/v1/rooms/acks/join", { sockets: [sio.id] });
    sio.on("ask", (data, ack) => ack("ok"));
    const r = await h.push(gw, { to: { room: "acks" }, event: "ask", data: { q: 1 }, ack: { timeout_ms: 3000 }, wait: true });
    assert.deepEqual(r.body.report, { sockets: 2, delivered: 2, acked: 1, timed_out: 0, failed: 0, unackable: 1 });
  });
});

describe("pusher connection limits and server pings", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_PUSHER_APPS: APPS,
      PUSHGATE_PUSHER_MAX_CONNECTIONS: "1",
      PUSHGATE_PUSHER_ACTIVITY_TIMEOUT_MS: "800",
      PUSHGATE_PUSHER_PONG_TIMEOUT_MS: "500",
    });
  });
  after(h.cleanup);

  test("a silent client is pinged, answers keep it, silence closes it with 4201; a second connection is over quota", async () => {
    const ws = await raw(gw);
    const hello = await ws.next((f) => f.event === "pusher:connection_established");
    assert.equal(JSON.parse(hello.data).activity_timeout, 1);
    const over = await raw(gw);
    assert.equal((await over.next()).data.code, 4004);
    assert.equal((await over.closed).code, 4004);
    await ws.next((f) => f.event === "pusher:ping", "first server ping");
    ws.sendJson({ event: "pusher:pong", data: {} });
    await ws.next((f) => f.event === "pusher:ping", "second server ping");
    const closed = await h.within(5000, ws.closed, "closed for no pong");
    assert.equal(closed.code, 4201);
  });
});

describe("a second Pusher app is kept apart", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_PUSHER_APPS: APPS });
  });
  after(h.cleanup);

  test("same channel names, separate rooms; /v1 pushes reach the first app only", async () => {
    const first = await pusherConnected(pjs(gw));
    const second = await pusherConnected(pjs(gw, { app: OTHER }));
    const f = await subscribe(first, "news");
    const s = await subscribe(second, "news");
    const atFirst = recordOn(f.channel, "e");
    const atSecond = recordOn(s.channel, "e");
    await sdk(gw, OTHER).trigger("news", "e", { app: 7 });
    await h.push(gw, { to: { room: "news" }, event: "e", data: { app: "v1" } });
    await h.push(gw, { to: { all: true }, event: "e", data: "all" });
    await sdk(gw).trigger("news", "e", { app: 42 });
    await h.eventually(() => atFirst.length === 2 && atSecond.length === 1, { what: "each app's events" });
    assert.deepEqual(atFirst, [{ app: "v1" }, { app: 42 }]);
    assert.deepEqual(atSecond, [{ app: 7 }]);
    const listed = await (await sdk(gw, OTHER).get({ path: "/channels" })).json();
    assert.deepEqual(listed, { channels: { news: {} } });
    assert.equal((await h.api(gw, "GET", "/v1/rooms/news")).body.count, 1, "room news is the first app's");
  });
});

describe("pusher-js, socket.io-client and phoenix across two nodes", () => {
  after(async () => {
    h.closeClients();
    await h.cleanupCluster();
  });

  test("a room push, SDK events, channel counts and terminate reach every node", async () => {
    const { nodes } = await h.startCluster(["pa", "pb"], { PUSHGATE_PUSHER_APPS: APPS });
    const p1 = await pusherConnected(pjs(nodes[0], { user: { id: "zed" } }));
    const p2 = await pusherConnected(pjs(nodes[1], { user: { id: "zed" } }));
    const c1 = await subscribe(p1, "ops");
    const c2 = await subscribe(p2, "ops");
    // The same room through the token's rooms claim for the other protocols.
    const t = h.token({ sub: "sam", rooms: ["ops"] });
    const sio = await h.connect(nodes[1], { auth: { token: t }, transports: ["websocket"] });
    const phx = h.phoenixSocket(nodes[0], { token: t });
    const joined = await h.phoenixJoin(phx, "ops");
    assert.equal(joined.status, "ok");
    const phxGot = h.phoenixRecord(joined.channel, "alert");
    const got = [recordOn(c1.channel, "alert"), recordOn(c2.channel, "alert")];
    const sioGot = h.record(sio, "alert");
    await h.eventually(async () => (await h.api(nodes[1], "GET", "/v1/rooms/ops")).body.count === 4, {
      what: "four members registered",
    });
    const r = await h.push(nodes[1], { to: { room: "ops" }, event: "alert", data: { level: 3 }, ack: { timeout_ms: 2000 }, wait: true });
    assert.equal(r.body.report.delivered, 4, JSON.stringify(r.body));
    assert.equal(r.body.report.unackable, 2, "two Pusher deliveries cannot be acked");
    assert.equal(r.body.report.timed_out, 2, "socket.io and phoenix did not ack");
    await sdk(nodes[1]).trigger("ops", "alert", { level: 4 }, { socket_id: p1.connection.socket_id });
    await h.eventually(() => got[0].length === 1 && got[1].length === 2 && sioGot.items.length === 2 && phxGot.items.length === 2, {
      what: "every member on both nodes",
    });
    assert.deepEqual(got[1], [{ level: 3 }, { level: 4 }]);
    assert.deepEqual(sioGot.items[1], ['{"level":4}'], "SDK data arrives as the string it was sent as");

    const count = await (await sdk(nodes[1]).get({ path: "/channels/ops", params: { info: "subscription_count" } })).json();
    assert.deepEqual(count, { occupied: true, subscription_count: 4 });
    const listed = await (await sdk(nodes[0]).get({ path: "/channels", params: { filter_by_prefix: "op" } })).json();
    assert.deepEqual(listed, { channels: { ops: {} } });

    for (const c of [p1, p2]) {
      c.signin();
      await c.user.signinDonePromise;
    }
    await h.eventually(async () => (await h.api(nodes[0], "GET", "/v1/users/zed")).body.sockets.length === 2, {
      what: "zed on both nodes",
    });
    const term = await sdk(nodes[0]).terminateUserConnections("zed");
    assert.equal(term.status, 200);
    await h.eventually(async () => (await h.api(nodes[1], "GET", "/v1/users/zed")).body.sockets.length === 0, {
      what: "zed's connections closed on both nodes",
    });
    assert.ok(sio.connected, "other frontends' sockets stay");
  });
});

describe("pusher connections at shutdown", () => {
  after(h.cleanup);

  test("SIGTERM closes Pusher connections with 4200, so pusher-js reconnects at once elsewhere", async () => {
    const gw = await h.startGateway({ PUSHGATE_PUSHER_APPS: APPS, PUSHGATE_SHUTDOWN_TIMEOUT_MS: "200" });
    const ws = await raw(gw);
    await ws.next((f) => f.event === "pusher:connection_established");
    const stopped = gw.stop("SIGTERM");
    assert.equal((await h.within(8000, ws.closed, "close at shutdown")).code, 4200);
    assert.equal(await stopped, 0);
  });
});
