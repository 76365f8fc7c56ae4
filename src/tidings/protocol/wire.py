"""Wire formats: how each kind of transport frames the protocol's documents. Sans I/O.

A :class:`WireFormat` turns documents (replies, pushes) into the bytes one
transport kind puts on the wire: a WebSocket frame, SSE events, lines of an
HTTP stream. The hub frames a broadcast batch **once per wire format** and
hands the same bytes object to every recipient's :data:`Writer`, so framing
never happens per recipient (docs/architecture.md, "The hot path").

Instances are shared singletons (the hub groups subscribers by wire identity);
they hold no per-connection state. Transports (``tidings.transports``) only
adapt sockets and HTTP responses around these bytes.

Each wire format carries the :class:`~tidings.protocol.codec.ClientCodec` its
connections speak: JSON for all but the Protobuf formats (:class:`ProtobufWire`,
binary WebSocket frames and Protobuf ``http_stream`` responses), so a session
reads and writes through ``wire.codec`` without knowing which it is.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence

from tidings.protocol import protobuf
from tidings.protocol.codec import JSON_CODEC, ClientCodec, PreparedPush, join_documents

Writer = Callable[[bytes], None]
"""Where a subscriber's framed bytes go: for sockets, the transport's own ``write``."""

_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


class WireFormat:
    """How one kind of transport frames documents.

    ``envelope`` is true for bidirectional transports (pushes wrapped as
    ``{"push":...}``) and false for unidirectional ones (bare push objects,
    docs/protocol.md section 8). ``codec`` is the encoding its connections speak.
    """

    __slots__ = ("_variants", "codec", "envelope", "name")

    def __init__(self, name: str, *, envelope: bool, codec: ClientCodec = JSON_CODEC) -> None:
        self.name = name
        self.envelope = envelope
        self.codec = codec
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
    (docs/protocol.md, "Delta compression") by its codec: in JSON their data a JSON
    string, whole or a delta; in Protobuf the bytes themselves, whole or a delta."""

    __slots__ = ("base", "mode")

    def __init__(self, base: WireFormat, mode: str) -> None:
        super().__init__(f"{base.name}+{mode}", envelope=base.envelope, codec=base.codec)
        self.base = base
        self.mode = mode

    def frame(self, documents: Sequence[bytes]) -> bytes:
        return self.base.frame(documents)

    def frame_pushes(self, pushes: Sequence[PreparedPush]) -> bytes:
        envelope = self.envelope
        mode = self.mode
        codec = self.codec
        if mode == "deltas":
            return self.base.frame([codec.delta_for_delta(push, envelope) for push in pushes])
        if mode == "strings":
            return self.base.frame([codec.whole_for_delta(push, envelope) for push in pushes])
        documents = []
        whole = True
        for push in pushes:
            if push.kind != "pub":
                documents.append(codec.push_document(push, envelope))
            elif whole:
                documents.append(codec.whole_for_delta(push, envelope))
                whole = False
            else:
                documents.append(codec.delta_for_delta(push, envelope))
        return self.base.frame(documents)

    def for_delta(self, mode: str) -> WireFormat:
        return self.base.for_delta(mode)


# --------------------------------------------------------------------------- WebSocket


TEXT = 0x81
"""FIN and the text opcode: the first byte of a final text frame."""
BINARY = 0x82
"""FIN and the binary opcode (Protobuf connections)."""
_RSV1 = 0x40
"""The permessage-deflate bit (RFC 7692 section 6)."""


def _frame(first: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return _pack_short(first, 126, length) + payload
    return _pack_long(first, 127, length) + payload


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (RFC 6455 section 5.2): valid for every recipient."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return _pack_short(0x81, 126, length) + payload
    return _pack_long(0x81, 127, length) + payload


def binary_frame(payload: bytes) -> bytes:
    """An unmasked, final binary frame: what a Protobuf connection's messages travel in."""
    return _frame(BINARY, payload)


def compressed_text_frame(payload: bytes, window_bits: int, level: int = 6) -> bytes:
    """A final text frame compressed with permessage-deflate (RFC 7692 section 7.2.1).

    Each message is compressed on its own (no context takeover), so the bytes
    are valid for every recipient whatever it received before.
    """
    return _frame(TEXT | _RSV1, _deflate(payload, window_bits, level))


def compressed_binary_frame(payload: bytes, window_bits: int, level: int = 6) -> bytes:
    """A final binary frame compressed like :func:`compressed_text_frame`."""
    return _frame(BINARY | _RSV1, _deflate(payload, window_bits, level))


def _deflate(payload: bytes, window_bits: int, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if data.endswith(b"\x00\x00\xff\xff"):
        data = data[:-4]
    return data


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


class ProtobufWire(WireFormat):
    """Protobuf ``Reply`` messages, each prefixed with its varint length, in one transport
    frame (docs/protocol.md, "Protobuf"): ``outer`` makes that frame, a binary WebSocket
    frame (compressed or not) or an HTTP chunk of an ``http_stream`` response.

    Publications are read from the prepared push's Protobuf encoding
    (:func:`tidings.protocol.protobuf.push_message`), made once per publication
    for every Protobuf wire format; this only frames.
    """

    __slots__ = ("outer",)

    def __init__(self, name: str, outer: Callable[[bytes], bytes]) -> None:
        super().__init__(name, envelope=True, codec=protobuf.PROTOBUF_CODEC)
        self.outer = outer

    def frame(self, documents: Sequence[bytes]) -> bytes:
        return self.outer(protobuf.frame(documents))

    def frame_pushes(self, pushes: Sequence[PreparedPush]) -> bytes:
        push_message = protobuf.push_message
        return self.outer(protobuf.frame([push_message(push) for push in pushes]))


def deflated_binary(window_bits: int, min_size: int) -> Callable[[bytes], bytes]:
    """Binary frames compressed once per batch when worth it (a Protobuf connection that
    negotiated permessage-deflate), as :class:`WebSocketDeflateWire` does for JSON."""

    def outer(payload: bytes) -> bytes:
        if len(payload) < min_size:
            return binary_frame(payload)
        return compressed_binary_frame(payload, window_bits)

    return outer


PROTOBUF_WIRE = ProtobufWire("websocket+protobuf", binary_frame)


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
PROTOBUF_HTTP_STREAM_WIRE = ProtobufWire("http_stream+protobuf", chunk)
"""``http_stream`` with ``Content-Type: application/octet-stream``: length-prefixed
``Reply`` messages, the batch in one chunk (centrifuge-js splits them again)."""
UNI_HTTP_STREAM_WIRE = LinesWire("uni_http_stream", envelope=False)
SSE_WIRE = EventsWire("sse", envelope=True)
UNI_SSE_WIRE = EventsWire("uni_sse", envelope=False)
