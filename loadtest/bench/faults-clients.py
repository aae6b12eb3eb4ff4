#!/usr/bin/env python3
"""Misbehaving clients for `faults.sh` (standard library only).

  faults-clients.py stall   --target HOST:PORT --count K --secret S --secs N
                            [--feed-rate 4] [--feed-bytes 65536]
  faults-clients.py hostile --target HOST:PORT --count K --secs N [--sources 10]
                            [--first-source 100]

stall: K Socket.IO clients (raw WebSocket, a valid token, user stalled<i>) that join
"/" and then never read their socket again (4 KiB receive buffer). On loopback the
gateway's send buffer alone takes over 1 MB (64 KiB segments), so while stalled each
also gets --feed-rate pushes a second of --feed-bytes to its own user through
POST /v1/push: its queue then overflows within seconds instead of minutes. After
--secs they read again, to see whether the gateway closed them (EOF after what the
kernel buffered). Prints {"connected", "closed_by_server", "still_open", "fed"}.

hostile: K attackers, spread over the source addresses 127.0.0.<first-source>.. (
--sources of them; the flooders all on the address before them), each repeating, with a pause of 0.5-1.5 s, one attack of its own
kind for --secs:
  bad_engineio   WebSocket, then an Engine.IO packet of unknown type ("9…")
  bad_socketio   WebSocket, then a malformed Socket.IO CONNECT (broken JSON)
  oversized      WebSocket, then a frame announcing 4 MiB (the default limit is 1 MB)
  unauth         WebSocket, then CONNECT "/" without a token; holds the session
  bad_token      WebSocket, then CONNECT "/" with a token signed by another key
  phoenix_noauth Phoenix WebSocket without a token
  garbage_http   random bytes instead of an HTTP request
  flood          10 Engine.IO polling handshakes at once, never followed up
Prints the attempts per kind and what the attacker saw (HTTP status, close, timeout).
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import socket
import struct
import sys
import time
from collections import Counter, defaultdict


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(secret, sub):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"sub": sub, "exp": int(time.time()) + 3600}).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def ws_frame(payload: bytes, opcode=1, announce=None):
    """A masked client frame; `announce` claims another length (oversized frames)."""
    n = len(payload) if announce is None else announce
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgrade_request(host, path):
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def read_head(reader):
    """The HTTP response head: its status code."""
    data = await reader.readuntil(b"\r\n\r\n")
    return int(data.split(b" ", 2)[1])


async def read_frame(reader):
    """One server frame (servers do not mask): (opcode, payload)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", await reader.readexactly(8))[0]
    return b0 & 0x0F, await reader.readexactly(n)


EIO = "/socket.io/?EIO=4&transport=websocket"


