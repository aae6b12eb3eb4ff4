"use strict";
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

describe("connection auth with PUSHGATE_JWT_SECRET", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_JWT_SECRET: h.SECRET });
  });
  after(h.cleanup);

  const getSocket = (id) => h.api(gw, "GET", `/v1/sockets/${encodeURIComponent(id)}`);

  test("a valid token in auth.token connects and GET /v1/sockets/{id} shows its user", async () => {
    const before = Date.now();
    const s = await h.connect(gw, { auth: { token: h.token({ sub: "alice" }) } });
    const res = await getSocket(s.id);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.id, s.id);
    assert.equal(res.body.user, "alice");
    assert.equal(res.body.namespace, "/");
    assert.equal(typeof res.body.node, "string");
    assert.ok(s.id.startsWith(res.body.node), `socket id ${s.id} is prefixed by node id ${res.body.node}`);
    assert.ok(Array.isArray(res.body.rooms));
    assert.equal(typeof res.body.transport, "string");
    assert.equal(typeof res.body.connected_at, "number");
    assert.ok(
      res.body.connected_at >= before - 5000 && res.body.connected_at <= Date.now() + 5000,
      `connected_at ${res.body.connected_at} is ms since the epoch, around now`
    );
  });

  test("a valid token in the query string (?token=) connects with its user", async () => {
    const s = await h.connect(gw, { query: { token: h.token({ sub: "bob" }) } });
    const res = await getSocket(s.id);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.user, "bob");
  });

  test("the rooms claim joins those rooms on connect", async () => {
    const s = await h.connect(gw, { auth: { token: h.token({ sub: "carol", rooms: ["team:7", "ops"] }) } });
    for (const room of ["team:7", "ops"]) {
      const res = await h.api(gw, "GET", `/v1/rooms/${encodeURIComponent(room)}`);
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.room, room);
      assert.equal(res.body.count, 1);
      assert.deepEqual(res.body.sockets, [s.id]);
    }
    const info = await getSocket(s.id);
    for (const room of ["team:7", "ops"]) assert.ok(info.body.rooms.includes(room), JSON.stringify(info.body));

    const got = h.waitFor(s, "team-news");
    const res = await h.push(gw, { to: { room: "team:7" }, event: "team-news", data: "hello team", wait: true });
    assert.equal(res.body.report.sockets, 1);
    assert.deepEqual(await got, ["hello team"]);
  });

  const refused = async (opts, reason) => {
    const err = await h.connectError(gw, opts);
    assert.match(err.message, reason, `connect_error message "${err.message}"`);
    assert.ok(err.data && typeof err.data.code === "string" && err.data.code, `err.data.code set: ${JSON.stringify(err.data)}`);
    assert.equal(err.connects, 0, "the socket never fired connect");
    assert.equal(err.socket.connected, false);
    return err;
  };

  test("a missing token is refused with a connect_error saying it is missing", async () => {
    await refused({}, /missing/i);
  });

  test("a garbage token is refused with a connect_error saying it is invalid", async () => {
    await refused({ auth: { token: "not-a-jwt" } }, /invalid|malformed/i);
  });

  test("a token signed with the wrong key is refused with a connect_error about its signature", async () => {
    await refused({ auth: { token: h.token({ sub: "mallory", secret: "wrong-secret" }) } }, /signature|invalid/i);
  });

  test("an expired token is refused with a connect_error saying it expired", async () => {
    await refused({ auth: { token: h.token({ sub: "late", exp: Math.floor(Date.now() / 1000) - 120 }) } }, /expired/i);
  });

  test("a bad token in the query string is refused too", async () => {
    await refused({ query: { token: h.token({ sub: "mallory", secret: "wrong-secret" }) } }, /signature|invalid/i);
  });

  test("a token without the required exp claim is refused", async () => {
    const err = await h.connectError(gw, { auth: { token: h.token({ sub: "noexp", exp: null }) } });
    assert.equal(err.connects, 0);
    assert.ok(err.message, "readable message");
  });

  test("refused connections are counted in pushgate_connect_errors_total", async () => {
    await h.metricAtLeast(gw, "pushgate_connect_errors_total", {}, 6);
  });
});

describe("connection auth without a secret", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway();
  });
  after(h.cleanup);

  test("anonymous clients connect and receive pushes", async () => {
    const s = await h.connect(gw);
    assert.ok(s.id);
    const res = await h.api(gw, "GET", `/v1/sockets/${encodeURIComponent(s.id)}`);
    assert.equal(res.status, 200, res.text);
    const got = h.waitFor(s, "hi");
    await h.push(gw, { to: { socket: s.id }, event: "hi", wait: true });
    assert.deepEqual(await got, []);
  });
});
