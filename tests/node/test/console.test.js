"use strict";
// The dev console in a real browser (Debian's Chromium, driven by puppeteer-core) against
// the real gateway: /console pushes from its form to /console/client, which acks; the
// report says `acked: 1` and the event log shows the connect, the push and its report.
// Then the event stream (GET /v1/events) across a two-node cluster, and a reader that
// stops reading, which is dropped without holding up a single push.
//
// Set PUSHGATE_CONSOLE_SCREENSHOT=<file.png> to keep a screenshot of the console (the one
// in docs/console.png is made this way).
const { describe, test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const net = require("node:net");
const h = require("../harness");

const KEY = "console-test-key";

describe("dev console in headless Chromium", () => {
  let gw, browser;

  before(async () => {
    gw = await h.startGateway({ PUSHGATE_API_KEYS: KEY, PUSHGATE_JWT_SECRET: h.SECRET });
    gw.key = KEY;
    browser = await h.launchBrowser();
  });
  after(async () => {
    if (browser) await browser.cleanup();
    h.closeEventStreams();
    await h.cleanup();
  });

  /** A page whose console errors and failed requests fail the test. */
  async function open(url) {
    const page = await browser.newPage();
    page.problems = [];
    page.on("pageerror", (e) => page.problems.push(`page error: ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error") page.problems.push(`console error: ${m.text()}`);
    });
    page.on("requestfailed", (r) => {
      // The event stream is aborted on purpose when the page goes away.
      if (!r.url().endsWith("/v1/events")) page.problems.push(`request failed: ${r.url()}`);
    });
    page.requests = [];
    page.on("request", (r) => page.requests.push(r.url()));
    page.sent = []; // what went on the wire: fragments never do
    page.on("request", (r) => page.sent.push(r.url().split("#")[0]));
    await page.setViewport({ width: 1280, height: 860 });
    await page.goto(url, { waitUntil: "domcontentloaded" });
    return page;
  }

  const text = (page, selector) => page.$eval(selector, (e) => e.textContent);

  /** `page.waitForFunction`, whose timeout error shows what `shown` holds then. */
  async function until(page, fn, shown, timeout = 10_000) {
    try {
      await page.waitForFunction(fn, { timeout, polling: 100 });
    } catch (e) {
      const now = await page.$eval(shown, (el) => el.textContent.replace(/\s+/g, " ")).catch((x) => x.message);
      throw new Error(`${e.message}; ${shown} shows: ${now}`);
    }
  }

  test("push from the form to the client page, which acks: the report says acked: 1 and the log shows it all", { timeout: 60_000 }, async () => {
    const consolePage = await open(`${gw.url}/console#key=${KEY}`);
    await until(consolePage, () => document.querySelector("#stream-status").textContent.includes("live"), "#stream-status");
    assert.ok(!consolePage.url().includes(KEY), `the key left the address bar: ${consolePage.url()}`);

    const clientPage = await open(`${gw.url}/console/client`);
    await clientPage.type("#token", h.token({ sub: "alice", rooms: ["lobby"] }));
    await clientPage.click("#ack");
    await clientPage.click("#connect-button");
    await until(clientPage, () => document.querySelector("#status").textContent.startsWith("connected as "), "#status");
    const sid = (await text(clientPage, "#status")).slice("connected as ".length);
    assert.match(sid, /\./, `a pushgate socket id: ${sid}`);

    // The connect, in the log, with its user and frontend.
    const connectLine = await consolePage.waitForSelector(`#log li[data-type="connected"][data-socket="${sid}"]`, {
      timeout: 10_000,
    });
    const connectText = await connectLine.evaluate((e) => e.textContent);
    assert.match(connectText, /user alice/);
    assert.match(connectText, /socketio · websocket/);
    assert.match(connectText, /rooms lobby/);

    // The cluster table counts it, per frontend too.
    await until(
      consolePage,
      () => {
        const row = document.querySelector("#nodes tbody tr");
        const cells = row ? [...row.cells].map((c) => c.textContent) : [];
        const heads = [...document.querySelectorAll("#nodes thead th")].map((c) => c.textContent);
        return cells[1] === "1" && cells[heads.indexOf("socketio")] === "1";
      },
      "#nodes"
    );

    // Push from the form: room lobby, ack within 5 s, wait for the report.
    await consolePage.bringToFront();
    await consolePage.select("#push-kind", "room");
    await consolePage.type("#push-target", "lobby");
    await consolePage.$eval("#push-event", (e) => (e.value = ""));
    await consolePage.type("#push-event", "greeting");
    await consolePage.$eval("#push-data", (e) => (e.value = ""));
    await consolePage.type("#push-data", '{"text": "hello from the console"}');
    await consolePage.type("#push-ack", "5000");
    await consolePage.click("#push-send");

    // The client page got it and acked it.
    const received = await clientPage.waitForSelector('#log li[data-event="greeting"]', { timeout: 10_000 });
    const receivedText = await received.evaluate((e) => e.textContent);
    assert.match(receivedText, /"text":"hello from the console"/);
    assert.equal(await received.evaluate((e) => e.dataset.acked), "true", receivedText);

    // The form shows the report: one socket, delivered, acked.
    await until(consolePage, () => document.querySelector('#push-report [data-field="acked"]'), "#push-result");
    assert.equal(await text(consolePage, '#push-report [data-field="acked"]'), "acked: 1");
    assert.equal(await text(consolePage, '#push-report [data-field="delivered"]'), "delivered: 1");
    assert.equal(await text(consolePage, '#push-report [data-field="timed_out"]'), "timed_out: 0");
    const status = await text(consolePage, "#push-status");
    const pushId = /push ([\w.]+)/.exec(status)[1];

    // The log shows the push and its final report.
    const pushed = await consolePage.waitForSelector(`#log li[data-type="pushed"][data-push="${pushId}"]`, { timeout: 10_000 });
    assert.match(await pushed.evaluate((e) => e.textContent), /"greeting" → room lobby · ack 5000 ms/);
    const report = await consolePage.waitForSelector(`#log li[data-type="report"][data-push="${pushId}"]`, { timeout: 10_000 });
    assert.match(await report.evaluate((e) => e.textContent), /acked: 1/);

    // Nothing came from another host, and the pages had no errors.
    for (const page of [consolePage, clientPage]) {
      for (const url of page.requests) {
        assert.ok(url.startsWith(gw.url) || url.startsWith("data:"), `a request to another host: ${url}`);
      }
      assert.deepEqual(page.problems, []);
    }
    // The key travelled in a header, never in a URL sent to the server.
    assert.ok(consolePage.sent.some((u) => u.endsWith("/v1/events")));
    assert.ok(!consolePage.sent.some((u) => u.includes(KEY)), `the key appeared in a URL: ${consolePage.sent}`);

    if (process.env.PUSHGATE_CONSOLE_SCREENSHOT) {
      await consolePage.screenshot({ path: process.env.PUSHGATE_CONSOLE_SCREENSHOT });
    }

    // Disconnecting shows up too.
    await clientPage.bringToFront();
    await clientPage.click("#disconnect-button");
    const gone = await consolePage.waitForSelector(`#log li[data-type="disconnected"][data-socket="${sid}"]`, {
      timeout: 10_000,
    });
    assert.match(await gone.evaluate((e) => e.textContent), /client/);
    await clientPage.close();
    await consolePage.close();
  });

  test("a wrong key is shown as the API's error, and nothing is streamed", { timeout: 30_000 }, async () => {
    const page = await open(`${gw.url}/console#key=not-the-key`);
    await until(page, () => document.querySelector("#stream-status").textContent.includes("unauthorized"), "#stream-status");
    assert.match(await text(page, "#nodes-status"), /401 unauthorized/);
    await page.close();
  });

  test("GET /v1/events takes the API key like every /v1 route", async () => {
    h.assertError(await h.api(gw, "GET", "/v1/events", undefined, { key: null }), 401);
    h.assertError(await h.api(gw, "GET", "/v1/events", undefined, { key: "wrong" }), 401);
    const s = await h.eventStream(gw);
    assert.equal(s.contentType, "text/event-stream");
    s.close();
  });
});

describe("event stream across a cluster", () => {
  let a, b;

  before(async () => {
    ({ nodes: [a, b] } = await h.startCluster(["ea", "eb"], { PUSHGATE_API_KEYS: KEY }));
    a.key = b.key = KEY;
  });
  after(async () => {
    h.closeEventStreams();
    await h.cleanupCluster();
  });

  test("a reader on node A sees a connect, a push and its report on node B; nothing is built before anyone reads", { timeout: 60_000 }, async () => {
    // Before any reader: a connect on B builds no event.
    const early = await h.connect(b, { auth: { token: h.token({ sub: "early" }) }, transports: ["websocket"] });
    assert.ok(early.connected);
    assert.equal(await h.metric(b, "pushgate_events_total", { type: "connected" }), 0);

    const reader = await h.eventStream(a);
    assert.equal(reader.events[0].cluster, true);

    const bob = await h.connect(b, { auth: { token: h.token({ sub: "bob", rooms: ["team"] }) }, transports: ["websocket"] });
    const connected = await reader.next((e) => e.type === "connected" && e.socket === bob.id);
    assert.equal(connected.node, "eb");
    assert.equal(connected.user, "bob");
    assert.equal(connected.frontend, "socketio");
    assert.deepEqual(connected.rooms, ["team"]);

    // A push accepted on B, with acks from B's client: both of B's events reach A.
    bob.on("news", (_data, ack) => ack && ack());
    const res = await h.push(b, { to: { room: "team" }, event: "news", data: 1, ack: { timeout_ms: 5000 }, wait: true });
    assert.equal(res.body.report.acked, 1);
    const pushed = await reader.next((e) => e.type === "pushed" && e.id === res.body.id);
    assert.equal(pushed.node, "eb");
    assert.deepEqual(pushed.to, { room: "team" });
    const report = await reader.next((e) => e.type === "report" && e.id === res.body.id);
    assert.deepEqual(report.report, res.body.report);

    // A's own events arrive once, not once more through Redis.
    const carol = await h.connect(a, { auth: { token: h.token({ sub: "carol" }) }, transports: ["websocket"] });
    await reader.next((e) => e.type === "connected" && e.socket === carol.id);
    const bobId = bob.id; // socket.io-client forgets it on close
    bob.close();
    const left = await reader.next((e) => e.type === "disconnected" && e.socket === bobId);
    assert.equal(left.reason, "client");
    assert.equal(reader.events.filter((e) => e.type === "connected" && e.socket === carol.id).length, 1);

    // Joins through the API and a kick from node A of a socket on node B, with its reason.
    const joined = await h.api(a, "POST", "/v1/rooms/ops/join", { sockets: [early.id] });
    assert.equal(joined.body.sockets, 1);
    const join = await reader.next((e) => e.type === "joined" && e.socket === early.id);
    assert.deepEqual([join.node, join.room, join.user], ["eb", "ops", "early"]);
    const earlyId = early.id;
    assert.equal((await h.api(a, "DELETE", `/v1/sockets/${earlyId}`)).status, 200);
    const kicked = await reader.next((e) => e.type === "disconnected" && e.socket === earlyId);
    assert.equal(kicked.reason, "kicked");

    await h.metricAtLeast(b, "pushgate_bus_messages_total", { direction: "out", kind: "events" }, 1);
    // The console's cluster table: every node, with its connections per frontend.
    const nodes = (await h.api(a, "GET", "/v1/nodes")).body.nodes;
    assert.deepEqual(nodes.map((n) => n.id), ["ea", "eb"]);
    for (const n of nodes) assert.equal(typeof n.frontends.socketio, "number", JSON.stringify(n));
    await h.metricAtLeast(a, "pushgate_events_readers", {}, 1);
    reader.close();
    await h.eventually(async () => (await h.metric(a, "pushgate_events_readers")) === 0, {
      what: "the reader gauge back to 0",
    });

    // With nobody reading, B stops: the next batch it publishes reaches no node, and
    // from then on its events are not even built.
    const published = () => h.metric(b, "pushgate_bus_messages_total", { direction: "out", kind: "events" });
    await h.eventually(async () => (await h.metric(a, "pushgate_bus_subscriptions", { kind: "events" })) === 1, {
      what: "node A following the watch channel only",
    });
    const before = await published();
    const d1 = await h.connect(b, { auth: { token: h.token({ sub: "dave" }) }, transports: ["websocket"] });
    await h.eventually(async () => (await published()) > before, { what: "B publishing one more batch" });
    const built = await h.metric(b, "pushgate_events_total", { type: "connected" });
    const d2 = await h.connect(b, { auth: { token: h.token({ sub: "dave" }) }, transports: ["websocket"] });
    assert.ok(d1.connected && d2.connected);
    assert.equal(await h.metric(b, "pushgate_events_total", { type: "connected" }), built, "an event built with nobody reading");
  });
});

describe("a slow event stream reader", () => {
  let gw;

  before(async () => {
    gw = await h.startGateway({ PUSHGATE_API_KEYS: KEY });
    gw.key = KEY;
  });
  after(async () => {
    h.closeEventStreams();
    await h.cleanup();
  });

  /** A raw HTTP reader of /v1/events that stops reading once the stream is ready. */
  function stalledReader() {
    return new Promise((resolve, reject) => {
      const sock = net.connect(gw.port, "127.0.0.1");
      let head = "";
      sock.setEncoding("utf8");
      sock.on("error", reject);
      sock.on("connect", () =>
        sock.write(`GET /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${KEY}\r\nconnection: close\r\n\r\n`)
      );
      const onData = (chunk) => {
        head += chunk;
        if (head.includes('"type":"ready"')) {
          sock.off("data", onData);
          sock.pause();
          resolve({ sock, head });
        }
      };
      sock.on("data", onData);
    });
  }

  test("is dropped (counted, its stream ended with a `dropped` event) while every push is answered", { timeout: 120_000 }, async (t) => {
    const { sock, head } = await stalledReader();
    assert.match(head, /^HTTP\/1\.1 200/);
    const good = await h.eventStream(gw);
    const client = await h.connect(gw, { transports: ["websocket"] });
    assert.equal(await h.metric(gw, "pushgate_events_readers"), 2);

    // Pushes to many users make large events (their `to` lists); keep pushing until
    // the stalled reader's queue is full. Every push must be answered meanwhile.
    const users = Array.from({ length: 400 }, (_, i) => `user-${String(i).padStart(12, "0")}`);
    const batch = { pushes: Array.from({ length: 50 }, () => ({ to: { users }, event: "filler" })) };
    let pushes = 0;
    for (let round = 0; round < 400; round++) {
      const res = await h.api(gw, "POST", "/v1/push/batch", batch);
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.results.length, 50);
      pushes += 50;
      if ((await h.metric(gw, "pushgate_events_readers_dropped_total", { reason: "slow" })) >= 1) break;
    }
    assert.equal(await h.metric(gw, "pushgate_events_readers_dropped_total", { reason: "slow" }), 1, `after ${pushes} pushes`);
    t.diagnostic(`dropped after ${pushes} pushes`);
    assert.equal(await h.metric(gw, "pushgate_events_readers"), 1, "the reader that reads is kept");

    // The gateway goes on: a push reaches the client, and the good reader sees it.
    const got = h.waitFor(client, "after");
    const res = await h.push(gw, { to: { socket: client.id }, event: "after", wait: true });
    assert.equal(res.body.report.delivered, 1);
    await got;
    await good.next((e) => e.type === "pushed" && e.id === res.body.id, 30_000);

    // The stalled reader, once it reads again, gets what the kernel held, then the
    // `dropped` event, then the end of the response.
    let rest = "";
    sock.on("data", (c) => (rest += c));
    const ended = new Promise((resolve) => sock.on("end", resolve));
    sock.resume();
    await h.within(30_000, ended, "the dropped reader's response ending");
    assert.match(rest, /"type":"dropped","node":"[^"]+","at":\d+,"reason":"slow"/);
    assert.match(rest, /\r\n0\r\n\r\n$/, "the chunked body was terminated");
    sock.destroy();
  });
});
