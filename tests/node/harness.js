"use strict";
// Shared helpers for the pushgate end-to-end suite: spawn the real binary (and
// redis-server), talk to its HTTP API, sign connection tokens, connect clients
// (socket.io-client, phoenix.js 1.7 and 1.8, raw Engine.IO and Phoenix WebSockets),
// read Prometheus metrics. The Socket.IO and Phoenix helpers share their shapes: one
// recorder (`record`, `phoenixRecord`), one sentinel (`sentinel`, `phoenixSentinel`),
// one message queue (`rawWs`, `rawPhoenix`), one `closeClients`.

const { spawn } = require("node:child_process");
const crypto = require("node:crypto");
const path = require("node:path");
const { io, Manager } = require("socket.io-client");
const WebSocket = require("ws");

const BIN = process.env.PUSHGATE_BIN
  ? path.resolve(process.env.PUSHGATE_BIN)
  : path.resolve(__dirname, "../../target/debug/pushgate");
const SECRET = "pushgate-e2e-test-secret";
const START_TIMEOUT_MS = 10_000;

// Every gateway and socket created here, so hooks (and process exit) can clean up.
const gateways = new Set();
const sockets = new Set();
const raws = new Set();
const phoenixSockets = new Set();

process.on("exit", () => {
  for (const gw of gateways) {
    try {
      gw.proc.kill("SIGKILL");
    } catch {}
  }
});

const ANSI = /\x1b\[[0-9;?]*[ -\/]*[@-~]/g;
const stripAnsi = (s) => s.replace(ANSI, "");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Spawn the gateway; resolves once its log says `listening on <ip:port>`. */
function startGateway(env = {}) {
  const proc = spawn(BIN, [], {
    env: {
      ...process.env,
      RUST_LOG: process.env.PUSHGATE_TEST_RUST_LOG || "info",
      PUSHGATE_LISTEN: "127.0.0.1:0",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines = [];
  let exitCode; // undefined while running
  const exited = new Promise((resolve) => {
    proc.on("exit", (code, signal) => {
      exitCode = code ?? signal;
      resolve(exitCode);
    });
  });
  const gw = {
    proc,
    url: undefined,
    port: undefined,
    key: undefined,
    logs: () => lines.join("\n"),
    exited,
    get running() {
      return exitCode === undefined;
    },
    async stop(signal = "SIGTERM", killAfterMs = 15_000) {
      if (exitCode !== undefined) return exitCode;
      proc.kill(signal);
      const t = setTimeout(() => {
        try {
          proc.kill("SIGKILL");
        } catch {}
      }, killAfterMs);
      const code = await exited;
      clearTimeout(t);
      gateways.delete(gw);
      return code;
    },
  };
  gateways.add(gw);

  return new Promise((resolve, reject) => {
    let buf = { out: "", err: "" };
    let settled = false;
    const fail = (why) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try {
        proc.kill("SIGKILL");
      } catch {}
      gateways.delete(gw);
      reject(new Error(`${why}\n--- gateway log (${BIN}) ---\n${gw.logs()}\n---`));
    };
    const onLine = (line) => {
      line = stripAnsi(line);
      lines.push(line);
      if (process.env.PUSHGATE_TEST_VERBOSE) process.stderr.write(`[gw] ${line}\n`);
      if (settled) return;
      const i = line.indexOf("listening on");
      if (i < 0) return;
      const m = /(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):(\d+)/.exec(line.slice(i));
      if (!m) return;
      settled = true;
      clearTimeout(timer);
      gw.port = Number(m[2]);
      gw.url = `http://127.0.0.1:${gw.port}`;
      resolve(gw);
    };
    for (const [name, stream] of [
      ["out", proc.stdout],
      ["err", proc.stderr],
    ]) {
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        buf[name] += chunk;
        let nl;
        while ((nl = buf[name].indexOf("\n")) >= 0) {
          onLine(buf[name].slice(0, nl));
          buf[name] = buf[name].slice(nl + 1);
        }
      });
    }
    const timer = setTimeout(
      () => fail(`gateway did not log "listening on <ip:port>" within ${START_TIMEOUT_MS} ms`),
      START_TIMEOUT_MS
    );
    proc.on("error", (e) => fail(`cannot spawn ${BIN}: ${e.message}`));
    proc.on("exit", (code, signal) =>
      fail(`gateway exited (code ${code}, signal ${signal}) before listening`)
    );
  });
}

/**
 * Close every client this harness opened (socket.io-client sockets, raw WebSockets,
 * phoenix.js Sockets), leaving the gateways running. Use in `afterEach` hooks.
 */
function closeClients() {
  for (const s of sockets) {
    try {
      s.close();
    } catch {}
  }
  sockets.clear();
  for (const r of raws) {
    try {
      r.ws.terminate();
    } catch {}
  }
  raws.clear();
  for (const s of phoenixSockets) {
    try {
      s.disconnect();
    } catch {}
  }
  phoenixSockets.clear();
}

/** Close every client and stop every tracked gateway. Use in `after` hooks. */
async function cleanup() {
  closeClients();
  await Promise.all([...gateways].map((gw) => gw.stop("SIGTERM", 3_000)));
  gateways.clear();
}

// ---------------------------------------------------------------- HTTP API

/** Call the HTTP API; resolves `{status, body, headers}` (body parsed as JSON when it is). */
async function api(gw, method, path, body, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  const key = opts.key === undefined ? gw.key : opts.key;
  if (key) headers.authorization = `Bearer ${key}`;
  let payload;
  if (opts.raw !== undefined) {
    payload = opts.raw;
    if (!headers["content-type"]) headers["content-type"] = "application/json";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["content-type"] = "application/json";
  }
  const res = await fetch(gw.url + path, {
    method,
    headers,
    body: payload,
    signal: AbortSignal.timeout(opts.timeout ?? 15_000),
  });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {}
  return { status: res.status, body: parsed, text, headers: res.headers };
}

/** POST /v1/push; throws unless the status is 200/202 (use `api` to test errors). */
async function push(gw, body, opts = {}) {
  const res = await api(gw, "POST", "/v1/push", body, opts);
  if (res.status !== 200 && res.status !== 202) {
    throw new Error(`POST /v1/push ${JSON.stringify(body).slice(0, 200)} -> ${res.status} ${res.text}`);
  }
  return res;
}

/** Asserts the status and the README error body `{"error":{"code":string,"message":string}}`. */
function assertError(res, status, what = "") {
  const assert = require("node:assert/strict");
  assert.equal(res.status, status, `${what} expected HTTP ${status}, got ${res.status}: ${res.text}`);
  const problem = errorShapeProblem(res);
  assert.equal(problem, null, `${what} ${problem}`);
  return res.body.error;
}

/** Assert-free check of the README error body shape; returns a message or null. */
function errorShapeProblem(res) {
  const b = res.body;
  if (!b || typeof b !== "object" || !b.error || typeof b.error !== "object")
    return `body is not {"error": {...}}: ${res.text}`;
  if (typeof b.error.code !== "string" || !b.error.code) return `error.code is not a string: ${res.text}`;
  if (typeof b.error.message !== "string" || !b.error.message)
    return `error.message is not a string: ${res.text}`;
  return null;
}

// ---------------------------------------------------------------- tokens

/** HS256 JWT signed with node:crypto. */
function signJwt(payload, secret = SECRET, header = { alg: "HS256", typ: "JWT" }) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const input = `${enc(header)}.${enc(payload)}`;
  const sig = crypto.createHmac("sha256", secret).update(input).digest("base64url");
  return `${input}.${sig}`;
}

