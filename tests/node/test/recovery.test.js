"use strict";
// Connection state recovery with the real socket.io-client (its own pid/offset
// mechanism): a client that loses its connection while pushes flow comes back with
// `socket.recovered === true`, its user and rooms, and every push addressed to it
// (all, its user, its room, its socket) exactly once and in order, checked by the
// sequence numbers the pushes carry. On one node (the in-process ring), and in a
// cluster behind real HAProxy where the client's node is SIGKILLed and it comes back
// through HAProxy to another node (Redis stream).
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const Phoenix = require("phoenix");
const WebSocket = require("ws");
const h = require("../harness");

/** A socket.io-client that reconnects fast and records every `seq` push it gets. */
function recoveringClient(url, user, extra = {}) {
  const sock = h.client({ url }, {
    auth: { token: h.token({ sub: user, join: ["room-*"] }) },
    reconnection: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
    randomizationFactor: 0,
    ...extra,
  });
  const c = { sock, user, got: [], offsets: [], recovered: [], sids: [] };
  // With recovery on, the offset arrives as a last extra argument.
  sock.on("seq", (n, offset) => {
    c.got.push(n);
    c.offsets.push(offset);
  });
  sock.on("disconnect", () => {
    c.lostAt = performance.now();
    c.onDisconnect?.(c.sids.at(-1));
  });
  sock.on("connect", () => {
    c.recovered.push(sock.recovered);
    c.sids.push(sock.id);
    c.onConnect?.(sock.id);
  });
  return c;
}

/**
 * A phoenix.js socket that does what an app does to recover: it keeps the `pid` the
 * `pushgate` join answers and the last push's ref (its offset), and passes both back
 * in its socket params (a function, so each reconnect sends the latest).
 */
function recoveringPhoenix(url, user, room) {
  const token = h.token({ sub: user, join: ["room-*"] });
  const c = { user, got: [], recovered: [], sids: [], pid: undefined, offset: undefined };
  const socket = new Phoenix.Socket(url.replace(/^http/, "ws") + "/socket", {
    transport: WebSocket.WebSocket,
    params: () => (c.pid && c.offset ? { token, pid: c.pid, offset: c.offset } : { token }),
    reconnectAfterMs: () => 100,
    rejoinAfterMs: () => 100,
  });
  c.socket = socket;
  const got = (payload, ref) => {
    c.got.push(payload.value);
    c.offset = ref;
  };
  const direct = socket.channel("pushgate", {});
  direct.on("seq", got);
  socket.channel(room, {}).on("seq", got);
  c.joined = new Promise((resolve) => {
    direct.join().receive("ok", (resp) => {
      c.pid = resp.pid;
      c.recovered.push(resp.recovered);
      c.sids.push(resp.socket_id);
      c.onConnect?.(resp.socket_id);
      resolve();
    });
  });
  for (const ch of socket.channels) if (ch.topic !== "pushgate") ch.join();
  socket.connect();
  phoenixes.push(socket);
  return c;
}
const phoenixes = [];

/** Pushes numbered `seq` events to `to` through `gw`, remembering the accepted ones. */
function sequencer(gw) {
  const sent = []; // {n, to, answered}
  let n = 0;
  let running = true;
  const targets = (users, room, sockets) => {
    const list = [{ all: true }, { room }];
    for (const u of users) list.push({ user: u });
    for (const s of sockets()) list.push({ socket: s });
    return list;
  };
  return {
    sent,
    async run(users, room, sockets, { every = 20 } = {}) {
      while (running) {
        const all = targets(users, room, sockets);
        const to = all[n % all.length];
        const seq = ++n;
        const r = await h.push(gw(), { to, event: "seq", data: seq }).catch((e) => ({ status: 0, e }));
        if (r.status === 202 || r.status === 200) sent.push({ n: seq, to, answered: performance.now() });
        await h.sleep(every);
      }
    },
    stop() {
      running = false;
    },
  };
}

