"""Fan-out to Protobuf clients against JSON clients, and to a channel holding both.

Runs a tidings server in a child process (on CPU 1, this generator on CPU 0, when
``taskset`` exists) and, from this process, opens N WebSocket subscribers to one
channel: all JSON (text frames), all Protobuf (``centrifuge-protobuf``, binary
frames), or half and half. It publishes M messages through the server API and waits
until every subscriber has every one. The server's CPU time (user + system, from
/proc) over that window divided by N * M is its cost per delivery; deliveries per
second are over the same window. Each mix gets a fresh server; best of ``--repeat``.

    .venv/bin/python benchmarks/protobuf_fanout.py [--subscribers 1000] [--messages 2000]
        [--burst 10] [--repeat 5] [--in-process] [--markdown docs/benchmarks.md]

Then it times the hub alone, in process, no sockets: the CPU each publication costs
with 1,000 subscribers writing to C-level no-op writers, which isolates encoding
and framing from the kernel's sends (the figure docs/architecture.md quotes);
``--in-process`` runs only that. ``--markdown`` writes both into the page (the
full ``make bench`` run does).

What the mixes show: a publication is encoded once per encoding on a node
(docs/architecture.md, "Protobuf"): the Protobuf channel pays one Protobuf encoding
per publication on top of the JSON one every publication gets when it is prepared,
and the mixed one the same, never one per recipient. Clients are raw asyncio
protocols that count a marker of the payload in what they read (the payload's bytes
appear as they are in both encodings), so their own cost stays small. Only 127.0.0.1
is used; the run is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tidings.bench.report import replace_section

ROOT = Path(__file__).resolve().parents[1]
SECRET = "benchmark-secret-0123456789abcdef0123"
API_KEY = "benchmark-api-key"
CHANNEL = "bench:fanout"
MARKER = b'"price":101.25'
"""In every payload once; the same bytes in JSON and in Protobuf ``data``."""

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

MIXES = {"json": 0.0, "protobuf": 1.0, "mixed": 0.5}
"""Share of Protobuf subscribers in each run."""


def make_token() -> str:
    import jwt

    return jwt.encode({"sub": "bench", "channels": [CHANNEL]}, SECRET, algorithm="HS256")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU time every process of the machine used so far (all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    times = os.times()
    return times.user + times.system


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    return header + mask + body


def connect_frame(protobuf: bool, token: str) -> bytes:
    if not protobuf:
        return masked_frame(0x1, json.dumps({"connect": {"token": token}, "id": 1}).encode())
    from centrifuge.protocol import client_pb2 as pb

    from tidings.protocol.protobuf import varint

    command = pb.Command(id=1, connect=pb.ConnectRequest(token=token)).SerializeToString()
    return masked_frame(0x2, varint(len(command)) + command)


def upgrade_request(port: int, protobuf: bool) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    protocol = "Sec-WebSocket-Protocol: centrifuge-protobuf\r\n" if protobuf else ""
    return (
        f"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{protocol}\r\n"
    ).encode()


class Counter(asyncio.Protocol):
    """Counts :data:`MARKER` in the byte stream (markers may straddle reads)."""

    def __init__(self, request: bytes, after_headers: bytes) -> None:
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
            self.transport.write(self.after_headers)
            data, self.tail = data[end + 4 :], b""
        window = self.tail + data
        self.count += window.count(MARKER)
        self.tail = window[-(len(MARKER) - 1) :]
        if not self.ready.done() and self.count >= 1:
            self.ready.set_result(None)
        if self.done is not None and self.count >= self.target and not self.done.done():
            self.done.set_result(None)


async def publish_all(port: int, messages: int, burst: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = {"price": 101.25, "seq": 0, "text": "x" * 60}  # ~100 bytes of JSON
    payload = json.dumps({"channel": CHANNEL, "data": data}, separators=(",", ":"))
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


def pinned() -> bool:
    """Server on CPU 1, this load generator on CPU 0, when the machine has two."""
    return bool(shutil.which("taskset")) and (os.cpu_count() or 1) > 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def measure(mix: str, subscribers: int, messages: int, burst: int) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-c", SERVER, str(port)]
    if pinned():
        command = ["taskset", "-c", "1", *command]
    server = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, env=env, cwd=ROOT
    )
    try:
        assert server.stdout is not None
        if (await asyncio.wait_for(server.stdout.readline(), 30)).strip() != b"ready":
            raise RuntimeError("the server did not start")
        loop = asyncio.get_running_loop()
        token = make_token()
        protobuf_count = round(subscribers * MIXES[mix])
        clients: list[Counter] = []
        for index in range(subscribers):
            protobuf = index < protobuf_count
            request, after = upgrade_request(port, protobuf), connect_frame(protobuf, token)
            _, client = await loop.create_connection(
                lambda request=request, after=after: Counter(request, after), "127.0.0.1", port
            )
            clients.append(client)
        for _ in range(120):  # warm-up publications until every subscriber got one
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
        machine, mine = busy_seconds(), own_seconds()
        await publish_all(port, messages, burst)
        await asyncio.wait_for(asyncio.gather(*(c.done for c in clients if c.done)), 120)
        cpu, wall = cpu_seconds(server.pid) - before, time.perf_counter() - started
        others = busy_seconds() - machine - (own_seconds() - mine) - cpu
        for client in clients:
            client.transport.close()
        deliveries = subscribers * messages
        return {
            "mix": mix,
            "protobuf_subscribers": protobuf_count,
            "deliveries": deliveries,
            "server_cpu_s": round(cpu, 3),
            "us_per_delivery": round(cpu / deliveries * 1e6, 3),
            "us_per_publication": round(cpu / messages * 1e6, 1),
            "deliveries_per_s": round(deliveries / wall),
            "others_cores": round(max(0.0, others) / wall, 2),
        }
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)


# --------------------------------------------------------------------------- in process


async def hub_sample(mix: str, subscribers: int, rounds: int) -> float:
    """CPU per publication for the hub alone (``--in-process``): prepare, queue, frame once
    per wire format, and one write per subscriber to a C-level no-op writer, each
    publication in a flush of its own (the worst case for per-publication work)."""
    import collections

    from msgspec import Raw

    from tidings.hub import Hub
    from tidings.protocol.codec import prepare_publication
    from tidings.protocol.messages import ClientInfo, Publication
    from tidings.protocol.wire import JSON_WIRE, PROTOBUF_WIRE

    class Subscriber:
        __slots__ = ("wire", "writer")

        def __init__(self, wire: Any) -> None:
            self.wire = wire
            self.writer = collections.deque(maxlen=0).append  # C, keeps nothing

        def insufficient_state(self, channel: str) -> None:
            raise AssertionError("no publication is lost here")

    hub = Hub()
    protobuf_count = round(subscribers * MIXES[mix])
    for index in range(subscribers):
        subscriber = Subscriber(PROTOBUF_WIRE if index < protobuf_count else JSON_WIRE)
        hub.begin_subscribe(CHANNEL, subscriber)
        hub.complete_subscribe(
            CHANNEL, subscriber, join_leave=False, positioned=False, position=None
        )
    data = Raw(json.dumps({"price": 101.25, "seq": 0, "text": "x" * 60}).encode())
    info = ClientInfo("bench", "6c7c2a3e-51b3-4a09-a5a0-1f6f0d7c9b21")
    started = time.process_time()
    for offset in range(1, rounds + 1):
        publication = Publication(data=data, info=info, offset=offset)
        hub.broadcast_publication(CHANNEL, prepare_publication(CHANNEL, publication, "E"))
        hub.flush()
    return (time.process_time() - started) / rounds


def in_process(subscribers: int, rounds: int, samples: int) -> dict[str, float]:
    """Best of ``samples``: seconds of CPU per publication, per mix."""
    import uvloop

    best: dict[str, float] = {}
    for mix in MIXES:
        runs = [uvloop.run(hub_sample(mix, subscribers, rounds)) for _ in range(samples)]
        best[mix] = min(runs)
    return best


# --------------------------------------------------------------------------- report

SECTION = "<!-- protobuf -->"
LABELS = {
    "json": "{n:,} JSON",
    "protobuf": "{n:,} Protobuf",
    "mixed": "{half:,} JSON + {half:,} Protobuf",
}


def label(mix: str, subscribers: int) -> str:
    return LABELS[mix].format(n=subscribers, half=subscribers // 2)


def markdown(
    args: argparse.Namespace,
    sockets: dict[str, dict[str, Any]],
    hub: dict[str, float],
    loads: tuple[tuple[float, ...], tuple[float, ...]],
) -> str:
    rows = "\n".join(
        f"| {label(mix, args.subscribers)} | {best['us_per_delivery']:.3f} µs | "
        f"{best['deliveries_per_s']:,}/s | {best['others_cores']:.2f} |"
        for mix, best in sockets.items()
    )
    hub_rows = "\n".join(
        f"| {label(mix, args.subscribers)} | {value * 1e6:.1f} µs | "
        f"{(value - hub['json']) * 1e6:+.1f} µs | {value / args.subscribers * 1e9:.1f} ns |"
        for mix, value in hub.items()
    )
    before, after = loads
    return f"""{SECTION}
