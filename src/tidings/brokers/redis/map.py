"""The Redis map engine: keyed state, change stream and fan-out of map channels.

Contract: :class:`tidings.brokers.maps.MapBroker`. What this implementation
adds:

* **One Lua step per change.** ``publish`` and ``remove`` are each a single
  ``EVALSHA`` (``lua/map_publish.lua``, ``lua/map_remove.lua``): the script
  checks idempotency, version and key mode, takes the next offset, writes the
  state hash, appends to the channel's stream (``XADD``, exact ``MAXLEN``),
  moves the key's deadline and ``PUBLISH``es (``SPUBLISH`` on a cluster) the
  change, so offsets are unique, contiguous and announced in order, and no
  reader sees a state without the stream entry that explains it.
* **Cluster.** Every key of a channel is ``<prefix>:{<channel>}:m:<part>`` (the
  channel is the hash tag, :class:`~tidings.brokers.redis.keys.Keys`), and so
  is its pub/sub name: a script touches one slot only.
* **Key TTL.** Deadlines are data (a sorted set per channel), compared with the
  time the caller passes (or the Redis server's clock): every script first
  removes its channel's due keys, as removals in the stream and to every node.
  Channels nobody touches are visited by a cleanup task on every node, every
  ``cleanup_interval``: a writer registers its channel in one of
  :data:`EXPIRY_SHARDS` index sets (``<prefix>:{mapexp<n>}``) with the earliest
  deadline (``ZADD LT``), and the cleanup leases due channels, runs the
  channel's ``lua/map_expire.lua`` and keeps or drops the index entry by the
  deadline it returns. A writer that lowers the lease in between keeps the
  entry, so no deadline is lost between the two slots.
* **Epochs.** The epoch lives in the channel's meta hash with the top. A
  channel whose meta is gone (flushed, collected) or that sat idle past
  ``meta_ttl`` with no key left starts a new epoch at its next access and drops
  what the old one left.

Pub/sub messages on a channel's name: ``c<offset>,<epoch>,<entry JSON>`` (a
write or a removal), ``p<offset>,<epoch>,<n>,<previous entry JSON of n
bytes><entry JSON>`` (a write that asked for the previous value: delta), and
``x`` (cleared).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Callable
from typing import Any

import msgspec
from redis.asyncio.cluster import RedisCluster

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
from tidings.brokers.redis import scripts
from tidings.brokers.redis.address import parse_redis_url
from tidings.brokers.redis.connection import DEFAULT_TIMEOUT, Connector, bounded, close_client
from tidings.brokers.redis.interest import Interest
from tidings.brokers.redis.keys import Keys
from tidings.brokers.redis.pubsub import DEFAULT_PING_INTERVAL
from tidings.errors import BrokerUnavailable
from tidings.protocol.messages import ClientInfo, StreamPosition

__all__ = ["EXPIRY_SHARDS", "RedisMapBroker"]

logger = logging.getLogger("tidings.brokers.redis")

EXPIRY_SHARDS = 16
"""Index sets of channels with expiring keys, spread over a cluster's masters."""

EXPIRE_BATCH = 1000
"""Most expired keys one script call removes (the rest in the next call)."""

CLEANUP_BATCH = 100
"""Channels the cleanup visits per index set and pass."""

LEASE_SECONDS = 10 * 365 * 86400.0
"""How far ahead a cleanup pushes a channel's index score while it visits it: any
writer's deadline is earlier, so ``ZADD LT`` shows the cleanup that it wrote."""

_encode = msgspec.json.Encoder().encode
_decode_entry = msgspec.json.Decoder(MapEntry).decode

_MODES = {"ephemeral": "e", "recoverable": "r", "persistent": "p"}

Clock = Callable[[], float]
Args = list[str | bytes]


def _ms(seconds: float) -> str:
    return "0" if math.isinf(seconds) else scripts.milliseconds(seconds)


def _entry(value: bytes, offset: int) -> MapEntry:
    return msgspec.structs.replace(_decode_entry(value), offset=offset)


def _stored(value: bytes) -> MapEntry:
    """A state hash value, ``<offset>,<entry JSON>``."""
    head, _, body = value.partition(b",")
    return _entry(body, int(head))


