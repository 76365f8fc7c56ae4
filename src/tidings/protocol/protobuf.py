"""Protobuf encoding and decoding of the client protocol, sans I/O.

The binary variant of the protocol carries the messages of the protocol's
``client.proto`` (docs/protocol.md, "Protobuf"): a client sends ``Command``
messages, the server answers with ``Reply`` messages, and a push travels as a
``Reply`` whose ``push`` field holds a ``Push``. Several messages share one
transport frame, each prefixed with its length as a varint; a frame of one
zero byte is one empty message (the client's pong, the server's ping).

Decoding yields the very :class:`Command` structs the JSON codec yields and
applies the same structural rules (:func:`tidings.protocol.codec.command_method`),
so the session cannot tell the two wire formats apart. ``data`` and ``info``
bytes fields become :class:`msgspec.Raw` holding the bytes as they came.
Anything malformed raises :class:`ProtocolViolation` (disconnect 3501), never
another exception. Fields tidings does not read (unknown ones, and known ones
such as ``SubscribeRequest.tf``) are stepped over by their wire type without
looking inside, where the reference parsers would also validate a known
message; groups (wire types 3 and 4), which ``client.proto`` never uses, are
refused where those parsers would skip them.

The wire format is written and read here by hand rather than through the
``protobuf`` package, by measurement (``benchmarks/protobuf_codec.py``, protobuf
7.36 with its upb backend, one core of the 2-core dev machine): encoding a
publication push, the step that runs once per publication and wire format,
takes 1.8 us here against 2.5 us for building and serialising the upb message;
decoding a publish command takes 2.7 us here against 1.7 us for a upb parse
plus the copy into the struct. The push path is the one that scales with
traffic, commands come one per client request; and writing the format by hand
spares the server a compiled dependency, generated code tied to a runtime
version, and a second error model to map onto :class:`ProtocolViolation`.

How a message maps to a struct is data: each :class:`Schema` lists every
field of its ``client.proto`` message by name, number and kind, and a struct
is encoded or decoded through the fields it shares by name with its schema.
A field added to a struct in ``messages.py`` (``type``, ``phase``, ``cursor``,
``state``, ``key``, ``removed``, ``delta``...) therefore goes on the wire as
soon as the struct has it; ``tests/unit/test_protobuf_codec.py`` fails for a
struct field that no schema names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from msgspec import Raw, Struct

from tidings.errors import Error, ProtocolViolation
from tidings.protocol.codec import (
    DATA_BODIES,
    JSON_INPUT_ERRORS,
    PROTOBUF_DELTA,
    PROTOBUF_REPLY,
    Keyed,
    PreparedPush,
    command_method,
    compact_raw,
)
from tidings.protocol.messages import (
    NO_DATA,
    ChannelRequest,
    Command,
    ConnectRequest,
    ErrorResult,
    HistoryRequest,
    PublishRequest,
    RefreshRequest,
    RPCRequest,
    SendRequest,
    StreamPositionRequest,
    SubRefreshRequest,
    SubscribeRequest,
)

# --------------------------------------------------------------------------- wire primitives

# Wire types (protobuf encoding spec, "Message Structure").
VARINT: Final = 0
I64: Final = 1
LEN: Final = 2
SGROUP: Final = 3
EGROUP: Final = 4
I32: Final = 5

_UINT64_MASK: Final = (1 << 64) - 1
_INT64_MAX: Final = (1 << 63) - 1
_SMALL_VARINTS: Final = tuple(bytes((value,)) for value in range(128))


def varint(value: int) -> bytes:
    """The base-128 varint of ``value``; a negative int32/int64 takes ten bytes."""
    if 0 <= value < 0x80:
        return _SMALL_VARINTS[value]
    if 0 < value < 0x4000:  # most lengths, and offsets, take two to four bytes: no loop
        return bytes((value & 0x7F | 0x80, value >> 7))
    if 0 < value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    if 0 < value < 0x10000000:
        return bytes(
            (value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80, value >> 21)
        )
    value &= _UINT64_MASK
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a varint at ``pos``; return it (64 bits at most) and the position after it."""
    if pos >= end:
        raise ProtocolViolation("truncated varint")
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    result = byte & 0x7F
    shift = 7
    pos += 1
    while True:
        if pos >= end:
            raise ProtocolViolation("truncated varint")
        if shift > 63:
            raise ProtocolViolation("varint longer than ten bytes")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _UINT64_MASK, pos
        shift += 7


