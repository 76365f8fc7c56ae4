"""The contract of a map engine: keyed live state with a change stream.

A *map channel* holds a **state**, entries keyed by a non-empty string, each
with opaque ``data`` (raw JSON on the JSON protocol), optional ``tags`` and
``info``, and the ``offset`` of the change that last wrote it. Depending on
its :class:`MapMode`, every change (a write, a removal, a TTL expiry) is also
appended to the channel's **stream**, whose offsets run 1, 2, 3... within an
**epoch**: a random string naming one generation of state and stream. The
newest ``(offset, epoch)`` is the channel's **top**.

Subscribers read the state in pages, catch up from the stream, then receive
live changes (the STATE, STREAM and LIVE phases of a map subscribe). Three
things make that exact:

* **One atomic step per change.** Updating the state, appending to the stream
  and handing the change to every node interested in the channel happen
  together (one Lua script on Redis), so a reader never sees a state without
  the stream entry that explains it, and no node sees offset 8 before 7.
* **Paging with a frozen top.** The first state page returns the top; later
  pages pass it back as ``revision`` and leave out entries written after it.
  Those changes (and removals) are all in the stream after the frozen offset,
  so state pages + stream = the state at the moment the stream is caught up.
* **Epochs.** A reset (``clear``, the engine losing its data, metadata
  expiring) starts a new epoch. Offsets mean nothing across epochs: a reader
  holding a position from another epoch gets :class:`UnrecoverablePosition`
  (error 112) and starts over from the state.

Like :class:`tidings.brokers.base.Broker`, a map engine never delivers to
clients: it calls its :class:`MapEventHandler` (the Node), which hands changes
to the local hub. Map engines are a separate interface from ``Broker`` so a
deployment can keep streams in one engine and maps in another, and one
conformance suite (``tests/brokers/test_map_conformance.py``) runs against
each implementation.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from msgspec import Struct

from tidings.errors import TidingsError
from tidings.protocol.messages import ClientInfo, StreamPosition

DEFAULT_STREAM_SIZE = 100
DEFAULT_STREAM_TTL = 60.0
META_TTL_PER_STREAM_TTL = 10
"""Recoverable mode keeps the top for ten stream lifetimes unless told otherwise."""


class MapMode(enum.StrEnum):
    """How a map channel keeps its changes (namespace option ``map.mode``).

    ======================  ==========  ========  ===============================
    mode                    key TTL     stream    a reconnecting client
    ======================  ==========  ========  ===============================
    ``ephemeral``           required    none      loads the whole state again
    ``recoverable``         required    yes       catches up from the stream
    ``persistent``          forbidden   yes       catches up from the stream
    ======================  ==========  ========  ===============================
    """

    EPHEMERAL = "ephemeral"
    RECOVERABLE = "recoverable"
    PERSISTENT = "persistent"

    @property
    def has_stream(self) -> bool:
        return self is not MapMode.EPHEMERAL

    @property
    def has_key_ttl(self) -> bool:
        return self is not MapMode.PERSISTENT


class KeyMode(enum.StrEnum):
    """A condition on the key's existence for a write (``map_publish`` ``key_mode``)."""

    REPLACE = ""
    """Always write."""
    IF_NEW = "if_new"
    """Write only if the key is absent (claim a slot, take a lock)."""
    IF_EXISTS = "if_exists"
    """Write only if the key is present (heartbeats, updates only)."""


class SuppressReason(enum.StrEnum):
    """Why a write or removal changed nothing (``map_publish`` ``suppress_reason``)."""

    NONE = ""
    IDEMPOTENCY = "idempotency"
    VERSION = "version"
    KEY_EXISTS = "key_exists"
    KEY_NOT_FOUND = "key_not_found"


class UnrecoverablePosition(TidingsError):
    """A position the engine cannot continue from (error 112).

    Its epoch is not the channel's, it lies beyond the top, or changes after it
    are no longer kept (trimmed by ``stream_size``, expired by ``stream_ttl``).
    The client must start again from the state.
    """


class MapRequestError(TidingsError):
    """A request the channel's mode does not allow (error 107), such as a
    ``version`` on an ephemeral map."""


