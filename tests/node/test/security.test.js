"use strict";
// Security refusals as clients and operators meet them: connection tokens pinned to
// HS256 with exp/nbf leeway and optional aud/iss; the browser Origin allow-list on every
// client transport (and in a real browser); secrets never in the log, even at trace
// level; secrets read from files.
const { describe, test, before, after, afterEach } = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");
const os = require("node:os");
const path = require("node:path");
const WebSocket = require("ws");
const PusherJs = require("pusher-js");
const PusherSdk = require("pusher");
const h = require("../harness");

afterEach(() => h.closeClients());

const now = () => Math.floor(Date.now() / 1000);
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");

/** A token with a header of our choosing, signed with HMAC-SHA256 over it (or unsigned). */
function tokenWithHeader(header, claims, { sign = true, secret = h.SECRET } = {}) {
  const input = `${b64(header)}.${b64(claims)}`;
  if (!sign) return `${input}.`;
  return `${input}.${crypto.createHmac("sha256", secret).update(input).digest("base64url")}`;
}

/** The same claims signed with HMAC-SHA512 (a real HS512 token). */
function hs512(claims) {
  const input = `${b64({ alg: "HS512", typ: "JWT" })}.${b64(claims)}`;
  return `${input}.${crypto.createHmac("sha512", h.SECRET).update(input).digest("base64url")}`;
}

describe("connection tokens (PUSHGATE_JWT_SECRET, default leeway 30 s)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({ PUSHGATE_JWT_SECRET: h.SECRET });
  });
  after(h.cleanup);

  const refused = async (tok, message, code) => {
    const err = await h.connectError(gw, { auth: { token: tok } });
    assert.match(err.message, message);
    assert.deepEqual(err.data, { code });
    assert.equal(err.connects, 0);
    // phoenix.js is refused the same token with 403.
    assert.equal(await h.phoenixUpgradeStatus(gw, { token: tok }), 403);
  };

  test("the algorithm is pinned: alg none, HS512 with the right secret, and an RS256 header are refused", async () => {
    const claims = { sub: "mallory", exp: now() + 600 };
    await refused(tokenWithHeader({ alg: "none", typ: "JWT" }, claims, { sign: false }), /signed with none; only HS256/, "bad_algorithm");
    await refused(tokenWithHeader({ alg: "none" }, claims), /signed with none/, "bad_algorithm");
    await refused(hs512(claims), /signed with HS512; only HS256/, "bad_algorithm");
    // RS/HS confusion: HMAC'd with a secret, but the header claims RS256.
    await refused(tokenWithHeader({ alg: "RS256", typ: "JWT" }, claims), /signed with RS256/, "bad_algorithm");
    // The same hand-made encoding with HS256 passes: it was the algorithm that was refused.
    const ok = await h.connect(gw, { auth: { token: tokenWithHeader({ alg: "HS256", typ: "JWT" }, claims) } });
    assert.ok(ok.id);
    assert.ok((await h.metric(gw, "pushgate_connect_errors_total", { frontend: "socketio", reason: "bad_algorithm" })) >= 4);
  });

  test("exp and nbf are honoured with the leeway", async () => {
    await h.connect(gw, { auth: { token: h.token({ sub: "late", exp: now() - 10 }) } });
    await refused(h.token({ sub: "late", exp: now() - 120 }), /expired/, "expired_token");
    await h.connect(gw, { auth: { token: h.token({ sub: "early", nbf: now() + 10 }) } });
    await refused(h.token({ sub: "early", nbf: now() + 300 }), /not valid yet/, "not_yet_valid");
  });

  test("a token with an aud claim is accepted when no audience is configured", async () => {
    await h.connect(gw, { auth: { token: h.token({ sub: "a", aud: "someone-else" }) } });
  });
});