def _skip(data: bytes, pos: int, end: int, wire_type: int) -> int:
    """Step over the value of a field this codec does not read (forward compatibility)."""
    if wire_type == VARINT:
        return _read_varint(data, pos, end)[1]
    if wire_type == LEN:
        length, pos = _read_varint(data, pos, end)
        pos += length
    elif wire_type == I64:
        pos += 8
    elif wire_type == I32:
        pos += 4
    else:  # groups (3, 4) are not used by client.proto; 6 and 7 do not exist
        raise ProtocolViolation(f"unsupported wire type {wire_type}")
    if pos > end:
        raise ProtocolViolation("truncated field")
    return pos


# --------------------------------------------------------------------------- schemas

STRING: Final = "string"
BYTES: Final = "bytes"  # msgspec.Raw in structs
BOOL: Final = "bool"
UINT32: Final = "uint32"
UINT64: Final = "uint64"
INT32: Final = "int32"
INT64: Final = "int64"
SINT64: Final = "sint64"
MESSAGE: Final = "message"
REPEATED: Final = "repeated"  # repeated message
STRING_MAP: Final = "map<string,string>"
MESSAGE_MAP: Final = "map<string,message>"
EMPTY: Final = "empty"  # an empty message decoded as {} (PingRequest)

_WIRE_TYPE = {
    STRING: LEN,
    BYTES: LEN,
    BOOL: VARINT,
    UINT32: VARINT,
    UINT64: VARINT,
    INT32: VARINT,
    INT64: VARINT,
    SINT64: VARINT,
    MESSAGE: LEN,
    REPEATED: LEN,
    STRING_MAP: LEN,
    MESSAGE_MAP: LEN,
    EMPTY: LEN,
}


@dataclass(frozen=True, slots=True)
class ProtoField:
    """One field of a ``client.proto`` message: the struct attribute of the same name."""

    name: str
    number: int
    kind: str
    schema: Schema | None = None  # message, repeated and map<string,message> fields

    @property
    def key(self) -> bytes:
        """The encoded tag: field number and wire type."""
        return varint(self.number << 3 | _WIRE_TYPE[self.kind])


@dataclass(eq=False, slots=True)
class Schema:
    """A ``client.proto`` message: its fields, and the struct it decodes into (requests)."""

    name: str
    fields: tuple[ProtoField, ...]
    struct: type[Struct] | None = None
    encoders: dict[type, Callable[[Any], bytes]] = field(default_factory=dict)
    _decode_plan: dict[int, _DecodeStep] | None = None

    def encode_plan(self, struct_type: type) -> tuple[_EncodeStep, ...]:
        """The fields a struct type shares with this message, in field-number order."""
        names = set(getattr(struct_type, "__struct_fields__", ()))
        return tuple(
            (f.name, f.kind, f.key, f.schema)
            for f in sorted(self.fields, key=lambda f: f.number)
            if f.name in names
        )

    def decode_plan(self) -> dict[int, _DecodeStep]:
        """Tag (number and wire type) -> (attribute, kind, schema) for the fields the struct has.

        A field that arrives with another wire type is not in the plan: it is
        skipped like an unknown field, as the reference parsers do.
        """
        if self._decode_plan is None:
            if self.struct is None:
                raise TypeError(f"schema {self.name} has no struct to decode into")
            names = set(self.struct.__struct_fields__)
            self._decode_plan = {
                f.number << 3 | _WIRE_TYPE[f.kind]: (f.name, f.kind, f.schema)
                for f in self.fields
                if f.name in names
            }
        return self._decode_plan


_EncodeStep = tuple[str, str, bytes, Schema | None]
_DecodeStep = tuple[str, str, Schema | None]


def _schema(name: str, *fields: tuple[Any, ...], struct: type[Struct] | None = None) -> Schema:
    return Schema(name, tuple(ProtoField(*f) for f in fields), struct)


