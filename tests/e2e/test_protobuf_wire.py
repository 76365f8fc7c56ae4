"""The Protobuf client protocol over real sockets: WebSocket binary frames, ``http_stream``
with ``application/octet-stream``, and Protobuf ``POST /emulation``.

Raw clients build commands with the classes centrifuge-python generates from
``client.proto`` and parse every reply with them, so the bytes are checked against
the protocol's own definition; the real SDKs run in ``tests/compat``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from centrifuge.protocol import client_pb2 as pb
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import (
    ClientFactory,
    RunningServer,
    StartServer,
    assert_still_serving,
    control_client,
    token,
)
from tests.support.asgi import ASGI_SERVERS, Mounted, mounted
from tidings.protocol.protobuf import split_frame, varint

pytestmark = pytest.mark.timeout(30)

STEP = 5.0


def delimited(*messages: Any) -> bytes:
    out = b""
    for message in messages:
        body = message.SerializeToString()
        out += varint(len(body)) + body
    return out


class PbClient:
    """A raw Protobuf client over a real WebSocket (binary frames both ways)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.replies: dict[int, pb.Reply] = {}
        self.pushes: list[pb.Reply] = []
        self._next_id = 0

    async def _read(self, timeout: float) -> None:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(frame, bytes), "a Protobuf connection got a text frame"
        for message in split_frame(frame):
            reply = pb.Reply.FromString(message)
            if reply.id:
                self.replies[reply.id] = reply
            else:
                self.pushes.append(reply)

    async def call(self, **method: Any) -> pb.Reply:
        self._next_id += 1
        command_id = self._next_id
        await self.ws.send(delimited(pb.Command(id=command_id, **method)))
        deadline = asyncio.get_running_loop().time() + STEP
        while command_id not in self.replies:
            await self._read(max(0.01, deadline - asyncio.get_running_loop().time()))
        return self.replies.pop(command_id)

    async def connect(self, tok: str) -> pb.ConnectResult:
        reply = await self.call(connect=pb.ConnectRequest(token=tok))
        assert reply.HasField("connect"), reply
        return reply.connect

    async def subscribe(self, channel: str, **options: Any) -> pb.SubscribeResult:
        reply = await self.call(subscribe=pb.SubscribeRequest(channel=channel, **options))
        assert reply.HasField("subscribe"), reply
        return reply.subscribe

    async def push(self, predicate: Callable[[pb.Reply], bool]) -> pb.Reply:
        deadline = asyncio.get_running_loop().time() + STEP
        while True:
            for index, reply in enumerate(self.pushes):
                if reply.HasField("push") and predicate(reply):
                    return self.pushes.pop(index)
            await self._read(max(0.01, deadline - asyncio.get_running_loop().time()))

    async def publication(self, channel: str) -> pb.Publication:
        reply = await self.push(lambda r: r.push.channel == channel and r.push.HasField("pub"))
        return reply.push.pub

    async def closed(self) -> tuple[int | None, str | None]:
        try:
            while True:
                await self._read(STEP)
        except ConnectionClosed as closed:
            if closed.rcvd is None:
                return None, None
            return closed.rcvd.code, closed.rcvd.reason


PbFactory = Callable[..., Any]


@pytest.fixture
async def pb_client() -> AsyncIterator[PbFactory]:
    opened: list[PbClient] = []

    async def open_client(url: str, *, subprotocol: bool = True, **kwargs: Any) -> PbClient:
        if subprotocol:
            kwargs["subprotocols"] = ["centrifuge-protobuf"]
        kwargs.setdefault("compression", None)
        ws = await connect(url, open_timeout=5, max_size=None, **kwargs)
        client = PbClient(ws)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.ws.close()


# --------------------------------------------------------------------------- WebSocket


