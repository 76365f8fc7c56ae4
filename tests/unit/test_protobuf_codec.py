"""The Protobuf codec on bytes alone, checked against the SDK's own generated classes.

centrifuge-python ships ``client_pb2``, generated from the protocol's ``client.proto``:
what it encodes, tidings must decode to the same commands; what tidings encodes, it
must parse to the replies and pushes a hand-built ``Reply`` holds.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import pytest
from centrifuge.protocol import client_pb2 as pb
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import Raw

from tidings.errors import ErrorCode, ProtocolViolation
from tidings.protocol import fossil
from tidings.protocol import messages as m
from tidings.protocol.codec import decode_frame, prepare_publication
from tidings.protocol.protobuf import (
    COMMAND,
    EMPTY_REPLY,
    PROTOBUF_CODEC,
    PUSH_KINDS,
    REPLY_RESULTS,
    Schema,
    client_payload,
    decode_commands,
    decode_emulation_request,
    delta_push_message,
    encode_error_reply,
    encode_message,
    encode_push,
    encode_reply,
    frame,
    push_message,
    push_reply,
    varint,
)

INFO = m.ClientInfo(user="u1", client="c1", conn_info=Raw(b'{"a":1}'), chan_info=Raw(b"\x00\xff"))
PB_INFO = pb.ClientInfo(user="u1", client="c1", conn_info=b'{"a":1}', chan_info=b"\x00\xff")
PUBLICATION = m.Publication(data=Raw(b"\x01binary\xff"), info=INFO, offset=42, tags={"k": "v"})
PB_PUBLICATION = pb.Publication(data=b"\x01binary\xff", info=PB_INFO, offset=42, tags={"k": "v"})


def delimited(*messages: Any) -> bytes:
    """What centrifuge-python sends: each message prefixed with its varint length."""
    out = b""
    for message in messages:
        body = message.SerializeToString()
        out += varint(len(body)) + body
    return out


# --------------------------------------------------------------------------- commands

SUBSCRIBE = m.SubscribeRequest(
    channel="chat:1",
    token="tok",
    recover=True,
    epoch="E",
    offset=2**63 - 1,
    data=Raw(b"\x00sub"),
    positioned=True,
    recoverable=True,
    join_leave=True,
    delta="fossil",
    flag=-1,
)
PB_SUBSCRIBE = pb.SubscribeRequest(
    channel="chat:1",
    token="tok",
    recover=True,
    epoch="E",
    offset=2**63 - 1,
    data=b"\x00sub",
    positioned=True,
    recoverable=True,
    join_leave=True,
    delta="fossil",
    flag=-1,
)

COMMANDS: list[tuple[Any, m.Command]] = [
    (
        pb.Command(
            id=1,
            connect=pb.ConnectRequest(
                token="t",
                data=b'{"x":1}',
                subs={"chat:1": PB_SUBSCRIBE, "empty": pb.SubscribeRequest()},
                name="python",
                version="0.7.0",
                headers={"h": "v", "blank": ""},
            ),
        ),
        m.Command(
            id=1,
            connect=m.ConnectRequest(
                token="t",
                data=Raw(b'{"x":1}'),
                subs={"chat:1": SUBSCRIBE, "empty": m.SubscribeRequest()},
                name="python",
                version="0.7.0",
                headers={"h": "v", "blank": ""},
            ),
        ),
    ),
    (pb.Command(id=2, subscribe=PB_SUBSCRIBE), m.Command(id=2, subscribe=SUBSCRIBE)),
    (
        pb.Command(id=3, unsubscribe=pb.UnsubscribeRequest(channel="c")),
        m.Command(id=3, unsubscribe=m.ChannelRequest(channel="c")),
    ),
    (
        pb.Command(id=4, publish=pb.PublishRequest(channel="c", data=b"\xffraw")),
        m.Command(id=4, publish=m.PublishRequest(channel="c", data=Raw(b"\xffraw"))),
    ),
    (
        pb.Command(id=5, presence=pb.PresenceRequest(channel="c")),
        m.Command(id=5, presence=m.ChannelRequest(channel="c")),
    ),
    (
        pb.Command(id=6, presence_stats=pb.PresenceStatsRequest(channel="c")),
        m.Command(id=6, presence_stats=m.ChannelRequest(channel="c")),
    ),
    (
        pb.Command(
            id=7,
            history=pb.HistoryRequest(
                channel="c", limit=-1, since=pb.StreamPosition(offset=9, epoch="E"), reverse=True
            ),
        ),
        m.Command(
            id=7,
            history=m.HistoryRequest(
                channel="c",
                limit=-1,
                since=m.StreamPositionRequest(offset=9, epoch="E"),
                reverse=True,
            ),
        ),
    ),
    (pb.Command(send=pb.SendRequest(data=b"msg")), m.Command(send=m.SendRequest(data=Raw(b"msg")))),
    (
        pb.Command(id=2**32 - 1, rpc=pb.RPCRequest(method="sum", data=b"[1,2]")),
        m.Command(id=2**32 - 1, rpc=m.RPCRequest(method="sum", data=Raw(b"[1,2]"))),
    ),
    (
        pb.Command(id=10, refresh=pb.RefreshRequest(token="t2")),
        m.Command(id=10, refresh=m.RefreshRequest(token="t2")),
    ),
    (
        pb.Command(id=11, sub_refresh=pb.SubRefreshRequest(channel="c", token="t3")),
        m.Command(id=11, sub_refresh=m.SubRefreshRequest(channel="c", token="t3")),
    ),
    (pb.Command(), m.Command()),  # the pong
]


@pytest.mark.parametrize(("sent", "expected"), COMMANDS, ids=lambda c: str(c)[:20])
def test_every_command_the_sdk_encodes_decodes_to_the_json_codecs_struct(
    sent: Any, expected: m.Command
) -> None:
    assert decode_commands(delimited(sent)) == [expected]


@pytest.mark.parametrize(("expected", "command"), COMMANDS, ids=lambda c: str(c)[:20])
def test_every_command_struct_encodes_to_what_the_sdk_parses(expected: Any, command: Any) -> None:
    assert pb.Command.FromString(encode_message(COMMAND, command)) == expected


def test_a_frame_of_several_commands_keeps_their_order() -> None:
    sent = [c for c, _ in COMMANDS]
    assert decode_commands(delimited(*sent)) == [e for _, e in COMMANDS]


def test_the_pong_is_one_zero_byte() -> None:
    assert decode_commands(b"\x00") == [m.Command()]
    assert frame([EMPTY_REPLY]) == b"\x00"


def test_unknown_fields_and_fields_tidings_does_not_read_are_skipped() -> None:
    sent = pb.Command(id=1, subscribe=pb.SubscribeRequest(channel="c"))
    body = sent.SerializeToString() + b"\xf8\x07\x05" + b"\x81\x08" + b"12345678" + b"\xa5\x08abcd"
    assert decode_commands(varint(len(body)) + body) == [
        m.Command(id=1, subscribe=m.SubscribeRequest(channel="c"))
    ]


def test_a_tags_filter_is_kept_as_its_bytes() -> None:
    """Its presence is what matters: a map subscribe with a filter is refused (107)."""
    tree = pb.FilterNode(op="and", nodes=[pb.FilterNode(key="k")])
    sent = pb.Command(id=1, subscribe=pb.SubscribeRequest(channel="c", tf=tree))
    body = sent.SerializeToString()
    (command,) = decode_commands(varint(len(body)) + body)
    assert command.subscribe is not None
    assert bytes(command.subscribe.tf) == tree.SerializeToString()


def test_fields_newer_than_the_sdks_proto_are_read_too() -> None:
    # SubscribeRequest.type (15, int32), from the protocol's current client.proto.
    body = pb.SubscribeRequest(channel="c").SerializeToString() + b"\x78\x02"
    body = b"\x08\x01\x2a" + varint(len(body)) + body
    (command,) = decode_commands(varint(len(body)) + body)
    assert command.subscribe == m.SubscribeRequest(channel="c", type=2)


def test_a_field_sent_with_another_wire_type_is_skipped_as_protobuf_does() -> None:
    # channel (field 1) as a varint instead of a string: the parser keeps it unknown.
    body = pb.Command(id=1, publish=pb.PublishRequest(data=b"x")).SerializeToString()
    body = body.replace(b"\x3a\x03\x12\x01x", b"\x3a\x05\x08\x01\x12\x01x")
    with pytest.raises(ProtocolViolation, match="publish without a channel"):
        decode_commands(varint(len(body)) + body)


def test_a_repeated_message_field_is_merged_as_protobuf_merges_it() -> None:
    first = pb.Command(id=1, publish=pb.PublishRequest(channel="c")).SerializeToString()
    second = pb.Command(publish=pb.PublishRequest(data=b"d")).SerializeToString()
    body = first + second
    expected = pb.Command.FromString(body)
    assert expected.publish.channel == "c" and expected.publish.data == b"d"
    assert decode_commands(varint(len(body)) + body) == [
        m.Command(id=1, publish=m.PublishRequest(channel="c", data=Raw(b"d")))
    ]


def test_structural_rules_are_the_json_codecs() -> None:
    cases = [
        (pb.Command(id=1, publish=pb.PublishRequest(data=b"x")), "publish without a channel"),
        (pb.Command(publish=pb.PublishRequest(channel="c")), "publish without an id"),
        (pb.Command(id=1), "id but no known method"),
        (pb.Command(id=1, ping=pb.PingRequest()), "unknown method ping"),
        (pb.Command(id=1, refresh=pb.RefreshRequest()), "refresh without a token"),
        (pb.Command(id=1, subscribe=pb.SubscribeRequest(channel="c", delta="x")), "unknown delta"),
        (
            pb.Command(
                id=1,
                publish=pb.PublishRequest(channel="c"),
                presence=pb.PresenceRequest(channel="c"),
            ),
            "more than one method",
        ),
    ]
    for sent, why in cases:
        with pytest.raises(ProtocolViolation, match=why):
            decode_commands(delimited(sent))


MALFORMED = {
    b"": "empty frame",
    b"\x05\x08\x01": "truncated message",
    b"\x80": "truncated varint",
    b"\x0c" + b"\x08" + b"\xff" * 10 + b"\x01": "longer than ten bytes",
    b"\x02\x00\x01": "field number 0",
    b"\x02\x0b\x00": "wire type 3",
    b"\x02\x0e\x00": "wire type 6",
    b"\x04\x2a\x02\x0a\x05": "truncated field",
    b"\x03\x09\x00\x00": "truncated field",
    b"\x07\x3a\x05\x0a\x03\xff\xfe\xfd": "not valid UTF-8",
}


@pytest.mark.parametrize(("data", "why"), MALFORMED.items(), ids=repr)
def test_malformed_frames_are_protocol_violations(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolViolation, match=why):
        decode_commands(data)


def test_a_lone_surrogate_in_utf8_is_refused_like_upb_refuses_it() -> None:
    body = b"\x08\x01\x3a\x05\x0a\x03\xed\xa0\x80"  # publish.channel = U+D800 as UTF-8
    with pytest.raises(DecodeError):
        pb.Command.FromString(body)
    with pytest.raises(ProtocolViolation, match="not valid UTF-8"):
        decode_commands(varint(len(body)) + body)


def test_an_offset_beyond_the_json_codecs_bound_is_refused_like_json() -> None:
    sent = pb.Command(id=1, subscribe=pb.SubscribeRequest(channel="c", offset=2**63))
    with pytest.raises(ProtocolViolation, match="offset out of range"):
        decode_commands(delimited(sent))
    with pytest.raises(ProtocolViolation):
        decode_frame(b'{"id":1,"subscribe":{"channel":"c","offset":9223372036854775808}}')


def test_the_emulation_request_carries_commands_as_bytes() -> None:
    commands = delimited(pb.Command(id=1, publish=pb.PublishRequest(channel="c", data=b"x")))
    body = pb.EmulationRequest(node="n1", session="s1", data=commands).SerializeToString()
    request = decode_emulation_request(body)
    assert (request.node, request.session, bytes(request.data)) == ("n1", "s1", commands)
    with pytest.raises(ProtocolViolation):
        decode_emulation_request(b"\x1a\x05ab")


# --------------------------------------------------------------------------- fuzzing


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_protocol_violation(data: bytes) -> None:
    try:
        commands = decode_commands(data)
    except ProtocolViolation:
        return
    assert all(isinstance(command, m.Command) for command in commands)


@settings(max_examples=2000, deadline=None)
@given(
    st.sampled_from([delimited(c) for c, _ in COMMANDS]),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_sdk_frames_decode_or_raise_protocol_violation(
    data: bytes, edits: list[tuple[int, int]]
) -> None:
    mutated = bytearray(data)
    for position, byte in edits:
        if mutated:
            mutated[position % len(mutated)] = byte
    with contextlib.suppress(ProtocolViolation):
        decode_commands(bytes(mutated))


texts = st.text(max_size=12)
small = st.integers(0, 2**32 - 1)


@settings(max_examples=500, deadline=None)
@given(
    command_id=st.integers(1, 2**32 - 1),
    channel=texts.filter(bool),
    data=st.binary(max_size=40),
    offset=st.integers(0, 2**63 - 1),
    epoch=texts,
    limit=st.integers(-(2**31), 2**31 - 1),
    flag=st.integers(-(2**63), 2**63 - 1),
    headers=st.dictionaries(texts, texts, max_size=3),
)
def test_random_sdk_commands_decode_to_their_values(
    command_id: int,
    channel: str,
    data: bytes,
    offset: int,
    epoch: str,
    limit: int,
    flag: int,
    headers: dict[str, str],
) -> None:
    sent = [
        pb.Command(
            id=command_id,
            connect=pb.ConnectRequest(
                data=data, headers=headers, subs={channel: pb.SubscribeRequest(offset=offset)}
            ),
        ),
        pb.Command(
            id=command_id,
            subscribe=pb.SubscribeRequest(channel=channel, offset=offset, epoch=epoch, flag=flag),
        ),
        pb.Command(
            id=command_id,
            history=pb.HistoryRequest(
                channel=channel, limit=limit, since=pb.StreamPosition(offset=offset, epoch=epoch)
            ),
        ),
    ]
    connect, subscribe, history = decode_commands(delimited(*sent))
    raw = Raw(data) if data else m.NO_DATA
    assert connect.connect == m.ConnectRequest(
        data=raw, headers=headers, subs={channel: m.SubscribeRequest(offset=offset)}
    )
    assert subscribe.subscribe == m.SubscribeRequest(
        channel=channel, offset=offset, epoch=epoch, flag=flag
    )
    assert history.history == m.HistoryRequest(
        channel=channel, limit=limit, since=m.StreamPositionRequest(offset=offset, epoch=epoch)
    )
    assert {c.id for c in (connect, subscribe, history)} == {command_id}


# --------------------------------------------------------------------------- replies


SUBSCRIBE_RESULT = m.SubscribeResult(
    expires=True,
    ttl=30,
    recoverable=True,
    epoch="E",
    publications=[PUBLICATION, m.Publication(data=Raw(b"2"), offset=43)],
    recovered=True,
    offset=43,
    positioned=True,
    data=Raw(b"sub-data"),
    was_recovering=True,
)
PB_SUBSCRIBE_RESULT = pb.SubscribeResult(
    expires=True,
    ttl=30,
    recoverable=True,
    epoch="E",
    publications=[PB_PUBLICATION, pb.Publication(data=b"2", offset=43)],
    recovered=True,
    offset=43,
    positioned=True,
    data=b"sub-data",
    was_recovering=True,
)

REPLIES: list[tuple[str, Any, Any]] = [
    (
        "connect",
        m.ConnectResult(
            client="c1",
            version="0.1.0",
            expires=True,
            ttl=60,
            data=Raw(b"hello"),
            subs={"#u1": SUBSCRIBE_RESULT, "empty": m.SubscribeResult()},
            ping=25,
            pong=True,
            session="s",
            node="n",
        ),
        pb.ConnectResult(
            client="c1",
            version="0.1.0",
            expires=True,
            ttl=60,
            data=b"hello",
            subs={"#u1": PB_SUBSCRIBE_RESULT, "empty": pb.SubscribeResult()},
            ping=25,
            pong=True,
            session="s",
            node="n",
        ),
    ),
    ("subscribe", SUBSCRIBE_RESULT, PB_SUBSCRIBE_RESULT),
    ("subscribe", m.SubscribeResult(), pb.SubscribeResult()),
    ("unsubscribe", m.EmptyResult(), pb.UnsubscribeResult()),
    ("publish", m.EmptyResult(), pb.PublishResult()),
    (
        "presence",
        m.PresenceResult(presence={"c1": INFO, "c2": m.ClientInfo(user="", client="c2")}),
        pb.PresenceResult(presence={"c1": PB_INFO, "c2": pb.ClientInfo(client="c2")}),
    ),
    (
        "presence_stats",
        m.PresenceStatsResult(num_clients=3, num_users=2),
        pb.PresenceStatsResult(num_clients=3, num_users=2),
    ),
    (
        "history",
        m.HistoryResult(publications=[PUBLICATION], epoch="E", offset=2**63 - 1),
        pb.HistoryResult(publications=[PB_PUBLICATION], epoch="E", offset=2**63 - 1),
    ),
    ("history", m.HistoryResult(publications=[], epoch="", offset=0), pb.HistoryResult()),
    ("rpc", m.RPCResult(data=Raw(b"\x00\x01")), pb.RPCResult(data=b"\x00\x01")),
    ("rpc", m.RPCResult(), pb.RPCResult()),
    (
        "refresh",
        m.RefreshResult(client="c1", version="v", expires=True, ttl=10),
        pb.RefreshResult(client="c1", version="v", expires=True, ttl=10),
    ),
    (
        "sub_refresh",
        m.SubRefreshResult(expires=True, ttl=5),
        pb.SubRefreshResult(expires=True, ttl=5),
    ),
]


@pytest.mark.parametrize(("method", "result", "expected"), REPLIES, ids=lambda r: str(r)[:20])
def test_every_reply_parses_in_the_sdk_to_the_same_result(
    method: str, result: Any, expected: Any
) -> None:
    encoded = encode_reply(7, method, result)
    reply = pb.Reply.FromString(encoded)
    assert reply.id == 7
    assert reply.HasField(method)  # present even when empty: what the SDKs look for
    assert getattr(reply, method) == expected
    assert encoded == pb.Reply(id=7, **{method: expected}).SerializeToString(deterministic=True)


def test_error_replies_carry_code_message_and_temporary() -> None:
    reply = pb.Reply.FromString(encode_error_reply(3, ErrorCode.TOO_MANY_REQUESTS))
    assert reply.id == 3
    assert reply.error == pb.Error(code=111, message="too many requests", temporary=True)
    reply = pb.Reply.FromString(encode_error_reply(4, ErrorCode.METHOD_NOT_FOUND))
    assert reply.error == pb.Error(code=104, message="method not found")


# --------------------------------------------------------------------------- pushes

PUSHES: list[tuple[str, str, Any, Any]] = [
    ("chat:1", "pub", PUBLICATION, PB_PUBLICATION),
    ("chat:1", "pub", m.Publication(data=Raw(b"x")), pb.Publication(data=b"x")),
    ("chat:1", "join", m.JoinLeave(INFO), pb.Join(info=PB_INFO)),
    ("chat:1", "leave", m.JoinLeave(INFO), pb.Leave(info=PB_INFO)),
    (
        "chat:1",
        "unsubscribe",
        m.UnsubscribePush(2500, "insufficient state"),
        pb.Unsubscribe(code=2500, reason="insufficient state"),
    ),
    ("", "message", m.MessagePush(Raw(b"\x00m")), pb.Message(data=b"\x00m")),
    (
        "#u1",
        "subscribe",
        m.SubscribePush(recoverable=True, epoch="E", offset=3, positioned=True, data=Raw(b"d")),
        pb.Subscribe(recoverable=True, epoch="E", offset=3, positioned=True, data=b"d"),
    ),
    (
        "",
        "connect",
        m.ConnectResult(
            client="c1", version="v", data=Raw(b"d"), subs={"c": SUBSCRIBE_RESULT}, ping=25
        ),
        pb.Connect(client="c1", version="v", data=b"d", subs={"c": PB_SUBSCRIBE_RESULT}, ping=25),
    ),
    (
        "",
        "disconnect",
        m.DisconnectPush(3503, "force disconnect"),
        pb.Disconnect(code=3503, reason="force disconnect"),
    ),
    ("", "refresh", m.RefreshPush(expires=True, ttl=9), pb.Refresh(expires=True, ttl=9)),
]


@pytest.mark.parametrize(("channel", "kind", "body", "expected"), PUSHES, ids=lambda p: str(p)[:20])
def test_every_push_parses_in_the_sdk_to_the_same_push(
    channel: str, kind: str, body: Any, expected: Any
) -> None:
    push = encode_push(channel, kind, body)
    wanted = pb.Push(channel=channel, **{kind: expected})
    assert pb.Push.FromString(push) == wanted
    reply = pb.Reply.FromString(push_reply(push))
    assert reply.id == 0 and reply.push == wanted and reply.push.HasField(kind)


def test_a_prepared_publication_is_encoded_once_for_every_protobuf_recipient() -> None:
    prepared = prepare_publication("chat:1", PUBLICATION, epoch="E")
    message = push_message(prepared)
    assert pb.Reply.FromString(message).push == pb.Push(channel="chat:1", pub=PB_PUBLICATION)
    assert push_message(prepared) is message  # kept on the shared push
    assert PROTOBUF_CODEC.push_document(prepared, True) is message
    assert pb.Push.FromString(PROTOBUF_CODEC.push_document(prepared, False)).pub == PB_PUBLICATION


def test_a_delta_subscriber_gets_the_fossil_delta_as_bytes() -> None:
    """Protobuf ``data`` is bytes: the delta itself, no JSON string (as Centrifugo)."""
    old = b'{"symbol":"ACME","bid":100,"ask":101,"text":"' + b"x" * 200 + b'"}'
    new = old.replace(b'"bid":100', b'"bid":102')
    prepared = prepare_publication("c", m.Publication(data=Raw(new), offset=2), "E", delta=True)
    prepared.base = Raw(old)
    reply = pb.Reply.FromString(delta_push_message(prepared))
    assert reply.push.pub.delta is True and reply.push.pub.offset == 2
    assert fossil.apply(old, reply.push.pub.data) == new
    assert len(reply.push.pub.data) < len(new) / 4
    # The JSON delta subscribers of the same channel reuse the same delta.
    assert prepared.fossil_delta() == reply.push.pub.data
    assert delta_push_message(prepared) is delta_push_message(prepared)


def test_delta_falls_back_to_the_whole_push_when_not_worth_it() -> None:
    prepared = prepare_publication("c", m.Publication(data=Raw(b'{"a":1}'), offset=2), "E")
    prepared.base = Raw(b'{"a":0}')  # the publisher did not ask for a delta
    assert delta_push_message(prepared) is push_message(prepared)
    assert pb.Reply.FromString(push_message(prepared)).push.pub.delta is False


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"input": "test"}', b'{"input": "test"}'),  # as it came: no re-encoding
        (b'"text"', b'"text"'),
        (b"5", b"5"),
        (b'{\n  "a": 1\n}', b'{"a":1}'),  # a raw line break would split a JSON frame
        (b"\x01binary\xff", None),
        (b'{"a":"\xff"}', None),  # not UTF-8
        (b'{"a":', None),
        (b"[" * 100_000, None),  # nested past the interpreter's limit
    ],
)
def test_publication_data_must_be_json_text(data: bytes, expected: bytes | None) -> None:
    result = client_payload(Raw(data))
    assert (None if result is None else bytes(result)) == expected


def test_frame_is_what_the_sdk_splits() -> None:
    big = encode_push("c", "pub", m.Publication(data=Raw(b"x" * 70000)))
    messages = [encode_reply(1, "publish", m.EmptyResult()), EMPTY_REPLY, push_reply(big)]
    data = frame(messages)
    # centrifuge-python's own splitter (a varint, then that many bytes).
    from centrifuge.codecs import _ProtobufCodec

    replies = _ProtobufCodec.decode_replies(data)
    assert [r.get("id") for r in replies] == [1, None, None]
    assert len(replies[2]["push"]["pub"]["data"]) > 70000  # base64 in MessageToDict


@pytest.mark.parametrize(
    "value", [1, 127, 128, 300, 16383, 16384, 2**21 - 1, 2**21, 2**28, 2**63 - 1, -1, -(2**63)]
)
def test_varint_matches_protobuf(value: int) -> None:
    expected = pb.ConnectResult(time=value).SerializeToString()
    assert b"\x58" + varint(value) == expected


# --------------------------------------------------------------------------- mapping coverage


def _struct_schemas() -> list[tuple[type, Schema]]:
    from tidings.protocol import protobuf as p

    pairs: list[tuple[type, Schema]] = [
        (m.Command, p.COMMAND),
        (m.ConnectRequest, p.CONNECT_REQUEST),
        (m.SubscribeRequest, p.SUBSCRIBE_REQUEST),
        (m.ChannelRequest, p.CHANNEL_REQUEST),
        (m.PublishRequest, p.PUBLISH_REQUEST),
        (m.HistoryRequest, p.HISTORY_REQUEST),
        (m.StreamPositionRequest, p.STREAM_POSITION),
        (m.SendRequest, p.SEND_REQUEST),
        (m.RPCRequest, p.RPC_REQUEST),
        (m.RefreshRequest, p.REFRESH_REQUEST),
        (m.SubRefreshRequest, p.SUB_REFRESH_REQUEST),
        (m.ClientInfo, p.CLIENT_INFO),
        (m.Publication, p.PUBLICATION),
        (m.ErrorResult, p.ERROR),
        (m.ConnectResult, p.CONNECT_RESULT),
        (m.ConnectResult, p.CONNECT_PUSH),
        (m.SubscribeResult, p.SUBSCRIBE_RESULT),
        (m.EmptyResult, p.NO_FIELDS),
        (m.PresenceResult, p.PRESENCE_RESULT),
        (m.PresenceStatsResult, p.PRESENCE_STATS_RESULT),
        (m.HistoryResult, p.HISTORY_RESULT),
        (m.RPCResult, p.RPC_RESULT),
        (m.RefreshResult, p.REFRESH_RESULT),
        (m.SubRefreshResult, p.SUB_REFRESH_RESULT),
        (m.JoinLeave, p.JOIN_LEAVE),
        (m.UnsubscribePush, p.UNSUBSCRIBE_PUSH),
        (m.DisconnectPush, p.DISCONNECT_PUSH),
        (m.MessagePush, p.MESSAGE_PUSH),
        (m.SubscribePush, p.SUBSCRIBE_PUSH),
        (m.RefreshPush, p.REFRESH_PUSH),
    ]
    return pairs


@pytest.mark.parametrize(("struct", "schema"), _struct_schemas(), ids=str)
def test_every_struct_field_has_a_protobuf_field(struct: type, schema: Schema) -> None:
    """A field added to messages.py needs its client.proto number here, or it never travels."""
    names = {f.name for f in schema.fields}
    assert {f.name for f in msgspec.structs.fields(struct)} <= names


def test_every_reply_method_and_push_kind_has_a_field() -> None:
    assert set(REPLY_RESULTS) == set(m.METHODS) - {"send"}  # send has no reply
    kinds = "pub join leave unsubscribe message subscribe connect disconnect refresh"
    assert set(PUSH_KINDS) == set(kinds.split())
