"""Deliveries per second through Redis with 1 and with 2 worker processes; Redis round trips.

    .venv/bin/python benchmarks/redis_workers.py [--subscribers 1000] [--duration 5]
        [--repeat 3] [--server-cpus 0,1] [--generator-cpus 0] [--redis-cpus 1]

What it does, for each repeat and for ``--workers`` 1 then 2 (alternating, so a
change in the machine's load hits both alike):

1. starts a private ``redis-server`` (no persistence) on a free loopback port,
   unless ``--redis-url`` names one (a unique key prefix is used and deleted);
2. starts ``tidings serve --workers N --broker redis://...`` (with ``taskset``
   when ``--server-cpus`` is given) with anonymous access to a ``bench``
   namespace that keeps history, so every publication has an offset;
3. opens ``--subscribers`` WebSocket connections (the kernel spreads them over
   the workers with SO_REUSEPORT), each subscribed to one channel, and
   ``--publishers`` connections that publish to it through the workers;
4. publishes as fast as the receivers keep up: a publisher stops sending while
   more than ``--window`` publications are not yet delivered to every
   subscriber, so nobody is dropped as a slow consumer and the figure is the
   steady state of the whole chain (publisher -> worker -> Redis -> every worker
   -> subscribers);
5. counts deliveries (``"pub":`` documents received) over ``--duration``
   seconds after a warm-up, then stops publishing and checks that every
   subscriber received every publication;
6. with ``MONITOR`` on the private Redis, publishes ``--rtt-publications`` more
   and counts the commands the workers sent meanwhile: Redis round trips per
   publication.

The generator is deliberately cheap per delivery (raw asyncio protocols that
count a byte pattern; frames are never decoded), so that the server, not the
load generator, is what runs out of CPU. It prints CPU used per component
(workers, Redis, generator, everything else on the machine) for every run,
because other work on a shared 2-core machine moves the figures: read the
spread, not one number.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import typing
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

CONFIG = """
allow_anonymous_connect_without_token = true
demo = "off"
ping_interval = "0"
client_command_rate_limit = 0
# Loopback only: the benchmark reads each worker's client count from /api/info.
api_insecure = true

[channels.namespaces.bench]
history_size = 1000
history_ttl = "60s"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_client = true
allow_publish_for_anonymous = true
"""

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- raw WebSocket


class RawClient(asyncio.Protocol):
    """A WebSocket client that never decodes a frame: it counts a pattern in the byte stream.

    Server frames are unmasked, and the JSON documents in them are written by the
    server, so counting ``"pub":`` (or ``"publish":``) occurrences counts pushes
    (or replies) exactly; ``carry`` keeps a pattern split across two reads whole.
    Client frames are masked with a zero key (RFC 6455 requires a mask, not a
    random one from a test client).
    """

    def __init__(self, pattern: bytes, on_count: Any, host: str, path: str) -> None:
        self.pattern = pattern
        self.on_count = on_count
        self.count = 0
        self.transport: asyncio.Transport | None = None
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Protocol: centrifuge-json\r\n\r\n"
        ).encode()
        self._head = b""
        self._carry = b""
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.seen = bytearray()
        self.keep_tail = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self._head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(self._head[:200].decode(errors="replace")))
                return
            data = self._head[end + 4 :]
            self._head = b""
            self.upgraded.set_result(None)
        if self.keep_tail:
            self.seen += data
            del self.seen[:-4096]
        chunk = self._carry + data
        found = chunk.count(self.pattern)
        self._carry = chunk[-(len(self.pattern) - 1) :]
        if found:
            self.count += found
            self.on_count(found)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_text(self, payload: bytes) -> None:
        assert self.transport is not None
        size = len(payload)
        if size < 126:
            head = bytes((0x81, 0x80 | size))
        elif size < 65536:
            head = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            head = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
        self.transport.write(head + b"\x00\x00\x00\x00" + payload)


async def open_raw(port: int, pattern: bytes, on_count: Any) -> RawClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: RawClient(pattern, on_count, f"127.0.0.1:{port}", "/connection/websocket"),
        "127.0.0.1",
        port,
    )
    await asyncio.wait_for(client.upgraded, 10)
    return client


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """Busy CPU time of the whole machine (all cores), in seconds."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid:
                    found.append(int(entry.name))
    return found


