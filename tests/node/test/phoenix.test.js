"use strict";
// Phoenix Channels clients against the real gateway binary, checked the way an application
// developer would check them: the real `phoenix` npm client 1.8 over WebSocket and
// long-polling and 1.7 over WebSocket (1.7's LongPoll needs XMLHttpRequest, which Node 20
// lacks), beside socket.io-client, on one node and on two nodes sharing a Redis;
// phoenix.js `Presence` on `presence-*` topics, including after a node is SIGKILLed; raw
// WebSockets for the heartbeat timeout and malformed frames.
const { describe, test, before, beforeEach, after, afterEach } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

const VARIANTS = [
  { name: "phoenix 1.8 over websocket", lib: "1.8", transport: "websocket" },
  { name: "phoenix 1.8 over longpoll", lib: "1.8", transport: "longpoll" },
  { name: "phoenix 1.7 over websocket", lib: "1.7", transport: "websocket" },
];

let seq = 0;
/** A name no other test (nor a long-poll session left over from one) uses. */
const uid = (base) => `${base}-${++seq}-${process.pid}`;

/** The phoenix frames a socket decoded on `topic` with `event`. */
const framesOn = (socket, topic, event) =>
  socket.seen.messages.filter((m) => m.topic === topic && (event === undefined || m.event === event));

const REPORT = (sockets, delivered, acked, timed_out, failed = 0) => ({ sockets, delivered, acked, timed_out, failed });

// ---------------------------------------------------------------- presence, as an app uses it

const byUser = (a, b) => (a.user < b.user ? -1 : a.user > b.user ? 1 : 0);

/**
 * Joins presence topic `topic` on `socket` with phoenix.js `Presence` (of phoenix `lib`),
 * as the README shows: `new Presence(channel)`, the member list rebuilt in `onSync`.
 * Resolves `{channel, view}` once joined: `view.members` is the latest list,
 * `[{user, connections}]` sorted by user (the shape of the API's `members`), and
 * `view.metas` each member's metas.
 */
async function presenceOn(socket, lib, topic) {
  const { Presence } = h.PHOENIX[lib];
  const channel = socket.channel(topic);
  const presence = new Presence(channel);
  const view = { members: [], metas: {} };
  presence.onSync(() => {
    view.members = presence.list((user, { metas }) => ({ user, connections: metas.length })).sort(byUser);
    view.metas = Object.fromEntries(presence.list((user, { metas }) => [user, metas]));
  });
  const joined = await new Promise((resolve) =>
    channel
      .join()
      .receive("ok", () => resolve("ok"))
      .receive("error", (r) => resolve(`error ${JSON.stringify(r)}`))
      .receive("timeout", () => resolve("timeout"))
  );
  assert.equal(joined, "ok", `join ${topic}`);
  return { channel, view };
}

/** `{alice: 2, bob: 1}` as the member list a client and the API show. */
const members = (counts) =>
  Object.entries(counts)
    .map(([user, connections]) => ({ user, connections }))
    .sort(byUser);

/** Waits until `view` lists `expected` (see `members`); fails with the last list seen. */
function shows(view, expected, what, timeout) {
  return h.eventually(
    () => {
      assert.deepEqual(view.members, expected);
      return true;
    },
    { what, timeout, interval: 20 }
  );
}

/** Waits until `GET /v1/rooms/{room}/presence` on `gw` lists `expected`, and its count agrees. */
async function apiShows(gw, room, expected, timeout) {
  await h.eventually(
    async () => {
      const list = await h.api(gw, "GET", `/v1/rooms/${room}/presence`);
      assert.deepEqual(list.body, { room, count: expected.length, members: expected });
      const count = await h.api(gw, "GET", `/v1/rooms/${room}/presence?members=false`);
      assert.deepEqual(count.body, { room, count: expected.length });
      return true;
    },
    { what: `GET /v1/rooms/${room}/presence on ${gw.url}`, timeout }
  );
}

/** A token whose user may join every presence topic. */
const presenceToken = (sub) => h.token({ sub, join: ["presence-*"] });

// ---------------------------------------------------------------- one node, each client

