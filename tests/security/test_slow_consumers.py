"""1,000 subscribers that never read, 100 msg/s x 1 KiB: each cut off with 3008, RSS bounded.

The server runs in its own process with the production defaults for slow
consumers (``write_buffer_limit`` 1 MiB, ``slow_timeout`` 10 s), so its RSS is
measured alone, from ``/proc/<pid>/status``. The 1,000 subscribers are raw
sockets with a 4 KiB receive buffer that send their handshake, ``connect`` and
``subscribe`` in one write and then never read again. A publisher posts 100
publications a second of 1 KiB each through the server API; a control
subscriber reads normally and must receive every one of them, in order, while
the server sheds the 1,000.

Each slow client is disconnected with 3008 ("too slow" in the server's log:
one line per client, nothing else). The close frame itself may never reach a
client that does not read, so the server's log is the witness.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.conftest import WsClient, token
from tests.security.conftest import KeepAliveHttp, ServerProcess, mib
from tests.support.polling import eventually
from tidings.bench.wsframe import OP_TEXT, encode_frame, handshake_request
from tidings.transports.base import TRANSPORT_HIGH_WATER
from tidings.transports.websocket import CLOSE_TIMEOUT

pytestmark = pytest.mark.timeout(90)

SLOW_CLIENTS = 1000
RATE = 100  # publications per second
PAYLOAD = "x" * 1000  # ~1 KiB per publication with its envelope
CHANNEL = "quiet:firehose"
WRITE_BUFFER_LIMIT = 1 << 20  # the default
RSS_GROWTH_BOUND = SLOW_CLIENTS * 2 * TRANSPORT_HIGH_WATER
"""A stalled connection copies at most TRANSPORT_HIGH_WATER (64 KiB) into its transport; past
that the session queues references to the shared frames (a pointer each) until the client is
cut at write_buffer_limit queued bytes. Measured: ~57 MiB at the peak for 1,000 clients
(docs/security.md); twice the copies' share leaves room for allocator slack."""
RELEASED_BOUND = 32 << 20
"""Once cut and aborted, the connections' memory is freed: what glibc keeps mapped goes back
with malloc_trim, leaving a few MiB of heap fragmentation."""


def open_never_reading(port: int, index: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    commands = json.dumps({"id": 1, "connect": {"token": token(f"lazy{index}")}}) + "\n"
    commands += json.dumps({"id": 2, "subscribe": {"channel": CHANNEL}})
    request = handshake_request(f"127.0.0.1:{port}", "/connection/websocket")
    sock.sendall(request + encode_frame(OP_TEXT, commands.encode()))
    return sock


async def subscribers_of(api: KeepAliveHttp, channel: str) -> int:
    reply = await api.api("channels", {"pattern": channel})
    return int(reply["result"]["channels"].get(channel, {}).get("num_clients", 0))


async def collect(client: WsClient, received: list[int], stop: asyncio.Event) -> None:
    """The control subscriber: reads everything, answers pings."""
    while not stop.is_set():
        try:
            frame = await asyncio.wait_for(client.ws.recv(), 0.5)
        except TimeoutError:
            continue
        for line in str(frame).split("\n"):
            document: dict[str, Any] = json.loads(line)
            push = document.get("push", {})
            if push.get("channel") == CHANNEL and "pub" in push:
                received.append(push["pub"]["data"]["n"])
            elif document == {}:
                await client.ws.send("{}")


async def test_thousand_never_reading_subscribers() -> None:
    server = await ServerProcess.start()
    sockets: list[socket.socket] = []
    control_ws = None
    try:
        files_before = server.open_files
        api = await KeepAliveHttp.open(server.port)
        loop = asyncio.get_running_loop()
        for index in range(SLOW_CLIENTS):
            sockets.append(await loop.run_in_executor(None, open_never_reading, server.port, index))
        control_ws = await connect(server.ws_url, compression=None, max_size=None)
        control = WsClient(control_ws)
        await control.connect(token("control"))
        await control.subscribe(CHANNEL)

        async def all_subscribed() -> bool:
            return await subscribers_of(api, CHANNEL) >= SLOW_CLIENTS + 1

        await eventually(all_subscribed, "every subscriber to subscribe", within=20)
        baseline = server.rss

        received: list[int] = []
        stop_reading = asyncio.Event()
        reader = loop.create_task(collect(control, received, stop_reading))
        peak = baseline
        sent = 0
        started = time.monotonic()
        all_cut_at: float | None = None
        next_at = started
        while True:
            now = time.monotonic()
            if all_cut_at is None and server.count("too slow") >= SLOW_CLIENTS:
                all_cut_at = now
            if all_cut_at is not None and now - all_cut_at > 1.0:
                break  # one more second of traffic after the last cut
            assert now - started < 45, (
                f"after {now - started:.0f} s only {server.count('too slow')} slow clients cut"
            )
            sent += 1
            body = {"channel": CHANNEL, "data": {"n": sent, "blob": PAYLOAD}}
            reply = await api.api("publish", body)
            assert "result" in reply, reply
            peak = max(peak, server.rss)
            next_at += 1 / RATE
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        elapsed = time.monotonic() - started

        await eventually(
            lambda: len(received) >= sent, f"the control client to get all {sent}", within=10
        )
        stop_reading.set()
        await reader
        # A cut connection keeps its queue until the close handshake gives up (CLOSE_TIMEOUT:
        # the client never reads, so never echoes the close); then it is aborted and its
        # socket closed. Wait for the server's descriptors to come back down.
        await eventually(
            lambda: server.open_files <= files_before + 10,
            "the cut connections' descriptors to close",
            within=CLOSE_TIMEOUT + 10,
        )
        after = server.rss
        trimmed = await server.trimmed_rss()
        cut = server.count("too slow")
        print(
            f"\n{SLOW_CLIENTS} never-reading subscribers at {RATE} msg/s x 1 KiB: all cut after "
            f"{(all_cut_at or 0) - started:.1f} s ({sent} publications in {elapsed:.1f} s); "
            f"server RSS {mib(baseline)} subscribed, peak +{mib(peak - baseline)}, "
            f"after the cut +{mib(after - baseline)} (+{mib(trimmed - baseline)} once the "
            f"allocator returned its free pages); control received {len(received)}/{sent}"
        )
        assert received == list(range(1, sent + 1)), "the control subscriber lost publications"
        assert cut == SLOW_CLIENTS, f"{cut} 'too slow' disconnects for {SLOW_CLIENTS} clients"
        assert await subscribers_of(api, CHANNEL) == 1
        assert peak - baseline < RSS_GROWTH_BOUND, f"RSS grew by {mib(peak - baseline)}"
        assert trimmed - baseline < RELEASED_BOUND, f"{mib(trimmed - baseline)} still held"
        assert not server.errors(), server.errors()
        await api.close()
    finally:
        for sock in sockets:
            sock.close()
        if control_ws is not None:
            await control_ws.close()
        await server.stop()
