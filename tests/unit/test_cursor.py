"""The stream cursor: canonical encoding, strict parsing, and the JavaScript conversion rule."""

from __future__ import annotations

import contextlib
from urllib.parse import parse_qs, quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.protocol.cursor import (
    MAX_CURSOR_LENGTH,
    CursorError,
    encode_component,
    encode_cursor,
    parse_cursor,
)
from tidings.protocol.messages import StreamPosition

pytestmark = pytest.mark.timeout(30)


def test_encodes_sorted_entries_with_escaped_separators() -> None:
    positions = {
        "news": StreamPosition(3, "XyZ"),
        "chat:room#1,2": StreamPosition(18, "ABCDEFGH"),
    }
    assert encode_cursor(positions) == "chat@3Aroom@231@2C2:ABCDEFGH:18,news:XyZ:3"
    assert parse_cursor(encode_cursor(positions)) == positions


def test_legacy_percent_escapes_are_still_read() -> None:
    """Cursors of tidings 0.1 (and encodeURIComponent alone) used "%XX"."""
    legacy = "chat%3Aroom%231%2C2:ABCDEFGH:18,news:XyZ:3"
    assert parse_cursor(legacy) == parse_cursor("chat@3Aroom@231@2C2:ABCDEFGH:18,news:XyZ:3")
    assert parse_cursor("a%40b:E:1") == {"a@b": StreamPosition(1, "E")}


@given(
    st.dictionaries(st.text(min_size=1, max_size=20), st.integers(0, 99), min_size=1, max_size=5)
)
def test_survives_a_url_query_unchanged(value: dict[str, int]) -> None:
    """A cursor pasted into ``?cursor=`` as it is comes out of the query parser intact."""
    text = encode_cursor({c: StreamPosition(o, "Ep0ch") for c, o in value.items()})
    parsed = parse_qs(f"channel=x&cursor={text}", keep_blank_values=True)
    assert parsed["cursor"] == [text]


def test_empty_cursor_is_no_position() -> None:
    assert encode_cursor({}) == ""
    assert parse_cursor("") == {}


def test_escapes_like_encode_uri_component() -> None:
    # encodeURIComponent leaves exactly A-Z a-z 0-9 - _ . ! ~ * ' ( ) unescaped.
    text = "a-_.!~*'()b :,/?#[]@$&+;=%é€"
    assert (
        encode_component(text)
        == "a-_.!~*'()b@20@3A@2C@2F@3F@23@5B@5D@40@24@26@2B@3B@3D@25@C3@A9@E2@82@AC"
    )


def test_accepts_lower_case_escapes_and_empty_epoch() -> None:
    assert parse_cursor("chat@3aroom::7") == {"chat:room": StreamPosition(7, "")}
    assert parse_cursor("chat%3aroom::7") == {"chat:room": StreamPosition(7, "")}


@pytest.mark.parametrize(
    "text",
    [
        "chat",  # not three fields
        "chat:E",
        "chat:E:1:2",
        ":E:1",  # empty channel
        "chat:E:-1",
        "chat:E:+1",
        "chat:E:01",  # leading zero
        "chat:E:1.0",
        "chat:E:9223372036854775808",  # over 2**63 - 1
        "chat:E:99999999999999999999",
        "chat:E:1,chat:E:2",  # duplicate channel
        "chat:E:1,",  # empty entry
        "chat%3:E:1",  # truncated escape
        "chat%zz:E:1",
        "chat%ff:E:1",  # not UTF-8
        "chat@3:E:1",
        "chat@zz:E:1",
        "chat@ff:E:1",
        "chat room:E:1",  # space outside the alphabet
        "chat:E:1\n",  # a newline would end an SSE id line
        "chat:E\x00:1",
        "chät:E:1",  # raw non-ASCII
    ],
)
def test_rejects_malformed_cursors(text: str) -> None:
    with pytest.raises(CursorError):
        parse_cursor(text)


def test_size_and_channel_limits() -> None:
    long_channel = "a" * MAX_CURSOR_LENGTH
    with pytest.raises(CursorError, match="longer"):
        parse_cursor(f"{long_channel}:E:1")
    three = "a:E:1,b:E:2,c:E:3"
    assert len(parse_cursor(three, max_channels=3)) == 3
    with pytest.raises(CursorError, match="more than 2"):
        parse_cursor(three, max_channels=2)


def test_max_offset_is_accepted() -> None:
    assert parse_cursor("c:E:9223372036854775807")["c"].offset == 2**63 - 1


channels = st.text(min_size=1, max_size=30)
positions = st.dictionaries(
    channels,
    st.builds(StreamPosition, st.integers(0, 2**63 - 1), st.text(max_size=10)),
    max_size=8,
)


@given(positions)
def test_round_trip(value: dict[str, StreamPosition]) -> None:
    text = encode_cursor(value)
    assert parse_cursor(text) == value
    assert "\n" not in text and "\r" not in text and "\x00" not in text
    # Canonical: encoding what was parsed gives the same text back.
    assert encode_cursor(parse_cursor(text)) == text


@given(positions)
def test_matches_the_documented_javascript_helper(value: dict[str, StreamPosition]) -> None:
    """docs/transports.md: entries joined by ',' of esc(channel):esc(epoch):offset, where
    esc(x) is encodeURIComponent(x).replaceAll("%", "@"); plain encodeURIComponent still reads."""
    safe = "-_.!~*'()"

    def esc(text: str) -> str:
        return quote(text, safe=safe).replace("%", "@")

    js = ",".join(f"{esc(c)}:{esc(p.epoch)}:{p.offset}" for c, p in sorted(value.items()))
    assert js == encode_cursor(value)
    legacy = ",".join(
        f"{quote(c, safe=safe)}:{quote(p.epoch, safe=safe)}:{p.offset}"
        for c, p in sorted(value.items())
    )
    assert parse_cursor(legacy) == value


@given(st.text(max_size=200))
def test_never_raises_anything_but_cursor_error(text: str) -> None:
    with contextlib.suppress(CursorError):
        parse_cursor(text)