/** A connection token; `exp` defaults to an hour from now, `exp: null` omits it. */
function token({ sub = "user", rooms, join, exp, secret = SECRET, ...extra } = {}) {
  const payload = { sub, ...extra };
  if (exp !== null) payload.exp = exp ?? Math.floor(Date.now() / 1000) + 3600;
  if (rooms !== undefined) payload.rooms = rooms;
  if (join !== undefined) payload.join = join;
  if (sub === null) delete payload.sub;
  return signJwt(payload, secret);
}

// ---------------------------------------------------------------- socket.io-client

/** An unconnected-yet socket.io-client socket (no reconnection, new Manager). */
function client(gw, opts = {}) {
  const { namespace = "/", ...rest } = opts;
  const url = gw.url + (namespace === "/" ? "" : namespace);
  const s = io(url, { forceNew: true, reconnection: false, timeout: 8000, ...rest });
  s.gateway = gw;
  sockets.add(s);
  return s;
}

/** Resolves when `s` connects; rejects with the error on `connect_error`. */
function connected(s, timeout = 8000) {
  return new Promise((resolve, reject) => {
    if (s.connected) return resolve(s);
    const t = setTimeout(() => {
      cleanupListeners();
      reject(new Error(`socket did not connect within ${timeout} ms`));
    }, timeout);
    const onConnect = () => {
      cleanupListeners();
      resolve(s);
    };
    const onError = (err) => {
      cleanupListeners();
      s.close();
      reject(err);
    };
    const cleanupListeners = () => {
      clearTimeout(t);
      s.off("connect", onConnect);
      s.off("connect_error", onError);
    };
    s.on("connect", onConnect);
    s.on("connect_error", onError);
  });
}

const connect = (gw, opts) => connected(client(gw, opts));

