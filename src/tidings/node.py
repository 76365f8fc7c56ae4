"""The Node: owns the hub, the broker, presence, sessions and timers.

It is the only place broker callbacks land, and the in-process Python API
(``await node.publish(channel, data)``). Nothing in tidings is module-level
state, so a test can run several nodes in one process.
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
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import Raw

from tidings import __version__
from tidings.auth import TokenVerifier
from tidings.brokers.base import Broker, HistoryReader, PresenceStore
from tidings.brokers.memory import MemoryBroker, MemoryPresence
from tidings.channels import ChannelOptions, ChannelRules
from tidings.config import Config
from tidings.errors import (
    BrokerUnavailable,
    Disconnect,
    DisconnectCode,
    ErrorCode,
    ReplyError,
    UnsubscribeCode,
)
from tidings.hub import Hub, Subscriber
from tidings.jwks import JwksClient
from tidings.protocol.codec import (
    EMPTY_DOCUMENT,
    JSON_INPUT_ERRORS,
    compact_raw,
    prepare_join,
    prepare_leave,
    prepare_publication,
)
from tidings.protocol.messages import NO_DATA, ClientInfo, Publication, StreamPosition

if TYPE_CHECKING:
    from tidings.session import Session
    from tidings.transports.base import WireFormat

log = logging.getLogger("tidings.node")

RPCHandler = Callable[["Session", bytes], Awaitable[Any]]
SendHandler = Callable[["Session", bytes], Awaitable[None]]

NODE_INFO_INTERVAL = 5.0
NODE_FORGET_AFTER = 60.0
"""A node silent this long (crashed without a goodbye) is dropped from the registry."""
"""Seconds between a node's announcements of itself to the others (API ``info``)."""

CHANNELS_SURVEY_TIMEOUT = 1.0
"""Longest wait for the other nodes' answers to an API ``channels`` call."""

