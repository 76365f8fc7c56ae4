"""The server API's map methods (docs/protocol.md section 14): ``map_publish``,
``map_remove``, ``map_read_state``, ``map_read_stream``, ``map_stats``, ``map_clear``.

Shapes are Centrifugo's (``cent``-style HTTP: ``POST /api/map_publish`` with a
JSON body), so its clients carry over. Every method needs a channel in a map
namespace (``subscription_type`` ``map``, ``map_clients`` or ``map_users``,
else 107); an unknown namespace is 102; a position from another epoch 112.
Channel permissions do not apply: this is the backend speaking. ``score``,
``asc`` and ``stream_data`` are accepted and ignored, as by Centrifugo's open
source server.

:class:`~tidings.server.api.ServerApi` registers :data:`METHODS`; a refusal
raises :class:`MapApiRefusal`, whose ``detail`` names the field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from msgspec import Raw, Struct

from tidings.brokers.maps import KeyMode, MapEntry, MapUpdateResult
from tidings.errors import Error, ErrorCode, ReplyError
from tidings.node import Node
from tidings.protocol.codec import JSON_INPUT_ERRORS, compact_raw
from tidings.protocol.messages import NO_DATA, StreamPosition


class MapApiRefusal(ReplyError):
    """An API refusal with the field it is about (the API answers ``detail`` with it)."""

    def __init__(self, error: Error, detail: str) -> None:
        super().__init__(error)
        self.detail = detail


def _bad(detail: str) -> MapApiRefusal:
    return MapApiRefusal(ErrorCode.BAD_REQUEST, detail)


# --------------------------------------------------------------------------- requests


class MapPublishRequest(Struct):
    channel: str = ""
    key: str = ""
    data: Raw = NO_DATA
    b64data: str = ""
    tags: dict[str, str] | None = None
    idempotency_key: str = ""
    delta: bool = False
    version: int = 0
    version_epoch: str = ""
    key_mode: str = ""
    score: int = 0
    stream_data: Raw = NO_DATA
    b64stream_data: str = ""


class MapRemoveRequest(Struct):
    channel: str = ""
    key: str = ""
    idempotency_key: str = ""


class MapReadStateRequest(Struct):
    channel: str = ""
    cursor: str = ""
    limit: int = 0
    key: str = ""
    asc: bool = False
    revision_offset: int = 0
    revision_epoch: str = ""


class MapReadStreamRequest(Struct):
    channel: str = ""
    since_offset: int = 0
    since_epoch: str = ""
    limit: int = 0
    reverse: bool = False


class MapChannelRequest(Struct):
    channel: str = ""


class ApiMapEntry(Struct, omit_defaults=True):
    """MapEntry of the API: ``data`` raw JSON, ``time`` in Unix milliseconds."""

    key: str
    data: Raw = NO_DATA
    tags: dict[str, str] | None = None
    offset: int = 0
    removed: bool = False
    time: int = 0


def _entry(entry: MapEntry) -> ApiMapEntry:
    return ApiMapEntry(
        entry.key,
        Raw(entry.data) if entry.data else NO_DATA,
        entry.tags,
        entry.offset,
        entry.removed,
        entry.time,
    )


def _payload(data: Raw, b64data: str) -> bytes:
    if len(data):
        try:
            return compact_raw(bytes(data))
        except RecursionError:
            raise _bad("data: nested too deeply") from None
    if b64data:
        try:
            decoded = base64.b64decode(b64data, validate=True)
            msgspec.json.decode(decoded)
        except (binascii.Error, ValueError, *JSON_INPUT_ERRORS):
            raise _bad("b64data: expected base64 of a JSON document") from None
        return compact_raw(decoded)
    raise _bad("data: missing (send data, or b64data)")


def _require(request: Any, *names: str) -> None:
    for name in names:
        if not getattr(request, name):
            raise _bad(f"{name}: missing")


def _update(result: MapUpdateResult) -> dict[str, Any]:
    answer: dict[str, Any] = {}
    if result.position.offset:
        answer["offset"] = result.position.offset
    if result.position.epoch:
        answer["epoch"] = result.position.epoch
    if result.suppressed:
        answer["suppressed"] = True
        answer["suppress_reason"] = result.suppress_reason.value
    return answer


# --------------------------------------------------------------------------- methods


async def map_publish(node: Node, request: MapPublishRequest) -> dict[str, Any]:
    _require(request, "channel", "key")
    try:
        key_mode = KeyMode(request.key_mode)
    except ValueError:
        raise _bad(
            f'key_mode: expected "", "if_new" or "if_exists", got {request.key_mode[:32]!r}'
        ) from None
    if request.version < 0:
        raise _bad(f"version: expected a number >= 0, got {request.version}")
    result = await node.maps.publish(
        request.channel,
        request.key,
        _payload(request.data, request.b64data),
        tags=request.tags,
        idempotency_key=request.idempotency_key,
        key_mode=key_mode,
        version=request.version,
        version_epoch=request.version_epoch,
        # Centrifugo's flag: asks for a delta; without it, the namespace's delta_publish.
        delta=request.delta or None,
    )
    return _update(result)


async def map_remove(node: Node, request: MapRemoveRequest) -> dict[str, Any]:
    _require(request, "channel", "key")
    result = await node.maps.remove(
        request.channel, request.key, idempotency_key=request.idempotency_key
    )
    return _update(result)


async def map_read_state(node: Node, request: MapReadStateRequest) -> dict[str, Any]:
    _require(request, "channel")
    revision = None
    if request.revision_epoch:
        revision = StreamPosition(request.revision_offset, request.revision_epoch)
    state = await node.maps.read_state(
        request.channel,
        limit=request.limit if request.limit >= 0 else -1,
        cursor=request.cursor,
        key=request.key,
        revision=revision,
    )
    answer: dict[str, Any] = {
        "entries": [_entry(entry) for entry in state.entries],
        "offset": state.position.offset,
        "epoch": state.position.epoch,
    }
    if state.cursor:
        answer["cursor"] = state.cursor
    return answer


async def map_read_stream(node: Node, request: MapReadStreamRequest) -> dict[str, Any]:
    _require(request, "channel")
    since = None
    if request.since_offset or request.since_epoch:
        if request.since_offset < 0:
            raise _bad(f"since_offset: expected a number >= 0, got {request.since_offset}")
        since = StreamPosition(request.since_offset, request.since_epoch)
    stream = await node.maps.read_stream(
        request.channel,
        limit=request.limit if request.limit >= 0 else -1,
        since=since,
        reverse=request.reverse,
    )
    return {
        "entries": [_entry(change) for change in stream.changes],
        "offset": stream.position.offset,
        "epoch": stream.position.epoch,
    }


async def map_stats(node: Node, request: MapChannelRequest) -> dict[str, Any]:
    _require(request, "channel")
    return {"num_keys": await node.maps.stats(request.channel)}


async def map_clear(node: Node, request: MapChannelRequest) -> dict[str, Any]:
    _require(request, "channel")
    await node.maps.clear(request.channel)
    return {}


Handler = Callable[[Node, Any], Awaitable[dict[str, Any]]]

METHODS: dict[str, tuple[type[Struct], Handler]] = {
    "map_publish": (MapPublishRequest, map_publish),
    "map_remove": (MapRemoveRequest, map_remove),
    "map_read_state": (MapReadStateRequest, map_read_state),
    "map_read_stream": (MapReadStreamRequest, map_read_stream),
    "map_stats": (MapChannelRequest, map_stats),
    "map_clear": (MapChannelRequest, map_clear),
}
"""Method name -> (request struct, handler), registered by the server API."""
