"""Map subscriptions over the Protobuf encoding, on bytes (docs/protocol.md sections 13, 14).

centrifuge-python's ``client.proto`` predates map subscriptions, so the map fields are
added to its messages as raw fields (``type`` 15, ``phase`` 16 of SubscribeRequest) and
read back from the replies' unknown fields (``type`` 15, ``state`` 18 of SubscribeResult,
``key`` 11 of Publication), as a newer SDK would have them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from centrifuge.protocol import client_pb2 as pb
from google.protobuf.unknown_fields import UnknownFieldSet

from tests.conftest import SECRET, make_config
from tests.support.clock import FakeClock
from tests.support.maps import map_channels
from tests.support.sessions import RecordingTransport
from tidings.auth import make_token
from tidings.brokers.memory_map import MemoryMapBroker
from tidings.node import Node
from tidings.protocol import fossil
from tidings.protocol.protobuf import split_frame, varint
from tidings.protocol.wire import ProtobufWire
from tidings.session import RequestInfo, Session

pytestmark = pytest.mark.timeout(30)

WIRE = ProtobufWire("protobuf-maps-test", lambda payload: payload)


def protobuf_replies(frames: list[bytes]) -> list[pb.Reply]:
    """Every reply written, parsed by the SDK's classes."""
    return [pb.Reply.FromString(m) for data in frames for m in split_frame(data)]


def command(command_id: int, field: int, body: bytes) -> bytes:
    """A Command with ``id`` and one request in ``field``, varint-delimited."""
    message = b"\x08" + varint(command_id) + varint(field << 3 | 2) + varint(len(body)) + body
    return varint(len(message)) + message


def unknown(message: object) -> dict[int, list[object]]:
    fields: dict[int, list[object]] = {}
    for item in UnknownFieldSet(message):  # type: ignore[arg-type]
        fields.setdefault(item.field_number, []).append(item.data)
    return fields


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    clock = FakeClock()
    config = make_config(channels=map_channels(), broker_unsubscribe_delay=0.0, coalesce_delay=0)
    running = Node(config, clock=clock, map_broker=MemoryMapBroker(clock.time, cleanup_interval=0))
    await running.start()
    yield running
    await running.shutdown()


async def test_a_map_subscribe_and_its_changes_in_protobuf(node: Node) -> None:
    transport = RecordingTransport(WIRE, protobuf_replies)
    session = Session(node, transport, RequestInfo("192.0.2.7"))
    token = make_token(SECRET, user="alice", ttl=3600, clock=node.clock.time)

    async def send(frame: bytes) -> list[pb.Reply]:
        session.handle_frame(frame)
        await session.idle()
        await asyncio.sleep(0)
        return transport.take()

    connect = pb.ConnectRequest(token=token).SerializeToString()
    (connected,) = await send(command(1, 4, connect))
    assert connected.HasField("connect")
    for n in range(3):
        await node.map_publish("prices:pb", f"k{n}", {"v": n})
    subscribe = pb.SubscribeRequest(channel="prices:pb").SerializeToString()
    subscribe += b"\x78\x01" + b"\x80\x01\x02"  # type = 1 (map), phase = 2 (STATE)
    (reply,) = await send(command(2, 5, subscribe))
    result = reply.subscribe
    assert (result.offset, result.recoverable, bool(result.epoch)) == (3, True, True)
    extra = unknown(result)
    assert extra[15] == [1]  # type
    entries = [pb.Publication.FromString(raw) for raw in extra[18]]  # state
    assert [json.loads(entry.data) for entry in entries] == [{"v": 0}, {"v": 1}, {"v": 2}]
    assert [unknown(entry)[11] for entry in entries] == [[b"k0"], [b"k1"], [b"k2"]]  # keys
    await node.map_publish("prices:pb", "k1", {"v": "new"})
    await asyncio.sleep(0)  # the hub flushes at the end of the loop turn
    (pushed,) = transport.take()
    pub = pushed.push.pub
    assert (pub.offset, json.loads(pub.data), unknown(pub)[11]) == (4, {"v": "new"}, [b"k1"])


async def test_map_delta_in_protobuf_is_bytes_per_key(node: Node) -> None:
    """Protobuf needs no JSON strings: state entries carry the value's bytes, live changes a
    binary fossil delta against the key's previous value (``delta: true``), a removal none."""
    transport = RecordingTransport(WIRE, protobuf_replies)
    session = Session(node, transport, RequestInfo("192.0.2.7"))
    token = make_token(SECRET, user="alice", ttl=3600, clock=node.clock.time)

    async def send(frame: bytes) -> list[pb.Reply]:
        session.handle_frame(frame)
        await session.idle()
        await asyncio.sleep(0)
        return transport.take()

    def value(n: int) -> dict[str, object]:
        return {"n": n, "levels": [{"level": i, "bid": 100 + i} for i in range(12)]}

    await send(command(1, 4, pb.ConnectRequest(token=token).SerializeToString()))
    await node.map_publish("dmap:pb", "a", value(1))
    subscribe = pb.SubscribeRequest(channel="dmap:pb", delta="fossil").SerializeToString()
    subscribe += b"\x78\x01" + b"\x80\x01\x02"  # type = 1 (map), phase = 2 (STATE)
    (reply,) = await send(command(2, 5, subscribe))
    assert reply.subscribe.delta is True
    (entry,) = [pb.Publication.FromString(raw) for raw in unknown(reply.subscribe)[18]]
    previous = entry.data
    assert json.loads(previous) == value(1)
    await node.map_publish("dmap:pb", "a", value(2))
    await node.map_publish("dmap:pb", "a", value(3))
    await node.map_remove("dmap:pb", "a")
    await asyncio.sleep(0)
    pubs = [reply.push.pub for reply in transport.take()]
    assert [pub.delta for pub in pubs] == [True, True, False]
    for pub, n in zip(pubs[:2], (2, 3), strict=True):
        assert len(pub.data) < len(json.dumps(value(n))) / 4
        previous = fossil.apply(previous, pub.data)
        assert json.loads(previous) == value(n)
    assert unknown(pubs[2])[12] == [1] and pubs[2].data == b""  # removed, no data