@dataclass(frozen=True, slots=True)
class MapRetention:
    """How a map channel keeps its state, stream and metadata; every call takes it.

    Build it with :meth:`of`, which applies the defaults and the rules of
    Centrifugo's ``map`` namespace options (:mod:`tidings.maps_config`):

    * ``key_ttl`` (seconds): each write extends its key's lifetime to this; an
      expired key is removed like ``remove`` does (a removal in the stream and
      to subscribers). Required in ephemeral and recoverable mode, 0
      (forbidden) in persistent mode.
    * ``stream_size`` changes kept at most, and ``stream_ttl``: how long the
      stream outlives the channel's last write (then it is emptied, the top
      stays). Stream modes only; defaults 100 and 60 s.
    * ``meta_ttl``: how long the top and epoch outlive the last access; then
      the channel is forgotten and its next access starts a new epoch.
      ``math.inf`` = never (persistent mode's default). Recoverable mode:
      10 x ``stream_ttl`` and at least ``key_ttl``. Ephemeral mode keeps no
      position worth preserving: a channel is forgotten once it has had no
      key for ``key_ttl``.
    """

    mode: MapMode
    key_ttl: float = 0.0
    stream_size: int = 0
    stream_ttl: float = 0.0
    meta_ttl: float = math.inf

    @classmethod
    def of(
        cls,
        mode: MapMode | str,
        *,
        key_ttl: float = 0.0,
        stream_size: int = 0,
        stream_ttl: float = 0.0,
        meta_ttl: float = 0.0,
    ) -> MapRetention:
        """Options with defaults applied; ``ValueError`` names the rule a value breaks.

        0 means "not set" for every number, as in a configuration file.
        """
        try:
            mode = MapMode(mode)
        except ValueError:
            choices = ", ".join(m.value for m in MapMode)
            raise ValueError(f"mode: expected one of {choices}, got {mode!r}") from None
        for name, value in (
            ("key_ttl", key_ttl),
            ("stream_size", stream_size),
            ("stream_ttl", stream_ttl),
            ("meta_ttl", meta_ttl),
        ):
            if value < 0:
                raise ValueError(f"{name}: must be >= 0, got {value!r}")
        if mode.has_key_ttl and not key_ttl:
            raise ValueError(f"key_ttl: required in {mode} mode")
        if not mode.has_key_ttl and key_ttl:
            raise ValueError("key_ttl: must be 0 in persistent mode (entries never expire)")
        if not mode.has_stream:
            for name, value in (
                ("stream_size", stream_size),
                ("stream_ttl", stream_ttl),
                ("meta_ttl", meta_ttl),
            ):
                if value:
                    raise ValueError(f"{name}: ephemeral mode keeps no stream")
            return cls(mode, key_ttl=key_ttl, stream_size=0, stream_ttl=0.0, meta_ttl=key_ttl)
        stream_size = stream_size or DEFAULT_STREAM_SIZE
        stream_ttl = stream_ttl or DEFAULT_STREAM_TTL
        if meta_ttl:
            if meta_ttl < stream_ttl:
                raise ValueError("meta_ttl: must be >= stream_ttl (the top outlives the stream)")
            if not key_ttl:
                raise ValueError("meta_ttl: must be 0 (never) when keys never expire")
            if meta_ttl < key_ttl:
                raise ValueError("meta_ttl: must be >= key_ttl (the top outlives the keys)")
        elif key_ttl:
            meta_ttl = max(stream_ttl * META_TTL_PER_STREAM_TTL, key_ttl)
        else:
            meta_ttl = math.inf
        return cls(mode, key_ttl, stream_size, stream_ttl, meta_ttl)


class MapEntry(Struct, frozen=True, omit_defaults=True):
    """One state entry, or one change in the stream (then ``removed`` may be set).

    ``offset`` is the stream offset of the change (0 in ephemeral mode); for a
    state entry, that of the change that last wrote it. ``time`` is the
    change's wall-clock time in Unix milliseconds. A removal has no ``data``
    and carries the removed entry's ``tags``. Entries are shared between the
    state, the stream and events: never modify one.
    """

    key: str
    data: bytes = b""
    offset: int = 0
    removed: bool = False
    tags: dict[str, str] | None = None
    info: ClientInfo | None = None
    time: int = 0


@dataclass(frozen=True, slots=True)
class MapUpdateResult:
    """What a ``publish`` or ``remove`` did.

    ``position`` is the top after the call. A suppressed call changed nothing
    (no stream entry, no event); ``suppress_reason`` says why. An idempotent
    repeat returns the first call's position.
    """

    position: StreamPosition
    suppressed: bool = False
    suppress_reason: SuppressReason = SuppressReason.NONE


@dataclass(frozen=True, slots=True)
class MapState:
    """A page of state: entries in key order, the top, and the next page's cursor."""

    entries: list[MapEntry]
    position: StreamPosition
    cursor: str = ""
    """Opaque; empty when this was the last page."""


@dataclass(frozen=True, slots=True)
class MapStream:
    """Changes read from the stream, and the top."""

    changes: list[MapEntry]
    position: StreamPosition


