"""Hypothesis against the sans-I/O core: hostile bytes in, only the documented errors out.

* ``decode_frame`` turns any bytes into commands or a :class:`ProtocolViolation`
  (3501), never another exception; what it accepts passes ``command_method``.
* Well-formed commands survive encode -> frame -> decode unchanged, alone or
  several to a frame, with or without a trailing newline.
* ``decode_connect_request`` (unidirectional transports) behaves the same.
* Channel rules answer any string with options or a :class:`ReplyError`.
* Token verification answers any string, and any signed claims however
  strange, with credentials or a :class:`TokenError`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import string
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import SECRET
from tidings.auth import TokenError, TokenVerifier
from tidings.channels import ChannelOptions, ChannelRules
from tidings.errors import ProtocolViolation, ReplyError
from tidings.protocol.codec import command_method, decode_connect_request, decode_frame
from tidings.protocol.messages import (
    ChannelRequest,
    Command,
    ConnectRequest,
    HistoryRequest,
    PublishRequest,
    RefreshRequest,
    RPCRequest,
    SendRequest,
    StreamPositionRequest,
    SubRefreshRequest,
    SubscribeRequest,
)

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)

FIELD_NAMES = [
    "channel", "token", "data", "recover", "epoch", "offset", "positioned", "recoverable",
    "join_leave", "delta", "flag", "type", "subs", "name", "version", "headers", "limit",
    "since", "reverse", "method", "tf", "id",
]  # fmt: skip
METHOD_NAMES = [
    "connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history",
    "ping", "send", "rpc", "refresh", "sub_refresh", "nonsense", "", "__proto__",
]  # fmt: skip

params = st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=5) | json_values
command_like = st.dictionaries(
    st.sampled_from(["id", *METHOD_NAMES]),
    st.integers(min_value=-5, max_value=2**33) | params,
    max_size=3,
)


def _document(value: Any) -> bytes:
    return json.dumps(value).encode()


frames = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.lists(command_like.map(_document), min_size=1, max_size=4).map(b"\n".join),
    st.lists(command_like.map(_document), min_size=1, max_size=3).map(
        lambda docs: b"\n\n".join(docs) + b"\n"
    ),
    command_like.map(_document).flatmap(
        lambda doc: st.integers(0, max(0, len(doc) - 1)).map(lambda cut: doc[:cut])
    ),
)


@FUZZ
@given(frames)
@example(b"")
@example(b"\n")
@example(b"{}\n{}")
@example(b'{"id":1,"connect":{},"subscribe":{"channel":"x"}}')
@example(b'{"id":4294967296,"presence":{"channel":"x"}}')
@example(b'{"id":1,"subscribe":{"channel":"\\ud800"}}')
def test_decode_frame_raises_only_protocol_violations(frame: bytes) -> None:
    try:
        commands = decode_frame(frame)
    except ProtocolViolation:
        return
    assert commands
    for command in commands:
        assert isinstance(command, Command)
        command_method(command)  # accepted commands are structurally sound


DEEP = b'{"id":1,"publish":{"channel":"x","data":' + b"[" * 1000 + b"]" * 1000 + b"}}"


def test_deeply_nested_json_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        decode_frame(DEEP)


channel_names = st.text(max_size=40) | st.sampled_from(["chat:x", "$chat:x", "dm:a#b"])
raw_json = json_values.map(lambda value: msgspec.Raw(msgspec.json.encode(value)))
positive_ids = st.integers(min_value=1, max_value=2**32 - 1)
channel_value = channel_names.filter(bool)

valid_commands = st.one_of(
    st.builds(
        lambda i, token, name: Command(id=i, connect=ConnectRequest(token=token, name=name)),
        positive_ids,
        st.text(max_size=30),
        st.text(max_size=16),
    ),
    st.builds(
        lambda i, channel, recover, offset, epoch: Command(
            id=i,
            subscribe=SubscribeRequest(
                channel=channel, recover=recover, offset=offset, epoch=epoch
            ),
        ),
        positive_ids,
        channel_value,
        st.booleans(),
        st.integers(min_value=0, max_value=2**63 - 1),
        st.text(max_size=8),
    ),
    st.builds(
        lambda i, c: Command(id=i, unsubscribe=ChannelRequest(channel=c)),
        positive_ids,
        channel_value,
    ),
    st.builds(
        lambda i, c, d: Command(id=i, publish=PublishRequest(channel=c, data=d)),
        positive_ids,
        channel_value,
        raw_json,
    ),
    st.builds(
        lambda i, c, limit, offset, reverse: Command(
            id=i,
            history=HistoryRequest(
                channel=c,
                limit=limit,
                since=StreamPositionRequest(offset=offset, epoch="e"),
                reverse=reverse,
            ),
        ),
        positive_ids,
        channel_value,
        st.integers(min_value=-1, max_value=1000),
        st.integers(min_value=0, max_value=2**40),
        st.booleans(),
    ),
    st.builds(lambda d: Command(send=SendRequest(data=d)), raw_json),
    st.builds(
        lambda i, m, d: Command(id=i, rpc=RPCRequest(method=m, data=d)),
        positive_ids,
        st.text(max_size=20),
        raw_json,
    ),
    st.builds(
        lambda i, t: Command(id=i, refresh=RefreshRequest(token=t)),
        positive_ids,
        st.text(min_size=1, max_size=30),
    ),
    st.builds(
        lambda i, c, t: Command(id=i, sub_refresh=SubRefreshRequest(channel=c, token=t)),
        positive_ids,
        channel_value,
        st.text(max_size=30),
    ),
    st.just(Command()),  # the pong
)


@FUZZ
@given(st.lists(valid_commands, min_size=1, max_size=6), st.booleans())
def test_commands_round_trip(commands: list[Command], trailing_newline: bool) -> None:
    frame = b"\n".join(msgspec.json.encode(command) for command in commands)
    if trailing_newline:
        frame += b"\n"
    decoded = decode_frame(frame)
    assert [msgspec.json.encode(c) for c in decoded] == [msgspec.json.encode(c) for c in commands]
    for original, command in zip(commands, decoded, strict=True):
        assert command_method(command) == command_method(original)


@FUZZ
@given(st.binary(max_size=200) | command_like.map(_document) | params.map(_document))
def test_decode_connect_request_raises_only_protocol_violations(body: bytes) -> None:
    try:
        request = decode_connect_request(body)
    except ProtocolViolation:
        return
    assert isinstance(request, ConnectRequest)


RULES = ChannelRules(
    ChannelOptions(allow_subscribe_for_client=True),
    {
        "chat": ChannelOptions(
            presence=True,
            history_size=5,
            history_ttl=60.0,
            allow_subscribe_for_client=True,
            allow_publish_for_subscriber=True,
        ),
        "dm": ChannelOptions(allow_user_limited_channels=True),
    },
)


@FUZZ
@given(
    st.text(max_size=300) | st.text(alphabet=string.printable + "$:#,\x00\x85\u20ac", max_size=300),
    st.text(max_size=10),
    st.booleans(),
)
def test_channel_rules_answer_any_name_with_a_reply_error(
    channel: str, user: str, flag: bool
) -> None:
    checks: list[Callable[[], object]] = [
        lambda: RULES.options(channel),
        lambda: RULES.check_subscribe(channel, user, has_token=flag),
        lambda: RULES.check_publish(channel, user, subscribed=flag),
        lambda: RULES.check_history(channel, user, subscribed=flag),
        lambda: RULES.check_presence(channel, user, subscribed=flag),
    ]
    for check in checks:
        try:
            check()
        except ReplyError as exc:
            assert exc.error.code in (102, 103, 107, 108)


def hs256(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Sign anything (PyJWT's encoder would refuse some shapes its decoder accepts)."""
    head = b64url(json.dumps({**header, "alg": "HS256"}).encode())
    body = b64url(json.dumps(claims).encode())
    mac = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


