"""Slow-header and connect floods: the health check and a control client are answered throughout.

The server runs in its own process with the default limits (10 s
``http_header_timeout``, no per-IP or accept-rate limit, so the flood reaches
it in full). While a flood runs, a prober asks ``GET /health`` on a fresh
connection every 100 ms and a publisher sends to a control subscriber every
100 ms; every probe must be answered within :data:`MAX_LATENCY` and every
publication must arrive, in order.

* Slow headers (slowloris): Debian's ``slowhttptest -H`` when it is installed,
  and always tidings' own asyncio version (hundreds of sockets that trickle
  one header line a second and never finish the request head).
* Connect flood: thousands of connections opened as fast as the client can,
  a third of them completing a WebSocket upgrade and then idling, the rest
  connecting and hanging up at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.client import connect

from tests.conftest import WsClient, token
from tests.security.conftest import KeepAliveHttp, ServerProcess

pytestmark = pytest.mark.timeout(90)

MAX_LATENCY = 2.0
PROBE_EVERY = 0.1
CHANNEL = "quiet:control"


@dataclass
class Watch:
    """Health probes and control publications while something else floods the server."""

    server: ServerProcess
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    published: int = 0
    received: list[int] = field(default_factory=list)

    async def probe_health(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.server.port), MAX_LATENCY
                )
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = await asyncio.wait_for(reader.read(), MAX_LATENCY)
                writer.close()
                if not answer.startswith(b"HTTP/1.1 200") or b'"status":"ok"' not in answer:
                    self.failures.append(f"health answered {answer[:60]!r}")
            except (TimeoutError, OSError) as exc:
                self.failures.append(f"health probe failed: {exc!r}")
            self.latencies.append(time.monotonic() - started)
            await asyncio.sleep(PROBE_EVERY)

    async def publish(self, stop: asyncio.Event, api: KeepAliveHttp) -> None:
        while not stop.is_set():
            self.published += 1
            try:
                await asyncio.wait_for(
                    api.api("publish", {"channel": CHANNEL, "data": {"n": self.published}}),
                    MAX_LATENCY,
                )
            except TimeoutError:
                self.failures.append(f"API publish {self.published} took over {MAX_LATENCY} s")
            await asyncio.sleep(PROBE_EVERY)

    async def read_control(self, client: WsClient, stop: asyncio.Event) -> None:
        while not stop.is_set() or len(self.received) < self.published:
            try:
                frame = await asyncio.wait_for(client.ws.recv(), MAX_LATENCY * 2)
            except TimeoutError:
                if stop.is_set():
                    return
                continue
            for line in str(frame).split("\n"):
                document = json.loads(line)
                push = document.get("push", {})
                if "pub" in push:
                    self.received.append(push["pub"]["data"]["n"])
                elif document == {}:
                    await client.ws.send("{}")

    def report(self, what: str) -> str:
        worst = max(self.latencies, default=0.0)
        return (
            f"{what}: {len(self.latencies)} health probes (worst {worst * 1000:.0f} ms), "
            f"control received {len(self.received)}/{self.published}"
        )


async def under_flood(
    flood: Callable[[ServerProcess], Awaitable[str]], what: str, **overrides: object
) -> None:
    server = await ServerProcess.start(**overrides)
    try:
        api = await KeepAliveHttp.open(server.port)
        ws = await connect(server.ws_url, compression=None, max_size=None)
        control = WsClient(ws)
        await control.connect(token("control"))
        await control.subscribe(CHANNEL)
        watch = Watch(server)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(watch.probe_health(stop)),
            asyncio.create_task(watch.publish(stop, api)),
            asyncio.create_task(watch.read_control(control, stop)),
        ]
        try:
            summary = await flood(server)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
        print(f"\n{watch.report(what)}; {summary}")
        assert not watch.failures, watch.failures[:5]
        assert watch.received == list(range(1, watch.published + 1))
        assert len(watch.latencies) >= 10
        assert not server.errors(), server.errors()
        await ws.close()
        await api.close()
    finally:
        await server.stop()


# --------------------------------------------------------------------------- slow headers


@pytest.mark.skipif(shutil.which("slowhttptest") is None, reason="Debian's slowhttptest missing")
async def test_slowhttptest_slow_headers() -> None:
    async def flood(server: ServerProcess) -> str:
        process = await asyncio.create_subprocess_exec(
            "slowhttptest", "-H", "-c", "1000", "-r", "500", "-i", "1", "-x", "16",
            "-l", "5", "-p", "2", "-u", f"http://127.0.0.1:{server.port}/health",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 40)
        text = output.decode(errors="replace")
        assert process.returncode == 0, text[-2000:]
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        connected = [" ".join(line.split()) for line in text.splitlines() if "connected:" in line]
        return f"slowhttptest: {connected[-1].strip() if connected else text[-300:]}"

    await under_flood(flood, "slowhttptest -H, 1,000 connections")


async def test_asyncio_slow_headers() -> None:
    """Our own slowloris: 800 sockets, one header line a second, never a blank line."""
    sockets = 800
    duration = 4.0
    trickle = 1.0  # the attack's pace (seconds between header lines), not a wait for anything

    async def one(port: int, started: list[int], cut: list[int]) -> None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        started.append(1)
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                writer.write(b"X-%d: %d\r\n" % (random.randrange(10**6), random.randrange(10**6)))
                await writer.drain()
                await asyncio.sleep(trickle)
        except OSError:
            cut.append(1)
        finally:
            writer.close()

    async def flood(server: ServerProcess) -> str:
        started: list[int] = []
        cut: list[int] = []
        await asyncio.gather(*(one(server.port, started, cut) for _ in range(sockets)))
        return f"slowloris: {len(started)} sockets held for {duration:.0f} s, {len(cut)} cut"

    await under_flood(flood, "asyncio slowloris, 800 sockets")


# --------------------------------------------------------------------------- connect flood


async def test_connect_flood() -> None:
    duration = 4.0
    wave = 1000
    max_idle = 2500
    concurrency = 400

    async def flood(server: ServerProcess) -> str:
        counts = {"upgraded": 0, "hung-up": 0, "refused": 0}
        idle: list[asyncio.StreamWriter] = []
        upgrade = (
            b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGlkaW5ncy1mbG9vZC0xNg==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        semaphore = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            async with semaphore:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                except OSError:
                    counts["refused"] += 1
                    return
                if index % 3:
                    writer.close()
                    counts["hung-up"] += 1
                    return
                writer.write(upgrade)
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                except (TimeoutError, OSError, asyncio.IncompleteReadError):
                    counts["refused"] += 1
                    writer.close()
                    return
                if head.startswith(b"HTTP/1.1 101"):
                    counts["upgraded"] += 1
                    idle.append(writer)  # holds the connection open, sends nothing more
                else:
                    counts["refused"] += 1
                    writer.close()

        started = time.monotonic()
        attempts = 0
        while time.monotonic() - started < duration:
            await asyncio.gather(*(one(attempts + index) for index in range(wave)))
            attempts += wave
            while len(idle) > max_idle:  # stay well inside the 20,000 descriptors
                idle.pop(0).close()
        elapsed = time.monotonic() - started
        for writer in idle:
            writer.close()
        assert counts["upgraded"] >= attempts // 3 * 0.9, counts
        return (
            f"connect flood: {attempts} connections in {elapsed:.1f} s "
            f"({attempts / elapsed:.0f}/s, up to {max_idle} upgraded ones held open): {counts}"
        )

    await under_flood(flood, "connect flood")