async def open_ws(host, port, path, local=None, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if local:
        sock.bind((local, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(upgrade_request(f"{host}:{port}", path))
    status = await read_head(reader)
    return reader, writer, status


# ---- stall ------------------------------------------------------------------------------
async def stall(a):
    host, port = a.target.rsplit(":", 1)
    port = int(port)
    conns = []
    for i in range(a.count):
        reader, writer, status = await open_ws(host, port, EIO, rcvbuf=4096)
        assert status == 101, status
        _, opened = await read_frame(reader)  # Engine.IO open
        assert opened.startswith(b"0"), opened
        writer.write(ws_frame(("40" + json.dumps({"token": token(a.secret, f"stalled{i}")})).encode()))
        await writer.drain()
        while True:
            _, m = await read_frame(reader)
            if m.startswith(b"40"):
                break
        # From here on nothing is read: the socket's receive buffer fills and the
        # gateway's writes to it stop.
        writer.transport.pause_reading()
        conns.append((reader, writer))
    print(json.dumps({"event": "stalled", "count": len(conns)}), flush=True)
    fed = Counter()

    async def feed(i):
        body = json.dumps({"to": {"user": f"stalled{i}"}, "event": "feed",
                           "data": "f" * a.feed_bytes}).encode()
        while True:
            try:
                r, w = await asyncio.open_connection(host, port)
                w.write(f"POST /v1/push HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                fed[f"http_{await read_head(r)}"] += 1
                w.close()
            except (OSError, asyncio.IncompleteReadError) as e:
                fed[type(e).__name__] += 1
            await asyncio.sleep(1 / a.feed_rate)

    feeders = [asyncio.create_task(feed(i)) for i in range(len(conns))] if a.feed_rate > 0 else []
    await asyncio.sleep(a.secs)
    for f in feeders:
        f.cancel()
    closed = 0
    for reader, writer in conns:
        writer.transport.resume_reading()
        try:
            async def drain():
                while await reader.read(65536):
                    pass
            await asyncio.wait_for(drain(), 10)
            closed += 1
        except (asyncio.TimeoutError, ConnectionError):
            pass
        writer.close()
    print(json.dumps({"connected": len(conns), "closed_by_server": closed,
                      "still_open": len(conns) - closed, "fed": dict(fed)}), flush=True)


# ---- hostile ----------------------------------------------------------------------------
KINDS = ["bad_engineio", "bad_socketio", "oversized", "unauth", "bad_token",
         "phoenix_noauth", "garbage_http", "flood"]


async def outcome_of(reader, timeout=5.0):
    """Reads until the server closes: 'closed' (close frame or EOF) or 'open' (timeout)."""
    try:
        async def until_close():
            while True:
                op, payload = await read_frame(reader)
                if op == 8:
                    code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 0
                    return f"close_{code}"
                if payload.startswith(b"44"):
                    return "connect_error"
                if payload == b"1":
                    return "engineio_close"
        return await asyncio.wait_for(until_close(), timeout)
    except asyncio.TimeoutError:
        return "still_open"
    except (asyncio.IncompleteReadError, ConnectionError):
        return "eof"


async def attack(kind, host, port, local, secret):
    if kind == "garbage_http":
        r, w = await asyncio.open_connection(host, port, local_addr=(local, 0))
        w.write(os.urandom(512))
        try:
            data = await asyncio.wait_for(r.read(200), 5)
            res = f"http_{data.split(b' ')[1].decode()}" if data.startswith(b"HTTP/") else "eof"
        except asyncio.TimeoutError:
            res = "still_open"
        w.close()
        return res
    if kind == "flood":
        async def one():
            r, w = await asyncio.open_connection(host, port, local_addr=(local, 0))
            w.write(f"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            try:
                status = await asyncio.wait_for(read_head(r), 5)
            finally:
                w.close()
            return f"http_{status}"
        got = await asyncio.gather(*(one() for _ in range(10)), return_exceptions=True)
        return [g if isinstance(g, str) else type(g).__name__ for g in got]
    path = "/socket/websocket?vsn=2.0.0" if kind == "phoenix_noauth" else EIO
    reader, writer, status = await open_ws(host, port, path, local=local)
    try:
        if status != 101:
            return f"http_{status}"
        _, opened = await read_frame(reader)  # Engine.IO open
        if kind == "bad_engineio":
            writer.write(ws_frame(b"9" + os.urandom(16).hex().encode()))
        elif kind == "bad_socketio":
            writer.write(ws_frame(b'40{"token":'))
        elif kind == "oversized":
            writer.write(ws_frame(b"4" * 4096, announce=4 * 1024 * 1024))
        elif kind == "unauth":
            writer.write(ws_frame(b"40"))
        elif kind == "bad_token":
            writer.write(ws_frame(("40" + json.dumps({"token": token("not-the-secret", "x")})).encode()))
        return await outcome_of(reader)
    finally:
        writer.close()


async def attacker(n, a, host, port, stats, deadline):
    kind = KINDS[n % len(KINDS)]
    # The flooders share one address (first-source - 1), so its rate and quota limits
    # bite; the others are spread over --sources addresses.
    local = f"127.0.0.{a.first_source + n % a.sources}" if kind != "flood" else f"127.0.0.{a.first_source - 1}"
    await asyncio.sleep(random.random() * 2)
    while time.monotonic() < deadline:
        try:
            res = await attack(kind, host, port, local, a.secret)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            res = type(e).__name__
        for r in res if isinstance(res, list) else [res]:
            stats[kind][r] += 1
        await asyncio.sleep(0.5 + random.random())


async def hostile(a):
    host, port = a.target.rsplit(":", 1)
    stats = defaultdict(Counter)
    deadline = time.monotonic() + a.secs
    await asyncio.gather(*(attacker(n, a, host, int(port), stats, deadline) for n in range(a.count)))
    out = {k: dict(v) for k, v in sorted(stats.items())}
    out["attempts"] = sum(sum(v.values()) for v in stats.values())
    print(json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["stall", "hostile"])
    p.add_argument("--target", required=True)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--secs", type=float, default=30)
    p.add_argument("--secret", default="bench-secret")
    p.add_argument("--sources", type=int, default=10)
    p.add_argument("--first-source", type=int, default=100)
    p.add_argument("--feed-rate", type=float, default=4)
    p.add_argument("--feed-bytes", type=int, default=65536)
    a = p.parse_args()
    asyncio.run(stall(a) if a.mode == "stall" else hostile(a))


if __name__ == "__main__":
    main()
