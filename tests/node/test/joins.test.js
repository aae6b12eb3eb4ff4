"use strict";
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

describe("client-initiated joins (pushgate:join / pushgate:leave)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_JWT_SECRET: h.SECRET });
  });
  after(h.cleanup);

  const room = async (name) => {
    const res = await h.api(gw, "GET", `/v1/rooms/${encodeURIComponent(name)}`);
    assert.equal(res.status, 200, res.text);
    return res.body;
  };

  test('join "chat:lobby" allowed by join ["chat:*"] acks ok and room pushes reach the client', async () => {
    const s = await h.connect(gw, { auth: { token: h.token({ sub: "u1", join: ["chat:*"] }) } });
    const res = await h.emitAck(s, "pushgate:join", "chat:lobby");
    assert.deepEqual(res, { ok: true, room: "chat:lobby" });
    const r = await room("chat:lobby");
    assert.equal(r.count, 1);
    assert.deepEqual(r.sockets, [s.id]);

    const got = h.waitFor(s, "chat");
    const push = await h.push(gw, { to: { room: "chat:lobby" }, event: "chat", data: { text: "hi" }, wait: true });
    assert.equal(push.body.report.sockets, 1);
    assert.equal(push.body.report.delivered, 1);
    assert.deepEqual(await got, [{ text: "hi" }]);
  });

  test('join "admin" not matching the patterns is refused as forbidden and admin pushes do not reach it', async () => {
    const s = await h.connect(gw, { auth: { token: h.token({ sub: "u2", join: ["chat:*"] }) } });
    const res = await h.emitAck(s, "pushgate:join", "admin");
    assert.equal(res.ok, false, JSON.stringify(res));
    assert.equal(res.error.code, "forbidden");
    assert.equal(typeof res.error.message, "string");
    assert.equal((await room("admin")).count, 0);

    const rec = h.record(s, "admin-news");
    const push = await h.push(gw, { to: { room: "admin" }, event: "admin-news", data: "secret", wait: true });
    assert.equal(push.body.report.sockets, 0);
    await h.sentinel(gw, s);
    assert.equal(rec.items.length, 0, "the refused room's push never arrived");
  });

  test("leave works: after pushgate:leave the room's pushes stop arriving", async () => {
    const s = await h.connect(gw, { auth: { token: h.token({ sub: "u3", join: ["chat:*"] }) } });
    assert.deepEqual(await h.emitAck(s, "pushgate:join", "chat:leavers"), { ok: true, room: "chat:leavers" });
    assert.equal((await room("chat:leavers")).count, 1);
    assert.deepEqual(await h.emitAck(s, "pushgate:leave", "chat:leavers"), { ok: true, room: "chat:leavers" });
    assert.equal((await room("chat:leavers")).count, 0);

    const rec = h.record(s, "chat");
    const push = await h.push(gw, { to: { room: "chat:leavers" }, event: "chat", data: "gone", wait: true });
    assert.equal(push.body.report.sockets, 0);
    await h.sentinel(gw, s);
    assert.equal(rec.items.length, 0);
  });

  test("leaving a room joined through the rooms claim is allowed even without a join pattern", async () => {
    const s = await h.connect(gw, { auth: { token: h.token({ sub: "u4", rooms: ["team:9"] }) } });
    assert.equal((await room("team:9")).count, 1);
    assert.deepEqual(await h.emitAck(s, "pushgate:leave", "team:9"), { ok: true, room: "team:9" });
    assert.equal((await room("team:9")).count, 0);
  });

  test('"?" in a join pattern matches exactly one character', async () => {
    const s = await h.connect(gw, { auth: { token: h.token({ sub: "u5", join: ["dm:??"] }) } });
    assert.deepEqual(await h.emitAck(s, "pushgate:join", "dm:ab"), { ok: true, room: "dm:ab" });
    const long = await h.emitAck(s, "pushgate:join", "dm:abc");
    assert.equal(long.ok, false);
    assert.equal(long.error.code, "forbidden");
    const short = await h.emitAck(s, "pushgate:join", "dm:a");
    assert.equal(short.ok, false);
    assert.equal(short.error.code, "forbidden");
  });

  test("a token without join patterns may not join anything", async () => {
    const s = await h.connect(gw, { auth: { token: h.token({ sub: "u6" }) } });
    const res = await h.emitAck(s, "pushgate:join", "chat:lobby");
    assert.equal(res.ok, false);
    assert.equal(res.error.code, "forbidden");
  });

  test("joins are counted in pushgate_client_joins_total by op and outcome", async () => {
    await h.metricAtLeast(gw, "pushgate_client_joins_total", { op: "join", outcome: "ok" }, 3);
    await h.metricAtLeast(gw, "pushgate_client_joins_total", { op: "join", outcome: "refused" }, 3);
    await h.metricAtLeast(gw, "pushgate_client_joins_total", { op: "leave", outcome: "ok" }, 2);
  });
});