## Protobuf and JSON clients

`benchmarks/protobuf_fanout.py`: one channel, {args.subscribers:,} WebSocket subscribers
(JSON in text frames, Protobuf in binary frames, or half and half), {args.messages:,}
publications of ~100 bytes through the server API, {args.burst} requests in flight; the
server pinned to CPU 1, the load generator to CPU 0; a fresh server per run, best of
{args.repeat}. Every subscriber received every publication.

| subscribers | server CPU per delivery | deliveries/s | other processes (cores) |
|---|---:|---:|---:|
{rows}

The last column is what the rest of the machine used meanwhile (2 cores in all): other
sessions' work there makes the figures of that row noisier. Per recipient the work is the
same whatever the encoding (one write of the bytes its wire format's group shares); what
differs is per publication, which the hub alone shows:

The same channel in process, the hub alone (no sockets: C-level no-op writers, each
publication in a flush of its own, best of {args.samples} samples of {args.rounds:,}):
what encoding and framing cost per publication; the {args.subscribers:,} writes are the
rest.

| subscribers | CPU per publication | vs JSON | per delivery |
|---|---:|---:|---:|
{hub_rows}

Load average (1, 5, 15 min) before the runs: {", ".join(f"{v:.2f}" for v in before)};
after: {", ".join(f"{v:.2f}" for v in after)}.
"""


def write_markdown(path: Path, section: str) -> None:
    """Replace this script's section of the page, or append it."""
    page = path.read_text() if path.exists() else ""
    path.write_text(replace_section(page, SECTION, section))


async def sockets_runs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    results: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeat):
        for mix in MIXES:
            result = await measure(mix, args.subscribers, args.messages, args.burst)
            results.setdefault(mix, []).append(result)
            print(json.dumps(result), flush=True)
    return {mix: min(runs, key=lambda r: r["us_per_delivery"]) for mix, runs in results.items()}


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=10, help="publications per API round trip")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2000, help="in process: publications")
    parser.add_argument("--samples", type=int, default=7, help="in process: samples")
    parser.add_argument("--in-process", action="store_true", help="only the hub, in process")
    parser.add_argument("--markdown", type=Path, help="write the section of this page")
    args = parser.parse_args()
    if pinned():
        os.sched_setaffinity(0, {0})
    before = os.getloadavg()
    print(f"load average before: {before}", flush=True)
    sockets: dict[str, dict[str, Any]] = {}
    if not args.in_process:
        sockets = uvloop.run(sockets_runs(args))
        print(f"\nbest of {args.repeat} ({args.subscribers} subscribers, burst {args.burst}):")
        base = sockets["json"]["us_per_delivery"]
        for mix, best in sockets.items():
            print(
                f"  {mix:9s} {best['us_per_delivery']:7.3f} us/delivery "
                f"({best['us_per_delivery'] - base:+.3f} vs json)  "
                f"{best['deliveries_per_s']:>10,} deliveries/s"
            )
    hub = in_process(args.subscribers, args.rounds, args.samples)
    print(f"\nin process, {args.subscribers} subscribers, one publication per flush:")
    for mix, value in hub.items():
        print(
            f"  {mix:9s} {value * 1e6:7.2f} us/publication ({(value - hub['json']) * 1e6:+.2f}"
            f" vs json), {value / args.subscribers * 1e9:6.1f} ns/delivery"
        )
    after = os.getloadavg()
    print(f"load average after: {after}")
    if args.markdown is not None and sockets:
        write_markdown(args.markdown, markdown(args, sockets, hub, (before, after)))


if __name__ == "__main__":
    main()