class RedisMapBroker:
    """Map engine over Redis (see the module's docstring and :class:`MapBroker`).

    ``clock`` gives the time deadlines are measured against (default: the Redis
    server's, so nodes need not agree); ``cleanup_interval`` is how often this
    node visits channels with expiring keys (0: never, for tests that call
    :meth:`expire`); ``timeout`` bounds every call.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tidings",
        name: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        idempotency_window: float = IDEMPOTENCY_WINDOW,
        cleanup_interval: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        self._address = parse_redis_url(url)
        self._keys = Keys(prefix)
        self._prefix = prefix
        self._timeout = timeout
        self._window = _ms(idempotency_window)
        self._cleanup_interval = cleanup_interval
        self._clock = clock
        self._connector = Connector(
            self._address, timeout, f"{prefix}.{name}.maps" if name else f"{prefix}.maps"
        )
        self._cluster = self._address.kind == "cluster"
        self._publish_command = "SPUBLISH" if self._cluster else "PUBLISH"
        self._client = self._connector.command_client()
        self._handler: MapEventHandler | None = None
        self._interest = Interest(
            self._connector,
            self._client,
            timeout=timeout,
            ping_interval=ping_interval,
            on_message=self._dispatch,
            on_resubscribed=self._resubscribed,
        )
        self._cleanup: asyncio.Task[None] | None = None
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    def set_event_handler(self, handler: MapEventHandler) -> None:
        self._handler = handler

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if isinstance(self._client, RedisCluster):
            await bounded("cluster discovery", self._timeout, self._client.initialize())
        if self._cleanup_interval > 0:
            self._cleanup = asyncio.create_task(self._run_cleanup(), name="tidings-map-expiry")

    async def close(self) -> None:
        self._started = False
        task, self._cleanup = self._cleanup, None
        if task is not None:
            task.cancel()
            # A cancellation that lands inside the Redis client can be swallowed by it: the
            # loop also stops on _started, and the wait is bounded either way.
            await asyncio.wait({task}, timeout=self._timeout + self._cleanup_interval)
        await self._interest.close()
        await close_client(self._client)
        await self._connector.close()

    async def subscribe(self, channel: str) -> None:
        if not self._started:
            raise RuntimeError("RedisMapBroker.subscribe before start()")
        await self._interest.add(channel, self._pubsub_name(channel))

    async def unsubscribe(self, channel: str) -> None:
        await self._interest.discard(channel, self._pubsub_name(channel))

    # ------------------------------------------------------------------ keys and arguments

    def _pubsub_name(self, channel: str) -> bytes:
        return (self._keys.channel(channel) + ":m:pub").encode()

    def _channel_keys(self, channel: str) -> list[str]:
        base = self._keys.channel(channel) + ":m:"
        return [
            base + part
            for part in (
                "meta",
                "state",
                "keys",
                "exp",
                "stream",
                "vers",
                "tags",
                "idem",
                "idemx",
                "pub",
            )
        ]

    def _now_ms(self) -> int:
        return round(self._clock() * 1000) if self._clock is not None else 0

    def _wall_ms(self) -> int:
        return round((self._clock or time.time)() * 1000)

    def _common(self, retention: MapRetention | None) -> list[str | bytes]:
        """ARGV 1-8 of every map script (``None``: the retention the meta recorded)."""
        if retention is None:
            mode, key_ttl, size, stream_ttl, meta_ttl = "", "0", "0", "0", "0"
        else:
            mode = _MODES[retention.mode.value]
            key_ttl = _ms(retention.key_ttl)
            size = str(retention.stream_size)
            stream_ttl = _ms(retention.stream_ttl)
            meta_ttl = _ms(retention.meta_ttl)
        return [
            str(self._now_ms()),
            mode,
            key_ttl,
            size,
            stream_ttl,
            meta_ttl,
            new_epoch(),
            self._publish_command,
        ]

    def _index_key(self, channel: str) -> str:
        shard = zlib.crc32(channel.encode()) % EXPIRY_SHARDS
        return f"{self._prefix}:{{mapexp{shard}}}"

    async def _run(self, what: str, script: scripts.Script, channel: str, args: Args) -> Any:
        """Run a map script on ``channel``'s keys, bounded by the timeout."""
        keys = self._channel_keys(channel)
        return await bounded(what, self._timeout, script(self._client, keys, args))

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
        if not key:
            raise MapRequestError("a map key must not be empty")
        if version and not retention.mode.has_stream:
            raise MapRequestError("version needs a recoverable or persistent map")
        entry = _encode(MapEntry(key, data, tags=tags, info=info, time=self._wall_ms()))
        args: Args = [
            *self._common(retention),
            key,
            entry,
            _encode(tags) if tags is not None else b"",
            idempotency_key,
            self._window,
            key_mode.value,
            str(version),
            version_epoch,
            "1" if refresh_ttl_on_suppress else "0",
            "1" if delta else "0",
            str(EXPIRE_BATCH),
        ]
        call = self._run("map publish", scripts.MAP_PUBLISH, channel, args)
        if not retention.key_ttl:
            return _update_result(await call)
        # The expiry index, concurrently (one round trip's wait). It is a hint for idle
        # channels: every script on a channel removes its due keys anyway, so a failed
        # index write only delays an idle channel's expiry to its next access.
        index = self._register_deadline(channel, retention.key_ttl)
        outcomes: tuple[Any, ...] = await asyncio.gather(index, call, return_exceptions=True)
        noted, result = outcomes
        if isinstance(result, BaseException):
            raise result
        if isinstance(noted, BaseException):
            logger.warning("map expiry index not updated for %r: %s", channel, noted)
        return _update_result(result)

    async def _register_deadline(self, channel: str, ttl: float) -> None:
        command = ("ZADD", self._index_key(channel), "LT", self._index_score(ttl), channel)
        await bounded("map expiry index", self._timeout, self._client.execute_command(*command))

    def _index_score(self, ttl: float) -> str:
        return str(round(((self._clock or time.time)() + ttl) * 1000))

    async def remove(
        self,
        channel: str,
        key: str,
        *,
        retention: MapRetention,
        idempotency_key: str = "",
        tags: dict[str, str] | None = None,
    ) -> MapUpdateResult:
        args: Args = [
            *self._common(retention),
            key,
            idempotency_key,
            self._window,
            "1" if tags is not None else "0",
            _encode(tags) if tags is not None else b"",
            str(EXPIRE_BATCH),
        ]
        result = await self._run("map remove", scripts.MAP_REMOVE, channel, args)
        return _update_result(result)

    async def clear(self, channel: str) -> None:
        await self._run("map clear", scripts.MAP_CLEAR, channel, self._common(None))

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
        if key:
            what, start, size = "key", key, "0"
        elif limit == 0:
            what, start, size = "top", "", "0"
        else:
            what, start, size = "page", cursor, str(limit if limit > 0 else -1)
        args = [*self._common(retention), what, start, size, str(EXPIRE_BATCH)]
        result = await self._run("map state", scripts.MAP_READ_STATE, channel, args)
        top, epoch, flat, more = result
        position = StreamPosition(int(top), epoch.decode())
        if revision is not None and revision.epoch != position.epoch:
            raise UnrecoverablePosition(f"epoch {revision.epoch!r} is not {position.epoch!r}")
        entries = [_stored(flat[i + 1]) for i in range(0, len(flat), 2)]
        next_cursor = flat[-2].decode() if more and flat else ""
        if revision is not None and what == "page":
            entries = [entry for entry in entries if entry.offset <= revision.offset]
        return MapState(entries, position, next_cursor)

    async def read_stream(
        self,
        channel: str,
        *,
        retention: MapRetention,
        limit: int = 0,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> MapStream:
        command, start, end = "", "", ""
        if limit != 0:
            if since is None:
                command, start, end = ("XREVRANGE", "+", "-") if reverse else ("XRANGE", "-", "+")
            elif reverse:
                if since.offset > 1:
                    command, start, end = "XREVRANGE", f"({since.offset}-0", "-"
            else:
                command, start, end = "XRANGE", f"({since.offset}-0", "+"
        count = str(limit) if limit > 0 else "0"
        args = [*self._common(retention), command, start, end, count, str(EXPIRE_BATCH)]
        result = await self._run("map stream", scripts.MAP_READ_STREAM, channel, args)
        top_raw, epoch_raw, oldest_raw, raw_entries = result
        top, epoch, oldest = int(top_raw), epoch_raw.decode(), int(oldest_raw)
        if since is not None:
            if since.epoch and since.epoch != epoch:
                raise UnrecoverablePosition(f"epoch {since.epoch!r} is not {epoch!r}")
            if not reverse:
                if since.offset > top:
                    raise UnrecoverablePosition(f"offset {since.offset} is beyond {top}")
                first_kept = oldest or top + 1
                if since.offset < top and first_kept > since.offset + 1:
                    raise UnrecoverablePosition(
                        f"changes after {since.offset} are gone (the stream starts at {first_kept})"
                    )
        changes = [
            _entry(fields[1], int(entry_id.partition(b"-")[0])) for entry_id, fields in raw_entries
        ]
        return MapStream(changes, StreamPosition(top, epoch))

    async def stats(self, channel: str) -> int:
        args = [*self._common(None), str(EXPIRE_BATCH)]
        return int(await self._run("map stats", scripts.MAP_STATS, channel, args))

    # ------------------------------------------------------------------ expiry

    async def _run_cleanup(self) -> None:
        while self._started:
            await asyncio.sleep(self._cleanup_interval)
            if not self._started:
                return
            try:
                await self.expire()
            except BrokerUnavailable as exc:
                logger.warning("map key expiry: %s", exc)
            except Exception:
                logger.exception("map key expiry failed")

    async def expire(self) -> int:
        """Visit every channel whose earliest key deadline passed; returns how many.

        The background task calls this every ``cleanup_interval``; tests with a
        clock of their own call it directly.
        """
        now = (self._clock or time.time)()
        due_score = str(round(now * 1000))
        lease = str(round((now + LEASE_SECONDS) * 1000))
        visited = 0
        for shard in range(EXPIRY_SHARDS):
            index = f"{self._prefix}:{{mapexp{shard}}}"
            channels = await bounded(
                "map expiry index",
                self._timeout,
                self._client.execute_command(
                    "ZRANGEBYSCORE", index, "-inf", due_score, "LIMIT", "0", str(CLEANUP_BATCH)
                ),
            )
            for raw in channels:
                channel = raw.decode()
                await bounded(
                    "map expiry index",
                    self._timeout,
                    self._client.execute_command("ZADD", index, "XX", lease, channel),
                )
                args = [*self._common(None), str(EXPIRE_BATCH)]
                next_due = await self._run("map expiry", scripts.MAP_EXPIRE, channel, args)
                deadline = int(float(next_due))
                if deadline:  # keys left: come back at the earliest (unless a writer set earlier)
                    keep = ("ZADD", index, "XX", "LT", str(deadline), channel)
                    await bounded(
                        "map expiry index", self._timeout, self._client.execute_command(*keep)
                    )
                else:  # none left: leave the index, unless a writer registered meanwhile
                    release = scripts.MAP_INDEX_RELEASE(self._client, [index], [channel, lease])
                    await bounded("map expiry index", self._timeout, release)
                visited += 1
        return visited

    # ------------------------------------------------------------------ events

    def _dispatch(self, name: bytes, channel: str, data: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            kind = data[:1]
            if kind == b"x":
                handler.handle_map_cleared(channel)
                return
            head, epoch, rest = data[1:].split(b",", 2)
            offset = int(head)
            previous: bytes | None = None
            if kind == b"p":
                size, _, rest = rest.partition(b",")
                cut = int(size)
                previous = _decode_entry(rest[:cut]).data
                rest = rest[cut:]
            elif kind != b"c":
                logger.warning("redis map pub/sub: unknown message kind %r in %r", kind, channel)
                return
            change = _entry(rest, offset)
            handler.handle_map_change(
                channel, change, StreamPosition(offset, epoch.decode()), previous
            )
        except (ValueError, msgspec.DecodeError) as exc:
            logger.warning("redis map pub/sub: undecodable message in %r: %s", channel, exc)
        except Exception:
            logger.exception("redis map pub/sub: event handler failed for %r", channel)

    def _resubscribed(self, channels: list[str]) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            handler.handle_map_resubscribed(channels)
        except Exception:
            logger.exception("redis map pub/sub: handle_map_resubscribed failed")


def _update_result(result: Any) -> MapUpdateResult:
    top, epoch, reason = result
    position = StreamPosition(int(top), epoch.decode() if isinstance(epoch, bytes) else str(epoch))
    why = SuppressReason(reason.decode() if isinstance(reason, bytes) else str(reason))
    return MapUpdateResult(position, why is not SuppressReason.NONE, why)