describe("audience, issuer and no leeway (PUSHGATE_JWT_AUDIENCE, PUSHGATE_JWT_ISSUER, PUSHGATE_JWT_LEEWAY_MS=0)", () => {
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_JWT_SECRET: h.SECRET,
      PUSHGATE_JWT_AUDIENCE: "pushgate,push-eu",
      PUSHGATE_JWT_ISSUER: "https://app.example.com",
      PUSHGATE_JWT_LEEWAY_MS: "0",
    });
  });
  after(h.cleanup);

  const iss = "https://app.example.com";

  test("only tokens for this gateway from an accepted issuer connect", async () => {
    await h.connect(gw, { auth: { token: h.token({ sub: "a", aud: "pushgate", iss }) } });
    await h.connect(gw, { auth: { token: h.token({ sub: "a", aud: ["other", "push-eu"], iss }) } });
    for (const [claims, message, code] of [
      [{ aud: "other", iss }, /not for this gateway/, "bad_audience"],
      [{ iss }, /not for this gateway/, "bad_audience"],
      [{ aud: "pushgate", iss: "https://evil.example.com" }, /accepted issuer/, "bad_issuer"],
      [{ aud: "pushgate" }, /accepted issuer/, "bad_issuer"],
      [{ aud: "pushgate", iss, exp: now() - 5 }, /expired/, "expired_token"],
    ]) {
      const err = await h.connectError(gw, { auth: { token: h.token({ sub: "a", ...claims }) } });
      assert.match(err.message, message, JSON.stringify(claims));
      assert.deepEqual(err.data, { code });
    }
    assert.equal(await h.phoenixUpgradeStatus(gw, { token: h.token({ sub: "a", aud: "other", iss }) }), 403);
  });
});

describe("Origin allow-list (PUSHGATE_ALLOWED_ORIGINS=https://app.example.com,https://*.example.org)", () => {
  const APP = { id: "42", key: "app-key", secret: "app-secret" };
  let gw;
  before(async () => {
    gw = await h.startGateway({
      PUSHGATE_ALLOWED_ORIGINS: "https://app.example.com,https://*.example.org",
      PUSHGATE_PUSHER_APPS: `${APP.id}:${APP.key}:${APP.secret}`,
    });
  });
  after(h.cleanup);

  const origin = (o) => ({ extraHeaders: { origin: o } });

  test("socket.io-client: an allowed origin and no origin connect; another origin is refused with 403 on polling and WebSocket", async () => {
    await h.connect(gw, origin("https://app.example.com"));
    await h.connect(gw, { ...origin("https://eu.example.org"), transports: ["websocket"] });
    await h.connect(gw); // a non-browser client sends no Origin
    const polling = await h.connectError(gw, origin("https://evil.example.com"));
    assert.equal(polling.description, 403);
    const ws = await h.connectError(gw, { ...origin("https://evil.example.com"), transports: ["websocket"] });
    assert.match(String(ws.description && ws.description.message), /403/);
    const raw = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling`, { headers: { origin: "null" } });
    assert.equal(raw.status, 403);
    assert.match((await raw.json()).message, /origin not allowed/);
  });

  test("an allowed session's requests from another origin are refused too", async () => {
    const open = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling`, { headers: { origin: "https://app.example.com" } });
    const sid = JSON.parse((await open.text()).slice(1)).sid;
    const poll = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling&sid=${sid}`, {
      method: "POST",
      headers: { origin: "https://evil.example.com", "content-type": "text/plain" },
      body: "40",
    });
    assert.equal(poll.status, 403);
  });

  test("Phoenix WebSocket and long-poll refuse another origin (403); Pusher answers pusher:error 4009 and closes 4009", async () => {
    assert.equal(await h.phoenixUpgradeStatus(gw, { headers: { origin: "https://evil.example.com" } }), 403);
    const ok = await h.rawPhoenix(gw, { headers: { origin: "https://app.example.com" } });
    ok.ws.terminate();
    const lp = await h.phoenixLongpollGet(gw, "vsn=2.0.0", { origin: "https://evil.example.com" });
    assert.equal(lp.body.status, 403);
    assert.equal((await h.phoenixLongpollGet(gw, "vsn=2.0.0", { origin: "https://app.example.com" })).body.status, 410);

    const url = `ws://127.0.0.1:${gw.port}/app/${APP.key}?protocol=7&client=js&version=8.6.0`;
    const frames = [];
    const ws = new WebSocket(url, { headers: { origin: "https://evil.example.com" } });
    ws.on("message", (m) => frames.push(JSON.parse(m.toString())));
    const { code } = await new Promise((resolve) => ws.on("close", (c) => resolve({ code: c })));
    assert.equal(code, 4009);
    assert.equal(frames[0].event, "pusher:error");
    assert.equal(frames[0].data.code, 4009);
    assert.match(frames[0].data.message, /origin not allowed/);
    // pusher-js in Node sends no Origin: it connects.
    const client = new PusherJs(APP.key, { cluster: "mt1", wsHost: "127.0.0.1", wsPort: gw.port, forceTLS: false, enabledTransports: ["ws"], disableStats: true });
    try {
      await h.eventually(() => client.connection.state === "connected", { what: "pusher-js connected" });
    } finally {
      client.disconnect();
    }
    assert.ok((await h.metric(gw, "pushgate_connect_errors_total", { reason: "origin" })) >= 6);
  });
});