for (const v of VARIANTS) {
  const opts = { transport: v.transport, lib: v.lib };

  describe(v.name, () => {
    let gw;
    before(async () => {
      gw = await h.startGateway({ PUSHGATE_JWT_SECRET: h.SECRET });
    });
    afterEach(h.closeClients);
    after(h.cleanup);

    /** A connected socket of a fresh user (or `claims.sub`) that joined `pushgate`: `{s, direct, id}`. */
    async function member(claims = {}, extra = {}) {
      const s = h.phoenixSocket(gw, { ...opts, token: h.token({ sub: uid("u"), ...claims }), ...extra });
      const j = await h.phoenixJoin(s, "pushgate");
      assert.equal(j.status, "ok", `join pushgate: ${JSON.stringify(j.response)}`);
      return { s, direct: j.channel, id: j.response.socket_id };
    }

    test("a room listed in the token's rooms claim is joined: ok reply, listed by the API, its pushes arrive on its topic", async () => {
      const user = uid("ann");
      const { s, direct, id } = await member({ sub: user, rooms: ["team:1"] });
      const j = await h.phoenixJoin(s, "team:1");
      assert.deepEqual([j.status, j.response], ["ok", {}], "join reply");
      const room = await h.api(gw, "GET", "/v1/rooms/team:1");
      assert.equal(room.status, 200, room.text);
      assert.deepEqual(room.body, { room: "team:1", count: 1, sockets: [id] });
      const info = await h.api(gw, "GET", `/v1/sockets/${id}`);
      assert.equal(info.status, 200, info.text);
      assert.deepEqual(info.body.rooms, ["team:1"], info.text);
      const got = h.phoenixRecord(j.channel, "news");
      const r = await h.push(gw, { to: { room: "team:1" }, event: "news", data: { n: 1 }, wait: true });
      assert.deepEqual(r.body.report, REPORT(1, 1, 0, 0));
      await got.waitCount(1);
      assert.deepEqual(got.items[0].payload, { n: 1 });
      assert.equal(got.items[0].ref, null, "a push without ack has a null ref");
      await h.phoenixSentinel(gw, direct, id);
      assert.equal(framesOn(s, "team:1", "news").length, 1, "exactly one room frame");
      assert.equal(framesOn(s, "pushgate", "news").length, 0, "a room push does not arrive on the pushgate topic");
    });

    test("a room matching one of the token's join globs is joined; one matching none is refused", async () => {
      const { s } = await member({ join: ["chat:*", "dm:??"] });
      const lobby = await h.phoenixJoin(s, "chat:lobby");
      const dm = await h.phoenixJoin(s, "dm:ab");
      const dmLong = await h.phoenixJoin(s, "dm:abc");
      const chatter = await h.phoenixJoin(s, "chatter");
      assert.deepEqual([lobby.status, lobby.response], ["ok", {}], "chat:lobby matches chat:*");
      assert.deepEqual([dm.status, dm.response], ["ok", {}], "dm:ab matches dm:??");
      assert.deepEqual([dmLong.status, dmLong.response], ["error", { reason: "unauthorized" }], "dm:abc does not match dm:??");
      assert.deepEqual([chatter.status, chatter.response], ["error", { reason: "unauthorized" }], "chatter does not match chat:*");
      const got = h.phoenixRecord(lobby.channel, "said");
      await h.push(gw, { to: { room: "chat:lobby" }, event: "said", data: { text: "hi" } });
      await got.waitCount(1);
      assert.deepEqual(got.payloads(), [{ text: "hi" }]);
    });

    test("a join the token does not allow is answered {reason: unauthorized}, the socket is not in the room, the connection stays usable", async () => {
      const { s, direct, id } = await member({ rooms: ["team:1"], join: ["chat:*"] });
      const j = await h.phoenixJoin(s, "secret");
      assert.deepEqual([j.status, j.response], ["error", { reason: "unauthorized" }]);
      const room = await h.api(gw, "GET", "/v1/rooms/secret");
      assert.deepEqual(room.body, { room: "secret", count: 0, sockets: [] }, room.text);
      const r = await h.push(gw, { to: { room: "secret" }, event: "leak", wait: true });
      assert.equal(r.body.report.sockets, 0, "a refused join does not make the socket a member");
      await h.phoenixSentinel(gw, direct, id);
      assert.equal(framesOn(s, "secret", "leak").length, 0, "no frame on the refused topic");
      assert.ok(s.isConnected(), "a refused join does not close the connection");
      const ok = await h.phoenixJoin(s, "team:1");
      assert.equal(ok.status, "ok", "a later allowed join on the same connection succeeds");
    });

    test("after leaving a room the client gets no more of its pushes and GET /v1/rooms/{room} no longer lists it; joining again works", async () => {
      const { s, direct, id } = await member({ join: ["chat:*"] });
      const j = await h.phoenixJoin(s, "chat:leave");
      assert.equal(j.status, "ok");
      const got = h.phoenixRecord(j.channel, "msg");
      await h.push(gw, { to: { room: "chat:leave" }, event: "msg", data: { n: 1 } });
      await got.waitCount(1);
      assert.equal(await h.phoenixLeave(j.channel), "ok", "the server's reply to phx_leave");
      const room = await h.api(gw, "GET", "/v1/rooms/chat:leave");
      assert.deepEqual(room.body, { room: "chat:leave", count: 0, sockets: [] }, `after leave: ${room.text}`);
      const info = await h.api(gw, "GET", `/v1/sockets/${id}`);
      assert.deepEqual(info.body.rooms, [], info.text);
      const r = await h.push(gw, { to: { room: "chat:leave" }, event: "msg", data: { n: 2 }, wait: true });
      assert.deepEqual(r.body.report, REPORT(0, 0, 0, 0), "the room push after leave targets nobody");
      await h.phoenixSentinel(gw, direct, id);
      assert.deepEqual(
        framesOn(s, "chat:leave", "msg").map((m) => m.payload),
        [{ n: 1 }],
        "no room frame reached the client after leave"
      );
      const again = await h.phoenixJoin(s, "chat:leave");
      assert.equal(again.status, "ok");
      const got2 = h.phoenixRecord(again.channel, "msg");
      await h.push(gw, { to: { room: "chat:leave" }, event: "msg", data: { n: 3 } });
      await got2.waitCount(1);
      assert.deepEqual(got2.payloads(), [{ n: 3 }]);
    });

    for (const [what, params] of [
      ["a missing token", {}],
      ["a token that is not a JWT", { token: "not-a-jwt" }],
      ["a token signed with another secret", { token: h.token({ sub: "mallory", secret: "other-secret" }) }],
      ["an expired token", { token: h.token({ sub: "late", exp: Math.floor(Date.now() / 1000) - 60 }) }],
    ]) {
      test(`${what} refuses the connection: socket.onError fires on each attempt, the server sends nothing, no join succeeds`, async () => {
        const before = (await h.metric(gw, "pushgate_connect_errors_total", { frontend: "phoenix" })) ?? 0;
        const s = h.phoenixSocket(gw, { ...opts, params });
        let joined = null;
        h.phoenixJoin(s, "pushgate", { timeout: 3000 }).then((j) => {
          if (j.status === "ok") joined = j;
        });
        await h.eventually(() => s.seen.errors.length >= 2, { what: "socket.onError on two refused attempts" });
        assert.equal(joined, null, `a join succeeded: ${JSON.stringify(joined && joined.response)}`);
        assert.equal(s.isConnected(), false, "the socket is not connected");
        assert.equal(s.seen.opens, 0, "no attempt was accepted");
        assert.equal(s.seen.messages.length, 0, `the server sent nothing: ${JSON.stringify(s.seen.messages)}`);
        const after = await h.metric(gw, "pushgate_connect_errors_total", { frontend: "phoenix" });
        assert.ok(after >= before + 2, `pushgate_connect_errors_total{frontend="phoenix"}: ${before} -> ${after}`);
      });
    }

    if (v.lib === "1.8") {
      test("phoenix 1.8's authToken option authenticates the connection as the token's user", async () => {
        const user = uid("fay");
        const s = h.phoenixSocket(gw, { ...opts, authToken: h.phoenixAuthToken({ sub: user, rooms: ["auth:1"] }) });
        const j = await h.phoenixJoin(s, "pushgate");
        assert.equal(j.status, "ok", JSON.stringify(j.response));
        const info = await h.api(gw, "GET", `/v1/sockets/${j.response.socket_id}`);
        assert.equal(info.body.user, user, info.text);
        assert.equal(info.body.transport, v.transport, info.text);
        const room = await h.phoenixJoin(s, "auth:1");
        assert.equal(room.status, "ok", "the token's rooms claim applies");
      });

      test("phoenix 1.8's authToken with a bad token is refused like a bad params token", async () => {
        const s = h.phoenixSocket(gw, { ...opts, authToken: h.phoenixAuthToken({ sub: "x", secret: "other-secret" }) });
        await h.eventually(() => s.seen.errors.length >= 2, { what: "socket.onError on two refused attempts" });
        assert.equal(s.isConnected(), false);
        assert.equal(s.seen.opens, 0, "no attempt was accepted");
      });
    }

    test("the pushgate join reply carries socket_id, which GET /v1/sockets/{id} shows as a phoenix socket of the token's user", async () => {
      const user = uid("bea");
      const { id } = await member({ sub: user });
      assert.equal(typeof id, "string");
      const info = await h.api(gw, "GET", `/v1/sockets/${id}`);
      assert.equal(info.status, 200, info.text);
      assert.equal(info.body.id, id);
      assert.equal(info.body.frontend, "phoenix");
      assert.equal(info.body.transport, v.transport);
      assert.equal(info.body.user, user);
      const u = await h.api(gw, "GET", `/v1/users/${user}`);
      assert.deepEqual(u.body.sockets.map((x) => x.id), [id], u.text);
    });

    test("the pushgate topic gets pushes to all, to the user, to several users and to the socket; except leaves a socket out", async () => {
      const user = uid("cat");
      const a = await member({ sub: user });
      const b = await member({ sub: user }); // a second socket of the same user
      const other = await member({});
      const got = [a, b, other].map((m) => h.phoenixRecord(m.direct, "n"));
      await h.push(gw, { to: { all: true }, event: "n", data: { to: "all" } });
      let r = await h.push(gw, { to: { user }, event: "n", data: { to: "user" }, wait: true });
      assert.deepEqual(r.body.report, REPORT(2, 2, 0, 0), "user push: both sockets of the user");
      r = await h.push(gw, { to: { users: [user, "nobody-" + user] }, event: "n", data: { to: "users" }, wait: true });
      assert.deepEqual(r.body.report, REPORT(2, 2, 0, 0), "users push");
      r = await h.push(gw, { to: { socket: a.id }, event: "n", data: { to: "socket" }, wait: true });
      assert.deepEqual(r.body.report, REPORT(1, 1, 0, 0), "socket push");
      r = await h.push(gw, { to: { user }, event: "n", data: { to: "except" }, except: [a.id], wait: true });
      assert.deepEqual(r.body.report, REPORT(1, 1, 0, 0), "user push except socket a");
      await h.push(gw, { to: { all: true }, event: "n", data: { to: "all-except" }, except: [a.id, other.id] });
      for (const m of [a, b, other]) await h.phoenixSentinel(gw, m.direct, m.id);
      assert.deepEqual(got[0].payloads(), [{ to: "all" }, { to: "user" }, { to: "users" }, { to: "socket" }]);
      assert.deepEqual(got[1].payloads(), [{ to: "all" }, { to: "user" }, { to: "users" }, { to: "except" }, { to: "all-except" }]);
      assert.deepEqual(got[2].payloads(), [{ to: "all" }]);
      for (const g of got) assert.ok(g.refs().every((x) => x === null), "pushes without ack have a null ref");
    });

    test("until a socket joined pushgate, pushes to its user and to it do not count it", async () => {
      const user = uid("dan");
      const s = h.phoenixSocket(gw, { ...opts, token: h.token({ sub: user }) });
      await h.phoenixConnected(s);
      // The socket exists (its user lists it) but has not joined `pushgate`.
      const listed = await h.eventually(
        async () => {
          const u = await h.api(gw, "GET", `/v1/users/${user}`);
          return u.body.sockets && u.body.sockets.length === 1 && u.body.sockets[0];
        },
        { what: "the socket is registered" }
      );
      let r = await h.push(gw, { to: { user }, event: "early", wait: true });
      assert.deepEqual(r.body.report, REPORT(0, 0, 0, 0), "user push before joining pushgate");
      r = await h.push(gw, { to: { socket: listed.id }, event: "early", wait: true });
      assert.deepEqual(r.body.report, REPORT(0, 0, 0, 0), "socket push before joining pushgate");
      const j = await h.phoenixJoin(s, "pushgate");
      assert.equal(j.response.socket_id, listed.id, "the join reply names the same socket");
      const got = h.phoenixRecord(j.channel, "late");
      r = await h.push(gw, { to: { user }, event: "late", wait: true });
      assert.deepEqual(r.body.report, REPORT(1, 1, 0, 0), "user push after joining pushgate");
      await got.waitCount(1);
      await h.phoenixSentinel(gw, j.channel, listed.id);
      assert.equal(framesOn(s, "pushgate", "early").length, 0, "nothing pushed before the join arrived later");
    });

    test("push data that is not an object arrives as {value: data}; absent data as {}; objects as they are; $binary untouched", async () => {
      const { direct, id } = await member({});
      const got = h.phoenixRecord(direct, "d");
      const cases = [
        [{ a: 1, nested: { b: [1, 2] } }, { a: 1, nested: { b: [1, 2] } }],
        [[1, "two", null], { value: [1, "two", null] }],
        ["text", { value: "text" }],
        [42, { value: 42 }],
        [0, { value: 0 }],
        [true, { value: true }],
        [false, { value: false }],
        [null, { value: null }],
        [{}, {}],
        [undefined, {}],
        // Only Socket.IO turns {$binary} into an attachment; Phoenix gets the JSON.
        [{ file: { $binary: "aGVsbG8=" } }, { file: { $binary: "aGVsbG8=" } }],
      ];
      for (const [data] of cases) {
        const body = { to: { socket: id }, event: "d", wait: true };
        if (data !== undefined) body.data = data;
        const r = await h.push(gw, body);
        assert.equal(r.body.report.delivered, 1, JSON.stringify(body));
      }
      await got.waitCount(cases.length);
      assert.deepEqual(got.payloads(), cases.map(([, expected]) => expected));
    });

    test("an ack-tracked push carries a string ref; channel.push(\"pushgate:ack\", {ref}) makes the report say acked: 1", async () => {
      const user = uid("eve");
      const { direct } = await member({ sub: user });
      const replies = [];
      const got = h.phoenixRecord(direct, "ask");
      direct.on("ask", (payload, ref) => {
        h.phoenixPush(direct, "pushgate:ack", { ref }).then((x) => replies.push(x));
      });
      const r = await h.push(gw, { to: { user }, event: "ask", data: { q: 1 }, ack: { timeout_ms: 5000 }, wait: true });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.body.report, REPORT(1, 1, 1, 0));
      assert.equal(got.items.length, 1);
      assert.deepEqual(got.items[0].payload, { q: 1 });
      assert.equal(typeof got.items[0].ref, "string", `ref: ${JSON.stringify(got.items[0].ref)}`);
      assert.ok(got.items[0].ref.length > 0);
      await h.eventually(() => replies.length === 1, { what: "the ack's reply" });
      assert.equal(replies[0].status, "ok", `ack reply: ${JSON.stringify(replies[0])}`);
      const final = await h.api(gw, "GET", `/v1/pushes/${r.body.id}`);
      assert.deepEqual([final.body.state, final.body.report], ["final", REPORT(1, 1, 1, 0)], final.text);
    });

    test("a client that does not ack an ack-tracked push counts as timed_out", async () => {
      const user = uid("fox");
      const { direct } = await member({ sub: user });
      const got = h.phoenixRecord(direct, "ask");
      const r = await h.push(gw, { to: { user }, event: "ask", ack: { timeout_ms: 700 }, wait: true });
      assert.deepEqual(r.body.report, REPORT(1, 1, 0, 1));
      await got.waitCount(1);
      assert.equal(typeof got.items[0].ref, "string", "the push still carried a ref");
    });

    test("in a room, the acking member counts acked and the silent one timed_out; acks also work on the room's topic", async () => {
      const room = "acks:" + uid("r");
      const acker = await member({ rooms: [room] });
      const silent = await member({ rooms: [room] });
      const a = await h.phoenixJoin(acker.s, room);
      const b = await h.phoenixJoin(silent.s, room);
      assert.equal(a.status, "ok");
      assert.equal(b.status, "ok");
      a.channel.on("ask", (p, ref) => a.channel.push("pushgate:ack", { ref }));
      const heard = h.phoenixRecord(b.channel, "ask");
      const r = await h.push(gw, { to: { room }, event: "ask", ack: { timeout_ms: 1000 }, wait: true });
      assert.deepEqual(r.body.report, REPORT(2, 2, 1, 1));
      await heard.waitCount(1);
    });

    test("an unknown event or an ack without ref pushed by the client is answered with an error and the channel keeps working", async () => {
      const { direct, id } = await member({});
      const reply = await h.phoenixPush(direct, "shout", { loud: true });
      assert.deepEqual(reply, { status: "error", response: { reason: "unknown event" } });
      const bad = await h.phoenixPush(direct, "pushgate:ack", { nope: 1 });
      assert.equal(bad.status, "error", `an ack without ref: ${JSON.stringify(bad)}`);
      const got = h.phoenixRecord(direct, "after");
      await h.push(gw, { to: { socket: id }, event: "after" });
      await got.waitCount(1);
      assert.equal(direct.state, "joined");
    });

    test("a room push reaches a Phoenix member and a Socket.IO member of the room alike, and both kinds of ack count in one report", async () => {
      const room = "mixed:" + uid("r");
      const t = h.token({ sub: uid("mix"), rooms: [room] });
      const px = await member({ rooms: [room] });
      const j = await h.phoenixJoin(px.s, room);
      assert.equal(j.status, "ok");
      const sio = await h.connect(gw, { auth: { token: t }, transports: ["websocket"] });
      const listed = await h.api(gw, "GET", `/v1/rooms/${room}`);
      assert.deepEqual([...listed.body.sockets].sort(), [px.id, sio.id].sort(), listed.text);
      const pGot = h.phoenixRecord(j.channel, "alert");
      const sGot = h.record(sio, "alert");
      let r = await h.push(gw, { to: { room }, event: "alert", data: { level: 2 }, wait: true });
      assert.deepEqual(r.body.report, REPORT(2, 2, 0, 0));
      r = await h.push(gw, { to: { room }, event: "alert", data: "plain", wait: true });
      await pGot.waitCount(2);
      await sGot.waitCount(2);
      assert.deepEqual(pGot.payloads(), [{ level: 2 }, { value: "plain" }]);
      assert.deepEqual(sGot.data(), [{ level: 2 }, "plain"]);
      j.channel.on("ask", (p, ref) => j.channel.push("pushgate:ack", { ref }));
      sio.on("ask", (...args) => args[args.length - 1]("ok")); // no data: the ack callback is the only argument
      r = await h.push(gw, { to: { room }, event: "ask", ack: { timeout_ms: 5000 }, wait: true });
      assert.deepEqual(r.body.report, REPORT(2, 2, 2, 0));
    });

    test("pushgate_connections{frontend=\"phoenix\"} counts open Phoenix connections, down again when a client goes away", async () => {
      // A gateway of its own, so no connection of another test is counted; a short
      // timeout, so a long-poll client that stops polling is closed within the test.
      const own = await h.startGateway({ PUSHGATE_JWT_SECRET: h.SECRET, PUSHGATE_PHOENIX_TIMEOUT_MS: "2000" });
      const gauge = () => h.metric(own, "pushgate_connections", { frontend: "phoenix" });
      const first = h.phoenixSocket(own, { ...opts, token: h.token({ sub: uid("m") }), heartbeatIntervalMs: 500 });
      const second = h.phoenixSocket(own, { ...opts, token: h.token({ sub: uid("m") }), heartbeatIntervalMs: 500 });
      const j1 = await h.phoenixJoin(first, "pushgate");
      await h.phoenixJoin(second, "pushgate");
      await h.eventually(async () => (await gauge()) === 2, { what: "gauge = 2" });
      assert.equal((await h.metric(own, "pushgate_connections", { frontend: "socketio" })) ?? 0, 0, "no Socket.IO connection counted");
      assert.ok((await h.metric(own, "pushgate_connects_total", { frontend: "phoenix" })) >= 2);
      await h.push(own, { to: { all: true }, event: "m", wait: true });
      assert.ok((await h.metric(own, "pushgate_deliveries_total", { frontend: "phoenix" })) >= 2, "deliveries counted");
      // The client goes away: a WebSocket closes; a long-poll client aborts its held
      // poll and stops polling, and the server closes it after the timeout.
      first.disconnect();
      await h.eventually(async () => (await gauge()) === 1, { what: "gauge back to 1" });
      assert.equal((await h.api(own, "GET", `/v1/sockets/${j1.response.socket_id}`)).status, 404, "the socket is gone");
      assert.ok((await h.metric(own, "pushgate_disconnects_total", { frontend: "phoenix" })) >= 1);
      await own.stop();
    });
  });

  describe(`presence with ${v.name}`, () => {
    // A short timeout, so a long-poll member that stops polling leaves within a test;
    // the WebSocket clients beat well inside it.
    const TIMEOUT_MS = 2000;
    let gw;
    before(async () => {
      gw = await h.startGateway({ PUSHGATE_JWT_SECRET: h.SECRET, PUSHGATE_PHOENIX_TIMEOUT_MS: String(TIMEOUT_MS) });
    });
    afterEach(h.closeClients);
    after(h.cleanup);

    const socketOf = (user) => h.phoenixSocket(gw, { ...opts, token: presenceToken(user), heartbeatIntervalMs: 500 });

    test("a user with two connections is one member with two metas; every member's list and GET /v1/rooms/{room}/presence agree", async () => {
      const room = "presence-" + uid("two");
      const [alice, bob] = [uid("alice"), uid("bob")];
      const a1 = await presenceOn(socketOf(alice), v.lib, room);
      const a2 = await presenceOn(socketOf(alice), v.lib, room);
      const b = await presenceOn(socketOf(bob), v.lib, room);
      const expected = members({ [alice]: 2, [bob]: 1 });
      for (const [who, x] of [["alice's first", a1], ["alice's second", a2], ["bob's", b]]) {
        await shows(x.view, expected, `${who} list`);
      }
      const refs = a1.view.metas[alice].map((m) => m.phx_ref);
      assert.equal(new Set(refs).size, 2, `one meta per connection, each with its own phx_ref: ${JSON.stringify(refs)}`);
      await apiShows(gw, room, expected);
    });

    test("joins and leaves of other members appear in the list: a channel joined and left, a connection opened and closed", async () => {
      const room = "presence-" + uid("moves");
      const [carol, dave, erin] = [uid("carol"), uid("dave"), uid("erin")];
      const watcher = await presenceOn(socketOf(carol), v.lib, room);
      await shows(watcher.view, members({ [carol]: 1 }), "carol sees herself");
      const d = await presenceOn(socketOf(dave), v.lib, room);
      await shows(watcher.view, members({ [carol]: 1, [dave]: 1 }), "dave joined");
      assert.equal(await h.phoenixLeave(d.channel), "ok", "the server's reply to dave's phx_leave");
      await shows(watcher.view, members({ [carol]: 1 }), "dave left the channel");
      const erinSocket = socketOf(erin);
      await presenceOn(erinSocket, v.lib, room);
      await shows(watcher.view, members({ [carol]: 1, [erin]: 1 }), "erin joined");
      await apiShows(gw, room, members({ [carol]: 1, [erin]: 1 }));
      // Over long-poll the server learns of it when the client stops polling (the timeout).
      erinSocket.disconnect();
      await shows(watcher.view, members({ [carol]: 1 }), "erin's connection closed", TIMEOUT_MS + 6000);
      await apiShows(gw, room, members({ [carol]: 1 }));
    });

    test("a Socket.IO connection in the room (token rooms claim) counts as a member and appears in Phoenix clients' lists", async () => {
      const room = "presence-" + uid("mixed");
      const [fay, gus] = [uid("fay"), uid("gus")];
      const watcher = await presenceOn(socketOf(fay), v.lib, room);
      const sio = await h.connect(gw, { auth: { token: h.token({ sub: gus, rooms: [room] }) }, transports: ["websocket"] });
      const both = members({ [fay]: 1, [gus]: 1 });
      await shows(watcher.view, both, "the Socket.IO member appears");
      await apiShows(gw, room, both);
      sio.close();
      await shows(watcher.view, members({ [fay]: 1 }), "the Socket.IO member left");
      await apiShows(gw, room, members({ [fay]: 1 }));
    });
  });
}

