"""The embedded engine: one process, everything in memory.

Publishing is synchronous under the hood: the offset is assigned, the stream
appended and the event handler called before ``publish`` returns, so a
single-node deployment pays no hop at all. Streams start a new epoch whenever
the process restarts, which is exactly the "history lost" signal clients need.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from tidings.brokers.base import (
    IDEMPOTENCY_WINDOW,
    BrokerEventHandler,
    HistoryOptions,
    new_epoch,
)
from tidings.protocol.messages import ClientInfo, Publication, StreamPosition

Clock = Callable[[], float]


@dataclass(slots=True)
class _Stream:
    epoch: str
    top: int = 0
    meta_expires_at: float = float("inf")
    items: deque[tuple[float, Publication]] = field(default_factory=deque)

    def drop_expired(self, now: float) -> None:
        items = self.items
        while items and items[0][0] <= now:
            items.popleft()


class MemoryBroker:
    """Broker and history reader for a single node (see :mod:`tidings.brokers.base`)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._handler: BrokerEventHandler | None = None
        self._streams: dict[str, _Stream] = {}
        self._idempotent: dict[tuple[str, str], tuple[float, StreamPosition | None]] = {}
        self._interest: dict[str, int] = {}
        self._publishes_since_sweep = 0

    def set_event_handler(self, handler: BrokerEventHandler) -> None:
        self._handler = handler

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._streams.clear()

    async def subscribe(self, channel: str) -> None:
        self._interest[channel] = self._interest.get(channel, 0) + 1

    async def unsubscribe(self, channel: str) -> None:
        count = self._interest.get(channel, 0) - 1
        if count > 0:
            self._interest[channel] = count
        else:
            self._interest.pop(channel, None)

    def _stream(self, channel: str, now: float, meta_ttl: float | None) -> _Stream:
        stream = self._streams.get(channel)
        if stream is None or stream.meta_expires_at <= now:
            stream = _Stream(new_epoch())
            self._streams[channel] = stream
        if meta_ttl is not None:
            stream.meta_expires_at = now + meta_ttl
        return stream

    async def publish(
        self,
        channel: str,
        publication: Publication,
        *,
        history: HistoryOptions | None = None,
        idempotency_key: str = "",
        delta: bool = False,
    ) -> StreamPosition | None:
        return self.publish_now(
            channel, publication, history=history, idempotency_key=idempotency_key, delta=delta
        )

    def publish_now(
        self,
        channel: str,
        publication: Publication,
        *,
        history: HistoryOptions | None = None,
        idempotency_key: str = "",
        delta: bool = False,
    ) -> StreamPosition | None:
        """``publish`` without the coroutine: the memory engine never waits."""
        now = self._clock()
        if idempotency_key:
            remembered = self._idempotent.get((channel, idempotency_key))
            if remembered is not None and remembered[0] > now:
                return remembered[1]
        position: StreamPosition | None = None
        if history is not None:
            stream = self._stream(channel, now, history.meta_ttl)
            stream.top += 1
            # A copy: the caller may publish the same object to another channel.
            publication = msgspec.structs.replace(publication, offset=stream.top)
            items = stream.items
            items.append((now + history.ttl, publication))
            while len(items) > history.size:
                items.popleft()
            stream.drop_expired(now)
            position = StreamPosition(stream.top, stream.epoch)
        if idempotency_key:
            self._idempotent[(channel, idempotency_key)] = (now + IDEMPOTENCY_WINDOW, position)
        self._publishes_since_sweep += 1
        if self._publishes_since_sweep >= 10_000:
            self._sweep(now)
        if self._handler is not None and channel in self._interest:
            self._handler.handle_publication(channel, publication, position, delta=delta)
        return position

    def _sweep(self, now: float) -> None:
        """Forget expired idempotency keys and streams whose metadata expired."""
        self._publishes_since_sweep = 0
        self._idempotent = {k: v for k, v in self._idempotent.items() if v[0] > now}
        self._streams = {k: s for k, s in self._streams.items() if s.meta_expires_at > now}

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None and channel in self._interest:
            self._handler.handle_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None and channel in self._interest:
            self._handler.handle_leave(channel, info)

    async def publish_control(self, message: bytes) -> None:
        if self._handler is not None:
            self._handler.handle_control(message)

    async def ping(self) -> None:
        """In the process: nothing to reach."""
        return None

    async def history(
        self,
        channel: str,
        *,
        limit: int = 0,
        since: StreamPosition | None = None,
        reverse: bool = False,
        meta_ttl: float | None = None,
    ) -> tuple[list[Publication], StreamPosition]:
        now = self._clock()
        stream = self._stream(channel, now, None)
        if meta_ttl is not None and stream.meta_expires_at == float("inf"):
            stream.meta_expires_at = now + meta_ttl
        stream.drop_expired(now)
        position = StreamPosition(stream.top, stream.epoch)
        if limit == 0 and since is None:
            return [], position
        publications = [publication for _, publication in stream.items]
        if since is not None:
            if reverse:
                publications = [p for p in publications if p.offset < since.offset]
            else:
                publications = [p for p in publications if p.offset > since.offset]
        if reverse:
            publications.reverse()
        if limit > 0:
            publications = publications[:limit]
        return publications, position

    async def remove_history(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.items.clear()


class MemoryPresence:
    """Presence for a single node, with the same expiry contract as a shared store."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._channels: dict[str, dict[str, tuple[ClientInfo, float]]] = {}

    async def add_presence(
        self, channel: str, client_id: str, info: ClientInfo, ttl: float
    ) -> None:
        self._channels.setdefault(channel, {})[client_id] = (info, self._clock() + ttl)

    async def add_presence_many(
        self, entries: Sequence[tuple[str, str, ClientInfo]], ttl: float
    ) -> None:
        expires_at = self._clock() + ttl
        for channel, client_id, info in entries:
            self._channels.setdefault(channel, {})[client_id] = (info, expires_at)

    async def remove_presence(self, channel: str, client_id: str) -> None:
        entries = self._channels.get(channel)
        if entries is not None:
            entries.pop(client_id, None)
            if not entries:
                del self._channels[channel]

    def _live(self, channel: str) -> dict[str, ClientInfo]:
        entries = self._channels.get(channel)
        if not entries:
            return {}
        now = self._clock()
        for client in [c for c, (_, expires_at) in entries.items() if expires_at <= now]:
            del entries[client]
        if not entries:
            del self._channels[channel]
        return {client: info for client, (info, _) in entries.items()}

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return self._live(channel)

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        entries = self._live(channel)
        return len(entries), len({info.user for info in entries.values()})

    async def close(self) -> None:
        self._channels.clear()
