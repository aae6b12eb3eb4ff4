"use strict";
// Limits, as the real clients meet them: socket.io-client, phoenix.js and pusher-js
// refused in their own protocol, retrying with backoff (or not at all, where retrying
// cannot help), while the clients already connected are unaffected; and the HTTP API
// answering 429/503/400 with the JSON error body.
//
// Different client addresses come from one machine through X-Forwarded-For, which the
// gateway believes from PUSHGATE_TRUSTED_PROXIES=127.0.0.1 (as behind HAProxy).
const { describe, test, before, after, afterEach } = require("node:test");
const assert = require("node:assert/strict");
const WebSocket = require("ws");
const PusherJs = require("pusher-js");
const PusherSdk = require("pusher");
const h = require("../harness");

const APP = { id: "42", key: "app-key", secret: "app-secret" };

afterEach(() => h.closeClients());

/** A raw Engine.IO polling handshake (as a client at `from`, if given): status, body, headers. */
async function handshake(gw, { from, origin } = {}) {
  const headers = {};
  if (from) headers["x-forwarded-for"] = from;
  if (origin) headers.origin = origin;
  const res = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling`, {
    headers,
    signal: AbortSignal.timeout(8000),
  });
  const text = await res.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {}
  return { status: res.status, body, text, headers: res.headers };
}

/** A raw Pusher WebSocket: resolves `{ws, frames, closed}` once it opened. */
async function rawPusher(gw, { headers } = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/app/${APP.key}?protocol=7&client=js&version=8.6.0`, { headers });
  const frames = [];
  ws.on("message", (m) => frames.push(JSON.parse(m.toString())));
  const closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  return { ws, frames, closed };
}

const pusherClients = new Set();
afterEach(() => {
  for (const c of pusherClients) c.disconnect();
  pusherClients.clear();
});

/** pusher-js against `gw`, signing in as `user` through the server SDK. */
function pjs(gw, { user } = {}) {
  const server = new PusherSdk({ appId: APP.id, key: APP.key, secret: APP.secret, host: "127.0.0.1", port: String(gw.port), useTLS: false });
  const client = new PusherJs(APP.key, {
    cluster: "mt1",
    wsHost: "127.0.0.1",
    wsPort: gw.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    userAuthentication: { customHandler: ({ socketId }, cb) => cb(null, server.authenticateUser(socketId, user || { id: "u" })) },
    channelAuthorization: { customHandler: ({ socketId, channelName }, cb) => cb(null, server.authorizeChannel(socketId, channelName)) },
  });
  client.errors = [];
  client.states = [];
  client.connection.bind("error", (e) => client.errors.push(e));
  client.connection.bind("state_change", (s) => client.states.push(s.current));
  pusherClients.add(client);
  return client;
}

/** The Pusher error code of a pusher-js "error" event (handshake refusals nest it deeper). */
const pusherCode = (e) => (e && e.data && e.data.code) || (e && e.error && e.error.data && e.error.data.code);

const pusherConnected = (c) => h.eventually(() => c.connection.state === "connected", { what: "pusher-js connected" });

/** Handshakes the gateway refused for `limit` (from pushgate_limit_refusals_total). */
const refusals = (gw, limit) => h.metric(gw, "pushgate_limit_refusals_total", { limit });