VERIFIER = TokenVerifier(hmac_secret=SECRET, algorithms=["HS256", "RS256", "ES256"])


@FUZZ
@given(
    st.text(max_size=200)
    | st.text(alphabet=string.ascii_letters + string.digits + "-_.=", max_size=200)
)
def test_any_string_as_a_token_is_only_ever_a_token_error(value: str) -> None:
    for verify in (VERIFIER.verify_connect_token, VERIFIER.verify_subscription_token):
        with contextlib.suppress(TokenError):
            verify(value)


claim_names = st.sampled_from(
    ["sub", "exp", "nbf", "iat", "aud", "iss", "channels", "subs", "info", "meta",
     "expire_at", "channel", "client", "data", "override", "b64info"]
)  # fmt: skip
weird_claims = st.dictionaries(claim_names, json_values, max_size=8)


@FUZZ
@given(weird_claims, st.dictionaries(st.sampled_from(["kid", "typ", "cty", "jku"]), json_values))
def test_signed_but_strange_claims_are_only_ever_token_errors(
    claims: dict[str, Any], header: dict[str, Any]
) -> None:
    """Claims the backend signed (so they pass the signature) but of any shape or type."""
    token = hs256(header, claims)
    for verify in (VERIFIER.verify_connect_token, VERIFIER.verify_subscription_token):
        with contextlib.suppress(TokenError):
            verify(token)


@pytest.mark.parametrize(
    ("claim", "value"), [("exp", float("nan")), ("exp", float("inf")), ("nbf", float("nan"))]
)
def test_non_finite_time_claims_are_token_errors(claim: str, value: float) -> None:
    with pytest.raises(TokenError):
        VERIFIER.verify_connect_token(hs256({}, {"sub": "a", claim: value}))
