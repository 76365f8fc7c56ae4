"""How many deliveries per second the generator itself can take in, per core.

Feeds ready-made server bytes (publication frames as tidings and the reference
send them) to real client objects over a stand-in transport, and times the
whole receive path: frame parsing, the offset check, counting. Sockets and the
event loop are left out, so this is an upper bound of the generator; compare it
with the deliveries per second a scenario measured to see the headroom.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tidings.bench.client import READY, BenchClient, ReferenceClient, Tally, TidingsClient
from tidings.bench.payload import make_payload


class _NullTransport(asyncio.Transport):
    """Swallows writes; the clients under test only need somewhere to write pongs."""

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def server_frame(payload: bytes) -> bytes:
    """An unmasked text frame, as a server sends it."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


def tidings_push(channel: str, payload: bytes, offset: int) -> bytes:
    """A publication push shaped like docs/protocol.md section 3 (with publisher info)."""
    return (
        b'{"push":{"channel":"%s","pub":{"data":%s,"info":{"user":"","client":'
        b'"9f7a2c1e-5b3d-4e8f-a6b1-2c3d4e5f6a7b"},"offset":%d}}}'
        % (channel.encode(), payload, offset)
    )


def _ready_client(kind: str, tally: Tally, loop: asyncio.AbstractEventLoop) -> BenchClient:
    cls = TidingsClient if kind == "tidings" else ReferenceClient
    client = cls(tally, loop.create_future(), host="127.0.0.1", path="/", channel="bench:capacity")
    client.transport = _NullTransport()
    client.state = READY
    return client


def measure(
    kind: str,
    *,
    frames_per_read: int,
    documents_per_frame: int = 1,
    receivers: int = 100,
    publications: int = 2000,
) -> dict[str, float]:
    """Deliveries per CPU second through ``kind``'s clients.

    ``publications`` are cut into reads of ``frames_per_read`` frames holding
    ``documents_per_frame`` documents each (tidings batches several per frame;
    the reference never does), and every read is fed to ``receivers`` clients of
    the same channel, as a broadcast would.
    """
    loop = asyncio.new_event_loop()
    try:
        return _measure(kind, frames_per_read, documents_per_frame, receivers, publications, loop)
    finally:
        loop.close()


def _measure(
    kind: str,
    frames_per_read: int,
    documents_per_frame: int,
    receivers: int,
    publications: int,
    loop: asyncio.AbstractEventLoop,
) -> dict[str, float]:
    tally = Tally()
    clients = [_ready_client(kind, tally, loop) for _ in range(receivers)]
    per_read = frames_per_read * documents_per_frame
    chunks = []
    number = 0
    for _ in range(max(1, publications // per_read)):
        frames = []
        for _ in range(frames_per_read):
            documents = []
            for _ in range(documents_per_frame):
                number += 1
                payload = make_payload(number, time.monotonic_ns())
                documents.append(
                    tidings_push("bench:capacity", payload, number)
                    if kind == "tidings"
                    else payload
                )
            frames.append(server_frame(b"\n".join(documents)))
        chunks.append(b"".join(frames))
    started = time.process_time()
    for chunk in chunks:
        for client in clients:
            client.data_received(chunk)
    cpu = time.process_time() - started
    delivered = number * receivers
    anomalies = sum(client.skipped + client.backward for client in clients)
    if tally.delivered != delivered or anomalies:
        raise AssertionError(
            f"capacity run miscounted: {tally.delivered} of {delivered}, {anomalies} anomalies"
        )
    return {
        "frames_per_read": frames_per_read,
        "documents_per_frame": documents_per_frame,
        "receivers": receivers,
        "deliveries": delivered,
        "cpu_s": cpu,
        "deliveries_per_cpu_s": delivered / cpu if cpu > 0 else float("inf"),
    }


CASES = {
    "tidings": ((1, 1), (16, 1), (1, 16)),
    "reference": ((1, 1), (16, 1)),
}
"""(frames per read, documents per frame) measured for each target."""


def capacity_report() -> dict[str, list[dict[str, float]]]:
    """The receive path's capacity for both targets in the shapes reads take."""
    return {
        kind: [
            measure(kind, frames_per_read=frames, documents_per_frame=documents)
            for frames, documents in cases
        ]
        for kind, cases in CASES.items()
    }
