"""A channel with JSON and Protobuf subscribers: each gets its own encoding, made once.

Encode-once per wire format: a publication is encoded once for every JSON
subscriber (when it is prepared) and once for every Protobuf subscriber, on any
Protobuf transport (the first time a Protobuf frame needs it), however many
recipients there are; delta subscribers of both encodings share one fossil delta.
The counts below are of the real encoding functions, called through.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from centrifuge.protocol import client_pb2 as pb
from msgspec import Raw

from tidings.hub import Hub
from tidings.protocol import codec, fossil, protobuf
from tidings.protocol.codec import PreparedPush, prepare_publication
from tidings.protocol.messages import ClientInfo, Publication, StreamPosition
from tidings.protocol.protobuf import split_frame
from tidings.protocol.wire import (
    JSON_WIRE,
    PROTOBUF_HTTP_STREAM_WIRE,
    PROTOBUF_WIRE,
    WireFormat,
)


class Subscriber:
    def __init__(self, name: str, wire: WireFormat) -> None:
        self.name = name
        self.wire = wire
        self.writes: list[bytes] = []
        self.writer = self.writes.append

    def insufficient_state(self, channel: str) -> None:
        raise AssertionError(f"{self.name} lost publications in {channel}")

    def __repr__(self) -> str:
        return self.name


class Calls:
    count = 0


def count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> Calls:
    calls = Calls()
    original: Callable[..., Any] = getattr(module, name)

    def counting(*args: Any) -> Any:
        calls.count += 1
        return original(*args)

    monkeypatch.setattr(module, name, counting)
    return calls


def join(hub: Hub, subscriber: Subscriber, *, delta: bool = False) -> None:
    hub.begin_subscribe("c", subscriber)
    hub.complete_subscribe(
        "c",
        subscriber,
        join_leave=False,
        positioned=delta,
        position=StreamPosition(0, "") if delta else None,
        delta=delta,
    )


def publication(offset: int, bid: int, *, delta: bool = False) -> PreparedPush:
    data = {"symbol": "ACME", "bid": bid, "ask": 101, "note": "x" * 180}
    info = ClientInfo("alice", "c1")
    body = Publication(data=Raw(json.dumps(data).encode()), info=info, offset=offset)
    return prepare_publication("c", body, "E", delta=delta)


def websocket_payload(frame: bytes) -> tuple[int, bytes]:
    """The first byte and payload of an unmasked frame (lengths below 64 KiB)."""
    length = frame[1]
    if length == 126:
        return frame[0], frame[4:]
    assert length < 126
    return frame[0], frame[2:]


def protobuf_pubs(frame: bytes) -> list[pb.Publication]:
    first, payload = websocket_payload(frame)
    assert first == 0x82, "Protobuf goes in a binary frame"
    return [pb.Reply.FromString(message).push.pub for message in split_frame(payload)]


def stream_pubs(chunk: bytes) -> list[pb.Publication]:
    size, _, rest = chunk.partition(b"\r\n")
    payload = rest[: int(size, 16)]
    return [pb.Reply.FromString(message).push.pub for message in split_frame(payload)]


def json_pubs(frame: bytes) -> list[dict[str, Any]]:
    first, payload = websocket_payload(frame)
    assert first == 0x81, "JSON goes in a text frame"
    return [json.loads(line)["push"]["pub"] for line in payload.split(b"\n")]


async def test_mixed_channel_one_encoding_per_wire_format(monkeypatch: pytest.MonkeyPatch) -> None:
    encodings = count_calls(monkeypatch, protobuf, "encode_push")
    hub = Hub()
    json_subs = [Subscriber(f"json{n}", JSON_WIRE) for n in range(3)]
    ws_subs = [Subscriber(f"pb-ws{n}", PROTOBUF_WIRE) for n in range(3)]
    stream_subs = [Subscriber(f"pb-stream{n}", PROTOBUF_HTTP_STREAM_WIRE) for n in range(2)]
    for subscriber in (*json_subs, *ws_subs, *stream_subs):
        join(hub, subscriber)

    hub.broadcast_publication("c", publication(1, 100))
    hub.broadcast_publication("c", publication(2, 101))
    await asyncio.sleep(0)

    # One frame per wire format, the same bytes object for every subscriber of it.
    for group in (json_subs, ws_subs, stream_subs):
        assert all(len(s.writes) == 1 for s in group)
        assert all(s.writes[0] is group[0].writes[0] for s in group)
    assert [p["data"]["bid"] for p in json_pubs(json_subs[0].writes[0])] == [100, 101]
    pubs = protobuf_pubs(ws_subs[0].writes[0])
    assert [json.loads(p.data)["bid"] for p in pubs] == [100, 101]
    assert [(p.offset, p.info.user) for p in pubs] == [(1, "alice"), (2, "alice")]
    assert stream_pubs(stream_subs[0].writes[0]) == pubs
    # Two publications, two Protobuf encodings: not one per recipient, nor per transport.
    assert encodings.count == 2


async def test_a_json_only_channel_never_encodes_protobuf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encodings = count_calls(monkeypatch, protobuf, "encode_push")
    hub = Hub()
    join(hub, Subscriber("json", JSON_WIRE))
    hub.broadcast_publication("c", publication(1, 100))
    await asyncio.sleep(0)
    assert encodings.count == 0


async def test_delta_subscribers_of_both_encodings_share_one_fossil_delta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deltas = count_calls(monkeypatch, fossil, "create")
    encodings = count_calls(monkeypatch, protobuf, "encode_push")
    json_variants = count_calls(monkeypatch, codec, "_encode_variant")
    hub = Hub()
    plain_pb = Subscriber("pb", PROTOBUF_WIRE)
    delta_pb = [Subscriber(f"pb-delta{n}", PROTOBUF_WIRE) for n in range(2)]
    delta_json = Subscriber("json-delta", JSON_WIRE)
    join(hub, plain_pb)
    for subscriber in (*delta_pb, delta_json):
        join(hub, subscriber, delta=True)

    hub.broadcast_publication("c", publication(1, 100, delta=True))
    await asyncio.sleep(0)
    hub.broadcast_publication("c", publication(2, 101, delta=True))
    hub.broadcast_publication("c", publication(3, 102, delta=True))
    await asyncio.sleep(0)

    # Protobuf delta subscribers: the first publication whole (bytes), then fossil deltas
    # as bytes (no JSON string), which centrifuge-python's decoder applies.
    first, second = (protobuf_pubs(w) for w in delta_pb[0].writes)
    assert delta_pb[1].writes[1] is delta_pb[0].writes[1]
    assert first[0].delta is False
    assert [p.delta for p in second] == [True, True]
    held = first[0].data
    for pub_ in second:
        held = fossil.apply(held, pub_.data)
    assert json.loads(held)["bid"] == 102
    assert all(len(p.data) < len(first[0].data) / 4 for p in second)
    # The plain Protobuf subscriber got the publications whole.
    plain = [p for w in plain_pb.writes for p in protobuf_pubs(w)]
    assert [json.loads(p.data)["bid"] for p in plain] == [100, 101, 102]
    # The JSON delta subscriber decodes the same publications from JSON strings.
    json_doc = [p for w in delta_json.writes for p in json_pubs(w)]
    assert isinstance(json_doc[0]["data"], str) and json_doc[1]["delta"] is True

    assert deltas.count == 2  # one fossil delta per publication, for both encodings
    # Protobuf: three whole publications, two deltas; JSON: one string, two deltas.
    assert encodings.count == 3 + 2
    assert json_variants.count == 1 + 2
