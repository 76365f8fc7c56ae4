"""The client commands: one function per method, each taking the typed request it handles.

:func:`dispatch` runs one decoded command against a session and turns the
outcome into the reply (docs/protocol.md section 2): a result, an error reply
(:class:`ReplyError`, the connection carries on) or a disconnect
(:class:`DisconnectError`). Commands of one session run one at a time, in
arrival order (the session's worker awaits each), so a connect reply leaves
before the replies to subscribes sent in the same frame.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from msgspec import Raw

from tidings.auth import ConnectToken, SubscriptionToken, TokenError, TokenSubscription
from tidings.channels import parse_channel
from tidings.errors import (
    BrokerUnavailable,
    Disconnect,
    DisconnectCode,
    DisconnectError,
    Error,
    ErrorCode,
    ProtocolViolation,
    ReplyError,
    token_refusal,
)
from tidings.hooks import ConnectContext, MessageContext, PublishContext, RPCContext
from tidings.protocol.codec import encode, raw
from tidings.protocol.messages import (
    NO_DATA,
    ChannelRequest,
    Command,
    ConnectRequest,
    ConnectResult,
    EmptyResult,
    HistoryRequest,
    HistoryResult,
    PresenceResult,
    PresenceStatsResult,
    Publication,
    PublishRequest,
    RefreshRequest,
    RefreshResult,
    RPCRequest,
    RPCResult,
    SendRequest,
    StreamPosition,
    SubRefreshRequest,
    SubRefreshResult,
    SubscribeRequest,
    SubscribeResult,
)
from tidings.session import maps, subscriptions
from tidings.session.subscriptions import Subscription

if TYPE_CHECKING:
    from tidings.session.connection import Session

log = logging.getLogger("tidings.session")

_UNIDIRECTIONAL_CONNECT_ERRORS: dict[int, Disconnect] = {
    ErrorCode.TOKEN_EXPIRED.code: DisconnectCode.EXPIRED,
    ErrorCode.EXPIRED.code: DisconnectCode.EXPIRED,
    ErrorCode.TOO_MANY_REQUESTS.code: DisconnectCode.TOO_MANY_REQUESTS,
    ErrorCode.PERMISSION_DENIED.code: DisconnectCode.PERMISSION_DENIED,
}
"""How a unidirectional connect's error becomes a disconnect (docs/protocol.md section 8)."""


def refuse_token(use: str, exc: TokenError) -> Exception:
    """The exception that answers a refused token used for ``use`` (one mapping for all)."""
    answer = token_refusal(use, expired=exc.expired)
    if isinstance(answer, Error):
        return ReplyError(answer, logged=True)
    return DisconnectError(answer)


# --------------------------------------------------------------------------- dispatch


async def dispatch(session: Session, method: str, command: Command) -> None:
    """Run one command and send its reply (or error reply); raise to disconnect."""
    command_id = command.id
    metrics = session.node.metrics
    try:
        reply = await _run(session, command)
    except ReplyError as exc:
        metrics.command(method, exc.error.code)
        if session.closed:
            return
        if not exc.logged:
            channel = _channel_of(command)
            fields = session.log_fields(method=method, code=exc.error.code)
            why = ""
            if channel:
                fields["channel"] = channel[:255]
                if exc.error.code == ErrorCode.UNKNOWN_CHANNEL.code:
                    namespace = fields["namespace"] = parse_channel(channel).namespace[:64]
                    why = (
                        f" (unknown namespace {namespace!r}; "
                        f"configure it as [channels.namespaces.{namespace}])"
                    )
            log.info(
                "client %s (%s): %s%s refused: %d %s%s",
                session.client_id or "-",
                session.remote,
                method,
                f" {channel[:64]!r}" if channel else "",
                exc.error.code,
                exc.error.message,
                why,
                extra=fields,
            )
        if method == "connect":
            session.refuse()
        session.send(session.codec.encode_error_reply(command_id, exc.error))
        return
    except BrokerUnavailable as exc:
        # The engine did not answer within its bound: error 100 (temporary), so the
        # SDK retries; a connect (server-side subscriptions) reconnects (3004).
        metrics.command(method, ErrorCode.INTERNAL.code)
        log.warning(
            "client %s: %s failed: %s",
            session.client_id or "-",
            method,
            exc,
            extra=session.log_fields(method=method, code=ErrorCode.INTERNAL.code),
        )
        if method == "connect":
            raise DisconnectError(DisconnectCode.SERVER_ERROR) from None
        if not session.closed:
            session.send(session.codec.encode_error_reply(command_id, ErrorCode.INTERNAL))
        return
    except DisconnectError as exc:
        metrics.command(method, exc.disconnect.code)
        raise
    metrics.command(method, 0)
    if reply is not None and not session.closed:
        session.send(reply)