/** Resolves with the `connect_error` error; rejects if the socket connects. */
function connectError(gw, opts, timeout = 8000) {
  const s = client(gw, opts);
  let connects = 0;
  s.on("connect", () => connects++);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no connect_error within ${timeout} ms`)), timeout);
    s.once("connect", () => {
      clearTimeout(t);
      s.close();
      reject(new Error("socket connected but a connect_error was expected"));
    });
    s.once("connect_error", (err) => {
      clearTimeout(t);
      // Give a stray CONNECT a moment to show up before we report "never connected".
      setTimeout(() => {
        err.socket = s;
        err.connects = connects;
        s.close();
        resolve(err);
      }, 100);
    });
  });
}

/** Resolves with the event's argument list. */
function waitFor(emitter, event, timeout = 8000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`timed out after ${timeout} ms waiting for "${event}"`));
    }, timeout);
    const on = (...args) => {
      clearTimeout(t);
      emitter.off(event, on);
      resolve(args);
    };
    emitter.on(event, on);
  });
}

/**
 * Records what `subscribe(add)` hands to `add`: `{items, waitCount(n, timeout)}`. The
 * shape behind `record` (socket.io-client events) and `phoenixRecord` (channel events).
 */
function recorder(what, subscribe) {
  const items = [];
  const waiters = [];
  subscribe((item) => {
    items.push(item);
    for (const w of [...waiters]) if (items.length >= w.n) w.resolve(items);
  });
  return {
    items,
    waitCount(n, timeout = 8000) {
      if (items.length >= n) return Promise.resolve(items);
      return new Promise((resolve, reject) => {
        const w = {
          n,
          resolve: (x) => {
            clearTimeout(t);
            waiters.splice(waiters.indexOf(w), 1);
            resolve(x);
          },
        };
        const t = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error(`${what}: got ${items.length} of ${n} within ${timeout} ms: ${JSON.stringify(items).slice(0, 300)}`));
        }, timeout);
        waiters.push(w);
      });
    },
  };
}

/** Record every occurrence of `event` on `socket`: `{items, data(), waitCount(n)}` (items = arg lists). */
function record(socket, event) {
  const r = recorder(`"${event}"`, (add) => socket.on(event, (...args) => add(args)));
  r.data = () => r.items.map((a) => a[0]);
  return r;
}

/** emit with an ack callback, as a promise. */
function emitAck(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ack for "${event}" within 8000 ms`)), 8000);
    socket.emit(event, ...args, (res) => {
      clearTimeout(t);
      resolve(res);
    });
  });
}

const SENTINEL_EVENT = "pushgate-test-sentinel";
let sentinelSeq = 0;
/**
 * Proves by ordering that nothing more will arrive on a connection for what was pushed
 * to it before (with `wait: true`): pushes a nonce to socket `socketId` and waits until
 * `listen(on)` (which subscribes `on` to the sentinel event and returns an unsubscribe
 * function) hears it. The shape behind `sentinel` and `phoenixSentinel`.
 */
async function sentinelVia(gw, socketId, listen, extra = {}, timeout = 8000) {
  const nonce = `s${++sentinelSeq}-${Date.now()}`;
  let stop = () => {};
  const got = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`sentinel ${nonce} did not arrive within ${timeout} ms`)), timeout);
    stop = listen((data) => {
      if (data && data.n === nonce) {
        clearTimeout(t);
        resolve();
      }
    });
  });
  try {
    await push(gw, { to: { socket: socketId }, event: SENTINEL_EVENT, data: { n: nonce }, wait: true, ...extra });
    await got;
  } finally {
    stop();
  }
}

/** `sentinelVia` for a socket.io-client socket (in `namespace`, if given). */
function sentinel(gw, socket, namespace) {
  const listen = (on) => {
    socket.on(SENTINEL_EVENT, on);
    return () => socket.off(SENTINEL_EVENT, on);
  };
  return sentinelVia(gw, socket.id, listen, namespace ? { namespace } : {});
}