async def test_websocket_session(server: RunningServer, pb_client: PbFactory) -> None:
    client = await pb_client(server.ws_url)
    assert client.ws.subprotocol == "centrifuge-protobuf"
    result = await client.connect(token("alice"))
    assert result.client in server.node.clients and result.ping == 25
    subscribed = await client.subscribe("chat:pb", recoverable=True)
    assert subscribed.recoverable and len(subscribed.epoch) == 8

    published = await client.call(publish=pb.PublishRequest(channel="chat:pb", data=b'{"n":1}'))
    assert published.HasField("publish")
    own = await client.publication("chat:pb")
    assert (own.data, own.offset, own.info.user) == (b'{"n":1}', 1, "alice")
    await server.node.publish("chat:pb", {"n": 2})
    assert (await client.publication("chat:pb")).data == b'{"n":2}'

    history = await client.call(history=pb.HistoryRequest(channel="chat:pb", limit=10))
    assert [p.offset for p in history.history.publications] == [1, 2]
    presence = await client.call(presence_stats=pb.PresenceStatsRequest(channel="chat:pb"))
    assert presence.presence_stats.num_clients == 1
    refused = await client.call(subscribe=pb.SubscribeRequest(channel="nowhere:x"))
    assert refused.error.code == 102


async def test_format_query_selects_protobuf_without_a_subprotocol(
    server: RunningServer, pb_client: PbFactory
) -> None:
    """Clients that cannot set a subprotocol ask with ``?format=protobuf`` (or
    ``?cf_protocol=protobuf``), as Centrifugo reads it."""
    for query in ("format=protobuf", "cf_protocol=protobuf"):
        client = await pb_client(f"{server.ws_url}?{query}", subprotocol=False)
        assert client.ws.subprotocol is None
        await client.connect(token("alice"))


async def test_ping_and_pong_are_empty_messages(
    start_server: StartServer, pb_client: PbFactory
) -> None:
    server = await start_server(ping_interval=0.2, pong_timeout=0.5)
    client = await pb_client(server.ws_url)
    await client.connect(token("alice"))
    for _ in range(3):
        frame = await asyncio.wait_for(client.ws.recv(), STEP)
        assert frame == b"\x00"  # one empty Reply
        await client.ws.send(b"\x00")  # the SDK's pong: one empty Command
    await client.subscribe("chat:still-here")
    silent = await pb_client(server.ws_url)
    await silent.connect(token("bob"))
    assert await silent.closed() == (3012, "no pong")


async def test_a_json_client_and_a_protobuf_client_share_a_channel(
    server: RunningServer, pb_client: PbFactory, ws_client: ClientFactory
) -> None:
    """Each gets its own encoding of the same publications; data travels as it came."""
    binary = await pb_client(server.ws_url)
    await binary.connect(token("alice"))
    await binary.subscribe("chat:mixed")
    text = await ws_client(server.ws_url)
    await text.connect(token("bob"))
    await text.subscribe("chat:mixed")

    await binary.call(publish=pb.PublishRequest(channel="chat:mixed", data=b'{"from": "pb"}'))
    await text.call("publish", {"channel": "chat:mixed", "data": {"from": "json"}})
    got_pb = [await binary.publication("chat:mixed") for _ in range(2)]
    got_json = await text.publications("chat:mixed", 2)
    assert [json.loads(p.data) for p in got_pb] == [{"from": "pb"}, {"from": "json"}]
    assert [p["data"] for p in got_json] == [{"from": "pb"}, {"from": "json"}]
    assert [p.offset for p in got_pb] == [p["offset"] for p in got_json] == [1, 2]


@pytest.mark.parametrize(
    "frame",
    [
        b"\x05\x08",  # a message longer than its frame
        b"\x03\x0a\x01",  # a field longer than its message
        b"\x02\x08\xff",  # a truncated varint
        b"\x04\x0a\x02\xc3\x28",  # a string that is not UTF-8
    ],
    ids=["truncated-message", "truncated-field", "truncated-varint", "bad-utf8"],
)
async def test_malformed_protobuf_is_3501_and_the_others_carry_on(
    server: RunningServer, pb_client: PbFactory, ws_client: ClientFactory, frame: bytes
) -> None:
    control = await control_client(server, ws_client)
    bystander = await pb_client(server.ws_url)
    await bystander.connect(token("carol"))
    await bystander.subscribe("chat:control")
    client = await pb_client(server.ws_url)
    await client.connect(token("mallory"))
    await client.ws.send(frame)
    assert await client.closed() == (3501, "bad request")
    await assert_still_serving(server, control)
    assert (await bystander.publication("chat:control")).data.startswith(b'{"marker"')


