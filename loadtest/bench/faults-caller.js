#!/usr/bin/env node
"use strict";
// The caller of `faults.sh redis-kill`: acked pushes to random users at a steady rate,
// then every accepted push's report until it is final. No dependencies (Node 20 fetch).
//
//   node faults-caller.js --targets 127.0.0.1:3001,127.0.0.1:3002 --rate 50 --secs 40 \
//       --users 300 --ack-ms 3000 [--out result.json]
//
// Push i goes to target i mod len, to user u<random>; its report is read from the next
// target (so half are read from a node that did not accept them). Each answer is
// classified: 2xx (accepted: its id is kept), 503 (refused: fine, the caller may retry),
// other status, or no answer (network error / timeout). Every accepted push then ends as
//   acked          final, every targeted socket acked
//   not_delivered  final, some socket failed / timed out / unknown (the report says so)
//   lost           no final report within ack-ms + --final-wait-ms, or a report whose
//                  counts do not add up (sockets != delivered + failed, or delivered !=
//                  acked + timed_out + unackable), or 404.
// Every user has one socket, so a final report reaching nobody (sockets + unknown = 0)
// is counted apart as well (zero_sockets): the user was connected all along.
// Prints one JSON object (and writes it to --out); exit status 1 when anything is lost.

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, [])
);
const targets = (args.targets || "").split(",").filter(Boolean);
const rate = Number(args.rate || 50);
const secs = Number(args.secs || 40);
const users = Number(args.users || 300);
const ackMs = Number(args["ack-ms"] || 3000);
const finalWaitMs = Number(args["final-wait-ms"] || 30000);
const requestTimeoutMs = Number(args["request-timeout-ms"] || 5000);
if (!targets.length) {
  console.error("--targets host:port[,host:port...] is required");
  process.exit(2);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t0 = Date.now();
const pushes = []; // {i, at_ms, target, status, id?, error?}
const timeline = new Map(); // second -> {sent, accepted, refused, other, no_answer}
const tick = (sec, key) => {
  const row = timeline.get(sec) || { sent: 0, accepted: 0, refused: 0, other: 0, no_answer: 0 };
  row[key]++;
  timeline.set(sec, row);
};

async function send(i) {
  const target = targets[i % targets.length];
  const at = Date.now() - t0;
  const sec = Math.floor(at / 1000);
  const rec = { i, at_ms: at, target };
  pushes.push(rec);
  tick(sec, "sent");
  const body = {
    to: { user: `u${Math.floor(Math.random() * users)}` },
    event: "fault",
    data: { t: Date.now() * 1e6, seq: i },
    ack: { timeout_ms: ackMs },
  };
  try {
    const res = await fetch(`http://${target}/v1/push`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(requestTimeoutMs),
    });
    rec.status = res.status;
    const text = await res.text();
    if (res.status >= 200 && res.status < 300) {
      rec.id = JSON.parse(text).id;
      tick(sec, "accepted");
    } else if (res.status === 503) {
      tick(sec, "refused");
      rec.error = text.slice(0, 200);
    } else {
      tick(sec, "other");
      rec.error = text.slice(0, 200);
    }
  } catch (e) {
    rec.status = 0;
    rec.error = String(e && e.message ? e.message : e);
    tick(sec, "no_answer");
  }
}

// The report of one accepted push, polled until final (or the deadline).
async function finalReport(rec, deadline) {
  const reader = targets[(rec.i + 1) % targets.length];
  let last = null;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`http://${reader}/v1/pushes/${encodeURIComponent(rec.id)}`, {
        signal: AbortSignal.timeout(requestTimeoutMs),
      });
      last = { status: res.status, body: await res.text() };
      if (res.status === 200) {
        const j = JSON.parse(last.body);
        if (j.state === "final") return { report: j.report, reader };
      }
    } catch (e) {
      last = { status: 0, body: String(e) };
    }
    await sleep(250);
  }
  return { report: null, last, reader };
}

// `sockets` counts the targeted sockets on nodes that reported; `unknown` those on nodes
// that never did (README "Running a cluster"), so they are not part of `sockets`.
function classify(report) {
  const n = (k) => report[k] || 0;
  if (n("delivered") + n("failed") !== n("sockets")) return "lost";
  if (n("acked") + n("timed_out") + n("unackable") !== n("delivered")) return "lost";
  if (n("sockets") > 0 && n("acked") === n("sockets") && n("unknown") === 0) return "acked";
  return "not_delivered";
}

async function main() {
  const total = Math.round(rate * secs);
  const inflight = [];
  for (let i = 0; i < total; i++) {
    const due = t0 + (i * 1000) / rate;
    const wait = due - Date.now();
    if (wait > 0) await sleep(wait);
    inflight.push(send(i));
  }
  await Promise.all(inflight);
  const sendEndMs = Date.now() - t0;

  const accepted = pushes.filter((p) => p.id);
  const deadline = Date.now() + ackMs + finalWaitMs;
  // Read the reports a few at a time: the API's answers, not the caller, are measured.
  const outcomes = { acked: 0, not_delivered: 0, lost: 0 };
  const notDelivered = { timed_out: 0, failed: 0, unknown: 0, zero_sockets: 0 };
  const lost = [];
  let next = 0;
  async function reader() {
    while (next < accepted.length) {
      const rec = accepted[next++];
      const { report, last, reader } = await finalReport(rec, deadline);
      if (!report) {
        outcomes.lost++;
        lost.push({ id: rec.id, at_ms: rec.at_ms, accepted_by: rec.target, read_from: reader, last });
        continue;
      }
      rec.report = report;
      const c = classify(report);
      outcomes[c]++;
      if (c === "lost") lost.push({ id: rec.id, at_ms: rec.at_ms, report, why: "counts do not add up" });
      if (c === "not_delivered") {
        if ((report.sockets || 0) + (report.unknown || 0) === 0) notDelivered.zero_sockets++;
        if (report.timed_out) notDelivered.timed_out++;
        if (report.failed) notDelivered.failed++;
        if (report.unknown) notDelivered.unknown++;
      }
    }
  }
  await Promise.all(Array.from({ length: 16 }, reader));

  const count = (f) => pushes.filter(f).length;
  const out = {
    targets,
    rate,
    secs,
    ack_ms: ackMs,
    send_secs: sendEndMs / 1000,
    sent: pushes.length,
    accepted: accepted.length,
    refused_503: count((p) => p.status === 503),
    other_status: count((p) => p.status && p.status !== 503 && !(p.status >= 200 && p.status < 300)),
    no_answer: count((p) => p.status === 0),
    acked: outcomes.acked,
    not_delivered: outcomes.not_delivered,
    not_delivered_by_cause: notDelivered,
    lost: outcomes.lost,
    lost_samples: lost.slice(0, 20),
    other_samples: pushes.filter((p) => p.status !== 503 && p.error).slice(0, 5),
    timeline: [...timeline.entries()].sort((a, b) => a[0] - b[0]).map(([s, r]) => ({ s, ...r })),
  };
  const text = JSON.stringify(out, null, 1);
  if (args.out) require("node:fs").writeFileSync(args.out, text + "\n");
  console.log(text);
  process.exit(out.lost > 0 ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
