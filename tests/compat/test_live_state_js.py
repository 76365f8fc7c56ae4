"""centrifuge-js 5.8 (npm ``centrifuge``, unmodified) on delta compression and conflation.

* ``delta: 'fossil'``: a subscription that negotiated it receives exactly the data one
  without it receives, in fewer bytes, on WebSocket and on the SSE emulation.
* A ticker (1,000 keys, 2,000 updates/s) with a subscriber that stops reading and one
  that asks for 10 updates/s: both end with the latest value of every key, neither is
  disconnected, and the server holds at most one publication per key for each.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from typing import Any

import pytest

from tests.compat.conftest import JsClientFactory
from tests.conftest import (
    ClientFactory,
    StartServer,
    full_namespace,
    make_config,
    standard_channels,
    token,
)
from tests.support.polling import eventually
from tidings.bench.quotes import QuoteBoard
from tidings.bench.wsframe import OP_CLOSE, OP_TEXT, FrameReader, encode_frame, handshake_request
from tidings.channels import ChannelOptions

pytestmark = pytest.mark.node

UPDATES = 40


def live_config(**overrides: Any) -> Any:
    channels = standard_channels()
    channels.namespaces["board"] = full_namespace(
        allowed_delta_types=["fossil"], delta_publish=True, join_leave=False, presence=False
    )
    channels.namespaces["ticker"] = ChannelOptions(
        history_size=10_000,
        history_ttl=300.0,
        force_recovery=True,
        allow_subscribe_for_client=True,
        conflate_by="key",
    )
    return make_config(channels=channels, **overrides)


def endpoint(port: int, transport: str) -> Any:
    if transport == "websocket":
        return f"ws://127.0.0.1:{port}/connection/websocket"
    return [{"transport": "sse", "endpoint": f"http://127.0.0.1:{port}/connection/sse"}]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_delta_fossil_gets_the_same_data_in_fewer_bytes(
    start_server: StartServer, js_client: JsClientFactory, transport: str
) -> None:
    server = await start_server(live_config())
    base = f"http://127.0.0.1:{server.port}"
    clients = {}
    for name, options in (("delta", {"delta": "fossil"}), ("plain", {})):
        js = clients[name] = await js_client()
        await js.call(
            "create",
            url=endpoint(server.port, transport),
            token=token(name),
            getToken=False,
            options={"emulationEndpoint": f"{base}/emulation"},
        )
        connected = await js.connect()
        assert connected["transport"] == transport
        subscribed = await js.subscribe("board:acme", **options)
        assert subscribed["positioned"] is True
        await js.call("bytes_received")  # count from here
    board = QuoteBoard(fields=3)
    sent = []
    for _ in range(UPDATES):
        document = board.update()
        sent.append(json.loads(document))
        await server.node.publish("board:acme", json.loads(document))
    received = {}
    for name, js in clients.items():
        events = await js.log.collect("publication", UPDATES, "board:acme")
        received[name] = [event["data"] for event in events]
    assert received["delta"] == received["plain"] == sent

    wire = {name: await js.call("bytes_received") for name, js in clients.items()}
    stats = await clients["delta"].call("delta_stats", channel="board:acme")
    assert stats["numDeltaPayloads"] == UPDATES - 1 and stats["numFullPayloads"] == 1
    print(  # the figures quoted in docs/benchmarks.md
        f"\n{transport}: {UPDATES} updates of a {len(document)}-byte JSON document, 3 fields "
        f"changed each: {wire['plain']} bytes without delta, {wire['delta']} with "
        f"({wire['delta'] / wire['plain']:.1%})"
    )
    assert wire["delta"] < wire["plain"] / 5


# --------------------------------------------------------------------------- conflation

KEYS = 1000
RATE = 2000  # updates per second
SECONDS = 2.0
HOT = 10
"""Half the updates go to 10 hot keys, as on a real ticker: conflation has much to save."""


def open_never_reading(port: int, channel: str) -> socket.socket:
    """A raw WebSocket client with a 4 KiB receive buffer that subscribes, then stops reading."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    commands = json.dumps({"id": 1, "connect": {"token": token("slow")}}) + "\n"
    commands += json.dumps({"id": 2, "subscribe": {"channel": channel}})
    request = handshake_request(f"127.0.0.1:{port}", "/connection/websocket")
    sock.sendall(request + encode_frame(OP_TEXT, commands.encode()))
    return sock


def apply(state: dict[str, int], frame: bytes | str) -> list[int]:
    """Fold the publications of one frame into ``state``; their offsets."""
    offsets = []
    for line in (frame.decode() if isinstance(frame, bytes) else frame).split("\n"):
        if not line.startswith('{"push"'):
            continue
        pub = json.loads(line)["push"].get("pub")
        if pub is not None:
            state[pub["data"]["s"]] = pub["data"]["p"]
            offsets.append(pub["offset"])
    return offsets


