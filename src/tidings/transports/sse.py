"""Server-sent events: ``/connection/sse`` (emulation) and ``/connection/uni_sse``.

Each document is one event, ``data: <json>\\n\\n`` (fact sheet section 8); JSON
never holds a raw newline (``compact_raw``), so one ``data:`` line per document
is always enough. Batches are pre-chunked like every HTTP stream here (see
:mod:`tidings.transports.http_stream`), so broadcasts stay one shared bytes
object per wire format.
"""

from __future__ import annotations

from collections.abc import Sequence

from tidings.transports.base import WireFormat
from tidings.transports.http_stream import NO_CACHE_HEADERS, chunk

SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), *NO_CACHE_HEADERS]

OPENING = chunk(b"\r\n")
"""Written first so proxies and browsers see the headers at once (as Centrifugo does)."""


class EventsWire(WireFormat):
    """One ``data:`` event per document, the batch in one chunk."""

    __slots__ = ()

    def frame(self, documents: Sequence[bytes]) -> bytes:
        if len(documents) == 1:
            return chunk(b"data: " + documents[0] + b"\n\n")
        return chunk(b"".join(b"data: " + document + b"\n\n" for document in documents))


SSE_WIRE = EventsWire("sse", envelope=True)
UNI_SSE_WIRE = EventsWire("uni_sse", envelope=False)
