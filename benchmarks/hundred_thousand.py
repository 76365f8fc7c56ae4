"""Scenario D at full size: 100,000 idle connections held 60 s, one publication to all.

    .venv/bin/python benchmarks/hundred_thousand.py [--connections 100000] [--hold 60]
        [--workers 6] [--generators 6] [--markdown docs/benchmarks.md]

Why a separate script: this machine allows 20,000 open files per process and the
limit cannot be raised here (no CAP_SYS_RESOURCE), so neither one server process
nor one load-generator process can hold 100,000 sockets. ``tidings bench``
scenario D therefore stops at what one process can hold, for tidings and the
reference alike. This script holds the full count the way a deployment would on
such a machine: ``tidings serve --workers N`` (SO_REUSEPORT, sharing a private
Redis), and N generator processes, each with its own loopback source address.

What it measures:

1. every generator process opens its share of connections; each sends connect
   and subscribe in its first frame and waits for the subscribe reply;
2. all of them are held idle for ``--hold`` seconds (the server pings them; the
   clients answer);
3. one publication goes in through the server API; ``t0`` is taken just before
   the request is sent (``time.monotonic`` is one clock for every process);
4. each generator reports when its last connection received the publication,
   and checks that every connection got it exactly once, with the expected offset;
5. steps 3-4 are repeated ``--rounds`` times (a few seconds apart), because on a
   2-core machine running 12 processes one round can land on a busy moment.

Reported: connections held, the time from ``t0`` to the last delivery in each
round (and their median), and the server's RSS (all processes) per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from redis_workers import children, free_port, start_redis  # noqa: E402

from tidings.bench.report import replace_section  # noqa: E402

API_KEY = "hundred-thousand-bench"
CHANNEL = "bench:hundred-thousand"
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def _frame(payload: bytes) -> bytes:
    """A masked client text frame (mask of zeros: the payload goes as is)."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, 0x80 | length)) + b"\0\0\0\0" + payload
    return bytes((0x81, 0x80 | 126)) + length.to_bytes(2, "big") + b"\0\0\0\0" + payload


SUBSCRIBE = _frame(
    b'{"connect":{},"id":1}\n{"subscribe":{"channel":"' + CHANNEL.encode() + b'"},"id":2}'
)
PONG = _frame(b"{}")


