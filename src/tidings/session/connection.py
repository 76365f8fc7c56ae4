"""One client connection: its state machine, input queue, output and timers.

States::

    CONNECTING --connect ok--> CONNECTED --close--> CLOSED
        |--connect error reply--> REFUSED (input ignored until the client leaves)
        '--any close-----------------------------------------> CLOSED

Rules (docs/protocol.md sections 1 and 2): every command but ``connect``
needs CONNECTED; a second ``connect`` is a violation; commands run one at a
time in arrival order, so the connect reply leaves before the replies to
subscribes sent in the same frame; a subscribe reply leaves before any push of
its channel. Once CLOSED nothing more is written: not a reply, not a push.

An idle session owns no task and no coroutine: a task exists only while
commands are being processed, and pings come from the node's ping wheel.
Commands live in :mod:`tidings.session.commands`, subscriptions in
:mod:`tidings.session.subscriptions`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from tidings.clock import Timer
from tidings.errors import (
    Disconnect,
    DisconnectCode,
    DisconnectError,
    ErrorCode,
    ProtocolViolation,
    ReplyError,
    Unsubscribe,
)
from tidings.hooks import Context, DisconnectContext, Headers, RefreshContext
from tidings.protocol.codec import ClientCodec, command_method, raw
from tidings.protocol.messages import (
    ClientInfo,
    Command,
    ConnectRequest,
    RefreshPush,
    StreamPosition,
)
from tidings.protocol.wire import WireFormat, Writer
from tidings.session import commands, maps, subscriptions
from tidings.session.subscriptions import MAX_TTL, Subscription
from tidings.session.transport import RequestInfo, Transport

if TYPE_CHECKING:
    from tidings.node import Node

log = logging.getLogger("tidings.session")

CONNECTING, CONNECTED, REFUSED, CLOSED = "connecting", "connected", "refused", "closed"

RATE_LIMITED = "rate-limited"
"""Queue marker: the command came over the rate limit and is answered with error 111."""

RATE_STRIKES_BEFORE_DISCONNECT = 10
"""Commands refused in a row (error 111) before the connection is closed with 3013."""

_NO_REQUEST = RequestInfo()
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})

C = TypeVar("C", bound=Context)


class Session:
    """A client's connection state, shared by every transport."""

    __slots__ = (
        "__weakref__",
        "_backlog",
        "_backlog_bytes",
        "_queue",
        "_rate_strikes",
        "_rpcs",
        "_slow_disconnect",
        "_slow_handle",
        "_stale_handle",
        "_tokens",
        "_tokens_at",
        "_worker",
        "awaiting_pong",
        "client_headers",
        "client_id",
        "conn_info",
        "expire_at",
        "expiry_handle",
        "leaving",
        "meta",
        "name",
        "node",
        "request",
        "server_refresh",
        "session_id",
        "state",
        "subscriptions",
        "transport",
        "user",
        "version",
        "wire",
        "writer",
    )

    def __init__(
        self, node: Node, transport: Transport, request: RequestInfo | None = None
    ) -> None:
        self.node = node
        self.transport = transport
        self.wire: WireFormat = transport.wire
        self.writer: Writer = transport.write
        self.request = request or _NO_REQUEST
        self.state = CONNECTING
        self.client_id = ""
        self.session_id = ""
        self.user = ""
        self.conn_info = b""
        self.meta = b""
        self.name = ""
        self.version = ""
        self.client_headers: Mapping[str, str] = _NO_HEADERS
        """The ``headers`` the client sent in its connect command (centrifuge-js ``headers``)."""
        self.subscriptions: dict[str, Subscription] = {}
        self.leaving: dict[str, asyncio.Task[None]] | None = None
        """Leaves still running (presence removal, leave push), by channel: a new subscribe
        to the channel waits for its leave first (subscriptions.after_leave)."""
        self.expire_at: int | None = None
        self.expiry_handle: Timer | None = None
        self.server_refresh = False
        """The expiry came from the application, whose ``on_refresh`` extends it (the client
        is not asked to refresh a token)."""
        self.awaiting_pong = 0
        """The tick of the server ping the client has not answered yet (0: none)."""
        # Created when commands arrive and dropped when they are done: an empty
        # deque costs ~600 bytes, more than a tenth of an idle connection.
        self._queue: deque[tuple[str, Command]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._rpcs: set[asyncio.Task[None]] | None = None
        self._slow_handle: Timer | None = None
        self._slow_disconnect: asyncio.Handle | None = None
        self._backlog: list[bytes] | None = None
        self._backlog_bytes = 0
        config = node.config
        self._tokens = float(config.client_command_burst or config.client_command_rate_limit)
        self._tokens_at = node.clock.monotonic()
        self._rate_strikes = 0
        delay = config.stale_close_delay
        self._stale_handle: Timer | None = (
            node.clock.call_later(delay, self._on_stale) if delay > 0 else None
        )
        node.track(self)

    def __repr__(self) -> str:
        client = self.client_id or "-"
        return f"<Session {client} user={self.user!r} {self.transport.name} {self.state}>"

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    @property
    def connected(self) -> bool:
        return self.state == CONNECTED

    @property
    def connecting(self) -> bool:
        return self.state == CONNECTING

    @property
    def unidirectional(self) -> bool:
        return self.transport.unidirectional

    @property
    def codec(self) -> ClientCodec:
        """The encoding this connection speaks (JSON or Protobuf), as its transport chose."""
        return self.wire.codec

    @property
    def remote(self) -> str:
        return self.request.remote

    def refuse(self) -> None:
        """The connect was answered with an error: ignore input until the client leaves."""
        self.state = REFUSED
        if self._queue is not None:
            self._queue.clear()

    def connected_as(self) -> None:
        """``connect`` accepted (identity set): register with the node and start the timers."""
        if self._stale_handle is not None:
            self._stale_handle.cancel()
            self._stale_handle = None
        self.state = CONNECTED
        self.node.register(self)
        self.schedule_expiry()

    def log_fields(self, **fields: object) -> dict[str, object]:
        """Structured fields of a log line about this connection (``extra=``, see
        :mod:`tidings.logs`): its client id, user and peer address, plus ``fields``
        (``channel``, ``code``...). Never a token."""
        return {"client": self.client_id, "user": self.user, "remote": self.remote, **fields}

    @property
    def info(self) -> ClientInfo:
        return ClientInfo(self.user, self.client_id, raw(self.conn_info))

    def channel_info(self, subscription: Subscription | None) -> ClientInfo:
        chan_info = subscription.chan_info if subscription is not None else b""
        return ClientInfo(self.user, self.client_id, raw(self.conn_info), raw(chan_info))

    def context(self, kind: type[C], **fields: Any) -> C:
        """The application's view of this connection for one event (never the session)."""
        headers = dict(self.request.headers)
        headers.update(self.client_headers)
        return kind(
            client=self.client_id,
            user=self.user,
            transport=self.transport.name,
            remote_addr=self.request.remote,
            headers=Headers(headers),
            cookies=self.request.cookies,
            raw_info=self.conn_info,
            **fields,
        )

    # ------------------------------------------------------------------ input

    def handle_frame(self, data: bytes) -> None:
        """Feed one transport frame (one or more commands)."""
        if self.state in (CLOSED, REFUSED):
            return
        try:
            decoded = self.wire.codec.decode_commands(data)
        except ProtocolViolation as violation:
            self._violation(violation)
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        rate = self.node.config.client_command_rate_limit
        if rate:
            self._refill_tokens(rate)
        for command in decoded:
            method = command_method(command)
            if method is None:  # the empty command: a pong
                self._on_pong()
                if self.closed:
                    return
                continue
            if rate:
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    self._rate_strikes = 0
                else:
                    self._rate_strikes += 1
                    if self._rate_strikes > RATE_STRIKES_BEFORE_DISCONNECT:
                        log.info(
                            "client %s (%s): command flood",
                            self.client_id,
                            self.remote,
                            extra=self.log_fields(code=DisconnectCode.TOO_MANY_REQUESTS.code),
                        )
                        self.close(DisconnectCode.TOO_MANY_REQUESTS)
                        return
                    self.node.metrics.command(method, ErrorCode.TOO_MANY_REQUESTS.code)
                    method = RATE_LIMITED
            queue.append((method, command))
        if queue and self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._process())
        elif not queue:
            self._queue = None

    def _refill_tokens(self, rate: int) -> None:
        now = self.node.clock.monotonic()
        burst = float(self.node.config.client_command_burst or rate)
        self._tokens = min(burst, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now

    def _violation(self, violation: ProtocolViolation) -> None:
        log.info(
            "client %s (%s): %s",
            self.client_id or "-",
            self.remote,
            violation,
            extra=self.log_fields(code=violation.disconnect.code),
        )
        self.close(violation.disconnect)

    def _on_pong(self) -> None:
        if self.state != CONNECTED or not self.awaiting_pong:
            self._violation(ProtocolViolation("pong without a ping"))
            return
        self.awaiting_pong = 0

    async def _process(self) -> None:
        queue = self._queue
        assert queue is not None
        try:
            while queue and self.state in (CONNECTING, CONNECTED):
                method, command = queue.popleft()
                if method == RATE_LIMITED:
                    if command.id:
                        error = ErrorCode.TOO_MANY_REQUESTS
                        self.send(self.codec.encode_error_reply(command.id, error))
                    continue
                if self.state == CONNECTING:
                    if method != "connect":
                        raise ProtocolViolation(f"{method} before connect")
                elif method == "connect":
                    raise ProtocolViolation("second connect")
                if method == "rpc" and self.node.hooks.has_rpc:
                    self._run_concurrently(commands.dispatch(self, method, command))
                    continue
                await commands.dispatch(self, method, command)
        except DisconnectError as exc:
            if isinstance(exc, ProtocolViolation):
                self._violation(exc)
            else:
                self.close(exc.disconnect)
        except Exception:
            log.exception(
                "client %s: command failed", self.client_id or "-", extra=self.log_fields()
            )
            self.close(DisconnectCode.SERVER_ERROR)
        finally:
            self._worker = None
            self._queue = None

    def _run_concurrently(self, handling: Coroutine[Any, Any, None]) -> None:
        """RPCs of one connection run side by side (their replies carry ids), so a slow
        one never holds the connection's other commands back."""
        rpcs = self._rpcs
        if rpcs is None:
            rpcs = self._rpcs = set()
        task = asyncio.get_running_loop().create_task(self._guarded(handling))
        rpcs.add(task)
        task.add_done_callback(rpcs.discard)

    async def _guarded(self, handling: Coroutine[Any, Any, None]) -> None:
        try:
            await handling
        except DisconnectError as exc:
            self.close(exc.disconnect)
        except Exception:
            log.exception(
                "client %s: command failed", self.client_id or "-", extra=self.log_fields()
            )
            self.close(DisconnectCode.SERVER_ERROR)

    async def idle(self) -> None:
        """Wait until every command received so far has been handled (tests use it)."""
        while self._worker is not None or self._rpcs:
            await asyncio.wait({*(self._rpcs or ()), *([self._worker] if self._worker else [])})

    # ------------------------------------------------------------------ output

    def send(self, document: bytes) -> None:
        """Write one reply or personal push on this connection.

        It goes through the same writer as broadcasts, so while the client is
        slow it queues behind them instead of overtaking them.
        """
        if self.state != CLOSED:
            frame = self.wire.frame((document,))
            self.writer(frame)
            self.node.metrics.sent(self.wire, len(frame))

    def send_push(self, channel: str, kind: str, body: object) -> None:
        wire = self.wire
        self.send(wire.codec.encode_push(channel, kind, body, wire.envelope))

    def ping(self, frame: bytes, *, tick: int = 0) -> None:
        """Called by the node's ping wheel with a ping already framed for this wire; with
        ``tick``, the client owes a pong for the ping of that tick."""
        if self.state == CLOSED:
            return
        self.writer(frame)
        if tick and not self.awaiting_pong:  # the oldest unanswered ping sets the deadline
            self.awaiting_pong = tick

    @property
    def write_paused(self) -> bool:
        """The client reads too slowly: writes queue in the backlog."""
        return self._backlog is not None

    def on_write_paused(self) -> None:
        """The transport's buffer passed its high-water mark: the client reads too slowly.

        From now on this connection's writes are kept as references to the
        (shared) frames instead of being copied into the transport's buffer: a
        thousand stalled clients then hold a thousand lists of pointers to the
        same bytes, not a thousand copies. Past ``write_buffer_limit`` queued
        bytes, or after ``slow_timeout`` without draining, the client gets 3008.

        Subscriptions to conflating channels queue nothing: they keep the latest
        publication per key until the client reads again. A client whose every
        subscription conflates is never timed out for being slow.
        """
        if self.state == CLOSED or self._backlog is not None:
            return
        self._backlog = []
        self._backlog_bytes = 0
        self.writer = self._write_while_slow
        self.node.set_writer(self.subscriptions, self, self.writer)
        if subscriptions.hold_conflating(self):
            return
        timeout = self.node.config.slow_timeout
        self._slow_handle = self.node.clock.call_later(timeout, self._on_slow)

    def on_write_resumed(self) -> None:
        if self._slow_handle is not None:
            self._slow_handle.cancel()
            self._slow_handle = None
        backlog, self._backlog = self._backlog, None
        if self.state == CLOSED:
            return
        self.writer = self.transport.write
        self.node.set_writer(self.subscriptions, self, self.writer)
        if backlog:
            # One write for everything queued; if it pauses again, later writes queue anew.
            self.transport.write(b"".join(backlog))
        subscriptions.release_conflating(self)

    def _write_while_slow(self, data: bytes) -> None:
        backlog = self._backlog
        if self.state == CLOSED or backlog is None or self._slow_disconnect is not None:
            return
        backlog.append(data)
        self._backlog_bytes += len(data)
        if self._backlog_bytes > self.node.config.write_buffer_limit:
            # Over the buffer limit: 3008 on the next loop turn (never mid fan-out).
            self._slow_disconnect = asyncio.get_running_loop().call_soon(self._on_slow)

    def _on_slow(self) -> None:
        self._slow_handle = self._slow_disconnect = None
        if self.state != CLOSED:
            log.info(
                "client %s (%s): too slow, disconnecting",
                self.client_id,
                self.remote,
                extra=self.log_fields(code=DisconnectCode.SLOW.code),
            )
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
        self._release(disconnect)
        self.transport.close(disconnect)
        self.node.metrics.disconnect(disconnect.code)

    def transport_closed(self) -> None:
        """The connection ended under us (client left, network dropped, frame-level failure)."""
        if self.state != CLOSED:
            self._release(DisconnectCode.CONNECTION_CLOSED)

    def _release(self, disconnect: Disconnect) -> None:
        was_connected = self.state == CONNECTED
        self.state = CLOSED
        for handle in (self._stale_handle, self.expiry_handle, self._slow_handle):
            if handle is not None:
                handle.cancel()
        if self._slow_disconnect is not None:
            self._slow_disconnect.cancel()
        self._stale_handle = self.expiry_handle = self._slow_handle = self._slow_disconnect = None
        self._backlog = None
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        for rpc in self._rpcs or ():
            rpc.cancel()
        self._queue = None
        node = self.node
        ended = list(self.subscriptions.values())
        self.subscriptions = {}
        for subscription in ended:
            if subscription.expiry_handle is not None:
                subscription.expiry_handle.cancel()
            node.detach(subscription.channel, self)
        node.untrack(self)
        if was_connected and ended:
            node.spawn(self._leave_all(ended))
        if was_connected and node.hooks.handles("disconnect"):
            context = self.context(
                DisconnectContext, code=disconnect.code, reason=disconnect.reason
            )
            node.spawn(node.hooks.disconnect(context))

    async def _leave_all(self, ended: list[Subscription]) -> None:
        for subscription in ended:
            await subscriptions.announce_leave(self, subscription)

    # ------------------------------------------------------------------ connection expiry

    def ttl(self) -> int | None:
        """Seconds left; at least 1 while expiring (the SDKs read ``ttl`` whenever ``expires``)."""
        if self.expire_at is None:
            return None
        return min(MAX_TTL, max(1, int(self.expire_at - self.node.clock.time())))

    def schedule_expiry(self) -> None:
        if self.expiry_handle is not None:
            self.expiry_handle.cancel()
            self.expiry_handle = None
        if self.expire_at is None:
            return
        clock = self.node.clock
        delay = self.expire_at - clock.time() + self.node.config.expired_close_delay
        self.expiry_handle = clock.call_later(max(0.0, delay), self._on_expired)

    def _on_expired(self) -> None:
        self.expiry_handle = None
        if self.state != CONNECTED:
            return
        if self.server_refresh and self.node.hooks.handles("refresh"):
            self.node.spawn(self._refresh_by_application())
            return
        log.info(
            "client %s: connection expired",
            self.client_id,
            extra=self.log_fields(code=DisconnectCode.EXPIRED.code),
        )
        self.close(DisconnectCode.EXPIRED)

    async def _refresh_by_application(self) -> None:
        """``on_refresh`` extends an expiry the application set, or the connection ends."""
        try:
            answer = await self.node.hooks.refresh(self.context(RefreshContext))
        except DisconnectError as exc:
            self.close(exc.disconnect)
            return
        except ReplyError:
            answer = None
        if self.state != CONNECTED:
            return
        if answer is None or answer.expire_at is None or answer.expire_at <= self.node.clock.time():
            log.info(
                "client %s: connection expired (not extended)",
                self.client_id,
                extra=self.log_fields(code=DisconnectCode.EXPIRED.code),
            )
            self.close(DisconnectCode.EXPIRED)
            return
        if answer.info:
            self.conn_info = answer.info
        self.expire_at = answer.expire_at
        self.schedule_expiry()

    # ------------------------------------------------------------------ server actions

    def unsubscribe(self, channel: str, reason: Unsubscribe | None) -> bool:
        """Leave a channel; with ``reason``, tell the client in an unsubscribe push."""
        return subscriptions.unsubscribe(self, channel, reason)

    def insufficient_state(self, channel: str) -> None:
        """The hub lost publications for a positioned subscription: the client recovers."""
        subscriptions.insufficient_state(self, channel)

    def map_cleared(self, channel: str) -> None:
        """The map channel was cleared: the client reloads its state (unsubscribe 2502)."""
        maps.cleared(self, channel)

    async def server_subscribe(
        self,
        channel: str,
        *,
        info: bytes = b"",
        data: bytes = b"",
        since: StreamPosition | None = None,
    ) -> None:
        """Subscribe on the server's initiative (API ``subscribe``)."""
        await subscriptions.server_subscribe(self, channel, info=info, data=data, since=since)

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
        self.schedule_expiry()
        if self.transport.unidirectional:
            ttl = self.ttl()
            self.send_push("", "refresh", RefreshPush(expires=ttl is not None, ttl=ttl or 0))

    async def connect_unidirectional(self, request: ConnectRequest) -> None:
        """The one connect of a unidirectional transport: a refusal is a disconnect."""
        await commands.connect_unidirectional(self, request)