# Messages of client.proto (centrifugal/protocol, MIT licence; field numbers as of commit
# a578daf7f6d99b6e968893a61f26cd9cfc2b4bf4), server to client. Every field is listed,
# whether or not a struct carries it yet; ``prev_data`` (broker-internal) and
# ``ConnectResult.dict`` (frame compression, not a tidings feature) are left out.
CLIENT_INFO = _schema(
    "ClientInfo",
    ("user", 1, STRING),
    ("client", 2, STRING),
    ("conn_info", 3, BYTES),
    ("chan_info", 4, BYTES),
)
PUBLICATION = _schema(
    "Publication",
    ("data", 4, BYTES),
    ("info", 5, MESSAGE, CLIENT_INFO),
    ("offset", 6, UINT64),
    ("tags", 7, STRING_MAP),
    ("delta", 8, BOOL),
    ("time", 9, INT64),
    ("channel", 10, STRING),
    ("key", 11, STRING),
    ("removed", 12, BOOL),
    ("score", 13, SINT64),
    ("epoch", 14, STRING),
    ("version", 16, UINT64),
)
ERROR = _schema("Error", ("code", 1, UINT32), ("message", 2, STRING), ("temporary", 3, BOOL))
SUBSCRIBE_RESULT = _schema(
    "SubscribeResult",
    ("expires", 1, BOOL),
    ("ttl", 2, UINT32),
    ("recoverable", 3, BOOL),
    ("epoch", 6, STRING),
    ("publications", 7, REPEATED, PUBLICATION),
    ("recovered", 8, BOOL),
    ("offset", 9, UINT64),
    ("positioned", 10, BOOL),
    ("data", 11, BYTES),
    ("was_recovering", 12, BOOL),
    ("delta", 13, BOOL),
    ("id", 14, INT64),
    ("type", 15, INT32),
    ("phase", 16, INT32),
    ("cursor", 17, STRING),
    ("state", 18, REPEATED, PUBLICATION),
    ("publish_debounce", 19, UINT32),
)
CONNECT_RESULT = _schema(
    "ConnectResult",
    ("client", 1, STRING),
    ("version", 2, STRING),
    ("expires", 3, BOOL),
    ("ttl", 4, UINT32),
    ("data", 5, BYTES),
    ("subs", 6, MESSAGE_MAP, SUBSCRIBE_RESULT),
    ("ping", 7, UINT32),
    ("pong", 8, BOOL),
    ("session", 9, STRING),
    ("node", 10, STRING),
    ("time", 11, INT64),
    ("flag", 12, INT64),
)
NO_FIELDS = _schema("UnsubscribeResult/PublishResult/PingResult")
PRESENCE_RESULT = _schema("PresenceResult", ("presence", 1, MESSAGE_MAP, CLIENT_INFO))
PRESENCE_STATS_RESULT = _schema(
    "PresenceStatsResult", ("num_clients", 1, UINT32), ("num_users", 2, UINT32)
)
HISTORY_RESULT = _schema(
    "HistoryResult",
    ("publications", 1, REPEATED, PUBLICATION),
    ("epoch", 2, STRING),
    ("offset", 3, UINT64),
)
RPC_RESULT = _schema("RPCResult", ("data", 1, BYTES))
REFRESH_RESULT = _schema(
    "RefreshResult",
    ("client", 1, STRING),
    ("version", 2, STRING),
    ("expires", 3, BOOL),
    ("ttl", 4, UINT32),
)
SUB_REFRESH_RESULT = _schema(
    "SubRefreshResult",
    ("expires", 1, BOOL),
    ("ttl", 2, UINT32),
    ("items", 3, REPEATED, PUBLICATION),
)
JOIN_LEAVE = _schema("Join/Leave", ("info", 1, MESSAGE, CLIENT_INFO))
UNSUBSCRIBE_PUSH = _schema("Unsubscribe", ("code", 2, UINT32), ("reason", 3, STRING))
MESSAGE_PUSH = _schema("Message", ("data", 1, BYTES))
SUBSCRIBE_PUSH = _schema(
    "Subscribe",
    ("recoverable", 1, BOOL),
    ("epoch", 4, STRING),
    ("offset", 5, UINT64),
    ("positioned", 6, BOOL),
    ("data", 7, BYTES),
)
CONNECT_PUSH = _schema(
    "Connect",
    ("client", 1, STRING),
    ("version", 2, STRING),
    ("data", 3, BYTES),
    ("subs", 4, MESSAGE_MAP, SUBSCRIBE_RESULT),
    ("expires", 5, BOOL),
    ("ttl", 6, UINT32),
    ("ping", 7, UINT32),
    ("pong", 8, BOOL),
    ("session", 9, STRING),
    ("node", 10, STRING),
    ("time", 11, INT64),
)
DISCONNECT_PUSH = _schema(
    "Disconnect", ("code", 1, UINT32), ("reason", 2, STRING), ("reconnect", 3, BOOL)
)
REFRESH_PUSH = _schema("Refresh", ("expires", 1, BOOL), ("ttl", 2, UINT32))