/** Poll `fn` until it returns a truthy value (returned) or throw after `timeout`. */
async function eventually(fn, { timeout = 8000, interval = 50, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline)
      throw new Error(`${what} not reached within ${timeout} ms (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await sleep(interval);
  }
}

// ---------------------------------------------------------------- raw Engine.IO over ws

/**
 * Queues what `ws` receives (`decode(data, isBinary)` of each message) on `r[list]`, so
 * no message is lost between awaits, and gives `r`:
 * - `closed`, resolving `{code, reason}` when the socket closes (also kept as `closeInfo`);
 * - `next(pred, timeout)`, the next queued message matching `pred` (earlier non-matching
 *   ones stay queued).
 * The shape behind `rawWs` (Engine.IO) and `rawPhoenix`.
 */
function queueMessages(r, list, decode) {
  const { ws } = r;
  const queue = (r[list] = []);
  r.closeInfo = null;
  const waiters = [];
  r.closed = new Promise((resolve) => {
    ws.on("close", (code, reason) => {
      r.closeInfo = { code, reason: reason.toString() };
      resolve(r.closeInfo);
      for (const w of waiters.splice(0)) w.reject(new Error(`socket closed (${code}) while waiting`));
    });
  });
  ws.on("message", (data, isBinary) => {
    queue.push(decode(data, isBinary));
    for (const w of [...waiters]) {
      const i = queue.findIndex(w.pred);
      if (i >= 0) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(queue.splice(i, 1)[0]);
      }
    }
  });
  r.next = (pred = () => true, timeout = 5000) => {
    const i = queue.findIndex(pred);
    if (i >= 0) return Promise.resolve(queue.splice(i, 1)[0]);
    if (r.closeInfo) return Promise.reject(new Error(`socket already closed (${r.closeInfo.code})`));
    return new Promise((resolve, reject) => {
      const w = {
        pred,
        resolve: (m) => (clearTimeout(t), resolve(m)),
        reject: (e) => (clearTimeout(t), reject(e)),
      };
      const t = setTimeout(() => {
        waiters.splice(waiters.indexOf(w), 1);
        reject(new Error(`no matching ${list} entry within ${timeout} ms; queued: ${JSON.stringify(queue.slice(0, 5))}`));
      }, timeout);
      waiters.push(w);
    });
  };
  raws.add(r);
  return r;
}

/**
 * A raw Engine.IO WebSocket whose messages queue on `r.messages` (see `queueMessages`).
 * `answerPings` replies `3` to every `2`.
 */
function rawWs(gw, query = "EIO=4&transport=websocket", { answerPings = false } = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/socket.io/?${query}`);
  const r = { ws, gateway: gw, pings: 0, error: null };
  ws.on("error", (e) => {
    r.error = e;
  });
  r.opened = new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
    ws.once("unexpected-response", (req, res) => reject(new Error(`unexpected response ${res.statusCode}`)));
  });
  queueMessages(r, "messages", (data, isBinary) => {
    const m = isBinary ? Buffer.from(data) : data.toString();
    if (m === "2") {
      r.pings++;
      if (answerPings) ws.send("3");
    }
    return m;
  });
  r.send = (m) => ws.send(m);
  return r;
}

/** A raw WebSocket-only Engine.IO session that has joined namespace `/`. */
async function rawSocketIo(gw, opts = {}) {
  const r = rawWs(gw, "EIO=4&transport=websocket", opts);
  await r.opened;
  const open = await r.next((m) => typeof m === "string" && m.startsWith("0"));
  r.handshake = JSON.parse(open.slice(1));
  r.send("40");
  const ok = await r.next((m) => typeof m === "string" && m.startsWith("40"));
  r.sid = JSON.parse(ok.slice(2)).sid;
  return r;
}

/** How many of the sockets this suite opened are connected to `gw` right now (raw ones included). */
function connectedCount(gw) {
  let n = 0;
  for (const s of sockets) if (s.gateway === gw && s.connected) n++;
  for (const r of raws) if (r.gateway === gw && r.sid && !r.closeInfo) n++;
  return n;
}

/** Asserts that metric `name{labels}` is at least `min`; returns its value. */
async function metricAtLeast(gw, name, labels, min) {
  const assert = require("node:assert/strict");
  const v = await metric(gw, name, labels);
  const sel = `${name}{${Object.entries(labels || {}).map(([k, x]) => `${k}="${x}"`).join(",")}}`;
  assert.ok(v !== null && v >= min, `${sel} = ${v}, expected >= ${min}`);
  return v;
}

/** Resolve with `promise` or reject after `ms`. */
function within(ms, promise, what = "operation") {
  let t;
  return Promise.race([
    promise.finally(() => clearTimeout(t)),
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
    }),
  ]);
}

// ---------------------------------------------------------------- metrics

function parseMetrics(text) {
  const series = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let l;
      while ((l = re.exec(m[3]))) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    series.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return series;
}

async function metricsText(gw) {
  const res = await fetch(gw.url + "/metrics", { signal: AbortSignal.timeout(10_000) });
  if (res.status !== 200) throw new Error(`/metrics -> ${res.status}`);
  return res.text();
}

/**
 * Sum of every series named `name` whose labels include `labels`; null when no series
 * matches (the metric or that label combination was never recorded).
 */
async function metric(gw, name, labels = {}) {
  const series = parseMetrics(await metricsText(gw));
  let sum = null;
  for (const s of series) {
    if (s.name !== name) continue;
    if (!Object.entries(labels).every(([k, v]) => s.labels[k] === String(v))) continue;
    sum = (sum ?? 0) + s.value;
  }
  return sum;
}