/** The sequence numbers `c` should have got: pushes to all, the room, its user, its sockets. */
function expected(sent, c, room) {
  return sent
    .filter(({ to }) => to.all || to.room === room || to.user === c.user || (to.socket && c.sids.includes(to.socket)))
    .map(({ n }) => n);
}

async function joinRoom(sock, room) {
  const answer = await h.emitAck(sock, "pushgate:join", room);
  assert.equal(answer.ok, true, JSON.stringify(answer));
}

describe("recovery on one node: the in-process ring", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_JWT_SECRET: h.SECRET,
      PUSHGATE_RECOVERY_WINDOW_MS: "30000",
      PUSHGATE_RECOVERY_MAX_PUSHES: "1000",
    });
  });
  after(h.cleanup);

  test("a client whose transport closes gets back its rooms and every push it missed, once, in order", async () => {
    const c = recoveringClient(gw.url, "ring-u1");
    await h.connected(c.sock);
    await joinRoom(c.sock, "room-ring");
    assert.match(c.sock._pid ?? "", /~[0-9a-f]{32}$/, "the CONNECT answer carries a pid");
    const seq = sequencer(() => gw);
    // Pushes name the socket by the id the app knows: the old one until it is lost,
    // the new one once the client reconnected (a recovered socket has a new id).
    const sids = new Set([c.sock.id]);
    c.onConnect = (sid) => sids.add(sid);
    const running = seq.run(["ring-u1"], "room-ring", () => sids);
    await h.eventually(() => c.got.length >= 10, { what: "first pushes" });
    // The transport dies under the socket (as when a network drops): socket.io-client
    // reconnects by itself and sends back its pid and last offset.
    sids.clear();
    c.sock.io.engine.close();
    await h.eventually(() => c.recovered.length === 2, { what: "reconnected" });
    await h.sleep(300);
    seq.stop();
    await running;
    await h.eventually(() => c.got.length >= expected(seq.sent, c, "room-ring").length, {
      what: "every accepted push arrived",
    }).catch(() => {});
    assert.deepEqual(c.recovered, [false, true], "the second connect is a recovery");
    assert.deepEqual(c.got, expected(seq.sent, c, "room-ring"), "every push once, in order");
    assert.equal(await h.metric(gw, "pushgate_recovery_total", { outcome: "recovered" }), 1);
    // The room membership came back with the session.
    const room = await h.api(gw, "GET", "/v1/rooms/room-ring");
    assert.deepEqual(room.body.sockets, [c.sock.id]);
  });

  test("an unknown pid, or an offset the ring no longer holds, gets a fresh session", async () => {
    const c = recoveringClient(gw.url, "ring-u2", {
      auth: { token: h.token({ sub: "ring-u2" }), pid: "gw.nothing~" + "0".repeat(32), offset: "x" },
    });
    await h.connected(c.sock);
    assert.equal(c.sock.recovered, false);
    assert.ok(c.sock._pid && c.sock._pid !== "gw.nothing~" + "0".repeat(32));
    assert.ok((await h.metric(gw, "pushgate_recovery_total", { outcome: "not_found" })) >= 1);
  });
});

