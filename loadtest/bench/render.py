#!/usr/bin/env python3
"""Render compare.sh results (summary.jsonl + pushgate-load JSON files) into BENCHMARKS.md.

Two sections, each between its own markers (appended if absent), so that rendering one
never touches the other:
- `compare` (`<!-- compare:begin -->` … `<!-- compare:end -->`): pushgate vs the socket.io
  peer;
- `seam` (`<!-- seam:begin -->` … `<!-- seam:end -->`): pushgate HEAD vs pushgate built at a
  base commit (side `base`), and pushgate over Phoenix (side `phoenix`);
- `pusher` (`<!-- pusher:begin -->` … `<!-- pusher:end -->`): pushgate's Pusher frontend
  (side `pusher`) vs Sockudo (side `sockudo`), Pusher clients on both.
"""
import argparse
import json
import math
import os
import re
import sys

SECTIONS = {
    "compare": ("<!-- compare:begin -->", "<!-- compare:end -->"),
    "seam": ("<!-- seam:begin -->", "<!-- seam:end -->"),
    "pusher": ("<!-- pusher:begin -->", "<!-- pusher:end -->"),
}


def load(results):
    rows = []
    with open(os.path.join(results, "summary.jsonl")) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            try:
                with open(os.path.join(results, r["json"])) as g:
                    r["data"] = json.load(g)
            except (OSError, ValueError):
                r["data"] = None
            rows.append(r)
    # a later run of the same name replaces an earlier one
    by_name = {}
    for r in rows:
        by_name[r["name"]] = r
    return list(by_name.values())


def g(d, *path, default=None):
    for p in path:
        if d is None:
            return default
        d = d.get(p) if isinstance(d, dict) else None
    return default if d is None else d


def push_secs(d):
    dur = g(d, "scenario", "duration")
    if isinstance(dur, dict):
        return dur.get("secs", 0) + dur.get("nanos", 0) / 1e9
    return float(dur or 0)


def phase_secs(d):
    """Seconds the push phase really lasted: timeline samples in phase `push` (one a
    second), at least the configured duration."""
    n = sum(1 for t in (g(d, "timeline", default=[]) or []) if t.get("phase") == "push")
    return max(float(n), push_secs(d))


def sent_per_s(d):
    s = phase_secs(d)
    return g(d, "pushes", "sent", default=0) / s if s else 0


def deliveries_per_s(d):
    s = phase_secs(d)
    return g(d, "deliveries", "received", default=0) / s if s else 0


def fnum(x, nd=0):
    if x is None:
        return "–"
    if isinstance(x, float) and math.isnan(x):
        return "–"
    return f"{x:,.{nd}f}"


def ms(x):
    if x is None:
        return "–"
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def ratio(a, b, nd=2):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.{nd}f}×"


def loss(d):
    if d is None:
        return "run failed"
    e = g(d, "deliveries", "expected", default=0)
    lost = g(d, "deliveries", "lost", default=0)
    return f"{lost:,} / {e:,}"


def conns(d):
    """Connections established, and how many of them closed before the end."""
    if d is None:
        return "–"
    est = g(d, 'connections', 'established', default=0)
    closed = g(d, 'connections', 'closed_during_run', default=0)
    return f"{est:,}" + (f" ({closed:,} closed)" if closed else "")


def cpu_sum(d, who="gateway"):
    return sum(x.get("cpu_pct_push") or 0 for x in (g(d, who, default=[]) or []))


def rss_kib(d, which="rss_kib_idle"):
    return sum(x.get(which) or 0 for x in (g(d, "gateway", default=[]) or []))


def after_ramp(d):
    """KiB per connection at the first timeline sample after the ramp."""
    est = g(d, "connections", "established", default=0)
    start = sum(x.get("rss_kib_start") or 0 for x in (g(d, "gateway", default=[]) or []))
    for t in g(d, "timeline", default=[]) or []:
        if t.get("phase") != "ramp" and t.get("connections", 0) >= est and t.get("rss_kib"):
            if any(v is None for v in t["rss_kib"]):
                return None
            return (sum(t["rss_kib"]) - start) / est if est else None
    return None


NPROC = os.cpu_count() or 1


def other_cpu(r):
    """Machine CPU % (of all cores) during the run not used by the servers or the tool:
    other jobs (and Redis)."""
    d = r.get("data")
    if d is None or r.get("machine_busy_s") is None or not r.get("wall_s"):
        return "–"
    own = sum((x.get("cpu_secs_run") or 0) for x in (g(d, "gateway", default=[]) or []))
    own += sum((x.get("cpu_secs_run") or 0) for x in (g(d, "load", default=[]) or []))
    v = max(0.0, (r["machine_busy_s"] - own) / r["wall_s"] / NPROC * 100)
    return f"{v:.0f}"


def pick(rows, scen, side, conns_=None):
    out = [r for r in rows if r["scenario"] == scen and r["side"] == side
           and (conns_ is None or r["conns"] == conns_)]
    return out


def best_step(rows, limit_ms, need_rate=False):
    """Highest-deliveries (or push rate) step with p99 <= limit and no loss."""
    best = None
    for r in rows:
        d = r["data"]
        if d is None:
            continue
        p99 = g(d, "latency", "p99_ms")
        if p99 is None or p99 > limit_ms or g(d, "deliveries", "lost", default=1) > 0:
            continue
        if g(d, "connections", "failed", default=0) > 0:
            continue
        asked = float(r["step"] or 0)
        got = sent_per_s(d)
        key = got if need_rate else deliveries_per_s(d)
        if best is None or key > best[0]:
            best = (key, r)
    return best