describe("connections per node (PUSHGATE_MAX_CONNECTIONS=3)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_MAX_CONNECTIONS: "3", PUSHGATE_PUSHER_APPS: `${APP.id}:${APP.key}:${APP.secret}` });
  });
  after(h.cleanup);

  test("a full node refuses socket.io-client, phoenix.js and pusher-js, which back off and get in once a place is free; the others are unaffected", async () => {
    const held = [await h.connect(gw), await h.connect(gw), await h.connect(gw)];
    assert.equal(await h.metric(gw, "pushgate_limit", { limit: "node_connections" }), 3);

    // socket.io-client: the handshake's HTTP error is 503; it retries with its backoff.
    const late = h.client(gw, { reconnection: true, reconnectionDelay: 400, reconnectionDelayMax: 1600, randomizationFactor: 0 });
    const errors = [];
    late.on("connect_error", (e) => errors.push(e));
    await h.eventually(() => errors.length >= 1, { what: "socket.io connect_error" });
    assert.equal(errors[0].message, "xhr poll error");
    assert.equal(errors[0].description, 503, "the handshake's HTTP status");

    const raw = await handshake(gw);
    assert.equal(raw.status, 503);
    assert.equal(raw.body.code, 4);
    assert.match(raw.body.message, /maximum of 3 connections/);
    assert.equal(raw.headers.get("retry-after"), "1");

    // phoenix.js: the upgrade is refused (503) and it reconnects on its own schedule.
    const phx = h.phoenixSocket(gw, { reconnectAfterMs: () => 400 });
    await h.eventually(() => phx.seen.errors.length >= 1, { what: "phoenix.js error" });
    assert.equal(phx.isConnected(), false);

    // pusher-js: pusher:error 4100 (over capacity), close 4100: it backs off (1 s) and retries.
    const pc = pjs(gw);
    await h.eventually(() => pc.errors.some((e) => pusherCode(e) === 4100), { what: "pusher-js saw 4100" });
    const pusherError = pc.errors.find((e) => pusherCode(e) === 4100);
    assert.match(pusherError.error.data.message, /maximum of 3 connections/);

    // Backoff, not a loop: over 1.5 s the three clients made a handful of attempts.
    const before = await refusals(gw, "node_connections");
    await h.sleep(1500);
    const during = (await refusals(gw, "node_connections")) - before;
    assert.ok(during <= 12, `${during} refused attempts in 1.5 s`);
    assert.ok(during >= 1, "they kept trying");

    // The connected clients still get pushes.
    const got = h.waitFor(held[0], "still");
    await h.push(gw, { to: { socket: held[0].id }, event: "still", data: 1 });
    assert.deepEqual(await got, [1]);

    // Free places: each waiting client gets in by itself.
    for (const s of held) s.close();
    await h.eventually(() => late.connected, { timeout: 10_000, what: "socket.io-client connected" });
    await h.phoenixConnected(phx, 10_000);
    await pusherConnected(pc);
    assert.equal(await h.metric(gw, "pushgate_connect_errors_total", { frontend: "socketio", reason: "node_connections" }) >= 1, true);
  });
});

describe("connections per address (PUSHGATE_MAX_CONNECTIONS_PER_IP=2, through a trusted proxy)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_MAX_CONNECTIONS_PER_IP: "2",
      PUSHGATE_TRUSTED_PROXIES: "127.0.0.1",
      PUSHGATE_PUSHER_APPS: `${APP.id}:${APP.key}:${APP.secret}`,
    });
  });
  after(h.cleanup);

  test("a third connection from one address is refused with 403 in every protocol; other addresses connect", async () => {
    const from = (ip) => ({ extraHeaders: { "x-forwarded-for": ip } });
    const a = await h.connect(gw, from("203.0.113.7"));
    await h.connect(gw, { ...from("203.0.113.7"), transports: ["websocket"] });

    const err = await h.connectError(gw, from("203.0.113.7"));
    assert.equal(err.description, 403);
    const ws = await h.connectError(gw, { ...from("203.0.113.7"), transports: ["websocket"] });
    assert.match(String(ws.description && ws.description.message), /403/);
    const raw = await handshake(gw, { from: "203.0.113.7" });
    assert.equal(raw.status, 403);
    assert.match(raw.body.message, /too many connections from this address \(at most 2\)/);

    // Phoenix: 403, like a refused token.
    assert.equal(await h.phoenixUpgradeStatus(gw, { headers: { "x-forwarded-for": "203.0.113.7" } }), 403);
    const lp = await h.phoenixLongpollGet(gw, "vsn=2.0.0", { "x-forwarded-for": "203.0.113.7" });
    assert.equal(lp.body.status, 403);

    // Pusher: pusher:error 4004 (over quota) and close 4004, which pusher-js does not retry.
    const p = await rawPusher(gw, { headers: { "x-forwarded-for": "203.0.113.7" } });
    const { code } = await p.closed;
    assert.equal(code, 4004);
    assert.equal(p.frames[0].event, "pusher:error");
    assert.equal(p.frames[0].data.code, 4004);
    assert.match(p.frames[0].data.message, /this address/);

    // An IPv6 client is one /64: another address in it is the same client.
    await h.connect(gw, from("2001:db8:1:2::1"));
    await h.connect(gw, from("2001:db8:1:2::99"));
    assert.equal((await h.connectError(gw, from("2001:db8:1:2:ffff::5"))).description, 403);

    // Other addresses are unaffected, and a freed place is available again.
    await h.connect(gw, from("203.0.113.8"));
    a.close();
    await h.eventually(async () => (await handshake(gw, { from: "203.0.113.7" })).status === 200, {
      what: "a place for 203.0.113.7 again",
    });
    assert.ok((await refusals(gw, "ip_connections")) >= 6);
  });

  test("X-Forwarded-For from a sender that is not a trusted proxy is ignored", async () => {
    const other = await h.startGateway({ PUSHGATE_MAX_CONNECTIONS_PER_IP: "2" });
    // Each claims another address, but they all come from 127.0.0.1.
    await h.connect(other, { extraHeaders: { "x-forwarded-for": "198.51.100.1" } });
    await h.connect(other, { extraHeaders: { "x-forwarded-for": "198.51.100.2" } });
    const err = await h.connectError(other, { extraHeaders: { "x-forwarded-for": "198.51.100.3" } });
    assert.equal(err.description, 403);
    await h.eventually(() => /X-Forwarded-For but PUSHGATE_TRUSTED_PROXIES/.test(other.logs()), {
      what: "the warning about untrusted X-Forwarded-For",
    });
  });
});

