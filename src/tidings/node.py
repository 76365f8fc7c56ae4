"""The Node: owns the hub, the engine (broker, history, presence), clients and timers.

Sessions and feeds ask the node for what they need (attach to a channel, read
a stream's position, add a presence entry...) and never reach into its parts.
It is the only place broker callbacks land. Nothing in tidings is module-level
state, so a test can run several nodes in one process.

The node knows its clients through the small :class:`Client` interface (what
the ping wheel, the registries and the server API's actions need), and the
hub's subscribers through :class:`tidings.hub.Subscriber`: it imports neither
sessions nor feeds.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from msgspec import Raw

from tidings.auth import ConnectToken, SubscriptionToken, TokenVerifier, UnknownKeyId
from tidings.brokers.base import Broker, HistoryReader, PresenceStore
from tidings.brokers.maps import KeyMode, MapBroker, MapEntry, MapState, MapStream, MapUpdateResult
from tidings.brokers.memory import MemoryBroker, MemoryPresence
from tidings.brokers.memory_map import MemoryMapBroker
from tidings.channels import ChannelOptions, ChannelRules
from tidings.clock import Clock, LoopClock, Timer
from tidings.config import Config
from tidings.conflation import Conflator
from tidings.control import (
    ChannelsReply,
    ChannelsSurvey,
    ClientAction,
    ControlMessage,
    DisconnectClients,
    EmulationCommands,
    NodeAnnouncement,
    NodeDeparture,
    RefreshClients,
    SubscribeClients,
    UnsubscribeClients,
    decode_control,
    encode_control,
)
from tidings.errors import (
    BrokerUnavailable,
    Disconnect,
    DisconnectCode,
    ErrorCode,
    ReplyError,
    Unsubscribe,
    UnsubscribeCode,
)
from tidings.hooks import ApplicationHooks, NoHooks
from tidings.hub import Hub, Subscriber
from tidings.jwks import JwksClient
from tidings.map_channels import MapChannels, payload
from tidings.metrics import Metrics, metrics_for
from tidings.protocol.codec import (
    JSON_INPUT_ERRORS,
    PreparedPush,
    compact_raw,
    prepare_join,
    prepare_leave,
    prepare_publication,
)
from tidings.protocol.messages import NO_DATA, ClientInfo, Publication, StreamPosition
from tidings.protocol.wire import WireFormat, Writer
from tidings.tracing import Tracing, tracing_for
from tidings.version import __version__

log = logging.getLogger("tidings.node")

NODE_INFO_INTERVAL = 5.0
"""Seconds between a node's announcements of itself to the others (API ``info``)."""

NODE_FORGET_AFTER = 60.0
"""A node silent this long (crashed without a goodbye) is dropped from the registry."""

ENGINE_CLOSE_TIMEOUT = 5.0
"""Longest wait for each engine (broker, map engine, presence) to close at shutdown."""

CHANNELS_SURVEY_TIMEOUT = 1.0
"""Longest wait for the other nodes' answers to an API ``channels`` call."""

PRESENCE_REFRESH_BATCH = 1000
"""Presence entries refreshed per store call: with Redis one round trip per batch
(``RedisPresence.add_presence_many``), where one call per entry cost a round trip each."""


class Client(Hashable, Protocol):
    """What the node needs of a client connection (a session implements it)."""

    client_id: str
    user: str
    session_id: str
    wire: WireFormat
    awaiting_pong: int
    """The tick of the ping the client has not answered (0: none)."""

    @property
    def closed(self) -> bool: ...

    @property
    def unidirectional(self) -> bool: ...

    @property
    def subscriptions(self) -> Mapping[str, object]: ...

    def ping(self, frame: bytes, *, tick: int = 0) -> None: ...

    def close(self, disconnect: Disconnect) -> None: ...

    def handle_frame(self, data: bytes) -> None: ...

    def unsubscribe(self, channel: str, reason: Unsubscribe | None) -> bool: ...

    async def server_subscribe(
        self, channel: str, *, info: bytes, data: bytes, since: StreamPosition | None
    ) -> None: ...

    def refresh_by_server(
        self, *, expire_at: int | None, expired: bool, info: bytes | None
    ) -> None: ...

    def map_cleared(self, channel: str) -> None:
        """The map channel was cleared (``map_clear``): reload its state (docs/protocol.md
        section 14)."""
        ...


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where a publication landed: ``offset`` 0 and ``epoch`` "" on channels without history."""

    offset: int = 0
    epoch: str = ""


class _Survey:
    """An API ``channels`` call waiting for the other nodes' counts."""

    __slots__ = ("done", "expected", "replies")

    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.replies: dict[str, dict[str, int]] = {}
        self.done = asyncio.Event()

    def answer(self, sender: str, counts: dict[str, int]) -> None:
        self.replies.setdefault(sender, counts)
        if self.expected <= self.replies.keys():
            self.done.set()