describe("Origin allow-list in a real browser (headless Chromium)", () => {
  let gw, other, page, browser, server, pageOrigin;
  before(async () => {
    // A page of another site, which the browser gives its own Origin.
    server = http.createServer((req, res) => res.end("<!doctype html><title>other site</title>"));
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    pageOrigin = `http://127.0.0.1:${server.address().port}`;
    gw = await h.startGateway({ PUSHGATE_ALLOWED_ORIGINS: pageOrigin, PUSHGATE_JWT_SECRET: h.SECRET });
    other = await h.startGateway({ PUSHGATE_ALLOWED_ORIGINS: "https://app.example.com", PUSHGATE_JWT_SECRET: h.SECRET });
    browser = await h.launchBrowser();
    page = await browser.newPage();
    await page.goto(pageOrigin, { waitUntil: "domcontentloaded" });
  });
  after(async () => {
    if (browser) await browser.cleanup();
    server.close();
    await h.cleanup();
  });

  /** What a WebSocket from the page to `url` does first: "open" or "refused". */
  const tryWebSocket = (url) =>
    page.evaluate(
      (u) =>
        new Promise((resolve) => {
          const ws = new WebSocket(u);
          ws.onopen = () => (ws.close(), resolve("open"));
          ws.onerror = () => resolve("refused");
        }),
      url
    );

  test("a page of an allowed origin opens Engine.IO and Phoenix WebSockets; the same page is refused by a gateway that does not allow it", async () => {
    const eio = (g) => `ws://127.0.0.1:${g.port}/socket.io/?EIO=4&transport=websocket`;
    const phx = (g) => `ws://127.0.0.1:${g.port}/socket/websocket?vsn=2.0.0&token=${h.token({ sub: "b" })}`;
    assert.equal(await tryWebSocket(eio(gw)), "open");
    assert.equal(await tryWebSocket(phx(gw)), "open");
    assert.equal(await tryWebSocket(eio(other)), "refused");
    assert.equal(await tryWebSocket(phx(other)), "refused");
    assert.ok((await h.metric(other, "pushgate_connect_errors_total", { reason: "origin" })) >= 2);
  });

  test("the gateway's own dev console client connects although its origin is not in the list", { timeout: 60_000 }, async () => {
    const client = await browser.newPage();
    await client.goto(`${other.url}/console/client`, { waitUntil: "domcontentloaded" });
    await client.type("#token", h.token({ sub: "console-user" }));
    await client.click("#connect-button");
    await client.waitForFunction(() => document.querySelector("#status").textContent.startsWith("connected as "), {
      timeout: 10_000,
    });
  });
});

describe("secrets never reach the log, even with RUST_LOG=trace", () => {
  const API_KEY = "k3y-" + crypto.randomBytes(12).toString("hex");
  const WRONG_KEY = "wr0ng-" + crypto.randomBytes(12).toString("hex");
  const JWT_SECRET = "jwt-" + crypto.randomBytes(12).toString("hex");
  const APP = { id: "7", key: "trace-key", secret: "pus-" + crypto.randomBytes(12).toString("hex") };
  let gw;
  before(async () => {
    gw = await h.startGateway({
      RUST_LOG: "trace",
      PUSHGATE_TEST_RUST_LOG: "trace",
      PUSHGATE_API_KEYS: API_KEY,
      PUSHGATE_JWT_SECRET: JWT_SECRET,
      PUSHGATE_PUSHER_APPS: `${APP.id}:${APP.key}:${APP.secret}`,
    });
    gw.key = API_KEY;
  });
  after(h.cleanup);

  test("API keys (right and wrong), the JWT secret, tokens and the Pusher app secret appear nowhere in the log", async () => {
    const tok = h.token({ sub: "traced", secret: JWT_SECRET });
    const badTok = h.token({ sub: "traced", secret: "not-the-secret" });
    await h.push(gw, { to: { all: true }, event: "e" });
    assert.equal((await h.api(gw, "GET", "/v1/nodes", undefined, { key: WRONG_KEY })).status, 401);
    assert.equal((await h.api(gw, "GET", `/v1/nodes?key=${WRONG_KEY}`, undefined, { key: "" })).status, 401);
    const s = await h.connect(gw, { auth: { token: tok } });
    await h.connect(gw, { query: { token: tok }, transports: ["polling"] });
    await h.connectError(gw, { auth: { token: badTok } });
    const phx = h.phoenixSocket(gw, { token: tok });
    await h.phoenixConnected(phx);
    const sdk = new PusherSdk({ appId: APP.id, key: APP.key, secret: APP.secret, host: "127.0.0.1", port: String(gw.port), useTLS: false });
    const client = new PusherJs(APP.key, {
      cluster: "mt1",
      wsHost: "127.0.0.1",
      wsPort: gw.port,
      forceTLS: false,
      enabledTransports: ["ws"],
      disableStats: true,
      channelAuthorization: { customHandler: ({ socketId, channelName }, cb) => cb(null, sdk.authorizeChannel(socketId, channelName)) },
    });
    try {
      await h.eventually(() => client.connection.state === "connected", { what: "pusher-js connected" });
      const subscribed = new Promise((resolve) => client.subscribe("private-x").bind("pusher:subscription_succeeded", resolve));
      await subscribed;
      await sdk.trigger("private-x", "e", { a: 1 });
      const wrong = new PusherSdk({ appId: APP.id, key: APP.key, secret: "wrong-" + APP.secret, host: "127.0.0.1", port: String(gw.port), useTLS: false });
      await assert.rejects(wrong.trigger("private-x", "e", {}), (e) => e.status === 401);
    } finally {
      client.disconnect();
    }
    await h.sentinel(gw, s);
    await h.sleep(200);
    const log = gw.logs();
    assert.ok(log.split("\n").length > 100, "the log is at trace level");
    const jwtSignature = tok.split(".")[2];
    for (const [what, secret] of [
      ["the API key", API_KEY],
      ["a wrong API key", WRONG_KEY],
      ["the JWT secret", JWT_SECRET],
      ["a connection token's signature", jwtSignature],
      ["the Pusher app secret", APP.secret],
    ]) {
      const at = log.indexOf(secret);
      assert.equal(at, -1, `${what} is in the log: …${log.slice(Math.max(0, at - 300), at + 100)}…`);
    }
  });
});