def taskset(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []


@dataclass
class Redis:
    url: str
    process: subprocess.Popen[bytes] | None = None
    directory: str = ""

    @property
    def port(self) -> int:
        match = re.search(r":(\d+)", self.url.split("//", 1)[1])
        return int(match.group(1)) if match else 6379

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_redis(cpus: str) -> Redis:
    directory = tempfile.mkdtemp(prefix="tidings-bench-redis-")
    port = free_port()
    process = subprocess.Popen(
        [
            *taskset(cpus),
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", directory,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                break
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.02)
    return Redis(f"redis://127.0.0.1:{port}/0", process, directory)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: list[str] = field(default_factory=list)

    def worker_pids(self) -> list[int]:
        """The processes that serve: the workers, or the process itself with one."""
        return children(self.process.pid) or [self.process.pid]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start_server(
    workers: int, broker: str, prefix: str, config: Path, cpus: str, extra: list[str]
) -> Server:
    process = subprocess.Popen(
        [
            *taskset(cpus),
            sys.executable, "-m", "tidings", "serve",
            "--config", str(config),
            "--port", "0",
            "--workers", str(workers),
            "--broker", broker,
            "--broker-prefix", prefix,
            "--log-level", "info",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline().decode(errors="replace")
        if not line:
            break
        lines.append(line.rstrip())
        match = re.search(r"listening on http://[\d.]+:(\d+)", line)
        if match:
            # The log keeps flowing: drain it so the pipe never fills.
            stream = process.stderr
            threading_drain(stream)
            return Server(process, int(match.group(1)), lines)
    process.kill()
    raise RuntimeError("tidings did not start:\n" + "\n".join(lines[-20:]))


def threading_drain(stream: Any) -> None:
    import threading

    def drain() -> None:
        for _ in iter(lambda: stream.readline(), b""):
            pass

    threading.Thread(target=drain, daemon=True).start()


# --------------------------------------------------------------------------- one run


@dataclass
class Result:
    workers: int
    deliveries_per_s: float
    publications_per_s: float
    cpu: dict[str, float]
    complete: bool
    split: list[int]


async def run_once(
    args: argparse.Namespace, workers: int, broker: str, prefix: str, config: Path, rep: int
) -> Result:
    server = start_server(workers, broker, prefix, config, args.server_cpus, args.server_args)
    channel = f"bench:w{workers}r{rep}"
    subscribers: list[RawClient] = []
    publishers: list[RawClient] = []
    delivered = 0
    progress = asyncio.Event()

    def on_delivery(count: int) -> None:
        nonlocal delivered
        delivered += count
        progress.set()

    try:
        connect = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"%s"}}' % channel.encode()
        for _ in range(args.subscribers):
            client = await open_raw(server.port, b'"pub":', on_delivery)
            client.keep_tail = True
            client.send_text(connect)
            subscribers.append(client)
        deadline = time.monotonic() + 30
        while not all(b'"subscribe":' in client.seen for client in subscribers):
            if time.monotonic() > deadline:
                raise RuntimeError("subscribers were not all subscribed within 30 s")
            await asyncio.sleep(0.05)
        for client in subscribers:
            client.keep_tail = False
        split = await worker_split(server.port, workers)

        acked = 0

        def on_ack(count: int) -> None:
            nonlocal acked
            acked += count

        for _ in range(args.publishers):
            publisher = await open_raw(server.port, b'"publish":', on_ack)
            publisher.send_text(b'{"id":1,"connect":{}}')
            publishers.append(publisher)
        payload = json.dumps({"text": "x" * max(0, args.payload - 12)}).encode()
        published = 0
        stop = False
        batch = args.batch

        async def publish_loop(publisher: RawClient) -> None:
            nonlocal published
            frame = b"\n".join(
                b'{"id":%d,"publish":{"channel":"%s","data":%s}}'
                % (n + 2, channel.encode(), payload)
                for n in range(batch)
            )
            while not stop:
                # Flow control: at most `window` publications ahead of the slowest delivery.
                while published - delivered / args.subscribers > args.window and not stop:
                    progress.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(progress.wait(), 1.0)
                if stop:
                    return
                published += batch
                publisher.send_text(frame)
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(publish_loop(p)) for p in publishers]
        await asyncio.sleep(args.warmup)  # warm-up: pub/sub, batching and caches settle
        pids = {"workers": server.worker_pids(), "generator": [os.getpid()]}
        if args.redis_pid:
            pids["redis"] = [args.redis_pid]
        before_cpu = {name: sum(map(cpu_seconds, group)) for name, group in pids.items()}
        before_machine = machine_busy_seconds()
        before, started = delivered, time.monotonic()
        before_published = published
        await asyncio.sleep(args.duration)  # the measured window
        after, elapsed = delivered, time.monotonic() - started
        after_published = published
        cpu = {
            name: (sum(map(cpu_seconds, group)) - before_cpu[name]) / elapsed
            for name, group in pids.items()
        }
        cpu["machine"] = (machine_busy_seconds() - before_machine) / elapsed
        cpu["others"] = cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine")
        stop = True
        await asyncio.gather(*tasks)
        expected = published * args.subscribers
        deadline = time.monotonic() + 30
        while delivered < expected and time.monotonic() < deadline:
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), 1.0)
        complete = delivered == expected and all(c.count == published for c in subscribers)
        return Result(
            workers,
            (after - before) / elapsed,
            (after_published - before_published) / elapsed,
            cpu,
            complete,
            split,
        )
    finally:
        for client in [*subscribers, *publishers]:
            if client.transport is not None:
                client.transport.close()
        server.stop()