class Node:
    """One tidings server node. ``await start()``, serve clients, ``await shutdown()``."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        broker: Broker | None = None,
        presence: PresenceStore | None = None,
        map_broker: MapBroker | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config = config or Config()
        self.clock: Clock = clock or LoopClock()
        """Time for sessions' timers and TTLs: a test may drive it by hand."""
        self.id = str(uuid.uuid4())
        self.name = config.node_name or socket.gethostname()
        self.version = __version__
        self.started_at = time.time()
        self.rules = ChannelRules(
            config.channels, config.namespaces(), max_channel_length=config.channel_max_length
        )
        self.verifier = TokenVerifier(
            hmac_secret=config.token_hmac_secret,
            algorithms=config.token_algorithms,
            rsa_public_key=config.token_rsa_public_key,
            ecdsa_public_key=config.token_ecdsa_public_key,
            audience=config.token_audience,
            issuer=config.token_issuer,
            clock=self.clock.time,
        )
        self.jwks: JwksClient | None = None
        if config.token_jwks_url:
            self.jwks = JwksClient(
                config.token_jwks_url,
                self.verifier,
                refresh_interval=config.token_jwks_refresh_interval,
            )
        self.metrics: Metrics = metrics_for(config.metrics)
        """Prometheus meters (``metrics = true``); the base class counts nothing."""
        self.tracing: Tracing = tracing_for(config.opentelemetry)
        """OpenTelemetry spans (``opentelemetry = true``); the base class traces nothing."""
        if broker is None:
            broker, presence_default = _build_engine(config, self.id, self.metrics)
            presence = presence or presence_default
        self.broker: Broker = broker
        self.history: HistoryReader = broker  # a broker reads the streams it owns
        self.presence: PresenceStore = presence or MemoryPresence()
        self.hub = Hub(
            coalesce_delay=config.coalesce_delay, clock=self.clock, meter=self.metrics.fan_out
        )
        self.map_broker: MapBroker = map_broker or _build_map_engine(config, self.id, self.clock)
        self.maps = MapChannels(
            self.rules,
            self.hub,
            self.map_broker,
            refresh_interval=config.presence_refresh_interval,
        )
        """Map channels (docs/protocol.md section 14): their engine and operations."""
        self.hooks: ApplicationHooks = NoHooks()
        """The application's handlers (``Tidings`` sets them); by default there are none."""
        self.clients: dict[str, Client] = {}
        """Connected clients by client id."""
        self.users: dict[str, set[Client]] = {}
        self.emulation_sessions: dict[str, Client] = {}
        self.nodes: dict[str, tuple[float, dict[str, Any]]] = {}
        self._all_clients: set[Client] = set()
        self._presence_entries: dict[tuple[str, Client], ClientInfo] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._daemons: set[asyncio.Task[Any]] = set()
        self._ticker: Timer | None = None
        self._tick = 0
        self._tick_period = 1.0
        self._ping_buckets: list[set[Client]] = []
        self._pong_checks: deque[tuple[int, int, list[Client]]] = deque()
        self._ping_frames: dict[WireFormat, bytes] = {}
        self._last_presence_refresh = 0.0
        self._presence_refreshing = False
        self._surveys: dict[str, _Survey] = {}
        self._lingering: dict[str, Timer] = {}
        """Channels without local subscribers still subscribed in the broker, until the timer."""
        self._last_node_info = 0.0
        self._started = False
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.broker.set_event_handler(self)
        await self.broker.start()
        self.map_broker.set_event_handler(self)
        await self.map_broker.start()
        if self.jwks is not None:
            await self.jwks.refresh(force=True)
            self.spawn(self.jwks.run(), daemon=True)
        interval = self.config.ping_interval
        if interval > 0:
            self._tick_period = min(1.0, interval)
            buckets = max(1, round(interval / self._tick_period))
            self._ping_buckets = [set() for _ in range(buckets)]
        self._ticker = self.clock.call_later(self._tick_period, self._on_tick)
        self.spawn(self._announce_node())

    @property
    def closing(self) -> bool:
        return self._closing

    async def shutdown(self, disconnect: Disconnect = DisconnectCode.SHUTDOWN) -> None:
        """Disconnect every client (3001 by default: SDKs reconnect elsewhere), stop the engine."""
        if self._closing:
            return
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
        for lingering in self._lingering.values():
            lingering.cancel()
        self._lingering.clear()
        for client in list(self._all_clients):
            client.close(disconnect)
        self.hub.flush()
        self.spawn(self._announce_departure())
        for daemon in self._daemons:  # loops that never end on their own
            daemon.cancel()
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        for task in self._tasks:
            task.cancel()
        for engine in (self.broker, self.map_broker, self.presence):
            try:  # bounded: a stuck engine must not hold the shutdown
                await asyncio.wait_for(engine.close(), ENGINE_CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning(
                    "%s did not close within %s s", type(engine).__name__, ENGINE_CLOSE_TIMEOUT
                )
        self.metrics.sync()  # a worker's last second of counts, before its process ends

    def spawn(
        self, coroutine: Coroutine[Any, Any, Any], *, daemon: bool = False
    ) -> asyncio.Task[Any]:
        """Run a fire-and-forget coroutine that the node keeps a reference to (the task is
        returned for a caller that must wait for it before a later step).

        Shutdown lets ordinary tasks finish (bounded); a ``daemon`` (a loop that
        never ends) is cancelled at once.
        """
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        if daemon:
            self._daemons.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._daemons.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ tokens

    async def verify_connect_token(self, token: str) -> ConnectToken:
        """Verify a connection token; a ``kid`` the JWKS lacks refetches the set once.

        Raises :class:`tidings.auth.TokenError`; callers answer it with
        :func:`tidings.errors.token_refusal` for where the token was used.
        """
        try:
            return self.verifier.verify_connect_token(token)
        except UnknownKeyId:
            if self.jwks is None or not await self.jwks.refresh():
                raise
            return self.verifier.verify_connect_token(token)

    async def verify_subscription_token(self, token: str) -> SubscriptionToken:
        """Verify a subscription token (same JWKS rule as :meth:`verify_connect_token`)."""
        try:
            return self.verifier.verify_subscription_token(token)
        except UnknownKeyId:
            if self.jwks is None or not await self.jwks.refresh():
                raise
            return self.verifier.verify_subscription_token(token)

    # ------------------------------------------------------------------ clients

    def track(self, client: Client) -> None:
        """A transport opened a client (not yet connected): shutdown will close it."""
        self._all_clients.add(client)

    def connections_of(self, user: str) -> int:
        return len(self.users.get(user, ()))

    def register(self, client: Client) -> None:
        """A client finished ``connect``: index it by client id and user, and ping it."""
        self.clients[client.client_id] = client
        self.users.setdefault(client.user, set()).add(client)
        self.metrics.connected(client.wire)
        if self._ping_buckets:
            self._ping_buckets[self._tick % len(self._ping_buckets)].add(client)

    def register_emulation(self, client: Client) -> None:
        """Index a client by its session id, for ``POST /emulation`` (docs/protocol.md
        section 8)."""
        self.emulation_sessions[client.session_id] = client

    def unregister_emulation(self, client: Client) -> None:
        if self.emulation_sessions.get(client.session_id) is client:
            del self.emulation_sessions[client.session_id]

    def untrack(self, client: Client) -> None:
        """The client is closed: forget it everywhere."""
        self._all_clients.discard(client)
        if self.clients.get(client.client_id) is client:
            del self.clients[client.client_id]
            self.metrics.disconnected(client.wire)
        clients = self.users.get(client.user)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del self.users[client.user]
        for bucket in self._ping_buckets:
            bucket.discard(client)

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    # ------------------------------------------------------------------ channel membership

    async def attach(self, channel: str, subscriber: Subscriber) -> None:
        """Start a subscription on this node: pushes for ``channel`` are buffered for
        ``subscriber`` until :meth:`go_live`; the broker is told of the node's interest."""
        if self.hub.begin_subscribe(channel, subscriber):
            lingering = self._lingering.pop(channel, None)
            if lingering is not None:  # still subscribed in the broker: keep that interest
                lingering.cancel()
                return
            try:
                await self._carrier(channel).subscribe(channel)
            except BaseException:
                self.detach(channel, subscriber)
                raise

    def go_live(
        self,
        channel: str,
        subscriber: Subscriber,
        *,
        join_leave: bool,
        positioned: bool,
        position: StreamPosition | None,
        delta: bool = False,
        keyed: bool = False,
        conflator: Conflator[PreparedPush] | None = None,
    ) -> None:
        """The subscribe's answer is out: replay what was buffered, deliver live from now.

        ``position`` is where the answer left the subscriber; ``delta``, ``keyed``
        and ``conflator`` say how it is delivered to (see
        :meth:`tidings.hub.Hub.complete_subscribe`).
        """
        self.hub.complete_subscribe(
            channel,
            subscriber,
            join_leave=join_leave,
            positioned=positioned,
            position=position,
            delta=delta,
            keyed=keyed,
            conflator=conflator,
        )

    def detach(self, channel: str, subscriber: Subscriber) -> None:
        """End a subscription on this node (live or still buffering)."""
        if self.hub.remove(channel, subscriber) and not self._closing:
            delay = self.config.broker_unsubscribe_delay
            if delay > 0:
                # Keep the broker's interest a while: a long poll leaves and its next request
                # comes right back, as does a reconnecting client (each pair would otherwise
                # be a broker round trip pair).
                self._lingering[channel] = self.clock.call_later(delay, self._linger_over, channel)
            else:
                self.spawn(self._broker_unsubscribe(channel))

    def _linger_over(self, channel: str) -> None:
        if self._lingering.pop(channel, None) is not None and not self._closing:
            self.spawn(self._broker_unsubscribe(channel))

    async def _broker_unsubscribe(self, channel: str) -> None:
        if channel not in self.hub:
            await self._carrier(channel).unsubscribe(channel)

    def _carrier(self, channel: str) -> Broker | MapBroker:
        """The engine that carries ``channel``'s traffic between nodes: the map engine
        for a map namespace, the broker for every other."""
        return self.map_broker if self.maps.is_map(channel) else self.broker

    def set_writer(self, channels: Iterable[str], subscriber: Subscriber, writer: Writer) -> None:
        """Swap where a live subscriber's broadcasts go (a session does it while slow)."""
        for channel in channels:
            self.hub.set_writer(channel, subscriber, writer)

    def conflate(
        self,
        channel: str,
        subscriber: Subscriber,
        conflator: Conflator[PreparedPush],
        *,
        held: bool = False,
    ) -> bool:
        """Deliver ``channel`` to a live subscriber as the latest value per key (see
        :meth:`tidings.hub.Hub.conflate`); ``held`` while its connection is full."""
        return self.hub.conflate(channel, subscriber, conflator, held=held)

    def release(self, channel: str, subscriber: Subscriber) -> None:
        """A held conflated subscriber can take more (see :meth:`tidings.hub.Hub.release`)."""
        self.hub.release(channel, subscriber)

    # ------------------------------------------------------------------ presence

    async def add_presence(self, channel: str, client: Client, info: ClientInfo) -> None:
        """Add ``client`` to ``channel``'s presence; the node refreshes it until removed."""
        await self.presence.add_presence(channel, client.client_id, info, self.config.presence_ttl)
        self._presence_entries[(channel, client)] = info

    async def remove_presence(self, channel: str, client: Client) -> None:
        self._presence_entries.pop((channel, client), None)
        await self.presence.remove_presence(channel, client.client_id)

    async def presence_of(self, channel: str) -> dict[str, ClientInfo]:
        return await self.presence.presence(channel)

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """``(clients, distinct users)`` in ``channel``'s presence."""
        return await self.presence.presence_stats(channel)

    async def announce_join(self, channel: str, info: ClientInfo) -> None:
        await self.broker.publish_join(channel, info)

    async def announce_leave(self, channel: str, info: ClientInfo) -> None:
        await self.broker.publish_leave(channel, info)

    # ------------------------------------------------------------------ timers

    def _on_tick(self) -> None:
        self._ticker = self.clock.call_later(self._tick_period, self._on_tick)
        self._tick += 1
        tick = self._tick
        config = self.config
        # Pongs owed first: a ping of this tick must not count against an earlier one.
        while self._pong_checks and self._pong_checks[0][0] <= tick:
            _, pinged_at, clients = self._pong_checks.popleft()
            for client in clients:
                # Still owing that very ping (a later ping has its own check).
                if client.awaiting_pong == pinged_at and not client.closed:
                    log.info("client %s: no pong", client.client_id)
                    client.close(DisconnectCode.NO_PONG)
        if self._ping_buckets:
            bucket = self._ping_buckets[tick % len(self._ping_buckets)]
            if bucket:
                pinged = []
                for client in list(bucket):
                    if client.closed:
                        bucket.discard(client)
                        continue
                    if client.unidirectional:  # no way to answer: pings only keep it open
                        client.ping(self._ping_frame(client.wire))
                        continue
                    client.ping(self._ping_frame(client.wire), tick=tick)
                    pinged.append(client)
                if pinged:
                    due = tick + max(1, math.ceil(config.pong_timeout / self._tick_period))
                    self._pong_checks.append((due, tick, pinged))
        now = self.clock.monotonic()
        if now - self._last_presence_refresh >= config.presence_refresh_interval:
            self._last_presence_refresh = now
            if self._presence_entries:
                self.spawn(self._refresh_presence())
        if self.maps.presence_due(now):
            self.spawn(self.maps.refresh_presence())
        if now - self._last_node_info >= NODE_INFO_INTERVAL:
            self._last_node_info = now
            self.spawn(self._announce_node())
        self.metrics.tick(self.clients.values())

    def _ping_frame(self, wire: WireFormat) -> bytes:
        frame = self._ping_frames.get(wire)
        if frame is None:
            frame = self._ping_frames[wire] = wire.frame([wire.codec.empty])
        return frame

    async def _refresh_presence(self) -> None:
        """Re-add this node's presence entries so they outlive ``presence_ttl``.

        Entries go to the store in batches (``add_presence_many``: with Redis one
        round trip per batch). An entry whose client left while its batch was in
        flight is removed again afterwards, so a refresh never resurrects it. A
        failure is logged; the next interval tries again (entries live
        ``presence_ttl``, several intervals).
        """
        if self._presence_refreshing:
            return
        self._presence_refreshing = True
        ttl = self.config.presence_ttl
        try:
            keys = list(self._presence_entries)
            entries = [
                (channel, client.client_id, self._presence_entries[(channel, client)])
                for channel, client in keys
            ]
            for start in range(0, len(entries), PRESENCE_REFRESH_BATCH):
                batch = entries[start : start + PRESENCE_REFRESH_BATCH]
                await self.presence.add_presence_many(batch, ttl)
                for key, (channel, client_id, _) in zip(
                    keys[start : start + PRESENCE_REFRESH_BATCH], batch, strict=True
                ):
                    if key not in self._presence_entries:
                        await self.presence.remove_presence(channel, client_id)
        except BrokerUnavailable as exc:
            log.warning("presence refresh failed, retrying next interval: %s", exc)
        finally:
            self._presence_refreshing = False

    # ------------------------------------------------------------------ streams

    def meta_ttl(self, options: ChannelOptions) -> float:
        return options.history_meta_ttl or self.config.history_meta_ttl

    async def stream_top(
        self, channel: str, options: ChannelOptions | None = None
    ) -> StreamPosition:
        """The channel's current position (a channel never published to starts an epoch)."""
        options = options or self.rules.options(channel)
        _, top = await self.history.history(channel, limit=0, meta_ttl=self.meta_ttl(options))
        return top

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        skip_history: bool = False,
        tags: dict[str, str] | None = None,
        idempotency_key: str = "",
        info: ClientInfo | None = None,
        key: str = "",
        delta: bool | None = None,
    ) -> PublishResult:
        """Publish from Python (or the server API) to every subscriber on every node.

        ``data`` is any JSON-serialisable value, or :class:`msgspec.Raw` holding
        JSON text. Channel permissions do not apply (this is the backend
        speaking); an unknown namespace still raises error 102. ``key`` names
        what the publication is the latest value of (conflating channels keep
        one per key); ``delta`` asks for delta encoding to subscribers that
        negotiated it (``None``: the namespace's ``delta_publish``).
        """
        options = self.rules.options(channel)
        if isinstance(data, Raw):
            payload = Raw(compact_raw(bytes(data)))
        else:
            payload = Raw(msgspec.json.encode(data))
        publication = Publication(data=payload, info=info, tags=tags or None, key=key)
        position = await self.publish_publication(
            channel,
            publication,
            options,
            skip_history=skip_history,
            idempotency_key=idempotency_key,
            delta=delta,
        )
        if position is None:
            return PublishResult()
        return PublishResult(position.offset, position.epoch)

    async def publish_publication(
        self,
        channel: str,
        publication: Publication,
        options: ChannelOptions,
        *,
        skip_history: bool = False,
        idempotency_key: str = "",
        delta: bool | None = None,
    ) -> StreamPosition | None:
        """Publish a prepared publication (``delta``: ``None`` means the namespace's
        ``delta_publish``)."""
        if options.is_map:  # a map channel takes keyed writes only (map_publish)
            raise ReplyError(ErrorCode.BAD_REQUEST)
        self.hooks.check_publication(channel, bytes(publication.data))
        history = None if skip_history else options.history_options(self.config.history_meta_ttl)
        return await self.broker.publish(
            channel,
            publication,
            history=history,
            idempotency_key=idempotency_key,
            delta=options.delta_publish if delta is None else delta,
        )

    async def recover(
        self, channel: str, since: StreamPosition
    ) -> tuple[list[Publication], StreamPosition, bool]:
        """Publications after ``since``, all or none (docs/protocol.md section 7).

        Recovered when the epoch matches (or the client did not know it) and
        the stream holds every offset from ``since.offset + 1`` to the top,
        within the recovery limit. Otherwise no publications: the client is told
        ``recovered: false`` and reloads its state.
        """
        limit = self.config.recovery_max_publication_limit
        options = self.rules.options(channel)
        publications, top = await self.history.history(
            channel, since=since, limit=limit + 1, meta_ttl=self.meta_ttl(options)
        )
        if since.epoch and since.epoch != top.epoch:
            return [], top, False
        missed = top.offset - since.offset
        if missed < 0 or missed > limit or len(publications) != missed:
            return [], top, False
        if publications and (
            publications[0].offset != since.offset + 1 or publications[-1].offset != top.offset
        ):
            return [], top, False
        return publications, top, True

    async def read_history(
        self,
        channel: str,
        options: ChannelOptions,
        *,
        limit: int,
        since: StreamPosition | None,
        reverse: bool,
    ) -> tuple[list[Publication], StreamPosition]:
        """History rules: 108 when off, 107 for a reverse from 0, 112 on an epoch mismatch."""
        if not options.history_enabled:
            raise ReplyError(ErrorCode.NOT_AVAILABLE)
        cap = self.config.history_max_publication_limit
        if limit < 0 or limit > cap:
            limit = cap
        if since is not None and reverse and since.offset == 0:
            raise ReplyError(ErrorCode.BAD_REQUEST)
        publications, top = await self.history.history(
            channel, limit=limit, since=since, reverse=reverse, meta_ttl=self.meta_ttl(options)
        )
        if since is not None and since.epoch and since.epoch != top.epoch:
            raise ReplyError(ErrorCode.UNRECOVERABLE_POSITION)
        return publications, top

    async def remove_history(self, channel: str) -> None:
        self.rules.options(channel)
        await self.history.remove_history(channel)

    # ------------------------------------------------------------------ broker events

    def handle_publication(
        self,
        channel: str,
        publication: Publication,
        position: StreamPosition | None,
        *,
        delta: bool = False,
    ) -> None:
        self.metrics.publication_received()
        epoch = position.epoch if position else ""
        push = prepare_publication(channel, publication, epoch, delta=delta)
        self.hub.broadcast_publication(channel, push)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        if channel in self.hub:
            self.hub.broadcast_join_leave(channel, prepare_join(channel, info))

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        if channel in self.hub:
            self.hub.broadcast_join_leave(channel, prepare_leave(channel, info))

    def handle_resubscribed(self, channels: Iterable[str]) -> None:
        """The broker's pub/sub link came back: these channels may have missed publications.

        Their positioned subscribers are told (sessions resubscribe with recovery,
        feeds end their streams); the others carry on (they never promised order).
        """
        for channel in channels:
            for subscriber in self.hub.positioned_subscribers(channel):
                subscriber.insufficient_state(channel)

    def handle_map_change(
        self, channel: str, change: MapEntry, position: StreamPosition, previous: bytes | None
    ) -> None:
        self.maps.handle_change(channel, change, position, previous)

    def handle_map_cleared(self, channel: str) -> None:
        """``map_clear`` dropped the channel: clients reload it (unsubscribe push 2502),
        plain-HTTP feeds end their streams (their next request starts from a snapshot)."""
        for client in list(self._all_clients):
            if channel in client.subscriptions:
                client.map_cleared(channel)
        clients: set[Any] = self._all_clients  # sessions are the hub's subscribers too
        for subscriber in self.hub.positioned_subscribers(channel):
            if subscriber not in clients:
                subscriber.insufficient_state(channel)

    def handle_map_resubscribed(self, channels: Sequence[str]) -> None:
        """The map engine's pub/sub link came back: as :meth:`handle_resubscribed`."""
        self.handle_resubscribed(channels)

    def handle_control(self, message: bytes) -> None:
        try:
            control = decode_control(message)
        except JSON_INPUT_ERRORS:
            log.warning("malformed control message ignored")
            return
        if isinstance(control, NodeAnnouncement):
            self._note_node(control)
        elif isinstance(control, NodeDeparture):
            self.nodes.pop(control.sender, None)
        elif isinstance(control, ChannelsSurvey):
            if control.sender != self.id:
                self.spawn(self._answer_channels_survey(control))
        elif isinstance(control, ChannelsReply):
            survey = self._surveys.get(control.survey)
            if survey is not None:
                survey.answer(control.sender, control.counts)
        elif isinstance(control, EmulationCommands):
            if control.target == self.id:
                client = self.emulation_sessions.get(control.session)
                if client is not None:
                    client.handle_frame(control.protobuf or control.commands.encode())
        else:
            self.spawn(self._apply_client_action(control))

    def _note_node(self, control: NodeAnnouncement) -> None:
        uid = str(control.node.get("uid", ""))
        if uid not in self.nodes and uid != self.id and not self._closing:
            # A newcomer: introduce this node now rather than at the next interval,
            # so its ``info`` and ``channels`` see every node at once.
            self.spawn(self._announce_node())
        now = time.monotonic()
        self.nodes[uid] = (now, control.node)
        horizon = now - NODE_FORGET_AFTER
        for stale in [u for u, (seen, _) in self.nodes.items() if seen < horizon]:
            del self.nodes[stale]

    async def _apply_client_action(self, action: ClientAction) -> None:
        for client in list(self._targets(action)):
            if isinstance(action, DisconnectClients):
                if client.client_id not in action.whitelist:
                    client.close(Disconnect(action.code, action.reason))
            elif isinstance(action, UnsubscribeClients):
                client.unsubscribe(action.channel, UnsubscribeCode.SERVER)
            elif isinstance(action, SubscribeClients):
                since = None
                if action.since_offset >= 0:
                    since = StreamPosition(action.since_offset, action.since_epoch)
                await client.server_subscribe(
                    action.channel, info=bytes(action.info), data=bytes(action.data), since=since
                )
            else:
                client.refresh_by_server(
                    expire_at=action.expire_at or None,
                    expired=action.expired,
                    info=bytes(action.info) or None,
                )

    def _targets(self, action: ClientAction) -> Iterable[Client]:
        for client in list(self.users.get(action.user, ())):
            if action.client and client.client_id != action.client:
                continue
            if action.session and client.session_id != action.session:
                continue
            yield client

    async def send_control(self, control: ControlMessage) -> None:
        """Send a control message to every node, this one included."""
        await self.broker.publish_control(encode_control(control))

    def knows_node(self, uid: str) -> bool:
        """This node, or a peer heard from recently enough to count as alive."""
        if uid == self.id:
            return True
        entry = self.nodes.get(uid)
        return entry is not None and entry[0] >= time.monotonic() - 3 * NODE_INFO_INTERVAL

    async def forward_emulation(self, target: str, session: str, commands: str | bytes) -> None:
        """Commands posted to ``/emulation`` on a node other than the session's owner: JSON
        text, or the bytes of Protobuf commands."""
        if isinstance(commands, bytes):
            message = EmulationCommands(
                target=target, session=session, protobuf=commands, sender=self.id
            )
        else:
            message = EmulationCommands(
                target=target, session=session, commands=commands, sender=self.id
            )
        await self.send_control(message)

    # ------------------------------------------------------------------ server actions

    async def disconnect_user(
        self,
        user: str,
        disconnect: Disconnect = DisconnectCode.FORCE_DISCONNECT,
        *,
        client: str = "",
        session: str = "",
        whitelist: Iterable[str] = (),
    ) -> None:
        """Close every connection of ``user`` (or one client or session), on every node."""
        await self.send_control(
            DisconnectClients(
                user=user,
                client=client,
                session=session,
                whitelist=list(whitelist),
                code=disconnect.code,
                reason=disconnect.reason,
            )
        )

    async def unsubscribe_user(
        self, user: str, channel: str, *, client: str = "", session: str = ""
    ) -> None:
        """End ``user``'s subscriptions to ``channel`` (unsubscribe push 2000), on every node."""
        await self.send_control(
            UnsubscribeClients(user=user, client=client, session=session, channel=channel)
        )

    async def subscribe_user(
        self,
        user: str,
        channel: str,
        *,
        client: str = "",
        session: str = "",
        info: bytes = b"",
        data: bytes = b"",
        since: StreamPosition | None = None,
    ) -> None:
        """Subscribe ``user``'s connections to ``channel`` on the server's initiative."""
        self.rules.options(channel)
        await self.send_control(
            SubscribeClients(
                user=user,
                client=client,
                session=session,
                channel=channel,
                info=Raw(info) if info else NO_DATA,
                data=Raw(data) if data else NO_DATA,
                since_offset=since.offset if since is not None else -1,
                since_epoch=since.epoch if since is not None else "",
            )
        )

    async def refresh_user(
        self,
        user: str,
        *,
        client: str = "",
        session: str = "",
        expire_at: int | None = None,
        expired: bool = False,
        info: bytes = b"",
    ) -> None:
        """Move the expiry of ``user``'s connections (or end them with ``expired``)."""
        await self.send_control(
            RefreshClients(
                user=user,
                client=client,
                session=session,
                expire_at=expire_at or 0,
                expired=expired,
                info=Raw(info) if info else NO_DATA,
            )
        )

    # ------------------------------------------------------------------ map channels

    async def map_publish(
        self,
        channel: str,
        key: str,
        data: Any,
        *,
        tags: dict[str, str] | None = None,
        idempotency_key: str = "",
        key_mode: KeyMode | str = KeyMode.REPLACE,
        version: int = 0,
        version_epoch: str = "",
        delta: bool | None = None,
        info: ClientInfo | None = None,
    ) -> MapUpdateResult:
        """Write ``key`` of a map channel, on every node (docs/protocol.md section 14).

        ``data`` is any JSON-serialisable value, or :class:`msgspec.Raw` holding
        JSON text. ``delta`` sends it as a fossil delta against the key's previous
        value to subscribers that negotiated one (``None``: the namespace's
        ``delta_publish``). Errors: 102 unknown namespace, 107 not a map namespace,
        an empty key, an unknown ``key_mode`` or a ``version`` in ephemeral mode.
        """
        try:
            mode = KeyMode(key_mode)
        except ValueError:
            raise ReplyError(ErrorCode.BAD_REQUEST) from None
        value = payload(data)
        self.hooks.check_publication(channel, value)
        return await self.maps.publish(
            channel,
            key,
            value,
            tags=tags,
            info=info,
            idempotency_key=idempotency_key,
            key_mode=mode,
            version=version,
            version_epoch=version_epoch,
            delta=delta,
        )

    async def map_remove(
        self, channel: str, key: str, *, idempotency_key: str = ""
    ) -> MapUpdateResult:
        """Remove ``key`` of a map channel (a missing key is a suppressed no-op)."""
        return await self.maps.remove(channel, key, idempotency_key=idempotency_key)

    async def map_state(
        self,
        channel: str,
        *,
        limit: int = -1,
        cursor: str = "",
        key: str = "",
        revision: StreamPosition | None = None,
    ) -> MapState:
        """A map channel's entries (all by default, or a page after ``cursor``) and its top."""
        return await self.maps.read_state(
            channel, limit=limit, cursor=cursor, key=key, revision=revision
        )

    async def map_stream(
        self,
        channel: str,
        *,
        limit: int = -1,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> MapStream:
        """A map channel's changes after ``since`` (112 when they are no longer kept)."""
        return await self.maps.read_stream(channel, limit=limit, since=since, reverse=reverse)

    async def map_stats(self, channel: str) -> int:
        """The number of keys of a map channel."""
        return await self.maps.stats(channel)

    async def map_clear(self, channel: str) -> None:
        """Drop a map channel's state and stream; subscribers reload (a new epoch)."""
        await self.maps.clear(channel)

    # ------------------------------------------------------------------ channels survey

    def local_channels(self, pattern: str = "") -> dict[str, int]:
        """Channels with subscribers on this node (matching the glob ``pattern``), and how many."""
        return {
            name: count
            for name, count in self.hub.channels()
            if not pattern or fnmatch.fnmatchcase(name, pattern)
        }

    async def channels(self, pattern: str = "") -> dict[str, int]:
        """Channels with subscribers on any node, with subscriber counts (API ``channels``).

        The other live nodes (announced within the last ``3 * NODE_INFO_INTERVAL``)
        are asked over control messages and each answers with its own counts.
        The call waits until all have answered, at most
        ``CHANNELS_SURVEY_TIMEOUT`` seconds, then sums whatever arrived: a node
        that died a moment ago costs that wait, never an error.
        """
        counts = self.local_channels(pattern)
        horizon = time.monotonic() - 3 * NODE_INFO_INTERVAL
        peers = {uid for uid, (seen, _) in self.nodes.items() if seen >= horizon and uid != self.id}
        if not peers:
            return counts
        survey_id = uuid.uuid4().hex
        survey = self._surveys[survey_id] = _Survey(peers)
        try:
            await self.send_control(
                ChannelsSurvey(survey=survey_id, sender=self.id, channel=pattern)
            )
            try:
                async with asyncio.timeout(CHANNELS_SURVEY_TIMEOUT):
                    await survey.done.wait()
            except TimeoutError:
                log.warning(
                    "channels: %d of %d other nodes did not answer within %s s",
                    len(peers - survey.replies.keys()),
                    len(peers),
                    CHANNELS_SURVEY_TIMEOUT,
                )
        finally:
            del self._surveys[survey_id]
        for reply in survey.replies.values():
            for name, count in reply.items():
                counts[name] = counts.get(name, 0) + count
        return counts

    async def _answer_channels_survey(self, control: ChannelsSurvey) -> None:
        reply = ChannelsReply(
            survey=control.survey, sender=self.id, counts=self.local_channels(control.channel)
        )
        try:
            await self.send_control(reply)
        except BrokerUnavailable as exc:
            log.warning("channels survey not answered: %s", exc)

    # ------------------------------------------------------------------ node info

    def node_info(self) -> dict[str, Any]:
        """This node's entry in the API ``info`` result."""
        rss = 0
        try:
            with open(f"/proc/{os.getpid()}/statm") as statm:
                rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        return {
            "uid": self.id,
            "name": self.name,
            "version": self.version,
            "num_clients": self.num_clients,
            "num_users": len(self.users),
            "num_channels": self.hub.num_channels(),
            "num_subs": sum(len(c.subscriptions) for c in self.clients.values()),
            "uptime": int(time.time() - self.started_at),
            "process": {"cpu": 0.0, "rss": rss},
        }

    async def _announce_node(self) -> None:
        try:
            await self.send_control(NodeAnnouncement(node=self.node_info()))
        except Exception as exc:
            log.warning("node announcement failed: %s", exc)

    async def _announce_departure(self) -> None:
        """Tell the other nodes this one is gone, so ``info`` and ``channels`` stop counting it."""
        try:
            await self.send_control(NodeDeparture(sender=self.id))
        except Exception as exc:
            log.debug("node departure not announced: %s", exc)

    def known_nodes(self) -> list[dict[str, Any]]:
        horizon = time.monotonic() - 3 * NODE_INFO_INTERVAL
        nodes = {self.id: self.node_info()}
        for uid, (seen, info) in self.nodes.items():
            if seen >= horizon and uid != self.id:
                nodes[uid] = info
        return list(nodes.values())


def _build_map_engine(config: Config, node_id: str, clock: Clock) -> MapBroker:
    """The map engine ``map_broker`` names (empty: the broker's, with its prefix)."""
    url = config.map_broker_url
    if url == "memory":
        return MemoryMapBroker(clock.time)
    from tidings.brokers.redis import RedisMapBroker

    return RedisMapBroker(url, prefix=config.broker_prefix, name=node_id[:8])


def _build_engine(config: Config, node_id: str, metrics: Metrics) -> tuple[Broker, PresenceStore]:
    if config.broker == "memory":
        return MemoryBroker(), MemoryPresence()
    from tidings.brokers.redis import RedisBroker, RedisPresence, RoundTrips

    prefix = config.broker_prefix
    round_trips = (
        RoundTrips(metrics.broker_round_trip, metrics.broker_error) if metrics.enabled else None
    )
    return (
        RedisBroker(config.broker, prefix=prefix, name=node_id[:8], round_trips=round_trips),
        RedisPresence(config.broker, prefix=prefix, round_trips=round_trips),
    )