REPLY_RESULTS: Final[dict[str, tuple[int, Schema]]] = {
    "connect": (5, CONNECT_RESULT),
    "subscribe": (6, SUBSCRIBE_RESULT),
    "unsubscribe": (7, NO_FIELDS),
    "publish": (8, NO_FIELDS),
    "presence": (9, PRESENCE_RESULT),
    "presence_stats": (10, PRESENCE_STATS_RESULT),
    "history": (11, HISTORY_RESULT),
    "ping": (12, NO_FIELDS),
    "rpc": (13, RPC_RESULT),
    "refresh": (14, REFRESH_RESULT),
    "sub_refresh": (15, SUB_REFRESH_RESULT),
}
"""Reply field number and result message of each method (``Reply`` in client.proto)."""

PUSH_KINDS: Final[dict[str, tuple[int, Schema]]] = {
    "pub": (4, PUBLICATION),
    "join": (5, JOIN_LEAVE),
    "leave": (6, JOIN_LEAVE),
    "unsubscribe": (7, UNSUBSCRIBE_PUSH),
    "message": (8, MESSAGE_PUSH),
    "subscribe": (9, SUBSCRIBE_PUSH),
    "connect": (10, CONNECT_PUSH),
    "disconnect": (11, DISCONNECT_PUSH),
    "refresh": (12, REFRESH_PUSH),
}
"""Push field number and body message of each push kind (``Push`` in client.proto)."""

_PUSH_FIELDS = {
    kind: (varint(number << 3 | LEN), schema) for kind, (number, schema) in PUSH_KINDS.items()
}

# Client to server: each schema names the struct it decodes into. Fields a struct lacks
# are skipped like unknown ones. ``SubscribeRequest.tf``, the filter tree, is kept as its
# encoded bytes: its presence alone matters (a map subscribe with a filter is 107).
SUBSCRIBE_REQUEST = _schema(
    "SubscribeRequest",
    ("channel", 1, STRING),
    ("token", 2, STRING),
    ("recover", 3, BOOL),
    ("epoch", 6, STRING),
    ("offset", 7, UINT64),
    ("data", 8, BYTES),
    ("positioned", 9, BOOL),
    ("recoverable", 10, BOOL),
    ("join_leave", 11, BOOL),
    ("delta", 12, STRING),
    ("tf", 13, BYTES),
    ("flag", 14, INT64),
    ("type", 15, INT32),
    ("phase", 16, INT32),
    ("cursor", 17, STRING),
    ("limit", 18, INT32),
    ("asc", 19, BOOL),
    struct=SubscribeRequest,
)
CONNECT_REQUEST = _schema(
    "ConnectRequest",
    ("token", 1, STRING),
    ("data", 2, BYTES),
    ("subs", 3, MESSAGE_MAP, SUBSCRIBE_REQUEST),
    ("name", 4, STRING),
    ("version", 5, STRING),
    ("headers", 6, STRING_MAP),
    ("flag", 7, INT64),
    ("dict", 8, STRING),
    ("profile", 9, STRING),
    struct=ConnectRequest,
)
CHANNEL_REQUEST = _schema(
    "UnsubscribeRequest/PresenceRequest/PresenceStatsRequest",
    ("channel", 1, STRING),
    struct=ChannelRequest,
)
PUBLISH_REQUEST = _schema(
    "PublishRequest",
    ("channel", 1, STRING),
    ("data", 2, BYTES),
    ("type", 3, INT32),
    ("key", 4, STRING),
    ("removed", 5, BOOL),
    struct=PublishRequest,
)
STREAM_POSITION = _schema(
    "StreamPosition", ("offset", 1, UINT64), ("epoch", 2, STRING), struct=StreamPositionRequest
)
HISTORY_REQUEST = _schema(
    "HistoryRequest",
    ("channel", 1, STRING),
    ("limit", 7, INT32),
    ("since", 8, MESSAGE, STREAM_POSITION),
    ("reverse", 9, BOOL),
    struct=HistoryRequest,
)
SEND_REQUEST = _schema("SendRequest", ("data", 1, BYTES), struct=SendRequest)
RPC_REQUEST = _schema("RPCRequest", ("data", 1, BYTES), ("method", 2, STRING), struct=RPCRequest)
REFRESH_REQUEST = _schema("RefreshRequest", ("token", 1, STRING), struct=RefreshRequest)
SUB_REFRESH_REQUEST = _schema(
    "SubRefreshRequest",
    ("channel", 1, STRING),
    ("token", 2, STRING),
    ("type", 3, INT32),
    struct=SubRefreshRequest,
)
COMMAND = _schema(
    "Command",
    ("id", 1, UINT32),
    ("connect", 4, MESSAGE, CONNECT_REQUEST),
    ("subscribe", 5, MESSAGE, SUBSCRIBE_REQUEST),
    ("unsubscribe", 6, MESSAGE, CHANNEL_REQUEST),
    ("publish", 7, MESSAGE, PUBLISH_REQUEST),
    ("presence", 8, MESSAGE, CHANNEL_REQUEST),
    ("presence_stats", 9, MESSAGE, CHANNEL_REQUEST),
    ("history", 10, MESSAGE, HISTORY_REQUEST),
    ("ping", 11, EMPTY),
    ("send", 12, MESSAGE, SEND_REQUEST),
    ("rpc", 13, MESSAGE, RPC_REQUEST),
    ("refresh", 14, MESSAGE, REFRESH_REQUEST),
    ("sub_refresh", 15, MESSAGE, SUB_REFRESH_REQUEST),
    struct=Command,
)
EMULATION_REQUEST = _schema(
    "EmulationRequest", ("node", 1, STRING), ("session", 2, STRING), ("data", 3, BYTES)
)


