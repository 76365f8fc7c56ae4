"""JSON encoding and decoding of protocol frames, sans I/O.

Decoding turns one transport frame (one or more commands separated by ``\\n``)
into typed :class:`Command` objects and enforces the structural rules whose
breach is a protocol violation (disconnect 3501, docs/protocol.md section 1).

Encoding writes replies and pushes. A push for a broadcast is encoded once into
a :class:`PreparedPush`, whose bytes every recipient shares; transports only
frame those bytes (WebSocket frame, SSE event, stream line).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    Publication,
)

_command_decoder = msgspec.json.Decoder(Command)
_connect_request_decoder = msgspec.json.Decoder(ConnectRequest)
_encoder = msgspec.json.Encoder()
encode = _encoder.encode
"""Encode any msgspec-compatible value to compact JSON bytes."""

KNOWN_DELTA_TYPES = frozenset({"", "fossil"})


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
    publication). Subscribers that negotiated delta get :meth:`string_document`
    or :meth:`delta_document`; each is encoded on first use and then shared,
    like the plain documents. Conflation reads the publication's ``key``
    (:attr:`key`).
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
    ) -> None:
        self.channel = channel
        self.kind = kind
        self.body = body
        self.bare = b"{" + encoded_body + b"}"
        self.envelope = b'{"push":{' + encoded_body + b"}}"
        self.offset = offset
        self.epoch = epoch
        self.delta = delta
        self.base: Raw | None = None
        # Per-publication costs matter (the hot path's only encoding step): the delta
        # variants' cache is one slot, [strings pair, deltas pair], made on first use.
        self._variants: list[tuple[bytes, bytes] | None] | None = None

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
        """A publication's ``data``; ``None`` for other pushes."""
        body = self.body
        return body.data if isinstance(body, Publication) else None

    def document(self, envelope: bool) -> bytes:
        """The document a transport sends: wrapped (bidirectional) or bare."""
        return self.envelope if envelope else self.bare

    def string_document(self, envelope: bool) -> bytes:
        """The document for a delta subscriber owed the full payload: ``data`` as a JSON
        string (docs/protocol.md, "Delta compression"). Other pushes are unchanged."""
        body = self.body
        if not isinstance(body, Publication):
            return self.document(envelope)
        pair = self._strings(body)
        return pair[0] if envelope else pair[1]

    def delta_document(self, envelope: bool) -> bytes:
        """The document for a delta subscriber that holds ``base``: ``data`` a fossil delta
        against it when the publisher asked for one and it is smaller, else as
        :meth:`string_document`."""
        body = self.body
        if not isinstance(body, Publication):
            return self.document(envelope)
        variants = self._variants
        pair = variants[1] if variants is not None else None
        if pair is None:
            delta = None
            if self.delta and self.base is not None:
                delta = fossil.create_for_json(bytes(self.base), bytes(body.data))
            if delta is None:
                pair = self._strings(body)
            else:
                pair = _encode_variant(self, Raw(_encoder.encode(delta.decode())), True)
            variants = self._variants
            if variants is None:
                variants = self._variants = [None, None]
            variants[1] = pair
            self.base = None  # encoded: the previous payload is no longer needed
        return pair[0] if envelope else pair[1]

    def _strings(self, body: Publication) -> tuple[bytes, bytes]:
        variants = self._variants
        if variants is None:
            variants = self._variants = [None, None]
        pair = variants[0]
        if pair is None:
            pair = variants[0] = _encode_variant(self, string_payload(body.data), False)
        return pair


def string_payload(payload: Raw) -> Raw:
    """A payload as the JSON string of its JSON text (what a delta subscriber is sent)."""
    return Raw(_encoder.encode(bytes(payload).decode()))


def string_publication(publication: Publication) -> Publication:
    """A copy of ``publication`` with its ``data`` as a JSON string (recovered
    publications in the subscribe reply of a delta subscriber)."""
    return msgspec.structs.replace(publication, data=string_payload(publication.data))


def _encode_variant(push: PreparedPush, data: Raw, delta: bool) -> tuple[bytes, bytes]:
    """``push`` (a publication) with another ``data``: its two documents."""
    assert isinstance(push.body, Publication)
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
