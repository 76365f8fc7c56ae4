"""One client connection: the protocol state machine over any transport.

States::

    CONNECTING --connect ok--> CONNECTED --close--> CLOSED
        |--connect error reply--> REFUSED (input ignored until the client leaves)
        '--any close-----------------------------------------> CLOSED

Rules (fact sheet sections 1-7): every command but ``connect`` needs
CONNECTED; a second ``connect`` is a violation; commands run one at a time in
arrival order, so the connect reply leaves before the replies to subscribes
sent in the same frame; a subscribe reply leaves before any push of its
channel.

An idle session owns no task and no coroutine: a task exists only while
commands are being processed, and pings come from the node's ping wheel.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
from msgspec import Raw

from tidings.auth import (
    ConnectToken,
    SubscriptionToken,
    TokenError,
    TokenSubscription,
    UnknownKeyId,
)
from tidings.channels import ChannelOptions, ChannelRules
from tidings.errors import (
    BrokerUnavailable,
    Disconnect,
    DisconnectCode,
    DisconnectError,
    Error,
    ErrorCode,
    ProtocolViolation,
    ReplyError,
    Unsubscribe,
    UnsubscribeCode,
)
from tidings.protocol.codec import (
    EMPTY_DOCUMENT,
    command_method,
    decode_frame,
    encode,
    encode_error_reply,
    encode_reply,
    prepare_publication,
    prepare_push,
    raw,
)
from tidings.protocol.messages import (
    NO_DATA,
    ClientInfo,
    Command,
    ConnectRequest,
    ConnectResult,
    DisconnectPush,
    EmptyResult,
    HistoryResult,
    MessagePush,
    PresenceResult,
    PresenceStatsResult,
    Publication,
    RefreshPush,
    RefreshResult,
    RPCResult,
    StreamPosition,
    SubRefreshResult,
    SubscribePush,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribePush,
)
from tidings.transports.base import Transport, WireFormat, Writer

if TYPE_CHECKING:
    from tidings.node import Node

log = logging.getLogger("tidings.session")

CONNECTING, CONNECTED, REFUSED, CLOSED = "connecting", "connected", "refused", "closed"

MAX_TTL = 2**32 - 1
"""``ttl`` is a uint32 in the protocol."""

RATE_LIMITED = "rate-limited"
"""Queue marker: the command came over the rate limit and is answered with error 111."""

RATE_STRIKES_BEFORE_DISCONNECT = 10
"""Commands refused in a row (error 111) before the connection is closed with 3013."""


class Subscription:
    """One channel a session is in."""

    __slots__ = (
        "answered",
        "chan_info",
        "channel",
        "ended_by",
        "expire_at",
        "expiry_handle",
        "join_leave_push",
        "live",
        "options",
        "positioned",
        "recoverable",
        "server_side",
    )

    def __init__(self, channel: str, options: ChannelOptions, *, server_side: bool) -> None:
        self.channel = channel
        self.options = options
        self.server_side = server_side
        self.chan_info = b""
        self.positioned = False
        self.recoverable = False
        self.join_leave_push = False
        self.expire_at: int | None = None
        self.expiry_handle: asyncio.TimerHandle | None = None
        self.live = False
        self.answered = False
        """The client has its subscribe reply (or push): from now on it is told of an end."""
        self.ended_by: Unsubscribe | None = None
        """Why the server ended it while its subscribe was in progress (told after the reply)."""


class Session:
    """A client's connection state, shared by every transport."""

    __slots__ = (
        "__weakref__",
        "_backlog",
        "_backlog_bytes",
        "_queue",
        "_rate_strikes",
        "_slow_disconnect",
        "_slow_handle",
        "_stale_handle",
        "_tokens",
        "_tokens_at",
        "_worker",
        "awaiting_pong",
        "client_id",
        "conn_info",
        "expire_at",
        "expiry_handle",
        "headers",
        "meta",
        "name",
        "node",
        "remote",
        "session_id",
        "state",
        "subscriptions",
        "transport",
        "user",
        "version",
        "wire",
        "writer",
    )

    def __init__(self, node: Node, transport: Transport, *, remote: str = "") -> None:
        self.node = node
        self.transport = transport
        self.wire: WireFormat = transport.wire
        self.writer: Writer = transport.write
        self.remote = remote
        self.state = CONNECTING
        self.client_id = ""
        self.session_id = ""
        self.user = ""
        self.conn_info = b""
        self.meta = b""
        self.name = ""
        self.version = ""
        self.headers: dict[str, str] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.expire_at: int | None = None
        self.expiry_handle: asyncio.TimerHandle | None = None
        self.awaiting_pong = False
        # Created when commands arrive and dropped when they are done: an empty
        # deque costs ~600 bytes, more than a tenth of an idle connection.
        self._queue: deque[tuple[str | None, Command]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._slow_handle: asyncio.TimerHandle | None = None
        self._slow_disconnect: asyncio.Handle | None = None
        self._backlog: list[bytes] | None = None
        self._backlog_bytes = 0
        self._tokens = float(
            node.config.client_command_burst or node.config.client_command_rate_limit
        )
        self._tokens_at = time.monotonic()
        self._rate_strikes = 0
        delay = node.config.stale_close_delay
        self._stale_handle: asyncio.TimerHandle | None = (
            asyncio.get_running_loop().call_later(delay, self._on_stale) if delay > 0 else None
        )
        node.track(self)

    def __repr__(self) -> str:
        client = self.client_id or "-"
        return f"<Session {client} user={self.user!r} {self.transport.name} {self.state}>"

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    @property
    def info(self) -> ClientInfo:
        return ClientInfo(self.user, self.client_id, raw(self.conn_info))

    def channel_info(self, subscription: Subscription | None) -> ClientInfo:
        chan_info = subscription.chan_info if subscription is not None else b""
        return ClientInfo(self.user, self.client_id, raw(self.conn_info), raw(chan_info))

    # ------------------------------------------------------------------ input

    def handle_frame(self, data: bytes) -> None:
        """Feed one transport frame (one or more commands)."""
        if self.state in (CLOSED, REFUSED):
            return
        try:
            commands = decode_frame(data)
        except ProtocolViolation as violation:
            self._violation(violation)
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        rate = self.node.config.client_command_rate_limit
        if rate:
            self._refill_tokens(rate)
        for command in commands:
            method = command_method(command)
            if rate and method is not None:
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    self._rate_strikes = 0
                else:
                    self._rate_strikes += 1
                    if self._rate_strikes > RATE_STRIKES_BEFORE_DISCONNECT:
                        log.info("client %s (%s): command flood", self.client_id, self.remote)
                        self.close(DisconnectCode.TOO_MANY_REQUESTS)
                        return
                    method = RATE_LIMITED
            queue.append((method, command))
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._process())

    def _refill_tokens(self, rate: int) -> None:
        now = time.monotonic()
        burst = float(self.node.config.client_command_burst or rate)
        self._tokens = min(burst, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now

    def _violation(self, violation: ProtocolViolation) -> None:
        log.info("client %s (%s): %s", self.client_id or "-", self.remote, violation)
        self.close(violation.disconnect)

    async def _process(self) -> None:
        queue = self._queue
        assert queue is not None
        try:
            while queue and self.state in (CONNECTING, CONNECTED):
                method, command = queue.popleft()
                await self._dispatch(method, command)
        except DisconnectError as exc:
            if isinstance(exc, ProtocolViolation):
                self._violation(exc)
            else:
                self.close(exc.disconnect)
        except Exception:
            log.exception("client %s: command failed", self.client_id or "-")
            self.close(DisconnectCode.SERVER_ERROR)
        finally:
            self._worker = None
            self._queue = None

    async def _dispatch(self, method: str | None, command: Command) -> None:
        if method is None:
            self._on_pong()
            return
        if method == RATE_LIMITED:
            if command.id:
                self.send(encode_error_reply(command.id, ErrorCode.TOO_MANY_REQUESTS))
            return
        if self.state == CONNECTING:
            if method != "connect":
                raise ProtocolViolation(f"{method} before connect")
        elif method == "connect":
            raise ProtocolViolation("second connect")
        handler = _HANDLERS[method]
        command_id = command.id
        try:
            reply = await handler(self, command_id, getattr(command, method))
        except ReplyError as exc:
            if self.state == CLOSED:
                return
            if not exc.logged:
                channel = getattr(getattr(command, method), "channel", "")
                log.info(
                    "client %s (%s): %s%s refused: %d %s",
                    self.client_id or "-",
                    self.remote,
                    method,
                    f" {channel[:64]!r}" if channel else "",
                    exc.error.code,
                    exc.error.message,
                )
            if method == "connect":
                self.state = REFUSED
                if self._queue is not None:
                    self._queue.clear()
            self.send(encode_error_reply(command_id, exc.error))
            return
        except BrokerUnavailable as exc:
            # The engine did not answer within its bound: error 100 (temporary), so
            # the SDK retries; a connect (server-side subscriptions) reconnects (3004).
            log.warning("client %s: %s failed: %s", self.client_id or "-", method, exc)
            if method == "connect":
                raise DisconnectError(DisconnectCode.SERVER_ERROR) from None
            if self.state != CLOSED:
                self.send(encode_error_reply(command_id, ErrorCode.INTERNAL))
            return
        if reply is not None and self.state != CLOSED:
            self.send(reply)

    def _on_pong(self) -> None:
        if self.state != CONNECTED or not self.awaiting_pong:
            raise ProtocolViolation("pong without a ping")
        self.awaiting_pong = False

    # ------------------------------------------------------------------ output

    def send(self, document: bytes) -> None:
        """Write one reply or personal push on this connection.

        It goes through the same writer as broadcasts, so while the client is
        slow it queues behind them instead of overtaking them.
        """
        if self.state != CLOSED:
            self.writer(self.wire.frame((document,)))

    def send_push(self, channel: str, kind: str, body: object) -> None:
        push = prepare_push(channel, kind, body)
        self.send(push.envelope_for(self.wire))

    def ping(self, frame: bytes, *, expect_pong: bool) -> None:
        """Called by the node's ping wheel with a ping already framed for this wire."""
        self.writer(frame)
        if expect_pong:
            self.awaiting_pong = True

    def on_write_paused(self) -> None:
        """The transport's buffer passed its high-water mark: the client reads too slowly.

        From now on this connection's writes are kept as references to the
        (shared) frames instead of being copied into the transport's buffer: a
        thousand stalled clients then hold a thousand lists of pointers to the
        same bytes, not a thousand copies. Past ``write_buffer_limit`` queued
        bytes, or after ``slow_timeout`` without draining, the client gets 3008.
        """
        if self.state == CLOSED or self._backlog is not None:
            return
        self._backlog = []
        self._backlog_bytes = 0
        self.writer = self._write_while_slow
        for channel in self.subscriptions:
            self.node.hub.set_writer(channel, self, self.writer)
        timeout = self.node.config.slow_timeout
        self._slow_handle = asyncio.get_running_loop().call_later(timeout, self._on_slow)

    def on_write_resumed(self) -> None:
        if self._slow_handle is not None:
            self._slow_handle.cancel()
            self._slow_handle = None
        backlog, self._backlog = self._backlog, None
        if self.state == CLOSED:
            return
        self.writer = self.transport.write
        for channel in self.subscriptions:
            self.node.hub.set_writer(channel, self, self.writer)
        if backlog:
            # One write for everything queued; if it pauses again, later writes queue anew.
            self.transport.write(b"".join(backlog))

    def _write_while_slow(self, data: bytes) -> None:
        backlog = self._backlog
        if self.state == CLOSED or backlog is None or self._slow_disconnect is not None:
            return
        backlog.append(data)
        self._backlog_bytes += len(data)
        if self._backlog_bytes > self.node.config.write_buffer_limit:
            self.state_slow()

    def state_slow(self) -> None:
        """Over the buffer limit: disconnect 3008 on the next loop turn (never mid fan-out)."""
        if self._slow_disconnect is None:
            self._slow_disconnect = asyncio.get_running_loop().call_soon(self._on_slow)

    def _on_slow(self) -> None:
        self._slow_handle = self._slow_disconnect = None
        if self.state != CLOSED:
            log.info("client %s (%s): too slow, disconnecting", self.client_id, self.remote)
            self.close(DisconnectCode.SLOW)

    # ------------------------------------------------------------------ lifecycle

    def _on_stale(self) -> None:
        self._stale_handle = None
        if self.state in (CONNECTING, REFUSED):
            self.close(DisconnectCode.STALE)

    def close(self, disconnect: Disconnect) -> None:
        """End the session: release its subscriptions, then close the transport."""
        if self.state == CLOSED:
            return
        self._release()
        self.transport.close(disconnect)

    def transport_closed(self) -> None:
        """The connection ended under us (client left, network dropped)."""
        if self.state != CLOSED:
            self._release()

    def _release(self) -> None:
        was_connected = self.state == CONNECTED
        self.state = CLOSED
        for handle in (
            self._stale_handle,
            self.expiry_handle,
            self._slow_handle,
            self._slow_disconnect,
        ):
            if handle is not None:
                handle.cancel()
        self._stale_handle = self.expiry_handle = self._slow_handle = self._slow_disconnect = None
        self._backlog = None
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self._queue = None
        node = self.node
        subscriptions = list(self.subscriptions.values())
        self.subscriptions = {}
        for subscription in subscriptions:
            if subscription.expiry_handle is not None:
                subscription.expiry_handle.cancel()
            node.remove_local_subscriber(subscription.channel, self)
        node.untrack(self, was_connected=was_connected)
        if was_connected and subscriptions:
            node.spawn(self._leave_all(subscriptions))

    async def _leave_all(self, subscriptions: list[Subscription]) -> None:
        for subscription in subscriptions:
            await self._announce_leave(subscription)

    # ------------------------------------------------------------------ connect

    async def connect_unidirectional(self, request: ConnectRequest) -> None:
        """Run the one ``connect`` of a unidirectional transport (fact sheet section 8).

        There is no reply to carry an error, so a refusal becomes a disconnect:
        109/110 -> 3005, 111 -> 3013, 103 -> 3507, any other error -> 3004; a
        disconnect raised by connect (3500, 3501...) is sent as it is.
        """
        if self.state != CONNECTING:
            return
        try:
            await self._connect(0, request)
        except ReplyError as exc:
            self.close(
                _UNIDIRECTIONAL_CONNECT_ERRORS.get(exc.error.code, DisconnectCode.SERVER_ERROR)
            )
        except DisconnectError as exc:
            self.close(exc.disconnect)
        except Exception:
            log.exception("unidirectional connect from %s failed", self.remote)
            self.close(DisconnectCode.SERVER_ERROR)

    async def _connect(self, command_id: int, request: ConnectRequest) -> bytes | None:
        node = self.node
        token: ConnectToken | None = None
        if request.token:
            try:
                token = await self._verify_connect_token(request.token)
            except TokenError as exc:
                log.info("connect from %s refused: %s", self.remote, exc.reason)
                if exc.expired:
                    raise ReplyError(ErrorCode.TOKEN_EXPIRED, logged=True) from None
                raise DisconnectError(DisconnectCode.INVALID_TOKEN) from None
        elif not node.config.allow_anonymous:
            log.info("connect from %s refused: no token and anonymous access is off", self.remote)
            raise DisconnectError(DisconnectCode.BAD_REQUEST)
        self.client_id = str(uuid.uuid4())
        self.name = request.name[:16]
        self.version = request.version[:64]
        self.headers = dict(request.headers)
        if token is not None:
            self.user = token.user
            self.conn_info = token.info
            self.meta = token.meta
            self.expire_at = token.expire_at
        limit = node.config.client_user_connection_limit
        if limit and self.user and len(node.users.get(self.user, ())) >= limit:
            log.info("connect of user %r refused: %d connections already", self.user, limit)
            raise DisconnectError(DisconnectCode.CONNECTION_LIMIT)
        if self._stale_handle is not None:
            self._stale_handle.cancel()
            self._stale_handle = None
        node.register(self)
        self.state = CONNECTED
        self._schedule_expiry()

        server_channels: dict[str, TokenSubscription] = {}
        if token is not None:
            for channel in token.channels:
                server_channels[channel] = TokenSubscription()
            server_channels.update(token.subs)
        results: dict[str, SubscribeResult] = {}
        subscribed: list[tuple[Subscription, StreamPosition | None]] = []
        for channel, token_sub in server_channels.items():
            if len(self.subscriptions) >= node.config.client_channel_limit:
                raise DisconnectError(DisconnectCode.CHANNEL_LIMIT)
            recovery = request.subs.get(channel, SubscribeRequest(channel=channel))
            try:
                result, subscription, position = await self._subscribe(
                    channel, recovery, server_side=True, token_sub=token_sub
                )
            except ReplyError as exc:
                log.info("server-side subscription to %r failed: %s", channel, exc)
                continue
            if self.state == CLOSED:
                return None
            results[channel] = result
            subscribed.append((subscription, position))

        ttl = self._ttl()
        config = node.config
        ping = (
            int(config.ping_interval)
            if config.ping_interval >= 1
            else (1 if config.ping_interval > 0 else 0)
        )
        connect_result = ConnectResult(
            client=self.client_id,
            version=node.version,
            expires=ttl is not None,
            ttl=ttl or 0,
            subs=results or None,
            ping=ping,
            pong=bool(ping) and not self.transport.unidirectional,
            session=self.session_id,
            node=node.id if self.transport.emulation else "",
        )
        if self.transport.unidirectional:
            self.send(b'{"connect":%s}' % encode(connect_result))
        else:
            self.send(encode_reply(command_id, "connect", connect_result))
        node.start_pinging(self)
        for subscription, position in subscribed:
            await self._complete_subscribe(subscription, position)
        return None

    async def _verify_connect_token(self, token: str) -> ConnectToken:
        try:
            return self.node.verifier.verify_connect_token(token)
        except UnknownKeyId:
            if not await self.node.refresh_jwks():
                raise
            return self.node.verifier.verify_connect_token(token)

    async def _verify_subscription_token(self, token: str) -> SubscriptionToken:
        try:
            return self.node.verifier.verify_subscription_token(token)
        except UnknownKeyId:
            if not await self.node.refresh_jwks():
                raise
            return self.node.verifier.verify_subscription_token(token)

    def _ttl(self) -> int | None:
        """Seconds left; at least 1 while expiring (the SDKs read ``ttl`` whenever ``expires``)."""
        if self.expire_at is None:
            return None
        return min(MAX_TTL, max(1, int(self.expire_at - time.time())))

    def _schedule_expiry(self) -> None:
        if self.expiry_handle is not None:
            self.expiry_handle.cancel()
            self.expiry_handle = None
        if self.expire_at is None:
            return
        delay = self.expire_at - time.time() + self.node.config.expired_close_delay
        self.expiry_handle = asyncio.get_running_loop().call_later(
            max(0.0, delay), self._on_expired
        )

    def _on_expired(self) -> None:
        self.expiry_handle = None
        if self.state == CONNECTED:
            log.info("client %s: connection expired", self.client_id)
            self.close(DisconnectCode.EXPIRED)

    # ------------------------------------------------------------------ subscribe

    async def _subscribe_command(self, command_id: int, request: SubscribeRequest) -> bytes | None:
        node = self.node
        channel = request.channel
        if request.type:
            raise ReplyError(ErrorCode.NOT_AVAILABLE)
        if channel in self.subscriptions:
            raise ReplyError(ErrorCode.ALREADY_SUBSCRIBED)
        if len(self.subscriptions) >= node.config.client_channel_limit:
            raise ReplyError(ErrorCode.LIMIT_EXCEEDED)
        sub_token: SubscriptionToken | None = None
        if request.token:
            try:
                sub_token = await self._verify_subscription_token(request.token)
            except TokenError as exc:
                log.info("client %s: subscription token refused: %s", self.client_id, exc.reason)
                if exc.expired:
                    raise ReplyError(ErrorCode.TOKEN_EXPIRED, logged=True) from None
                raise ReplyError(ErrorCode.PERMISSION_DENIED, logged=True) from None
            if (
                sub_token.channel != channel
                or sub_token.user != self.user
                or (sub_token.client and sub_token.client != self.client_id)
            ):
                log.info("client %s: subscription token for another channel/user", self.client_id)
                raise DisconnectError(DisconnectCode.INVALID_TOKEN)
        result, subscription, position = await self._subscribe(
            channel, request, server_side=False, sub_token=sub_token
        )
        if self.state == CLOSED:
            return None
        self.send(encode_reply(command_id, "subscribe", result))
        await self._complete_subscribe(subscription, position)
        return None

    async def _subscribe(
        self,
        channel: str,
        request: SubscribeRequest,
        *,
        server_side: bool,
        sub_token: SubscriptionToken | None = None,
        token_sub: TokenSubscription | None = None,
    ) -> tuple[SubscribeResult, Subscription, StreamPosition | None]:
        """Everything of a subscribe up to its reply; the caller sends it, then completes."""
        node = self.node
        rules: ChannelRules = node.rules
        if server_side or sub_token is not None:
            options = rules.options(channel)
        else:
            options = rules.check_subscribe(channel, self.user, has_token=False)
        override = sub_token.override if sub_token else token_sub.override if token_sub else None
        presence = options.presence
        join_leave = options.join_leave
        force_push = options.force_push_join_leave
        force_recovery = options.force_recovery
        force_positioning = options.force_positioning
        if override is not None:
            presence = override.presence if override.presence is not None else presence
            join_leave = override.join_leave if override.join_leave is not None else join_leave
            if override.force_push_join_leave is not None:
                force_push = override.force_push_join_leave
            if override.force_recovery is not None:
                force_recovery = override.force_recovery
            if override.force_positioning is not None:
                force_positioning = override.force_positioning

        if override is not None:
            # What the token overrides holds for this subscription's whole life: presence
            # entry and its removal, join/leave announcements, recovery (section 6).
            options = msgspec.structs.replace(
                options,
                presence=presence,
                join_leave=join_leave,
                force_push_join_leave=force_push,
                force_recovery=force_recovery,
                force_positioning=force_positioning,
            )
        subscription = Subscription(channel, options, server_side=server_side)
        if sub_token is not None:
            subscription.chan_info = sub_token.info
            subscription.expire_at = sub_token.expire_at
        elif token_sub is not None:
            subscription.chan_info = token_sub.info
        history_on = options.history_enabled
        may_read_history = server_side or ChannelRules.may_read_history(
            options, self.user, subscribed=True
        )
        may_read_presence = server_side or ChannelRules.may_read_presence(
            options, self.user, subscribed=True
        )
        recoverable = history_on and (
            force_recovery
            or (request.recoverable and (may_read_history or options.allow_recovery))
            or (server_side and request.recover)
        )
        positioned = history_on and (
            recoverable
            or force_positioning
            or (request.positioned and (may_read_history or options.allow_positioning))
        )
        subscription.recoverable = recoverable
        subscription.positioned = positioned
        subscription.join_leave_push = join_leave and (
            force_push or (request.join_leave and may_read_presence)
        )

        self.subscriptions[channel] = subscription
        try:
            await node.add_local_subscriber(channel, self)
            result = SubscribeResult()
            position: StreamPosition | None = None
            if positioned:
                if request.recover and recoverable:
                    since = StreamPosition(request.offset, request.epoch)
                    publications, top, recovered = await node.recover(channel, since)
                    result.was_recovering = True
                    result.recovered = recovered
                    if recovered:
                        result.publications = publications
                        result.offset = request.offset
                        position = StreamPosition(
                            publications[-1].offset if publications else request.offset,
                            top.epoch,
                        )
                    else:
                        result.offset = top.offset
                        position = top
                    result.epoch = top.epoch
                else:
                    _, top = await node.history.history(
                        channel, limit=0, meta_ttl=node.meta_ttl(options)
                    )
                    result.offset = top.offset
                    result.epoch = top.epoch
                    position = top
                result.positioned = True
                result.recoverable = recoverable
            if presence:
                await node.presence.add_presence(
                    channel,
                    self.client_id,
                    self.channel_info(subscription),
                    node.config.presence_ttl,
                )
                if self.subscriptions.get(channel) is subscription:
                    node.presence_added(channel, self)
                else:  # unsubscribed or closed meanwhile: its leave ran before this add
                    await node.presence.remove_presence(channel, self.client_id)
        except BaseException:
            if self.subscriptions.get(channel) is subscription:
                del self.subscriptions[channel]
                node.remove_local_subscriber(channel, self)
            raise
        if self.state == CLOSED:
            return result, subscription, position
        ttl = self._subscription_ttl(subscription)
        if ttl is not None:
            result.expires = True
            result.ttl = ttl
        data = sub_token.data if sub_token else token_sub.data if token_sub else b""
        if data:
            result.data = Raw(data)
        subscription.live = False
        return result, subscription, position

    async def _complete_subscribe(
        self, subscription: Subscription, position: StreamPosition | None
    ) -> None:
        if self.state == CLOSED:
            return
        if self.subscriptions.get(subscription.channel) is not subscription:
            reason = subscription.ended_by
            if reason is not None:  # the server ended it mid-subscribe: say so after the reply
                push = UnsubscribePush(reason.code, reason.reason)
                self.send_push(subscription.channel, "unsubscribe", push)
            return
        subscription.answered = True
        self.node.hub.complete_subscribe(
            subscription.channel,
            self,
            join_leave=subscription.join_leave_push,
            positioned=subscription.positioned,
            position=position if subscription.positioned else None,
        )
        subscription.live = True
        self._schedule_subscription_expiry(subscription)
        if subscription.options.join_leave:
            try:
                await self.node.broker.publish_join(
                    subscription.channel, self.channel_info(subscription)
                )
            except BrokerUnavailable as exc:  # the subscribe is answered: join is best effort
                log.warning(
                    "join of %s in %r not announced: %s",
                    self.client_id,
                    subscription.channel,
                    exc,
                )

    def _subscription_ttl(self, subscription: Subscription) -> int | None:
        if subscription.expire_at is None:
            return None
        return min(MAX_TTL, max(1, int(subscription.expire_at - time.time())))

    def _schedule_subscription_expiry(self, subscription: Subscription) -> None:
        if subscription.expiry_handle is not None:
            subscription.expiry_handle.cancel()
            subscription.expiry_handle = None
        if subscription.expire_at is None:
            return
        delay = subscription.expire_at - time.time() + self.node.config.expired_close_delay
        subscription.expiry_handle = asyncio.get_running_loop().call_later(
            max(0.0, delay), self._on_subscription_expired, subscription
        )

    def _on_subscription_expired(self, subscription: Subscription) -> None:
        subscription.expiry_handle = None
        if self.subscriptions.get(subscription.channel) is not subscription:
            return
        if subscription.server_side:
            self.close(DisconnectCode.SUBSCRIPTION_EXPIRED)
        else:
            self.unsubscribe(subscription.channel, UnsubscribeCode.EXPIRED)

    # ------------------------------------------------------------------ server actions

    def unsubscribe(self, channel: str, reason: Unsubscribe | None) -> bool:
        """Leave a channel; with ``reason``, tell the client in an unsubscribe push."""
        subscription = self.subscriptions.pop(channel, None)
        if subscription is None:
            return False
        if subscription.expiry_handle is not None:
            subscription.expiry_handle.cancel()
        self.node.remove_local_subscriber(channel, self)
        if not subscription.answered:
            # Its subscribe is still in progress: the client has no reply yet, so the
            # push would come first. The subscribe sends it after its reply instead.
            subscription.ended_by = reason
        elif reason is not None:
            self.send_push(channel, "unsubscribe", UnsubscribePush(reason.code, reason.reason))
        self.node.spawn(self._announce_leave(subscription))
        return True

    def insufficient_state(self, channel: str) -> None:
        """Publications were lost for a positioned subscription: make the client recover."""
        subscription = self.subscriptions.get(channel)
        if subscription is None:
            return
        if subscription.server_side:
            self.close(DisconnectCode.INSUFFICIENT_STATE)
        else:
            self.unsubscribe(channel, UnsubscribeCode.INSUFFICIENT_STATE)

    async def _announce_leave(self, subscription: Subscription) -> None:
        node = self.node
        channel = subscription.channel
        options = subscription.options
        try:
            if options.presence:
                node.presence_removed(channel, self)
                await node.presence.remove_presence(channel, self.client_id)
            if options.join_leave and subscription.live:
                await node.broker.publish_leave(channel, self.channel_info(subscription))
        except Exception as exc:  # the client is gone; nobody to answer
            log.warning("leave of %s in %r not announced: %s", self.client_id, channel, exc)

    async def server_subscribe(
        self,
        channel: str,
        *,
        info: bytes = b"",
        data: bytes = b"",
        since: StreamPosition | None = None,
    ) -> None:
        """Subscribe on the server's initiative (API ``subscribe``): a subscribe push, no reply."""
        if self.state != CONNECTED or channel in self.subscriptions:
            return
        request = SubscribeRequest(channel=channel)
        if since is not None:
            request = SubscribeRequest(
                channel=channel, recover=True, offset=since.offset, epoch=since.epoch
            )
        token_sub = TokenSubscription(info=info, data=data)
        try:
            result, subscription, position = await self._subscribe(
                channel, request, server_side=True, token_sub=token_sub
            )
        except (ReplyError, BrokerUnavailable) as exc:
            log.info("server subscribe of %s to %r failed: %s", self.client_id, channel, exc)
            return
        if self.state == CLOSED:
            return
        self.send_push(
            channel,
            "subscribe",
            SubscribePush(
                recoverable=result.recoverable,
                epoch=result.epoch,
                offset=result.offset,
                positioned=result.positioned,
                data=result.data,
            ),
        )
        # A subscribe push has no room for publications: recovered ones follow it as
        # ordinary pub pushes, in order, before anything live (which the hub dedups).
        for publication in result.publications:
            self.send(
                prepare_publication(channel, publication, result.epoch).envelope_for(self.wire)
            )
        await self._complete_subscribe(subscription, position)

    def refresh_by_server(
        self, *, expire_at: int | None, expired: bool, info: bytes | None
    ) -> None:
        """API ``refresh``: move the connection's expiry, or end it now."""
        if self.state != CONNECTED:
            return
        if expired:
            self.close(DisconnectCode.EXPIRED)
            return
        if info is not None:
            self.conn_info = info
        self.expire_at = expire_at
        self._schedule_expiry()
        if self.transport.unidirectional:
            ttl = self._ttl()
            self.send_push("", "refresh", RefreshPush(expires=ttl is not None, ttl=ttl or 0))

    def send_message(self, data: bytes) -> None:
        """An asynchronous ``message`` push to this connection alone."""
        self.send_push("", "message", MessagePush(Raw(data)))

    def disconnect_push(self, disconnect: Disconnect) -> bytes:
        """The disconnect push non-WebSocket transports write before they end."""
        push = prepare_push("", "disconnect", DisconnectPush(disconnect.code, disconnect.reason))
        return push.envelope_for(self.wire)

    # ------------------------------------------------------------------ other commands

    async def _unsubscribe_command(self, command_id: int, request: object) -> bytes:
        channel: str = request.channel  # type: ignore[attr-defined]
        self.unsubscribe(channel, None)
        return encode_reply(command_id, "unsubscribe", EmptyResult())

    async def _publish(self, command_id: int, request: object) -> bytes:
        channel: str = request.channel  # type: ignore[attr-defined]
        data: Raw = request.data  # type: ignore[attr-defined]
        subscription = self.subscriptions.get(channel)
        options = self.node.rules.check_publish(
            channel, self.user, subscribed=subscription is not None
        )
        if data is NO_DATA or not len(data):
            raise ReplyError(ErrorCode.BAD_REQUEST)
        publication = Publication(data=data, info=self.channel_info(subscription))
        await self.node.publish_publication(channel, publication, options)
        return encode_reply(command_id, "publish", EmptyResult())

    async def _presence(self, command_id: int, request: object) -> bytes:
        channel: str = request.channel  # type: ignore[attr-defined]
        self.node.rules.check_presence(channel, self.user, subscribed=channel in self.subscriptions)
        presence = await self.node.presence.presence(channel)
        return encode_reply(command_id, "presence", PresenceResult(presence))

    async def _presence_stats(self, command_id: int, request: object) -> bytes:
        channel: str = request.channel  # type: ignore[attr-defined]
        self.node.rules.check_presence(channel, self.user, subscribed=channel in self.subscriptions)
        clients, users = await self.node.presence.presence_stats(channel)
        return encode_reply(command_id, "presence_stats", PresenceStatsResult(clients, users))

    async def _history(self, command_id: int, request: object) -> bytes:
        from tidings.protocol.messages import HistoryRequest

        assert isinstance(request, HistoryRequest)
        channel = request.channel
        options = self.node.rules.check_history(
            channel, self.user, subscribed=channel in self.subscriptions
        )
        publications, top = await self.node.read_history(
            channel,
            options,
            limit=request.limit,
            since=StreamPosition(request.since.offset, request.since.epoch)
            if request.since is not None
            else None,
            reverse=request.reverse,
        )
        return encode_reply(
            command_id, "history", HistoryResult(publications, top.epoch, top.offset)
        )

    async def _send(self, command_id: int, request: object) -> None:
        handler = self.node.send_handler
        if handler is not None:
            data: Raw = request.data  # type: ignore[attr-defined]
            await handler(self, bytes(data))
        return None

    async def _rpc(self, command_id: int, request: object) -> bytes:
        method: str = request.method  # type: ignore[attr-defined]
        data: Raw = request.data  # type: ignore[attr-defined]
        handler = self.node.rpc_handlers.get(method)
        if handler is None:
            raise ReplyError(ErrorCode.METHOD_NOT_FOUND)
        try:
            result = await handler(self, bytes(data))
        except ReplyError:
            raise
        except Exception:
            log.exception("rpc %r failed", method)
            raise ReplyError(ErrorCode.INTERNAL) from None
        return encode_reply(command_id, "rpc", RPCResult(raw(result)))

    async def _refresh(self, command_id: int, request: object) -> bytes:
        token: str = request.token  # type: ignore[attr-defined]
        try:
            claims = await self._verify_connect_token(token)
        except TokenError as exc:
            log.info("client %s: refresh refused: %s", self.client_id, exc.reason)
            if exc.expired:
                raise DisconnectError(DisconnectCode.EXPIRED) from None
            raise DisconnectError(DisconnectCode.INVALID_TOKEN) from None
        if claims.user != self.user:
            log.info("client %s: refresh token for another user", self.client_id)
            raise DisconnectError(DisconnectCode.INVALID_TOKEN)
        self.expire_at = claims.expire_at
        if claims.info:
            self.conn_info = claims.info
        self._schedule_expiry()
        ttl = self._ttl()
        return encode_reply(
            command_id,
            "refresh",
            RefreshResult(
                client=self.client_id,
                version=self.node.version,
                expires=ttl is not None,
                ttl=ttl or 0,
            ),
        )

    async def _sub_refresh(self, command_id: int, request: object) -> bytes:
        channel: str = request.channel  # type: ignore[attr-defined]
        token: str = request.token  # type: ignore[attr-defined]
        subscription = self.subscriptions.get(channel)
        if subscription is None:
            raise ReplyError(ErrorCode.PERMISSION_DENIED)
        if not token:
            raise ProtocolViolation("sub_refresh without a token")
        try:
            claims = await self._verify_subscription_token(token)
        except TokenError as exc:
            log.info("client %s: sub_refresh refused: %s", self.client_id, exc.reason)
            if exc.expired:
                raise ReplyError(ErrorCode.EXPIRED, logged=True) from None
            raise DisconnectError(DisconnectCode.INVALID_TOKEN) from None
        if (
            claims.channel != channel
            or claims.user != self.user
            or (claims.client and claims.client != self.client_id)
        ):
            log.info(
                "client %s: sub_refresh refused: token for another channel/user", self.client_id
            )
            raise DisconnectError(DisconnectCode.INVALID_TOKEN)
        subscription.expire_at = claims.expire_at
        if claims.info:
            subscription.chan_info = claims.info
        self._schedule_subscription_expiry(subscription)
        ttl = self._subscription_ttl(subscription)
        return encode_reply(
            command_id, "sub_refresh", SubRefreshResult(expires=ttl is not None, ttl=ttl or 0)
        )


_UNIDIRECTIONAL_CONNECT_ERRORS: dict[int, Disconnect] = {
    ErrorCode.TOKEN_EXPIRED.code: DisconnectCode.EXPIRED,
    ErrorCode.EXPIRED.code: DisconnectCode.EXPIRED,
    ErrorCode.TOO_MANY_REQUESTS.code: DisconnectCode.TOO_MANY_REQUESTS,
    ErrorCode.PERMISSION_DENIED.code: DisconnectCode.PERMISSION_DENIED,
}
"""How a unidirectional connect's error reply becomes a disconnect (fact sheet section 8)."""


def error_document(error: Error) -> bytes:
    """An error reply with no id (used when a transport refuses before any command)."""
    return encode_error_reply(0, error)


Handler = Callable[[Session, int, object], Awaitable[bytes | None]]

_HANDLERS: dict[str, Handler] = {
    "connect": Session._connect,  # type: ignore[dict-item]
    "subscribe": Session._subscribe_command,  # type: ignore[dict-item]
    "unsubscribe": Session._unsubscribe_command,
    "publish": Session._publish,
    "presence": Session._presence,
    "presence_stats": Session._presence_stats,
    "history": Session._history,
    "send": Session._send,
    "rpc": Session._rpc,
    "refresh": Session._refresh,
    "sub_refresh": Session._sub_refresh,
}

PING_DOCUMENT = EMPTY_DOCUMENT
