"use strict";
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

describe("binary in both directions", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_JWT_SECRET: h.SECRET });
  });
  after(h.cleanup);

  const opts = (transports) => ({ transports, auth: { token: h.token({ sub: "bin", join: ["*"] }) } });

  for (const transports of [["websocket"], ["polling"]]) {
    const name = transports[0];

    test(`${name}: pushgate:join with a Buffer argument gets a clean refusal ack, and pushes still arrive`, async () => {
      const s = await h.connect(gw, opts(transports));
      const res = await h.emitAck(s, "pushgate:join", Buffer.from("chat:lobby"));
      assert.equal(res.ok, false, JSON.stringify(res));
      assert.equal(typeof res.error.code, "string");
      assert.equal(typeof res.error.message, "string");
      const rooms = await h.api(gw, "GET", `/v1/sockets/${encodeURIComponent(s.id)}`);
      assert.equal(rooms.status, 200, "the socket is still connected");

      const got = h.waitFor(s, "after");
      const push = await h.push(gw, { to: { socket: s.id }, event: "after", data: "ok", wait: true });
      assert.equal(push.body.report.delivered, 1);
      assert.deepEqual(await got, ["ok"]);
      assert.ok(s.connected);
    });

    test(`${name}: an unknown event carrying binary gets an unknown_event ack`, async () => {
      const s = await h.connect(gw, opts(transports));
      const res = await h.emitAck(s, "upload", { file: Buffer.alloc(1000, 1) }, Buffer.from([9, 9]));
      assert.equal(res.ok, false);
      assert.equal(res.error.code, "unknown_event");
      // a normal string join still works afterwards
      assert.deepEqual(await h.emitAck(s, "pushgate:join", `room-${name}`), { ok: true, room: `room-${name}` });
    });

    test(`${name}: a $binary push arrives as Buffers with the same bytes`, async () => {
      const s = await h.connect(gw, opts(transports));
      const a = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      const b = Buffer.alloc(100_000);
      for (let i = 0; i < b.length; i++) b[i] = (i * 7919) & 0xff;
      const got = h.waitFor(s, "files");
      await h.push(gw, {
        to: { socket: s.id },
        event: "files",
        data: { list: [{ $binary: a.toString("base64") }, { name: "b", body: { $binary: b.toString("base64") } }] },
        wait: true,
      });
      const [d] = await got;
      assert.ok(Buffer.isBuffer(d.list[0]), `Buffer on ${name}`);
      assert.ok(d.list[0].equals(a));
      assert.equal(d.list[1].name, "b");
      assert.ok(Buffer.isBuffer(d.list[1].body));
      assert.ok(d.list[1].body.equals(b));

      // text pushes after a binary one still decode normally
      const got2 = h.waitFor(s, "text");
      await h.push(gw, { to: { socket: s.id }, event: "text", data: { t: "plain" }, wait: true });
      assert.deepEqual(await got2, [{ t: "plain" }]);
    });
  }
});