async def worker_split(port: int, workers: int) -> list[int]:
    """Clients per worker, read from each worker's own entry in the API ``info``."""
    if workers == 1:
        return []
    seen: dict[str, int] = {}
    for _ in range(40):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /api/info HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n{}"
        )
        raw = await reader.read()
        writer.close()
        body = raw.partition(b"\r\n\r\n")[2]
        with contextlib.suppress(ValueError, KeyError, IndexError):
            node = json.loads(body)["result"]["nodes"][0]
            seen[node["uid"]] = node["num_clients"]
        if len(seen) == workers:
            break
    return sorted(seen.values())


# --------------------------------------------------------------------------- round trips


async def round_trips(args: argparse.Namespace, broker: str, prefix: str, config: Path) -> str:
    """Commands the workers send Redis per publication, counted with MONITOR."""
    from redis.asyncio import Redis as RedisClient

    from tidings.brokers.redis.scripts import PUBLISH

    server = start_server(2, broker, prefix, config, args.server_cpus, args.server_args)
    channel = "bench:rtt"
    admin = RedisClient.from_url(broker)
    marker = RedisClient.from_url(broker)
    subscribers: list[RawClient] = []
    try:
        for _ in range(10):
            client = await open_raw(server.port, b'"pub":', lambda n: None)
            client.send_text(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"bench:rtt"}}')
            subscribers.append(client)
        acked = 0
        done = asyncio.Event()
        total = args.rtt_publications

        def on_ack(count: int) -> None:
            nonlocal acked
            acked += count
            if acked >= total:
                done.set()

        publisher = await open_raw(server.port, b'"publish":{', on_ack)
        publisher.send_text(b'{"id":1,"connect":{}}')
        await marker.ping()
        sent: list[str] = []
        async with admin.monitor() as monitor:

            async def collect() -> None:
                while True:
                    entry = await monitor.next_command()
                    if "rtt-done" in entry["command"]:
                        return
                    if entry["client_type"] != "lua":
                        sent.append(entry["command"])

            collector = asyncio.create_task(collect())
            await asyncio.sleep(0.2)
            frame = b"\n".join(
                b'{"id":%d,"publish":{"channel":"%s","data":{"n":%d}}}'
                % (n + 2, channel.encode(), n)
                for n in range(total)
            )
            publisher.send_text(frame)
            await asyncio.wait_for(done.wait(), 30)
            await marker.echo("rtt-done")
            await asyncio.wait_for(collector, 10)
        publish_calls = sum(1 for c in sent if PUBLISH.sha in c)
        names: dict[str, int] = {}
        for command in sent:
            name = command.split()[0].strip('"').upper()
            names[name] = names.get(name, 0) + 1
        return (
            f"{total} publications through 2 workers: {len(sent)} commands sent to Redis "
            f"({', '.join(f'{k} {v}' for k, v in sorted(names.items()))}); "
            f"the publish script ran {publish_calls} times = "
            f"{publish_calls / total:.2f} round trips per publication "
            f"(other commands in the window: node announcements, presence refresh)"
        )
    finally:
        for client in subscribers:
            if client.transport is not None:
                client.transport.close()
        await admin.aclose()
        await marker.aclose()
        server.stop()


