"""The embedded map engine: one process, everything in memory.

Every call does its work synchronously (no ``await`` inside), so each write is
atomic with respect to the event loop: state, stream and event handler are
updated before ``publish`` returns, and events for a channel leave in offset
order. Maps start a new epoch whenever the process restarts, which is exactly
the "state lost" signal clients need, also in persistent mode.

Key expiry runs on every call that finds a key due (so reads never show an
expired key) and once per ``cleanup_interval`` in a background task started by
``start``, so idle channels lose their expired keys too. The clock is
injectable; it is wall-clock time because entries carry their Unix time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tidings.brokers.base import IDEMPOTENCY_WINDOW, new_epoch
from tidings.brokers.maps import (
    KeyMode,
    MapEntry,
    MapEventHandler,
    MapRequestError,
    MapRetention,
    MapState,
    MapStream,
    MapUpdateResult,
    SuppressReason,
    UnrecoverablePosition,
)
from tidings.protocol.messages import ClientInfo, StreamPosition

Clock = Callable[[], float]

CHANNEL_SWEEP_INTERVAL = 10.0
"""Seconds between sweeps for channels whose metadata expired (nobody touches them)."""


@dataclass(slots=True)
class _Slot:
    """A key's entry plus what the engine tracks about it (mutated in place on writes)."""

    entry: MapEntry
    expires_at: float
    version: int
    version_epoch: str


@dataclass(slots=True)
class _Channel:
    epoch: str
    retention: MapRetention
    top: int = 0
    state: dict[str, _Slot] = field(default_factory=dict)
    sorted_keys: list[str] | None = None
    """Keys in order for paging; ``None`` after the key set changed."""
    stream: deque[MapEntry] = field(default_factory=deque)
    stream_expires_at: float = math.inf
    meta_expires_at: float = math.inf
    idempotent: dict[str, tuple[float, StreamPosition]] = field(default_factory=dict)

    def position(self) -> StreamPosition:
        return StreamPosition(self.top, self.epoch)

    def keys_in_order(self) -> list[str]:
        if self.sorted_keys is None:
            self.sorted_keys = sorted(self.state)
        return self.sorted_keys


