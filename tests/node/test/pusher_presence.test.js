"use strict";
// Pusher presence channels and webhooks, checked as an app would: the real pusher-js
// client's `channel.members` and its `pusher:member_added` / `pusher:member_removed`
// bindings, the real `pusher` server SDK (authorizeChannel with presence data,
// `get` for user_count and /users, `webhook().isValid()` on what a receiver got), on one
// node and on two nodes sharing a Redis, beside phoenix.js `Presence` in the same room.
const { describe, test, before, after, afterEach } = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const h = require("../harness");
const {
  APP,
  APPS,
  sdk,
  pjs,
  closePusherClients,
  pusherConnected,
  subscribe,
  recordOn,
  raw,
  webhookReceiver,
} = require("../pusher-harness");

afterEach(closePusherClients);

let seq = 0;
/** A channel name no other test uses. */
const uid = (base) => `${base}-${++seq}-${process.pid}`;

/** A pusher-js client of `gw` subscribing to presence channels as member `user_id`. */
const member = (gw, user_id, user_info) => pjs(gw, { member: user_info === undefined ? { user_id } : { user_id, user_info } });

/** `channel.members` as `{id: info}`, and its count. */
function membersOf(channel) {
  const out = {};
  channel.members.each((m) => (out[m.id] = m.info));
  return { members: out, count: channel.members.count };
}

/** Records what a presence channel announces: `added` and `removed` member ids, in order. */
function announcements(channel) {
  const seen = { added: [], removed: [], infos: {} };
  channel.bind("pusher:member_added", (m) => {
    seen.added.push(m.id);
    seen.infos[m.id] = m.info;
  });
  channel.bind("pusher:member_removed", (m) => seen.removed.push(m.id));
  return seen;
}

/** The events a webhook receiver got, as `"name channel user_id"` lines (client events with their event). */
const lines = (events) =>
  events.map((e) => [e.name, e.channel, e.user_id ?? e.event ?? ""].join(" ").trim());