class MapEventHandler(Protocol):
    """What a map engine calls when changes arrive. Implemented by the Node.

    Calls for one channel arrive in offset order, on the event loop, only for
    channels this node subscribed to. Handlers must not block.
    """

    def handle_map_change(
        self,
        channel: str,
        change: MapEntry,
        position: StreamPosition,
        previous: bytes | None,
    ) -> None:
        """A write, removal or TTL expiry (``change.removed``) in ``channel``.

        ``position`` is the top after it: ``change.offset`` and the epoch in
        stream modes, offset 0 in ephemeral mode (no order to check).
        ``previous`` is the key's data before the write when the publish asked
        for ``delta`` and the key existed (the base of a fossil delta for
        subscribers that negotiated one), else ``None``.
        """

    def handle_map_cleared(self, channel: str) -> None:
        """``clear`` dropped the channel's state and stream.

        Subscribers hold entries that no longer exist and a position from a
        dead epoch. Centrifugo tells them nothing (they resync at their next
        reconnect); tidings hands the node this call so it can ask them to
        reload (for example unsubscribe code 2502, state invalidated).
        """

    def handle_map_resubscribed(self, channels: Sequence[str]) -> None:
        """The engine's pub/sub link came back: ``channels`` may have missed changes."""


@runtime_checkable
class MapBroker(Protocol):
    """Keyed state, change stream and fan-out of map channels, across nodes.

    Contract (every call takes the channel's :class:`MapRetention`):

    * ``publish`` writes ``key``: in stream modes it takes offset = top + 1,
      stores the entry with that offset, appends it to the stream (trimmed to
      ``stream_size``), extends the key's TTL and hands the change to every
      interested node, as one atomic step, and returns the new top. In
      ephemeral mode the entry has offset 0 and the top stays at 0.
    * A publish is **suppressed** (nothing stored, appended or sent) when its
      ``idempotency_key`` was seen for the channel in the last 5 minutes
      (``idempotency``), when ``version`` > 0 is not above the key's stored
      version in the same ``version_epoch`` (``version``; an empty epoch
      matches any), or when ``key_mode`` fails (``key_exists`` /
      ``key_not_found``); checked in that order. A suppressed ``if_new`` with
      ``refresh_ttl_on_suppress`` still extends the key's TTL (presence
      keep-alive without stream entries). A publish without a version keeps
      the key's stored version. ``version`` in ephemeral mode raises
      :class:`MapRequestError`.
    * ``remove`` deletes ``key`` the same way, appending a removal (no data,
      the entry's tags unless ``tags`` are given). A missing key is
      suppressed ``key_not_found``.
    * A key whose TTL passed is removed by the engine within about a second,
      as ``remove`` would: state, stream (stream modes) and event together.
      Until then reads still show it.
    * ``read_state`` returns entries in key order. ``limit`` -1 = all, 0 = no
      entries (only the top), N = a page of at most N (``cursor`` continues
      after the previous page; ""=done). ``key`` looks up one entry and
      ignores cursor and limit. With ``revision`` (the top a first page
      returned), a different epoch raises :class:`UnrecoverablePosition` and
      entries written after ``revision.offset`` are left out: they come
      through the stream.
    * ``read_stream`` returns changes in offset order (``reverse``: newest
      first) and the top. ``limit`` as above (0 still checks ``since``).
      ``since`` selects offsets above it (``reverse``: below it). Reading
      forward from ``since`` raises :class:`UnrecoverablePosition` when its
      epoch is set and differs, when it lies beyond the top, or when any
      change after it is no longer kept: a reader is never handed a stream
      with a hole in it.
    * Reading an unknown channel creates its epoch (offset 0), so the epoch a
      first state page returns is still the channel's when the stream is read.
    * ``clear`` forgets the channel (state, stream, top, idempotency results);
      the next access starts a new epoch. Interested nodes get
      ``handle_map_cleared``.
    * ``subscribe``/``unsubscribe`` state this node's interest, reference
      counted, as for :class:`tidings.brokers.base.Broker`.
    * A call that cannot reach the engine in time raises
      :class:`tidings.errors.BrokerUnavailable`.
    """

    def set_event_handler(self, handler: MapEventHandler) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(
        self,
        channel: str,
        key: str,
        data: bytes,
        *,
        retention: MapRetention,
        tags: dict[str, str] | None = None,
        info: ClientInfo | None = None,
        idempotency_key: str = "",
        key_mode: KeyMode = KeyMode.REPLACE,
        version: int = 0,
        version_epoch: str = "",
        refresh_ttl_on_suppress: bool = False,
        delta: bool = False,
    ) -> MapUpdateResult: ...

    async def remove(
        self,
        channel: str,
        key: str,
        *,
        retention: MapRetention,
        idempotency_key: str = "",
        tags: dict[str, str] | None = None,
    ) -> MapUpdateResult: ...

    async def read_state(
        self,
        channel: str,
        *,
        retention: MapRetention,
        limit: int = 0,
        cursor: str = "",
        key: str = "",
        revision: StreamPosition | None = None,
    ) -> MapState: ...

    async def read_stream(
        self,
        channel: str,
        *,
        retention: MapRetention,
        limit: int = 0,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> MapStream: ...

    async def stats(self, channel: str) -> int:
        """The number of keys in the channel's state."""
        ...

    async def clear(self, channel: str) -> None: ...
