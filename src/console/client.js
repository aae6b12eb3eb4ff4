// pushgate test client (/console/client): a Socket.IO v4 client in a page, to see what
// a connection receives and to ack it on demand.
//
// It speaks Engine.IO 4 / Socket.IO 5 over one WebSocket itself (about a hundred lines
// below) instead of loading socket.io-client: nothing comes from a CDN, no third-party
// bundle is vendored into the binary (and kept up to date), and what it sends is plain
// to read here. It covers what the console needs: the handshake with `auth.token`,
// pings, events (binary attachments shown by size), acks both ways, connect errors
// and disconnects. No long-polling, no reconnection: press Connect again.
"use strict";

const TOKEN_STORAGE = "pushgate.token";
const LOG_LIMIT = 500;

const $ = (id) => document.getElementById(id);

// Socket.IO packet types.
const CONNECT = 0;
const DISCONNECT = 1;
const EVENT = 2;
const ACK = 3;
const CONNECT_ERROR = 4;
const BINARY_EVENT = 5;
const BINARY_ACK = 6;

/** `<type>[<n>-][<nsp>,][<id>][<json>]` → {type, attachments, nsp, id, data}. */
function decodePacket(text) {
  let i = 0;
  const type = Number(text[i++]);
  let attachments = 0;
  if (type === BINARY_EVENT || type === BINARY_ACK) {
    const dash = text.indexOf("-", i);
    attachments = Number(text.slice(i, dash));
    i = dash + 1;
  }
  let nsp = "/";
  if (text[i] === "/") {
    const comma = text.indexOf(",", i);
    nsp = comma < 0 ? text.slice(i) : text.slice(i, comma);
    i = comma < 0 ? text.length : comma + 1;
  }
  let j = i;
  while (j < text.length && text[j] >= "0" && text[j] <= "9") j++;
  const id = j > i ? Number(text.slice(i, j)) : null;
  const data = j < text.length ? JSON.parse(text.slice(j)) : undefined;
  return { type, attachments, nsp, id, data };
}

/** A Socket.IO packet inside an Engine.IO message (`4`). */
function encodePacket(type, nsp, id, data) {
  return `4${type}${nsp === "/" ? "" : `${nsp},`}${id ?? ""}${data === undefined ? "" : JSON.stringify(data)}`;
}

/** Replaces `{"_placeholder": true, "num": n}` with a note of the attachment's size. */
function fillPlaceholders(value, buffers) {
  if (Array.isArray(value)) return value.map((v) => fillPlaceholders(v, buffers));
  if (value && typeof value === "object") {
    if (value._placeholder === true && typeof value.num === "number") {
      const b = buffers[value.num];
      return `<binary, ${b ? b.byteLength : "?"} bytes>`;
    }
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fillPlaceholders(v, buffers)]));
  }
  return value;
}

// ------------------------------------------------------------------ connection

let ws = null;
let nsp = "/";
let socketId = null;
let nextAck = 1;
const pendingAcks = new Map(); // our emits' ack ids → callbacks
let binary = null; // a binary packet waiting for its attachments

function status(state, text) {
  $("status").className = `status ${state}`;
  $("status").textContent = text;
}

function connected(on) {
  $("connect-button").disabled = on;
  $("disconnect-button").disabled = !on;
  $("join-button").disabled = !on;
  $("leave-button").disabled = !on;
}

function connect(ev) {
  ev.preventDefault();
  if (ws) ws.close();
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem(TOKEN_STORAGE, token);
  else sessionStorage.removeItem(TOKEN_STORAGE);
  nsp = $("namespace").value.trim() || "/";
  socketId = null;
  showIdentity(token);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const sock = new WebSocket(`${scheme}://${location.host}/socket.io/?EIO=4&transport=websocket`);
  sock.binaryType = "arraybuffer";
  ws = sock;
  status("wait", "connecting…");
  $("connect-button").disabled = true;
  sock.onmessage = (m) => {
    if (sock === ws) onEngineMessage(sock, m.data, token);
  };
  sock.onclose = (e) => {
    if (sock !== ws) return;
    ws = null;
    connected(false);
    status("off", `disconnected (WebSocket close ${e.code}${e.reason ? `: ${e.reason}` : ""})`);
    log("closed", `transport closed, code ${e.code}`);
  };
  sock.onerror = () => log("error", "WebSocket error (is the gateway reachable?)");
}

function disconnect() {
  if (!ws) return;
  ws.send(encodePacket(DISCONNECT, nsp));
  ws.close(1000);
}