// ---------------------------------------------------------------- one node, no JWT secret

describe("phoenix without a JWT secret (anonymous connections)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway();
  });
  afterEach(h.closeClients);
  after(h.cleanup);

  for (const transport of ["websocket", "longpoll"]) {
    test(`an anonymous ${transport} socket joins pushgate and gets pushes to all, but may join no room`, async () => {
      const s = h.phoenixSocket(gw, { transport });
      const j = await h.phoenixJoin(s, "pushgate");
      assert.equal(j.status, "ok", JSON.stringify(j.response));
      const room = await h.phoenixJoin(s, "lobby");
      assert.deepEqual([room.status, room.response], ["error", { reason: "unauthorized" }]);
      const got = h.phoenixRecord(j.channel, "hello");
      await h.push(gw, { to: { all: true }, event: "hello", data: { x: 1 } });
      await got.waitCount(1);
      assert.deepEqual(got.payloads(), [{ x: 1 }]);
    });
  }
});

// ---------------------------------------------------------------- two nodes, one Redis

describe("phoenix and socket.io clients on two nodes sharing a Redis", () => {
  let nodes;
  before(async () => {
    ({ nodes } = await h.startCluster(["px1", "px2"]));
  });
  afterEach(h.closeClients);
  after(h.cleanupCluster);

  /** A phoenix socket of a fresh user on node `i` that joined pushgate and `room`. */
  async function phxMember(i, room, opts = {}) {
    const user = uid("cl");
    const s = h.phoenixSocket(nodes[i], { ...opts, token: h.token({ sub: user, rooms: [room] }) });
    const d = await h.phoenixJoin(s, "pushgate");
    assert.equal(d.status, "ok", JSON.stringify(d.response));
    const r = await h.phoenixJoin(s, room);
    assert.equal(r.status, "ok", JSON.stringify(r.response));
    return { s, user, id: d.response.socket_id, direct: d.channel, room: r.channel };
  }

  test("a room push accepted by either node reaches Phoenix (1.8 websocket and longpoll, 1.7) and Socket.IO members on both", async () => {
    const room = "ops:" + uid("r");
    const px = [
      await phxMember(0, room, { transport: "websocket" }),
      await phxMember(1, room, { transport: "longpoll" }),
      await phxMember(1, room, { transport: "websocket", lib: "1.7" }),
    ];
    const t = h.token({ sub: uid("sio"), rooms: [room] });
    const sios = [
      await h.connect(nodes[0], { auth: { token: t }, transports: ["websocket"] }),
      await h.connect(nodes[1], { auth: { token: t }, transports: ["websocket"] }),
    ];
    const ids = [...px.map((m) => m.id), ...sios.map((s) => s.id)].sort();
    for (const n of nodes) {
      await h.eventually(
        async () => JSON.stringify([...(await h.api(n, "GET", `/v1/rooms/${room}`)).body.sockets].sort()) === JSON.stringify(ids),
        { what: `node ${n.port} lists all five members` }
      );
    }
    const pGot = px.map((m) => h.phoenixRecord(m.room, "alert"));
    const sGot = sios.map((s) => h.record(s, "alert"));
    for (const [i, n] of nodes.entries()) {
      const r = await h.push(n, { to: { room }, event: "alert", data: { from: i }, wait: true });
      assert.deepEqual(r.body.report, REPORT(5, 5, 0, 0), `push via node ${i}`);
    }
    for (const g of [...pGot, ...sGot]) await g.waitCount(2);
    for (const g of pGot) assert.deepEqual(g.payloads(), [{ from: 0 }, { from: 1 }]);
    for (const g of sGot) assert.deepEqual(g.data(), [{ from: 0 }, { from: 1 }]);
  });

  test("a socket push and a user push accepted by one node reach a Phoenix socket on the other; its ack counts there", async () => {
    const m = await phxMember(1, "x:" + uid("r"));
    const info = await h.eventually(
      async () => {
        const r = await h.api(nodes[0], "GET", `/v1/sockets/${m.id}`);
        return r.status === 200 && r.body;
      },
      { what: "node 0 sees the socket on node 1" }
    );
    assert.equal(info.frontend, "phoenix");
    assert.equal(info.node, "px2");
    const got = h.phoenixRecord(m.direct, "hi");
    let r = await h.push(nodes[0], { to: { socket: m.id }, event: "hi", data: { k: "socket" }, wait: true });
    assert.deepEqual(r.body.report, REPORT(1, 1, 0, 0));
    r = await h.push(nodes[0], { to: { user: m.user }, event: "hi", data: { k: "user" }, wait: true });
    assert.deepEqual(r.body.report, REPORT(1, 1, 0, 0));
    await got.waitCount(2);
    assert.deepEqual(got.payloads(), [{ k: "socket" }, { k: "user" }]);
    m.direct.on("ask", (p, ref) => m.direct.push("pushgate:ack", { ref }));
    r = await h.push(nodes[0], { to: { user: m.user }, event: "ask", ack: { timeout_ms: 5000 }, wait: true });
    assert.deepEqual(r.body.report, REPORT(1, 1, 1, 0), "ack from a phoenix client on the other node");
  });

  test("a Phoenix leave on one node is seen by GET /v1/rooms/{room} on the other, and that node's room pushes stop reaching it", async () => {
    const room = "lv:" + uid("r");
    const m = await phxMember(1, room);
    await h.eventually(async () => (await h.api(nodes[0], "GET", `/v1/rooms/${room}`)).body.count === 1, {
      what: "node 0 lists the member",
    });
    assert.equal(await h.phoenixLeave(m.room), "ok", "the server's reply to phx_leave");
    await h.eventually(async () => (await h.api(nodes[0], "GET", `/v1/rooms/${room}`)).body.count === 0, {
      what: "node 0 no longer lists the member",
    });
    const r = await h.push(nodes[0], { to: { room }, event: "gone", wait: true });
    assert.equal(r.body.report.sockets, 0, JSON.stringify(r.body));
    await h.phoenixSentinel(nodes[0], m.direct, m.id);
    assert.equal(framesOn(m.s, room, "gone").length, 0);
  });

  test("the presence list is shared by both nodes: members on either node appear in every client's list, and either node's API agrees", async () => {
    const room = "presence-" + uid("shared");
    const [alice, bob, sam] = [uid("alice"), uid("bob"), uid("sam")];
    const on = (i, user, transport, lib) =>
      presenceOn(h.phoenixSocket(nodes[i], { transport, lib, token: presenceToken(user) }), lib, room);
    const views = [
      await on(0, alice, "websocket", "1.8"),
      await on(1, alice, "longpoll", "1.8"),
      await on(1, bob, "websocket", "1.7"),
    ];
    const sio = await h.connect(nodes[0], { auth: { token: h.token({ sub: sam, rooms: [room] }) }, transports: ["websocket"] });
    let expected = members({ [alice]: 2, [bob]: 1, [sam]: 1 });
    for (const [i, x] of views.entries()) await shows(x.view, expected, `client ${i}'s list`);
    for (const n of nodes) await apiShows(n, room, expected);

    assert.equal(await h.phoenixLeave(views[2].channel), "ok", "bob leaves the channel on node 1");
    sio.close();
    expected = members({ [alice]: 2 });
    for (const [i, x] of views.slice(0, 2).entries()) await shows(x.view, expected, `client ${i}'s list after bob and sam left`);
    for (const n of nodes) await apiShows(n, room, expected);
  });
});

