"use strict";
// Three gateway processes sharing one Redis, with the real socket.io-client spread
// over them: pushes through each node reach exactly the right sockets, acks from
// clients on two nodes arrive in one report, a killed node's sockets leave the registry.
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const h = require("../harness");

describe("cluster: one Redis, three gateways", () => {
  let nodes, s;
  const events = {};

  // A socket of `user` on node `i`, reachable from every node before it is used.
  async function connect(i, user, rooms = []) {
    const sock = await h.connect(nodes[i], { auth: { token: h.token({ sub: user, rooms }) }, transports: ["websocket"] });
    const other = nodes[(i + 1) % nodes.length];
    await h.eventually(async () => (await h.api(other, "GET", `/v1/sockets/${sock.id}`)).status === 200, {
      what: `socket of ${user} registered`,
    });
    for (const e of ["all", "user", "room", "socket", "except"]) {
      events[sock.id] ??= {};
      events[sock.id][e] = h.record(sock, e);
    }
    return sock;
  }

  before(async () => {
    ({ nodes } = await h.startCluster(["c1", "c2", "c3"]));
    s = {
      alice1: await connect(0, "alice", ["team"]),
      alice2: await connect(1, "alice"),
      bob: await connect(2, "bob", ["team"]),
      carol: await connect(1, "carol"),
    };
  });
  after(h.cleanupCluster);

  const count = (sock, e) => events[sock.id][e].items.length;

  async function settle() {
    // A sentinel through another node orders after everything pushed before it.
    for (const [i, sock] of [[2, s.alice1], [0, s.alice2], [1, s.bob], [2, s.carol]]) {
      await h.sentinel(nodes[i], sock);
    }
  }

  test("the log says cluster", () => {
    for (const n of nodes) assert.match(n.logs(), /mode="?cluster/);
  });

  test("all: every socket on every node, whichever node accepted the push", async () => {
    for (const n of nodes) {
      const res = await h.push(n, { to: { all: true }, event: "all", data: n.port, wait: true });
      assert.deepEqual(res.body.report, { sockets: 4, delivered: 4, acked: 0, timed_out: 0, failed: 0 });
    }
    await settle();
    for (const sock of Object.values(s)) assert.equal(count(sock, "all"), 3);
  });

  test("a user with sockets on two nodes, a room spanning nodes, a socket on another node", async () => {
    await h.push(nodes[2], { to: { user: "alice" }, event: "user", wait: true });
    await h.push(nodes[1], { to: { room: "team" }, event: "room", wait: true });
    await h.push(nodes[0], { to: { socket: s.carol.id }, event: "socket", wait: true });
    await settle();
    assert.deepEqual(
      [count(s.alice1, "user"), count(s.alice2, "user"), count(s.bob, "user"), count(s.carol, "user")],
      [1, 1, 0, 0]
    );
    assert.deepEqual(
      [count(s.alice1, "room"), count(s.alice2, "room"), count(s.bob, "room"), count(s.carol, "room")],
      [1, 0, 1, 0]
    );
    assert.deepEqual(
      [count(s.alice1, "socket"), count(s.alice2, "socket"), count(s.bob, "socket"), count(s.carol, "socket")],
      [0, 0, 0, 1]
    );
  });

  test("except: a socket on another node is left out", async () => {
    const res = await h.push(nodes[0], { to: { user: "alice" }, event: "except", except: [s.alice2.id], wait: true });
    assert.deepEqual(res.body.report, { sockets: 1, delivered: 1, acked: 0, timed_out: 0, failed: 0 });
    await settle();
    assert.deepEqual([count(s.alice1, "except"), count(s.alice2, "except")], [1, 0]);
  });

  test("acks from clients on two nodes arrive in one report, readable from any node", async () => {
    s.alice1.on("ask", (d, cb) => cb("ok"));
    s.alice2.on("ask", (d, cb) => cb("ok"));
    const res = await h.push(nodes[2], { to: { user: "alice" }, event: "ask", data: 1, ack: { timeout_ms: 5000 }, wait: true });
    assert.deepEqual(res.body.report, { sockets: 2, delivered: 2, acked: 2, timed_out: 0, failed: 0 });
    const report = await h.eventually(async () => {
      const r = await h.api(nodes[0], "GET", `/v1/pushes/${res.body.id}`);
      return r.status === 200 && r.body;
    });
    assert.equal(report.state, "final");
    assert.deepEqual(report.report, res.body.report);
  });

  test("a killed node's sockets leave the registry", async () => {
    const bobId = s.bob.id;
    nodes[2].proc.kill("SIGKILL");
    await nodes[2].exited;
    await h.eventually(async () => (await h.api(nodes[0], "GET", `/v1/sockets/${bobId}`)).status === 404, {
      timeout: 10_000,
      what: "bob's socket expired",
    });
    const room = await h.api(nodes[1], "GET", "/v1/rooms/team");
    assert.deepEqual(room.body.sockets, [s.alice1.id]);
    const list = await h.eventually(async () => {
      const r = await h.api(nodes[0], "GET", "/v1/nodes");
      return r.body.nodes.length === 2 && r.body.nodes;
    }, { timeout: 10_000 });
    assert.deepEqual(list.map((n) => n.id), ["c1", "c2"]);
  });
});