describe("connections per user (PUSHGATE_MAX_CONNECTIONS_PER_USER=2)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_JWT_SECRET: h.SECRET,
      PUSHGATE_MAX_CONNECTIONS_PER_USER: "2",
      PUSHGATE_PUSHER_APPS: `${APP.id}:${APP.key}:${APP.secret}`,
    });
  });
  after(h.cleanup);

  test("socket.io-client: a third socket of a user gets a readable connect_error and does not reconnect; other users connect", async () => {
    const auth = (sub) => ({ auth: { token: h.token({ sub }) } });
    const first = await h.connect(gw, auth("alice"));
    await h.connect(gw, auth("alice"));
    const s = h.client(gw, { ...auth("alice"), reconnection: true, reconnectionDelay: 100 });
    const errors = [];
    let connects = 0;
    s.on("connect_error", (e) => errors.push(e));
    s.on("connect", () => connects++);
    await h.eventually(() => errors.length === 1, { what: "connect_error" });
    assert.match(errors[0].message, /too many connections for this user on this node \(at most 2\)/);
    assert.deepEqual(errors[0].data, { code: "user_connections" });
    await h.sleep(600);
    assert.equal(errors.length, 1, "socket.io-client does not retry a refused CONNECT");
    assert.equal(connects, 0);
    await h.connect(gw, auth("bob"));
    // Alice's connected sockets still get her pushes.
    const got = h.waitFor(first, "for-alice");
    await h.push(gw, { to: { user: "alice" }, event: "for-alice" });
    await got;
  });

  test("phoenix.js: a third connection of a user is refused with 403; pusher-js: a third sign-in gets 4004 and no retry", async () => {
    const tok = h.token({ sub: "carol" });
    const a = h.phoenixSocket(gw, { token: tok });
    const b = h.phoenixSocket(gw, { token: tok });
    await h.phoenixConnected(a);
    await h.phoenixConnected(b);
    assert.equal(await h.phoenixUpgradeStatus(gw, { token: tok }), 403);

    const signedIn = [];
    for (let i = 0; i < 2; i++) {
      const c = pjs(gw, { user: { id: "dave" } });
      await pusherConnected(c);
      c.signin();
      await h.eventually(async () => (await h.api(gw, "GET", "/v1/users/dave")).body.sockets.length === i + 1, {
        what: `dave's sign-in ${i + 1}`,
      });
      signedIn.push(c);
    }
    const third = pjs(gw, { user: { id: "dave" } });
    await pusherConnected(third);
    third.signin();
    await h.eventually(() => third.errors.some((e) => pusherCode(e) === 4004), { what: "pusher:error 4004" });
    await h.eventually(() => third.connection.state === "disconnected", { what: "pusher-js gave up" });
    await h.sleep(1500);
    assert.equal(third.connection.state, "disconnected", "4004: pusher-js does not reconnect");
    assert.equal((await h.api(gw, "GET", "/v1/users/dave")).body.sockets.length, 2);
    for (const c of signedIn) assert.equal(c.connection.state, "connected");
  });
});