describe("recovery on one node, phoenix.js: socket params carry the pid and offset back", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_JWT_SECRET: h.SECRET,
      PUSHGATE_RECOVERY_WINDOW_MS: "30000",
    });
  });
  after(async () => {
    for (const s of phoenixes.splice(0)) s.disconnect();
    await h.cleanup();
  });

  test("a phoenix.js socket whose connection drops rejoins recovered, with every push once, in order", async () => {
    const c = recoveringPhoenix(gw.url, "phx-u1", "room-phx");
    await c.joined;
    assert.match(c.pid ?? "", /~[0-9a-f]{32}$/, "the pushgate join answers a pid");
    await h.eventually(async () => (await h.api(gw, "GET", "/v1/rooms/room-phx")).body?.sockets?.length === 1, {
      what: "joined the room",
    });
    const sids = new Set(c.sids);
    c.onConnect = (sid) => sids.add(sid);
    const seq = sequencer(() => gw);
    const running = seq.run(["phx-u1"], "room-phx", () => sids);
    await h.eventually(() => c.got.length >= 10, { what: "first pushes" });
    sids.clear();
    c.socket.conn.close(); // the connection drops; phoenix.js reconnects and rejoins
    await h.eventually(() => c.recovered.length === 2, { what: "rejoined" });
    await h.sleep(300);
    seq.stop();
    await running;
    await h.eventually(() => c.got.length >= expected(seq.sent, c, "room-phx").length, {
      what: "every accepted push arrived",
    }).catch(() => {});
    assert.deepEqual(c.recovered, [false, true], "the rejoin is a recovery");
    assert.deepEqual(c.got, expected(seq.sent, c, "room-phx"), "every push once, in order");
  });
});