class Round:
    """Arrivals of one publication across this process's connections."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.last = 0.0
        self.all_in = asyncio.Event()

    def reset(self) -> None:
        self.count = 0
        self.last = 0.0
        self.all_in.clear()

    def arrived(self, now: float) -> None:
        self.count += 1
        self.last = max(self.last, now)
        if self.count >= self.expected:
            self.all_in.set()


class Idle(asyncio.Protocol):
    """One connection: handshake, connect + subscribe, then answer pings and wait."""

    __slots__ = ("buffer", "ready", "received", "round", "state", "transport")

    def __init__(self, ready: asyncio.Future[None], round_: Round) -> None:
        self.ready = ready
        self.round = round_
        self.buffer = b""
        self.state = 0
        self.received = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(
            b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        if self.state == 0:
            _, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.buffer = rest
            self.state = 1
            assert self.transport is not None
            self.transport.write(SUBSCRIBE)
        while len(self.buffer) >= 2:
            length = self.buffer[1] & 0x7F
            start = 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length = int.from_bytes(self.buffer[2:4], "big")
                start = 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                length = int.from_bytes(self.buffer[2:10], "big")
                start = 10
            if len(self.buffer) < start + length:
                return
            payload = self.buffer[start : start + length]
            self.buffer = self.buffer[start + length :]
            self._message(payload, now)

    def _message(self, payload: bytes, now: float) -> None:
        for line in payload.split(b"\n"):
            if line == b"{}":
                assert self.transport is not None
                self.transport.write(PONG)
            elif b'"subscribe"' in line and self.state == 1:
                self.state = 2
                if not self.ready.done():
                    self.ready.set_result(None)
            elif b'"pub"' in line:
                self.received += 1
                if b'"offset":%d' % self.received not in line:
                    self.received += 1000  # a wrong publication fails the exactly-once check
                self.round.arrived(now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before subscribing"))


async def _generate(port: int, count: int, source: str, conn: object) -> None:
    loop = asyncio.get_running_loop()
    round_ = Round(count)
    clients = []
    for first in range(0, count, 500):
        batch = []
        for _ in range(first, min(count, first + 500)):
            ready: asyncio.Future[None] = loop.create_future()
            client = Idle(ready, round_)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
            sock.bind((source, 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.create_connection(lambda c=client: c, sock=sock)  # type: ignore[misc]
            batch.append(client)
        await asyncio.wait_for(asyncio.gather(*(c.ready for c in batch)), 60)
        clients.extend(batch)
    conn.send(("ready", len(clients)))  # type: ignore[attr-defined]
    rounds = 0
    while await loop.run_in_executor(None, conn.recv) == "published":  # type: ignore[attr-defined]
        rounds += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(round_.all_in.wait(), 30)
        exact = sum(1 for c in clients if c.received == rounds)
        conn.send(("done", exact, round_.last))  # type: ignore[attr-defined]
        round_.reset()
    for client in clients:
        if client.transport is not None:
            client.transport.close()


def generator(port: int, count: int, source: str, conn: object) -> None:
    import uvloop

    uvloop.run(_generate(port, count, source, conn))


@dataclass
class Result:
    connections: int
    exact: list[int]
    last_delivery_ms: list[float]
    rss_per_connection: float
    workers: int
    rss_total_mib: float

    @property
    def median_ms(self) -> float:
        return statistics.median(self.last_delivery_ms)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def publish(port: int) -> float:
    body = json.dumps({"channel": CHANNEL, "data": {"hello": "everyone"}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/publish",
        data=body,
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
    )
    t0 = time.monotonic()
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, response.status
    return t0


def run(connections: int, hold: float, workers: int, generators: int, rounds: int) -> Result:
    redis = start_redis("")
    port = free_port()
    env = {**os.environ, "TIDINGS_API_KEY": API_KEY, "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen(
        [
            sys.executable, "-m", "tidings", "serve",
            "--config", str(ROOT / "benchmarks" / "tidings-bench.toml"),
            "--port", str(port), "--workers", str(workers),
            "--broker", redis.url, "--log-level", "warning",
        ],
        env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("tidings did not start") from None
                time.sleep(0.1)
        pids = children(server.pid) or [server.pid]
        base = sum(rss_kib(pid) for pid in [server.pid, *pids])
        context = multiprocessing.get_context("spawn")
        share = connections // generators
        pipes, processes = [], []
        for index in range(generators):
            count = share + (1 if index < connections % generators else 0)
            parent, child = context.Pipe()
            process = context.Process(
                target=generator, args=(port, count, f"127.0.0.{index + 2}", child)
            )
            process.start()
            pipes.append(parent)
            processes.append(process)
        held = 0
        for pipe in pipes:
            kind, count = pipe.recv()
            assert kind == "ready"
            held += count
        print(f"{held:,} connections subscribed; holding them {hold:.0f} s", flush=True)
        time.sleep(hold)
        pids = children(server.pid) or [server.pid]
        rss = sum(rss_kib(pid) for pid in [server.pid, *pids])
        exact_counts: list[int] = []
        times: list[float] = []
        for number in range(rounds):
            if number:
                time.sleep(3)
            t0 = publish(port)
            for pipe in pipes:
                pipe.send("published")
            exact = 0
            last = t0
            for pipe in pipes:
                kind, got, latest = pipe.recv()
                assert kind == "done"
                exact += got
                last = max(last, latest)
            exact_counts.append(exact)
            times.append((last - t0) * 1000)
            print(
                f"round {number + 1}: last delivery {times[-1]:,.0f} ms after publish", flush=True
            )
        for pipe in pipes:
            pipe.send("stop")
        for process in processes:
            process.join(30)
        return Result(
            connections=held,
            exact=exact_counts,
            last_delivery_ms=times,
            rss_per_connection=(rss - base) * 1024 / max(1, held),
            workers=workers,
            rss_total_mib=rss / 1024,
        )
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        redis.stop()


MARKER = "<!-- hundred-thousand -->"


def markdown(result: Result, hold: float) -> str:
    exact = " / ".join(f"{n:,}" for n in result.exact)
    times = " / ".join(f"{t:,.0f} ms" for t in result.last_delivery_ms)
    return f"""{MARKER}
## Scenario D at full size: 100,000 connections

One process may hold at most 20,000 open files on this machine (the hard limit cannot be
raised here), so the table above stops scenario D at what one process holds, for both
servers. `benchmarks/hundred_thousand.py` holds the full count the way a deployment on such a
machine would: `tidings serve --workers {result.workers}` sharing a private Redis, and as many
generator processes, each from its own loopback address.

| figure | tidings |
|---|---:|
| connections held {hold:.0f} s | {result.connections:,} |
| received each publication exactly once | {exact} |
| time from publish to the last delivery, per round | {times} |
| median of the rounds | {result.median_ms:,.0f} ms |
| server RSS, all processes | {result.rss_total_mib:,.0f} MiB |
| server RSS per connection | {result.rss_per_connection / 1024:.2f} KiB |
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--hold", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--generators", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", type=Path, help="append the result to this page")
    options = parser.parse_args()
    result = run(
        options.connections, options.hold, options.workers, options.generators, options.rounds
    )
    print(
        f"{result.connections:,} held, {min(result.exact):,} exactly once in every round, last "
        f"delivery {result.median_ms:,.0f} ms after publish (median), server RSS "
        f"{result.rss_total_mib:,.0f} MiB ({result.rss_per_connection / 1024:.2f} KiB/connection)"
    )
    if options.markdown is not None:
        text = options.markdown.read_text() if options.markdown.exists() else ""
        options.markdown.write_text(replace_section(text, MARKER, markdown(result, options.hold)))


if __name__ == "__main__":
    main()