# --------------------------------------------------------------------------- main


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=20, help="publish commands per frame")
    parser.add_argument("--window", type=int, default=1000, help="publications in flight")
    parser.add_argument("--payload", type=int, default=64, help="bytes of publication data")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--redis-url", default="", help="default: a private redis-server")
    parser.add_argument("--server-cpus", default="", help="taskset -c for tidings")
    parser.add_argument("--redis-cpus", default="", help="taskset -c for the private Redis")
    parser.add_argument("--generator-cpus", default="", help="taskset -c for this process")
    parser.add_argument("--rtt-publications", type=int, default=500)
    parser.add_argument(
        "--server-arg",
        dest="server_args",
        action="append",
        default=[],
        help="extra flag for tidings serve (repeatable), e.g. --server-arg=--coalesce-delay=2ms",
    )
    args = parser.parse_args()
    if args.generator_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.generator_cpus.split(",")})
    redis = Redis(args.redis_url) if args.redis_url else start_redis(args.redis_cpus)
    args.redis_pid = redis.process.pid if redis.process is not None else 0
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    directory = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    config = directory / "bench.toml"
    config.write_text(CONFIG)
    counts = [int(w) for w in args.workers.split(",")]
    results: dict[int, list[Result]] = {w: [] for w in counts}
    try:
        print(
            f"{args.subscribers} subscribers on one channel, {args.publishers} publishers, "
            f"{args.payload}-byte payloads, {args.duration:.0f} s windows, "
            f"cpus: server {args.server_cpus or 'any'}, redis {args.redis_cpus or 'any'}, "
            f"generator {args.generator_cpus or 'any'}; {os.cpu_count()} cores; "
            f"server flags: {' '.join(args.server_args) or 'none'}"
        )
        for rep in range(args.repeat):
            order = counts if rep % 2 == 0 else list(reversed(counts))
            for workers in order:
                result = await run_once(args, workers, redis.url, prefix, config, rep)
                results[workers].append(result)
                cpu = ", ".join(f"{k} {v:.2f}" for k, v in result.cpu.items())
                per_delivery = result.cpu["workers"] / max(1.0, result.deliveries_per_s) * 1e6
                print(
                    f"  run {rep + 1} workers {workers}: {result.deliveries_per_s:,.0f} "
                    f"deliveries/s ({result.publications_per_s:,.0f} publications/s), "
                    f"complete {result.complete}, clients per worker {result.split or '-'}; "
                    f"cores used: {cpu}; workers' CPU per delivery {per_delivery:.2f} us"
                )
        medians = {
            w: statistics.median(r.deliveries_per_s for r in rs) for w, rs in results.items()
        }
        for workers, rs in results.items():
            values = [r.deliveries_per_s for r in rs]
            print(
                f"workers {workers}: median {medians[workers]:,.0f} deliveries/s "
                f"(min {min(values):,.0f}, max {max(values):,.0f}, {len(values)} runs)"
            )
        if 1 in medians and 2 in medians:
            ratios = [
                b.deliveries_per_s / a.deliveries_per_s
                for a, b in zip(results[1], results[2], strict=False)
            ]
            print(
                f"ratio 2 workers / 1 worker: {medians[2] / medians[1]:.2f} of the medians "
                f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
        if redis.process is not None:
            print(await round_trips(args, redis.url, prefix, config))
    finally:
        redis.stop()
        shutil.rmtree(directory, ignore_errors=True)
        if args.redis_url:
            from redis.asyncio import Redis as RedisClient

            client = RedisClient.from_url(args.redis_url)
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            for key in keys:
                await client.delete(key)
            await client.aclose()


if __name__ == "__main__":
    # SIGTERM ends the run like Ctrl-C does: the finally blocks stop Redis and tidings.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