// ---------------------------------------------------------------- Redis (cluster tests)

const redises = new Set();
process.on("exit", () => {
  for (const r of redises) {
    try {
      r.proc.kill("SIGKILL");
    } catch {}
  }
});

/** A free TCP port on 127.0.0.1. */
function freePort() {
  const net = require("node:net");
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Start a `redis-server` of its own on a free port (no persistence); resolves
 * `{url, port, stop()}` once it accepts connections. Stopped by `cleanup()` too.
 */
async function startRedis(port) {
  const net = require("node:net");
  port = port ?? (await freePort());
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  const r = {
    proc,
    port,
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      redises.delete(r);
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((resolve) => proc.once("exit", resolve));
      proc.kill("SIGKILL");
      await exited;
    },
  };
  redises.add(r);
  await eventually(
    () =>
      new Promise((resolve) => {
        const s = net.connect(port, "127.0.0.1", () => (s.destroy(), resolve(true)));
        s.on("error", () => resolve(false));
      }),
    { timeout: 10_000, what: `redis-server on port ${port}` }
  );
  return r;
}

/**
 * A cluster: a Redis of its own and one gateway per id in `ids` on it, started in
 * order. Each gateway gets `PUSHGATE_REDIS_URL`, `PUSHGATE_NODE_ID`, the test JWT
 * secret and a 3 s registry TTL (a killed node leaves every answer within seconds),
 * then `env` over them. Resolves `{redis, nodes}`; `cleanupCluster()` stops it all.
 */
async function startCluster(ids, env = {}) {
  const redis = await startRedis();
  const nodes = [];
  for (const id of ids) {
    nodes.push(
      await startGateway({
        PUSHGATE_REDIS_URL: redis.url,
        PUSHGATE_NODE_ID: id,
        PUSHGATE_JWT_SECRET: SECRET,
        PUSHGATE_REGISTRY_TTL_MS: "3000",
        ...env,
      })
    );
  }
  return { redis, nodes };
}

/** `cleanup()` plus every Redis started with `startRedis`. */
async function cleanupCluster() {
  await cleanup();
  await Promise.all([...redises].map((r) => r.stop()));
}


// ---------------------------------------------------------------- HAProxy

/**
 * Real HAProxy (pm/render-haproxy.sh's config: round robin, no stickiness) in front of
 * `nodes`, named `names[i]`, on a free port; resolves once it answers `/readyz` and
 * every gateway had time to enter the rotation. `lb` is `{url, port}` for the API and
 * client helpers; `stop()` kills it and removes its directory. HAProxy must be
 * installed (`.ci/run` installs it): a missing one fails the caller.
 */