describe("connections not yet authenticated (PUSHGATE_MAX_PENDING_CONNECTIONS=2, PUSHGATE_CONNECT_TIMEOUT_MS=1500)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_MAX_PENDING_CONNECTIONS: "2", PUSHGATE_CONNECT_TIMEOUT_MS: "1500" });
  });
  after(h.cleanup);

  test("Engine.IO sessions that connect no namespace are bounded by count (503) and closed at the timeout; clients that authenticate are not pending", async () => {
    // Clients that connect their namespace at once leave the pending count at once.
    const ok = [await h.connect(gw), await h.connect(gw), await h.connect(gw)];
    assert.equal(await h.metric(gw, "pushgate_pending_connections"), 0);

    const idle1 = h.rawWs(gw);
    const idle2 = h.rawWs(gw);
    await Promise.all([idle1.opened, idle2.opened]);
    await h.eventually(async () => (await h.metric(gw, "pushgate_pending_connections")) === 2, { what: "2 pending" });
    const refused = await handshake(gw);
    assert.equal(refused.status, 503);
    assert.match(refused.body.message, /waiting to authenticate/);
    const err = await h.connectError(gw);
    assert.equal(err.description, 503);

    // By time: both are closed once the connect timeout passes, as connect_timeout.
    await Promise.all([idle1.closed, idle2.closed]);
    assert.equal(await h.metric(gw, "pushgate_pending_connections"), 0);
    assert.ok((await h.metric(gw, "pushgate_disconnects_total", { frontend: "socketio", reason: "connect_timeout" })) >= 2);
    await h.connect(gw);
    for (const s of ok) assert.equal(s.connected, true);
  });
});

describe("connect rate per address (PUSHGATE_CONNECT_RATE_PER_IP=1, burst 3) and its bounded table", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_CONNECT_RATE_PER_IP: "1",
      PUSHGATE_CONNECT_BURST_PER_IP: "3",
      PUSHGATE_TRUSTED_PROXIES: "127.0.0.1",
      PUSHGATE_ADDRESS_TABLE_SIZE: "64",
      PUSHGATE_PUSHER_APPS: `${APP.id}:${APP.key}:${APP.secret}`,
    });
  });
  after(h.cleanup);

  test("past its burst an address gets 429 with Retry-After; socket.io-client backs off and connects when tokens are back", async () => {
    const from = { extraHeaders: { "x-forwarded-for": "192.0.2.10" } };
    for (let i = 0; i < 3; i++) assert.equal((await handshake(gw, { from: "192.0.2.10" })).status, 200);
    const r = await handshake(gw, { from: "192.0.2.10" });
    assert.equal(r.status, 429);
    assert.match(r.body.message, /connecting too often from this address \(at most 1 per second\)/);
    assert.ok(Number(r.headers.get("retry-after")) >= 1);
    // Another address is unaffected.
    assert.equal((await handshake(gw, { from: "192.0.2.11" })).status, 200);
    // A Pusher connection from the same address: 4100, which pusher-js backs off from.
    const p = await rawPusher(gw, { headers: { "x-forwarded-for": "192.0.2.10" } });
    assert.equal((await p.closed).code, 4100);
    assert.equal(p.frames[0].data.code, 4100);

    // Spend what came back meanwhile, then let socket.io-client try.
    while ((await handshake(gw, { from: "192.0.2.10" })).status !== 429);
    const s = h.client(gw, { ...from, reconnection: true, reconnectionDelay: 300, randomizationFactor: 0 });
    const errors = [];
    s.on("connect_error", (e) => errors.push(e.description));
    await h.eventually(() => s.connected, { timeout: 10_000, what: "socket.io-client connected after backing off" });
    assert.ok(errors.length >= 1 && errors.every((d) => d === 429), JSON.stringify(errors));
  });

  test("a flood from many (spoofed) addresses keeps the table at its size, forgetting the stalest", async () => {
    const n = 600;
    for (let i = 0; i < n; i += 50) {
      await Promise.all(
        Array.from({ length: 50 }, (_, k) => handshake(gw, { from: `10.${(i + k) >> 8}.${(i + k) & 255}.1` }))
      );
    }
    const entries = await h.metric(gw, "pushgate_limit_addresses", { table: "connect_rate" });
    assert.ok(entries <= 64, `${entries} addresses remembered`);
    assert.ok((await h.metric(gw, "pushgate_limit_address_evictions_total", { table: "connect_rate" })) > 0);
    // The gateway still serves: a fresh client connects.
    await h.connect(gw, { extraHeaders: { "x-forwarded-for": "192.0.2.99" } });
  });
});

