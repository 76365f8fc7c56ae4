"""The stream cursor shared by ``/events`` (SSE event ids) and ``/longpoll``.

A cursor is a position in several channels at once: for each channel, the
``(epoch, offset)`` of the last publication the client has. It is the only
state a plain-HTTP client keeps, so the server keeps none (docs/protocol.md section 7
defines epochs and offsets; a cursor is just a list of them).

Format (one line of printable ASCII that survives a URL query as it is: a
cursor copied from a JSON answer or an SSE id works in ``?cursor=`` unchanged)::

    cursor  = "" | entry *( "," entry )
    entry   = channel ":" epoch ":" offset
    channel = 1*pchar        ; the channel name, escaped as JavaScript's
    epoch   = *pchar         ; encodeURIComponent does, but with "@XX" for "%XX"
    offset  = "0" | [1-9] *DIGIT   ; at most 2**63 - 1

The encoder sorts entries by channel and escapes every byte outside
``A-Z a-z 0-9 - _ . ! ~ * ' ( )`` as ``@XX`` (UTF-8), so ``:`` and ``,``
inside a name never clash with the separators, and nothing in a cursor is
changed by a URL query's percent-decoding (``@``, ``:`` and ``,`` are legal
in a query and mean nothing to it). The escape is ``@`` rather than ``%``
because ``%`` would be decoded once by the query parser, which made a cursor
need encoding twice.

Cursors written with ``%XX`` escapes (tidings 0.1, or
``encodeURIComponent`` alone) are still accepted: ``encodeURIComponent``
escapes both ``%`` and ``@``, so neither appears literally in a name of
either form, and each is unambiguous. The parser is strict otherwise: any
other character, a bad escape, invalid UTF-8, a duplicate channel, an empty
channel, an offset with a sign or leading zeros, or a cursor over its size
limit is a :class:`CursorError`.

A WebSocket client already holds ``(epoch, offset)`` per channel (subscribe
replies and ``pub.offset``), so it can build the same string and continue on
SSE or long polling with no gap and no duplicate (docs/transports.md shows the
three-line helper).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote

from tidings.protocol.messages import StreamPosition

MAX_CURSOR_LENGTH = 8192
"""Longest cursor accepted, in characters (a few dozen channels with long names fit)."""

MAX_OFFSET = 2**63 - 1

_SAFE = "-_.!~*'()"
"""Characters encodeURIComponent leaves alone (besides letters and digits)."""

ESCAPE = "@"
"""Starts a two-hex-digit escape in cursors this version writes."""
LEGACY_ESCAPE = "%"
"""Starts an escape in cursors of tidings 0.1 (still read)."""

_CURSOR_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()%@:,]*")
_ESCAPE = re.compile(r"[%@]([0-9A-Fa-f]{2})")
_OFFSET = re.compile(r"0|[1-9][0-9]{0,18}")


class CursorError(ValueError):
    """A cursor that cannot be parsed. The message says what was wrong, for logs only."""


def encode_component(text: str) -> str:
    """Escape a channel or epoch as ``encodeURIComponent`` does, with ``@`` for ``%``.

    In JavaScript: ``encodeURIComponent(text).replaceAll("%", "@")``.
    """
    return quote(text, safe=_SAFE).replace(LEGACY_ESCAPE, ESCAPE)


def encode_entry(channel: str, position: StreamPosition) -> str:
    """One ``channel:epoch:offset`` entry (cached per channel by callers on the hot path)."""
    return f"{encode_component(channel)}:{encode_component(position.epoch)}:{position.offset}"


def encode_cursor(positions: Mapping[str, StreamPosition]) -> str:
    """The canonical cursor for ``positions``: entries sorted by channel name."""
    return ",".join(encode_entry(channel, positions[channel]) for channel in sorted(positions))


def _decode_component(text: str, what: str) -> str:
    escapes = text.count(ESCAPE) + text.count(LEGACY_ESCAPE)
    if not escapes:
        return text
    # Every "@" (or legacy "%") must start a two-digit escape; the rest are literal ASCII.
    if escapes != len(_ESCAPE.findall(text)):
        raise CursorError(f"bad escape in {what}")
    raw = bytearray()
    index = 0
    while index < len(text):
        char = text[index]
        if char in (ESCAPE, LEGACY_ESCAPE):
            raw.append(int(text[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.append(ord(char))
            index += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CursorError(f"{what} is not UTF-8") from None


def parse_cursor(
    text: str, *, max_length: int = MAX_CURSOR_LENGTH, max_channels: int | None = None
) -> dict[str, StreamPosition]:
    """Parse a cursor into ``{channel: StreamPosition(offset, epoch)}``; ``""`` is no position.

    Raises :class:`CursorError` for anything but a well-formed cursor of at
    most ``max_length`` characters and ``max_channels`` entries.
    """
    if len(text) > max_length:
        raise CursorError(f"cursor longer than {max_length} characters")
    if not text:
        return {}
    if not _CURSOR_CHARS.fullmatch(text):
        raise CursorError("cursor holds a character outside its alphabet")
    entries = text.split(",")
    if max_channels is not None and len(entries) > max_channels:
        raise CursorError(f"cursor names more than {max_channels} channels")
    positions: dict[str, StreamPosition] = {}
    for entry in entries:
        parts = entry.split(":")
        if len(parts) != 3:
            raise CursorError("cursor entry is not channel:epoch:offset")
        channel = _decode_component(parts[0], "channel")
        if not channel:
            raise CursorError("cursor entry with an empty channel")
        epoch = _decode_component(parts[1], "epoch")
        if not _OFFSET.fullmatch(parts[2]):
            raise CursorError("cursor offset is not a plain decimal number")
        offset = int(parts[2])
        if offset > MAX_OFFSET:
            raise CursorError("cursor offset out of range")
        if channel in positions:
            raise CursorError("cursor names a channel twice")
        positions[channel] = StreamPosition(offset, epoch)
    return positions
