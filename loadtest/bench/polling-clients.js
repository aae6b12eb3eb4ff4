"use strict";
// Holds N socket.io-client clients connected to one URL, polling-only (or
// WebSocket-only with TRANSPORT=websocket), for loadtest/bench/polling-rss.sh. Prints "connected <n>" once every client is
// connected (or "failed <n> <first error>"), then "status <connected>" every
// 5 s, and runs until killed.
//
//   node polling-clients.js URL N [RAMP_PER_SEC] [TRANSPORT]
//
// socket.io-client is taken from tests/node/node_modules (`npm ci` there).
const path = require("node:path");

const root = path.resolve(__dirname, "../..");
const { io } = require(require.resolve("socket.io-client", { paths: [path.join(root, "tests/node")] }));

const [url, nText, rampText, transport = "polling"] = process.argv.slice(2);
const n = Number(nText);
const ramp = Number(rampText || 500);
if (!url || !(n > 0)) {
  console.error("usage: node polling-clients.js URL N [RAMP_PER_SEC] [polling|websocket]");
  process.exit(2);
}

const sockets = [];
let connected = 0;
let failed = 0;
let firstError = "";
let reported = false;

function report() {
  if (reported || connected + failed < n) return;
  reported = true;
  console.log(failed ? `failed ${failed} ${firstError}` : `connected ${connected}`);
}

function open(i) {
  const s = io(url, { transports: [transport], reconnection: false, forceNew: true, timeout: 20_000 });
  let counted = false;
  s.on("connect", () => {
    if (!counted) {
      counted = true;
      connected++;
      report();
    }
  });
  s.on("connect_error", (e) => {
    if (!counted) {
      counted = true;
      failed++;
      firstError ||= `client ${i}: ${e.message}`;
      report();
    }
  });
  s.on("disconnect", (reason) => {
    connected--;
    console.log(`disconnect ${reason}`);
  });
  sockets.push(s);
}

let i = 0;
const batch = Math.max(1, Math.round(ramp / 10));
const timer = setInterval(() => {
  for (let k = 0; k < batch && i < n; k++) open(i++);
  if (i >= n) clearInterval(timer);
}, 100);
setInterval(() => console.log(`status ${connected}`), 5000);
process.on("SIGTERM", () => {
  for (const s of sockets) s.close();
  process.exit(0);
});
