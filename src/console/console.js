// pushgate dev console (/console). Plain script, no build step, no other host.
//
// Uses only the /v1 API under its key rules. The key comes from the field (kept in
// sessionStorage, so it lives as long as the tab) or from `#key=…` in the URL fragment,
// which browsers never send to a server; the fragment is removed from the address bar
// at once. The event stream is read with fetch() and a streaming body reader rather
// than EventSource, because EventSource cannot send an Authorization header and the
// key must not travel in a URL (where access logs and browser history keep it).
"use strict";

const KEY_STORAGE = "pushgate.key";
const LOG_LIMIT = 500; // entries kept in the event log
const NODES_INTERVAL_MS = 5000;
const RETRY_MS = 2000;

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ the key

let key = sessionStorage.getItem(KEY_STORAGE) || "";
{
  const fromFragment = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromFragment !== null) {
    key = fromFragment;
    sessionStorage.setItem(KEY_STORAGE, key);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function headers(extra = {}) {
  return key ? { ...extra, authorization: `Bearer ${key}` } : extra;
}

/** Calls the API; resolves {status, body} with the body parsed when it is JSON. */
async function api(method, path, body) {
  const init = { method, headers: headers(), cache: "no-store" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {}
  return { status: res.status, body: parsed };
}

/** The API's error body as one line. */
function describeError(res) {
  const e = res.body && res.body.error;
  return e ? `HTTP ${res.status} ${e.code}: ${e.message}` : `HTTP ${res.status}`;
}

// ------------------------------------------------------------------ DOM helpers

/** An element with text content only (never HTML: ids and names come from clients). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

const REPORT_FIELDS = ["sockets", "delivered", "acked", "timed_out", "failed"];

/** `sockets: 1 · delivered: 1 · acked: 1 · …` as spans. */
function reportSpans(report) {
  return REPORT_FIELDS.map((f) => {
    const n = report[f] ?? 0;
    return el("span", { class: n > 0 ? `${f} nonzero` : f, "data-field": f }, `${f}: ${n}`);
  });
}

function clock(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function uptime(startedAt) {
  let s = Math.max(0, Math.round((Date.now() - startedAt) / 1000));
  const d = Math.floor(s / 86400);
  s %= 86400;
  const h = Math.floor(s / 3600);
  s %= 3600;
  const m = Math.floor(s / 60);
  s %= 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

function targetText(to) {
  if (!to || typeof to !== "object") return "?";
  if (to.all) return "all";
  if (to.users) return `users ${to.users.join(", ")}`;
  const [kind, name] = Object.entries(to)[0] || ["?", ""];
  return `${kind} ${name}`;
}

// ------------------------------------------------------------------ cluster

let nodesTimer = null;

async function refreshNodes() {
  clearTimeout(nodesTimer);
  nodesTimer = setTimeout(refreshNodes, NODES_INTERVAL_MS);
  let res;
  try {
    res = await api("GET", "/v1/nodes");
  } catch (e) {
    $("nodes-status").textContent = `cannot reach the gateway: ${e.message}`;
    return;
  }
  if (res.status !== 200) {
    $("nodes-status").textContent = describeError(res);
    $("nodes-status").className = "error";
    return;
  }
  renderNodes(res.body.nodes || []);
}

function renderNodes(nodes) {
  const frontends = [...new Set(nodes.flatMap((n) => Object.keys(n.frontends || {})))].sort();
  const head = el("tr", {}, el("th", {}, "node"), el("th", { class: "num" }, "connections"));
  for (const f of frontends) head.append(el("th", { class: "num" }, f));
  head.append(el("th", {}, "up"));
  $("nodes").tHead.replaceChildren(head);

  const rows = nodes.map((n) => {
    const tr = el("tr", { "data-node": n.id }, el("td", {}, n.id), el("td", { class: "num" }, n.connections));
    for (const f of frontends) tr.append(el("td", { class: "num" }, (n.frontends || {})[f] ?? "–"));
    tr.append(el("td", { class: "muted" }, n.started_at ? uptime(n.started_at) : ""));
    return tr;
  });
  $("nodes").tBodies[0].replaceChildren(...rows);

  const total = el("tr", {}, el("td", {}, `${nodes.length} node${nodes.length === 1 ? "" : "s"}`));
  total.append(el("td", { class: "num" }, nodes.reduce((a, n) => a + (n.connections || 0), 0)));
  for (const f of frontends) {
    total.append(el("td", { class: "num" }, nodes.reduce((a, n) => a + ((n.frontends || {})[f] || 0), 0)));
  }
  total.append(el("td"));
  $("nodes").tFoot.replaceChildren(total);
  $("nodes-status").className = "muted";
  $("nodes-status").textContent = `updated ${clock(Date.now())}`;
}

/** A refresh soon after connects and disconnects, at most one per half second. */
let nodesSoon = null;
function refreshNodesSoon() {
  if (nodesSoon) return;
  nodesSoon = setTimeout(() => {
    nodesSoon = null;
    refreshNodes();
  }, 500);
}

// ------------------------------------------------------------------ push form

async function sendPush(ev) {
  ev.preventDefault();
  const kind = $("push-kind").value;
  const name = $("push-target").value.trim();
  const body = { event: $("push-event").value.trim() };
  if (kind === "all") body.to = { all: true };
  else if (kind === "users") body.to = { users: name.split(",").map((u) => u.trim()).filter(Boolean) };
  else body.to = { [kind]: name };
  const data = $("push-data").value.trim();
  if (data) {
    try {
      body.data = JSON.parse(data);
    } catch (e) {
      showPushResult("error", `Data is not JSON: ${e.message}`);
      return;
    }
  }
  const ack = $("push-ack").value.trim();
  if (ack) body.ack = { timeout_ms: Number(ack) };
  if ($("push-wait").checked) body.wait = true;

  $("push-send").disabled = true;
  showPushResult("wait", body.wait && body.ack ? `waiting for acks (up to ${ack} ms)…` : "sending…");
  try {
    const res = await api("POST", "/v1/push", body);
    if (res.status === 200 || res.status === 202) {
      showPushResult("ok", `HTTP ${res.status} · push ${res.body.id}`, res.body.report, res.body);
    } else {
      showPushResult("error", describeError(res), null, res.body);
    }
  } catch (e) {
    showPushResult("error", `cannot reach the gateway: ${e.message}`);
  } finally {
    $("push-send").disabled = false;
  }
}

function showPushResult(state, text, report, body) {
  $("push-result").hidden = false;
  $("push-status").textContent = text;
  $("push-status").className = state === "error" ? "error" : state === "wait" ? "muted" : "";
  $("push-report").replaceChildren(...(report ? reportSpans(report) : []));
  $("push-body").textContent = body === undefined ? "" : JSON.stringify(body, null, 2);
}

// ------------------------------------------------------------------ event log

let paused = false;
let shown = 0;
const hiddenTypes = new Set();

function describe(e) {
  switch (e.type) {
    case "connected":
      return [
        el("code", {}, e.socket),
        ` ${e.user ? `user ${e.user}` : "anonymous"} · ${e.frontend} · ${e.transport}`,
        e.namespace && e.namespace !== "/" ? ` · ${e.namespace}` : "",
        e.rooms && e.rooms.length ? ` · rooms ${e.rooms.join(", ")}` : "",
      ];
    case "disconnected":
      return [el("code", {}, e.socket), ` ${e.user ? `user ${e.user}` : "anonymous"} · ${e.frontend} · ${e.reason}`];
    case "joined":
    case "left":
      return [el("code", {}, e.socket), ` ${e.type === "joined" ? "→" : "←"} room ${e.room}`];
    case "pushed":
      return [
        `"${e.event}" → ${targetText(e.to)}`,
        e.ack_timeout_ms ? ` · ack ${e.ack_timeout_ms} ms` : "",
        e.nodes !== undefined ? ` · ${e.nodes} node${e.nodes === 1 ? "" : "s"}` : "",
        e.report ? ` · sockets ${e.report.sockets}, delivered ${e.report.delivered}` : "",
        el("span", { class: "muted" }, ` · ${e.id}`),
      ];
    case "report":
      return [el("span", { class: "report" }, ...reportSpans(e.report)), el("span", { class: "muted" }, e.id)];
    case "ready":
      return [`stream open on ${e.node}${e.cluster ? ", events of every node" : ""}`];
    case "dropped":
      return [`this reader fell ${e.queue} events behind and was dropped`];
    default:
      return [JSON.stringify(e)];
  }
}

function logEvent(e) {
  if (e.type === "connected" || e.type === "disconnected") refreshNodesSoon();
  if (paused && e.type !== "ready" && e.type !== "dropped") return;
  const li = el(
    "li",
    { class: `ev ev-${e.type}`, "data-type": e.type },
    el("time", {}, clock(e.at || Date.now())),
    el("span", { class: "node", title: e.node || "" }, e.node || ""),
    el("span", { class: "type" }, e.type),
    el("span", { class: "text" }, ...describe(e))
  );
  if (e.id) li.dataset.push = e.id;
  if (e.socket) li.dataset.socket = e.socket;
  if (hiddenTypes.has(e.type)) li.classList.add("hidden-type");
  const log = $("log");
  log.prepend(li);
  while (log.children.length > LOG_LIMIT) log.lastElementChild.remove();
  shown++;
  $("event-count").textContent = `${shown} event${shown === 1 ? "" : "s"}`;
}

function applyFilters() {
  hiddenTypes.clear();
  for (const box of document.querySelectorAll("#filters input[data-filter]")) {
    if (!box.checked) for (const t of box.dataset.filter.split(" ")) hiddenTypes.add(t);
  }
  for (const li of $("log").children) li.classList.toggle("hidden-type", hiddenTypes.has(li.dataset.type));
}

// ------------------------------------------------------------------ event stream

let stream = null; // the AbortController of the running stream
let retryTimer = null;

function streamStatus(state, text) {
  const s = $("stream-status");
  s.className = `status ${state}`;
  s.textContent = `events: ${text}`;
}

function restartStream() {
  clearTimeout(retryTimer);
  if (stream) stream.abort();
  const ctrl = new AbortController();
  stream = ctrl;
  readStream(ctrl).catch((e) => {
    if (ctrl.signal.aborted) return;
    streamStatus("off", `lost (${e.message}); retrying`);
    retryTimer = setTimeout(restartStream, RETRY_MS);
  });
}

async function readStream(ctrl) {
  streamStatus("wait", "connecting…");
  const res = await fetch("/v1/events", { headers: headers({ accept: "text/event-stream" }), signal: ctrl.signal, cache: "no-store" });
  if (!res.ok) {
    const text = await res.text();
    let body = text;
    try {
      body = JSON.parse(text);
    } catch {}
    const why = describeError({ status: res.status, body });
    // A wrong key stays wrong: wait for a new one instead of retrying.
    if (res.status === 401 || res.status === 403) {
      streamStatus("off", why);
      return;
    }
    throw new Error(why);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const frame = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const data = frame
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue; // a comment (keep-alive)
      let e;
      try {
        e = JSON.parse(data);
      } catch {
        continue;
      }
      if (e.type === "ready") streamStatus("on", `live (via ${e.node}${e.cluster ? ", cluster" : ""})`);
      if (e.type === "dropped") streamStatus("off", "dropped (too slow); reconnecting");
      logEvent(e);
    }
  }
  throw new Error("the stream ended");
}

// ------------------------------------------------------------------ start

function useKey(k) {
  key = k;
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  refreshNodes();
  restartStream();
}

document.addEventListener("DOMContentLoaded", () => {
  $("key").value = key;
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    useKey($("key").value.trim());
  });
  $("forget").addEventListener("click", () => {
    $("key").value = "";
    useKey("");
  });
  $("push-form").addEventListener("submit", sendPush);
  $("filters").addEventListener("change", applyFilters);
  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "Resume" : "Pause";
  });
  $("clear").addEventListener("click", () => {
    $("log").replaceChildren();
    shown = 0;
    $("event-count").textContent = "";
  });
  refreshNodes();
  restartStream();
});