async def _run(session: Session, command: Command) -> bytes | None:
    """The handler of the method the command carries (exactly one is set)."""
    command_id = command.id
    if command.connect is not None:
        return await connect(session, command_id, command.connect)
    if command.subscribe is not None:
        await subscribe(session, command_id, command.subscribe)  # replies itself, then goes live
        return None
    if command.unsubscribe is not None:
        return unsubscribe(session, command_id, command.unsubscribe)
    if command.publish is not None:
        return await publish(session, command_id, command.publish)
    if command.presence is not None:
        return await presence(session, command_id, command.presence)
    if command.presence_stats is not None:
        return await presence_stats(session, command_id, command.presence_stats)
    if command.history is not None:
        return await history(session, command_id, command.history)
    if command.send is not None:
        await send(session, command.send)  # no reply
        return None
    if command.rpc is not None:
        return await rpc(session, command_id, command.rpc)
    if command.refresh is not None:
        return await refresh(session, command_id, command.refresh)
    if command.sub_refresh is not None:
        return await sub_refresh(session, command_id, command.sub_refresh)
    raise ProtocolViolation("unknown method")  # the codecs let none through


def _channel_of(command: Command) -> str:
    for request in (
        command.subscribe,
        command.unsubscribe,
        command.publish,
        command.presence,
        command.presence_stats,
        command.history,
        command.sub_refresh,
    ):
        if request is not None:
            return request.channel
    return ""


# --------------------------------------------------------------------------- connect


