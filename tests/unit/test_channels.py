"""Namespaces and permission checks, pure."""

from __future__ import annotations

import pytest

from tidings.channels import ChannelOptions, ChannelRules, parse_channel
from tidings.errors import ReplyError


def rules() -> ChannelRules:
    return ChannelRules(
        ChannelOptions(allow_subscribe_for_client=True),
        {
            "chat": ChannelOptions(
                history_size=10,
                history_ttl=60,
                presence=True,
                allow_subscribe_for_client=True,
                allow_publish_for_subscriber=True,
                allow_history_for_subscriber=True,
                allow_presence_for_subscriber=True,
            ),
            "public": ChannelOptions(
                allow_subscribe_for_client=True,
                allow_subscribe_for_anonymous=True,
                allow_publish_for_client=True,
            ),
            "dm": ChannelOptions(allow_user_limited_channels=True),
        },
        max_channel_length=32,
    )


def code(call: object) -> int:
    try:
        call()  # type: ignore[operator]
    except ReplyError as exc:
        return exc.error.code
    return 0


def test_parse_channel() -> None:
    parsed = parse_channel("$dm:room#alice,bob")
    assert parsed.private and parsed.namespace == "dm" and parsed.allowed_users == {"alice", "bob"}
    assert parse_channel("plain").namespace == ""


@pytest.mark.parametrize(
    ("channel", "user", "expected"),
    [
        ("chat:a", "u", 0),
        ("chat:a", "", 103),
        ("public:a", "", 0),
        ("plain", "u", 0),
        ("nowhere:a", "u", 102),
        ("$chat:a", "u", 103),
        ("dm:x#alice,bob", "alice", 0),
        ("dm:x#alice,bob", "carol", 103),
        ("dm:x#alice,bob", "", 103),
        ("chat:" + "x" * 40, "u", 107),
    ],
)
def test_subscribe(channel: str, user: str, expected: int) -> None:
    assert code(lambda: rules().check_subscribe(channel, user, has_token=False)) == expected


def test_a_token_decides_alone() -> None:
    assert code(lambda: rules().check_subscribe("$chat:a", "u", has_token=True)) == 0
    assert code(lambda: rules().check_subscribe("nowhere:a", "u", has_token=True)) == 102


def test_publish_history_presence() -> None:
    r = rules()
    assert code(lambda: r.check_publish("chat:a", "u", subscribed=False)) == 103
    assert code(lambda: r.check_publish("chat:a", "u", subscribed=True)) == 0
    assert code(lambda: r.check_publish("public:a", "u", subscribed=False)) == 0
    assert code(lambda: r.check_publish("public:a", "", subscribed=False)) == 103
    assert code(lambda: r.check_history("chat:a", "u", subscribed=True)) == 0
    assert code(lambda: r.check_history("chat:a", "u", subscribed=False)) == 103
    assert code(lambda: r.check_history("public:a", "u", subscribed=True)) == 108
    assert code(lambda: r.check_presence("chat:a", "u", subscribed=True)) == 0
    assert code(lambda: r.check_presence("public:a", "u", subscribed=True)) == 108
