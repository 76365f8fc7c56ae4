"""Wire formats: how each kind of transport frames the protocol's documents. Sans I/O.

A :class:`WireFormat` turns documents (replies, pushes) into the bytes one
transport kind puts on the wire: a WebSocket frame, SSE events, lines of an
HTTP stream. The hub frames a broadcast batch **once per wire format** and
hands the same bytes object to every recipient's :data:`Writer`, so framing
never happens per recipient (docs/architecture.md, "The hot path").

Instances are shared singletons (the hub groups subscribers by wire identity);
they hold no per-connection state. Transports (``tidings.transports``) only
adapt sockets and HTTP responses around these bytes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence

from tidings.protocol.codec import PreparedPush, join_documents

Writer = Callable[[bytes], None]
"""Where a subscriber's framed bytes go: for sockets, the transport's own ``write``."""

_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


class WireFormat:
    """How one kind of transport frames documents.

    ``envelope`` is true for bidirectional transports (pushes wrapped as
    ``{"push":...}``) and false for unidirectional ones (bare push objects,
    docs/protocol.md section 8).
    """

    __slots__ = ("_variants", "envelope", "name")

    def __init__(self, name: str, *, envelope: bool) -> None:
        self.name = name
        self.envelope = envelope
        self._variants: dict[str, WireFormat] | None = None

    def frame(self, documents: Sequence[bytes]) -> bytes:
        """Frame already encoded documents (replies, personal pushes)."""
        raise NotImplementedError

    def frame_pushes(self, pushes: Sequence[PreparedPush]) -> bytes:
        """Frame a broadcast batch. Called once per batch for all subscribers of this format.

        The default picks each push's prepared envelope; a format that renders
        publications its own way (the plain-HTTP feeds) overrides it and reads the
        push's fields, never re-decoding JSON.
        """
        if self.envelope:
            return self.frame([push.envelope for push in pushes])
        return self.frame([push.bare for push in pushes])

    def for_delta(self, mode: str) -> WireFormat:
        """This format for subscribers that negotiated delta compression.

        ``mode`` is one of :data:`DELTA_MODES`: ``"deltas"`` (each publication a
        fossil delta against the previous one where smaller: a subscriber that
        holds the previous publication), ``"start"`` (the first publication of a
        frame whole, the rest deltas: a subscriber that holds nothing yet, fed
        consecutive publications) or ``"strings"`` (every publication whole: a
        conflated subscriber, whose publications skip others). Data is always a
        JSON string. The hub groups such subscribers under these formats like
        under any other, so each variant of a batch is framed once for all.
        """
        variants = self._variants
        if variants is None:
            variants = self._variants = {name: DeltaVariant(self, name) for name in DELTA_MODES}
        return variants[mode]

    def __repr__(self) -> str:
        return f"<WireFormat {self.name}>"


DELTA_MODES = ("deltas", "start", "strings")
"""How :class:`DeltaVariant` renders publications (see :meth:`WireFormat.for_delta`)."""


class DeltaVariant(WireFormat):
    """Another wire format's frames, with publications rendered for delta subscribers
    (docs/protocol.md, "Delta compression"): their data a JSON string, whole or a delta."""

    __slots__ = ("base", "mode")

    def __init__(self, base: WireFormat, mode: str) -> None:
        super().__init__(f"{base.name}+{mode}", envelope=base.envelope)
        self.base = base
        self.mode = mode

    def frame(self, documents: Sequence[bytes]) -> bytes:
        return self.base.frame(documents)

    def frame_pushes(self, pushes: Sequence[PreparedPush]) -> bytes:
        envelope = self.envelope
        mode = self.mode
        if mode == "deltas":
            return self.base.frame([push.delta_document(envelope) for push in pushes])
        if mode == "strings":
            return self.base.frame([push.string_document(envelope) for push in pushes])
        documents = []
        whole = True
        for push in pushes:
            if push.kind != "pub":
                documents.append(push.document(envelope))
            elif whole:
                documents.append(push.string_document(envelope))
                whole = False
            else:
                documents.append(push.delta_document(envelope))
        return self.base.frame(documents)

    def for_delta(self, mode: str) -> WireFormat:
        return self.base.for_delta(mode)


# --------------------------------------------------------------------------- WebSocket


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (RFC 6455 section 5.2): valid for every recipient."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return _pack_short(0x81, 126, length) + payload
    return _pack_long(0x81, 127, length) + payload


def compressed_text_frame(payload: bytes, window_bits: int, level: int = 6) -> bytes:
    """A final text frame compressed with permessage-deflate (RFC 7692 section 7.2.1).

    Each message is compressed on its own (no context takeover), so the bytes
    are valid for every recipient whatever it received before.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if data.endswith(b"\x00\x00\xff\xff"):
        data = data[:-4]
    length = len(data)
    if length < 126:
        return bytes((0xC1, length)) + data
    if length < 65536:
        return _pack_short(0xC1, 126, length) + data
    return _pack_long(0xC1, 127, length) + data