async def connect(session: Session, command_id: int, request: ConnectRequest) -> bytes | None:
    """Authenticate, register, subscribe the server-side channels, reply, then go live.

    With an ``on_connect`` handler, every connection reaches it once its token
    (if any) is verified: the handler may authenticate one with no token (a
    cookie), re-label it, or refuse it.
    """
    node = session.node
    hooks = node.hooks
    token: ConnectToken | None = None
    if request.token:
        try:
            token = await node.verify_connect_token(request.token)
        except TokenError as exc:
            log.info(
                "connect from %s refused: %s",
                session.remote,
                exc.reason,
                extra=session.log_fields(method="connect"),
            )
            raise refuse_token("connect", exc) from None
    has_handler = hooks.handles("connect")
    anonymous_allowed = token is not None or node.config.allow_anonymous
    if not anonymous_allowed and not has_handler:
        log.info(
            "connect from %s refused: no token and anonymous access is off",
            session.remote,
            extra=session.log_fields(method="connect", code=DisconnectCode.BAD_REQUEST.code),
        )
        raise DisconnectError(DisconnectCode.BAD_REQUEST)
    session.client_id = str(uuid.uuid4())
    session.name = request.name[:16]
    session.version = request.version[:64]
    if request.headers:
        session.client_headers = dict(request.headers)
    if token is not None:
        session.user = token.user
        session.conn_info = token.info
        session.meta = token.meta
        session.expire_at = token.expire_at
    reply_data = b""
    application_channels: tuple[str, ...] = ()
    if has_handler:
        answer = await hooks.connect(session.context(ConnectContext, raw_data=bytes(request.data)))
        if answer is None and not anonymous_allowed:
            log.info(
                "connect from %s refused: no token, no on_connect answer",
                session.remote,
                extra=session.log_fields(method="connect", code=DisconnectCode.BAD_REQUEST.code),
            )
            raise DisconnectError(DisconnectCode.BAD_REQUEST)
        if answer is not None:
            session.user = answer.user
            if answer.info:
                session.conn_info = answer.info
            reply_data = answer.data
            application_channels = answer.channels
            if answer.expire_at is not None:
                session.expire_at = answer.expire_at
                session.server_refresh = hooks.handles("refresh")
    limit = node.config.client_user_connection_limit
    if limit and session.user and node.connections_of(session.user) >= limit:
        log.info(
            "connect of user %r refused: %d connections already",
            session.user,
            limit,
            extra=session.log_fields(code=DisconnectCode.CONNECTION_LIMIT.code),
        )
        raise DisconnectError(DisconnectCode.CONNECTION_LIMIT)
    session.connected_as()

    server_channels: dict[str, TokenSubscription] = {}
    if token is not None:
        for channel in token.channels:
            server_channels[channel] = TokenSubscription()
        server_channels.update(token.subs)
    for channel in application_channels:
        server_channels.setdefault(channel, TokenSubscription())
    if session.user and node.config.subscribe_to_user_personal_channel:
        namespace = node.config.personal_channel_namespace
        personal = f"{namespace}:#{session.user}" if namespace else f"#{session.user}"
        server_channels.setdefault(personal, TokenSubscription())
    results: dict[str, SubscribeResult] = {}
    opened: list[tuple[Subscription, StreamPosition | None]] = []
    for channel, token_sub in server_channels.items():
        if len(session.subscriptions) >= node.config.client_channel_limit:
            raise DisconnectError(DisconnectCode.CHANNEL_LIMIT)
        recovery = request.subs.get(channel, SubscribeRequest(channel=channel))
        try:
            grant = await subscriptions.authorize(
                session, channel, server_side=True, token_sub=token_sub
            )
            subscription = subscriptions.plan(session, channel, recovery, grant, server_side=True)
            result, position = await subscriptions.open_subscription(
                session, subscription, recovery
            )
        except ReplyError as exc:
            log.info(
                "server-side subscription to %r failed: %s",
                channel,
                exc,
                extra=session.log_fields(channel=channel, code=exc.error.code),
            )
            continue
        if session.closed:
            return None
        if grant.data:
            result.data = Raw(grant.data)
        results[channel] = result
        opened.append((subscription, position))

    ttl = None if session.server_refresh else session.ttl()
    config = node.config
    ping = (
        int(config.ping_interval)
        if config.ping_interval >= 1
        else (1 if config.ping_interval > 0 else 0)
    )
    connect_result = ConnectResult(
        client=session.client_id,
        version=node.version,
        expires=ttl is not None,
        ttl=ttl or 0,
        subs=results or None,
        ping=ping,
        pong=bool(ping) and not session.unidirectional,
        session=session.session_id,
        node=node.id if session.transport.emulation else "",
        data=Raw(reply_data) if reply_data else NO_DATA,
    )
    if session.unidirectional:
        session.send(b'{"connect":%s}' % encode(connect_result))
    else:
        session.send(session.codec.encode_reply(command_id, "connect", connect_result))
    for subscription, position in opened:
        await subscriptions.go_live(session, subscription, position)
    return None


async def connect_unidirectional(session: Session, request: ConnectRequest) -> None:
    """Run the one ``connect`` of a unidirectional transport (docs/protocol.md section 8).

    There is no reply to carry an error, so a refusal becomes a disconnect:
    109/110 -> 3005, 111 -> 3013, 103 -> 3507, any other error -> 3004; a
    disconnect raised by connect (3500, 3501...) is sent as it is.
    """
    if not session.connecting:
        return
    try:
        await connect(session, 0, request)
    except ReplyError as exc:
        session.close(
            _UNIDIRECTIONAL_CONNECT_ERRORS.get(exc.error.code, DisconnectCode.SERVER_ERROR)
        )
    except DisconnectError as exc:
        session.close(exc.disconnect)
    except Exception:
        log.exception(
            "unidirectional connect from %s failed", session.remote, extra=session.log_fields()
        )
        session.close(DisconnectCode.SERVER_ERROR)


# --------------------------------------------------------------------------- subscriptions