describe("pusher presence channels on one node", () => {
  let gw, api;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_PUSHER_APPS: APPS, PUSHGATE_JWT_SECRET: h.SECRET });
    api = sdk(gw);
  });
  after(h.cleanup);

  test("the member list on subscribe; member_added once per user and never to itself; member_removed when its last connection leaves", async () => {
    const room = uid("presence-team");
    const ann1 = await pusherConnected(member(gw, "ann", { name: "Ann" }));
    const a1 = await subscribe(ann1, room);
    assert.ok(a1.ok);
    assert.deepEqual(membersOf(a1.channel), { members: { ann: { name: "Ann" } }, count: 1 });
    assert.deepEqual(a1.channel.members.me, { id: "ann", info: { name: "Ann" } });
    const atAnn = announcements(a1.channel);

    const bob = await pusherConnected(member(gw, "bob", { name: "Bob" }));
    const b = await subscribe(bob, room);
    const atBob = announcements(b.channel);
    assert.deepEqual(membersOf(b.channel), { members: { ann: { name: "Ann" }, bob: { name: "Bob" } }, count: 2 });
    await h.eventually(() => atAnn.added.length === 1, { what: "ann hears bob" });
    assert.deepEqual(atAnn.infos.bob, { name: "Bob" });

    // ann's second connection is not a new member; carol is.
    const ann2 = await pusherConnected(member(gw, "ann", { name: "Ann" }));
    const a2 = await subscribe(ann2, room);
    assert.equal(a2.channel.members.count, 2);
    const carol = await pusherConnected(member(gw, "carol"));
    const c = await subscribe(carol, room);
    assert.deepEqual(membersOf(c.channel).members, { ann: { name: "Ann" }, bob: { name: "Bob" }, carol: {} });
    await h.eventually(() => atBob.added.length === 1 && atAnn.added.length === 2, { what: "carol announced" });
    assert.deepEqual(atBob.added, ["carol"], "bob heard carol only: neither itself nor ann's second connection");
    assert.deepEqual(atAnn.added, ["bob", "carol"]);

    // ann's first connection leaves: ann stays a member through her second.
    ann1.unsubscribe(room);
    carol.disconnect();
    await h.eventually(() => atBob.removed.length === 1, { what: "carol's leave" });
    assert.deepEqual(atBob.removed, ["carol"], "ann is still there");
    ann2.disconnect();
    await h.eventually(() => atBob.removed.length === 2, { what: "ann's last connection left" });
    assert.deepEqual(atBob.removed, ["carol", "ann"]);
    assert.deepEqual(membersOf(b.channel), { members: { bob: { name: "Bob" } }, count: 1 });
  });

  test("user_count and /users through the SDK, subscription_count beside them, and info on a trigger", async () => {
    const room = uid("presence-stats");
    const clients = [member(gw, "u1"), member(gw, "u1"), member(gw, "u2", { x: 1 })];
    for (const c of clients) assert.ok((await subscribe(await pusherConnected(c), room)).ok);
    const one = await (await api.get({ path: `/channels/${room}`, params: { info: "user_count,subscription_count" } })).json();
    assert.deepEqual(one, { occupied: true, user_count: 2, subscription_count: 3 });
    const listed = await (await api.get({ path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count" } })).json();
    assert.deepEqual(listed.channels[room], { user_count: 2 });
    const users = await (await api.get({ path: `/channels/${room}/users` })).json();
    assert.deepEqual(users, { users: [{ id: "u1" }, { id: "u2" }] });
    const triggered = await api.trigger(room, "note", {}, { info: "user_count" });
    assert.deepEqual(await triggered.json(), { channels: { [room]: { user_count: 2 } } });
    assert.deepEqual(await (await api.get({ path: "/channels/presence-nobody", params: { info: "user_count" } })).json(), {
      occupied: false,
      user_count: 0,
    });
    await assert.rejects(api.get({ path: "/channels/plain", params: { info: "user_count" } }), (e) => e.status === 400);
    await assert.rejects(api.trigger("plain", "e", {}, { info: "user_count" }), (e) => e.status === 400);
    await assert.rejects(api.get({ path: "/channels", params: { info: "user_count" } }), (e) => e.status === 400);
  });

  test("client events on a presence channel reach the others with the sender's user_id", async () => {
    const room = uid("presence-chat");
    const a = await pusherConnected(member(gw, "ann"));
    const b = await pusherConnected(member(gw, "bob"));
    const ca = await subscribe(a, room);
    const cb = await subscribe(b, room);
    const got = [];
    cb.channel.bind("client-typing", (data, metadata) => got.push({ data, metadata }));
    assert.ok(ca.channel.trigger("client-typing", { on: true }));
    await h.eventually(() => got.length === 1, { what: "bob got ann's client event" });
    assert.deepEqual(got[0], { data: { on: true }, metadata: { user_id: "ann" } });
  });

  test("a channel_data signature for other data is refused with 401; channel_data must name a user", async () => {
    const room = uid("presence-guarded");
    const forged = await pusherConnected(
      pjs(gw, {
        auth: (socketId, name) => ({
          auth: sdk(gw).authorizeChannel(socketId, name, { user_id: "mallory" }).auth,
          channel_data: JSON.stringify({ user_id: "admin" }),
        }),
      })
    );
    const refused = await subscribe(forged, room);
    assert.equal(refused.ok, false);
    assert.equal(refused.error.status, 401);
    assert.match(refused.error.error, /invalid signature/);

    const ws = await raw(gw);
    const { socket_id } = JSON.parse((await ws.next((f) => f.event === "pusher:connection_established")).data);
    const channel_data = JSON.stringify({ user_info: { name: "nobody" } });
    const sig = crypto.createHmac("sha256", APP.secret).update(`${socket_id}:${room}:${channel_data}`).digest("hex");
    ws.sendJson({ event: "pusher:subscribe", data: { channel: room, auth: `${APP.key}:${sig}`, channel_data } });
    const bad = JSON.parse((await ws.next((f) => f.event === "pusher:subscription_error")).data);
    assert.equal(bad.status, 400);
    assert.match(bad.error, /user_id/);
    const users = await (await api.get({ path: `/channels/${room}/users` })).json();
    assert.deepEqual(users, { users: [] }, "neither joined");
  });

  test("without channel_data a signed-in connection subscribes as its user, with its user_data's user_info", async () => {
    const room = uid("presence-signed");
    const c = await pusherConnected(pjs(gw, { user: { id: "dan", user_info: { name: "Dan" } } }));
    c.signin();
    await c.user.signinDonePromise;
    // The authorizer signs `<socket_id>:<channel>` only: pusher-js then uses the sign-in.
    const s = await subscribe(c, room);
    assert.ok(s.ok, JSON.stringify(s.error));
    assert.deepEqual(s.channel.members.me, { id: "dan", info: { name: "Dan" } });
    // The server's own check (pusher-js would not send this): no channel_data, no sign-in.
    const ws = await raw(gw);
    const { socket_id } = JSON.parse((await ws.next((f) => f.event === "pusher:connection_established")).data);
    const sig = crypto.createHmac("sha256", APP.secret).update(`${socket_id}:${room}`).digest("hex");
    ws.sendJson({ event: "pusher:subscribe", data: { channel: room, auth: `${APP.key}:${sig}` } });
    const refused = JSON.parse((await ws.next((f) => f.event === "pusher:subscription_error")).data);
    assert.equal(refused.status, 400);
    assert.match(refused.error, /needs channel_data, or a signed-in connection/);
  });

  test("a Phoenix client and a Pusher client in one presence room see each other", async () => {
    const room = uid("presence-mixed");
    const { Presence } = h.PHOENIX["1.8"];
    const phx = h.phoenixSocket(gw, { token: h.token({ sub: "phil", join: ["presence-*"] }) });
    const channel = phx.channel(room);
    const presence = new Presence(channel);
    let list = [];
    presence.onSync(() => (list = presence.list((id, { metas }) => ({ id, info: metas[0].info }))));
    assert.equal((await new Promise((r) => channel.join().receive("ok", () => r("ok")).receive("error", r))), "ok");

    const ann = await pusherConnected(member(gw, "ann", { name: "Ann" }));
    const s = await subscribe(ann, room);
    assert.deepEqual(membersOf(s.channel), { members: { phil: {}, ann: { name: "Ann" } }, count: 2 });
    const heard = announcements(s.channel);
    await h.eventually(() => list.length === 2, { what: "phoenix.js lists ann" });
    assert.deepEqual(
      list.sort((a, b) => a.id.localeCompare(b.id)),
      [
        { id: "ann", info: { name: "Ann" } },
        { id: "phil", info: undefined },
      ]
    );
    // Phil's second connection (Phoenix) is no new member for Pusher; its leave neither.
    const phx2 = h.phoenixSocket(gw, { token: h.token({ sub: "phil", join: ["presence-*"] }) });
    assert.equal((await h.phoenixJoin(phx2, room)).status, "ok");
    assert.equal(await h.phoenixLeave(channel), "ok");
    const sam = await pusherConnected(member(gw, "sam"));
    await subscribe(sam, room);
    await h.eventually(() => heard.added.length === 1, { what: "sam announced" });
    assert.deepEqual(heard, { added: ["sam"], removed: [], infos: { sam: {} } });
  });
});

describe("pusher webhooks on one node", () => {
  let gw, hooks;
  before(async () => {
    hooks = await webhookReceiver();
    gw = await h.startGateway({ PUSHGATE_PUSHER_APPS: APPS, PUSHGATE_PUSHER_WEBHOOKS: `${APP.id}=${hooks.url}` });
  });
  after(async () => {
    await h.cleanup();
    await hooks.close();
  });

  test("occupied, member_added, client_event, member_removed and vacated arrive signed, in order, once", async () => {
    const room = uid("presence-hooked");
    const a = await pusherConnected(member(gw, "ann"));
    const b = await pusherConnected(member(gw, "bob"));
    const ca = await subscribe(a, room);
    const cb = await subscribe(b, room);
    const waved = recordOn(cb.channel, "client-wave");
    assert.ok(ca.channel.trigger("client-wave", { hi: 1 }));
    await h.eventually(() => waved.length === 1, { what: "bob got the client event" });
    const heard = announcements(ca.channel);
    b.disconnect();
    await h.eventually(() => heard.removed.length === 1, { what: "ann saw bob leave" });
    a.unsubscribe(room);
    await h.eventually(() => hooks.named("channel_vacated", room).length === 1, { what: "channel_vacated" });
    const mine = hooks.events.filter((e) => e.channel === room);
    assert.deepEqual(lines(mine), [
      `channel_occupied ${room}`,
      `member_added ${room} ann`,
      `member_added ${room} bob`,
      `client_event ${room} ann`,
      `member_removed ${room} bob`,
      `member_removed ${room} ann`,
      `channel_vacated ${room}`,
    ]);
    const ce = hooks.named("client_event", room)[0];
    assert.equal(ce.event, "client-wave");
    assert.equal(ce.data, JSON.stringify({ hi: 1 }));
    assert.equal(ce.socket_id, a.connection.socket_id);
    assert.deepEqual(hooks.invalid, [], "every request verified with the SDK");
    // A public channel is occupied and vacated too; Phoenix topics that are not channel names are not watched.
    const p = await pusherConnected(pjs(gw));
    await subscribe(p, "news-hooked");
    p.unsubscribe("news-hooked");
    await h.eventually(() => hooks.named("channel_vacated", "news-hooked").length === 1, { what: "public channel vacated" });
    assert.equal(hooks.named("channel_occupied", "news-hooked").length, 1);
    assert.ok((await h.metric(gw, "pushgate_webhook_requests_total", { outcome: "ok" })) >= 1);
    assert.equal(await h.metric(gw, "pushgate_webhook_events_total", { event: "client_event" }), 1);
  });
});

describe("pusher presence and webhooks across two nodes (PUSHGATE_REGISTRY_TTL_MS=3000)", () => {
  const TTL_MS = 3000;
  let redis, nodes, hooks;
  before(async () => {
    redis = await h.startRedis();
    hooks = await webhookReceiver();
    nodes = [];
    for (const id of ["wa", "wb"]) {
      nodes.push(
        await h.startGateway({
          PUSHGATE_REDIS_URL: redis.url,
          PUSHGATE_NODE_ID: id,
          PUSHGATE_PUSHER_APPS: APPS,
          PUSHGATE_PUSHER_WEBHOOKS: `${APP.id}=${hooks.url}`,
          PUSHGATE_REGISTRY_TTL_MS: String(TTL_MS),
          PUSHGATE_JWT_SECRET: h.SECRET,
        })
      );
    }
  });
  after(async () => {
    h.closeClients();
    await h.cleanupCluster();
    await hooks.close();
  });

  /**
   * Proves by ordering that each node's webhook sender has sent everything it decided
   * before now: a client event from a connection on each node, on a channel of its
   * own; each node sends its webhooks in order, so once both markers arrived, nothing
   * decided earlier is still to come.
   */
  async function drainWebhooks() {
    const marker = uid("private-marker");
    const senders = [];
    for (const n of nodes.filter((n) => n.running)) {
      const c = await pusherConnected(pjs(n));
      const s = await subscribe(c, marker);
      senders.push({ c, s });
    }
    for (const { s } of senders) assert.ok(s.channel.trigger("client-marker", {}));
    await h.eventually(() => hooks.events.filter((e) => e.channel === marker && e.name === "client_event").length === senders.length, {
      what: "every node's marker webhook",
    });
    for (const { c } of senders) c.disconnect();
  }

  test("members on both nodes form one list; each user is added and removed once however many connections; webhooks come once per cluster", async () => {
    const room = uid("presence-cluster");
    const watcher = await pusherConnected(member(nodes[0], "watcher"));
    const w = await subscribe(watcher, room);
    const heard = announcements(w.channel);
    const ann = [await pusherConnected(member(nodes[0], "ann", { n: 0 })), await pusherConnected(member(nodes[1], "ann", { n: 0 }))];
    for (const c of ann) assert.ok((await subscribe(c, room)).ok);
    const bob = await pusherConnected(member(nodes[1], "bob"));
    const b = await subscribe(bob, room);
    assert.deepEqual(membersOf(b.channel), { members: { watcher: {}, ann: { n: 0 }, bob: {} }, count: 3 });
    await h.eventually(() => heard.added.length === 2, { what: "watcher hears ann and bob" });
    assert.deepEqual(heard.added, ["ann", "bob"]);

    for (const n of nodes) {
      const users = await (await sdk(n).get({ path: `/channels/${room}/users` })).json();
      assert.deepEqual(users, { users: [{ id: "ann" }, { id: "bob" }, { id: "watcher" }] });
      const info = await (await sdk(n).get({ path: `/channels/${room}`, params: { info: "user_count,subscription_count" } })).json();
      assert.deepEqual(info, { occupied: true, user_count: 3, subscription_count: 4 });
    }

    const atWatcher = [];
    w.channel.bind("client-hello", (data, metadata) => atWatcher.push(metadata.user_id));
    const annOn1 = ann[1].channel(room);
    assert.ok(annOn1.trigger("client-hello", {}));
    await h.eventually(() => atWatcher.length === 1, { what: "client event across nodes" });
    assert.deepEqual(atWatcher, ["ann"]);

    ann[0].disconnect();
    bob.disconnect();
    await h.eventually(() => heard.removed.length === 1, { what: "bob's leave" });
    ann[1].disconnect();
    await h.eventually(() => heard.removed.length === 2, { what: "ann's last connection left" });
    assert.deepEqual(heard.removed, ["bob", "ann"], "ann left once, when her last connection did");
    watcher.disconnect();
    await h.eventually(() => hooks.named("channel_vacated", room).length >= 1, { what: "channel_vacated" });
    await drainWebhooks();

    const mine = lines(hooks.events.filter((e) => e.channel === room));
    const count = (line) => mine.filter((l) => l === line).length;
    for (const line of [
      `channel_occupied ${room}`,
      `member_added ${room} watcher`,
      `member_added ${room} ann`,
      `member_added ${room} bob`,
      `client_event ${room} ann`,
      `member_removed ${room} bob`,
      `member_removed ${room} ann`,
      `member_removed ${room} watcher`,
      `channel_vacated ${room}`,
    ]) {
      assert.equal(count(line), 1, `${line} once in ${JSON.stringify(mine)}`);
    }
    assert.equal(mine.length, 9, JSON.stringify(mine));
    assert.ok(mine.indexOf(`channel_occupied ${room}`) < mine.indexOf(`member_added ${room} watcher`));
    assert.deepEqual(hooks.invalid, []);
  });

  test("a Phoenix client on one node and a Pusher client on the other see each other", async () => {
    const room = uid("presence-across");
    const { Presence } = h.PHOENIX["1.8"];
    const phx = h.phoenixSocket(nodes[0], { token: h.token({ sub: "phil", join: ["presence-*"] }) });
    const channel = phx.channel(room);
    const presence = new Presence(channel);
    let ids = [];
    presence.onSync(() => (ids = presence.list((id) => id).sort()));
    assert.equal((await new Promise((r) => channel.join().receive("ok", () => r("ok")).receive("error", r))), "ok");
    const ann = await pusherConnected(member(nodes[1], "ann"));
    const s = await subscribe(ann, room);
    assert.deepEqual(Object.keys(membersOf(s.channel).members).sort(), ["ann", "phil"]);
    await h.eventually(() => ids.join() === "ann,phil", { what: "phoenix.js lists ann" });
    const heard = announcements(s.channel);
    channel.leave();
    await h.eventually(() => heard.removed.length === 1, { what: "phil's leave reaches the Pusher client" });
    assert.deepEqual(heard.removed, ["phil"]);
  });

  test("the receiver answered 500: the batch is sent again and its events arrive once", async () => {
    const room = uid("presence-retry");
    hooks.fail(1);
    const refusedBefore = hooks.refused;
    const c = await pusherConnected(member(nodes[1], "rita"));
    await subscribe(c, room);
    await h.eventually(() => hooks.named("member_added", room).length === 1, { what: "member_added after a retry", timeout: 10_000 });
    assert.equal(hooks.refused, refusedBefore + 1, "one request was answered 500");
    await drainWebhooks();
    assert.deepEqual(lines(hooks.events.filter((e) => e.channel === room)), [`channel_occupied ${room}`, `member_added ${room} rita`]);
    assert.ok((await h.metric(nodes[1], "pushgate_webhook_requests_total", { outcome: "http_error" })) >= 1);
    c.disconnect();
  });

  test("a node SIGKILLed: its members are removed at the other node's clients and in one webhook, within the TTL", async () => {
    const room = uid("presence-kill");
    const survivor = await pusherConnected(member(nodes[0], "sue"));
    const s = await subscribe(survivor, room);
    const heard = announcements(s.channel);
    const both = await pusherConnected(member(nodes[1], "kim"));
    await subscribe(both, room);
    const alsoHere = await pusherConnected(member(nodes[0], "lee"));
    await subscribe(alsoHere, room);
    const gone = await pusherConnected(member(nodes[1], "lee"));
    await subscribe(gone, room);
    await h.eventually(() => heard.added.length === 2, { what: "kim and lee announced" });
    // The lease may have been refreshed just before the kill: the TTL counts from then.
    const killedAt = Date.now();
    await nodes[1].stop("SIGKILL");
    await h.eventually(() => heard.removed.length === 1, { what: "kim removed at the survivor", timeout: TTL_MS });
    assert.ok(Date.now() - killedAt <= TTL_MS + 500, "within the registry TTL");
    assert.deepEqual(heard.removed, ["kim"], "lee still has a connection on the survivor");
    const users = await (await sdk(nodes[0]).get({ path: `/channels/${room}/users` })).json();
    assert.deepEqual(users, { users: [{ id: "lee" }, { id: "sue" }] });
    await drainWebhooks();
    const mine = lines(hooks.events.filter((e) => e.channel === room));
    assert.equal(mine.filter((l) => l === `member_removed ${room} kim`).length, 1, JSON.stringify(mine));
    assert.equal(mine.filter((l) => l.startsWith(`member_removed ${room} lee`)).length, 0, JSON.stringify(mine));
  });
});

describe("a Pusher presence member after Redis restarted empty", () => {
  after(async () => {
    h.closeClients();
    await h.cleanupCluster();
  });

  test("the node registers it again as the member its channel_data named, with its info", async () => {
    let redis = await h.startRedis();
    const gw = await h.startGateway({
      PUSHGATE_REDIS_URL: redis.url,
      PUSHGATE_NODE_ID: "rr",
      PUSHGATE_PUSHER_APPS: APPS,
    });
    const room = uid("presence-restart");
    const ann = await pusherConnected(member(gw, "ann", { name: "Ann" }));
    assert.ok((await subscribe(ann, room)).ok);
    const users = async () => (await (await sdk(gw).get({ path: `/channels/${room}/users` })).json()).users;
    assert.deepEqual(await users(), [{ id: "ann" }]);
    const port = redis.port;
    await redis.stop();
    redis = await h.startRedis(port);
    // The node reconciles the empty registry with its hub: the connection, which has no
    // user of its own, must come back as member "ann", not as an anonymous connection.
    await h.eventually(async () => JSON.stringify(await users()) === JSON.stringify([{ id: "ann" }]), {
      what: "ann registered again",
      timeout: 15_000,
      interval: 200,
    });
    const bob = await pusherConnected(member(gw, "bob"));
    const b = await subscribe(bob, room);
    assert.deepEqual(membersOf(b.channel), { members: { ann: { name: "Ann" }, bob: {} }, count: 2 });
  });
});