async def test_wrong_frame_kind_is_3506(
    server: RunningServer, pb_client: PbFactory, ws_client: ClientFactory
) -> None:
    """Text on a Protobuf connection, binary on a JSON one: 3506 either way."""
    client = await pb_client(server.ws_url)
    await client.connect(token("alice"))
    await client.ws.send('{"id":2,"presence":{"channel":"chat:x"}}')
    assert await client.closed() == (3506, "inappropriate protocol")
    text = await ws_client(server.ws_url)
    await text.connect(token("bob"))
    await text.send_raw(delimited(pb.Command(id=2, presence=pb.PresenceRequest(channel="c"))))
    assert await text.closed() == (3506, "inappropriate protocol")


async def test_message_size_limit_is_the_same(
    start_server: StartServer, pb_client: PbFactory
) -> None:
    server = await start_server(max_message_size=4096)
    client = await pb_client(server.ws_url)
    await client.connect(token("alice"))
    big = pb.PublishRequest(channel="chat:big", data=b'"' + b"x" * 8192 + b'"')
    await client.ws.send(delimited(pb.Command(id=2, publish=big)))
    assert (await client.closed())[0] == 1009


async def test_deflate_negotiated_compresses_binary_frames(
    server: RunningServer, pb_client: PbFactory
) -> None:
    """permessage-deflate works on Protobuf connections too (the client inflates)."""
    client = await pb_client(server.ws_url, compression="deflate")
    await client.connect(token("alice"))
    await client.subscribe("chat:deflate")
    payload = json.dumps({"text": "y" * 2000}).encode()
    await server.node.publish("chat:deflate", json.loads(payload))
    assert json.loads((await client.publication("chat:deflate")).data) == json.loads(payload)


# --------------------------------------------------------------------------- http_stream