async def subscribe(session: Session, command_id: int, request: SubscribeRequest) -> None:
    node = session.node
    channel = request.channel
    if request.type:  # map subscriptions (docs/protocol.md section 14)
        await maps.subscribe(session, command_id, request, _subscription_token)
        return
    if channel in session.subscriptions:
        raise ReplyError(ErrorCode.ALREADY_SUBSCRIBED)
    if len(session.subscriptions) >= node.config.client_channel_limit:
        raise ReplyError(ErrorCode.LIMIT_EXCEEDED)
    sub_token: SubscriptionToken | None = None
    if request.token:
        sub_token = await _subscription_token(session, request.token, channel, "subscribe")
    grant = await subscriptions.authorize(
        session, channel, server_side=False, sub_token=sub_token, data=bytes(request.data)
    )
    subscription = subscriptions.plan(session, channel, request, grant, server_side=False)
    result, position = await subscriptions.open_subscription(
        session, subscription, request, grant.snapshot
    )
    if session.closed:
        return
    if grant.data:
        result.data = Raw(grant.data)
    session.send(session.codec.encode_reply(command_id, "subscribe", result))
    await subscriptions.go_live(session, subscription, position)


async def _subscription_token(
    session: Session, token: str, channel: str, use: str
) -> SubscriptionToken:
    """Verify a subscription token for ``channel`` and this client (docs/protocol.md
    section 6); a token for another channel or user ends the connection (3500)."""
    try:
        claims = await session.node.verify_subscription_token(token)
    except TokenError as exc:
        log.info(
            "client %s: %s token refused: %s",
            session.client_id,
            use,
            exc.reason,
            extra=session.log_fields(method=use, channel=channel),
        )
        raise refuse_token(use, exc) from None
    if (
        claims.channel != channel
        or claims.user != session.user
        or (claims.client and claims.client != session.client_id)
    ):
        log.info(
            "client %s: %s refused: token for another channel/user",
            session.client_id,
            use,
            extra=session.log_fields(
                method=use, channel=channel, code=DisconnectCode.INVALID_TOKEN.code
            ),
        )
        raise DisconnectError(DisconnectCode.INVALID_TOKEN)
    return claims


def unsubscribe(session: Session, command_id: int, request: ChannelRequest) -> bytes:
    subscriptions.unsubscribe(session, request.channel, None)
    return session.codec.encode_reply(command_id, "unsubscribe", EmptyResult())


async def sub_refresh(session: Session, command_id: int, request: SubRefreshRequest) -> bytes:
    channel = request.channel
    subscription = session.subscriptions.get(channel)
    if subscription is None:
        raise ReplyError(ErrorCode.PERMISSION_DENIED)
    if not request.token:
        raise ProtocolViolation("sub_refresh without a token")
    claims = await _subscription_token(session, request.token, channel, "sub_refresh")
    subscription.expire_at = claims.expire_at
    if claims.info:
        subscription.chan_info = claims.info
    subscriptions.schedule_expiry(session, subscription)
    ttl = subscriptions.subscription_ttl(session, subscription)
    return session.codec.encode_reply(
        command_id, "sub_refresh", SubRefreshResult(expires=ttl is not None, ttl=ttl or 0)
    )


# --------------------------------------------------------------------------- channel reads


async def publish(session: Session, command_id: int, request: PublishRequest) -> bytes:
    """A client publication: the ``on_publish`` handler for the channel (which replaces the
    ``allow_publish_*`` rules and may reshape the data), or the namespace's rules."""
    if request.type:  # a map key (docs/protocol.md section 14)
        return await maps.publish(session, command_id, request)
    channel = request.channel
    node = session.node
    subscription = session.subscriptions.get(channel)
    data = request.data
    if node.hooks.handles("publish", channel):
        options = node.rules.options(channel)
        data = _publication_data(session, data)
        context = session.context(PublishContext, channel=channel)
        reshaped = await node.hooks.publish(context, bytes(data))
        if reshaped is not None:
            data = Raw(reshaped)
    else:
        options = node.rules.check_publish(
            channel, session.user, subscribed=subscription is not None
        )
        data = _publication_data(session, data)
    if data is NO_DATA or not len(data):
        raise ReplyError(ErrorCode.BAD_REQUEST)
    publication = Publication(data=data, info=session.channel_info(subscription))
    await session.node.publish_publication(channel, publication, options)
    return session.codec.encode_reply(command_id, "publish", EmptyResult())


