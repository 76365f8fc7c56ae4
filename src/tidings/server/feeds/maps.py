"""Map channels on ``/events`` and ``/longpoll``: a snapshot of the state, then the changes,
with the same one-cursor resume as streams (docs/transports.md, "Map channels").

For a plain-HTTP client a map channel is a stream of changes whose beginning is
a **snapshot**: the whole state at a position. A client that brings a cursor
entry for the channel gets the changes after it from the map's stream, when
they are all still kept; otherwise (no entry, another epoch, a trimmed stream,
an ephemeral map, which keeps no stream) it gets a snapshot again and continues
from its position. Shapes, written once per event and shared like any other::

    snapshot  {"channel":"m","epoch":"E","offset":41,
               "entries":[{"key":"a","data":{..},"offset":40},...]}
    change    {"channel":"m","offset":42,"key":"a","data":{..}}
    removal   {"channel":"m","offset":43,"key":"b","removed":true}

(``offset`` is left out in ephemeral maps). Changes render from the prepared
push's :class:`~tidings.protocol.maps.MapPublication`, never by decoding JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from msgspec import Raw, Struct

from tidings.brokers.maps import MapEntry
from tidings.errors import ErrorCode, ReplyError
from tidings.protocol.maps import MapPublication
from tidings.protocol.messages import NO_DATA, StreamPosition

if TYPE_CHECKING:
    from tidings.node import Node

_encode = msgspec.json.encode


class _SnapshotEntry(Struct, omit_defaults=True):
    key: str
    data: Raw = NO_DATA
    offset: int = 0


def change_json(channel_json: bytes, change: MapPublication) -> bytes:
    """One change or removal for plain-HTTP clients."""
    head = b'{"channel":%b' % channel_json
    if change.offset:
        head += b',"offset":%d' % change.offset
    head += b',"key":' + _encode(change.key)
    if change.removed:
        return head + b',"removed":true}'
    if len(change.data):
        return head + b',"data":' + bytes(change.data) + b"}"
    return head + b"}"


def entry_change_json(channel_json: bytes, entry: MapEntry) -> bytes:
    """:func:`change_json` of a change read from the engine's stream."""
    return change_json(
        channel_json,
        MapPublication(
            entry.key,
            Raw(entry.data) if entry.data else NO_DATA,
            entry.offset,
            entry.removed,
        ),
    )


def snapshot_json(channel_json: bytes, entries: list[MapEntry], position: StreamPosition) -> bytes:
    """The whole state of a channel at ``position``."""
    rendered = [
        _SnapshotEntry(e.key, Raw(e.data) if e.data else NO_DATA, e.offset) for e in entries
    ]
    return b'{"channel":%b,"epoch":%b,"offset":%d,"entries":%b}' % (
        channel_json,
        _encode(position.epoch),
        position.offset,
        _encode(rendered),
    )


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Where a plain client resumes a map channel: either ``changes`` after its cursor
    (``snapshot`` is ``None``), or a ``snapshot`` payload at ``position``."""

    position: StreamPosition | None
    changes: list[MapEntry]
    snapshot: bytes | None


async def catch_up(
    node: Node, channel: str, channel_json: bytes, since: StreamPosition | None
) -> CatchUp:
    """The changes after ``since`` if the stream still holds all of them (at most the
    namespace's ``live_transition_max_publication_limit``), else a snapshot.

    ``position`` is where the client stands afterwards; ``None`` for an ephemeral
    map, whose changes have no offsets to resume by.
    """
    _, options = node.maps.options(channel)
    if since is not None and options.has_stream:
        limit = options.live_limit
        try:
            stream = await node.maps.read_stream(channel, limit=limit + 1, since=since)
        except ReplyError as exc:
            if exc.error.code != ErrorCode.UNRECOVERABLE_POSITION.code:
                raise
        else:
            if len(stream.changes) <= limit:
                last = stream.changes[-1].offset if stream.changes else since.offset
                return CatchUp(StreamPosition(last, stream.position.epoch), stream.changes, None)
    state = await node.maps.read_state(channel, limit=-1)
    snapshot = snapshot_json(channel_json, state.entries, state.position)
    return CatchUp(state.position if options.has_stream else None, [], snapshot)