describe("a node SIGKILLed in a cluster of two (PUSHGATE_REGISTRY_TTL_MS=3000)", () => {
  const TTL_MS = 3000;
  // Each test kills node k2, so each starts a pair of its own.
  let nodes;
  beforeEach(async () => {
    ({ nodes } = await h.startCluster(["k1", "k2"], { PUSHGATE_REGISTRY_TTL_MS: String(TTL_MS) }));
  });
  afterEach(h.cleanupCluster);

  /** SIGKILLs node k2; resolves the milliseconds left of the registry TTL, counted from the kill. */
  async function killSecondNode() {
    const killedAt = Date.now();
    await nodes[1].stop("SIGKILL");
    return () => Math.max(1, TTL_MS - (Date.now() - killedAt));
  }

  test("its presence members leave the other node's clients' lists (phoenix 1.8 websocket and longpoll, 1.7) and GET /v1/rooms/{room}/presence within the TTL", async () => {
    const room = "presence-" + uid("kill");
    const [alice, bob, carol, dan, sam] = [uid("alice"), uid("bob"), uid("carol"), uid("dan"), uid("sam")];
    const on = (i, user, transport, lib) =>
      presenceOn(h.phoenixSocket(nodes[i], { transport, lib, token: presenceToken(user) }), lib, room);
    // Node k1 survives: its clients watch.
    const watchers = [
      await on(0, alice, "websocket", "1.8"),
      await on(0, carol, "longpoll", "1.8"),
      await on(0, dan, "websocket", "1.7"),
    ];
    // Node k2 will die: a second connection of alice, bob, and a Socket.IO member.
    await on(1, alice, "websocket", "1.8");
    await on(1, bob, "longpoll", "1.8");
    await h.connect(nodes[1], { auth: { token: h.token({ sub: sam, rooms: [room] }) }, transports: ["websocket"] });
    const before = members({ [alice]: 2, [bob]: 1, [carol]: 1, [dan]: 1, [sam]: 1 });
    for (const [i, w] of watchers.entries()) await shows(w.view, before, `watcher ${i} before the kill`);
    await apiShows(nodes[0], room, before);

    const left = await killSecondNode();
    const after = members({ [alice]: 1, [carol]: 1, [dan]: 1 });
    for (const [i, w] of watchers.entries()) {
      await shows(w.view, after, `watcher ${i}'s list without the killed node's members, within the TTL`, left());
    }
    await apiShows(nodes[0], room, after, left());
  });

  test("its Phoenix members (not a presence room) leave GET /v1/rooms/{room} and /v1/users/{uid} on the other node within the TTL", async () => {
    const room = "team:" + uid("kill");
    const [pat, quin] = [uid("pat"), uid("quin")];
    const joined = async (i, user, transport) => {
      const s = h.phoenixSocket(nodes[i], { transport, token: h.token({ sub: user, rooms: [room] }) });
      const d = await h.phoenixJoin(s, "pushgate");
      assert.equal(d.status, "ok");
      assert.equal((await h.phoenixJoin(s, room)).status, "ok");
      return d.response.socket_id;
    };
    const survivor = await joined(0, pat, "websocket");
    const gone = [await joined(1, pat, "websocket"), await joined(1, pat, "longpoll"), await joined(1, quin, "websocket")];
    const sockets = async (path) => (await h.api(nodes[0], "GET", path)).body.sockets;
    const ids = (list) => list.map((s) => (typeof s === "string" ? s : s.id)).sort();
    await h.eventually(async () => ids(await sockets(`/v1/rooms/${room}`)).length === 4, { what: "node k1 lists all four members" });
    assert.deepEqual(ids(await sockets(`/v1/users/${pat}`)), [survivor, gone[0], gone[1]].sort());

    const left = await killSecondNode();
    await h.eventually(
      async () => {
        assert.deepEqual(ids(await sockets(`/v1/rooms/${room}`)), [survivor]);
        assert.deepEqual(ids(await sockets(`/v1/users/${pat}`)), [survivor]);
        assert.deepEqual(await sockets(`/v1/users/${quin}`), []);
        return true;
      },
      { timeout: left(), what: "the killed node's sockets gone from node k1's answers within the TTL" }
    );
    for (const id of gone) assert.equal((await h.api(nodes[0], "GET", `/v1/sockets/${id}`)).status, 404, id);
    const r = await h.push(nodes[0], { to: { room }, event: "after", wait: true });
    assert.deepEqual(r.body.report, REPORT(1, 1, 0, 0), "a room push reaches the survivor only");
  });
});