describe("rooms per connection (PUSHGATE_MAX_ROOMS_PER_CONNECTION=2)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_JWT_SECRET: h.SECRET,
      PUSHGATE_MAX_ROOMS_PER_CONNECTION: "2",
      PUSHGATE_PUSHER_APPS: `${APP.id}:${APP.key}:${APP.secret}`,
    });
  });
  after(h.cleanup);

  test("socket.io: client joins and API joins stop at the limit with a named refusal; a token naming more rooms is refused", async () => {
    const s = await h.connect(gw, { auth: { token: h.token({ sub: "erin", rooms: ["r1"], join: ["*"] }) } });
    assert.deepEqual(await h.emitAck(s, "pushgate:join", "r2"), { ok: true, room: "r2" });
    const full = await h.emitAck(s, "pushgate:join", "r3");
    assert.equal(full.ok, false);
    assert.equal(full.error.code, "rooms");
    assert.match(full.error.message, /at most 2 rooms per connection/);

    const other = await h.connect(gw, { auth: { token: h.token({ sub: "fay" }) } });
    const res = await h.api(gw, "POST", "/v1/rooms/r9/join", { sockets: [s.id, other.id] });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.sockets, 1, "the one with room left joined");
    assert.deepEqual(res.body.refused, [{ socket: s.id, error: { code: "rooms", message: "at most 2 rooms per connection" } }]);
    const room = await h.api(gw, "GET", "/v1/rooms/r9");
    assert.deepEqual(room.body.sockets, [other.id]);

    // Leaving makes room again.
    assert.deepEqual(await h.emitAck(s, "pushgate:leave", "r1"), { ok: true, room: "r1" });
    assert.deepEqual(await h.emitAck(s, "pushgate:join", "r3"), { ok: true, room: "r3" });

    const err = await h.connectError(gw, { auth: { token: h.token({ sub: "gus", rooms: ["a", "b", "c"] }) } });
    assert.match(err.message, /names 3 rooms; at most 2 per connection/);
    assert.deepEqual(err.data, { code: "rooms" });
    assert.ok((await refusals(gw, "rooms")) >= 2);
  });

  test("phoenix.js: a third topic's join is answered with an error reply; pusher-js: a third channel gets pusher:subscription_error 429", async () => {
    const phx = h.phoenixSocket(gw, { token: h.token({ sub: "hal", join: ["*"] }) });
    await h.phoenixConnected(phx);
    assert.equal((await h.phoenixJoin(phx, "pushgate")).status, "ok", "the pushgate topic is not a room");
    assert.equal((await h.phoenixJoin(phx, "t1")).status, "ok");
    assert.equal((await h.phoenixJoin(phx, "t2")).status, "ok");
    const third = await h.phoenixJoin(phx, "t3");
    assert.equal(third.status, "error");
    assert.deepEqual(third.response, { reason: "at most 2 rooms per connection" });

    const c = pjs(gw);
    await pusherConnected(c);
    const sub = (name) =>
      new Promise((resolve) => {
        const ch = c.subscribe(name);
        ch.bind("pusher:subscription_succeeded", () => resolve({ ok: true }));
        ch.bind("pusher:subscription_error", (e) => resolve({ ok: false, e }));
      });
    assert.ok((await sub("c1")).ok);
    assert.ok((await sub("c2")).ok);
    const refused = await sub("c3");
    assert.equal(refused.ok, false);
    assert.equal(refused.e.status, 429);
    assert.match(refused.e.error, /at most 2 channels per connection/);
    assert.equal(c.connection.state, "connected", "the connection stays");
  });
});

