"""What a session needs from the connection it runs over, and from the request that opened it.

A transport only writes; reading belongs to its adapter, which hands whole
frames to :meth:`tidings.session.Session.handle_frame`. The session cannot
tell WebSocket from SSE from an HTTP stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Protocol

from tidings.errors import Disconnect
from tidings.protocol.wire import WireFormat


class Transport(Protocol):
    """The write side of one client connection.

    ``wire`` frames documents for it; ``write`` sends framed bytes (broadcasts
    arrive there as shared bytes objects); ``close`` ends the connection with a
    disconnect, the way the transport conveys one (a WebSocket close frame, or
    a disconnect push before the response ends, docs/protocol.md section 5).
    """

    name: str
    wire: WireFormat
    unidirectional: bool
    emulation: bool

    @property
    def closed(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def close(self, disconnect: Disconnect) -> None: ...

    def write_buffer_size(self) -> int: ...


_EMPTY: Mapping[str, str] = MappingProxyType({})


class RequestInfo:
    """The HTTP request that opened a connection, as application handlers see it.

    ``headers`` has lower-case names (several values of one header joined with
    ``", "``); ``cookies`` maps names to values. Both are read-only views.
    """

    __slots__ = ("cookies", "headers", "remote")

    def __init__(
        self,
        remote: str = "",
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
    ) -> None:
        self.remote = remote
        self.headers: Mapping[str, str] = headers or _EMPTY
        self.cookies: Mapping[str, str] = cookies or _EMPTY

    @classmethod
    def from_pairs(cls, remote: str, pairs: Iterable[tuple[bytes, bytes]]) -> RequestInfo:
        """From raw header pairs (latin-1, as HTTP/1.1 carries them)."""
        headers: dict[str, str] = {}
        for raw_name, raw_value in pairs:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return cls(remote, headers, parse_cookies(headers.get("cookie", "")))


def parse_cookies(header: str) -> dict[str, str]:
    """``Cookie`` header (``a=1; b=2``, RFC 6265 section 4.2) -> ``{name: value}``.

    The first of two cookies with one name wins (the more specific path, as
    browsers order them); double quotes around a value are removed.
    """
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, equals, value = part.strip().partition("=")
        if not equals or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies.setdefault(name.strip(), value)
    return cookies
