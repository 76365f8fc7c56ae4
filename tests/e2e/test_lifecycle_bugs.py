"""Subscription lifecycle edge cases: token overrides, races with the server API, writes
after close, and broker churn from long polling. Each test once failed on a real bug."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import weakref
from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    API_KEY,
    SECRET,
    ClientFactory,
    RunningServer,
    StartServer,
    make_config,
    token,
)
from tests.support.polling import eventually
from tidings.auth import make_token
from tidings.bench.wsframe import (
    OP_CLOSE,
    encode_close,
    encode_text,
    handshake_request,
    parse_close,
)
from tidings.brokers.memory import MemoryBroker
from tidings.node import Node
from tidings.server.app import TidingsServer


def sub_token(user: str, channel: str, override: dict[str, bool]) -> str:
    """A subscription token whose ``override`` claim switches channel options on or off."""
    claim = {name: {"value": value} for name, value in override.items()}
    return make_token(SECRET, user=user, channel=channel, ttl=3600, extra={"override": claim})


async def api_call(server: RunningServer, method: str, params: dict[str, Any]) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.http_url}/api/{method}", json=params, headers={"X-API-Key": API_KEY}
        ) as response,
    ):
        assert response.status == 200
        return await response.json()


async def presence_of(server: RunningServer, channel: str) -> set[str]:
    return {info.user for info in (await server.node.presence.presence(channel)).values()}


# --------------------------------------------------------------------------- overrides


async def test_override_presence_entry_is_removed_on_unsubscribe_and_disconnect(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    """``quiet`` has presence off; a token turns it on for one subscription, both ways."""
    channel = "quiet:override-presence"
    client = await ws_client(server.ws_url)
    await client.connect(token("bob"))
    await client.subscribe(channel, token=sub_token("bob", channel, {"presence": True}))
    assert await presence_of(server, channel) == {"bob"}
    await client.call("unsubscribe", {"channel": channel})
    await eventually(lambda: _empty(server, channel), "the entry to go on unsubscribe")

    await client.subscribe(channel, token=sub_token("bob", channel, {"presence": True}))
    assert await presence_of(server, channel) == {"bob"}
    (session,) = server.node.users["bob"]
    gone = weakref.ref(session)
    del session
    await client.close()
    await eventually(lambda: _empty(server, channel), "the entry to go on disconnect")

    def collected() -> bool:
        gc.collect()
        return gone() is None

    await eventually(collected, "nothing to hold the closed session")


async def _empty(server: RunningServer, channel: str) -> bool:
    return not await presence_of(server, channel)


async def test_override_join_leave_turns_pushes_on(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    """``quiet`` has join/leave off; tokens that turn it on get each other's joins and leaves."""
    channel = "quiet:override-join"
    on = {"join_leave": True, "force_push_join_leave": True}
    watcher = await ws_client(server.ws_url)
    await watcher.connect(token("watcher"))
    await watcher.subscribe(channel, token=sub_token("watcher", channel, on))
    own = await watcher.push(lambda d: "join" in d.get("push", {}))
    assert own["push"]["join"]["info"]["user"] == "watcher"
    joiner = await ws_client(server.ws_url)
    await joiner.connect(token("joiner"))
    await joiner.subscribe(channel, token=sub_token("joiner", channel, on))
    join = await watcher.push(lambda d: "join" in d.get("push", {}))
    assert join["push"]["join"]["info"]["user"] == "joiner"
    await joiner.call("unsubscribe", {"channel": channel})
    leave = await watcher.push(lambda d: "leave" in d.get("push", {}))
    assert leave["push"]["leave"]["info"]["user"] == "joiner"