async function startHaproxy(nodes, names) {
  const { spawn: spawnProc, spawnSync } = require("node:child_process");
  const fs = require("node:fs");
  const os = require("node:os");
  const assert = require("node:assert/strict");
  const v = spawnSync("haproxy", ["-v"], { encoding: "utf8" });
  if (v.error || v.status !== 0) {
    throw new Error("haproxy is required for this test (Debian: apt-get install haproxy; .ci/run installs it)");
  }
  const port = await freePort();
  const lb = { url: `http://127.0.0.1:${port}`, port };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pushgate-haproxy-"));
  const cfg = path.join(dir, "haproxy.cfg");
  const servers = nodes.map((n, i) => `${names[i]}=127.0.0.1:${n.port}`).join(",");
  const render = path.resolve(__dirname, "../../pm/render-haproxy.sh");
  const r = spawnSync(render, ["--servers", servers, "--listen", `127.0.0.1:${port}`, "--maxconn", "1000", "--output", cfg], {
    encoding: "utf8",
  });
  assert.equal(r.status, 0, `render-haproxy.sh failed: ${r.stderr}`);
  const c = spawnSync("haproxy", ["-c", "-q", "-f", cfg], { encoding: "utf8" });
  assert.equal(c.status, 0, `haproxy -c rejects the rendered config: ${c.stderr}${c.stdout}`);
  const proc = spawnProc("haproxy", ["-db", "-f", cfg], { stdio: ["ignore", "pipe", "pipe"] });
  const log = [];
  for (const s of [proc.stdout, proc.stderr]) s.on("data", (d) => log.push(d.toString()));
  const stop = async () => {
    if (proc.exitCode === null) {
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGKILL");
      await exited;
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    await eventually(async () => (await api(lb, "GET", "/readyz").catch(() => ({}))).status === 200, {
      timeout: 10_000,
      what: "HAProxy answers /readyz",
    });
  } catch (e) {
    await stop();
    throw new Error(`${e.message}\n--- haproxy log ---\n${log.join("")}`);
  }
  // Every gateway in rotation (2 good checks each) before clients arrive.
  await sleep(4500);
  return { lb, log, stop };
}

module.exports = {
  startHaproxy,
  BIN,
  startRedis,
  startCluster,
  freePort,
  cleanupCluster,
  SECRET,
  startGateway,
  cleanup,
  closeClients,
  api,
  push,
  errorShapeProblem,
  assertError,
  signJwt,
  token,
  client,
  connected,
  connect,
  connectError,
  waitFor,
  record,
  emitAck,
  sentinel,
  eventually,
  rawWs,
  rawSocketIo,
  within,
  parseMetrics,
  metricsText,
  metric,
  metricAtLeast,
  connectedCount,
  sleep,
  Manager,
  io,
  trackSocket: (s, gw) => ((s.gateway = gw), sockets.add(s), s),
};

// ---------------------------------------------------------------- Phoenix Channels (phoenix.js)
//
// The real `phoenix` npm client: 1.8 (package `phoenix`) and 1.7 (alias `phoenix17`).
// Node 20 has no global WebSocket, so the websocket transport is `ws`'s. Long-polling uses
// the package's own `LongPoll`: 1.8's falls back to `fetch`, 1.7's needs XMLHttpRequest,
// which Node 20 lacks, so phoenix 1.7 is tested over websocket only.

const PHOENIX = { "1.8": require("phoenix"), "1.7": require("phoenix17") };

/** The phoenix.js endpoint of `gw` (`/socket`; the transports add `/websocket` or `/longpoll`). */
const phoenixEndpoint = (gw) => `ws://127.0.0.1:${gw.port}/socket`;

/**
 * A phoenix.js `Socket` to `gw`, connecting (unless `connect: false`).
 * `transport`: "websocket" | "longpoll"; `lib`: "1.8" | "1.7"; `token`: sent as
 * `params.token` (omitted when undefined). Other options go to the Socket (e.g.
 * `authToken`, `heartbeatIntervalMs`). Reconnects and rejoins quickly (200 ms) so refused
 * attempts repeat within a test. `socket.seen` records what happened:
 * `{opens, errors: [error], closes: [code], messages: [{topic, event, payload, ref, join_ref}]}`
 * (`messages` is every frame the client decoded, replies included).
 */
function phoenixSocket(gw, { transport = "websocket", lib = "1.8", token, params = {}, connect = true, ...opts } = {}) {
  const P = PHOENIX[lib];
  if (!P) throw new Error(`unknown phoenix lib ${lib} (use "1.8" or "1.7")`);
  if (transport === "longpoll" && lib === "1.7")
    throw new Error("phoenix 1.7's LongPoll needs XMLHttpRequest, which Node 20 lacks: use websocket");
  if (transport !== "websocket" && transport !== "longpoll") throw new Error(`unknown transport ${transport}`);
  const p = { ...params };
  if (token !== undefined) p.token = token;
  const socket = new P.Socket(phoenixEndpoint(gw), {
    transport: transport === "longpoll" ? P.LongPoll : WebSocket.WebSocket,
    params: p,
    reconnectAfterMs: () => 200,
    rejoinAfterMs: () => 300,
    ...opts,
  });
  socket.gateway = gw;
  socket.seen = { opens: 0, errors: [], closes: [], messages: [] };
  socket.onOpen(() => socket.seen.opens++);
  socket.onError((e) => socket.seen.errors.push(e));
  socket.onClose((e) => socket.seen.closes.push(e && e.code));
  socket.onMessage((m) => socket.seen.messages.push(m));
  phoenixSockets.add(socket);
  if (connect) socket.connect();
  return socket;
}

/** Resolves once `socket.isConnected()`; rejects after `timeout`. */
async function phoenixConnected(socket, timeout = 8000) {
  await eventually(() => socket.isConnected(), { timeout, interval: 20, what: "phoenix socket connected" });
  return socket;
}

/**
 * Joins `topic` on `socket`; resolves `{status, response, channel}` with status "ok",
 * "error" or "timeout" (never rejects). After an error reply the channel is left (unless
 * `leaveOnError: false`), since phoenix.js would otherwise retry the join forever.
 */
function phoenixJoin(socket, topic, { timeout = 8000, params = {}, leaveOnError = true } = {}) {
  const channel = socket.channel(topic, params);
  return new Promise((resolve) => {
    let done = false;
    const settle = (r) => {
      if (done) return;
      done = true;
      resolve({ ...r, channel });
    };
    channel
      .join(timeout)
      .receive("ok", (response) => settle({ status: "ok", response }))
      .receive("error", (response) => {
        if (leaveOnError) channel.leave();
        settle({ status: "error", response });
      })
      .receive("timeout", () => settle({ status: "timeout", response: undefined }));
  });
}

/** `channel.push(event, payload)` as a promise of `{status: "ok"|"error"|"timeout", response}`. */
function phoenixPush(channel, event, payload = {}, timeout = 8000) {
  return new Promise((resolve) => {
    channel
      .push(event, payload, timeout)
      .receive("ok", (response) => resolve({ status: "ok", response }))
      .receive("error", (response) => resolve({ status: "error", response }))
      .receive("timeout", () => resolve({ status: "timeout" }));
  });
}

/**
 * `channel.leave()`, resolving the status of the SERVER's reply ("ok" | "error"), or
 * "timeout". phoenix.js fires the leave push's "ok" locally at once (the channel is no
 * longer joined, so `canPush()` is false), so that hook says nothing about the server;
 * this waits for the `phx_reply` with the leave's ref instead (the socket must come from
 * `phoenixSocket`, which records every frame).
 */
async function phoenixLeave(channel, timeout = 8000) {
  const socket = channel.socket;
  if (!socket.seen) throw new Error("phoenixLeave needs a socket made by phoenixSocket");
  const leavePush = channel.leave(timeout);
  const ref = leavePush.ref;
  try {
    const reply = await eventually(
      () => socket.seen.messages.find((m) => m.ref === ref && m.topic === channel.topic && m.event === "phx_reply"),
      { timeout, interval: 10, what: `the server's reply to phx_leave ${channel.topic} (ref ${ref})` }
    );
    return reply.payload && reply.payload.status;
  } catch {
    return "timeout";
  }
}

/**
 * Record every `event` on `channel`: `{items: [{payload, ref, joinRef}], payloads(), refs(),
 * waitCount(n, timeout)}`.
 */
function phoenixRecord(channel, event) {
  const r = recorder(`phoenix "${channel.topic}" "${event}"`, (add) =>
    channel.on(event, (payload, ref, joinRef) => add({ payload, ref, joinRef }))
  );
  r.payloads = () => r.items.map((i) => i.payload);
  r.refs = () => r.items.map((i) => i.ref);
  return r;
}

/** `sentinelVia` for a Phoenix socket `socketId` whose `pushgate` channel is `direct`. */
function phoenixSentinel(gw, direct, socketId) {
  const listen = (on) => {
    const ref = direct.on(SENTINEL_EVENT, on);
    return () => direct.off(SENTINEL_EVENT, ref);
  };
  return sentinelVia(gw, socketId, listen);
}

/**
 * A token whose standard base64 has no `/`, so phoenix 1.8 can send it as `authToken`
 * (a WebSocket subprotocol may not contain `/`; see PROTOCOL_NOTES.md). Varies `jti`.
 */
function phoenixAuthToken(claims = {}) {
  for (let i = 0; i < 10_000; i++) {
    const t = token({ ...claims, jti: `a${i}` });
    if (!Buffer.from(t).toString("base64").includes("/")) return t;
  }
  throw new Error("no token without / in its base64 found");
}

/**
 * A raw Phoenix WebSocket on `/socket/websocket?<query>` whose frames queue on `r.frames`
 * (parsed JSON arrays; text that is not JSON stays a string; see `queueMessages`).
 * Resolves once open; rejects with `err.status` = the HTTP status when the upgrade is
 * refused. `r.reply(ref)` takes the `phx_reply` to the frame whose ref is `ref`;
 * `r.send(frame)` sends an array as JSON or a string as it is.
 */
function rawPhoenix(gw, { query = "vsn=2.0.0", token: tok, protocols, headers } = {}) {
  const q = tok === undefined ? query : `${query}&token=${encodeURIComponent(tok)}`;
  const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/socket/websocket?${q}`, protocols, { headers });
  const r = { ws, gateway: gw };
  ws.on("error", () => {});
  queueMessages(r, "frames", (data, isBinary) => {
    if (isBinary) return Buffer.from(data);
    const text = data.toString();
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  });
  r.reply = (ref, timeout) => r.next((f) => Array.isArray(f) && f[1] === ref && f[3] === "phx_reply", timeout);
  r.send = (frame) => ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  return new Promise((resolve, reject) => {
    ws.once("open", () => resolve(r));
    ws.once("unexpected-response", (req, res) => {
      const e = new Error(`upgrade refused: HTTP ${res.statusCode}`);
      e.status = res.statusCode;
      res.resume();
      reject(e);
    });
    ws.once("error", (e) => reject(e));
  });
}

/** The HTTP status a refused Phoenix WebSocket upgrade gets (throws if it is accepted). */
async function phoenixUpgradeStatus(gw, opts) {
  try {
    const r = await rawPhoenix(gw, opts);
    r.ws.terminate();
  } catch (e) {
    if (e.status) return e.status;
    throw e;
  }
  throw new Error("the upgrade was accepted");
}

/** One long-poll GET on `/socket/longpoll?<query>`: resolves the parsed JSON body and the HTTP status. */
async function phoenixLongpollGet(gw, query = "vsn=2.0.0", headers = {}) {
  const res = await fetch(`${gw.url}/socket/longpoll?${query}`, {
    headers: { accept: "application/json", ...headers },
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {}
  return { httpStatus: res.status, body, text };
}

Object.assign(module.exports, {
  PHOENIX,
  phoenixEndpoint,
  phoenixSocket,
  phoenixConnected,
  phoenixJoin,
  phoenixPush,
  phoenixLeave,
  phoenixRecord,
  phoenixSentinel,
  phoenixAuthToken,
  rawPhoenix,
  phoenixUpgradeStatus,
  phoenixLongpollGet,
});

// ---------------------------------------------------------------- event stream (GET /v1/events)

const eventStreams = new Set();

/**
 * Reads `GET /v1/events` of `gw` (with `gw.key`, or `key`) as a test would: resolves once
 * the `ready` event arrived. `s.events` holds every parsed event (ready included),
 * `s.next(pred, timeout)` takes the next matching one (others stay queued and in
 * `s.events`), `s.ended` resolves when the stream ends, `s.close()` aborts it.
 */
async function eventStream(gw, { key } = {}) {
  const ctrl = new AbortController();
  const k = key === undefined ? gw.key : key;
  const res = await fetch(gw.url + "/v1/events", {
    headers: k ? { authorization: `Bearer ${k}` } : {},
    signal: ctrl.signal,
  });
  if (res.status !== 200) {
    const text = await res.text();
    const e = new Error(`GET /v1/events -> ${res.status} ${text}`);
    e.status = res.status;
    e.text = text;
    throw e;
  }
  const s = { events: [], queue: [], gateway: gw, contentType: res.headers.get("content-type") };
  const waiters = [];
  const offer = () => {
    for (const w of [...waiters]) {
      const i = s.queue.findIndex(w.pred);
      if (i >= 0) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(s.queue.splice(i, 1)[0]);
      }
    }
  };
  s.next = (pred = () => true, timeout = 8000) => {
    const i = s.queue.findIndex(pred);
    if (i >= 0) return Promise.resolve(s.queue.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve: (e) => (clearTimeout(t), resolve(e)) };
      const t = setTimeout(() => {
        waiters.splice(waiters.indexOf(w), 1);
        reject(new Error(`no matching event within ${timeout} ms; seen: ${JSON.stringify(s.events.slice(-8))}`));
      }, timeout);
      waiters.push(w);
    });
  };
  s.close = () => ctrl.abort();
  s.ended = (async () => {
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return "end";
        buf += value;
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, end);
          buf = buf.slice(end + 2);
          if (!frame.startsWith("data: ")) continue;
          const e = JSON.parse(frame.slice(6));
          s.events.push(e);
          s.queue.push(e);
          offer();
        }
      }
    } catch (e) {
      return ctrl.signal.aborted ? "aborted" : `error: ${e.message}`;
    } finally {
      eventStreams.delete(s);
    }
  })();
  eventStreams.add(s);
  await s.next((e) => e.type === "ready");
  return s;
}

/** Aborts every event stream opened with `eventStream`. */
function closeEventStreams() {
  for (const s of eventStreams) s.close();
  eventStreams.clear();
}

// ---------------------------------------------------------------- headless Chromium (puppeteer-core)

/** Debian's chromium; never a downloaded browser. */
const CHROMIUM = process.env.PUSHGATE_CHROMIUM || "/usr/bin/chromium";

/**
 * Launches Debian's Chromium headless with a fresh profile. The background-networking
 * flags matter: without them Chromium's own connections are refused in a closed network
 * and slow everything down. `browser.cleanup()` closes it and removes the profile.
 */
async function launchBrowser() {
  const fs = require("node:fs");
  const os = require("node:os");
  const puppeteer = require("puppeteer-core");
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: apt-get install -y chromium (or set PUSHGATE_CHROMIUM)`);
  }
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "pushgate-chromium-"));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Chromium's first start on a busy 2-core machine can take longer than
    // puppeteer's default 30 s.
    timeout: 120_000,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      `--user-data-dir=${profile}`,
    ],
  });
  browser.cleanup = async () => {
    try {
      await browser.close();
    } finally {
      fs.rmSync(profile, { recursive: true, force: true });
    }
  };
  return browser;
}

Object.assign(module.exports, { eventStream, closeEventStreams, launchBrowser, CHROMIUM });