async def test_ticker_slow_and_rate_limited_subscribers_end_with_the_latest_of_every_key(
    start_server: StartServer, js_client: JsClientFactory, ws_client: ClientFactory
) -> None:
    server = await start_server(live_config())
    node = server.node
    channel = "ticker:all"
    loop = asyncio.get_running_loop()

    fast = await ws_client(server.ws_url)
    await fast.connect(token("fast"))
    await fast.subscribe(channel)
    slow_sock = await loop.run_in_executor(None, open_never_reading, server.port, channel)
    js = await js_client()
    await js.create(server.ws_url, token=token("paced"))
    await js.connect()
    await js.subscribe(channel, data={"max_frequency": 10})  # centrifuge-js asks for 10/s
    await eventually(lambda: node.local_channels().get(channel) == 3, "three subscribers")
    slow = next(iter(node.users["slow"]))
    paced = next(iter(node.users["paced"]))
    # A slow link: small kernel buffers on both ends (on loopback the server's would grow to
    # megabytes, which a two-second test never fills).
    server_socket = slow.transport.transport.get_extra_info("socket")
    server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    assert node.hub.conflation_backlog(channel, paced) == 0  # conflated from its subscribe on

    fast_state: dict[str, int] = {}
    fast_offsets: list[int] = []
    stop = asyncio.Event()

    async def read_fast() -> None:
        while not stop.is_set() or len(fast_offsets) < total:
            try:
                frame = await asyncio.wait_for(fast.ws.recv(), 0.2)
            except TimeoutError:
                continue
            fast_offsets.extend(apply(fast_state, frame))

    total = int(RATE * SECONDS)
    reader = loop.create_task(read_fast())
    rng = random.Random(3)
    expected: dict[str, int] = {}
    held_at_most = paced_held_at_most = 0
    paused_seen = False
    sent = 0
    started = loop.time()
    while sent < total:
        due = min(total, int((loop.time() - started) * RATE) + 1)
        while sent < due:
            sent += 1
            if sent <= KEYS:  # every key at least once
                key = f"k{sent - 1}"
            else:
                key = f"k{rng.randrange(HOT) if rng.random() < 0.5 else rng.randrange(KEYS)}"
            expected[key] = sent
            await node.publish(channel, {"s": key, "p": sent}, key=key)
        held = node.hub.conflation_backlog(channel, slow)
        if held is not None:
            held_at_most = max(held_at_most, held)
            paused_seen = paused_seen or slow.write_paused
        paced_held_at_most = max(
            paced_held_at_most, node.hub.conflation_backlog(channel, paced) or 0
        )
        await asyncio.sleep(0.005)
    elapsed = loop.time() - started
    stop.set()

    # The fast subscriber got every update, in order.
    await asyncio.wait_for(reader, 20)
    assert fast_offsets == list(range(1, total + 1)) and fast_state == expected

    # centrifuge-js at 10 updates/s: the latest of every key, fewer publications.
    def js_state() -> dict[str, int]:
        return {
            e.ctx["data"]["s"]: e.ctx["data"]["p"] for e in js.log.named("publication", channel)
        }

    await eventually(lambda: js_state() == expected, "centrifuge-js to hold the latest", within=10)
    paced_count = len(js.log.named("publication", channel))

    # The subscriber that stopped reading: held (one publication per key), not cut.
    assert paused_seen, "the never-reading client never filled its connection"
    assert 0 < held_at_most <= KEYS and paced_held_at_most <= KEYS
    assert slow.connected and not slow.closed
    slow_state: dict[str, int] = {}
    slow_offsets: list[int] = []
    frames = FrameReader()
    slow_sock.setblocking(False)
    response: bytes | None = b""  # the HTTP 101 response comes first
    deadline = loop.time() + 20
    while slow_state != expected:
        assert loop.time() < deadline, f"the slow client holds {len(slow_state)} keys"
        data = await asyncio.wait_for(loop.sock_recv(slow_sock, 1 << 16), 10)
        assert data, "the server closed the slow client"
        if response is not None:
            response += data
            if b"\r\n\r\n" not in response:
                continue
            data = response.split(b"\r\n\r\n", 1)[1]
            response = None
        messages, controls = frames.feed(data)
        assert not [c for c in controls if c[0] == OP_CLOSE], "the slow client was disconnected"
        for message in messages:
            slow_offsets.extend(apply(slow_state, message))
    assert slow.connected and paced.connected
    assert not js.log.named("disconnected", "client")
    slow_sock.close()
    print(
        f"\nticker: {total} updates of {KEYS} keys in {elapsed:.1f} s; the fast subscriber got "
        f"{len(fast_offsets)}, the one at 10/s {paced_count}, the one that stopped reading "
        f"{len(slow_offsets)} (at most {held_at_most} held for it); all end on the latest"
    )
    assert len(slow_offsets) < total / 2 and paced_count < total
