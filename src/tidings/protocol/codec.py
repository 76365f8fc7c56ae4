"""JSON encoding and decoding of protocol frames, sans I/O.

Decoding turns one transport frame (one or more commands separated by ``\\n``)
into typed :class:`Command` objects and enforces the structural rules whose
breach is a protocol violation (disconnect 3501, docs/protocol.md section 1).

Encoding writes replies and pushes. A push for a broadcast is encoded once into
a :class:`PreparedPush`, whose bytes every recipient shares; transports only
frame those bytes (WebSocket frame, SSE event, stream line).

A session reads and writes through a :class:`ClientCodec`, the interface this
JSON codec (:data:`JSON_CODEC`) and the Protobuf one
(:data:`tidings.protocol.protobuf.PROTOBUF_CODEC`) both implement; the
transport adapter picks one per connection and the wire format carries it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, TypeVar

import msgspec
from msgspec import Raw

from tidings.errors import Error, ProtocolViolation
from tidings.protocol import fossil
from tidings.protocol.messages import (
    CHANNEL_METHODS,
    METHODS,
    NO_DATA,
    ClientInfo,
    Command,
    ConnectRequest,
    ErrorResult,
    JoinLeave,
    MapPublication,
    Publication,
)

_command_decoder = msgspec.json.Decoder(Command)
_connect_request_decoder = msgspec.json.Decoder(ConnectRequest)
_encoder = msgspec.json.Encoder()
encode = _encoder.encode
"""Encode any msgspec-compatible value to compact JSON bytes."""

KNOWN_DELTA_TYPES = frozenset({"", "fossil"})

DATA_BODIES = (Publication, MapPublication)
"""Push bodies with a ``data`` that delta subscribers take as a string or a fossil delta:
stream publications and map changes."""

Keyed = TypeVar("Keyed", Publication, MapPublication)


def decode_frame(frame: bytes) -> list[Command]:
    """Split a frame into commands, checking each one's structure.

    Raises :class:`ProtocolViolation` for an empty frame, JSON that does not
    parse or does not fit the command schema, and the per-command rules in
    :func:`command_method`.
    """
    lines = frame.strip().split(b"\n")
    if lines == [b""]:
        raise ProtocolViolation("empty frame")
    commands = []
    for line in lines:
        line = line.strip()
        if not line:
            raise ProtocolViolation("empty line in frame")
        try:
            command = _command_decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolViolation(f"malformed command: {exc}") from None
        except RecursionError:  # JSON nested deeper than the interpreter allows
            raise ProtocolViolation("malformed command: nested too deeply") from None
        command_method(command)
        commands.append(command)
    return commands


def command_method(command: Command) -> str | None:
    """Name the method a command carries; ``None`` means the empty command (a pong).

    Raises :class:`ProtocolViolation` when the command carries several methods,
    an id without a method, ``id`` 0 on anything but ``send``, ``ping``
    (which current servers treat as unknown), a request without its required
    channel, ``refresh`` without a token, or an unknown ``delta``.
    """
    method = None
    for name in METHODS:
        if getattr(command, name) is not None:
            if method is not None:
                raise ProtocolViolation(f"more than one method ({method}, {name})")
            method = name
    if method is None:
        if command.id:
            raise ProtocolViolation("command has an id but no known method")
        return None
    if method == "ping":
        raise ProtocolViolation("unknown method ping")
    if method == "send":
        return method
    if not command.id:
        raise ProtocolViolation(f"{method} without an id")
    request = getattr(command, method)
    if method in CHANNEL_METHODS and not request.channel:
        raise ProtocolViolation(f"{method} without a channel")
    if method == "refresh" and not request.token:
        raise ProtocolViolation("refresh without a token")
    if method == "subscribe" and request.delta not in KNOWN_DELTA_TYPES:
        raise ProtocolViolation("unknown delta type")
    return method


def decode_connect_request(body: bytes) -> ConnectRequest:
    """Decode the bare ConnectRequest that unidirectional transports receive."""
    body = body.strip() or b"{}"
    try:
        return _connect_request_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolViolation(f"malformed connect request: {exc}") from None
    except RecursionError:
        raise ProtocolViolation("malformed connect request: nested too deeply") from None


def compact_raw(raw: bytes) -> bytes:
    """Return JSON bytes that hold no raw line break.

    Frames separate documents with ``\\n`` and the SDKs split on it, so a stored
    payload that arrived pretty-printed (the server API takes any JSON) is
    re-encoded before it goes on the wire. Compact payloads pass through as-is.
    """
    if b"\n" in raw or b"\r" in raw:
        return _encoder.encode(msgspec.json.decode(raw))
    return raw


JSON_INPUT_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)
"""What decoding untrusted JSON may raise (msgspec recurses: deep nesting hits the limit)."""


# --------------------------------------------------------------------------- replies


def encode_reply(command_id: int, method: str, result: object) -> bytes:
    """``{"id":N,"<method>":<result>}``: the result key is always present."""
    return b'{"id":%d,"%s":%s}' % (command_id, method.encode(), _encoder.encode(result))


def encode_error_reply(command_id: int, error: Error) -> bytes:
    result = ErrorResult(error.code, error.message, error.temporary)
    return b'{"id":%d,"error":%s}' % (command_id, _encoder.encode(result))


EMPTY_DOCUMENT = b"{}"
"""The server ping (and the client pong): a reply with no id and no push."""


# --------------------------------------------------------------------------- pushes


class PreparedPush:
    """A push encoded once, in both envelopes, shared by every recipient.

    Bidirectional transports wrap a push as ``{"push":{...}}``; unidirectional
    ones send the bare push object (docs/protocol.md section 8). ``offset`` and
    ``epoch`` let the hub check order without decoding anything; ``channel``,
    ``kind`` and ``body`` (the typed push, a :class:`Publication` for ``pub``)
    let a wire format render the push its own way without decoding the JSON.

    A publication also carries what delta compression needs: ``delta`` (the
    publisher asked for delta encoding) and ``base`` (the payload it may be
    encoded against, which the hub sets when it holds the stream's previous
    publication). A map change is ``per_key``: its base is the previous value of
    the same key, which the map engine read in the same atomic step as the write
    and :func:`tidings.protocol.maps.prepare_map_publication` set; the hub leaves
    it alone. Subscribers that negotiated delta get :meth:`string_document`
    or :meth:`delta_document`; each is encoded on first use and then shared,
    like the plain documents. Conflation reads the publication's ``key``
    (:attr:`key`).

    Protobuf subscribers read the push as a ``Reply`` that
    :mod:`tidings.protocol.protobuf` encodes on first use and keeps here
    (:meth:`rendered`), so a channel with subscribers of both encodings pays one
    encoding per encoding and publication, never one per recipient. The fossil
    delta itself (:meth:`fossil_delta`) is made once for both.
    """

    __slots__ = (
        "_variants",
        "bare",
        "base",
        "body",
        "channel",
        "delta",
        "envelope",
        "epoch",
        "kind",
        "offset",
        "per_key",
    )

    def __init__(
        self,
        channel: str,
        kind: str,
        body: object,
        encoded_body: bytes,
        offset: int = 0,
        epoch: str = "",
        delta: bool = False,
        per_key: bool = False,
    ) -> None:
        self.channel = channel
        self.kind = kind
        self.body = body
        self.bare = b"{" + encoded_body + b"}"
        self.envelope = b'{"push":{' + encoded_body + b"}}"
        self.offset = offset
        self.epoch = epoch
        self.delta = delta
        self.per_key = per_key
        self.base: Raw | None = None
        # Per-publication costs matter (the hot path's only encoding step): every other
        # rendering is cached in one slot, a list indexed by the _VARIANT_* constants,
        # made on first use (a JSON-only channel without delta never makes it).
        self._variants: list[Any] | None = None

    @property
    def key(self) -> str:
        """A publication's key (what it is the latest value of); ``""`` for other pushes.

        A map change (:class:`tidings.protocol.maps.MapPublication`, which imports this
        module) has its own ``key``: conflation keeps the latest change of each key.
        """
        body = self.body
        if isinstance(body, Publication):
            return body.key
        key = getattr(body, "key", "")
        return key if isinstance(key, str) else ""

    @property
    def payload(self) -> Raw | None:
        """A publication's or map change's ``data``; ``None`` for other pushes."""
        body = self.body
        return body.data if isinstance(body, DATA_BODIES) else None

    def document(self, envelope: bool) -> bytes:
        """The document a transport sends: wrapped (bidirectional) or bare."""
        return self.envelope if envelope else self.bare

    def rendered(self, slot: int, render: Callable[[PreparedPush], bytes]) -> bytes:
        """The rendering kept in ``slot`` (:data:`PROTOBUF_REPLY`, :data:`PROTOBUF_DELTA`),
        made by ``render`` on first use and then shared by every recipient of it."""
        variants = self._variants or self._new_variants()
        value: bytes | None = variants[slot]
        if value is None:
            value = variants[slot] = render(self)
        return value

    def string_document(self, envelope: bool) -> bytes:
        """The document for a delta subscriber owed the full payload: ``data`` as a JSON
        string (docs/protocol.md, "Delta compression"). Other pushes are unchanged."""
        body = self.body
        if not isinstance(body, DATA_BODIES):
            return self.document(envelope)
        pair = self._strings(body)
        return pair[0] if envelope else pair[1]

    def delta_document(self, envelope: bool) -> bytes:
        """The document for a delta subscriber that holds ``base``: ``data`` a fossil delta
        against it when the publisher asked for one and it is smaller, else as
        :meth:`string_document`."""
        body = self.body
        if not isinstance(body, DATA_BODIES):
            return self.document(envelope)
        variants = self._variants or self._new_variants()
        pair: tuple[bytes, bytes] | None = variants[_VARIANT_JSON_DELTAS]
        if pair is None:
            text = None
            delta = self.fossil_delta()
            if delta is not None:
                try:
                    text = delta.decode()
                except UnicodeDecodeError:
                    # A literal run can begin or end inside a multi-byte character; a JSON
                    # string cannot carry those bytes unchanged: the payload goes whole.
                    text = None
            if text is None:
                pair = self._strings(body)
            else:
                pair = _encode_variant(self, Raw(_encoder.encode(text)), True)
            variants[_VARIANT_JSON_DELTAS] = pair
        return pair[0] if envelope else pair[1]

    def fossil_delta(self) -> bytes | None:
        """The fossil delta that turns ``base`` into the payload, or ``None`` to send the
        payload whole: no base, the publisher did not ask, or the delta is not smaller
        (Centrifugo's rule). Made once, for the JSON and the Protobuf subscribers."""
        variants = self._variants or self._new_variants()
        patch: bytes | None = variants[_VARIANT_FOSSIL]
        if patch is None:
            patch = b""
            base, body = self.base, self.body
            if self.delta and base is not None and isinstance(body, DATA_BODIES):
                created = fossil.create(bytes(base), bytes(body.data))
                if len(created) < len(body.data):
                    patch = created
            variants[_VARIANT_FOSSIL] = patch
            self.base = None  # made: the previous payload is no longer needed
        return patch or None

    def _strings(self, body: Publication | MapPublication) -> tuple[bytes, bytes]:
        variants = self._variants or self._new_variants()
        pair: tuple[bytes, bytes] | None = variants[_VARIANT_JSON_STRINGS]
        if pair is None:
            pair = _encode_variant(self, string_payload(body.data), False)
            variants[_VARIANT_JSON_STRINGS] = pair
        return pair

    def _new_variants(self) -> list[Any]:
        variants: list[Any] = [None] * _VARIANTS
        self._variants = variants
        return variants


_VARIANT_JSON_STRINGS, _VARIANT_JSON_DELTAS, _VARIANT_FOSSIL = 0, 1, 2
PROTOBUF_REPLY = 3
"""Slot of :meth:`PreparedPush.rendered` for the Protobuf ``Reply`` of a push."""
PROTOBUF_DELTA = 4
"""Slot for the Protobuf ``Reply`` a delta subscriber holding ``base`` takes."""
_VARIANTS = 5


NULL_STRING: Final = Raw(b'"null"')
"""What a delta subscriber is sent as the ``data`` of a change that has none (a map removal,
a map presence entry): centrifuge-js parses the string of every publication of a
delta subscription, and an absent or empty one throws there."""


def string_payload(payload: Raw) -> Raw:
    """A payload as the JSON string of its JSON text (what a delta subscriber is sent);
    no payload is :data:`NULL_STRING`.

    Payloads are UTF-8 JSON (``client_payload`` refuses other bytes from Protobuf
    clients); ``replace`` only keeps a broken one from failing a whole fan-out.
    """
    if not len(payload):
        return NULL_STRING
    return Raw(_encoder.encode(bytes(payload).decode(errors="replace")))


def string_publication(publication: Keyed) -> Keyed:
    """A copy of ``publication`` (or of a map entry) with its ``data`` as a JSON string:
    recovered publications, and a map flow's state and stream pages, for a delta
    subscriber."""
    return msgspec.structs.replace(publication, data=string_payload(publication.data))


def _encode_variant(push: PreparedPush, data: Raw, delta: bool) -> tuple[bytes, bytes]:
    """``push`` (a publication or a map change) with another ``data``: its two documents."""
    assert isinstance(push.body, DATA_BODIES)
    publication = msgspec.structs.replace(push.body, data=data, delta=delta)
    encoded = _push_body(push.channel, b"pub", _encoder.encode(publication))
    return b'{"push":{' + encoded + b"}}", b"{" + encoded + b"}"


def _push_body(channel: str, kind: bytes, payload: bytes) -> bytes:
    if channel:
        return b'"channel":%s,"%s":%s' % (_encoder.encode(channel), kind, payload)
    return b'"%s":%s' % (kind, payload)


def prepare_push(channel: str, kind: str, body: object) -> PreparedPush:
    """Encode any push (``join``, ``unsubscribe``, ``message``...) once."""
    encoded = _push_body(channel, kind.encode(), _encoder.encode(body))
    return PreparedPush(channel, kind, body, encoded)


def prepare_publication(
    channel: str, publication: Publication, epoch: str = "", *, delta: bool = False
) -> PreparedPush:
    """Encode a publication push once: the hot path's only encoding step.

    ``delta``: the publisher asked for delta encoding (server API ``delta``, or the
    namespace's ``delta_publish``).
    """
    encoded = _push_body(channel, b"pub", _encoder.encode(publication))
    return PreparedPush(channel, "pub", publication, encoded, publication.offset, epoch, delta)


def prepare_join(channel: str, info: ClientInfo) -> PreparedPush:
    return prepare_push(channel, "join", JoinLeave(info))


def prepare_leave(channel: str, info: ClientInfo) -> PreparedPush:
    return prepare_push(channel, "leave", JoinLeave(info))


def join_documents(documents: Sequence[bytes]) -> bytes:
    """Several JSON documents in one frame, separated by a single ``\\n``."""
    if len(documents) == 1:
        return documents[0]
    return b"\n".join(documents)


def raw(value: bytes | str | None) -> Raw:
    """Wrap JSON text as a raw value; empty means absent.

    Absent must be the very :data:`NO_DATA` object: ``omit_defaults`` leaves a
    field out only when it *is* its default.
    """
    if not value:
        return NO_DATA
    return Raw(value)


# --------------------------------------------------------------------------- the codec interface


class ClientCodec(Protocol):
    """How one encoding of the client protocol reads commands and writes what a session sends.

    Two implement it: :data:`JSON_CODEC` and
    :data:`tidings.protocol.protobuf.PROTOBUF_CODEC` (docs/protocol.md, "Protobuf").
    The transport adapter picks one per connection (WebSocket subprotocol,
    ``Content-Type`` of an HTTP stream) and its :class:`~tidings.protocol.wire.WireFormat`
    carries it, so the session never asks which one it speaks. Both decode into
    the same :class:`Command` structs under the same rules, so codes and limits
    are the same whatever the encoding.

    ``binary``: its frames are binary (WebSocket binary frames; a JSON connection
    refuses those with 3506, a Protobuf one refuses text frames). ``empty``: the
    document that is both the server's ping and the client's pong.
    """

    @property
    def name(self) -> str: ...

    @property
    def binary(self) -> bool: ...

    @property
    def empty(self) -> bytes: ...

    def decode_commands(self, frame: bytes) -> list[Command]:
        """The commands of one transport frame; malformed -> :class:`ProtocolViolation`."""
        ...

    def encode_reply(self, command_id: int, method: str, result: object) -> bytes: ...

    def encode_error_reply(self, command_id: int, error: Error) -> bytes: ...

    def encode_push(self, channel: str, kind: str, body: object, envelope: bool) -> bytes:
        """A push for one connection (unsubscribe, subscribe, refresh, disconnect...)."""
        ...

    def push_document(self, push: PreparedPush, envelope: bool) -> bytes:
        """A prepared (shared) push as this encoding sends it."""
        ...

    def whole_for_delta(self, push: PreparedPush, envelope: bool) -> bytes:
        """A publication whole, for a subscriber that negotiated delta compression."""
        ...

    def delta_for_delta(self, push: PreparedPush, envelope: bool) -> bytes:
        """A publication as a delta against ``push.base`` where one is worth sending."""
        ...

    def recovered_for_delta(self, publication: Keyed) -> Keyed:
        """A recovered publication in the subscribe reply of a delta subscriber (whole), or
        an entry of a map flow's state, stream or catch-up for one."""
        ...

    def client_payload(self, data: Raw) -> Raw | None:
        """A client's publication ``data`` as the JSON value every subscriber takes, or
        ``None`` when it is not one (docs/protocol.md, "Protobuf")."""
        ...


class JsonCodec:
    """The JSON encoding (docs/protocol.md section 1): documents separated by ``\\n``."""

    __slots__ = ()

    name: Final = "json"
    binary: Final = False
    empty: Final = EMPTY_DOCUMENT

    def decode_commands(self, frame: bytes) -> list[Command]:
        return decode_frame(frame)

    def encode_reply(self, command_id: int, method: str, result: object) -> bytes:
        return encode_reply(command_id, method, result)

    def encode_error_reply(self, command_id: int, error: Error) -> bytes:
        return encode_error_reply(command_id, error)

    def encode_push(self, channel: str, kind: str, body: object, envelope: bool) -> bytes:
        return prepare_push(channel, kind, body).document(envelope)

    def push_document(self, push: PreparedPush, envelope: bool) -> bytes:
        return push.envelope if envelope else push.bare

    def whole_for_delta(self, push: PreparedPush, envelope: bool) -> bytes:
        return push.string_document(envelope)

    def delta_for_delta(self, push: PreparedPush, envelope: bool) -> bytes:
        return push.delta_document(envelope)

    def recovered_for_delta(self, publication: Keyed) -> Keyed:
        return string_publication(publication)

    def client_payload(self, data: Raw) -> Raw | None:
        return data  # decoded from JSON text: a JSON value, with no raw line break


JSON_CODEC: Final = JsonCodec()