async def test_override_join_leave_turns_pushes_off(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    """``chat`` pushes joins; a subscription whose token turns join/leave off is not announced."""
    channel = "chat:override-quiet"
    watcher = await ws_client(server.ws_url)
    await watcher.connect(token("watcher"))
    await watcher.subscribe(channel)
    own = await watcher.push(lambda d: "join" in d.get("push", {}))
    assert own["push"]["join"]["info"]["user"] == "watcher"
    hidden = await ws_client(server.ws_url)
    await hidden.connect(token("hidden"))
    await hidden.subscribe(channel, token=sub_token("hidden", channel, {"join_leave": False}))
    await hidden.call("unsubscribe", {"channel": channel})
    await server.node.publish(channel, {"marker": 1})
    first = await watcher.push()
    assert "pub" in first["push"], f"expected the marker, not a join or leave: {first}"


# --------------------------------------------------------------------------- races


class GatedBroker(MemoryBroker):
    """The memory engine, with stream reads held until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def history(self, channel: str, **kwargs: Any) -> Any:
        if channel.startswith("chat:gated"):
            self.waiting.set()
            await self.gate.wait()
        return await super().history(channel, **kwargs)


async def test_server_unsubscribe_during_subscribe_leaves_nothing_behind(
    ws_client: ClientFactory,
) -> None:
    broker = GatedBroker()
    node = Node(make_config(), broker=broker)
    app = TidingsServer(node)
    port = await app.start()
    server = RunningServer(app, node, port)
    try:
        client = await ws_client(server.ws_url)
        await client.connect(token("racer"))
        command_id = client.next_id()
        channel = "chat:gated-race"
        await client.send({"id": command_id, "subscribe": {"channel": channel}})
        await asyncio.wait_for(broker.waiting.wait(), 5)
        assert await api_call(server, "unsubscribe", {"user": "racer", "channel": channel}) == {
            "result": {}
        }
        (session,) = node.users["racer"]
        await eventually(lambda: channel not in session.subscriptions, "the API unsubscribe")
        broker.gate.set()
        reply = await client.reply(command_id)
        if "subscribe" in reply:  # answered, then told it is unsubscribed
            push = await client.push(lambda d: "unsubscribe" in d.get("push", {}))
            assert push["push"] == {
                "channel": channel,
                "unsubscribe": {"code": 2000, "reason": "server unsubscribe"},
            }
        else:
            assert "error" in reply
        await eventually(lambda: channel not in node.hub, "no hub entry for the channel")
        assert channel not in session.subscriptions
        assert not await node.presence.presence(channel)
        await node.publish(channel, {"after": True})
        await client.call("presence_stats", {"channel": "chat:other"})  # a round trip
        assert not [p for p in client.pushes if p.get("push", {}).get("pub")]
    finally:
        await app.stop()


# --------------------------------------------------------------------------- close

OP_CLOSE_HEADER = bytes((0x80 | OP_CLOSE,))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Every (unmasked) server frame in ``data``, in order: ``(opcode, payload)``."""
    frames = []
    position = 0
    while position + 2 <= len(data):
        opcode, length = data[position] & 0x0F, data[position + 1] & 0x7F
        start = position + 2
        if length == 126:
            length, start = int.from_bytes(data[start : start + 2], "big"), start + 2
        elif length == 127:
            length, start = int.from_bytes(data[start : start + 8], "big"), start + 8
        frames.append((opcode, data[start : start + length]))
        position = start + length
    return frames


@pytest.mark.parametrize(
    ("bad_frame", "code"),
    [(b'{"id":3,"ping":"\xff\xfe"}', 1007), (b"{", 3501)],
    ids=["invalid-utf8", "malformed-json"],
)
async def test_nothing_is_written_after_the_close_frame(
    start_server: StartServer, ws_client: ClientFactory, bad_frame: bytes, code: int
) -> None:
    """Once tidings has sent its close frame, nothing follows it on that connection, even
    while the socket is still draining what was queued before it."""
    server = await start_server(write_buffer_limit=64 * 1024 * 1024, slow_timeout=60.0)
    control = await ws_client(server.ws_url)
    await control.connect(token("control"))
    channel = "chat:after-close"
    await control.subscribe(channel)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills quickly
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 24)
    writer.write(handshake_request("127.0.0.1", "/connection/websocket"))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    commands = [
        {"id": 1, "connect": {"token": token("doomed")}},
        {"id": 2, "subscribe": {"channel": channel}},
    ]
    writer.write(encode_text("\n".join(json.dumps(c) for c in commands).encode()))
    await writer.drain()
    await eventually(lambda: "doomed" in server.node.users, "the connect")
    (doomed,) = server.node.users["doomed"]
    await eventually(lambda: channel in doomed.subscriptions, "the subscribe")
    sent = 0
    # The doomed client reads nothing now: publish until its socket has a queue.
    while doomed.transport.write_buffer_size() == 0:
        sent += 1
        await server.node.publish(channel, {"n": sent, "pad": "x" * 50_000})
        await control.publications(channel, 1)
        assert sent < 2_000, "the doomed connection never queued anything"
    writer.write(encode_text(bad_frame))
    await writer.drain()
    await eventually(lambda: doomed.transport.closed, "tidings to close the connection")
    for _ in range(5):
        sent += 1
        await server.node.publish(channel, {"n": sent, "after": True})
    await control.publications(channel, 5)  # the hub has flushed to every subscriber
    received = bytearray()
    close_sent = False
    while True:
        data = await asyncio.wait_for(reader.read(1 << 20), 10)
        if not data:
            break
        received += data
        if not close_sent and OP_CLOSE_HEADER in received:
            writer.write(encode_close(code))  # complete the close handshake
            close_sent = True
    opcodes = [opcode for opcode, _ in server_frames(bytes(received))]
    assert OP_CLOSE in opcodes
    after = opcodes[opcodes.index(OP_CLOSE) + 1 :]
    assert after == [], f"{len(after)} frames written after the close frame"
    (close_payload,) = [p for op, p in server_frames(bytes(received)) if op == OP_CLOSE]
    assert parse_close(close_payload)[0] == code
    writer.close()


# --------------------------------------------------------------------------- long polling


class CountingBroker(MemoryBroker):
    """The memory engine, counting the node's interest changes."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribes: list[str] = []
        self.unsubscribes: list[str] = []

    async def subscribe(self, channel: str) -> None:
        self.subscribes.append(channel)
        await super().subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.unsubscribes.append(channel)
        await super().unsubscribe(channel)


async def test_long_polls_do_not_churn_the_broker() -> None:
    broker = CountingBroker()
    config = make_config(broker_unsubscribe_delay=0.5)
    node = Node(config, broker=broker)
    app = TidingsServer(node)
    port = await app.start()
    channel = "positioned:polled"
    try:
        cursor = ""
        async with aiohttp.ClientSession() as http:

            async def poll() -> dict[str, Any]:
                params = {"channel": channel, "token": token("poller")}
                if cursor:
                    params["cursor"] = cursor
                url = f"http://127.0.0.1:{port}/longpoll"
                async with http.get(url, params=params, timeout=aiohttp.ClientTimeout(5)) as got:
                    answer: dict[str, Any] = await got.json(content_type=None)
                    return answer

            for number in range(1, 9):
                waiting = asyncio.ensure_future(poll())
                await eventually(lambda: channel in node.hub, "the poll to wait")
                await node.publish(channel, {"n": number})
                answer = await waiting
                assert [p["data"] for p in answer["publications"]] == [{"n": number}]
                cursor = answer["cursor"]
        assert broker.subscribes == [channel], "one broker subscription for every poll"
        assert broker.unsubscribes == []
        await eventually(lambda: broker.unsubscribes == [channel], "the grace period to end")
        assert channel not in node.hub
    finally:
        await app.stop()