class MemoryMapBroker:
    """Map engine for a single node (contract: :class:`tidings.brokers.maps.MapBroker`)."""

    def __init__(self, clock: Clock = time.time, *, cleanup_interval: float = 1.0) -> None:
        self._clock = clock
        self._cleanup_interval = cleanup_interval
        self._handler: MapEventHandler | None = None
        self._channels: dict[str, _Channel] = {}
        self._interest: dict[str, int] = {}
        # (deadline, tie-breaker, channel, key, slot): at most one item per slot;
        # a slot whose TTL was extended is pushed again when its old deadline pops.
        self._deadlines: list[tuple[float, int, str, str, _Slot]] = []
        self._sequence = itertools.count()
        self._next_channel_sweep = -math.inf
        self._cleanup: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def set_event_handler(self, handler: MapEventHandler) -> None:
        self._handler = handler

    async def start(self) -> None:
        if self._cleanup is None and self._cleanup_interval > 0:
            self._cleanup = asyncio.create_task(self._run_cleanup(), name="map-expiry")

    async def close(self) -> None:
        task, self._cleanup = self._cleanup, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._channels.clear()
        self._deadlines.clear()

    async def _run_cleanup(self) -> None:
        while True:
            await asyncio.sleep(self._cleanup_interval)
            self.expire()

    async def subscribe(self, channel: str) -> None:
        self._interest[channel] = self._interest.get(channel, 0) + 1

    async def unsubscribe(self, channel: str) -> None:
        count = self._interest.get(channel, 0) - 1
        if count > 0:
            self._interest[channel] = count
        else:
            self._interest.pop(channel, None)

    # ------------------------------------------------------------------ expiry

    def expire(self) -> int:
        """Remove every key whose TTL passed (as ``remove`` does); returns how many.

        Also forgets channels whose metadata expired, at most every
        :data:`CHANNEL_SWEEP_INTERVAL` seconds. The background task calls this;
        tests with a fake clock call it directly.
        """
        now = self._clock()
        removed = self._expire_keys(now)
        if now >= self._next_channel_sweep:
            self._next_channel_sweep = now + CHANNEL_SWEEP_INTERVAL
            for name in [n for n, c in self._channels.items() if self._forgettable(c, now)]:
                del self._channels[name]
        return removed

    def _expire_keys(self, now: float) -> int:
        deadlines = self._deadlines
        removed = 0
        while deadlines and deadlines[0][0] <= now:
            _, _, name, key, slot = heapq.heappop(deadlines)
            channel = self._channels.get(name)
            if channel is None or channel.state.get(key) is not slot:
                continue  # removed, rewritten as a new key, or the channel was cleared
            if slot.expires_at > now:
                self._schedule(name, key, slot)  # extended since it was queued
                continue
            del channel.state[key]
            channel.sorted_keys = None
            self._append_removal(name, channel, key, slot.entry.tags, now)
            removed += 1
        return removed

    def _schedule(self, name: str, key: str, slot: _Slot) -> None:
        heapq.heappush(self._deadlines, (slot.expires_at, next(self._sequence), name, key, slot))

    @staticmethod
    def _forgettable(channel: _Channel, now: float) -> bool:
        return channel.meta_expires_at <= now and not channel.state

    # ------------------------------------------------------------------ channel access

    def _access(self, name: str, retention: MapRetention, now: float) -> _Channel:
        """The channel, created with a new epoch if unknown or forgotten; extends its
        metadata lifetime and drops a stream that outlived ``stream_ttl``."""
        if self._deadlines and self._deadlines[0][0] <= now:
            self._expire_keys(now)
        channel = self._channels.get(name)
        if channel is not None and self._forgettable(channel, now):
            channel = None
        if channel is None:
            channel = self._channels[name] = _Channel(new_epoch(), retention)
        channel.retention = retention
        channel.meta_expires_at = now + retention.meta_ttl
        if channel.stream and channel.stream_expires_at <= now:
            channel.stream.clear()
        return channel

    def _deliver(
        self, name: str, change: MapEntry, position: StreamPosition, previous: bytes | None
    ) -> None:
        if self._handler is not None and name in self._interest:
            self._handler.handle_map_change(name, change, position, previous)

    def _append(self, channel: _Channel, entry: MapEntry, now: float) -> None:
        stream = channel.stream
        stream.append(entry)
        while len(stream) > channel.retention.stream_size:
            stream.popleft()
        channel.stream_expires_at = now + channel.retention.stream_ttl

    def _append_removal(
        self, name: str, channel: _Channel, key: str, tags: dict[str, str] | None, now: float
    ) -> StreamPosition:
        offset = 0
        if channel.retention.mode.has_stream:
            channel.top += 1
            offset = channel.top
        removal = MapEntry(key, offset=offset, removed=True, tags=tags, time=int(now * 1000))
        if offset:
            self._append(channel, removal, now)
        position = channel.position()
        self._deliver(name, removal, position, None)
        return position

    @staticmethod
    def _remembered(channel: _Channel, idempotency_key: str, now: float) -> MapUpdateResult | None:
        if not idempotency_key:
            return None
        remembered = channel.idempotent.get(idempotency_key)
        if remembered is None or remembered[0] <= now:
            return None
        return MapUpdateResult(remembered[1], True, SuppressReason.IDEMPOTENCY)

    @staticmethod
    def _remember(
        channel: _Channel, idempotency_key: str, position: StreamPosition, now: float
    ) -> None:
        if idempotency_key:
            idempotent = channel.idempotent
            if len(idempotent) >= 1000:
                for stale in [k for k, (until, _) in idempotent.items() if until <= now]:
                    del idempotent[stale]
            idempotent[idempotency_key] = (now + IDEMPOTENCY_WINDOW, position)

    # ------------------------------------------------------------------ writes

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
    ) -> MapUpdateResult:
        return self.publish_now(
            channel,
            key,
            data,
            retention=retention,
            tags=tags,
            info=info,
            idempotency_key=idempotency_key,
            key_mode=key_mode,
            version=version,
            version_epoch=version_epoch,
            refresh_ttl_on_suppress=refresh_ttl_on_suppress,
            delta=delta,
        )

    def publish_now(
        self,
        name: str,
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
    ) -> MapUpdateResult:
        """``publish`` without the coroutine: the memory engine never waits."""
        if not key:
            raise MapRequestError("a map key must not be empty")
        if version and not retention.mode.has_stream:
            raise MapRequestError("version needs a recoverable or persistent map")
        now = self._clock()
        channel = self._access(name, retention, now)
        remembered = self._remembered(channel, idempotency_key, now)
        if remembered is not None:
            return remembered
        slot = channel.state.get(key)
        if (
            version
            and slot is not None
            and (not version_epoch or version_epoch == slot.version_epoch)
            and version <= slot.version
        ):
            return MapUpdateResult(channel.position(), True, SuppressReason.VERSION)
        if key_mode is KeyMode.IF_NEW and slot is not None:
            if refresh_ttl_on_suppress and retention.key_ttl:
                slot.expires_at = now + retention.key_ttl
            return MapUpdateResult(channel.position(), True, SuppressReason.KEY_EXISTS)
        if key_mode is KeyMode.IF_EXISTS and slot is None:
            return MapUpdateResult(channel.position(), True, SuppressReason.KEY_NOT_FOUND)

        offset = 0
        if retention.mode.has_stream:
            channel.top += 1
            offset = channel.top
        entry = MapEntry(key, data, offset, tags=tags, info=info, time=int(now * 1000))
        if offset:
            self._append(channel, entry, now)
        expires_at = now + retention.key_ttl if retention.key_ttl else math.inf
        previous = None
        if slot is None:
            slot = channel.state[key] = _Slot(entry, expires_at, version, version_epoch)
            channel.sorted_keys = None
            if retention.key_ttl:
                self._schedule(name, key, slot)
        else:
            if delta:
                previous = slot.entry.data
            slot.entry = entry
            slot.expires_at = expires_at
            if version:  # a write without a version keeps the stored one
                slot.version, slot.version_epoch = version, version_epoch
        position = channel.position()
        self._remember(channel, idempotency_key, position, now)
        self._deliver(name, entry, position, previous)
        return MapUpdateResult(position)

    async def remove(
        self,
        channel: str,
        key: str,
        *,
        retention: MapRetention,
        idempotency_key: str = "",
        tags: dict[str, str] | None = None,
    ) -> MapUpdateResult:
        return self.remove_now(
            channel, key, retention=retention, idempotency_key=idempotency_key, tags=tags
        )

    def remove_now(
        self,
        name: str,
        key: str,
        *,
        retention: MapRetention,
        idempotency_key: str = "",
        tags: dict[str, str] | None = None,
    ) -> MapUpdateResult:
        """``remove`` without the coroutine."""
        now = self._clock()
        channel = self._access(name, retention, now)
        remembered = self._remembered(channel, idempotency_key, now)
        if remembered is not None:
            return remembered
        slot = channel.state.pop(key, None)
        if slot is None:
            return MapUpdateResult(channel.position(), True, SuppressReason.KEY_NOT_FOUND)
        channel.sorted_keys = None
        position = self._append_removal(
            name, channel, key, tags if tags is not None else slot.entry.tags, now
        )
        self._remember(channel, idempotency_key, position, now)
        return MapUpdateResult(position)

    async def clear(self, channel: str) -> None:
        existed = self._channels.pop(channel, None) is not None
        if existed and self._handler is not None and channel in self._interest:
            self._handler.handle_map_cleared(channel)

    # ------------------------------------------------------------------ reads

    async def read_state(
        self,
        channel: str,
        *,
        retention: MapRetention,
        limit: int = 0,
        cursor: str = "",
        key: str = "",
        revision: StreamPosition | None = None,
    ) -> MapState:
        state = self._access(channel, retention, self._clock())
        position = state.position()
        if revision is not None and revision.epoch != state.epoch:
            raise UnrecoverablePosition(f"epoch {revision.epoch!r} is not {state.epoch!r}")
        if key:
            slot = state.state.get(key)
            return MapState([slot.entry] if slot is not None else [], position)
        if limit == 0:
            return MapState([], position)
        keys = state.keys_in_order()
        start = bisect_right(keys, cursor) if cursor else 0
        end = len(keys) if limit < 0 else min(start + limit, len(keys))
        page = keys[start:end]
        entries = [state.state[k].entry for k in page]
        if revision is not None:
            entries = [entry for entry in entries if entry.offset <= revision.offset]
        return MapState(entries, position, page[-1] if end < len(keys) and page else "")

    async def read_stream(
        self,
        channel: str,
        *,
        retention: MapRetention,
        limit: int = 0,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> MapStream:
        state = self._access(channel, retention, self._clock())
        position = state.position()
        stream = state.stream
        if since is not None:
            if since.epoch and since.epoch != state.epoch:
                raise UnrecoverablePosition(f"epoch {since.epoch!r} is not {state.epoch!r}")
            if not reverse:
                if since.offset > state.top:
                    raise UnrecoverablePosition(f"offset {since.offset} is beyond {state.top}")
                first_kept = stream[0].offset if stream else state.top + 1
                if since.offset < state.top and first_kept > since.offset + 1:
                    raise UnrecoverablePosition(
                        f"changes after {since.offset} are gone (the stream starts at {first_kept})"
                    )
        if limit == 0:
            return MapStream([], position)
        first = stream[0].offset if stream else 0
        if since is None:
            changes = list(reversed(stream)) if reverse else list(stream)
        elif reverse:
            end = max(0, min(len(stream), since.offset - first))
            changes = [stream[i] for i in range(end - 1, -1, -1)]
        else:
            start = max(0, since.offset + 1 - first)
            changes = list(itertools.islice(stream, start, None))
        if limit > 0:
            changes = changes[:limit]
        return MapStream(changes, position)

    async def stats(self, channel: str) -> int:
        now = self._clock()
        if self._deadlines and self._deadlines[0][0] <= now:
            self._expire_keys(now)
        state = self._channels.get(channel)
        return len(state.state) if state is not None else 0
