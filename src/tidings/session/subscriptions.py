"""A session's subscriptions: opening one, going live, leaving, expiring.

A subscribe runs in three steps (docs/protocol.md sections 2, 4 and 7):

1. :func:`authorize` decides whether the client may subscribe, and
   :func:`plan` what the subscription promises (recovery, positioning,
   join/leave pushes), with the namespace's options after a token's ``override``: the
   :class:`Subscription` keeps those **effective** options for its whole life,
   so presence, join/leave and recovery follow the override both ways.
2. :func:`open_subscription` joins the channel on this node (pushes are
   buffered from then on), reads the stream position or the missed
   publications, and adds the presence entry. The caller sends the reply.
3. :func:`go_live` replays what was buffered and delivers live from then on,
   then announces the join.

The server may end a subscription whose subscribe is still between steps 1
and 3 (API ``unsubscribe``, a disconnect): the subscription is dropped at
once, its presence entry never outlives it, and the client, which has no
reply yet, is told after the reply (see :func:`unsubscribe`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from msgspec import Raw

from tidings.auth import SubscriptionOverride, SubscriptionToken, TokenSubscription
from tidings.channels import ChannelOptions, ChannelRules, parse_channel
from tidings.clock import Timer
from tidings.conflation import Conflator
from tidings.errors import (
    BrokerUnavailable,
    DisconnectCode,
    DisconnectError,
    ErrorCode,
    ReplyError,
    Unsubscribe,
    UnsubscribeCode,
)
from tidings.hooks import SubscribeContext
from tidings.protocol.codec import JSON_INPUT_ERRORS, PreparedPush, prepare_publication
from tidings.protocol.messages import (
    NO_DATA,
    StreamPosition,
    SubscribePush,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribePush,
)
from tidings.session import map_presence

if TYPE_CHECKING:
    from tidings.session.connection import Session
    from tidings.session.maps import MapFlow

log = logging.getLogger("tidings.session")

MAX_TTL = 2**32 - 1
"""``ttl`` is a uint32 in the protocol."""

FLAG_REJECT_UNRECOVERABLE = 2
"""Subscribe ``flag`` bit: answer 112 instead of ``recovered: false`` when recovery fails
(the SDKs set it when the app has a ``getState`` to reload from; docs/protocol.md section 7)."""


class Subscription:
    """One channel a session is in, with the options that hold for it."""

    __slots__ = (
        "answered",
        "chan_info",
        "channel",
        "delta",
        "ended_by",
        "expire_at",
        "expiry_handle",
        "join_leave_push",
        "live",
        "map",
        "max_frequency",
        "options",
        "positioned",
        "recoverable",
        "server_refresh",
        "server_side",
    )

    def __init__(self, channel: str, options: ChannelOptions, *, server_side: bool) -> None:
        self.channel = channel
        self.options = options
        """The namespace's options after the token's ``override``."""
        self.server_side = server_side
        self.chan_info = b""
        self.positioned = False
        self.recoverable = False
        self.join_leave_push = False
        self.delta = False
        """Delta compression negotiated: publications carry data as JSON strings (a map
        subscription's state and stream entries too)."""
        self.max_frequency: float | None = None
        """``None``: never conflated. Otherwise conflated by key while the client is slow,
        and always when above 0 (at most that many updates per second per key)."""
        self.expire_at: int | None = None
        self.expiry_handle: Timer | None = None
        self.server_refresh = False
        """``on_sub_refresh`` extends the expiry; the client is not asked for a token."""
        self.answered = False
        """The client has its subscribe reply (or push): from now on it is told of an end."""
        self.live = False
        """Delivering live, and its join announced: its end is announced as a leave."""
        self.ended_by: Unsubscribe | None = None
        """Why the server ended it before it was answered (told right after the answer)."""
        self.map: MapFlow | None = None
        """A map subscription's flow (docs/protocol.md section 14); ``None`` for a stream."""


def effective_options(options: ChannelOptions, override: SubscriptionOverride) -> ChannelOptions:
    """The namespace's options with a token's ``override`` applied (docs/protocol.md
    section 6): each switch the token sets replaces the namespace's value."""
    changes = {
        name: value
        for name in (
            "presence",
            "join_leave",
            "force_push_join_leave",
            "force_recovery",
            "force_positioning",
        )
        if (value := getattr(override, name)) is not None
    }
    return msgspec.structs.replace(options, **changes) if changes else options


# --------------------------------------------------------------------------- subscribe


@dataclass(frozen=True, slots=True)
class Grant:
    """What allowed a subscribe, and what it gives the subscription.

    ``options`` are the namespace's after a token's ``override``; ``chan_info``
    and ``expire_at`` come from a subscription token (or the connection token's
    ``subs`` claim); ``data`` goes into the subscribe reply (or push).
    """

    options: ChannelOptions
    chan_info: bytes = b""
    expire_at: int | None = None
    data: bytes = b""
    server_refresh: bool = False
    """The expiry came from the application, whose ``on_sub_refresh`` extends it."""
    snapshot: Callable[[], Awaitable[bytes]] | None = None
    """Produces ``data`` once the subscription has joined the channel (see open_subscription)."""
    max_frequency: float | None = None
    """The application's rate for this subscriber on a conflating channel (``on_subscribe``)."""


async def authorize(
    session: Session,
    channel: str,
    *,
    server_side: bool,
    sub_token: SubscriptionToken | None = None,
    token_sub: TokenSubscription | None = None,
    data: bytes = b"",
) -> Grant:
    """May the client subscribe, and with what? Every subscription type asks here.

    A valid subscription token, or the server's own initiative, grants on its
    own. Otherwise an ``on_subscribe`` handler for the channel decides (it
    replaces the namespace's ``allow_subscribe_*`` rules; name rules still
    apply), or the namespace's rules do. Raises :class:`ReplyError` (102, 103,
    107, or the handler's code) when the client may not subscribe.
    """
    node = session.node
    rules: ChannelRules = node.rules
    if server_side or sub_token is not None:
        options = rules.options(channel)
    elif node.hooks.handles("subscribe", channel):
        options = rules.options(channel)
        allowed = parse_channel(channel).allowed_users
        if allowed is not None and session.user not in allowed:
            raise ReplyError(ErrorCode.PERMISSION_DENIED)
        context = session.context(SubscribeContext, channel=channel, raw_data=data)
        answer = await node.hooks.subscribe(context)
        if answer is None:
            return Grant(options)
        if answer.override is not None:
            options = effective_options(options, answer.override)
        server_refresh = answer.expire_at is not None and node.hooks.handles("sub_refresh", channel)
        return Grant(
            options,
            answer.info,
            answer.expire_at,
            answer.data,
            server_refresh,
            answer.snapshot,
            answer.max_frequency,
        )
    else:
        options = rules.check_subscribe(channel, session.user, has_token=False)
    if sub_token is not None:
        return Grant(
            effective_options(options, sub_token.override),
            sub_token.info,
            sub_token.expire_at,
            sub_token.data,
        )
    if token_sub is not None:
        return Grant(
            effective_options(options, token_sub.override), token_sub.info, None, token_sub.data
        )
    return Grant(options)


def plan(
    session: Session,
    channel: str,
    request: SubscribeRequest,
    grant: Grant,
    *,
    server_side: bool,
) -> Subscription:
    """Decide what a granted stream subscription promises (recovery, positioning,
    join/leave pushes), from its options and what the client asked. No I/O."""
    options = grant.options
    if options.is_map:  # a map namespace takes map subscriptions only (section 14)
        raise ReplyError(ErrorCode.PERMISSION_DENIED)
    subscription = Subscription(channel, options, server_side=server_side)
    subscription.chan_info = grant.chan_info
    subscription.expire_at = grant.expire_at
    subscription.server_refresh = grant.server_refresh
    history_on = options.history_enabled
    may_read_history = server_side or ChannelRules.may_read_history(
        options, session.user, subscribed=True
    )
    may_read_presence = server_side or ChannelRules.may_read_presence(
        options, session.user, subscribed=True
    )
    subscription.recoverable = history_on and (
        options.force_recovery
        or (request.recoverable and (may_read_history or options.allow_recovery))
        or (server_side and request.recover)
    )
    subscription.positioned = history_on and (
        subscription.recoverable
        or options.force_positioning
        or (request.positioned and (may_read_history or options.allow_positioning))
    )
    subscription.join_leave_push = options.join_leave and (
        options.force_push_join_leave or (request.join_leave and may_read_presence)
    )
    # As in Centrifugo: deltas only to client-side subscriptions that are positioned, so the
    # hub can vouch that each delta's base is the stream's previous publication.
    subscription.delta = (
        not server_side
        and subscription.positioned
        and bool(request.delta)
        and request.delta in options.allowed_delta_types
    )
    if options.conflates:
        if grant.max_frequency is not None:  # the application decided
            subscription.max_frequency = grant.max_frequency
        else:
            subscription.max_frequency = requested_frequency(request, options.max_frequency)
    return subscription


def requested_frequency(request: SubscribeRequest, default: float) -> float:
    """The rate a subscriber to a conflating channel gets, in updates per second per key.

    A client asks in its subscribe ``data``, ``{"max_frequency": N}`` (centrifuge-js:
    the subscription's ``data`` option); anything else there is the application's and
    ignored here. It may ask for less than the namespace's ``max_frequency``, never for
    more; 0 means no limit (docs/protocol.md, "Latest-value conflation").
    """
    asked = 0.0
    if request.data is not NO_DATA and len(request.data):
        try:
            wish = _frequency_decoder.decode(request.data)
        except JSON_INPUT_ERRORS:
            wish = None
        if wish is not None and wish.max_frequency > 0:
            asked = wish.max_frequency
    if not asked:
        return default
    return min(asked, default) if default else asked


class _FrequencyWish(msgspec.Struct):
    max_frequency: float = 0.0


_frequency_decoder = msgspec.json.Decoder(_FrequencyWish)


async def open_subscription(
    session: Session,
    subscription: Subscription,
    request: SubscribeRequest,
    snapshot: Callable[[], Awaitable[bytes]] | None = None,
) -> tuple[SubscribeResult, StreamPosition | None]:
    """Join the channel on this node and read what the reply needs; returns the reply
    and the position it leaves the client at (``None`` when not positioned).

    ``snapshot`` (the application's) runs after the join, while live pushes are
    buffered: what it reads and what follows leave no gap.
    """
    node = session.node
    channel = subscription.channel
    session.subscriptions[channel] = subscription
    try:
        await after_leave(session, channel)
        await node.attach(channel, session)
        result = SubscribeResult()
        position: StreamPosition | None = None
        if subscription.positioned:
            position = await _read_position(session, subscription, request, result)
        if snapshot is not None:
            result.data = Raw(await snapshot())
        if subscription.options.presence and _current(session, subscription):
            info = session.channel_info(subscription)
            await node.add_presence(channel, session, info)
            if not _current(session, subscription):  # ended meanwhile: its leave ran already
                await node.remove_presence(channel, session)
    except BaseException:
        if session.subscriptions.get(channel) is subscription:
            del session.subscriptions[channel]
            node.detach(channel, session)
        raise
    ttl = subscription_ttl(session, subscription)
    if ttl is not None:
        result.expires = True
        result.ttl = ttl
    if subscription.delta:
        result.delta = True
        # Recovered publications go whole (in JSON as strings): deltas between them would
        # be encoded per subscriber, a cost a reconnect storm multiplies.
        whole = session.codec.recovered_for_delta
        result.publications = [whole(p) for p in result.publications]
    return result, position


def _current(session: Session, subscription: Subscription) -> bool:
    return session.subscriptions.get(subscription.channel) is subscription


async def _read_position(
    session: Session,
    subscription: Subscription,
    request: SubscribeRequest,
    result: SubscribeResult,
) -> StreamPosition:
    """Fill the reply's position (and recovered publications); return the client's position."""
    node = session.node
    channel = subscription.channel
    result.positioned = True
    result.recoverable = subscription.recoverable
    if request.recover and subscription.recoverable:
        since = StreamPosition(request.offset, request.epoch or "")
        publications, top, recovered = await node.recover(channel, since)
        if not recovered and request.flag & FLAG_REJECT_UNRECOVERABLE:
            raise ReplyError(ErrorCode.UNRECOVERABLE_POSITION)
        result.was_recovering = True
        result.recovered = recovered
        result.epoch = top.epoch
        if recovered:
            result.publications = publications
            result.offset = request.offset
            last = publications[-1].offset if publications else request.offset
            return StreamPosition(last, top.epoch)
        result.offset = top.offset
        return top
    top = await node.stream_top(channel, subscription.options)
    result.offset = top.offset
    result.epoch = top.epoch
    return top


async def go_live(
    session: Session, subscription: Subscription, position: StreamPosition | None
) -> None:
    """The answer is out: deliver live from ``position`` on, then announce the join."""
    if session.closed:
        return
    subscription.answered = True
    if not _current(session, subscription):
        reason = subscription.ended_by
        if reason is not None:  # the server ended it mid-subscribe: say so after the answer
            push = UnsubscribePush(reason.code, reason.reason)
            session.send_push(subscription.channel, "unsubscribe", push)
        return
    rate = subscription.max_frequency
    session.node.go_live(
        subscription.channel,
        session,
        join_leave=subscription.join_leave_push,
        positioned=subscription.positioned,
        position=position if subscription.positioned else None,
        delta=subscription.delta,
        keyed=subscription.map is not None,
        conflator=new_conflator(session, rate) if rate else None,
    )
    subscription.live = True
    if rate is not None and session.write_paused:
        session.node.conflate(
            subscription.channel, session, new_conflator(session, rate), held=True
        )
    schedule_expiry(session, subscription)
    if subscription.options.join_leave:
        try:
            await session.node.announce_join(
                subscription.channel, session.channel_info(subscription)
            )
        except BrokerUnavailable as exc:  # the subscribe is answered: join is best effort
            log.warning(
                "join of %s in %r not announced: %s",
                session.client_id,
                subscription.channel,
                exc,
                extra=session.log_fields(channel=subscription.channel),
            )
    await map_presence.joined(session, subscription)


# --------------------------------------------------------------------------- conflation


def new_conflator(session: Session, max_frequency: float) -> Conflator[PreparedPush]:
    """A conflator on the node's clock (the hub's drain timers read the same one)."""
    return Conflator(max_frequency=max_frequency or None, clock=session.node.clock.monotonic)


def hold_conflating(session: Session) -> bool:
    """The client stopped reading: its conflating subscriptions keep the latest value per
    key instead of queueing every publication. ``True`` when it has subscriptions and every
    one conflates (nothing then grows without bound while the client is slow)."""
    conflating = plain = 0
    node = session.node
    for subscription in list(session.subscriptions.values()):
        rate = subscription.max_frequency
        if rate is None:
            plain += 1
            continue
        conflating += 1
        if subscription.live:
            node.conflate(subscription.channel, session, new_conflator(session, rate), held=True)
    return conflating > 0 and not plain


def release_conflating(session: Session) -> None:
    """The client reads again: write what its conflating subscriptions kept, until its
    connection is full again (then the rest stays held)."""
    for subscription in list(session.subscriptions.values()):
        if session.write_paused or session.closed:
            return
        if subscription.max_frequency is not None and subscription.live:
            session.node.release(subscription.channel, session)


async def server_subscribe(
    session: Session,
    channel: str,
    *,
    info: bytes = b"",
    data: bytes = b"",
    since: StreamPosition | None = None,
) -> None:
    """Subscribe on the server's initiative (API ``subscribe``): a subscribe push, no reply."""
    if not session.connected or channel in session.subscriptions:
        return
    request = SubscribeRequest(channel=channel)
    if since is not None:
        request = SubscribeRequest(
            channel=channel, recover=True, offset=since.offset, epoch=since.epoch
        )
    token_sub = TokenSubscription(info=info, data=data)
    try:
        grant = await authorize(session, channel, server_side=True, token_sub=token_sub)
        subscription = plan(session, channel, request, grant, server_side=True)
        result, position = await open_subscription(session, subscription, request)
    except (ReplyError, BrokerUnavailable) as exc:
        log.info(
            "server subscribe of %s to %r failed: %s",
            session.client_id,
            channel,
            exc,
            extra=session.log_fields(channel=channel),
        )
        return
    if session.closed:
        return
    session.send_push(
        channel,
        "subscribe",
        SubscribePush(
            recoverable=result.recoverable,
            epoch=result.epoch,
            offset=result.offset,
            positioned=result.positioned,
            data=Raw(data) if data else result.data,
        ),
    )
    # A subscribe push has no room for publications: recovered ones follow it as
    # ordinary pub pushes, in order, before anything live (which the hub dedups).
    for publication in result.publications:
        push = prepare_publication(channel, publication, result.epoch)
        session.send(session.codec.push_document(push, session.wire.envelope))
    await go_live(session, subscription, position)


# --------------------------------------------------------------------------- ending


def unsubscribe(session: Session, channel: str, reason: Unsubscribe | None) -> bool:
    """Leave a channel; with ``reason``, tell the client in an unsubscribe push."""
    subscription = session.subscriptions.pop(channel, None)
    if subscription is None:
        return False
    if subscription.expiry_handle is not None:
        subscription.expiry_handle.cancel()
    session.node.detach(channel, session)
    if not subscription.answered:
        # Its subscribe is still in progress: the client has no answer yet, so a push
        # now would come before it. The subscribe sends it after its answer instead.
        subscription.ended_by = reason
    elif reason is not None:
        session.send_push(channel, "unsubscribe", UnsubscribePush(reason.code, reason.reason))
    task = session.node.spawn(announce_leave(session, subscription))
    leaving = session.leaving
    if leaving is None:
        leaving = session.leaving = {}
    leaving[channel] = task
    task.add_done_callback(lambda done: _left(session, channel, done))
    return True


def _left(session: Session, channel: str, task: asyncio.Task[None]) -> None:
    leaving = session.leaving
    if leaving is not None and leaving.get(channel) is task:
        del leaving[channel]
        if not leaving:
            session.leaving = None


async def after_leave(session: Session, channel: str) -> None:
    """Wait for the client's last leave of ``channel`` to finish, if it still runs.

    A leave removes the client's presence entries (keyed by client ID) after the
    unsubscribe, in a task of its own; a quick resubscribe (centrifuge-js' suite
    subscribes and unsubscribes in a loop) would otherwise add its entry first and
    see the old leave remove it while it is subscribed.
    """
    leaving = session.leaving
    task = leaving.get(channel) if leaving is not None else None
    if task is not None and not task.done():
        await asyncio.wait({task})


def insufficient_state(session: Session, channel: str) -> None:
    """Publications were lost for a positioned subscription: make the client recover."""
    subscription = session.subscriptions.get(channel)
    if subscription is None:
        return
    log.info(
        "client %s lost publications in %r: asking it to recover",
        session.client_id,
        channel,
        extra=session.log_fields(channel=channel),
    )
    if subscription.server_side:
        session.close(DisconnectCode.INSUFFICIENT_STATE)
    else:
        unsubscribe(session, channel, UnsubscribeCode.INSUFFICIENT_STATE)


async def announce_leave(session: Session, subscription: Subscription) -> None:
    """Remove the presence entry and announce the leave, as the subscription's options say."""
    node = session.node
    channel = subscription.channel
    options = subscription.options
    try:
        if options.presence:
            await node.remove_presence(channel, session)
        if options.join_leave and subscription.live:
            await node.announce_leave(channel, session.channel_info(subscription))
    except Exception as exc:  # the client is gone; nobody to answer
        log.warning(
            "leave of %s in %r not announced: %s",
            session.client_id,
            channel,
            exc,
            extra=session.log_fields(channel=channel),
        )
    await map_presence.left(session, subscription)


# --------------------------------------------------------------------------- expiry


def subscription_ttl(session: Session, subscription: Subscription) -> int | None:
    """Seconds left (at least 1) for the client to refresh, or ``None`` when it need not:
    the subscription never expires, or the application refreshes it."""
    if subscription.expire_at is None or subscription.server_refresh:
        return None
    return min(MAX_TTL, max(1, int(subscription.expire_at - session.node.clock.time())))


def schedule_expiry(session: Session, subscription: Subscription) -> None:
    if subscription.expiry_handle is not None:
        subscription.expiry_handle.cancel()
        subscription.expiry_handle = None
    if subscription.expire_at is None:
        return
    clock = session.node.clock
    delay = subscription.expire_at - clock.time() + session.node.config.expired_close_delay
    subscription.expiry_handle = clock.call_later(max(0.0, delay), _expired, session, subscription)


def _expired(session: Session, subscription: Subscription) -> None:
    subscription.expiry_handle = None
    if not _current(session, subscription):
        return
    if subscription.server_refresh:
        session.node.spawn(_refresh_by_application(session, subscription))
        return
    _end_expired(session, subscription)


async def _refresh_by_application(session: Session, subscription: Subscription) -> None:
    """``on_sub_refresh`` extends an expiry the application set, or the subscription ends."""
    context = session.context(SubscribeContext, channel=subscription.channel)
    try:
        answer = await session.node.hooks.sub_refresh(context)
    except DisconnectError as exc:
        session.close(exc.disconnect)
        return
    except ReplyError:
        answer = None
    if not _current(session, subscription):
        return
    clock = session.node.clock
    if answer is None or answer.expire_at is None or answer.expire_at <= clock.time():
        _end_expired(session, subscription)
        return
    if answer.info:
        subscription.chan_info = answer.info
    subscription.expire_at = answer.expire_at
    schedule_expiry(session, subscription)


def _end_expired(session: Session, subscription: Subscription) -> None:
    if subscription.server_side:
        session.close(DisconnectCode.SUBSCRIPTION_EXPIRED)
    else:
        unsubscribe(session, subscription.channel, UnsubscribeCode.EXPIRED)