describe("secrets from files (…_FILE)", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pushgate-secrets-"));
  const write = (name, text) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, text, { mode: 0o600 });
    return p;
  };
  after(async () => {
    await h.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test("API keys, the JWT secret and the Pusher apps are read from files, trailing newline trimmed", async () => {
    const APP = { id: "9", key: "file-key", secret: "file-pusher-secret" };
    const gw = await h.startGateway({
      PUSHGATE_API_KEYS_FILE: write("keys", "file-key-1\nfile-key-2\n"),
      PUSHGATE_JWT_SECRET_FILE: write("jwt", "file-jwt-secret\n"),
      PUSHGATE_PUSHER_APPS_FILE: write("pusher", `${APP.id}:${APP.key}:${APP.secret}\n`),
    });
    gw.key = "file-key-2";
    assert.equal((await h.api(gw, "GET", "/v1/nodes")).status, 200);
    assert.equal((await h.api(gw, "GET", "/v1/nodes", undefined, { key: "file-key-1" })).status, 200);
    assert.equal((await h.api(gw, "GET", "/v1/nodes", undefined, { key: "file-key" })).status, 401);
    const s = await h.connect(gw, { auth: { token: h.token({ sub: "f", secret: "file-jwt-secret" }) } });
    assert.equal((await h.api(gw, "GET", `/v1/sockets/${s.id}`)).body.user, "f");
    const sdk = new PusherSdk({ appId: APP.id, key: APP.key, secret: APP.secret, host: "127.0.0.1", port: String(gw.port), useTLS: false });
    await sdk.trigger("news", "e", {});
  });

  test("an unreadable file, an empty one, or a secret given both ways stops the process with a message naming the setting", async () => {
    const missing = path.join(dir, "nope");
    await assert.rejects(h.startGateway({ PUSHGATE_JWT_SECRET_FILE: missing }), (e) => {
      assert.match(e.message, /exited \(code 1/);
      assert.match(e.message, /PUSHGATE_JWT_SECRET_FILE: cannot read .*nope/);
      assert.match(e.message, /No such file or directory/);
      return true;
    });
    await assert.rejects(h.startGateway({ PUSHGATE_API_KEYS_FILE: write("empty", "\n") }), /PUSHGATE_API_KEYS_FILE: the file is empty/);
    await assert.rejects(
      h.startGateway({ PUSHGATE_API_KEYS: "hunter2", PUSHGATE_API_KEYS_FILE: write("k", "k\n") }),
      (e) => {
        assert.match(e.message, /set either PUSHGATE_API_KEYS or PUSHGATE_API_KEYS_FILE, not both/);
        assert.doesNotMatch(e.message, /hunter2/);
        return true;
      }
    );
  });
});
