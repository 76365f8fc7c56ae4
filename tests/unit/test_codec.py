"""The protocol core on bytes alone: frames in, commands or violations out; replies, pushes out."""

from __future__ import annotations

import json

import pytest
from msgspec import Raw

from tidings.errors import ErrorCode, ProtocolViolation
from tidings.protocol.codec import (
    compact_raw,
    decode_connect_request,
    decode_frame,
    encode_error_reply,
    encode_reply,
    prepare_join,
    prepare_publication,
)
from tidings.protocol.messages import (
    ClientInfo,
    ConnectResult,
    EmptyResult,
    HistoryResult,
    PresenceResult,
    PresenceStatsResult,
    Publication,
    SubscribeResult,
)


def test_connect_and_subscribe_in_one_frame_keep_their_order() -> None:
    frame = (
        b'{"connect":{"token":"t","name":"js"},"id":1}\n'
        b'{"subscribe":{"channel":"chat:lobby","recover":true,"offset":41,"epoch":"E","flag":1},"id":2}'
    )
    first, second = decode_frame(frame)
    assert first.id == 1 and first.connect is not None and first.connect.token == "t"
    assert second.id == 2 and second.subscribe is not None
    assert (second.subscribe.channel, second.subscribe.offset, second.subscribe.epoch) == (
        "chat:lobby",
        41,
        "E",
    )


def test_trailing_newline_and_unknown_fields_are_accepted() -> None:
    (command,) = decode_frame(b'{"publish":{"channel":"a","data":{"x":1},"tf":3},"id":7,"zz":1}\n')
    assert command.publish is not None
    assert bytes(command.publish.data) == b'{"x":1}'


def test_raw_data_is_kept_verbatim() -> None:
    (command,) = decode_frame(b'{"publish":{"channel":"a","data":[1, "two", {"3": null}]},"id":1}')
    assert command.publish is not None
    assert bytes(command.publish.data) == b'[1, "two", {"3": null}]'


def test_empty_command_is_a_pong() -> None:
    (command,) = decode_frame(b"{}")
    assert command.id == 0


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"", "empty frame"),
        (b"   \n", "empty frame"),
        (b"not json", "malformed"),
        (b'{"id":1,"connect":{}', "malformed"),
        (b'{"id":1,"connect":{}}\n\n{"id":2,"connect":{}}', "empty line"),
        (b'{"id":1}', "no known method"),
        (b'{"id":1,"unknown":{}}', "no known method"),
        (b'{"id":1,"ping":{}}', "unknown method ping"),
        (b'{"connect":{}}', "without an id"),
        (b'{"id":0,"subscribe":{"channel":"a"}}', "without an id"),
        (b'{"id":1,"connect":{},"subscribe":{"channel":"a"}}', "more than one method"),
        (b'{"id":1,"subscribe":{}}', "subscribe without a channel"),
        (b'{"id":1,"unsubscribe":{"channel":""}}', "unsubscribe without a channel"),
        (b'{"id":1,"publish":{"data":{}}}', "publish without a channel"),
        (b'{"id":1,"presence":{}}', "presence without a channel"),
        (b'{"id":1,"presence_stats":{}}', "presence_stats without a channel"),
        (b'{"id":1,"history":{}}', "history without a channel"),
        (b'{"id":1,"sub_refresh":{"token":"t"}}', "sub_refresh without a channel"),
        (b'{"id":1,"refresh":{}}', "refresh without a token"),
        (b'{"id":1,"subscribe":{"channel":"a","delta":"zstd"}}', "unknown delta"),
        (b'{"id":-1,"connect":{}}', "malformed"),
        (b'{"id":4294967296,"connect":{}}', "malformed"),
        (b'{"id":"1","connect":{}}', "malformed"),
        (b'{"id":1,"subscribe":{"channel":5}}', "malformed"),
        (b'{"id":1,"subscribe":{"channel":"a","offset":-3}}', "malformed"),
        (b"[1,2]", "malformed"),
        (b'"just a string"', "malformed"),
    ],
)
def test_structural_violations_disconnect_with_3501(frame: bytes, why: str) -> None:
    with pytest.raises(ProtocolViolation) as raised:
        decode_frame(frame)
    assert raised.value.disconnect.code == 3501
    assert why in str(raised.value)


def test_send_needs_no_id() -> None:
    (command,) = decode_frame(b'{"send":{"data":{"a":1}}}')
    assert command.send is not None and command.id == 0


def test_replies_always_carry_their_result_key() -> None:
    assert encode_reply(3, "publish", EmptyResult()) == b'{"id":3,"publish":{}}'
    assert encode_reply(2, "subscribe", SubscribeResult()) == b'{"id":2,"subscribe":{}}'
    assert json.loads(encode_reply(4, "presence", PresenceResult({}))) == {
        "id": 4,
        "presence": {"presence": {}},
    }
    assert json.loads(encode_reply(5, "presence_stats", PresenceStatsResult(0, 0))) == {
        "id": 5,
        "presence_stats": {"num_clients": 0, "num_users": 0},
    }
    assert json.loads(encode_reply(6, "history", HistoryResult([], "E", 0))) == {
        "id": 6,
        "history": {"publications": [], "epoch": "E", "offset": 0},
    }


def test_connect_result_leaves_out_zero_values_but_keeps_client() -> None:
    assert json.loads(encode_reply(1, "connect", ConnectResult(client="c1", version="0.1"))) == {
        "id": 1,
        "connect": {"client": "c1", "version": "0.1"},
    }


def test_error_reply_shape() -> None:
    assert json.loads(encode_error_reply(9, ErrorCode.PERMISSION_DENIED)) == {
        "id": 9,
        "error": {"code": 103, "message": "permission denied"},
    }
    assert json.loads(encode_error_reply(9, ErrorCode.INTERNAL))["error"]["temporary"] is True


def test_publication_push_is_encoded_once_in_both_envelopes() -> None:
    publication = Publication(
        data=Raw(b'{"text":"hi"}'), info=ClientInfo("42", "c1", Raw(b'{"n":1}')), offset=7
    )
    push = prepare_publication("chat:lobby", publication, "EPOCH")
    assert json.loads(push.envelope) == {
        "push": {
            "channel": "chat:lobby",
            "pub": {
                "data": {"text": "hi"},
                "info": {"user": "42", "client": "c1", "conn_info": {"n": 1}},
                "offset": 7,
            },
        }
    }
    assert json.loads(push.bare) == json.loads(push.envelope)["push"]
    assert (push.offset, push.epoch) == (7, "EPOCH")


def test_join_push_always_has_info() -> None:
    push = prepare_join("c", ClientInfo("", "anon"))
    assert json.loads(push.envelope) == {
        "push": {"channel": "c", "join": {"info": {"user": "", "client": "anon"}}}
    }


def test_compact_raw_removes_line_breaks_only_when_present() -> None:
    compact = b'{"a":1}'
    assert compact_raw(compact) is compact
    assert compact_raw(b'{\n  "a": "x\\ny",\r\n  "b": [1,\n 2]\n}') == b'{"a":"x\\ny","b":[1,2]}'


def test_unidirectional_connect_request() -> None:
    request = decode_connect_request(
        b'{"token":"t","subs":{"a":{"recover":true,"offset":5,"epoch":"E"}}}'
    )
    assert request.token == "t" and request.subs["a"].offset == 5
    assert decode_connect_request(b"").token == ""
    with pytest.raises(ProtocolViolation):
        decode_connect_request(b"{")