def _publication_data(session: Session, data: Raw) -> Raw:
    """A client's publication ``data``: present, and JSON text (a Protobuf client's bytes
    must be, docs/protocol.md "Protobuf"); 107 otherwise."""
    if data is NO_DATA or not len(data):
        raise ReplyError(ErrorCode.BAD_REQUEST)
    checked = session.codec.client_payload(data)
    if checked is None:
        raise ReplyError(ErrorCode.BAD_REQUEST)
    return checked


async def presence(session: Session, command_id: int, request: ChannelRequest) -> bytes:
    channel = request.channel
    session.node.rules.check_presence(
        channel, session.user, subscribed=channel in session.subscriptions
    )
    entries = await session.node.presence_of(channel)
    return session.codec.encode_reply(command_id, "presence", PresenceResult(entries))


async def presence_stats(session: Session, command_id: int, request: ChannelRequest) -> bytes:
    channel = request.channel
    session.node.rules.check_presence(
        channel, session.user, subscribed=channel in session.subscriptions
    )
    clients, users = await session.node.presence_stats(channel)
    return session.codec.encode_reply(
        command_id, "presence_stats", PresenceStatsResult(clients, users)
    )


async def history(session: Session, command_id: int, request: HistoryRequest) -> bytes:
    channel = request.channel
    options = session.node.rules.check_history(
        channel, session.user, subscribed=channel in session.subscriptions
    )
    since = request.since
    publications, top = await session.node.read_history(
        channel,
        options,
        limit=request.limit,
        since=StreamPosition(since.offset, since.epoch) if since is not None else None,
        reverse=request.reverse,
    )
    return session.codec.encode_reply(
        command_id, "history", HistoryResult(publications, top.epoch, top.offset)
    )


# --------------------------------------------------------------------------- messages, RPC


async def send(session: Session, request: SendRequest) -> None:
    """``send`` has no reply (docs/protocol.md section 2); ``on_message`` receives it."""
    hooks = session.node.hooks
    if hooks.handles("message"):
        try:
            await hooks.message(session.context(MessageContext), bytes(request.data))
        except ReplyError as exc:  # nobody to answer: the handler's refusal is only logged
            log.info(
                "client %s: message refused: %d",
                session.client_id,
                exc.error.code,
                extra=session.log_fields(method="send", code=exc.error.code),
            )


async def rpc(session: Session, command_id: int, request: RPCRequest) -> bytes:
    """An RPC: 108 without any RPC handler (as Centrifugo without a proxy), 104 for a
    method nobody handles, else the handler's result."""
    hooks = session.node.hooks
    if not hooks.has_rpc:
        raise ReplyError(ErrorCode.NOT_AVAILABLE)
    method = request.method
    if not hooks.handles("rpc", method):
        raise ReplyError(ErrorCode.METHOD_NOT_FOUND)
    result = await hooks.rpc(session.context(RPCContext, method=method), bytes(request.data))
    return session.codec.encode_reply(command_id, "rpc", RPCResult(raw(result)))


async def refresh(session: Session, command_id: int, request: RefreshRequest) -> bytes:
    try:
        claims = await session.node.verify_connect_token(request.token)
    except TokenError as exc:
        log.info(
            "client %s: refresh refused: %s",
            session.client_id,
            exc.reason,
            extra=session.log_fields(method="refresh"),
        )
        raise refuse_token("refresh", exc) from None
    if claims.user != session.user:
        log.info(
            "client %s: refresh token for another user",
            session.client_id,
            extra=session.log_fields(method="refresh", code=DisconnectCode.INVALID_TOKEN.code),
        )
        raise DisconnectError(DisconnectCode.INVALID_TOKEN)
    session.expire_at = claims.expire_at
    if claims.info:
        session.conn_info = claims.info
    session.schedule_expiry()
    ttl = session.ttl()
    return session.codec.encode_reply(
        command_id,
        "refresh",
        RefreshResult(
            client=session.client_id,
            version=session.node.version,
            expires=ttl is not None,
            ttl=ttl or 0,
        ),
    )