# --------------------------------------------------------------------------- encoding


def _utf8(value: str) -> bytes:
    return value.encode()


def encode_message(schema: Schema, value: object) -> bytes:
    """Encode a struct as ``schema``; proto3 zero values (``""``, 0, False, empty) are left out."""
    encoder = schema.encoders.get(type(value))
    if encoder is None:
        encoder = schema.encoders[type(value)] = _compile_encoder(schema, type(value))
    return encoder(value)


# The statements that write one field of each kind: ``item`` holds the attribute's value,
# ``{key}`` names the field's encoded tag and ``{sub}`` the schema of its message.
_ADD_LENGTH_DELIMITED = "add(({key}, varint(len(item)), item))"
_ENCODE_STATEMENTS: dict[str, tuple[str, ...]] = {
    BYTES: ("if item:", " " + _ADD_LENGTH_DELIMITED),
    STRING: ("if item:", " item = item.encode()", " " + _ADD_LENGTH_DELIMITED),
    BOOL: ("if item:", " add(({key}, b'\\x01'))"),
    UINT32: ("if item:", " add(({key}, varint(item)))"),
    UINT64: ("if item:", " add(({key}, varint(item)))"),
    INT32: ("if item:", " add(({key}, varint(item)))"),
    INT64: ("if item:", " add(({key}, varint(item)))"),
    SINT64: ("if item:", " add(({key}, varint((item << 1) ^ (item >> 63))))"),
    MESSAGE: (
        "if item is not None:",
        " item = encode_message({sub}, item)",
        " " + _ADD_LENGTH_DELIMITED,
    ),
    REPEATED: (
        "for item in item or ():",
        " item = encode_message({sub}, item)",
        " " + _ADD_LENGTH_DELIMITED,
    ),
    STRING_MAP: (
        "for map_key, item in (item or {{}}).items():",
        " item = map_entry(map_key, item, {sub})",
        " " + _ADD_LENGTH_DELIMITED,
    ),
}
_ENCODE_STATEMENTS[MESSAGE_MAP] = _ENCODE_STATEMENTS[STRING_MAP]
_ENCODE_STATEMENTS[EMPTY] = ("if item is not None:", " add(({key}, b'\\x00'))")


def _compile_encoder(schema: Schema, struct_type: type) -> Callable[[Any], bytes]:
    """Write a straight-line encoder for one struct type, as ``dataclasses`` writes ``__init__``.

    A loop over the plan, dispatching on each field's kind, cost 2.7 us per
    publication push against 2.1 us for this, all else equal
    (``benchmarks/protobuf_codec.py``).
    """
    namespace: dict[str, Any] = {
        "varint": varint,
        "encode_message": encode_message,
        "map_entry": _map_entry,
    }
    lines = ["def encode(value):", " parts = []", " add = parts.extend"]
    for index, (name, kind, key, sub) in enumerate(schema.encode_plan(struct_type)):
        namespace[f"key{index}"], namespace[f"sub{index}"] = key, sub
        lines.append(f" item = value.{name}")
        for statement in _ENCODE_STATEMENTS[kind]:
            lines.append(" " + statement.format(key=f"key{index}", sub=f"sub{index}"))
    lines.append(" return b''.join(parts)")
    exec("\n".join(lines), namespace)
    encoder: Callable[[Any], bytes] = namespace["encode"]
    return encoder