class WebSocketWire(WireFormat):
    """All documents in one text frame, separated by ``\\n`` (what the SDKs split on)."""

    __slots__ = ()

    def frame(self, documents: Sequence[bytes]) -> bytes:
        return text_frame(join_documents(documents))


class WebSocketDeflateWire(WireFormat):
    """Like :class:`WebSocketWire`, compressed once per batch when it is worth it.

    One instance per (window bits, threshold), owned by the server: the hub
    frames a broadcast once per wire format, so compression happens once per
    publication batch, never per recipient.
    """

    __slots__ = ("min_size", "window_bits")

    def __init__(self, window_bits: int, min_size: int) -> None:
        super().__init__(f"websocket+deflate/{window_bits}", envelope=True)
        self.window_bits = window_bits
        self.min_size = min_size

    def frame(self, documents: Sequence[bytes]) -> bytes:
        payload = join_documents(documents)
        if len(payload) < self.min_size:
            return text_frame(payload)
        return compressed_text_frame(payload, self.window_bits)


class WebSocketMessagesWire(WireFormat):
    """Each document in its own text frame (unidirectional WebSocket)."""

    __slots__ = ()

    def frame(self, documents: Sequence[bytes]) -> bytes:
        return b"".join(text_frame(document) for document in documents)


JSON_WIRE = WebSocketWire("websocket", envelope=True)
UNI_WEBSOCKET_WIRE = WebSocketMessagesWire("uni_websocket", envelope=False)


# --------------------------------------------------------------------------- HTTP streams

END_CHUNK = b"0\r\n\r\n"
"""The last chunk of a chunked body (RFC 9112 section 7.1)."""


def chunk(payload: bytes) -> bytes:
    """One HTTP chunk holding ``payload`` (which must not be empty).

    Stream wire formats emit complete chunks, so a stream's writer is the
    socket's own ``write`` and no chunk header is built per recipient.
    """
    return b"%x\r\n%b\r\n" % (len(payload), payload)


class LinesWire(WireFormat):
    """Each document followed by ``\\n``, the batch in one chunk (what centrifuge-js splits)."""

    __slots__ = ()

    def frame(self, documents: Sequence[bytes]) -> bytes:
        if len(documents) == 1:
            return chunk(documents[0] + b"\n")
        return chunk(b"".join(document + b"\n" for document in documents))


class EventsWire(WireFormat):
    """One SSE ``data:`` event per document, the batch in one chunk.

    JSON never holds a raw newline (``compact_raw``), so one ``data:`` line per
    document is always enough.
    """

    __slots__ = ()

    def frame(self, documents: Sequence[bytes]) -> bytes:
        if len(documents) == 1:
            return chunk(b"data: " + documents[0] + b"\n\n")
        return chunk(b"".join(b"data: " + document + b"\n\n" for document in documents))


HTTP_STREAM_WIRE = LinesWire("http_stream", envelope=True)
UNI_HTTP_STREAM_WIRE = LinesWire("uni_http_stream", envelope=False)
SSE_WIRE = EventsWire("sse", envelope=True)
UNI_SSE_WIRE = EventsWire("uni_sse", envelope=False)