describe("targets per push and pushes per batch (PUSHGATE_MAX_PUSH_TARGETS=3, PUSHGATE_MAX_BATCH=2)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_MAX_PUSH_TARGETS: "3", PUSHGATE_MAX_BATCH: "2" });
  });
  after(h.cleanup);

  test("a push naming more users, or a larger batch, is refused with 400 naming the limit; nothing is sent", async () => {
    const s = await h.connect(gw);
    const got = h.record(s, "e");
    const many = await h.api(gw, "POST", "/v1/push", { to: { users: ["a", "b", "c", "d"] }, event: "e" });
    const e = h.assertError(many, 400);
    assert.equal(e.code, "push_targets");
    assert.equal(e.message, "at most 3 users per push");
    assert.equal((await h.api(gw, "POST", "/v1/push", { to: { users: ["a", "b", "c", "a"] }, event: "e" })).status, 202);

    const one = { to: { all: true }, event: "e" };
    const batch = await h.api(gw, "POST", "/v1/push/batch", { pushes: [one, one, one] });
    assert.equal(h.assertError(batch, 400).code, "batch_size");
    const inner = await h.api(gw, "POST", "/v1/push/batch", { pushes: [one, { to: { users: ["a", "b", "c", "d"] }, event: "e" }] });
    const ie = h.assertError(inner, 400);
    assert.equal(ie.code, "push_targets");
    assert.match(ie.message, /^push 1: /);
    await h.sentinel(gw, s);
    assert.equal(got.items.length, 0, "a refused batch sends nothing");
    assert.equal((await h.api(gw, "POST", "/v1/push/batch", { pushes: [one, one] })).status, 200);
    assert.equal(await refusals(gw, "batch_size"), 1);
    assert.equal(await refusals(gw, "push_targets"), 2);
  });
});

describe("API requests per key (PUSHGATE_API_RATE=1, PUSHGATE_API_BURST=3)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_API_KEYS: "k1,k2",
      PUSHGATE_API_RATE: "1",
      PUSHGATE_API_BURST: "3",
      PUSHGATE_PUSHER_APPS: `${APP.id}:${APP.key}:${APP.secret}`,
    });
    gw.key = "k1";
  });
  after(h.cleanup);

  test("past its burst a key gets 429 with Retry-After and the JSON error; another key is unaffected", async () => {
    for (let i = 0; i < 3; i++) assert.equal((await h.api(gw, "GET", "/v1/nodes")).status, 200);
    const r = await h.api(gw, "GET", "/v1/nodes");
    const e = h.assertError(r, 429);
    assert.equal(e.code, "api_rate");
    assert.match(e.message, /at most 1 per second/);
    assert.ok(Number(r.headers.get("retry-after")) >= 1);
    assert.equal((await h.api(gw, "GET", "/v1/nodes", undefined, { key: "k2" })).status, 200);
    // Tokens come back at the rate.
    await h.eventually(async () => (await h.api(gw, "GET", "/v1/nodes")).status === 200, { what: "k1 again" });
  });

  test("wrong keys spend their address's tokens: guessing gets 429", async () => {
    const statuses = [];
    for (let i = 0; i < 5; i++) statuses.push((await h.api(gw, "GET", "/v1/nodes", undefined, { key: `guess-${i}` })).status);
    assert.deepEqual(statuses.slice(0, 3), [401, 401, 401]);
    assert.equal(statuses[4], 429);
    assert.equal((await h.api(gw, "GET", "/v1/nodes", undefined, { key: "k2" })).status, 200, "the real key is unaffected");
  });

  test("the Pusher HTTP API limits each app the same way", async () => {
    const sdk = new PusherSdk({ appId: APP.id, key: APP.key, secret: APP.secret, host: "127.0.0.1", port: String(gw.port), useTLS: false });
    let limited;
    for (let i = 0; i < 6 && !limited; i++) {
      try {
        await sdk.trigger("news", "e", {});
      } catch (e) {
        limited = e;
      }
    }
    assert.ok(limited, "a trigger was refused");
    assert.equal(limited.status, 429);
    assert.equal(JSON.parse(limited.body).error.code, "api_rate");
  });
});