// ---------------------------------------------------------------- protocol edges

describe("phoenix protocol edges (PUSHGATE_PHOENIX_TIMEOUT_MS=1500, PUSHGATE_MAX_PAYLOAD=2000)", () => {
  const TIMEOUT = 1500;
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_JWT_SECRET: h.SECRET,
      PUSHGATE_PHOENIX_TIMEOUT_MS: String(TIMEOUT),
      PUSHGATE_MAX_PAYLOAD: "2000",
    });
  });
  afterEach(h.closeClients);
  after(h.cleanup);

  const tok = (claims = {}) => h.token({ sub: uid("raw"), ...claims });

  /** A raw connection that joined pushgate: resolves `{r, id}`. */
  async function rawMember(claims) {
    const r = await h.rawPhoenix(gw, { token: tok(claims) });
    r.send(["1", "1", "pushgate", "phx_join", {}]);
    const reply = await r.reply("1");
    assert.deepEqual(reply.slice(0, 4), ["1", "1", "pushgate", "phx_reply"]);
    assert.equal(reply[4].status, "ok", JSON.stringify(reply));
    return { r, id: reply[4].response.socket_id };
  }

  /** A well-behaved phoenix.js 1.8 client (heartbeat every 300 ms) that joined pushgate. */
  async function goodClient(transport = "websocket") {
    const s = h.phoenixSocket(gw, { transport, token: tok(), heartbeatIntervalMs: 300 });
    const j = await h.phoenixJoin(s, "pushgate");
    assert.equal(j.status, "ok");
    return { s, direct: j.channel, id: j.response.socket_id, got: h.phoenixRecord(j.channel, "still") };
  }

  /**
   * The server's clock: `n` silent raw clients, each opened after the previous one was
   * closed for silence (1011). Once it resolves, more than `n` timeouts have passed on
   * the server for every connection opened before the call.
   */
  async function silentClientsClosed(n) {
    for (let i = 0; i < n; i++) {
      const r = await h.rawPhoenix(gw, { token: tok() });
      const closed = await h.within(TIMEOUT + 5000, r.closed, `silent client ${i + 1} closed by the server`);
      assert.equal(closed.code, 1011, `silent client ${i + 1}: close ${closed.code}`);
    }
  }

  test("a heartbeat on topic phoenix is answered ok with the same ref", async () => {
    const r = await h.rawPhoenix(gw, { token: tok() });
    r.send([null, "7", "phoenix", "heartbeat", {}]);
    assert.deepEqual(await r.next(), [null, "7", "phoenix", "phx_reply", { status: "ok", response: {} }]);
  });

  test("a client that joined and then went silent is closed with 1011 (phoenix.js reconnects), its socket is gone, counted as ping_timeout", async () => {
    const before = (await h.metric(gw, "pushgate_disconnects_total", { frontend: "phoenix", reason: "ping_timeout" })) ?? 0;
    const { r, id } = await rawMember();
    assert.equal((await h.api(gw, "GET", `/v1/sockets/${id}`)).status, 200);
    const closed = await h.within(TIMEOUT + 5000, r.closed, "the server closing the silent connection");
    assert.equal(closed.code, 1011, `close ${closed.code} ${closed.reason}`);
    await h.eventually(async () => (await h.api(gw, "GET", `/v1/sockets/${id}`)).status === 404, {
      what: "GET /v1/sockets/{id} -> 404",
    });
    const after = await h.metric(gw, "pushgate_disconnects_total", { frontend: "phoenix", reason: "ping_timeout" });
    assert.ok(after >= before + 1, `disconnects{reason=ping_timeout}: ${before} -> ${after}`);
  });

  test("clients that keep beating outlive two silent clients: a raw one and phoenix.js with a short heartbeatIntervalMs", async () => {
    const { r, id } = await rawMember();
    let ref = 100;
    const beat = setInterval(() => r.send([null, String(++ref), "phoenix", "heartbeat", {}]), 400);
    try {
      const good = await goodClient();
      await silentClientsClosed(2);
      assert.equal(r.closeInfo, null, `the beating raw client was closed: ${JSON.stringify(r.closeInfo)}`);
      assert.equal((await h.api(gw, "GET", `/v1/sockets/${id}`)).status, 200);
      assert.ok(good.s.isConnected(), "phoenix.js is connected");
      assert.equal(good.s.seen.opens, 1, `phoenix.js reconnected (closes: ${JSON.stringify(good.s.seen.closes)})`);
      assert.equal((await h.api(gw, "GET", `/v1/sockets/${good.id}`)).status, 200, "the same socket id is still there");
      await h.push(gw, { to: { socket: good.id }, event: "still" });
      await good.got.waitCount(1);
    } finally {
      clearInterval(beat);
    }
  });

  test("an idle phoenix 1.8 long-poll client (no heartbeats over long-poll) outlives two silent clients while it keeps polling", async () => {
    const s = h.phoenixSocket(gw, { transport: "longpoll", token: tok() });
    const j = await h.phoenixJoin(s, "pushgate");
    assert.equal(j.status, "ok");
    const id = j.response.socket_id;
    await silentClientsClosed(2);
    assert.equal(s.seen.opens, 1, `the long-poll client had to reconnect (closes: ${JSON.stringify(s.seen.closes)})`);
    assert.equal((await h.api(gw, "GET", `/v1/sockets/${id}`)).status, 200, "its socket still exists");
    const got = h.phoenixRecord(j.channel, "idle");
    await h.push(gw, { to: { socket: id }, event: "idle" });
    await got.waitCount(1);
  });

  test("a message on a topic not joined is answered {reason: \"unmatched topic\"} and the connection stays open", async () => {
    const { r, id } = await rawMember();
    r.send(["9", "2", "elsewhere", "shout", {}]);
    const reply = await r.reply("2");
    assert.equal(reply[2], "elsewhere");
    assert.deepEqual(reply[4], { status: "error", response: { reason: "unmatched topic" } });
    r.send([null, "3", "phoenix", "heartbeat", {}]);
    assert.equal((await r.reply("3"))[4].status, "ok", "still answered after the error");
    await h.push(gw, { to: { socket: id }, event: "ping-me" });
    const f = await r.next((x) => x[3] === "ping-me");
    assert.equal(f[2], "pushgate");
  });

  test("an unknown event on a joined topic is answered {reason: \"unknown event\"} and the connection stays open", async () => {
    const { r, id } = await rawMember();
    r.send(["1", "2", "pushgate", "shout", { loud: true }]);
    const reply = await r.reply("2");
    assert.deepEqual(reply, ["1", "2", "pushgate", "phx_reply", { status: "error", response: { reason: "unknown event" } }]);
    await h.push(gw, { to: { socket: id }, event: "ping-me", data: { ok: 1 } });
    assert.deepEqual(await r.next((x) => x[3] === "ping-me"), [null, null, "pushgate", "ping-me", { ok: 1 }]);
    assert.equal(r.closeInfo, null);
  });

  test("phx_leave is answered ok then phx_close, and the room's pushes stop on the wire", async () => {
    const room = "wire:" + uid("r");
    const { r, id } = await rawMember({ rooms: [room] });
    r.send(["5", "5", room, "phx_join", {}]);
    assert.deepEqual(await r.reply("5"), ["5", "5", room, "phx_reply", { status: "ok", response: {} }]);
    await h.push(gw, { to: { room }, event: "in", data: { n: 1 } });
    assert.deepEqual(await r.next((x) => x[3] === "in"), [null, null, room, "in", { n: 1 }]);
    r.send(["5", "6", room, "phx_leave", {}]);
    assert.deepEqual(await r.reply("6"), ["5", "6", room, "phx_reply", { status: "ok", response: {} }]);
    const close = await r.next((x) => x[3] === "phx_close");
    assert.deepEqual(close, ["5", "5", room, "phx_close", {}]);
    const rep = await h.push(gw, { to: { room }, event: "in", data: { n: 2 }, wait: true });
    assert.equal(rep.body.report.sockets, 0);
    await h.push(gw, { to: { socket: id }, event: "sentinel", wait: true });
    await r.next((x) => x[3] === "sentinel");
    assert.deepEqual(r.frames.filter((x) => x[2] === room), [], "no frame on the left topic");
  });

  test("a presence topic's join is followed by presence_state with the join's ref: the member itself, one meta with a phx_ref", async () => {
    const room = "presence-" + uid("wire");
    const user = uid("wire");
    const r = await h.rawPhoenix(gw, { token: h.token({ sub: user, rooms: [room] }) });
    r.send(["3", "3", room, "phx_join", {}]);
    assert.deepEqual(await r.reply("3"), ["3", "3", room, "phx_reply", { status: "ok", response: {} }]);
    const state = await r.next((x) => x[3] === "presence_state");
    assert.deepEqual(state.slice(0, 3), ["3", null, room], "join_ref of the join, no ref");
    assert.deepEqual(Object.keys(state[4]), [user]);
    const metas = state[4][user].metas;
    assert.equal(metas.length, 1, JSON.stringify(state));
    assert.equal(typeof metas[0].phx_ref, "string");
    assert.ok(metas[0].phx_ref.length > 0);
  });

  test("malformed frames close only their own connection (1007; oversize 1009) while a phoenix.js client keeps receiving", async () => {
    const good = await goodClient();
    const before = (await h.metric(gw, "pushgate_disconnects_total", { frontend: "phoenix", reason: "protocol_error" })) ?? 0;
    const cases = [
      ["not JSON", "this is not json", 1007],
      ["a JSON object instead of an array", JSON.stringify({ topic: "pushgate" }), 1007],
      ["four elements", JSON.stringify(["1", "1", "pushgate", "phx_join"]), 1007],
      ["six elements", JSON.stringify(["1", "1", "pushgate", "phx_join", {}, "extra"]), 1007],
      ["numbers where strings belong", JSON.stringify([1, 2, 3, 4, 5]), 1007],
      ["a frame larger than PUSHGATE_MAX_PAYLOAD", JSON.stringify(["1", "1", "pushgate", "phx_join", { pad: "x".repeat(3000) }]), 1009],
    ];
    let n = 0;
    for (const [what, frame, code] of cases) {
      const { r } = await rawMember();
      r.send(frame);
      const closed = await h.within(3000, r.closed, `the close after ${what}`);
      assert.equal(closed.code, code, `${what}: close ${closed.code} ${closed.reason}`);
      await h.push(gw, { to: { socket: good.id }, event: "still", data: { after: what } });
      await good.got.waitCount(++n);
    }
    assert.deepEqual(good.got.payloads(), cases.map(([what]) => ({ after: what })));
    assert.ok(good.s.isConnected());
    assert.equal(good.s.seen.opens, 1, "the good client never reconnected");
    const after = await h.metric(gw, "pushgate_disconnects_total", { frontend: "phoenix", reason: "protocol_error" });
    assert.ok(after >= before + 5, `disconnects{reason=protocol_error}: ${before} -> ${after}`);
  });

  test("a serializer other than vsn=2.0.x is refused: WebSocket upgrade HTTP 400, long-poll {status: 400}", async () => {
    for (const query of ["vsn=1.0.0", "vsn=3.0.0", ""]) {
      assert.equal(await h.phoenixUpgradeStatus(gw, { query, token: tok() }), 400, `websocket ?${query}`);
      const lp = await h.phoenixLongpollGet(gw, `${query}&token=${tok()}`);
      assert.equal(lp.body && lp.body.status, 400, `longpoll ?${query}: ${lp.text}`);
    }
    const ok = await h.rawPhoenix(gw, { query: "vsn=2.0.0", token: tok() });
    assert.equal(ok.ws.readyState, ok.ws.OPEN, "vsn=2.0.0 is accepted");
  });

  test("a bad token is refused at the wire: WebSocket upgrade HTTP 403, long-poll {status: 403}", async () => {
    assert.equal(await h.phoenixUpgradeStatus(gw, { token: "garbage" }), 403);
    assert.equal(await h.phoenixUpgradeStatus(gw, {}), 403, "missing token");
    const lp = await h.phoenixLongpollGet(gw, "vsn=2.0.0&token=garbage");
    assert.equal(lp.httpStatus, 200, "long-poll answers are HTTP 200");
    assert.equal(lp.body.status, 403, lp.text);
  });

  test("phoenix 1.8's authToken subprotocol is accepted and answered with the subprotocol phoenix", async () => {
    const t = h.phoenixAuthToken({ sub: uid("sp") });
    const b64 = Buffer.from(t).toString("base64").replace(/=+$/, "");
    const r = await h.rawPhoenix(gw, { protocols: ["phoenix", `base64url.bearer.phx.${b64}`] });
    assert.equal(r.ws.protocol, "phoenix");
    r.send(["1", "1", "pushgate", "phx_join", {}]);
    assert.equal((await r.reply("1"))[4].status, "ok");
  });
});

