"""Server CPU per delivery: SSE (emulation and ``/events``) against WebSocket.

Runs a tidings server in a child process and, from this process, opens N
subscribers of one transport to one channel, publishes M messages through the
server API in bursts, and waits until every subscriber has every message. The
server's CPU time (user + system, read from /proc) over that window, divided by
N * M, is its cost per delivery. Each transport gets a fresh server; the API
cost is the same for all, so the differences are the transports'.

    .venv/bin/python benchmarks/sse_overhead.py [--subscribers 500] [--messages 400]

Clients are raw asyncio protocols that only count message markers in what they
read, so their own cost stays small. Only 127.0.0.1 is used; the run is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECRET = "benchmark-secret-0123456789abcdef0123"
API_KEY = "benchmark-api-key"
CHANNEL = "bench:overhead"

SERVER = f"""
import asyncio, sys, uvloop
from tidings.channels import ChannelOptions
from tidings.config import ChannelsConfig, Config
from tidings.node import Node
from tidings.server.app import TidingsServer

async def main():
    config = Config(port=int(sys.argv[1]), token_hmac_secret={SECRET!r}, api_key={API_KEY!r},
                    demo="off", log_level="warning",
                    channels=ChannelsConfig(namespaces={{"bench": ChannelOptions(
                        history_size=1000, history_ttl=300.0, allow_subscribe_for_client=True)}}))
    server = TidingsServer(Node(config))
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

uvloop.run(main())
"""


def make_token() -> str:
    import jwt

    return jwt.encode({"sub": "bench", "channels": [CHANNEL]}, SECRET, algorithm="HS256")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    if length < 126:
        header = bytes((0x81, 0x80 | length))
    else:
        header = bytes((0x81, 0x80 | 126)) + length.to_bytes(2, "big")
    return header + mask + body


class Counter(asyncio.Protocol):
    """Counts occurrences of ``marker`` in the byte stream (markers may straddle reads)."""

    def __init__(self, marker: bytes, request: bytes, after_headers: bytes = b"") -> None:
        self.marker = marker
        self.request = request
        self.after_headers = after_headers
        self.count = 0
        self.tail = b""
        self.headers_done = False
        self.ready = asyncio.get_running_loop().create_future()
        self.target = 0
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.headers_done:
            data = self.tail + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.tail = data
                return
            self.headers_done = True
            if self.after_headers:
                self.transport.write(self.after_headers)
            data, self.tail = data[end + 4 :], b""
        window = self.tail + data
        self.count += window.count(self.marker)
        self.tail = window[-(len(self.marker) - 1) :]
        if not self.ready.done() and self.count >= 1:  # the connect reply / first marker
            self.ready.set_result(None)
        if self.done is not None and self.count >= self.target and not self.done.done():
            self.done.set_result(None)


def requests(kind: str, port: int, token: str) -> tuple[bytes, bytes, bytes]:
    """(request bytes, bytes to send once upgraded, marker counted per publication)."""
    host = f"127.0.0.1:{port}"
    connect = json.dumps({"connect": {"token": token}, "id": 1}).encode()
    if kind == "websocket":
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /connection/websocket HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        return request.encode(), masked_text_frame(connect), b'"pub":'
    if kind == "sse":
        from urllib.parse import quote

        path = f"/connection/sse?cf_connect={quote(connect.decode())}"
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), b"", b'"pub":'
    path = f"/events?channel={CHANNEL}&token={token}"
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), b"", b'"offset":'


async def publish_all(port: int, messages: int, burst: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps({"channel": CHANNEL, "data": {"price": 101.25, "text": "x" * 64}})
    request = (
        f"POST /api/publish HTTP/1.1\r\nHost: b\r\nX-API-Key: {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n{payload}"
    ).encode()
    for start in range(0, messages, burst):
        count = min(burst, messages - start)
        writer.write(request * count)
        await writer.drain()
        for _ in range(count):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readuntil(b"}}")  # {"result":{...}}
    writer.close()


async def measure(kind: str, subscribers: int, messages: int, burst: int) -> dict[str, Any]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, str(port), stdout=subprocess.PIPE, env=env, cwd=ROOT
    )
    try:
        assert server.stdout is not None
        if (await asyncio.wait_for(server.stdout.readline(), 30)).strip() != b"ready":
            raise RuntimeError("the server did not start")
        loop = asyncio.get_running_loop()
        token = make_token()
        request, after, marker = requests(kind, port, token)
        clients: list[Counter] = []
        for _ in range(subscribers):
            _, client = await loop.create_connection(
                lambda: Counter(marker, request, after), "127.0.0.1", port
            )
            clients.append(client)
        # Ready: WebSocket/SSE clients count their connect reply (it carries no marker
        # for /events), so wait for the hub instead: one warm-up publication each.
        for _ in range(120):
            await publish_all(port, 1, 1)
            pending = [c.ready for c in clients if not c.ready.done()]
            if not pending:
                break
            await asyncio.wait(pending, timeout=0.5)
        else:
            raise RuntimeError("subscribers never became ready")
        for client in clients:
            client.target = client.count + messages
            client.done = loop.create_future()
        before, started = cpu_seconds(server.pid), time.perf_counter()
        await publish_all(port, messages, burst)
        await asyncio.wait_for(asyncio.gather(*(c.done for c in clients if c.done)), 120)
        cpu, wall = cpu_seconds(server.pid) - before, time.perf_counter() - started
        for client in clients:
            client.transport.close()
        deliveries = subscribers * messages
        return {
            "transport": kind,
            "deliveries": deliveries,
            "server_cpu_s": round(cpu, 3),
            "us_per_delivery": round(cpu / deliveries * 1e6, 3),
            "deliveries_per_s": round(deliveries / wall),
        }
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--burst", type=int, default=1, help="publications per API round trip")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeat):
        for kind in ("websocket", "sse", "events"):
            result = await measure(kind, args.subscribers, args.messages, args.burst)
            results.setdefault(kind, []).append(result)
            print(json.dumps(result), flush=True)
    best = {kind: min(r["us_per_delivery"] for r in runs) for kind, runs in results.items()}
    print(f"\nbest of {args.repeat}, server CPU per delivery:")
    for kind, value in best.items():
        extra = value - best["websocket"]
        print(f"  {kind:10s} {value:7.3f} us  ({extra:+.3f} us vs websocket)")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
