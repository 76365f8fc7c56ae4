"""A session speaking Protobuf, driven with bytes in and bytes out (no socket, a fake clock).

The same session code as ``test_session.py``, over a Protobuf wire format: commands
are built with the classes centrifuge-python generates from ``client.proto`` and
framed as the SDKs frame them (each message prefixed with its varint length); every
reply and push the session writes is parsed back with the same classes. Codes and
limits are the JSON protocol's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from centrifuge.protocol import client_pb2 as pb

from tests.conftest import SECRET, make_config
from tests.support.clock import FakeClock
from tests.support.polling import eventually
from tests.support.sessions import RecordingTransport
from tidings.auth import make_token
from tidings.errors import Disconnect
from tidings.node import Node
from tidings.protocol.protobuf import split_frame, varint
from tidings.protocol.wire import ProtobufWire
from tidings.session import RequestInfo, Session


def _unwrapped(payload: bytes) -> bytes:
    return payload


WIRE = ProtobufWire("protobuf-test", _unwrapped)
"""Length-prefixed replies, as a WebSocket binary frame or stream chunk holds them."""


def delimited(*commands: pb.Command) -> bytes:
    """One frame as the SDKs send it."""
    out = b""
    for command in commands:
        body = command.SerializeToString()
        out += varint(len(body)) + body
    return out


def protobuf_replies(frames: list[bytes]) -> list[pb.Reply]:
    """Every reply written, parsed by the SDK's classes."""
    return [pb.Reply.FromString(m) for data in frames for m in split_frame(data)]


class Harness:
    def __init__(self, node: Node, clock: FakeClock) -> None:
        self.node = node
        self.clock = clock
        self.transport = RecordingTransport(WIRE, protobuf_replies)
        self.session = Session(node, self.transport, RequestInfo("192.0.2.7"))

    def token(self, user: str = "alice", **claims: Any) -> str:
        return make_token(SECRET, user=user, ttl=claims.pop("ttl", 3600), clock=self.clock.time)

    async def send_frame(self, frame: bytes) -> list[pb.Reply]:
        self.session.handle_frame(frame)
        await self.session.idle()
        await asyncio.sleep(0)  # the hub flushes at the end of the loop turn
        return self.transport.take()

    async def send(self, *commands: pb.Command) -> list[pb.Reply]:
        return await self.send_frame(delimited(*commands))

    async def call(self, command: pb.Command) -> pb.Reply:
        written = await self.send(command)
        replies = [r for r in written if r.id == command.id]
        assert len(replies) == 1, written
        return replies[0]

    async def connect(self, user: str = "alice") -> pb.ConnectResult:
        reply = await self.call(pb.Command(id=1, connect=pb.ConnectRequest(token=self.token(user))))
        assert reply.HasField("connect"), reply
        return reply.connect


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def node(clock: FakeClock) -> AsyncIterator[Node]:
    running = Node(make_config(broker_unsubscribe_delay=0.0), clock=clock)
    await running.start()
    yield running
    await running.shutdown()


@pytest.fixture
async def harness(node: Node, clock: FakeClock) -> Harness:
    return Harness(node, clock)


# --------------------------------------------------------------------------- commands


async def test_connect_reply(harness: Harness) -> None:
    result = await harness.connect()
    assert result.version == harness.node.version
    assert result.expires and result.ttl == 3600
    assert (result.ping, result.pong) == (25, True)
    assert harness.node.clients[result.client] is harness.session


async def test_subscribe_publish_history_presence(harness: Harness) -> None:
    """Every reply of the tour, and the publication push, as the SDK parses them."""
    client = (await harness.connect()).client
    subscribed = await harness.call(
        pb.Command(id=2, subscribe=pb.SubscribeRequest(channel="chat:pb", recoverable=True))
    )
    assert subscribed.subscribe.recoverable and subscribed.subscribe.positioned
    epoch = subscribed.subscribe.epoch
    assert len(epoch) == 8

    written = await harness.send(
        pb.Command(id=3, publish=pb.PublishRequest(channel="chat:pb", data=b'{"n": 1}'))
    )
    reply, push = written
    assert reply.id == 3 and reply.HasField("publish")  # present, though empty
    assert push.id == 0 and push.push.channel == "chat:pb"
    assert push.push.pub.data == b'{"n": 1}'  # the bytes as they came
    assert push.push.pub.offset == 1
    assert (push.push.pub.info.user, push.push.pub.info.client) == ("alice", client)

    await harness.node.publish("chat:pb", {"n": 2})  # a JSON publisher: its JSON bytes
    await eventually(lambda: harness.transport.written, what="the publication push")
    (server_push,) = harness.transport.take()
    assert server_push.push.pub.data == b'{"n":2}' and server_push.push.pub.offset == 2

    history = await harness.call(
        pb.Command(
            id=4,
            history=pb.HistoryRequest(
                channel="chat:pb", limit=10, since=pb.StreamPosition(offset=1, epoch=epoch)
            ),
        )
    )
    assert [p.data for p in history.history.publications] == [b'{"n":2}']
    assert (history.history.offset, history.history.epoch) == (2, epoch)

    presence = await harness.call(pb.Command(id=5, presence=pb.PresenceRequest(channel="chat:pb")))
    assert list(presence.presence.presence) == [client]
    assert presence.presence.presence[client].user == "alice"
    stats = await harness.call(
        pb.Command(id=6, presence_stats=pb.PresenceStatsRequest(channel="chat:pb"))
    )
    assert (stats.presence_stats.num_clients, stats.presence_stats.num_users) == (1, 1)

    gone = await harness.call(
        pb.Command(id=7, unsubscribe=pb.UnsubscribeRequest(channel="chat:pb"))
    )
    assert gone.HasField("unsubscribe")
    assert "chat:pb" not in harness.session.subscriptions


