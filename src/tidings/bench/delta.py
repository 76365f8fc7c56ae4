"""Scenario G: bytes on the wire with and without delta compression.

Half the receivers subscribe with ``delta: "fossil"``, half without, to one
channel of the ``bench_delta`` namespace (``delta_publish`` on, so every client
publication asks for deltas). A publisher sends the successive states of a
~2 KB quote board of which each update changes three prices
(:class:`tidings.bench.quotes.QuoteBoard`), at a fixed rate. Every receiver
counts the bytes its socket received while publishing (TCP payload: WebSocket
frame headers included) and decodes every publication as centrifuge-js does,
applying deltas, so the check is that both halves got exactly the published
documents, in order.

A connection here is an asyncio protocol over the generator's own WebSocket
framing, like the other scenarios' clients, without their shared-bytes check:
this scenario is about bytes, not throughput, and decodes everything.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import cast

import msgspec

from tidings.bench import wsframe
from tidings.bench.payload import json_string
from tidings.bench.quotes import QuoteBoard
from tidings.bench.results import ScenarioResult
from tidings.bench.scenarios import Harness, _finish, _result
from tidings.protocol import fossil

RATE = 100.0
"""Publications per second: a fast-moving board, far from any throughput limit."""
NAMESPACE = "bench_delta"

_decode = msgspec.json.decode


class DeltaReceiver(asyncio.Protocol):
    """One subscriber: counts bytes, decodes publications (deltas applied), checks them."""

    def __init__(self, host: str, path: str, channel: str, *, delta: bool) -> None:
        self.host = host
        self.path = path
        self.channel = channel
        self.delta = delta
        self.transport: asyncio.Transport | None = None
        self.reader = wsframe.FrameReader()
        self.handshake: bytes | None = b""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.negotiated = False
        self.bytes = 0
        """Bytes received since :meth:`count_from_now`."""
        self.counting = False
        self.documents: list[bytes] = []
        """The publications' data, decoded, in arrival order."""
        self.previous = b""
        self.problems: list[str] = []
        self.lost = False
        self.expected: list[bytes] | None = None
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        subscribe = {"channel": self.channel}
        if self.delta:
            subscribe["delta"] = "fossil"
        opening = json.dumps({"id": 1, "connect": {"name": "tidings-bench"}}) + "\n"
        opening += json.dumps({"id": 2, "subscribe": subscribe})
        self.transport.write(
            wsframe.handshake_request(self.host, self.path) + wsframe.encode_text(opening.encode())
        )

    def count_from_now(self) -> None:
        self.bytes = 0
        self.counting = True

    def data_received(self, data: bytes) -> None:
        if self.counting:
            self.bytes += len(data)
        if self.handshake is not None:
            try:
                complete, data = wsframe.parse_handshake_response(self.handshake + data)
            except wsframe.HandshakeError as exc:
                self._problem(str(exc))
                return
            if not complete:
                self.handshake = data
                return
            self.handshake = None
        messages, _ = self.reader.feed(data)
        for message in messages:
            for line in message.split(b"\n"):
                if line:
                    self._document(line)

    def _document(self, line: bytes) -> None:
        if line == b"{}":  # a server ping
            if self.transport is not None:
                self.transport.write(wsframe.encode_text(b"{}"))
            return
        document = _decode(line)
        if document.get("id") == 2:
            result = document.get("subscribe")
            if result is None:
                self._problem(f"subscribe refused: {document.get('error')}")
                return
            self.negotiated = bool(result.get("delta"))
            if not self.ready.done():
                self.ready.set_result(None)
            return
        pub = document.get("push", {}).get("pub")
        if pub is None:
            return
        data = pub["data"]
        if self.negotiated:
            full = data.encode()
            if pub.get("delta"):
                full = fossil.apply(self.previous, full)
            self.previous = full
        else:
            full = msgspec.json.encode(data)
        self.documents.append(full)
        self._check_done()

    def expect(self, documents: list[bytes], done: asyncio.Future[None]) -> None:
        self.expected = documents
        self.done = done
        self._check_done()

    def _check_done(self) -> None:
        expected, done = self.expected, self.done
        if expected is None or done is None or done.done():
            return
        if len(self.documents) >= len(expected):
            done.set_result(None)

    def _problem(self, text: str) -> None:
        self.problems.append(text)
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(text))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"connection lost: {exc}"))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wsframe.encode_close(wsframe.CLOSE_NORMAL, "bench done"))
            self.transport.close()


