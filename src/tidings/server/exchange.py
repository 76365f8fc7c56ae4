"""What the plain-HTTP routes need from a request and from a long-lived response.

Two edges serve the same routes (``/connection/http_stream``, ``/connection/sse``,
``/emulation``, the unidirectional streams, ``/events``, ``/longpoll``, ``/api``):
the standalone one (:mod:`tidings.server.http`: httptools on asyncio transports)
and the ASGI mount (:mod:`tidings.server.asgi`, ``rt.asgi()``). Each implements
these two small interfaces, so :mod:`tidings.server.transport_routes` and
:mod:`tidings.server.api` hold the only copy of the origin policy, CORS, limits,
error bodies and codes.

One rule makes the hot path edge-independent: a :class:`ResponseStream` is
written **complete HTTP chunks** (:func:`tidings.protocol.wire.chunk`, and
``END_CHUNK`` last), the bytes the stream wire formats produce once per batch.
The standalone edge hands them to the socket as they are; the ASGI edge, whose
server does its own chunking, strips the framing once per batch (a one-entry
cache keyed by the shared bytes object), never once per recipient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qs

from tidings.protocol.wire import Writer


class ResponseStream(Protocol):
    """The write side of one long-lived response (SSE, HTTP streaming, a waiting poll).

    ``write`` takes complete HTTP chunks. ``end`` finishes the response; the stream
    is never reused. ``on_close`` fires once, when the response ends for any reason
    (``end``, or the client went away). ``on_pause``/``on_resume`` report the
    write buffer passing its high-water mark (``set_high_water``) and draining.
    """

    closed: bool
    write: Writer
    on_close: Callable[[], None] | None
    on_pause: Callable[[], None] | None
    on_resume: Callable[[], None] | None

    def end(self) -> None: ...

    def write_buffer_size(self) -> int: ...

    def set_high_water(self, high: int) -> None: ...


class HttpRequest(Protocol):
    """A complete request (body read, within ``max_message_size``).

    ``path`` is relative to where the routes are served (for the ASGI mount: to
    its ``root_path``); ``headers`` are ``(name, value)`` pairs with lower-case
    byte names; ``client`` is ``"ip:port"``.
    """

    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: str

    def header(self, name: str) -> str | None: ...

    @property
    def query(self) -> dict[str, list[str]]: ...

    def query_value(self, name: str) -> str | None: ...

    def cookie(self, name: str) -> str | None: ...

    def start_stream(
        self, status: int, headers: list[tuple[str, str]], *, chunked: bool = True
    ) -> ResponseStream:
        """Answer with a long-lived response; the handler then returns ``None``.

        The routes always pass ``chunked=False`` with their own
        ``transfer-encoding: chunked`` header, and write complete chunks.
        """
        ...


class RequestFields:
    """Header, query and cookie lookups shared by both edges' request classes.

    The class using it sets ``headers`` (lower-case byte names), ``query_string``
    and ``_query`` (``None`` until the query is first parsed).
    """

    __slots__ = ("_query",)

    headers: list[tuple[bytes, bytes]]
    query_string: bytes
    _query: dict[str, list[str]] | None

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        for header_name, value in self.headers:
            if header_name == key:
                return value.decode("latin-1")
        return None

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(self.query_string.decode("latin-1"), keep_blank_values=True)
        return self._query

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def cookie(self, name: str) -> str | None:
        header = self.header("cookie")
        if not header:
            return None
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None
