"use strict";
// Pusher Channels helpers shared by the Pusher suites: the real `pusher-js` client (its
// Node build) authorized by the real `pusher` server SDK, raw protocol-7 WebSockets,
// signed HTTP API URLs, and a webhook receiver that verifies signatures with the SDK.
const crypto = require("node:crypto");
const http = require("node:http");
const WebSocket = require("ws");
const PusherJs = require("pusher-js");
const PusherSdk = require("pusher");
const h = require("./harness");

const APP = { id: "42", key: "app-key", secret: "app-secret" };
const OTHER = { id: "7", key: "other-key", secret: "other-secret" };
const APPS = `${APP.id}:${APP.key}:${APP.secret},${OTHER.id}:${OTHER.key}:${OTHER.secret}`;
// A 32-byte master key for encrypted channels (the SDK derives each channel's key).
const MASTER_KEY = Buffer.alloc(32, 7).toString("base64");

/** The server SDK pointed at `gw` (`app` defaults to the first app). */
function sdk(gw, app = APP, extra = {}) {
  return new PusherSdk({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: "127.0.0.1",
    port: String(gw.port),
    useTLS: false,
    encryptionMasterKeyBase64: MASTER_KEY,
    ...extra,
  });
}

const clients = new Set();
/** Disconnects every pusher-js client made by `pjs` (use in `afterEach`). */
function closePusherClients() {
  for (const c of clients) c.disconnect();
  clients.clear();
}

/**
 * A pusher-js client of `gw`, authorizing channels and sign-ins with the SDK (so the
 * signatures are the SDK's). `member` is the presence data (`{user_id, user_info}`)
 * the authorizer signs for presence channels; `auth` may replace its answer.
 */
function pjs(gw, { app = APP, user = { id: "u1" }, member, auth, ...opts } = {}) {
  const server = sdk(gw, app);
  const client = new PusherJs(app.key, {
    cluster: "mt1",
    wsHost: "127.0.0.1",
    wsPort: gw.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) =>
        cb(
          null,
          auth
            ? auth(socketId, channelName)
            : channelName.startsWith("presence-") && member
              ? server.authorizeChannel(socketId, channelName, member)
              : server.authorizeChannel(socketId, channelName)
        ),
    },
    userAuthentication: {
      customHandler: ({ socketId }, cb) => cb(null, server.authenticateUser(socketId, user)),
    },
    ...opts,
  });
  client.errors = [];
  client.connection.bind("error", (e) => client.errors.push(e));
  clients.add(client);
  return client;
}

/** Resolves once `client` is connected. */
function pusherConnected(client) {
  return h.eventually(() => client.connection.state === "connected" && client, { what: "pusher-js connected" });
}

/** Subscribes and resolves `{channel, ok}` (false on pusher:subscription_error, with `error`). */
function subscribe(client, name) {
  const channel = client.subscribe(name);
  return new Promise((resolve) => {
    channel.bind("pusher:subscription_succeeded", () => resolve({ channel, ok: true }));
    channel.bind("pusher:subscription_error", (error) => resolve({ channel, ok: false, error }));
  });
}

/** Records every `event` on a pusher-js channel (or the client, or `client.user`). */
function recordOn(bindable, event) {
  const items = [];
  bindable.bind(event, (data) => items.push(data));
  return items;
}

/** The pushgate socket id of a Pusher socket id (the node id is two digits a character). */
function pushgateId(pusherId) {
  const ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-";
  const [codes, digits] = pusherId.split(".");
  let node = "";
  for (let i = 0; i < codes.length; i += 2) node += ALPHABET[Number(codes.slice(i, i + 2)) - 10];
  return `${node}.${digits}`;
}

/** A raw WebSocket on `/app/<key>?<query>` with a queue of parsed frames. */
async function raw(gw, { key = APP.key, query = "protocol=7&client=js&version=8.6.0&flash=false" } = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/app/${key}?${query}`);
  const frames = [];
  ws.frames = frames;
  ws.closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
  ws.on("message", (m) => frames.push(JSON.parse(m.toString())));
  await new Promise((resolve, reject) => {
    ws.on("open", resolve);
    ws.on("error", reject);
  });
  ws.next = (pred = () => true, what = "a frame") =>
    h.eventually(
      () => {
        const i = frames.findIndex(pred);
        return i >= 0 && frames.splice(i, 1)[0];
      },
      { what }
    );
  ws.sendJson = (o) => ws.send(typeof o === "string" ? o : JSON.stringify(o));
  return ws;
}

/** Signs a Pusher HTTP API request as the SDKs do (to send one the SDK would not). */
function signedUrl(gw, method, path, body, { app = APP, timestamp = Math.floor(Date.now() / 1000) } = {}) {
  const params = { auth_key: app.key, auth_timestamp: String(timestamp), auth_version: "1.0" };
  if (body) params.body_md5 = crypto.createHash("md5").update(body).digest("hex");
  const query = Object.keys(params)
    .sort()
    .map((k) => `${k}=${params[k]}`)
    .join("&");
  const sig = crypto.createHmac("sha256", app.secret).update(`${method}\n${path}\n${query}`).digest("hex");
  return `${gw.url}${path}?${query}&auth_signature=${sig}`;
}

/**
 * A webhook receiver on a free loopback port: every request is checked with the SDK's
 * `webhook()` (key, signature, JSON body) and its events kept in `events` (in arrival
 * order, with the request they came in). `fail(n)` answers the next n requests 500
 * (their events are not kept: Pusher's receivers do not act on a request they
 * refused). `url` is what PUSHGATE_PUSHER_WEBHOOKS names.
 */
async function webhookReceiver(app = APP) {
  const verifier = new PusherSdk({ appId: app.id, key: app.key, secret: app.secret, host: "127.0.0.1" });
  const r = { events: [], requests: 0, refused: 0, invalid: [], failNext: 0 };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      r.requests++;
      const rawBody = Buffer.concat(chunks).toString("utf8");
      const hook = verifier.webhook({ headers: req.headers, rawBody });
      if (!hook.isValid()) {
        r.invalid.push({ headers: req.headers, rawBody });
        res.writeHead(401).end();
        return;
      }
      if (r.failNext > 0) {
        r.failNext--;
        r.refused++;
        res.writeHead(500).end("try again");
        return;
      }
      for (const e of hook.getEvents()) r.events.push({ ...e, time_ms: hook.getData().time_ms });
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  r.url = `http://127.0.0.1:${server.address().port}/pusher/webhooks`;
  r.fail = (n) => (r.failNext = n);
  r.close = () => new Promise((resolve) => server.close(resolve));
  /** The events named `name` (on `channel`, if given). */
  r.named = (name, channel) => r.events.filter((e) => e.name === name && (channel === undefined || e.channel === channel));
  return r;
}

module.exports = {
  APP,
  OTHER,
  APPS,
  MASTER_KEY,
  sdk,
  pjs,
  closePusherClients,
  pusherConnected,
  subscribe,
  recordOn,
  pushgateId,
  raw,
  signedUrl,
  webhookReceiver,
};
