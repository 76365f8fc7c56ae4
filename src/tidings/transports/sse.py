"""Server-sent events: ``/connection/sse`` (emulation) and ``/connection/uni_sse``.

Each document is one event, ``data: <json>\\n\\n`` (docs/protocol.md section 8),
framed by :data:`tidings.protocol.wire.SSE_WIRE`; the response is an ordinary
:class:`~tidings.transports.http_stream.StreamTransport` with these headers.
"""

from __future__ import annotations

from tidings.protocol.wire import chunk
from tidings.transports.http_stream import NO_CACHE_HEADERS

SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), *NO_CACHE_HEADERS]

OPENING = chunk(b"\r\n")
"""Written first so proxies and browsers see the headers at once (as Centrifugo does)."""