def _map_entry(key: str, value: object, schema: Schema | None) -> bytes:
    """A map entry: key in field 1, value in field 2 (the value message is always written)."""
    encoded_key = _utf8(key)
    encoded_value = _utf8(value) if schema is None else encode_message(schema, value)  # type: ignore[arg-type]
    return (
        b"\x0a"
        + varint(len(encoded_key))
        + encoded_key
        + b"\x12"
        + varint(len(encoded_value))
        + encoded_value
    )


def _field(number: int, body: bytes) -> bytes:
    """A length-delimited field: its tag, the length, the bytes. Present even when empty."""
    return varint(number << 3 | LEN) + varint(len(body)) + body


def encode_reply(command_id: int, method: str, result: object) -> bytes:
    """A ``Reply`` answering command ``command_id`` with the result of ``method``.

    The result field is written even when the result is empty (``publish``,
    ``unsubscribe``): its presence is what the SDKs look for.
    """
    number, schema = REPLY_RESULTS[method]
    head = b"\x08" + varint(command_id) if command_id else b""
    return head + _field(number, encode_message(schema, result))


def encode_error_reply(command_id: int, error: Error) -> bytes:
    """A ``Reply`` carrying an ``Error`` (field 2) for command ``command_id``."""
    result = ErrorResult(error.code, error.message, error.temporary)
    head = b"\x08" + varint(command_id) if command_id else b""
    return head + _field(2, encode_message(ERROR, result))


EMPTY_REPLY: Final = b""
"""The server ping (and the client pong): an empty message, one zero byte once framed."""


def encode_push(channel: str, kind: str, body: object) -> bytes:
    """A bare ``Push`` of ``kind`` (``pub``, ``join``, ``unsubscribe``...) in ``channel``.

    Bidirectional transports send it inside a ``Reply`` (:func:`push_reply`).
    """
    tag, schema = _PUSH_FIELDS[kind]
    payload = encode_message(schema, body)
    if channel:
        encoded = _utf8(channel)
        return b"".join(
            (b"\x12", varint(len(encoded)), encoded, tag, varint(len(payload)), payload)
        )
    return b"".join((tag, varint(len(payload)), payload))


def push_reply(push: bytes) -> bytes:
    """Wrap an encoded ``Push`` as the ``Reply`` (field 4) a bidirectional client reads."""
    return b"\x22" + varint(len(push)) + push


def frame(messages: Sequence[bytes]) -> bytes:
    """Join encoded messages into one transport frame, each prefixed with its varint length."""
    if len(messages) == 1:
        message = messages[0]
        return varint(len(message)) + message
    parts: list[bytes] = []
    for message in messages:
        parts.append(varint(len(message)))
        parts.append(message)
    return b"".join(parts)


# --------------------------------------------------------------------------- shared pushes


def push_message(push: PreparedPush) -> bytes:
    """The ``Reply`` carrying a prepared push, encoded on first use and kept on the push.

    Every Protobuf subscriber of a batch, on any transport, shares these bytes:
    a publication costs one Protobuf encoding per node, however many Protobuf
    clients receive it (and one JSON encoding, if JSON clients do too).
    """
    return push.rendered(PROTOBUF_REPLY, _encode_prepared)


def delta_push_message(push: PreparedPush) -> bytes:
    """The ``Reply`` for a Protobuf subscriber that negotiated delta compression and holds
    ``push.base``: ``data`` the fossil delta itself (bytes, ``delta: true``) where one is
    worth sending, else the push whole. Protobuf needs no JSON-string form: ``data`` is
    bytes either way (as Centrifugo)."""
    return push.rendered(PROTOBUF_DELTA, _encode_prepared_delta)


def _encode_prepared(push: PreparedPush) -> bytes:
    return push_reply(encode_push(push.channel, push.kind, push.body))


