"use strict";
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

describe("POST /v1/push targets", () => {
  let gw, a1, a2, b, c;
  const all = () => [a1, a2, b, c];
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_JWT_SECRET: h.SECRET });
    const tok = (sub, rooms) => ({ auth: { token: h.token({ sub, rooms }) } });
    [a1, a2, b, c] = await Promise.all([
      h.connect(gw, tok("alice")),
      h.connect(gw, { ...tok("alice"), transports: ["polling"] }),
      h.connect(gw, { ...tok("bob"), transports: ["websocket"] }),
      h.connect(gw, tok("carol", ["r1"])),
    ]);
  });
  after(h.cleanup);

  let evSeq = 0;
  /**
   * Push `body` (with a fresh event name) with wait:true, then prove delivery to exactly
   * `expected` sockets: they get it once, every other socket provably does not.
   */
  const pushAndCheck = async (body, expected, data = { v: 1 }) => {
    const event = `ev${++evSeq}`;
    const recs = new Map(all().map((s) => [s, h.record(s, event)]));
    const res = await h.push(gw, { ...body, event, data, wait: true });
    assert.equal(res.status, 200, res.text);
    assert.equal(typeof res.body.id, "string");
    assert.deepEqual(res.body.report, {
      sockets: expected.length,
      delivered: expected.length,
      acked: 0,
      timed_out: 0,
      failed: 0,
    });
    for (const s of expected) await recs.get(s).waitCount(1);
    for (const s of all()) await h.sentinel(gw, s);
    for (const s of all()) {
      const n = recs.get(s).items.length;
      assert.equal(n, expected.includes(s) ? 1 : 0, `socket ${s.id} got "${event}" ${n} times`);
      if (n) assert.deepEqual(recs.get(s).items[0], [data]);
    }
  };

  test("to all reaches every socket", async () => {
    await pushAndCheck({ to: { all: true } }, all());
  });

  test("to user reaches both sockets of that user and nobody else", async () => {
    await pushAndCheck({ to: { user: "alice" } }, [a1, a2]);
  });

  test("to users reaches the sockets of every listed user", async () => {
    await pushAndCheck({ to: { users: ["alice", "bob"] } }, [a1, a2, b]);
  });

  test("to room reaches only the room's members", async () => {
    await pushAndCheck({ to: { room: "r1" } }, [c]);
  });

  test("to socket reaches only that socket", async () => {
    await pushAndCheck({ to: { socket: b.id } }, [b]);
  });

  test("except removes the listed sockets from the target", async () => {
    await pushAndCheck({ to: { all: true }, except: [a1.id, c.id] }, [a2, b]);
    await pushAndCheck({ to: { user: "alice" }, except: [a2.id] }, [a1]);
  });

  test("a user, room or socket with nobody connected reports 0 sockets", async () => {
    await pushAndCheck({ to: { user: "nobody" } }, []);
    await pushAndCheck({ to: { room: "empty-room" } }, []);
    await pushAndCheck({ to: { socket: `${a1.id}x` } }, []);
  });

  test("data omitted arrives as an event with no arguments", async () => {
    const got = h.waitFor(b, "bare");
    await h.push(gw, { to: { socket: b.id }, event: "bare", wait: true });
    assert.deepEqual(await got, []);
  });

  test("string, number, null, array and object data arrive unchanged", async () => {
    for (const data of ["text ✓ 🚀", 42, null, false, [1, "two", { three: 3 }], { nested: { deep: [1, { x: "y" }] } }]) {
      for (const s of [a1, a2]) {
        const got = h.waitFor(s, "typed");
        await h.push(gw, { to: { socket: s.id }, event: "typed", data, wait: true });
        assert.deepEqual(await got, [data], `${JSON.stringify(data)} via ${s.io.engine.transport.name}`);
      }
    }
  });

  test('nested {"$binary": base64} arrives as a Buffer with the same bytes', async () => {
    const bytes = Buffer.from([0, 1, 2, 3, 250, 251, 252, 253, 254, 255, 0x1e, 0x0a]);
    const big = Buffer.alloc(70_000, 7);
    const data = { name: "file.bin", file: { $binary: bytes.toString("base64") }, parts: [{ $binary: big.toString("base64") }, "text"] };
    for (const s of all()) {
      const got = h.waitFor(s, "bin");
      await h.push(gw, { to: { socket: s.id }, event: "bin", data, wait: true });
      const [d] = await got;
      assert.equal(d.name, "file.bin");
      assert.ok(Buffer.isBuffer(d.file), `file is a Buffer on ${s.io.engine.transport.name}: ${typeof d.file}`);
      assert.ok(d.file.equals(bytes), "same bytes");
      assert.ok(Buffer.isBuffer(d.parts[0]));
      assert.ok(d.parts[0].equals(big), "same bytes (70 kB)");
      assert.equal(d.parts[1], "text");
    }
  });

  test("a top-level $binary data arrives as a Buffer argument", async () => {
    const bytes = Buffer.from("hello binary world");
    const got = h.waitFor(c, "rawbin");
    await h.push(gw, { to: { socket: c.id }, event: "rawbin", data: { $binary: bytes.toString("base64") }, wait: true });
    const [d] = await got;
    assert.ok(Buffer.isBuffer(d));
    assert.ok(d.equals(bytes));
  });

  test('only namespace "/" is served by default: /other gets connect_error "Invalid namespace"', async () => {
    const err = await h.connectError(gw, { namespace: "/other", auth: { token: h.token({ sub: "x" }) } });
    assert.equal(err.message, "Invalid namespace");
    assert.equal(err.connects, 0);
  });

  test("pushes are counted in pushgate_pushes_total by target", async () => {
    for (const target of ["all", "user", "users", "room", "socket"]) {
      await h.metricAtLeast(gw, "pushgate_pushes_total", { target }, 1);
    }
  });
});

describe("PUSHGATE_NAMESPACES", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_NAMESPACES: "/,/admin" });
  });
  after(h.cleanup);

  test('a push with namespace "/admin" reaches only /admin sockets, the default only "/" sockets', async () => {
    // one Engine.IO connection multiplexing two namespaces, as socket.io-client does by default
    const manager = new h.Manager(gw.url, { reconnection: false });
    const root = h.trackSocket(manager.socket("/"), gw);
    const admin = h.trackSocket(manager.socket("/admin"), gw);
    await Promise.all([h.connected(root), h.connected(admin)]);
    assert.notEqual(root.id, admin.id);

    const info = await h.api(gw, "GET", `/v1/sockets/${encodeURIComponent(admin.id)}`);
    assert.equal(info.status, 200, info.text);
    assert.equal(info.body.namespace, "/admin");

    const rootRec = h.record(root, "n");
    const adminRec = h.record(admin, "n");
    const r1 = await h.push(gw, { to: { all: true }, namespace: "/admin", event: "n", data: "admin only", wait: true });
    assert.equal(r1.body.report.sockets, 1);
    const r2 = await h.push(gw, { to: { all: true }, event: "n", data: "root only", wait: true });
    assert.equal(r2.body.report.sockets, 1);
    await adminRec.waitCount(1);
    await rootRec.waitCount(1);
    await h.sentinel(gw, admin, "/admin");
    await h.sentinel(gw, root);
    assert.deepEqual(adminRec.data(), ["admin only"]);
    assert.deepEqual(rootRec.data(), ["root only"]);
    manager.engine.close();
  });

  test("a namespace not listed is refused with Invalid namespace", async () => {
    const err = await h.connectError(gw, { namespace: "/other" });
    assert.equal(err.message, "Invalid namespace");
  });
});
