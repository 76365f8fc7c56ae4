"""The node's map channels: their engine, what Python and the server API may do with
them, the encode-once of their changes, and map presence (docs/protocol.md section 14).

The :class:`~tidings.node.Node` owns one :class:`MapChannels` (``node.maps``)
and stays the one place engine callbacks land: its ``handle_map_*`` methods
hand each change here, where it is encoded once into a
:class:`~tidings.protocol.codec.PreparedPush` for the hub, exactly as a
stream publication is. The hub then keeps the channel's order by offset (in
the recoverable and persistent modes; ephemeral maps have no offsets).

Every operation resolves the channel first: 102 for an unknown namespace, 107
for a malformed name or a namespace that is not a map type, and engine
refusals become the protocol's codes (112 for a position the engine cannot
continue from, 107 for a request the mode forbids).

Map presence: a namespace with ``map_clients_presence_channel_prefix`` (or
``map_users_...``) keeps one entry per subscribed client (per user) in the
map channel ``<prefix><channel>``, written "if new" so a re-add sends nothing,
and kept alive by :meth:`MapChannels.refresh_presence` every
``presence_refresh_interval`` until the holder leaves. A client's entry is
removed when it leaves; a user's entry expires by ``key_ttl`` once the user's
last subscription on this node is gone, so a quick reconnect makes no noise.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import msgspec
from msgspec import Raw

from tidings.brokers.maps import (
    KeyMode,
    MapBroker,
    MapEntry,
    MapRequestError,
    MapRetention,
    MapState,
    MapStream,
    MapUpdateResult,
    UnrecoverablePosition,
)
from tidings.channels import ChannelOptions, ChannelRules
from tidings.errors import BrokerUnavailable, ErrorCode, ReplyError
from tidings.hub import Hub
from tidings.maps_config import MapOptions
from tidings.protocol.codec import compact_raw
from tidings.protocol.maps import MapPublication, prepare_map_publication
from tidings.protocol.messages import NO_DATA, ClientInfo, StreamPosition

log = logging.getLogger("tidings.maps")


def map_publication(entry: MapEntry) -> MapPublication:
    """An engine entry as the protocol's keyed publication (``data`` stays raw JSON)."""
    return MapPublication(
        key=entry.key,
        data=Raw(entry.data) if entry.data else NO_DATA,
        offset=entry.offset,
        removed=entry.removed,
        tags=entry.tags,
        info=entry.info,
    )


def payload(data: object) -> bytes:
    """JSON text for a value from Python: :class:`msgspec.Raw` is taken as it is
    (compacted onto one line), anything else is encoded; ``b""`` stays empty (no data)."""
    if isinstance(data, Raw):
        return compact_raw(bytes(data))
    if isinstance(data, bytes | bytearray | memoryview):
        return compact_raw(bytes(data)) if len(data) else b""
    return msgspec.json.encode(data)


@dataclass(slots=True)
class _PresenceEntry:
    """One key this node keeps alive in a presence channel, and who holds it."""

    info: ClientInfo | None
    holders: set[Hashable] = field(default_factory=set)