// ---------------------------------------------------------------- the API's side

describe("the API beside Phoenix: reserved event names, the presence route", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway();
  });
  after(h.cleanup);

  const PHOENIX_RESERVED = ["phx_join", "phx_leave", "phx_reply", "phx_error", "phx_close", "phx_anything", "heartbeat", "presence_state", "presence_diff", "chan_reply_7"];
  for (const [event, protocol] of [
    ...PHOENIX_RESERVED.map((e) => [e, /Phoenix/]),
    ["connect", /Socket\.IO/],
    ["disconnect", /Socket\.IO/],
  ]) {
    test(`event "${event}" is refused with 400 naming ${protocol.source.replace("\\", "")}`, async () => {
      const r = await h.api(gw, "POST", "/v1/push", { to: { all: true }, event, data: {} });
      const error = h.assertError(r, 400, event);
      assert.match(error.message, protocol, r.text);
    });
  }

  test("GET /v1/rooms/{room}/presence is 400 for a room that tracks no presence and for a members value other than true or false", async () => {
    const plain = await h.api(gw, "GET", "/v1/rooms/lobby/presence");
    assert.match(h.assertError(plain, 400, "a plain room").message, /presence-/, plain.text);
    const bad = await h.api(gw, "GET", "/v1/rooms/presence-x/presence?members=maybe");
    assert.match(h.assertError(bad, 400, "members=maybe").message, /members/, bad.text);
    const empty = await h.api(gw, "GET", "/v1/rooms/presence-nobody/presence");
    assert.deepEqual(empty.body, { room: "presence-nobody", count: 0, members: [] }, empty.text);
  });

  test("a batch with one reserved event name is refused with 400 naming its index; ordinary names are accepted", async () => {
    const ok = await h.api(gw, "POST", "/v1/push", { to: { all: true }, event: "notice" });
    assert.equal(ok.status, 202, ok.text);
    const r = await h.api(gw, "POST", "/v1/push/batch", {
      pushes: [
        { to: { all: true }, event: "notice" },
        { to: { all: true }, event: "phx_reply" },
      ],
    });
    h.assertError(r, 400, "batch");
    assert.match(r.body.error.message, /\bpush 1\b.*Phoenix/, `the message names push 1 and Phoenix: ${r.text}`);
  });
});