describe("recovery across nodes: the client's node is SIGKILLed, HAProxy sends it to another", () => {
  let nodes, lb, stopHaproxy;

  before(async () => {
    ({ nodes } = await h.startCluster(["rc1", "rc2"], {
      PUSHGATE_RECOVERY_WINDOW_MS: "30000",
      PUSHGATE_WORKER_THREADS: "1",
    }));
    ({ lb, stop: stopHaproxy } = await h.startHaproxy(nodes, ["rc1", "rc2"]));
  });

  after(async () => {
    h.closeClients();
    for (const s of phoenixes.splice(0)) s.disconnect();
    if (stopHaproxy) await stopHaproxy();
    await h.cleanup();
    await h.cleanupCluster();
  });

  test("the killed node's clients come back recovered, with every push exactly once and in order", async (t) => {
    const clients = [];
    for (let i = 0; i < 8; i++) {
      // Half WebSocket only, half the default (long-polling, then the upgrade).
      const c = recoveringClient(lb.url, `rc-u${i}`, i % 2 ? { transports: ["websocket"] } : {});
      await h.connected(c.sock);
      await joinRoom(c.sock, "room-rc");
      clients.push(c);
    }
    // And phoenix.js sockets, through HAProxy too.
    const phx = [];
    for (let i = 0; i < 4; i++) {
      const c = recoveringPhoenix(lb.url, `rc-p${i}`, "room-rc");
      await c.joined;
      phx.push(c);
    }
    const nodeOf = async (sid) => (await h.api(nodes[0], "GET", `/v1/sockets/${sid}`)).body?.node;
    await h.eventually(async () => (await Promise.all(clients.map((c) => nodeOf(c.sock.id)))).every(Boolean), {
      what: "every socket registered",
    });
    const on = await Promise.all(clients.map((c) => nodeOf(c.sock.id)));
    assert.ok(on.includes("rc1") && on.includes("rc2"), `round robin spread the clients: ${on}`);
    const phxOn = await Promise.all(phx.map((c) => nodeOf(c.sids[0])));
    assert.ok(phxOn.includes("rc1"), `a phoenix.js socket on the node to kill: ${phxOn}`);
    for (const c of phx) c.sock = { id: c.sids[0] };
    clients.push(...phx);
    on.push(...phxOn);
    const victims = clients.filter((_, i) => on[i] === "rc1");
    // Pushes name sockets by the ids the app knows: a victim's old id until its node
    // is killed, its new one once it reconnected.
    const sids = new Set(clients.map((c) => c.sock.id));
    for (const c of clients) c.onConnect = (sid) => sids.add(sid);
    // An app stops addressing a socket id once that socket is gone: a restored socket
    // has a new id (src/recovery.rs).
    for (const c of clients) c.onDisconnect = (sid) => sids.delete(sid);

    // Pushes through the node that survives, to all, the room, each user and each socket.
    const seq = sequencer(() => nodes[1]);
    const running = seq.run(clients.map((c) => c.user), "room-rc", () => sids, { every: 15 });
    await h.eventually(() => clients.every((c) => c.got.length >= 5), { what: "pushes flowing" });
    for (const c of victims) sids.delete(c.sids[0]);
    // A WebSocket upgrade that reached rc1 for a session on rc2 is piped through rc1
    // (no sticky sessions: ARCHITECTURE.md, "Decisions"), and dies with it.
    const pipedThroughRc1 = await h.metric(nodes[0], "pushgate_cluster_forwards_total", { kind: "upgrade", outcome: "ok" });
    nodes[0].proc.kill("SIGKILL");
    await h.eventually(
      () => victims.every((c) => c.recovered.length >= 2) && clients.every((c) => c.sock.connected !== false),
      { timeout: 20_000, what: "victims reconnected" }
    );
    await h.sleep(1000);
    seq.stop();
    await running;
    await h.eventually(
      () => clients.every((c) => c.got.length >= expected(seq.sent, c, "room-rc").length),
      { timeout: 10_000, what: "every accepted push arrived" }
    ).catch(() => {});

    for (const c of victims) {
      assert.deepEqual(c.recovered, [false, true], `${c.user} reconnected as a recovered session`);
      const want = expected(seq.sent, c, "room-rc");
      assert.deepEqual(c.got, want, `${c.user}: every push once, in order`);
    }
    // A client on the survivor keeps its connection, unless its WebSocket was piped
    // through rc1: then it comes back recovered, like a victim, to the session it has.
    const survivors = clients.filter((c) => !victims.includes(c));
    const cutOff = survivors.filter((c) => c.recovered.length > 1);
    assert.ok(
      cutOff.length <= (pipedThroughRc1 ?? 0),
      `${cutOff.map((c) => c.user)} lost their connection, but rc1 piped only ${pipedThroughRc1 ?? 0} upgrades`
    );
    t.diagnostic(`${victims.length} on rc1, ${cutOff.length} on rc2 cut off with it (${pipedThroughRc1 ?? 0} upgrades piped)`);
    for (const c of survivors.filter((c) => !cutOff.includes(c))) {
      assert.deepEqual(c.recovered, [false], `${c.user} never lost its connection`);
      assert.deepEqual(c.got, expected(seq.sent, c, "room-rc"), `${c.user}: every push once, in order`);
    }
    for (const c of cutOff) {
      assert.deepEqual(c.recovered, [false, true], `${c.user} came back as a recovered session`);
      // The one push to its old id that was answered after the connection dropped may
      // have reached the gateway after the session was restored under its new id.
      const inDoubt = (p) => p.to.socket === c.sids[0] && p.answered > c.lostAt;
      const want = expected(seq.sent.filter((p) => !inDoubt(p)), c, "room-rc");
      const doubtful = new Set(seq.sent.filter(inDoubt).map((p) => p.n));
      assert.ok(doubtful.size <= 1, `${c.user}: at most the push in flight is in doubt (${[...doubtful]})`);
      assert.deepEqual(c.got.filter((n) => !doubtful.has(n)), want, `${c.user}: every push once, in order`);
      assert.deepEqual(c.got, [...new Set(c.got)].sort((a, b) => a - b), `${c.user}: no push twice, none out of order`);
    }
    // Recovered sockets live on the surviving node, in their room, as their user.
    const room = await h.api(nodes[1], "GET", "/v1/rooms/room-rc");
    assert.deepEqual([...room.body.sockets].sort(), clients.map((c) => c.sids.at(-1)).sort());
    assert.equal(
      await h.metric(nodes[1], "pushgate_recovery_total", { outcome: "recovered" }),
      victims.length + cutOff.length,
      "every victim, and every client cut off with rc1, recovered on the survivor"
    );
    assert.ok(seq.sent.length > 50, `a steady flow of pushes (${seq.sent.length})`);
  });
});