PRESENCE_REFRESH_BATCH = 1000
"""Presence entries refreshed per store call: with Redis one round trip per batch
(``RedisPresence.add_presence_many``), where one call per entry cost a round trip each."""


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where a publication landed: ``offset`` 0 and ``epoch`` "" on channels without history."""

    offset: int = 0
    epoch: str = ""


class ControlMessage(msgspec.Struct, omit_defaults=True):
    """A node-to-node instruction, carried by the broker to every node."""

    op: str
    user: str = ""
    client: str = ""
    session: str = ""
    channel: str = ""
    whitelist: list[str] = []
    code: int = 0
    reason: str = ""
    info: Raw = NO_DATA
    data: Raw = NO_DATA
    expire_at: int = 0
    expired: bool = False
    since_offset: int = -1
    since_epoch: str = ""
    node: dict[str, Any] | None = None
    survey: str = ""
    sender: str = ""
    counts: dict[str, int] | None = None
    target: str = ""
    commands: str = ""


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


_control_decoder = msgspec.json.Decoder(ControlMessage)


class Node:
    """One tidings server node. ``await start()``, serve sessions, ``await shutdown()``."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        broker: Broker | None = None,
        presence: PresenceStore | None = None,
    ) -> None:
        self.config = config = config or Config()
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
        )
        self.jwks: JwksClient | None = None
        if config.token_jwks_url:
            self.jwks = JwksClient(
                config.token_jwks_url,
                self.verifier,
                refresh_interval=config.token_jwks_refresh_interval,
            )
        if broker is None:
            broker, presence_default = _build_engine(config, self.id)
            presence = presence or presence_default
        self.broker: Broker = broker
        self.history: HistoryReader = broker  # a broker reads the streams it owns
        self.presence: PresenceStore = presence or MemoryPresence()
        self.hub = Hub(
            on_insufficient_state=self._insufficient_state,
            coalesce_delay=config.coalesce_delay,
        )
        self.rpc_handlers: dict[str, RPCHandler] = {}
        self.send_handler: SendHandler | None = None
        self.sessions: dict[str, Session] = {}
        self.users: dict[str, set[Session]] = {}
        self.emulation_sessions: dict[str, Session] = {}
        self.nodes: dict[str, tuple[float, dict[str, Any]]] = {}
        self._all_sessions: set[Session] = set()
        self._presence_entries: dict[tuple[str, Session], None] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._daemons: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self._tick = 0
        self._tick_period = 1.0
        self._ping_buckets: list[set[Session]] = []
        self._pong_checks: deque[tuple[int, list[Session]]] = deque()
        self._ping_frames: dict[WireFormat, bytes] = {}
        self._last_presence_refresh = 0.0
        self._presence_refreshing = False
        self._surveys: dict[str, _Survey] = {}
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
        if self.jwks is not None:
            await self.jwks.refresh(force=True)
            self.spawn(self.jwks.run(), daemon=True)
        interval = self.config.ping_interval
        if interval > 0:
            self._tick_period = min(1.0, interval)
            buckets = max(1, round(interval / self._tick_period))
            self._ping_buckets = [set() for _ in range(buckets)]
        self._ticker = asyncio.get_running_loop().call_later(self._tick_period, self._on_tick)
        self.spawn(self._announce_node())

    async def shutdown(self, disconnect: Disconnect = DisconnectCode.SHUTDOWN) -> None:
        """Disconnect every client (3001 by default: SDKs reconnect elsewhere), stop the engine."""
        if self._closing:
            return
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
        for session in list(self._all_sessions):
            session.close(disconnect)
        self.hub.flush()
        self.spawn(self._announce_departure())
        for daemon in self._daemons:  # loops that never end on their own
            daemon.cancel()
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        for task in self._tasks:
            task.cancel()
        await self.broker.close()
        await self.presence.close()

    async def refresh_jwks(self) -> bool:
        """A token named an unknown ``kid``: refetch the JWKS (rate-limited)."""
        return self.jwks is not None and await self.jwks.refresh()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], *, daemon: bool = False) -> None:
        """Run a fire-and-forget coroutine that the node keeps a reference to.

        Shutdown lets ordinary tasks finish (bounded); a ``daemon`` (a loop that
        never ends) is cancelled at once.
        """
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        if daemon:
            self._daemons.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._daemons.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ sessions

    def track(self, session: Session) -> None:
        """A transport opened a session (not yet connected)."""
        self._all_sessions.add(session)

    def register(self, session: Session) -> None:
        """A session finished ``connect``: index it by client id and user."""
        self.sessions[session.client_id] = session
        self.users.setdefault(session.user, set()).add(session)

    def register_emulation(self, session: Session) -> None:
        """Index a session by its ``session_id``, for ``POST /emulation`` (fact sheet section 8)."""
        self.emulation_sessions[session.session_id] = session

    def unregister_emulation(self, session: Session) -> None:
        if self.emulation_sessions.get(session.session_id) is session:
            del self.emulation_sessions[session.session_id]

    def untrack(self, session: Session, *, was_connected: bool) -> None:
        self._all_sessions.discard(session)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        sessions = self.users.get(session.user)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.users[session.user]
        for bucket in self._ping_buckets:
            bucket.discard(session)

    @property
    def num_clients(self) -> int:
        return len(self.sessions)

    @property
    def allow_anonymous(self) -> bool:
        return self.config.allow_anonymous

    async def add_local_subscriber(self, channel: str, session: Session) -> None:
        if self.hub.begin_subscribe(channel, session):
            try:
                await self.broker.subscribe(channel)
            except BaseException:
                self.remove_local_subscriber(channel, session)
                raise

    def remove_local_subscriber(self, channel: str, session: Subscriber) -> None:
        if self.hub.remove(channel, session) and not self._closing:
            self.spawn(self._broker_unsubscribe(channel))

    async def _broker_unsubscribe(self, channel: str) -> None:
        if channel not in self.hub:
            await self.broker.unsubscribe(channel)

    def presence_added(self, channel: str, session: Session) -> None:
        self._presence_entries[(channel, session)] = None

    def presence_removed(self, channel: str, session: Session) -> None:
        self._presence_entries.pop((channel, session), None)

    def _insufficient_state(self, channel: str, subscribers: list[Subscriber]) -> None:
        for subscriber in subscribers:
            session: Session = subscriber  # type: ignore[assignment]
            log.info(
                "client %s lost publications in %r: asking it to recover",
                session.client_id,
                channel,
            )
            session.insufficient_state(channel)

    # ------------------------------------------------------------------ timers

    def start_pinging(self, session: Session) -> None:
        if self._ping_buckets:
            self._ping_buckets[self._tick % len(self._ping_buckets)].add(session)

    def _on_tick(self) -> None:
        self._ticker = asyncio.get_running_loop().call_later(self._tick_period, self._on_tick)
        self._tick += 1
        tick = self._tick
        config = self.config
        if self._ping_buckets:
            bucket = self._ping_buckets[tick % len(self._ping_buckets)]
            if bucket:
                pinged = []
                for session in list(bucket):
                    if session.closed:
                        bucket.discard(session)
                        continue
                    expect_pong = not session.transport.unidirectional
                    session.ping(self._ping_frame(session.wire), expect_pong=expect_pong)
                    if expect_pong:
                        pinged.append(session)
                if pinged:
                    due = tick + max(1, math.ceil(config.pong_timeout / self._tick_period))
                    self._pong_checks.append((due, pinged))
        while self._pong_checks and self._pong_checks[0][0] <= tick:
            _, sessions = self._pong_checks.popleft()
            for session in sessions:
                if session.awaiting_pong and not session.closed:
                    log.info("client %s: no pong", session.client_id)
                    session.close(DisconnectCode.NO_PONG)
        now = time.monotonic()
        if now - self._last_presence_refresh >= config.presence_refresh_interval:
            self._last_presence_refresh = now
            if self._presence_entries:
                self.spawn(self._refresh_presence())
        if now - self._last_node_info >= NODE_INFO_INTERVAL:
            self._last_node_info = now
            self.spawn(self._announce_node())

    def _ping_frame(self, wire: WireFormat) -> bytes:
        frame = self._ping_frames.get(wire)
        if frame is None:
            frame = self._ping_frames[wire] = wire.frame([EMPTY_DOCUMENT])
        return frame

    async def _refresh_presence(self) -> None:
        """Re-add this node's presence entries so they outlive ``presence_ttl``.

        Entries go to the store in batches (``add_presence_many``: with Redis one
        round trip per batch). An entry whose
        client left while its batch was in flight is removed again afterwards,
        so a refresh never resurrects it. A failure is logged; the next
        interval tries again (entries live ``presence_ttl``, several intervals).
        """
        if self._presence_refreshing:
            return
        self._presence_refreshing = True
        ttl = self.config.presence_ttl
        try:
            keys = []
            entries = []
            for key in list(self._presence_entries):
                channel, session = key
                subscription = session.subscriptions.get(channel)
                if session.closed or subscription is None:
                    continue
                keys.append(key)
                entries.append((channel, session.client_id, session.channel_info(subscription)))
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

    # ------------------------------------------------------------------ channels

    def meta_ttl(self, options: ChannelOptions) -> float:
        return options.history_meta_ttl or self.config.history_meta_ttl

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        skip_history: bool = False,
        tags: dict[str, str] | None = None,
        idempotency_key: str = "",
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Publish from Python (or the server API) to every subscriber on every node.

        ``data`` is any JSON-serialisable value, or :class:`msgspec.Raw` holding
        JSON text. Channel permissions do not apply (this is the backend
        speaking); an unknown namespace still raises error 102.
        """
        options = self.rules.options(channel)
        if isinstance(data, Raw):
            payload = Raw(compact_raw(bytes(data)))
        else:
            payload = Raw(msgspec.json.encode(data))
        publication = Publication(data=payload, info=info, tags=tags or None)
        position = await self.publish_publication(
            channel,
            publication,
            options,
            skip_history=skip_history,
            idempotency_key=idempotency_key,
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
    ) -> StreamPosition | None:
        history = None if skip_history else options.history_options(self.config.history_meta_ttl)
        return await self.broker.publish(
            channel, publication, history=history, idempotency_key=idempotency_key
        )

    async def recover(
        self, channel: str, since: StreamPosition
    ) -> tuple[list[Publication], StreamPosition, bool]:
        """Publications after ``since``, all or none (fact sheet section 7).

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

    # ------------------------------------------------------------------ broker events

    def handle_publication(
        self, channel: str, publication: Publication, position: StreamPosition | None
    ) -> None:
        push = prepare_publication(channel, publication, position.epoch if position else "")
        self.hub.broadcast_publication(channel, push)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        if channel in self.hub:
            self.hub.broadcast_join_leave(channel, prepare_join(channel, info))

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        if channel in self.hub:
            self.hub.broadcast_join_leave(channel, prepare_leave(channel, info))

    def handle_resubscribed(self, channels: Iterable[str]) -> None:
        """The broker's pub/sub link came back: these channels may have missed publications.

        Their positioned subscribers are asked to resubscribe with recovery; the
        others carry on (they never promised order).
        """
        for channel in channels:
            for subscriber in self.hub.positioned_subscribers(channel):
                session: Session = subscriber  # type: ignore[assignment]
                session.insufficient_state(channel)

    def handle_control(self, message: bytes) -> None:
        try:
            control = _control_decoder.decode(message)
        except JSON_INPUT_ERRORS:
            log.warning("malformed control message ignored")
            return
        if control.op == "node":
            if control.node is not None:
                uid = str(control.node.get("uid", ""))
                if uid not in self.nodes and uid != self.id and not self._closing:
                    # A newcomer: introduce this node now rather than at the next
                    # interval, so its ``info`` and ``channels`` see every node at once.
                    self.spawn(self._announce_node())
                now = time.monotonic()
                self.nodes[uid] = (now, control.node)
                horizon = now - NODE_FORGET_AFTER
                for stale in [u for u, (seen, _) in self.nodes.items() if seen < horizon]:
                    del self.nodes[stale]
            return
        if control.op == "node_gone":
            self.nodes.pop(control.sender, None)
            return
        if control.op == "channels":
            if control.sender != self.id:
                self.spawn(self._answer_channels_survey(control))
            return
        if control.op == "channels_reply":
            survey = self._surveys.get(control.survey)
            if survey is not None:
                survey.answer(control.sender, control.counts or {})
            return
        if control.op == "emulation":
            if control.target == self.id:
                session = self.emulation_sessions.get(control.session)
                if session is not None:
                    session.handle_frame(control.commands.encode())
            return
        self.spawn(self._apply_control(control))

    async def _apply_control(self, control: ControlMessage) -> None:
        for session in list(self._targets(control)):
            if control.op == "disconnect":
                if session.client_id in control.whitelist:
                    continue
                session.close(Disconnect(control.code, control.reason))
            elif control.op == "unsubscribe":
                session.unsubscribe(control.channel, UnsubscribeCode.SERVER)
            elif control.op == "subscribe":
                since = None
                if control.since_offset >= 0:
                    since = StreamPosition(control.since_offset, control.since_epoch)
                await session.server_subscribe(
                    control.channel,
                    info=bytes(control.info),
                    data=bytes(control.data),
                    since=since,
                )
            elif control.op == "refresh":
                session.refresh_by_server(
                    expire_at=control.expire_at or None,
                    expired=control.expired,
                    info=bytes(control.info) or None,
                )

    def _targets(self, control: ControlMessage) -> Iterable[Session]:
        for session in list(self.users.get(control.user, ())):
            if control.client and session.client_id != control.client:
                continue
            if control.session and session.session_id != control.session:
                continue
            yield session

    def knows_node(self, uid: str) -> bool:
        """This node, or a peer heard from recently enough to count as alive."""
        if uid == self.id:
            return True
        entry = self.nodes.get(uid)
        return entry is not None and entry[0] >= time.monotonic() - 3 * NODE_INFO_INTERVAL

    async def forward_emulation(self, target: str, session: str, commands: str) -> None:
        """Commands posted to ``/emulation`` on a node other than the session's owner."""
        await self.send_control(
            ControlMessage(
                op="emulation", target=target, session=session, commands=commands, sender=self.id
            )
        )

    async def send_control(self, control: ControlMessage) -> None:
        await self.broker.publish_control(msgspec.json.encode(control))

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
                ControlMessage(op="channels", survey=survey_id, sender=self.id, channel=pattern)
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

    async def _answer_channels_survey(self, control: ControlMessage) -> None:
        reply = ControlMessage(
            op="channels_reply",
            survey=control.survey,
            sender=self.id,
            counts=self.local_channels(control.channel),
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
            "num_subs": sum(len(s.subscriptions) for s in self.sessions.values()),
            "uptime": int(time.time() - self.started_at),
            "process": {"cpu": 0.0, "rss": rss},
        }

    async def _announce_node(self) -> None:
        try:
            await self.send_control(ControlMessage(op="node", node=self.node_info()))
        except Exception as exc:
            log.warning("node announcement failed: %s", exc)

    async def _announce_departure(self) -> None:
        """Tell the other nodes this one is gone, so ``info`` and ``channels`` stop counting it."""
        try:
            await self.send_control(ControlMessage(op="node_gone", sender=self.id))
        except Exception as exc:
            log.debug("node departure not announced: %s", exc)

    def known_nodes(self) -> list[dict[str, Any]]:
        horizon = time.monotonic() - 3 * NODE_INFO_INTERVAL
        nodes = {self.id: self.node_info()}
        for uid, (seen, info) in self.nodes.items():
            if seen >= horizon and uid != self.id:
                nodes[uid] = info
        return list(nodes.values())


def _build_engine(config: Config, node_id: str) -> tuple[Broker, PresenceStore]:
    if config.broker == "memory":
        return MemoryBroker(), MemoryPresence()
    from tidings.brokers.redis import RedisBroker, RedisPresence

    prefix = config.broker_prefix
    return (
        RedisBroker(config.broker, prefix=prefix, name=node_id[:8]),
        RedisPresence(config.broker, prefix=prefix),
    )