def _encode_prepared_delta(push: PreparedPush) -> bytes:
    body = push.body
    delta = push.fossil_delta() if isinstance(body, DATA_BODIES) else None
    if delta is None or not isinstance(body, DATA_BODIES):
        return push_message(push)
    publication = msgspec.structs.replace(body, data=Raw(delta), delta=True)
    return push_reply(encode_push(push.channel, "pub", publication))


_json_value = msgspec.json.Decoder(Raw).decode
"""Checks that bytes hold one JSON value (msgspec steps over it without building it)."""


def client_payload(data: Raw) -> Raw | None:
    """A Protobuf client's publication ``data``, or ``None`` when it is not JSON text.

    ``data`` is bytes in Protobuf, and tidings keeps every channel payload a JSON
    value: its JSON clients, server API, ``/events``, ``/longpoll``, handlers and
    Redis engine all embed or parse it as JSON (docs/protocol.md, "Protobuf").
    So the bytes must be UTF-8 JSON, as the SDKs' own suites and examples send;
    they then reach every subscriber as they came, unless they hold a raw line
    break, which would split a JSON frame: then they are compacted, as the
    server API does. Costs ~0.2 us for 100 bytes, on publish only.
    """
    if data is NO_DATA or not len(data):
        return data
    text = bytes(data)
    try:
        text.decode()  # msgspec does not check the bytes inside strings
        _json_value(text)
    except (UnicodeDecodeError, *JSON_INPUT_ERRORS):
        return None
    if b"\n" in text or b"\r" in text:
        return Raw(compact_raw(text))
    return data


class ProtobufCodec:
    """The Protobuf encoding (docs/protocol.md, "Protobuf"): varint-length-prefixed
    ``Command`` messages in, ``Reply`` messages out."""

    __slots__ = ()

    name: Final = "protobuf"
    binary: Final = True
    empty: Final = EMPTY_REPLY

    def decode_commands(self, frame: bytes) -> list[Command]:
        return decode_commands(frame)

    def encode_reply(self, command_id: int, method: str, result: object) -> bytes:
        return encode_reply(command_id, method, result)

    def encode_error_reply(self, command_id: int, error: Error) -> bytes:
        return encode_error_reply(command_id, error)

    def encode_push(self, channel: str, kind: str, body: object, envelope: bool) -> bytes:
        push = encode_push(channel, kind, body)
        return push_reply(push) if envelope else push

    def push_document(self, push: PreparedPush, envelope: bool) -> bytes:
        if envelope:
            return push_message(push)
        return encode_push(push.channel, push.kind, push.body)

    def whole_for_delta(self, push: PreparedPush, envelope: bool) -> bytes:
        return self.push_document(push, envelope)

    def delta_for_delta(self, push: PreparedPush, envelope: bool) -> bytes:
        if envelope:
            return delta_push_message(push)
        return self.push_document(push, envelope)

    def recovered_for_delta(self, publication: Keyed) -> Keyed:
        return publication

    def client_payload(self, data: Raw) -> Raw | None:
        return client_payload(data)


PROTOBUF_CODEC: Final = ProtobufCodec()


# --------------------------------------------------------------------------- decoding


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _text(data: bytes, start: int, end: int) -> str:
    try:
        return data[start:end].decode()
    except UnicodeDecodeError:
        raise ProtocolViolation("string field is not valid UTF-8") from None


def _raw(data: bytes, start: int, end: int) -> Raw:
    return Raw(data[start:end]) if end > start else NO_DATA