class PbStream:
    """A Protobuf ``http_stream`` response: length-prefixed replies, split as centrifuge-js
    splits them (whatever the chunking)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.buffer = b""

    async def next(self) -> pb.Reply:
        while True:
            if self.buffer:
                length, position = _varint(self.buffer)
                if position is not None and position + length <= len(self.buffer):
                    message = self.buffer[position : position + length]
                    self.buffer = self.buffer[position + length :]
                    return pb.Reply.FromString(message)
            chunk = await asyncio.wait_for(self.response.content.readany(), STEP)
            if not chunk:
                raise EOFError("the stream ended")
            self.buffer += chunk

    async def until(self, predicate: Callable[[pb.Reply], bool]) -> pb.Reply:
        while True:
            reply = await self.next()
            if predicate(reply):
                return reply


def _varint(data: bytes) -> tuple[int, int | None]:
    result = shift = 0
    for index, byte in enumerate(data):
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, index + 1
        shift += 7
    return 0, None


async def open_stream(http: aiohttp.ClientSession, server: RunningServer, body: bytes) -> PbStream:
    return await open_stream_at(http, server.http_url, body)


async def open_stream_at(http: aiohttp.ClientSession, base: str, body: bytes) -> PbStream:
    response = await http.post(
        f"{base}/connection/http_stream",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status == 200
    assert response.headers["content-type"] == "application/octet-stream"
    return PbStream(response)


async def emulate(
    http: aiohttp.ClientSession, url: str, session: str, node: str, *commands: pb.Command
) -> int:
    request = pb.EmulationRequest(node=node, session=session, data=delimited(*commands))
    async with http.post(
        f"{url}/emulation",
        data=request.SerializeToString(),
        headers={"Content-Type": "application/octet-stream"},
    ) as response:
        return response.status


async def test_http_stream_session(server: RunningServer, http: aiohttp.ClientSession) -> None:
    stream = await open_stream(
        http, server, delimited(pb.Command(id=1, connect=pb.ConnectRequest(token=token())))
    )
    connect = (await stream.next()).connect
    assert connect.node == server.node.id and len(connect.session) == 36
    session, node = connect.session, connect.node
    subscribe = pb.SubscribeRequest(channel="chat:e", recoverable=True)
    assert (
        await emulate(http, server.http_url, session, node, pb.Command(id=2, subscribe=subscribe))
        == 204
    )
    reply = await stream.until(lambda r: r.id == 2)
    assert reply.subscribe.recoverable

    publish = pb.PublishRequest(channel="chat:e", data=b'{"n":1}')
    presence = pb.PresenceRequest(channel="chat:e")
    status = await emulate(
        http,
        server.http_url,
        session,
        node,
        pb.Command(id=3, publish=publish),
        pb.Command(id=4, presence=presence),
    )
    assert status == 204
    seen: dict[str, pb.Reply] = {}
    while not {"3", "4", "pub"} <= set(seen):  # the push may come before or after 4
        reply = await stream.next()
        kinds = [field.name for field, _ in reply.push.ListFields() if field.name != "channel"]
        seen[kinds[0] if kinds else str(reply.id)] = reply
    assert seen["3"].HasField("publish")
    assert seen["pub"].push.pub.data == b'{"n":1}' and seen["pub"].push.pub.offset == 1
    assert len(seen["4"].presence.presence) == 1

    await server.node.disconnect_user("alice")
    disconnect = await stream.until(lambda r: r.push.HasField("disconnect"))
    assert disconnect.push.disconnect.code == 3503


async def test_http_stream_pings_answered_through_emulation(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(ping_interval=0.2, pong_timeout=0.5)
    stream = await open_stream(
        http, server, delimited(pb.Command(id=1, connect=pb.ConnectRequest(token=token())))
    )
    connect = (await stream.next()).connect
    for _ in range(2):
        assert await stream.next() == pb.Reply()  # the ping: an empty Reply
        assert (
            await emulate(http, server.http_url, connect.session, connect.node, pb.Command()) == 204
        )
    assert len(server.node.clients) == 1


async def test_malformed_protobuf_on_the_stream_is_3501(
    server: RunningServer, http: aiohttp.ClientSession, ws_client: ClientFactory
) -> None:
    control = await control_client(server, ws_client)
    stream = await open_stream(http, server, b"\x05\x08")
    disconnect = await stream.next()
    assert disconnect.push.disconnect.code == 3501
    with pytest.raises(EOFError):
        await stream.next()
    await assert_still_serving(server, control)


# --------------------------------------------------------------------------- the ASGI mount


@pytest.fixture(params=ASGI_SERVERS)
async def mount(request: pytest.FixtureRequest) -> AsyncIterator[Mounted]:
    async with mounted(request.param) as running:
        yield running


async def test_the_asgi_mount_carries_protobuf(
    mount: Mounted, pb_client: PbFactory, ws_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    """``rt.asgi()`` under uvicorn and hypercorn: binary messages both ways on WebSocket,
    the Protobuf http_stream and /emulation, a channel shared with a standalone JSON
    client; text on a Protobuf connection is 3506, malformed Protobuf 3501."""
    client = await pb_client(mount.ws_url)
    assert client.ws.subprotocol == "centrifuge-protobuf"
    await client.connect(token("alice"))
    await client.subscribe("chat:mounted")
    by_query = await pb_client(f"{mount.ws_url}?format=protobuf", subprotocol=False)
    await by_query.connect(token("bob"))
    await by_query.subscribe("chat:mounted")
    text = await ws_client(mount.standalone_ws_url)
    await text.connect(token("carol"))
    await text.subscribe("chat:mounted")

    published = await client.call(publish=pb.PublishRequest(channel="chat:mounted", data=b"[1]"))
    assert published.HasField("publish")
    assert (await client.publication("chat:mounted")).data == b"[1]"
    assert (await by_query.publication("chat:mounted")).data == b"[1]"
    assert [p["data"] for p in await text.publications("chat:mounted", 1)] == [[1]]

    stream = await open_stream_at(
        http, mount.base, delimited(pb.Command(id=1, connect=pb.ConnectRequest(token=token())))
    )
    connect = (await stream.next()).connect
    subscribe = pb.Command(id=2, subscribe=pb.SubscribeRequest(channel="chat:mounted"))
    assert await emulate(http, mount.base, connect.session, connect.node, subscribe) == 204
    assert (await stream.until(lambda r: r.id == 2)).HasField("subscribe")
    await mount.rt.publish("chat:mounted", {"n": 2})
    pushed = await stream.until(lambda r: r.push.HasField("pub"))
    assert json.loads(pushed.push.pub.data) == {"n": 2}

    await client.ws.send('{"id":5,"presence":{"channel":"chat:mounted"}}')
    assert await client.closed() == (3506, "inappropriate protocol")
    await by_query.ws.send(b"\x05\x08")
    assert await by_query.closed() == (3501, "bad request")
    assert (await text.publications("chat:mounted", 1))[0]["data"] == {"n": 2}
