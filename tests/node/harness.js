"use strict";
// Shared helpers for the pushgate end-to-end suite: spawn the real binary, talk to its
// HTTP API, sign connection tokens, connect socket.io-client sockets and raw Engine.IO
// WebSockets, read Prometheus metrics.

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

/** Close every tracked socket and stop every tracked gateway. Use in `after` hooks. */
async function cleanup() {
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

/** Record every occurrence of `event` on `socket`: `{items, waitCount(n)}` (items = arg lists). */
function record(socket, event) {
  const items = [];
  const waiters = [];
  socket.on(event, (...args) => {
    items.push(args);
    for (const w of [...waiters]) if (items.length >= w.n) w.resolve(items);
  });
  return {
    items,
    data: () => items.map((a) => a[0]),
    waitCount(n, timeout = 8000) {
      if (items.length >= n) return Promise.resolve(items);
      return new Promise((resolve, reject) => {
        const w = { n, resolve: (x) => (clearTimeout(t), resolve(x)) };
        const t = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error(`"${event}": got ${items.length} of ${n} within ${timeout} ms`));
        }, timeout);
        waiters.push(w);
      });
    },
  };
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

let sentinelSeq = 0;
/**
 * Proves by ordering that nothing more will arrive for a previously pushed (and already
 * handed-over, i.e. `wait:true`) event: push a sentinel to the socket and wait for it.
 */
async function sentinel(gw, socket, namespace) {
  const nonce = `s${++sentinelSeq}-${Date.now()}`;
  const got = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`sentinel ${nonce} did not arrive`)), 8000);
    const on = (n) => {
      if (n === nonce) {
        clearTimeout(t);
        socket.off("pushgate-test-sentinel", on);
        resolve();
      }
    };
    socket.on("pushgate-test-sentinel", on);
  });
  const body = { to: { socket: socket.id }, event: "pushgate-test-sentinel", data: nonce, wait: true };
  if (namespace) body.namespace = namespace;
  await push(gw, body);
  await got;
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
 * A raw WebSocket with a message queue (no message is ever lost between awaits).
 * `answerPings` replies `3` to every `2`.
 */
function rawWs(gw, query = "EIO=4&transport=websocket", { answerPings = false } = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/socket.io/?${query}`);
  const r = { ws, gateway: gw, messages: [], pings: 0, closeInfo: null, error: null };
  const waiters = [];
  r.closed = new Promise((resolve) => {
    ws.on("close", (code, reason) => {
      r.closeInfo = { code, reason: reason.toString() };
      resolve(r.closeInfo);
      for (const w of waiters.splice(0)) w.reject(new Error(`socket closed (${code}) while waiting`));
    });
  });
  ws.on("error", (e) => {
    r.error = e;
  });
  r.opened = new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
    ws.once("unexpected-response", (req, res) => reject(new Error(`unexpected response ${res.statusCode}`)));
  });
  ws.on("message", (data, isBinary) => {
    const m = isBinary ? Buffer.from(data) : data.toString();
    if (m === "2") {
      r.pings++;
      if (answerPings) ws.send("3");
    }
    r.messages.push(m);
    for (const w of [...waiters]) {
      const i = r.messages.findIndex(w.pred);
      if (i >= 0) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(r.messages.splice(i, 1)[0]);
      }
    }
  });
  /** Next message matching `pred` (earlier non-matching ones stay queued). */
  r.next = (pred = () => true, timeout = 5000) => {
    const i = r.messages.findIndex(pred);
    if (i >= 0) return Promise.resolve(r.messages.splice(i, 1)[0]);
    if (r.closeInfo) return Promise.reject(new Error(`socket already closed (${r.closeInfo.code})`));
    return new Promise((resolve, reject) => {
      const w = {
        pred,
        resolve: (m) => (clearTimeout(t), resolve(m)),
        reject: (e) => (clearTimeout(t), reject(e)),
      };
      const t = setTimeout(() => {
        waiters.splice(waiters.indexOf(w), 1);
        reject(new Error(`no matching message within ${timeout} ms; queued: ${JSON.stringify(r.messages.slice(0, 5))}`));
      }, timeout);
      waiters.push(w);
    });
  };
  r.send = (m) => ws.send(m);
  raws.add(r);
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

/** `cleanup()` plus every Redis started with `startRedis`. */
async function cleanupCluster() {
  await cleanup();
  await Promise.all([...redises].map((r) => r.stop()));
}

module.exports = {
  BIN,
  startRedis,
  freePort,
  cleanupCluster,
  SECRET,
  startGateway,
  cleanup,
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
