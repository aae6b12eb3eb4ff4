// Reference peer for pushgate load tests: one socket.io 4 server process on the
// @socket.io/redis-adapter, with an HTTP `POST /push` shaped like pushgate's `/v1/push`,
// so that `pushgate-load` drives both the same way.
//
// Environment:
//   PORT        listen port (default 4001), on HOST (default 127.0.0.1)
//   REDIS_URL   redis://host:port (required: the adapter is the point of this peer)
//   JWT_SECRET  HS256 key for connection tokens; unset = anonymous connections allowed
//   BACKLOG     listen backlog (default 511, Node's default)
//
// A connection authenticates with a JWT in `auth.token` or `?token=` (claims `sub`, `exp`,
// optional `rooms`); it joins `user:<sub>` and every room of its `rooms` claim.
//
// POST /push {"to": {"all": true} | {"user": "u"} | {"room": "r"}, "event": "e",
//             "data": <json>, "ack": {"timeout_ms": n}, "wait": bool}
//   -> 202 {"id"}; with ack and wait: 200 {"id", "report": {sockets, delivered, acked,
//      timed_out, failed}} once every targeted client acked or the timeout passed.
"use strict";

const http = require("node:http");
const crypto = require("node:crypto");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const Redis = require("ioredis");

const PORT = Number(process.env.PORT || 4001);
const HOST = process.env.HOST || "127.0.0.1";
const REDIS_URL = process.env.REDIS_URL;
const JWT_SECRET = process.env.JWT_SECRET || "";
const BACKLOG = Number(process.env.BACKLOG || 511); // Node's own default
const MAX_BODY = 1 << 20;
const RESERVED = new Set(["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"]);

if (!REDIS_URL) {
  console.error("REDIS_URL is required (e.g. redis://127.0.0.1:6379)");
  process.exit(2);
}

// HS256 verification with node:crypto; returns the claims or throws with a readable message.
function verifyJwt(token) {
  const parts = String(token).split(".");
  if (parts.length !== 3) throw new Error("malformed token");
  const [h, p, s] = parts;
  let header, claims;
  try {
    header = JSON.parse(Buffer.from(h, "base64url").toString("utf8"));
    claims = JSON.parse(Buffer.from(p, "base64url").toString("utf8"));
  } catch {
    throw new Error("malformed token");
  }
  if (header.alg !== "HS256") throw new Error("unsupported token algorithm");
  const want = crypto.createHmac("sha256", JWT_SECRET).update(`${h}.${p}`).digest();
  const got = Buffer.from(s, "base64url");
  if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) throw new Error("bad token signature");
  if (typeof claims.sub !== "string" || claims.sub === "") throw new Error("token has no sub");
  if (typeof claims.exp !== "number" || claims.exp * 1000 <= Date.now()) throw new Error("token expired");
  return claims;
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function fail(res, status, code, message) {
  send(res, status, { error: { code, message } });
}

const httpServer = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/healthz") return send(res, 200, { status: "ok" });
  if (req.url !== "/push") return fail(res, 404, "not_found", "no such route");
  if (req.method !== "POST") return fail(res, 405, "method_not_allowed", "POST only");
  const chunks = [];
  let size = 0;
  req.on("data", (c) => {
    size += c.length;
    if (size > MAX_BODY) {
      fail(res, 413, "too_large", "body too large");
      req.destroy();
    } else chunks.push(c);
  });
  req.on("end", () => {
    if (res.writableEnded) return;
    let push;
    try {
      push = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      return fail(res, 400, "bad_json", "body is not JSON");
    }
    handlePush(push, res);
  });
});

const io = new Server(httpServer, {
  transports: ["websocket", "polling"],
  // Same defaults as pushgate, so the two are compared like for like.
  pingInterval: 25000,
  pingTimeout: 20000,
});

function handlePush(push, res) {
  const to = push && push.to;
  if (!to || typeof to !== "object") return fail(res, 400, "bad_target", "`to` is required");
  if (typeof push.event !== "string" || push.event === "" || RESERVED.has(push.event)) {
    return fail(res, 400, "bad_event", "`event` must be a non-reserved name");
  }
  let rooms;
  if (to.all === true) rooms = new Set();
  else if (typeof to.user === "string") rooms = new Set([`user:${to.user}`]);
  else if (typeof to.room === "string") rooms = new Set([to.room]);
  else return fail(res, 400, "bad_target", "`to` must be {all:true}, {user} or {room}");
  const id = crypto.randomUUID();
  const args = push.data === undefined ? [] : [push.data];
  const packet = { type: 2, data: [push.event, ...args] };
  const adapter = io.of("/").adapter;
  const timeoutMs = push.ack && Number(push.ack.timeout_ms);
  if (!timeoutMs) {
    adapter.broadcast(packet, { rooms, except: new Set(), flags: {} });
    return send(res, 202, { id });
  }
  // What BroadcastOperator.emit does with an ack callback, keeping the client count it
  // hides, so the report can say how many sockets were targeted.
  let expectedServers = -1;
  let servers = 0;
  let sockets = 0;
  let acked = 0;
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    const report = { sockets, delivered: sockets, acked, timed_out: Math.max(0, sockets - acked), failed: 0 };
    if (push.wait) send(res, 200, { id, report });
  };
  const check = () => {
    if (expectedServers === servers && acked >= sockets) finish();
  };
  const timer = setTimeout(finish, timeoutMs);
  adapter.broadcastWithAck(
    packet,
    { rooms, except: new Set(), flags: { timeout: timeoutMs } },
    (count) => {
      sockets += count;
      servers += 1;
      check();
    },
    () => {
      acked += 1;
      check();
    },
  );
  adapter.serverCount().then((n) => {
    expectedServers = n;
    check();
  });
  if (!push.wait) send(res, 202, { id });
}

io.use((socket, next) => {
  const token = (socket.handshake.auth && socket.handshake.auth.token) || socket.handshake.query.token;
  if (!JWT_SECRET) {
    socket.data.claims = { sub: "anonymous" };
    return next();
  }
  if (!token) return next(Object.assign(new Error("token required"), { data: { code: "token_missing" } }));
  try {
    socket.data.claims = verifyJwt(token);
    next();
  } catch (e) {
    next(Object.assign(new Error(e.message), { data: { code: "token_invalid" } }));
  }
});

io.on("connection", (socket) => {
  const claims = socket.data.claims;
  const rooms = [`user:${claims.sub}`];
  if (Array.isArray(claims.rooms)) for (const r of claims.rooms) if (typeof r === "string") rooms.push(r);
  socket.join(rooms);
});

const pub = new Redis(REDIS_URL, { lazyConnect: false });
const sub = pub.duplicate();
for (const c of [pub, sub]) c.on("error", (e) => console.error(`redis: ${e.message}`));
io.adapter(createAdapter(pub, sub));

httpServer.listen(PORT, HOST, BACKLOG, () => {
  console.log(`socket.io peer pid ${process.pid} listening on ${HOST}:${PORT}, redis ${REDIS_URL}, ${JWT_SECRET ? "JWT required" : "anonymous allowed"}`);
});

function shutdown() {
  io.close();
  pub.disconnect();
  sub.disconnect();
  setTimeout(() => process.exit(0), 200).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