describe("API requests without keys are limited per address (PUSHGATE_API_RATE=1, PUSHGATE_API_BURST=2)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_API_RATE: "1", PUSHGATE_API_BURST: "2" });
  });
  after(h.cleanup);

  test("the loopback caller's third request at once gets 429", async () => {
    assert.equal((await h.api(gw, "GET", "/v1/nodes")).status, 200);
    assert.equal((await h.api(gw, "GET", "/v1/nodes")).status, 200);
    h.assertError(await h.api(gw, "GET", "/v1/nodes"), 429);
    assert.equal((await h.api(gw, "GET", "/healthz")).status, 200, "health is not rate-limited");
    assert.equal((await h.api(gw, "GET", "/metrics")).status, 200, "metrics are not rate-limited");
  });
});

describe("pending acked pushes per node (PUSHGATE_MAX_PENDING_ACKS=1)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_MAX_PENDING_ACKS: "1" });
  });
  after(h.cleanup);

  test("a second acked push waits its turn: 503 with Retry-After while one is pending; plain pushes go on; reports stay exact", async () => {
    const silent = await h.connect(gw); // never acks
    const first = await h.push(gw, { to: { socket: silent.id }, event: "e", ack: { timeout_ms: 1500 } });
    assert.equal(first.status, 202);
    assert.equal(await h.metric(gw, "pushgate_pending_acked_pushes"), 1);

    const second = await h.api(gw, "POST", "/v1/push", { to: { all: true }, event: "e", ack: { timeout_ms: 1000 } });
    const e = h.assertError(second, 503);
    assert.equal(e.code, "pending_acks");
    assert.match(e.message, /1 ack-tracked pushes are pending on this node/);
    assert.equal(second.headers.get("retry-after"), "1");
    const batch = await h.api(gw, "POST", "/v1/push/batch", { pushes: [{ to: { all: true }, event: "b", ack: { timeout_ms: 1000 } }] });
    assert.equal(h.assertError(batch, 503).code, "pending_acks");
    assert.equal((await h.push(gw, { to: { all: true }, event: "plain", wait: true })).body.report.delivered, 1);

    // The pending one ends as it should, and frees its place.
    await h.eventually(async () => (await h.api(gw, "GET", `/v1/pushes/${first.body.id}`)).body.state === "final", {
      what: "the first report final",
    });
    const report = (await h.api(gw, "GET", `/v1/pushes/${first.body.id}`)).body.report;
    assert.deepEqual(report, { sockets: 1, delivered: 1, acked: 0, timed_out: 1, failed: 0 });
    assert.equal(await h.metric(gw, "pushgate_pending_acked_pushes"), 0);
    silent.on("e2", (ack) => ack("ok"));
    const third = await h.push(gw, { to: { socket: silent.id }, event: "e2", ack: { timeout_ms: 5000 }, wait: true });
    assert.deepEqual(third.body.report, { sockets: 1, delivered: 1, acked: 1, timed_out: 0, failed: 0 });
    assert.equal(await refusals(gw, "pending_acks"), 2);
  });
});

describe("defaults", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway();
  });
  after(h.cleanup);

  test("every limit's value is exported, and every refusal counter starts at 0", async () => {
    const expected = {
      node_connections: 200000,
      ip_connections: 1000,
      user_connections: 100,
      pending_connections: 10000,
      connect_rate: 50,
      rooms: 1000,
      push_targets: 1000,
      batch_size: 1000,
      api_rate: 5000,
      pending_acks: 10000,
    };
    for (const [limit, value] of Object.entries(expected)) {
      assert.equal(await h.metric(gw, "pushgate_limit", { limit }), value, limit);
      assert.equal(await h.metric(gw, "pushgate_limit_refusals_total", { limit }), 0, limit);
    }
    // 200 sockets connected at once from one address fit the defaults.
    const many = await Promise.all(Array.from({ length: 200 }, () => h.connect(gw, { transports: ["websocket"] })));
    assert.equal(many.length, 200);
  });
});
