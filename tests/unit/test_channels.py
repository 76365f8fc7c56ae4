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


# --------------------------------------------------------------------------- strict names


@pytest.mark.parametrize(
    "channel",
    [
        pytest.param("", id="empty"),
        pytest.param("$", id="bare-private-prefix"),
        pytest.param(":x", id="empty-namespace"),
        pytest.param("$:x", id="private-empty-namespace"),
        pytest.param("::x", id="double-boundary"),
        pytest.param("chat:", id="empty-name-after-namespace"),
        pytest.param("chat:a\x00b", id="nul"),
        pytest.param("\x00", id="nul-alone"),
        pytest.param("chat:a\nb", id="newline"),
        pytest.param("chat:a\rb", id="carriage-return"),
        pytest.param("chat:a\tb", id="tab"),
        pytest.param("chat:\x1b[31mred", id="ansi-escape"),
        pytest.param("chat:a\x7f", id="del"),
        pytest.param("chat:a\x85", id="c1-next-line"),
        pytest.param("chat:a\x9b", id="c1-csi"),
        pytest.param("chat:a\ud800", id="lone-surrogate"),
        pytest.param("chat\x00:a", id="nul-in-namespace"),
        pytest.param("chat:" + "x" * 28, id="one-byte-over"),
        pytest.param("chat:" + "é" * 14, id="utf8-bytes-over"),
        pytest.param("x" * 10_000, id="huge"),
    ],
)
def test_malformed_names_are_bad_requests(channel: str) -> None:
    r = rules()
    assert code(lambda: r.options(channel)) == 107
    assert code(lambda: r.check_subscribe(channel, "u", has_token=False)) == 107
    assert code(lambda: r.check_subscribe(channel, "u", has_token=True)) == 107
    assert code(lambda: r.check_publish(channel, "u", subscribed=True)) == 107
    assert code(lambda: r.check_history(channel, "u", subscribed=True)) == 107
    assert code(lambda: r.check_presence(channel, "u", subscribed=True)) == 107


@pytest.mark.parametrize(
    "channel",
    [
        "chat:" + "x" * 27,  # exactly 32 bytes
        "chat:" + "é" * 13,  # 31 bytes in 18 characters
        "chat:a b",  # a space is not a control character
        "chat:日本",
        "chat:a:b",  # only the first boundary splits
        "chat:room#",
        "$chat:a",
        "plain",
        "#alice",
    ],
)
def test_well_formed_names_pass_parsing(channel: str) -> None:
    assert code(lambda: rules().options(channel)) == 0


@pytest.mark.parametrize(
    "channel",
    [
        "nowhere:a",
        "$nowhere:a",
        "Chat:a",  # namespaces are case-sensitive
        "chat :a",
        "chat#alice:a",
        "$$chat:a",
        "dm,chat:a",
        "ch\u0430t:a",  # Cyrillic a: a lookalike is another namespace
    ],
)
def test_unknown_namespaces_are_refused_everywhere(channel: str) -> None:
    r = rules()
    assert code(lambda: r.options(channel)) == 102
    assert code(lambda: r.check_subscribe(channel, "u", has_token=True)) == 102
    assert code(lambda: r.check_publish(channel, "u", subscribed=True)) == 102
    assert code(lambda: r.check_history(channel, "u", subscribed=True)) == 102
    assert code(lambda: r.check_presence(channel, "u", subscribed=True)) == 102


def test_user_limited_boundary() -> None:
    r = rules()
    assert code(lambda: r.check_subscribe("dm:x#alice", "alice", has_token=False)) == 0
    assert code(lambda: r.check_subscribe("dm:x#alice", "alic", has_token=False)) == 103
    assert code(lambda: r.check_subscribe("dm:x#alice,", "", has_token=False)) == 103
    assert code(lambda: r.check_subscribe("dm:x#", "alice", has_token=False)) == 103
    assert code(lambda: r.check_subscribe("dm:x#alice#bob", "alice", has_token=False)) == 103
    assert code(lambda: r.check_subscribe("dm:x#alice#bob", "bob", has_token=False)) == 0
    assert code(lambda: r.check_subscribe("dm:x", "alice", has_token=False)) == 103
    # Without allow_user_limited_channels, "#" means nothing: the namespace rules decide.
    assert code(lambda: r.check_subscribe("public:x#alice", "", has_token=False)) == 0
    assert code(lambda: r.check_subscribe("chat:x#alice", "", has_token=False)) == 103