def _decode_map_entry(data: bytes, pos: int, end: int, schema: Schema | None) -> tuple[str, object]:
    """A map entry's key (field 1) and value (field 2); absent ones take their zero value."""
    key = ""
    value_chunks: list[bytes] = []
    text_value = ""
    while pos < end:
        tag, pos = _read_varint(data, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == LEN and number in (1, 2):
            length, pos = _read_varint(data, pos, end)
            stop = pos + length
            if stop > end:
                raise ProtocolViolation("truncated field")
            if number == 1:
                key = _text(data, pos, stop)
            elif schema is None:
                text_value = _text(data, pos, stop)
            else:
                value_chunks.append(data[pos:stop])
            pos = stop
        else:
            if number == 0:
                raise ProtocolViolation("field number 0")
            pos = _skip(data, pos, end, wire_type)
    if schema is None:
        return key, text_value
    return key, _decode_struct(schema, b"".join(value_chunks))


def _decode_struct(schema: Schema, data: bytes) -> Any:
    """Decode one message into its schema's struct.

    A message field that occurs more than once is merged, as protobuf merges it:
    its occurrences are concatenated and decoded once.
    """
    plan = schema.decode_plan()
    values: dict[str, Any] = {}
    messages: dict[str, tuple[Schema | None, list[bytes]]] = {}
    pos, end = 0, len(data)
    while pos < end:
        tag = data[pos]
        if tag < 0x80:  # field numbers up to 15: one byte
            pos += 1
        else:
            tag, pos = _read_varint(data, pos, end)
        step = plan.get(tag)
        if step is None:
            if tag < 8:
                raise ProtocolViolation("field number 0")
            pos = _skip(data, pos, end, tag & 7)
            continue
        name, kind, sub = step
        if tag & 7 == VARINT:
            value, pos = _read_varint(data, pos, end)
            if kind == BOOL:
                values[name] = value != 0
            elif kind == UINT32:
                values[name] = value & 0xFFFFFFFF
            elif kind == UINT64:
                if value > _INT64_MAX:
                    raise ProtocolViolation(f"{name} out of range")
                values[name] = value
            elif kind == INT32:
                values[name] = _signed(value, 32)
            elif kind == INT64:
                values[name] = _signed(value, 64)
            else:  # SINT64
                values[name] = (value >> 1) ^ -(value & 1)
            continue
        if pos < end and data[pos] < 0x80:
            stop = pos + 1 + data[pos]
            pos += 1
        else:
            length, pos = _read_varint(data, pos, end)
            stop = pos + length
        if stop > end:
            raise ProtocolViolation("truncated field")
        if kind == STRING:
            values[name] = _text(data, pos, stop)
        elif kind == BYTES:
            values[name] = _raw(data, pos, stop)
        elif kind in (MESSAGE, EMPTY):
            messages.setdefault(name, (sub, []))[1].append(data[pos:stop])
        elif kind == REPEATED:
            assert sub is not None
            values.setdefault(name, []).append(_decode_struct(sub, data[pos:stop]))
        else:  # STRING_MAP, MESSAGE_MAP: a later entry for the same key wins
            map_key, map_value = _decode_map_entry(data, pos, stop, sub)
            values.setdefault(name, {})[map_key] = map_value
        pos = stop
    for name, (sub, chunks) in messages.items():
        body = b"".join(chunks)
        if sub is None:  # EMPTY: read for well-formedness, then {}
            _check_well_formed(body)
            values[name] = {}
        else:
            values[name] = _decode_struct(sub, body)
    assert schema.struct is not None
    return schema.struct(**values)


def _check_well_formed(data: bytes) -> None:
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _read_varint(data, pos, end)
        if tag >> 3 == 0:
            raise ProtocolViolation("field number 0")
        pos = _skip(data, pos, end, tag & 7)


def split_frame(data: bytes) -> Iterable[bytes]:
    """The varint-length-delimited messages of a frame, in order."""
    pos, end = 0, len(data)
    while pos < end:
        length, pos = _read_varint(data, pos, end)
        stop = pos + length
        if stop > end:
            raise ProtocolViolation("truncated message")
        yield data[pos:stop]
        pos = stop


def decode_commands(data: bytes) -> list[Command]:
    """Decode a frame of length-delimited ``Command`` messages, checking each one.

    Raises :class:`ProtocolViolation` for an empty frame, bytes that are not
    well-formed protobuf, a string field that is not UTF-8, an offset beyond
    2**63-1 (the JSON codec's bound), and the rules of :func:`command_method`.
    """
    if not data:
        raise ProtocolViolation("empty frame")
    commands = []
    for message in split_frame(data):
        command: Command = _decode_struct(COMMAND, message)
        command_method(command)
        commands.append(command)
    return commands


class EmulationRequest(Struct, frozen=True):
    """``POST /emulation`` with ``application/octet-stream``: commands for a stream session.

    ``data`` holds the length-delimited commands as bytes, unlike the JSON form
    where it is a JSON string.
    """

    node: str = ""
    session: str = ""
    data: Raw = NO_DATA


_EMULATION_REQUEST = Schema(EMULATION_REQUEST.name, EMULATION_REQUEST.fields, EmulationRequest)


def decode_emulation_request(body: bytes) -> EmulationRequest:
    """Decode the body of a Protobuf ``POST /emulation``; malformed -> ProtocolViolation."""
    request: EmulationRequest = _decode_struct(_EMULATION_REQUEST, body)
    return request