class MapChannels:
    """Map channel operations over one engine (:class:`~tidings.brokers.maps.MapBroker`)."""

    def __init__(
        self, rules: ChannelRules, hub: Hub, engine: MapBroker, *, refresh_interval: float
    ) -> None:
        self.rules = rules
        self.hub = hub
        self.engine = engine
        self.refresh_interval = refresh_interval
        self._presence: dict[tuple[str, str], _PresenceEntry] = {}
        self._retentions: dict[int, tuple[MapOptions, MapRetention]] = {}
        self._last_refresh = 0.0
        self._refreshing = False

    # ------------------------------------------------------------------ channels

    def options(self, channel: str) -> tuple[ChannelOptions, MapOptions]:
        """The namespace's options and its ``map`` table; 102/107 as for any channel, and
        107 when the namespace is not a map type."""
        options = self.rules.options(channel)
        if options.map is None or not options.is_map:
            raise ReplyError(ErrorCode.BAD_REQUEST)
        return options, options.map

    def retention(self, options: MapOptions) -> MapRetention:
        """``options.retention``, built once per namespace (it validates as it builds: about
        5 us, on every write and read otherwise)."""
        retention = self._retentions.get(id(options))
        if retention is None or retention[0] is not options:
            built = options.retention
            self._retentions[id(options)] = (options, built)
            return built
        return retention[1]

    def is_map(self, channel: str) -> bool:
        """Whether ``channel`` lives in a map namespace (a bad or unknown name is not)."""
        try:
            return self.rules.options(channel).is_map
        except ReplyError:
            return False

    # ------------------------------------------------------------------ writes

    async def publish(
        self,
        channel: str,
        key: str,
        data: bytes,
        *,
        tags: dict[str, str] | None = None,
        info: ClientInfo | None = None,
        idempotency_key: str = "",
        key_mode: KeyMode = KeyMode.REPLACE,
        version: int = 0,
        version_epoch: str = "",
        delta: bool | None = None,
        refresh_ttl_on_suppress: bool = False,
    ) -> MapUpdateResult:
        """Write ``key`` (107 for an empty key, or a ``version`` in ephemeral mode).

        ``delta`` asks for a fossil delta against the key's previous value for
        subscribers that negotiated one (``None``: the namespace's ``delta_publish``).
        """
        namespace, options = self.options(channel)
        try:  # the engines refuse an empty key (MapRequestError) themselves
            return await self.engine.publish(
                channel,
                key,
                data,
                retention=self.retention(options),
                tags=tags,
                info=info,
                idempotency_key=idempotency_key,
                key_mode=key_mode,
                version=version,
                version_epoch=version_epoch,
                refresh_ttl_on_suppress=refresh_ttl_on_suppress,
                delta=namespace.delta_publish if delta is None else delta,
            )
        except MapRequestError:
            raise ReplyError(ErrorCode.BAD_REQUEST) from None

    async def remove(
        self,
        channel: str,
        key: str,
        *,
        idempotency_key: str = "",
        tags: dict[str, str] | None = None,
    ) -> MapUpdateResult:
        """Remove ``key``; a missing key is a suppressed no-op (``key_not_found``)."""
        _, options = self.options(channel)
        if not key:
            raise ReplyError(ErrorCode.BAD_REQUEST)
        return await self.engine.remove(
            channel,
            key,
            retention=self.retention(options),
            idempotency_key=idempotency_key,
            tags=tags,
        )

    async def clear(self, channel: str) -> None:
        """Drop state and stream; the next access starts a new epoch."""
        self.options(channel)
        await self.engine.clear(channel)

    # ------------------------------------------------------------------ reads

    async def read_state(
        self,
        channel: str,
        *,
        limit: int = -1,
        cursor: str = "",
        key: str = "",
        revision: StreamPosition | None = None,
    ) -> MapState:
        """A page of state (the engine's ``read_state``); 112 when ``revision`` is stale."""
        _, options = self.options(channel)
        try:
            return await self.engine.read_state(
                channel,
                retention=self.retention(options),
                limit=limit,
                cursor=cursor,
                key=key,
                revision=revision,
            )
        except UnrecoverablePosition:
            raise ReplyError(ErrorCode.UNRECOVERABLE_POSITION) from None

    async def read_stream(
        self,
        channel: str,
        *,
        limit: int = -1,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> MapStream:
        """Changes after ``since`` (the engine's ``read_stream``); 112 when they are gone."""
        _, options = self.options(channel)
        try:
            return await self.engine.read_stream(
                channel,
                retention=self.retention(options),
                limit=limit,
                since=since,
                reverse=reverse,
            )
        except UnrecoverablePosition:
            raise ReplyError(ErrorCode.UNRECOVERABLE_POSITION) from None

    async def top(self, channel: str) -> StreamPosition:
        """The channel's position (a channel never written to starts an epoch)."""
        return (await self.read_stream(channel, limit=0)).position

    async def stats(self, channel: str) -> int:
        self.options(channel)
        return await self.engine.stats(channel)

    # ------------------------------------------------------------------ engine events

    def handle_change(
        self, channel: str, change: MapEntry, position: StreamPosition, previous: bytes | None
    ) -> None:
        """A change from the engine: encoded once, then queued for every local subscriber.

        ``previous`` (the key's value before a write that asked for delta) is the base
        of the one fossil delta every delta subscriber of this node shares.
        """
        push = prepare_map_publication(
            channel, map_publication(change), position.epoch, base=previous
        )
        self.hub.broadcast_publication(channel, push)

    # ------------------------------------------------------------------ map presence

    async def presence_join(
        self,
        source: ChannelOptions,
        channel: str,
        client_id: str,
        info: ClientInfo,
        holder: Hashable,
    ) -> None:
        """``holder`` (a session) subscribed to ``channel``: add its client (and user) entries."""
        prefix = source.map_clients_presence_channel_prefix
        if prefix:
            await self._hold(prefix + channel, client_id, info, holder)
        prefix = source.map_users_presence_channel_prefix
        if prefix and info.user:
            await self._hold(prefix + channel, info.user, None, holder)

    async def presence_leave(
        self, source: ChannelOptions, channel: str, client_id: str, user: str, holder: Hashable
    ) -> None:
        """``holder`` left ``channel``: its client entry goes now, its user entry expires
        once nobody on this node holds it any more."""
        prefix = source.map_clients_presence_channel_prefix
        if prefix:
            presence_channel = prefix + channel
            entry = self._presence.get((presence_channel, client_id))
            if entry is not None:
                entry.holders.discard(holder)
                if not entry.holders:
                    del self._presence[(presence_channel, client_id)]
                    await self.remove(presence_channel, client_id)
        prefix = source.map_users_presence_channel_prefix
        if prefix and user:
            entry = self._presence.get((prefix + channel, user))
            if entry is not None:
                entry.holders.discard(holder)
                if not entry.holders:
                    del self._presence[(prefix + channel, user)]

    async def _hold(
        self, channel: str, key: str, info: ClientInfo | None, holder: Hashable
    ) -> None:
        entry = self._presence.get((channel, key))
        if entry is None:
            entry = self._presence[(channel, key)] = _PresenceEntry(info)
        entry.holders.add(holder)  # registered first: a leave racing this write still removes
        await self._keep(channel, key, info)

    async def _keep(self, channel: str, key: str, info: ClientInfo | None) -> None:
        await self.publish(
            channel, key, b"", info=info, key_mode=KeyMode.IF_NEW, refresh_ttl_on_suppress=True
        )

    def presence_due(self, now: float) -> bool:
        """Whether a refresh of this node's presence entries should start now."""
        if (
            self._refreshing
            or not self._presence
            or now - self._last_refresh < self.refresh_interval
        ):
            return False
        self._last_refresh = now
        return True

    async def refresh_presence(self) -> None:
        """Extend the TTL of every entry this node holds (no stream entry, no push).

        An entry whose holders left meanwhile is skipped; a failure is logged and
        the next interval tries again (entries live ``key_ttl``, several intervals).
        """
        if self._refreshing:
            return
        self._refreshing = True
        try:
            entries = [
                (channel, key, entry.info) for (channel, key), entry in self._presence.items()
            ]
            for channel, key, info in entries:
                if (channel, key) in self._presence:
                    await self._keep(channel, key, info)
        except (BrokerUnavailable, ReplyError) as exc:
            log.warning("map presence refresh failed, retrying next interval: %s", exc)
        finally:
            self._refreshing = False

    def held(self) -> Sequence[tuple[str, str]]:
        """The ``(presence channel, key)`` entries this node keeps alive (for tests and info)."""
        return list(self._presence)