async def _connect(harness: Harness, client: DeltaReceiver) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_connection(lambda: client, *harness.address)


async def delta_bytes(harness: Harness, receivers: int) -> ScenarioResult:
    """Scenario G: ``receivers`` subscribers, half with delta compression."""
    settings = harness.settings
    duration = settings.duration
    result = _result(
        harness, "G", f"G@{receivers}", receivers=receivers, rate_per_s=RATE, duration_s=duration
    )
    if harness.kind != "tidings":
        result.skipped = "the reference server has no delta compression"
        return result
    loop = asyncio.get_running_loop()
    channel = f"{NAMESPACE}:board-{harness.run_id}-{secrets.token_hex(3)}"
    halves = {True: max(1, receivers // 2), False: max(1, receivers - receivers // 2)}
    clients: list[DeltaReceiver] = []
    publisher: DeltaReceiver | None = None
    try:
        harness.progress.phase(f"opening {receivers:,} subscribers")
        for delta, count in halves.items():
            for _ in range(count):
                client = DeltaReceiver(harness.host_header, harness.path, channel, delta=delta)
                await _connect(harness, client)
                clients.append(client)
        sender = publisher = DeltaReceiver(harness.host_header, harness.path, channel, delta=False)
        await _connect(harness, sender)
        await asyncio.wait_for(
            asyncio.gather(*(c.ready for c in (*clients, sender))), settings.connect_timeout
        )
        refused = [c for c in clients if c.delta and not c.negotiated]
        if refused:
            result.error = (
                f"{len(refused)} subscribers asked for delta and were refused: the server "
                f"needs the {NAMESPACE} namespace of benchmarks/tidings-bench.toml"
            )
            return result
        for client in clients:
            client.count_from_now()
        board = QuoteBoard(fields=3)
        total = max(1, int(RATE * duration))
        published: list[bytes] = []
        prefix = b'{"publish":{"channel":%s,"data":' % json_string(channel)
        harness.progress.phase(f"publishing {RATE:.0f}/s", seconds=duration)
        cpu = harness.cpu_window()
        started = time.monotonic()
        while len(published) < total:
            due = min(total, int((time.monotonic() - started) * RATE) + 1)
            while len(published) < due:
                document = board.update()
                published.append(document)
                frame = b'%s%s},"id":%d}' % (prefix, document, len(published) + 2)
                assert sender.transport is not None
                sender.transport.write(wsframe.encode_text(frame))
            await asyncio.sleep(max(0.001, started + len(published) / RATE - time.monotonic()))
        harness.progress.phase("waiting for the last deliveries")
        done = [loop.create_future() for _ in clients]
        for client, future in zip(clients, done, strict=True):
            client.expect(published, future)
        try:
            await asyncio.wait_for(asyncio.gather(*done), settings.drain_timeout)
        except TimeoutError:
            result.notes.append(
                f"not every delivery arrived within {settings.drain_timeout:.0f} s of the end"
            )
        window = cpu.stop()
        wrong = [c for c in clients if c.documents != published]
        result.check = {
            "ok": not wrong and not any(c.problems or c.lost for c in clients),
            "receivers": len(clients),
            "wrong": len(wrong),
            "expected": total,
        }
        size = sum(map(len, published)) / total
        per_publication = {
            delta: sum(c.bytes for c in clients if c.delta is delta) / (count * total)
            for delta, count in halves.items()
        }
        result.metrics.update(
            publications=total,
            document_bytes=size,
            bytes_per_publication_plain=per_publication[False],
            bytes_per_publication_delta=per_publication[True],
            delta_share=per_publication[True] / per_publication[False],
        )
        return _finish(result, (), window)
    finally:
        for client in clients:
            client.close()
        if publisher is not None:
            publisher.close()
        await asyncio.sleep(0)
