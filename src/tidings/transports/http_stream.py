"""HTTP streaming: ``/connection/http_stream`` (emulation) and ``/connection/uni_http_stream``.

A session's replies and pushes go down one long-lived HTTP/1.1 response, each
JSON document followed by ``\\n`` (docs/protocol.md section 8). Commands of the
bidirectional variant arrive separately, in ``POST /emulation``.

Every stream transport here writes **pre-chunked** bytes: a wire format frames
a batch into a complete HTTP chunk (``<size>\\r\\n<payload>\\r\\n``), and the
response is started with ``chunked=False`` plus an explicit
``transfer-encoding: chunked`` header, so the stream's ``write`` is the socket
transport's own ``write``. The hub's fan-out then hands the same bytes object
to every subscriber of a wire format, exactly as for WebSocket: no chunk
header is built, and no payload copied, per recipient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tidings.errors import Disconnect
from tidings.protocol.messages import DisconnectPush
from tidings.protocol.wire import END_CHUNK, WireFormat
from tidings.transports.base import transport_high_water

if TYPE_CHECKING:
    from tidings.server.exchange import ResponseStream
    from tidings.session import Session

NO_CACHE_HEADERS = [
    ("cache-control", "private, no-cache, no-store, must-revalidate, max-age=0"),
    ("pragma", "no-cache"),
    ("expires", "0"),
    ("x-accel-buffering", "no"),
]
"""Long-lived responses: never cached, never buffered by a proxy (nginx honours the last)."""


class StreamTransport:
    """A session's :class:`~tidings.session.Transport` over a chunked response.

    ``write`` is the socket transport's bound ``write`` (the wire already
    chunked the bytes). A disconnect is a disconnect push, then the end of the
    response (docs/protocol.md section 5, "How a disconnect travels").
    """

    __slots__ = (
        "emulation",
        "name",
        "on_end",
        "session",
        "stream",
        "unidirectional",
        "wire",
        "write",
    )

    def __init__(
        self,
        stream: ResponseStream,
        wire: WireFormat,
        *,
        name: str,
        unidirectional: bool = False,
        emulation: bool = False,
    ) -> None:
        self.stream = stream
        self.wire = wire
        self.name = name
        self.unidirectional = unidirectional
        self.emulation = emulation
        self.write = stream.write
        self.session: Session | None = None
        self.on_end: Callable[[], None] | None = None

    @property
    def closed(self) -> bool:
        return self.stream.closed

    def close(self, disconnect: Disconnect) -> None:
        if self.stream.closed:
            return
        wire = self.wire
        push = DisconnectPush(disconnect.code, disconnect.reason)
        self.write(wire.frame([wire.codec.encode_push("", "disconnect", push, wire.envelope)]))
        self.write(END_CHUNK)
        self.stream.end()

    def write_buffer_size(self) -> int:
        return self.stream.write_buffer_size()

    def attach(self, session: Session, write_buffer_limit: int) -> None:
        """Bind the session: end of response -> ``transport_closed``; back-pressure -> slow."""
        self.session = session
        self.stream.on_close = self._ended
        self.stream.set_high_water(transport_high_water(write_buffer_limit))
        self.stream.on_pause = session.on_write_paused
        self.stream.on_resume = session.on_write_resumed

    def _ended(self) -> None:
        if self.session is not None:
            self.session.transport_closed()
        callback, self.on_end = self.on_end, None
        if callback is not None:
            callback()