function onEngineMessage(sock, data, token) {
  if (binary) {
    binary.buffers.push(data);
    if (binary.buffers.length === binary.packet.attachments) {
      const { packet, buffers } = binary;
      binary = null;
      onPacket(sock, packet, buffers);
    }
    return;
  }
  if (typeof data !== "string") return;
  switch (data[0]) {
    case "0": // Engine.IO open: join the namespace, with the token as `auth`
      sock.send(encodePacket(CONNECT, nsp, null, token ? { token } : undefined));
      break;
    case "2": // ping → pong
      sock.send("3" + data.slice(1));
      break;
    case "1":
      log("closed", "the server closed the session");
      break;
    case "4": {
      let packet;
      try {
        packet = decodePacket(data.slice(1));
      } catch (e) {
        log("error", `undecodable packet ${data.slice(0, 80)}: ${e.message}`);
        return;
      }
      if (packet.attachments > 0) binary = { packet, buffers: [] };
      else onPacket(sock, packet, []);
      break;
    }
  }
}

function onPacket(sock, p, buffers) {
  if (p.nsp !== nsp) return;
  switch (p.type) {
    case CONNECT:
      socketId = p.data && p.data.sid;
      connected(true);
      status("on", `connected as ${socketId}`);
      $("identity").dataset.socket = socketId || "";
      log("connect", `socket ${socketId}`);
      break;
    case CONNECT_ERROR:
      status("off", `refused: ${p.data && p.data.message}`);
      log("connect_error", JSON.stringify(p.data));
      sock.close();
      break;
    case DISCONNECT:
      status("off", "disconnected by the server");
      log("disconnect", "the server disconnected this socket");
      sock.close();
      break;
    case EVENT:
    case BINARY_EVENT: {
      const [name, ...args] = Array.isArray(p.data) ? fillPlaceholders(p.data, buffers) : ["?"];
      const acking = p.id !== null && $("ack").checked;
      if (acking) sock.send(encodePacket(ACK, nsp, p.id, []));
      const note = p.id === null ? "" : acking ? `acked (ack id ${p.id})` : `ack requested (id ${p.id}), not sent`;
      logReceived(name, args, note, acking);
      break;
    }
    case ACK:
    case BINARY_ACK: {
      const cb = pendingAcks.get(p.id);
      pendingAcks.delete(p.id);
      if (cb) cb(...(Array.isArray(p.data) ? p.data : []));
      break;
    }
  }
}

/** Emits `event` with `args` and an ack callback. */
function emit(event, args, cb) {
  if (!ws) return;
  const id = nextAck++;
  pendingAcks.set(id, cb);
  ws.send(encodePacket(EVENT, nsp, id, [event, ...args]));
}

function roomOp(op) {
  const room = $("room").value.trim();
  if (!room) return;
  emit(`pushgate:${op}`, [room], (res) => {
    log(op, res && res.ok ? `${op === "join" ? "joined" : "left"} ${room}` : JSON.stringify(res));
  });
}

// ------------------------------------------------------------------ display

function clock() {
  const d = new Date();
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function item(kind, cls, ...content) {
  const li = document.createElement("li");
  li.className = cls;
  li.dataset.kind = kind;
  const t = document.createElement("time");
  t.textContent = clock();
  const k = document.createElement("span");
  k.className = "type";
  k.textContent = kind;
  const text = document.createElement("span");
  text.className = "text";
  text.append(...content);
  li.append(t, k, text);
  const logEl = $("log");
  logEl.prepend(li);
  while (logEl.children.length > LOG_LIMIT) logEl.lastElementChild.remove();
  return li;
}

function log(kind, text) {
  item(kind, "ev-ready", text);
}

function logReceived(name, args, note, acked) {
  const code = document.createElement("code");
  code.textContent = args.length === 0 ? "" : JSON.stringify(args.length === 1 ? args[0] : args);
  const extra = document.createElement("span");
  extra.className = acked ? "acked" : "muted";
  extra.textContent = note ? ` · ${note}` : "";
  const li = item(name, "ev-pushed received", code, extra);
  li.dataset.event = name;
  if (acked) li.dataset.acked = "true";
}

function showIdentity(token) {
  const out = $("identity");
  if (!token) {
    out.textContent = "anonymous";
    return;
  }
  try {
    const b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64));
    const parts = [`user ${claims.sub ?? "?"}`];
    if (claims.rooms) parts.push(`rooms ${claims.rooms.join(", ")}`);
    if (claims.join) parts.push(`may join ${claims.join.join(", ")}`);
    if (claims.exp) parts.push(`expires ${new Date(claims.exp * 1000).toLocaleString()}`);
    out.textContent = parts.join(" · ");
  } catch {
    out.textContent = "the token is not a readable JWT (the gateway will say why it refuses it)";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const fromFragment = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromFragment !== null) {
    sessionStorage.setItem(TOKEN_STORAGE, fromFragment);
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("token").value = sessionStorage.getItem(TOKEN_STORAGE) || "";
  $("connect-form").addEventListener("submit", connect);
  $("disconnect-button").addEventListener("click", disconnect);
  $("room-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    roomOp("join");
  });
  $("leave-button").addEventListener("click", () => roomOp("leave"));
});