async def test_recovery_returns_exactly_the_missed(harness: Harness) -> None:
    await harness.connect()
    first = await harness.call(
        pb.Command(id=2, subscribe=pb.SubscribeRequest(channel="chat:r", recoverable=True))
    )
    await harness.call(pb.Command(id=3, unsubscribe=pb.UnsubscribeRequest(channel="chat:r")))
    for n in (1, 2, 3):
        await harness.node.publish("chat:r", {"n": n})
    again = await harness.call(
        pb.Command(
            id=4,
            subscribe=pb.SubscribeRequest(
                channel="chat:r", recover=True, offset=1, epoch=first.subscribe.epoch
            ),
        )
    )
    result = again.subscribe
    assert result.was_recovering and result.recovered
    assert [(p.offset, json.loads(p.data)) for p in result.publications] == [
        (2, {"n": 2}),
        (3, {"n": 3}),
    ]


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (pb.Command(subscribe=pb.SubscribeRequest(channel="nowhere:a")), 102),
        (pb.Command(subscribe=pb.SubscribeRequest(channel="$chat:a")), 103),
        (pb.Command(publish=pb.PublishRequest(channel="quiet:a", data=b"{}")), 103),
        (pb.Command(history=pb.HistoryRequest(channel="quiet:a")), 108),
        (pb.Command(rpc=pb.RPCRequest(method="nothing")), 108),
        (pb.Command(publish=pb.PublishRequest(channel="open:a", data=b"\x01\xff")), 107),
        (pb.Command(publish=pb.PublishRequest(channel="open:a")), 107),
    ],
    ids=[
        "unknown-namespace",
        "private",
        "publish-forbidden",
        "no-history",
        "no-rpc-handlers",
        "data-not-json",
        "no-data",
    ],
)
async def test_refusals_are_error_replies(harness: Harness, command: pb.Command, code: int) -> None:
    await harness.connect()
    command.id = 2
    reply = await harness.call(command)
    assert reply.error.code == code
    assert not harness.session.closed


async def test_commands_over_the_rate_get_111_then_3013(node: Node, clock: FakeClock) -> None:
    node.config.client_command_rate_limit = 2
    node.config.client_command_burst = 2
    harness = Harness(node, clock)
    stats = pb.PresenceStatsRequest(channel="chat:x")
    replies = await harness.send(
        pb.Command(id=1, connect=pb.ConnectRequest(token=harness.token())),
        pb.Command(id=2, presence_stats=stats),
        pb.Command(id=3, presence_stats=stats),
    )
    assert replies[-1] == pb.Reply(
        id=3, error=pb.Error(code=111, message="too many requests", temporary=True)
    )
    await harness.send(*[pb.Command(id=10 + n, presence_stats=stats) for n in range(11)])
    assert harness.transport.closed_with == Disconnect(3013, "too many requests")


# --------------------------------------------------------------------------- ping, pong, close


async def test_ping_is_one_empty_message_and_the_pong_too(harness: Harness) -> None:
    await harness.connect()
    for _ in range(3):
        harness.clock.advance(25)
        assert harness.transport.written == [b"\x00"]  # one empty Reply, length-prefixed
        harness.transport.take()
        assert await harness.send_frame(b"\x00") == []  # the SDK's pong: an empty Command
    harness.clock.advance(25)
    harness.transport.take()
    harness.clock.advance(8)
    assert harness.transport.closed_with == Disconnect(3012, "no pong")


async def test_pong_without_ping_is_a_violation(harness: Harness) -> None:
    await harness.connect()
    await harness.send_frame(b"\x00")
    assert harness.transport.closed_with is not None
    assert harness.transport.closed_with.code == 3501


@pytest.mark.parametrize(
    "frame",
    [
        b"",  # an empty frame
        b"\x05\x08",  # a message longer than the frame
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint past ten bytes
        b'{"id":1,"connect":{}}',  # JSON on a Protobuf connection
        delimited(pb.Command(id=2, ping=pb.PingRequest())),  # the removed ping method
        delimited(pb.Command(publish=pb.PublishRequest(channel="chat:a"))),  # no id
        delimited(pb.Command(id=3, subscribe=pb.SubscribeRequest(channel=""))),  # no channel
        b"\x04\x0a\x02\xc3\x28",  # a string field that is not UTF-8
        b"\x02\x1b\x00",  # a group (wire type 3), which client.proto never uses
    ],
    ids=[
        "empty",
        "truncated",
        "long-varint",
        "json",
        "ping-method",
        "no-id",
        "no-channel",
        "bad-utf8",
        "group",
    ],
)
async def test_malformed_input_after_connect_is_3501(harness: Harness, frame: bytes) -> None:
    await harness.connect()
    await harness.call(pb.Command(id=2, subscribe=pb.SubscribeRequest(channel="chat:m")))
    await harness.send_frame(frame)
    assert harness.transport.closed_with == Disconnect(3501, "bad request")
    assert "chat:m" not in harness.session.subscriptions
    assert not harness.node.clients


async def test_disconnect_and_unsubscribe_pushes_are_protobuf(harness: Harness) -> None:
    result = await harness.connect()
    await harness.call(pb.Command(id=2, subscribe=pb.SubscribeRequest(channel="chat:u")))
    await harness.node.unsubscribe_user("alice", "chat:u")
    await eventually(lambda: harness.transport.written, what="the unsubscribe push")
    (push,) = harness.transport.take()
    assert push.push == pb.Push(
        channel="chat:u", unsubscribe=pb.Unsubscribe(code=2000, reason="server unsubscribe")
    )
    assert result.client in harness.node.clients