def compare_section(rows, m, commands, rel):
    """pushgate vs the socket.io peer."""
    BEGIN, END = SECTIONS["compare"]
    L = []
    w = L.append
    w(BEGIN)
    w("")
    w("## pushgate vs socket.io, side by side (issue 8, generated)")
    w("")
    w("_This section is generated by `loadtest/bench/compare.sh` (rendering: "
      "`loadtest/bench/render.py`); edit the script, not the tables._")
    w("")
    w(f"- date: {m['date']}, commit `{m['commit']}`")
    w(f"- machine: {m['nproc']} cores ({m['cpu']}), kernel {m['kernel']}, "
      f"open files {m['nofile']} (soft/hard, per process, cannot be raised)")
    w(f"- software: {m['rustc']}, Node {m['node']}, Redis {m['redis']}; socket.io 4 with "
      "@socket.io/redis-adapter 8 (`loadtest/peers/socketio`)")
    w(f"- load at start: `{m['uptime_at_start'].strip()}`")
    w("")
    w("```")
    w("$ free -g")
    w(m["free"])
    w("```")
    w("")
    w("How it was run (one invocation per line; all invocations wrote to the same results "
      f"directory `{rel}`):")
    w("")
    w("```sh")
    for c in commands:
        w(c)
    w("```")
    w("")
    w("Method: for every scenario the script starts a fresh `redis-server` and fresh server "
      "processes, runs `pushgate-load` (the same binary and flags for both), stops "
      "everything, then does the same for the other side — never both at once. Both sides "
      "run on Redis: pushgate nodes with `PUSHGATE_REDIS_URL` (cluster mode, also with one "
      "node), the peer on the Redis adapter. Above 18,000 connections both sides use "
      "several processes (20,000 open files per process), "
      "and RSS is summed over the server processes (`--pid`). Latency is from just before "
      "the HTTP push request to receipt by the client; loss counts every (push, connection "
      "that was up) pair that never arrived. The tool shares the 2 cores with the servers. "
      "CPU % columns are % of one core during the push phase (sum over processes); "
      "\"other CPU %\" is the machine's busy time during the whole run not spent in the "
      "servers or the tool (Redis and other jobs), in % of all cores — a high value means "
      "the row was measured on a busy machine.")
    w("")

    # --- idle RSS
    idle_sizes = sorted({r["conns"] for r in rows if r["scenario"] == "idle"})
    if idle_sizes:
        w("### RSS per idle connection")
        w("")
        w("(RSS of the server processes after the idle hold minus RSS before the first "
          "connection, divided by established connections; lower is better. \"held\" is "
          "established connections, pushgate / peer; connections that closed again during "
          "the run make that row's figure unreliable.)")
        w("")
        w("\"after ramp\" is the same difference taken at the first sample after the last "
          "connection was up, before the idle hold (see the notes for why the two differ).")
        w("")
        w("| connections | pushgate procs | pushgate KiB/conn | (after ramp) | peer procs "
          "| peer KiB/conn | (after ramp) | pushgate/peer |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in idle_sizes:
            pg = pick(rows, "idle", "pushgate", n)
            pe = pick(rows, "idle", "peer", n)
            def kib(rs):
                if not rs or rs[0]["data"] is None:
                    return None, "–", "–", None
                d = rs[0]["data"]
                b = g(d, "gateway_rss_bytes_per_connection")
                return ((b / 1024 if b is not None else None), str(rs[0]["procs"]), conns(d),
                        after_ramp(d))
            a_, ap_, ac, ar = kib(pg)
            b_, bp_, bc, br = kib(pe)
            w(f"| {n:,} (held: {ac} / {bc}) | {ap_} | {fnum(a_, 2)} | {fnum(ar, 2)} | {bp_} "
              f"| {fnum(b_, 2)} | {fnum(br, 2)} | {ratio(a_, b_)} |")
        solo = [r for r in rows if r["scenario"] == "idlesolo" and r["side"] == "pushgate"
                and r["data"]]
        for r in sorted(solo, key=lambda r: r["conns"]):
            d = r["data"]
            b = g(d, "gateway_rss_bytes_per_connection")
            w(f"| {r['conns']:,} (held: {conns(d)}) | 1, no Redis | "
              f"{fnum(b / 1024 if b is not None else None, 2)} | {fnum(after_ramp(d), 2)} "
              "| | | | |")
        w("")

    # --- broadcast every second
    bsizes = sorted({r["conns"] for r in rows if r["scenario"] == "bcast"})
    if bsizes:
        w("### Broadcast to all, once a second")
        w("")
        w("| connections | side | procs | held | loss | p50 ms | p99 ms | max ms | server CPU % "
          "| other CPU % |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in bsizes:
            p99s = {}
            for side in ("pushgate", "peer"):
                for r in pick(rows, "bcast", side, n):
                    d = r["data"]
                    p99s[side] = g(d, "latency", "p99_ms")
                    w(f"| {n:,} | {side} | {r['procs']} | {conns(d)} | {loss(d)} | "
                      f"{ms(g(d, 'latency', 'p50_ms'))} | {ms(g(d, 'latency', 'p99_ms'))} | "
                      f"{ms(g(d, 'latency', 'max_ms'))} | {fnum(cpu_sum(d))} | {other_cpu(r)} |")
            if "pushgate" in p99s and "peer" in p99s:
                w(f"| {n:,} | **p99 pushgate/peer** | | | | | **{ratio(p99s['pushgate'], p99s['peer'])}** | | | |")
        w("")

    # --- max deliveries
    def step_table(scen, side_rows, title):
        w(f"| {title} | pushes/s asked | sent/s | deliveries/s | loss | p50 ms | p99 ms | "
          "server CPU % | tool CPU % | other CPU % |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, rs in side_rows:
            for r in sorted(rs, key=lambda r: float(r["step"] or 0)):
                d = r["data"]
                if d is None:
                    w(f"| {label} | {r['step']} | run failed (rc {r['rc']}) | | | | | | |")
                    continue
                w(f"| {label} | {r['step']} | {fnum(sent_per_s(d), 0)} | "
                  f"{fnum(deliveries_per_s(d))} | {loss(d)} | {ms(g(d, 'latency', 'p50_ms'))} | "
                  f"{ms(g(d, 'latency', 'p99_ms'))} | {fnum(cpu_sum(d))} | "
                  f"{fnum(cpu_sum(d, 'load'))} | {other_cpu(r)} |")
        w("")

    headline = {}
    md = [r for r in rows if r["scenario"] == "maxdel"]
    if md:
        n = md[0]["conns"]
        w(f"### Highest deliveries/s before p99 passes 1 s (broadcast to {n:,} connections)")
        w("")
        w("The broadcast rate is stepped up; each step is a fresh run of "
          f"{push_secs(md[0]['data']) if md[0]['data'] else '?'} s of pushes; stepping stops "
          "at the first step with p99 > 1 s or any loss. deliveries/s = deliveries received / "
          "push-phase seconds from the timeline (sent/s likewise). Result = the step with the most deliveries/s, p99 ≤ 1 s and no "
          "loss.")
        w("")
        bp = best_step(pick(rows, "maxdel", "pushgate"), 1000)
        be = best_step(pick(rows, "maxdel", "peer"), 1000)
        w("| | pushgate | peer | pushgate/peer |")
        w("|---|---:|---:|---:|")
        w(f"| deliveries/s, p99 ≤ 1 s | {fnum(bp[0] if bp else None)} | "
          f"{fnum(be[0] if be else None)} | "
          f"**{ratio(bp[0] if bp else None, be[0] if be else None, 1)}** |")
        headline["maxdel"] = (bp, be)
        w("")
        for side, b in (("pushgate", bp), ("peer", be)):
            rs = pick(rows, "maxdel", side)
            if b and rs and b[1] is max(rs, key=lambda r: float(r["step"] or 0)):
                w(f"_{side}: even the last step stayed within p99 ≤ 1 s, so its figure is a "
                  "lower bound (the steps ran out)._")
                w("")
        step_table("maxdel", [("pushgate", pick(rows, "maxdel", "pushgate")),
                              ("peer", pick(rows, "maxdel", "peer"))], "side")

    us = [r for r in rows if r["scenario"] == "users"]
    if us:
        d0 = us[0]["data"] or {}
        w("### Per-user pushes/s with acks")
        w("")
        w(f"{us[0]['conns']:,} connections, {g(d0, 'scenario', 'users', default='?')} users "
          "(connection i is user u<i mod users>), each push to one random user with "
          "`\"ack\": {\"timeout_ms\": 5000}, \"wait\": true` (the HTTP answer waits for "
          "every ack); the rate is stepped up until p99 > 1 s, loss, or the tool cannot send "
          "90 % of the asked rate. Result = highest pushes/s actually sent (pushes / "
          "push-phase seconds, from the timeline) with delivery p99 below the limit and no loss.")
        w("")
        res = {}
        for side in ("pushgate", "peer"):
            res[side] = (best_step(pick(rows, "users", side), 100, True),
                         best_step(pick(rows, "users", side), 1000, True))
        w("| | pushgate | peer | pushgate/peer |")
        w("|---|---:|---:|---:|")
        for i, lim in ((0, "p99 < 100 ms"), (1, "p99 ≤ 1 s")):
            a_ = res["pushgate"][i][0] if res["pushgate"][i] else None
            b_ = res["peer"][i][0] if res["peer"][i] else None
            w(f"| pushes/s, {lim} | {fnum(a_)} | {fnum(b_)} | **{ratio(a_, b_, 1)}** |")
        headline["users"] = res
        w("")
        nw = [r for r in rows if r["scenario"] == "usersnw"]
        if nw:
            w("Without `wait` (scenario `usersnw`: acks still requested and counted by the "
              "gateway, clients ack; the tool does not wait for the report, so its 256 "
              "in-flight requests are not the limit):")
            w("")
            w("| | pushgate | peer | pushgate/peer |")
            w("|---|---:|---:|---:|")
            for lim_ms, lim in ((100, "p99 < 100 ms"), (1000, "p99 ≤ 1 s")):
                a2 = best_step(pick(rows, "usersnw", "pushgate"), lim_ms, True)
                b2 = best_step(pick(rows, "usersnw", "peer"), lim_ms, True)
                w(f"| pushes/s, {lim}, no wait | {fnum(a2[0] if a2 else None)} | "
                  f"{fnum(b2[0] if b2 else None)} | **{ratio(a2[0] if a2 else None, b2[0] if b2 else None, 1)}** |")
            headline["usersnw"] = best_step(pick(rows, "usersnw", "pushgate"), 100, True)
            w("")
        w("| side | pushes/s asked | sent/s | loss | acked (reports) | p50 ms | p99 ms | "
          "API p99 ms (wait) | server CPU % | tool CPU % | other CPU % |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for side, scen, label in (("pushgate", "users", "pushgate"), ("peer", "users", "peer"),
                                  ("pushgate", "usersnw", "pushgate, no wait"),
                                  ("peer", "usersnw", "peer, no wait")):
            for r in sorted(pick(rows, scen, side), key=lambda r: float(r["step"] or 0)):
                d = r["data"]
                if d is None:
                    w(f"| {label} | {r['step']} | run failed (rc {r['rc']}) | | | | | | | | |")
                    continue
                srv = g(d, "acks", "server") or {}
                acked = f"{srv.get('acked', 0):,} / {srv.get('sockets', 0):,}" if srv else "–"
                w(f"| {label} | {r['step']} | {fnum(sent_per_s(d), 0)} | {loss(d)} | "
                  f"{acked} | {ms(g(d, 'latency', 'p50_ms'))} | {ms(g(d, 'latency', 'p99_ms'))} | "
                  f"{ms(g(d, 'pushes', 'api_latency', 'p99_ms'))} | {fnum(cpu_sum(d))} | "
                  f"{fnum(cpu_sum(d, 'load'))} | {other_cpu(r)} |")
        w("")

    sc = [r for r in rows if r["scenario"] == "scale"]
    if sc:
        w("### One pushgate process vs three on one Redis")
        w("")
        w("The maxdel stepping (broadcast, same connection count) against 1 node + Redis and "
          "against 3 nodes + the same kind of Redis, connections spread over the nodes.")
        w("")
        one = [r for r in sc + pick(rows, "maxdel", "pushgate") if r["procs"] == 1]
        b1 = best_step(one, 1000)
        b3 = best_step([r for r in sc if r["procs"] == 3], 1000)
        w("| | 1 process | 3 processes | 3/1 |")
        w("|---|---:|---:|---:|")
        w(f"| deliveries/s, p99 ≤ 1 s | {fnum(b1[0] if b1 else None)} | "
          f"{fnum(b3[0] if b3 else None)} | **{ratio(b3[0] if b3 else None, b1[0] if b1 else None)}** |")
        headline["scale"] = (b1, b3)
        w("")
        step_table("scale", [("1 process", one),
                             ("3 processes", [r for r in sc if r["procs"] == 3])], "setup")

    big = [r for r in rows if r["scenario"] == "big"]
    for r in big:
        d = r["data"]
        w(f"### Big run: {r['conns']:,} connections, pushgate only, broadcast every 5 s")
        w("")
        if d is None:
            w(f"Run failed (rc {r['rc']}); see `{r['name']}.txt` in the results directory.")
            w("")
            continue
        est = g(d, "connections", "established", default=0)
        gws = g(d, "gateway", default=[])
        lds = g(d, "load", default=[])
        w(f"- held to the end: **{est - g(d, 'connections', 'closed_during_run', default=0):,}**; "
          f"{est:,} established of {g(d, 'connections', 'attempted', default=0):,} "
          f"attempted, {g(d, 'connections', 'failed', default=0):,} failed, "
          f"{g(d, 'connections', 'closed_during_run', default=0):,} closed during the run; "
          f"ramp {fnum(g(d, 'connections', 'ramp_secs'), 1)} s")
        w(f"- command: `{(r.get('env') or '')}{r['cmd']}` (ports vary per run)")
        w(f"- {len(gws)} gateway processes on one Redis, {len(lds)} load-tool processes, "
          f"source addresses: {g(d, 'plan', 'sources') or 'kernel choice / automatic'}")
        w(f"- broadcasts: {g(d, 'pushes', 'sent', default=0)} sent, "
          f"{g(d, 'pushes', 'accepted', default=0)} accepted; deliveries {loss(d)} lost; "
          f"latency p50 {ms(g(d, 'latency', 'p50_ms'))} ms, p99 {ms(g(d, 'latency', 'p99_ms'))} ms, "
          f"max {ms(g(d, 'latency', 'max_ms'))} ms")
        tot_idle = rss_kib(d)
        tot_peak = rss_kib(d, "rss_kib_peak")
        bpc = g(d, "gateway_rss_bytes_per_connection")
        w(f"- gateway RSS total: idle {fnum(tot_idle / 1024 / 1024, 2)} GiB, peak "
          f"{fnum(tot_peak / 1024 / 1024, 2)} GiB; per idle connection "
          f"{fnum((bpc or 0) / 1024, 2)} KiB")
        ltot = sum(x.get("rss_kib_peak") or 0 for x in lds)
        w(f"- load tool RSS peak total {fnum(ltot / 1024 / 1024, 2)} GiB; tool CPU during "
          f"pushes {fnum(cpu_sum(d, 'load'))} % (sum over processes)")
        w("")
        if gws:
            per = [(x.get("rss_kib_idle") or 0, x.get("rss_kib_peak") or 0,
                    x.get("cpu_pct_push") or 0, x.get("cpu_secs_run") or 0) for x in gws]
            cn = est / len(gws)
            w("Per gateway process (min / median / max over the processes):")
            w("")
            w("| | min | median | max |")
            w("|---|---:|---:|---:|")
            for i, lab, f in ((0, "RSS idle MiB", 1 / 1024), (1, "RSS peak MiB", 1 / 1024),
                              (2, "CPU % during pushes", 1), (3, "CPU s over the run", 1)):
                v = sorted(p[i] * f for p in per)
                w(f"| {lab} | {fnum(v[0], 1)} | {fnum(v[len(v) // 2], 1)} | {fnum(v[-1], 1)} |")
            w(f"| connections (average) | | {fnum(cn)} | |")
            w("")
            dps = deliveries_per_s(d)
            cores = cpu_sum(d) / 100
            if dps > 0 and bpc:
                cost_us = cores / dps * 1e6
                mem_ceiling = 20 * 1024 ** 3 / bpc
                cpu_ceiling = 1 / (cores / dps) / 0.2 if cores > 0 else None
                w("**Projection** (not measured: derived from this run's figures). Basis: "
                  f"{fnum(bpc / 1024, 2)} KiB RSS per idle connection and "
                  f"{fnum(cost_us, 2)} µs of gateway CPU per delivery "
                  f"({fnum(cores, 2)} cores for {fnum(dps)} deliveries/s, pings included). "
                  "One process on a host without the 20k open-files cap, tuned as in "
                  "README \"OS tuning\": memory alone allows about "
                  f"{fnum(mem_ceiling / 1e6, 1)} M connections per 20 GiB of RAM; one core "
                  "spent on broadcasts every 5 s allows about "
                  f"{fnum(cpu_ceiling / 1e6 if cpu_ceiling else None, 1)} M connections "
                  "(the kernel's own per-socket memory comes on top of RSS and was not measured "
                  "separately; this RSS figure includes the registry-refresh growth described "
                  "in the notes).")
                w("")

    # --- targets
    w("### Targets")
    w("")
    w("| target | measured | met? |")
    w("|---|---|---|")
    n10 = [r for r in rows if r["scenario"] == "idle" and r["side"] == "pushgate" and r["data"]]
    if n10:
        r = min(n10, key=lambda r: abs(r["conns"] - 10000))
        b = (g(r["data"], "gateway_rss_bytes_per_connection") or 0) / 1024
        w(f"| RSS per idle connection ≤ 3 KiB | {b:.2f} KiB at {r['conns']:,} | "
          f"{'yes' if b <= 3 else 'no'} |")
    if "maxdel" in headline:
        bp, be = headline["maxdel"]
        if bp and be:
            x = bp[0] / be[0]
            w(f"| fan-out ≥ 10× the peer's deliveries/s (p99 ≤ 1 s) | {x:.1f}× "
              f"({fnum(bp[0])} vs {fnum(be[0])}) | {'yes' if x >= 10 else 'no'} |")
    b20 = [r for r in rows if r["scenario"] == "bcast" and r["side"] == "pushgate"
           and r["conns"] == 20000 and r["data"]]
    if b20:
        p = g(b20[0]["data"], "latency", "p99_ms")
        lost = g(b20[0]["data"], "deliveries", "lost")
        w(f"| broadcast 1/s to 20k, p99 ≤ 40 ms | p99 {ms(p)} ms, loss {lost} | "
          f"{'yes' if p is not None and p <= 40 and lost == 0 else 'no'} |")
    if "users" in headline:
        a_ = headline["users"]["pushgate"][0]
        w(f"| ≥ 50k per-user pushes/s with acks, p99 < 100 ms | "
          f"{fnum(a_[0]) if a_ else 'none'} pushes/s | "
          f"{'yes' if a_ and a_[0] >= 50000 else 'no'} |")
    if headline.get("usersnw"):
        a_ = headline["usersnw"]
        w(f"| (same, acks without wait) | {fnum(a_[0])} pushes/s | "
          f"{'yes' if a_[0] >= 50000 else 'no'} |")
    if "scale" in headline:
        b1, b3 = headline["scale"]
        if b1 and b3:
            x = b3[0] / b1[0]
            w(f"| 3 processes on one Redis ≥ 0.8× one process | {x:.2f}× | "
              f"{'yes' if x >= 0.8 else 'no'} |")
    for r in big:
        d = r["data"]
        if d:
            held = (g(d, 'connections', 'established', default=0)
                    - g(d, 'connections', 'closed_during_run', default=0))
            sent = g(d, 'pushes', 'sent', default=0)
            acc = g(d, 'pushes', 'accepted', default=0)
            ok = (g(d, 'deliveries', 'lost') == 0 and sent > 0 and acc == sent
                  and g(d, 'deliveries', 'expected', default=0) > 0)
            w(f"| big run {r['conns']:,}, broadcast every 5 s, zero loss | {held:,} held to the end, "
              f"{acc}/{sent} broadcasts accepted, {g(d, 'deliveries', 'lost', default='?')} of "
              f"{g(d, 'deliveries', 'expected', default=0):,} deliveries lost | "
              f"{'yes' if ok else 'no'} |")
    w("")
    w("Per-run details (full JSON, PNG charts, the tool's summaries) are in the results "
      "directory, which is git-ignored.")
    w("")
    w(END)
    return L


def kib_per_conn(r):
    """(KiB per idle connection, after-ramp KiB, held) of one result row."""
    if not r or r["data"] is None:
        return None, None, "–"
    d = r["data"]
    b = g(d, "gateway_rss_bytes_per_connection")
    return (b / 1024 if b is not None else None), after_ramp(d), conns(d)


def seam_section(rows, m, commands, rel):
    """pushgate HEAD vs its base commit (Socket.IO), and HEAD over Phoenix."""
    BEGIN, END = SECTIONS["seam"]
    L = []
    w = L.append

    def commit_of(side):
        for r in rows:
            if r["side"] == side and r.get("commit"):
                return r["commit"]
        return "?"

    head, base = commit_of("pushgate"), commit_of("base")
    if head == "?":
        head = commit_of("phoenix")
    label = {
        "pushgate": f"Socket.IO `{head}`",
        "base": f"Socket.IO `{base}` (base)",
        "phoenix": f"Phoenix `{head}`",
    }
    w(BEGIN)
    w("")
    w("## Frontend seam: pushgate HEAD vs the commit before it, and Phoenix (issue 7, "
      "generated)")
    w("")
    w("_This section is generated by `loadtest/bench/compare.sh --sides pushgate,base,phoenix` "
      "(rendering: `loadtest/bench/render.py --section seam`); edit the script, not the "
      "tables._")
    w("")
    w(f"- date: {m['date']}; HEAD `{head}`, base `{base}` (built by the script in a "
      "temporary worktree, same toolchain and release profile)")
    w(f"- machine: {m['nproc']} cores ({m['cpu']}), kernel {m['kernel']}, "
      f"open files {m['nofile']} (soft/hard, per process)")
    w(f"- software: {m['rustc']}, Redis {m['redis']}")
    w(f"- load at start: `{m['uptime_at_start'].strip()}`")
    w("")
    w("How it was run (one invocation per line; all invocations wrote to the same results "
      f"directory `{rel}`):")
    w("")
    w("```sh")
    for c in commands:
        w(c)
    w("```")
    w("")
    w("Method: as for the socket.io comparison — for every scenario and side a fresh "
      "`redis-server` and fresh gateway processes, the same `pushgate-load` binary and flags, one side at a "
      "time. Sides: " + "; ".join(f"{label[s]}: " + {
          "pushgate": "the working tree's gateway, Socket.IO clients",
          "base": "the gateway built at the base commit, Socket.IO clients",
          "phoenix": "the working tree's gateway, Phoenix Channels clients (`--protocol "
                     "phoenix`: each joins `pushgate`, heartbeats every 30 s)"}[s]
          for s in ("pushgate", "base", "phoenix")
          if any(r["side"] == s for r in rows)) + ".")
    w("")

    checks = []
    for scen, title in (("idle", "RSS per idle connection, one node + Redis"),
                        ("idlesolo", "RSS per idle connection, one node, no Redis")):
        sizes = sorted({r["conns"] for r in rows if r["scenario"] == scen})
        if not sizes:
            continue
        w(f"### {title}")
        w("")
        w("(RSS of the gateway processes after the idle hold minus RSS before the first "
          "connection, divided by established connections; lower is better; \"after ramp\" "
          "is the same difference at the first sample after the last connection was up.)")
        w("")
        w(f"| connections | procs | {label['pushgate']} KiB/conn | (after ramp) | "
          f"{label['base']} KiB/conn | (after ramp) | HEAD/base | {label['phoenix']} "
          "KiB/conn | (after ramp) | Phoenix/Socket.IO |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in sizes:
            got = {}
            procs = "–"
            for side in ("pushgate", "base", "phoenix"):
                rs = pick(rows, scen, side, n)
                got[side] = kib_per_conn(rs[0] if rs else None)
                if rs:
                    procs = str(rs[0]["procs"])
            held = " / ".join(got[s][2] for s in ("pushgate", "base", "phoenix"))
            hp, hr, _ = got["pushgate"]
            bp, br, _ = got["base"]
            pp, pr, _ = got["phoenix"]
            w(f"| {n:,} (held: {held}) | {procs} | {fnum(hp, 2)} | {fnum(hr, 2)} | "
              f"{fnum(bp, 2)} | {fnum(br, 2)} | {ratio(hp, bp)} | {fnum(pp, 2)} | "
              f"{fnum(pr, 2)} | {ratio(pp, hp)} |")
            if hp is not None and bp:
                checks.append((f"RSS per idle connection ({title.split(', ', 1)[1]}, "
                               f"{n:,}) HEAD ≤ 1.05 × base", hp / bp, hp / bp <= 1.05))
        w("")

    bsizes = sorted({r["conns"] for r in rows if r["scenario"] == "bcast"})
    if bsizes:
        w("### Broadcast to all, once a second")
        w("")
        w("| connections | side | procs | held | loss | p50 ms | p99 ms | max ms | "
          "server CPU % | other CPU % |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in bsizes:
            for side in ("pushgate", "base", "phoenix"):
                for r in pick(rows, "bcast", side, n):
                    d = r["data"]
                    w(f"| {n:,} | {label[side]} | {r['procs']} | {conns(d)} | {loss(d)} | "
                      f"{ms(g(d, 'latency', 'p50_ms'))} | {ms(g(d, 'latency', 'p99_ms'))} | "
                      f"{ms(g(d, 'latency', 'max_ms'))} | {fnum(cpu_sum(d))} | "
                      f"{other_cpu(r)} |")
        w("")

    md = [r for r in rows if r["scenario"] == "maxdel"]
    if md:
        n = md[0]["conns"]
        w(f"### Highest broadcast deliveries/s before p99 passes 1 s ({n:,} connections)")
        w("")
        w("The broadcast rate is stepped up; each step is a fresh run of "
          f"{push_secs(md[0]['data']) if md[0]['data'] else '?'} s of pushes; stepping stops "
          "at the first step with p99 > 1 s or any loss. deliveries/s = deliveries received / "
          "push-phase seconds. Result = the step with the most deliveries/s, p99 ≤ 1 s and "
          "no loss.")
        w("")
        best = {s: best_step(pick(rows, "maxdel", s), 1000) for s in ("pushgate", "base",
                                                                       "phoenix")}
        val = {s: (b[0] if b else None) for s, b in best.items()}
        w(f"| | {label['pushgate']} | {label['base']} | HEAD/base | {label['phoenix']} | "
          "Phoenix/Socket.IO |")
        w("|---|---:|---:|---:|---:|---:|")
        w(f"| deliveries/s, p99 ≤ 1 s | {fnum(val['pushgate'])} | {fnum(val['base'])} | "
          f"**{ratio(val['pushgate'], val['base'])}** | {fnum(val['phoenix'])} | "
          f"{ratio(val['phoenix'], val['pushgate'])} |")
        w("")
        for side, b in best.items():
            rs = pick(rows, "maxdel", side)
            if b and rs and b[1] is max(rs, key=lambda r: float(r["step"] or 0)):
                w(f"_{label[side]}: even the last step stayed within p99 ≤ 1 s, so its figure "
                  "is a lower bound (the steps ran out)._")
                w("")
        if val["pushgate"] is not None and val["base"]:
            x = val["pushgate"] / val["base"]
            checks.append(("broadcast deliveries/s HEAD ≥ 0.95 × base", x, x >= 0.95))
        w("| side | pushes/s asked | sent/s | deliveries/s | loss | p50 ms | p99 ms | "
          "server CPU % | tool CPU % | other CPU % |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for side in ("pushgate", "base", "phoenix"):
            for r in sorted(pick(rows, "maxdel", side), key=lambda r: float(r["step"] or 0)):
                d = r["data"]
                if d is None:
                    w(f"| {label[side]} | {r['step']} | run failed (rc {r['rc']}) | | | | | "
                      "| | |")
                    continue
                w(f"| {label[side]} | {r['step']} | {fnum(sent_per_s(d), 0)} | "
                  f"{fnum(deliveries_per_s(d))} | {loss(d)} | "
                  f"{ms(g(d, 'latency', 'p50_ms'))} | {ms(g(d, 'latency', 'p99_ms'))} | "
                  f"{fnum(cpu_sum(d))} | {fnum(cpu_sum(d, 'load'))} | {other_cpu(r)} |")
        w("")

    if checks:
        w("### No regression (issue 7: no more than 5 % worse than the base)")
        w("")
        w("| check | HEAD/base | met? |")
        w("|---|---:|---|")
        for what, x, ok in checks:
            w(f"| {what} | {x:.3f}× | {'yes' if ok else 'no'} |")
        w("")
    w("Per-run details (full JSON, PNG charts, the tool's summaries) are in the results "
      "directory, which is git-ignored.")
    w("")
    w(END)
    return L


def pusher_section(rows, m, commands, rel):
    """pushgate's Pusher frontend vs Sockudo, one process each, Pusher clients."""
    BEGIN, END = SECTIONS["pusher"]
    L = []
    w = L.append

    def version_of(side):
        for r in rows:
            if r["side"] == side and r.get("commit"):
                return r["commit"]
        return "?"

    label = {"pusher": f"pushgate `{version_of('pusher')}`",
             "sockudo": f"Sockudo ({version_of('sockudo')})"}
    w(BEGIN)
    w("")
    w("## pushgate vs Sockudo over Pusher Channels (issue 11, generated)")
    w("")
    w("_This section is generated by `loadtest/bench/compare.sh --sides pusher,sockudo` "
      "(rendering: `loadtest/bench/render.py --section pusher`); edit the script, not the "
      "tables._")
    w("")
    w(f"- date: {m['date']}; pushgate `{m['commit']}`, {m.get('sockudo', '?')} "
      "(`cargo install sockudo`, default features)")
    w(f"- machine: {m['nproc']} cores ({m['cpu']}), kernel {m['kernel']}, "
      f"open files {m['nofile']} (soft/hard, per process)")
    w(f"- software: {m['rustc']}")
    w(f"- load at start: `{m['uptime_at_start'].strip()}`")
    w("")
    w("How it was run (one invocation per line; all invocations wrote to the same results "
      f"directory `{rel}`):")
    w("")
    w("```sh")
    for c in commands:
        w(c)
    w("```")
    w("")
    w("Method: one server process per side, no Redis (pushgate without "
      "`PUSHGATE_REDIS_URL`, Sockudo with its local adapter and in-memory drivers, rate "
      "limits off), the same app `load-app:load-key:load-secret`, the same `pushgate-load` "
      "binary and flags, one side at a time: Pusher protocol 7 clients (`--protocol "
      "pusher`), each subscribed to the public channel `r0`, pushes through the Pusher "
      "HTTP API to `r0` (`--push-api pusher`, signed as the SDKs sign), so every push is a "
      "broadcast. Latency is from just before the HTTP request to receipt by the client.")
    w("")
    sizes = sorted({r["conns"] for r in rows if r["scenario"] == "idle"})
    if sizes:
        w("### RSS per idle Pusher connection (one process)")
        w("")
        w("(RSS after the idle hold minus RSS before the first connection, divided by "
          "established connections, each subscribed to one channel; lower is better.)")
        w("")
        w(f"| connections | {label['pusher']} KiB/conn | (after ramp) | "
          f"{label['sockudo']} KiB/conn | (after ramp) | pushgate/Sockudo |")
        w("|---:|---:|---:|---:|---:|---:|")
        for n in sizes:
            a_, ar, ah = kib_per_conn((pick(rows, "idle", "pusher", n) or [None])[0])
            b_, br, bh = kib_per_conn((pick(rows, "idle", "sockudo", n) or [None])[0])
            w(f"| {n:,} (held: {ah} / {bh}) | {fnum(a_, 2)} | {fnum(ar, 2)} | {fnum(b_, 2)} "
              f"| {fnum(br, 2)} | {ratio(a_, b_)} |")
        w("")
    bsizes = sorted({r["conns"] for r in rows if r["scenario"] == "bcast"})
    if bsizes:
        w("### Broadcast once a second")
        w("")
        w("| connections | side | held | loss | p50 ms | p99 ms | max ms | server CPU % "
          "| other CPU % |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for n in bsizes:
            for side in ("pusher", "sockudo"):
                for r in pick(rows, "bcast", side, n):
                    d = r["data"]
                    w(f"| {n:,} | {label[side]} | {conns(d)} | {loss(d)} | "
                      f"{ms(g(d, 'latency', 'p50_ms'))} | {ms(g(d, 'latency', 'p99_ms'))} | "
                      f"{ms(g(d, 'latency', 'max_ms'))} | {fnum(cpu_sum(d))} | "
                      f"{other_cpu(r)} |")
        w("")
    md = [r for r in rows if r["scenario"] == "maxdel"]
    if md:
        n = md[0]["conns"]
        w(f"### Highest broadcast deliveries/s before p99 passes 1 s ({n:,} connections)")
        w("")
        w("The push rate is stepped up; each step is a fresh run of "
          f"{push_secs(md[0]['data']) if md[0]['data'] else '?'} s of pushes; stepping "
          "stops at the first step with p99 > 1 s or any loss. Result = the step with the "
          "most deliveries/s, p99 ≤ 1 s and no loss.")
        w("")
        best = {s: best_step(pick(rows, "maxdel", s), 1000) for s in ("pusher", "sockudo")}
        val = {s: (b[0] if b else None) for s, b in best.items()}
        w(f"| | {label['pusher']} | {label['sockudo']} | pushgate/Sockudo |")
        w("|---|---:|---:|---:|")
        w(f"| deliveries/s, p99 ≤ 1 s | {fnum(val['pusher'])} | {fnum(val['sockudo'])} | "
          f"**{ratio(val['pusher'], val['sockudo'], 1)}** |")
        w("")
        for side, b in best.items():
            rs = pick(rows, "maxdel", side)
            if b and rs and b[1] is max(rs, key=lambda r: float(r["step"] or 0)):
                w(f"_{label[side]}: even the last step stayed within p99 ≤ 1 s, so its figure "
                  "is a lower bound (the steps ran out)._")
                w("")
        w("| side | pushes/s asked | sent/s | deliveries/s | loss | p50 ms | p99 ms | "
          "server CPU % | tool CPU % | other CPU % |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for side in ("pusher", "sockudo"):
            for r in sorted(pick(rows, "maxdel", side), key=lambda r: float(r["step"] or 0)):
                d = r["data"]
                if d is None:
                    w(f"| {label[side]} | {r['step']} | run failed (rc {r['rc']}) | | | | | "
                      "| | |")
                    continue
                w(f"| {label[side]} | {r['step']} | {fnum(sent_per_s(d), 0)} | "
                  f"{fnum(deliveries_per_s(d))} | {loss(d)} | "
                  f"{ms(g(d, 'latency', 'p50_ms'))} | {ms(g(d, 'latency', 'p99_ms'))} | "
                  f"{fnum(cpu_sum(d))} | {fnum(cpu_sum(d, 'load'))} | {other_cpu(r)} |")
        w("")
    w("Per-run details (full JSON, PNG charts, the tool's summaries) are in the results "
      "directory, which is git-ignored.")
    w("")
    w(END)
    return L


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--benchmarks", required=True)
    ap.add_argument("--section", choices=sorted(SECTIONS), default="compare")
    a = ap.parse_args()
    rows = load(a.results)
    with open(os.path.join(a.results, "machine.json")) as f:
        m = json.load(f)
    commands = open(os.path.join(a.results, "commands.txt")).read().strip().splitlines()
    rel = os.path.relpath(a.results, os.path.dirname(os.path.abspath(a.benchmarks)))
    make = {"compare": compare_section, "seam": seam_section,
            "pusher": pusher_section}[a.section]
    L = make(rows, m, commands, rel)
    BEGIN, END = SECTIONS[a.section]

    block = "\n".join(L)
    text = open(a.benchmarks).read() if os.path.exists(a.benchmarks) else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(a.benchmarks, "w") as f:
        f.write(text)
    print(f"rendered {len(rows)} runs into {a.benchmarks}", file=sys.stderr)


if __name__ == "__main__":
    main()
