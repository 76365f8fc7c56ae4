"""A session's map subscriptions: the phased subscribe, client writes, a cleared map.

docs/protocol.md section 14. A map subscribe is a *flow* of requests, one at a
time, that the server steers through three phases; the flow lives on the
channel's :class:`~tidings.session.subscriptions.Subscription` (``.map``),
so it counts toward ``client_channel_limit`` and a second subscribe meets it.

States of one (connection, channel), and what moves them::

    NONE   --STATE, no cursor: authorize, read page 1, freeze the top P0--> STATE
    NONE   --STREAM with recover: authorize (107 if ephemeral)------------> STREAM
    STATE  --more pages: reply phase 2 with a cursor------------------------> STATE
    STATE  --last page, stream mode, P0 + page < top: reply phase 2---------> STREAM
    STATE  --last page, ephemeral or P0 + page >= top----------------------> LIVE
    STREAM --offset + page >= T (the top at the flow's first STREAM)--------> LIVE
    STREAM --otherwise: reply phase 1 with the next page of changes---------> STREAM

Refusals: a type the namespace does not take, or a continuation without a
flow, 103; a new first request while a flow or subscription exists, 105; a
second request while one of the flow runs, 113 (temporary); LIVE or unknown
``phase``, a STREAM request in ephemeral mode, or a tags filter, 107; an epoch
that changed, a stream that no longer reaches the client's offset or more
than ``live_transition_max_publication_limit`` changes to catch up, 112; a
request once the flow is older than ``subscribe_catch_up_timeout``,
disconnect 3008. A refused flow is dropped: the client starts over.

Delta compression (``delta: "fossil"``, docs/protocol.md section 14) is decided at
the first request of a flow: a map with a stream whose namespace allows it. Every
entry the flow sends (state pages, stream pages, the LIVE reply's catch-up) then
carries its ``data`` whole, as a JSON string on JSON, so the client holds each
key's value; the LIVE reply says ``delta: true`` and live changes come as fossil
deltas against the previous value of their key.

Going LIVE, as for a stream subscribe (tidings.session.subscriptions): join
the channel on this node first (pushes are buffered from then on), read the
changes after the flow's position, send the reply, then let the hub replay
what it buffered past the reply's offset. An ephemeral map has no offsets to
merge by, so its flow joins the channel at its first page and every change
seen meanwhile follows the reply as a push (the client applies them in order).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from msgspec import Raw

from tidings.auth import SubscriptionToken
from tidings.brokers.maps import MapEntry
from tidings.errors import (
    DisconnectCode,
    DisconnectError,
    ErrorCode,
    ReplyError,
    UnsubscribeCode,
)
from tidings.hooks import PublishContext
from tidings.map_channels import map_publication
from tidings.maps_config import SUBSCRIPTION_TYPES, MapOptions
from tidings.protocol.maps import (
    LIVE,
    MAP,
    MAP_USERS,
    STATE,
    STREAM,
    MapPublication,
    MapSubscribeResult,
)
from tidings.protocol.messages import (
    NO_DATA,
    EmptyResult,
    PublishRequest,
    StreamPosition,
    SubscribeRequest,
)
from tidings.session import subscriptions
from tidings.session.subscriptions import Subscription

if TYPE_CHECKING:
    from tidings.session.connection import Session

log = logging.getLogger("tidings.session")

FLOW_SWEEP_FACTOR = 2
"""An abandoned flow is dropped after this many catch-up timeouts (a request between one
and this many gets disconnect 3008, one after it 103: there is no flow any more)."""

TokenVerifier = Callable[["Session", str, str, str], Awaitable[SubscriptionToken]]
"""How a subscription token is checked (``commands`` passes its own)."""


class MapFlow:
    """A map subscription: the flow in progress, then (``live``) the live subscription."""

    __slots__ = (
        "busy",
        "data",
        "frozen",
        "kind",
        "live",
        "options",
        "recovering",
        "started",
        "stream_top",
    )

    def __init__(self, kind: int, options: MapOptions, started: float, data: bytes) -> None:
        self.kind = kind
        self.options = options
        self.started = started
        self.data = data
        """The grant's ``data``, for the LIVE reply."""
        self.frozen: StreamPosition | None = None
        """The top when the first state page was read: later pages leave out newer writes."""
        self.stream_top: StreamPosition | None = None
        """The top when the first STREAM request came: the flow goes LIVE within a page of it."""
        self.recovering = False
        self.busy = False
        self.live = False

    @property
    def has_stream(self) -> bool:
        return self.options.has_stream


# --------------------------------------------------------------------------- subscribe


async def subscribe(
    session: Session, command_id: int, request: SubscribeRequest, verify_token: TokenVerifier
) -> None:
    """One request of a map subscribe flow (``type`` 1, 2 or 3); replies itself."""
    channel = request.channel
    if not MAP <= request.type <= MAP_USERS:
        raise ReplyError(ErrorCode.NOT_AVAILABLE)  # shared poll (4) and unknown types
    if request.phase not in (STATE, STREAM) or len(request.tf):
        raise ReplyError(ErrorCode.BAD_REQUEST)
    existing = session.subscriptions.get(channel)
    first_state = request.phase == STATE and not request.cursor
    in_flow = existing is not None and existing.map is not None and not existing.map.live
    first_recovery = request.phase == STREAM and request.recover and not in_flow
    if first_state or first_recovery:
        if existing is not None:
            raise ReplyError(ErrorCode.ALREADY_SUBSCRIBED)
        subscription = await _open_flow(session, request, verify_token)
    else:
        subscription = _continuation(session, request, existing)
    flow = subscription.map
    assert flow is not None
    flow.busy = True
    try:
        if request.phase == STATE:
            await _state_page(session, subscription, flow, command_id, request, first_state)
        else:
            await _stream_page(session, subscription, flow, command_id, request)
    except BaseException:  # refused, failed or cancelled: the client starts over
        _drop_flow(session, subscription)
        raise
    finally:
        flow.busy = False


async def _open_flow(
    session: Session, request: SubscribeRequest, verify_token: TokenVerifier
) -> Subscription:
    """Authorize the first request of a flow and register the flow (106 over the limit)."""
    node = session.node
    channel = request.channel
    options = node.rules.options(channel)
    if SUBSCRIPTION_TYPES.get(options.subscription_type) != request.type:
        raise ReplyError(ErrorCode.PERMISSION_DENIED)
    map_options = options.map
    assert map_options is not None  # a map type's namespace has its table (config validation)
    if request.phase == STREAM and not map_options.has_stream:
        raise ReplyError(ErrorCode.BAD_REQUEST)
    if len(session.subscriptions) >= node.config.client_channel_limit:
        raise ReplyError(ErrorCode.LIMIT_EXCEEDED)
    sub_token: SubscriptionToken | None = None
    if request.token:
        sub_token = await verify_token(session, request.token, channel, "subscribe")
    grant = await subscriptions.authorize(
        session, channel, server_side=False, sub_token=sub_token, data=bytes(request.data)
    )
    if session.closed or channel in session.subscriptions:
        raise ReplyError(ErrorCode.ALREADY_SUBSCRIBED)
    subscription = Subscription(channel, grant.options, server_side=False)
    subscription.chan_info = grant.chan_info
    subscription.expire_at = grant.expire_at
    subscription.server_refresh = grant.server_refresh
    subscription.positioned = subscription.recoverable = map_options.has_stream
    # As for streams: deltas only where offsets let the hub vouch for every key's base (an
    # ephemeral map has none, and its flow joins before its first page is read).
    subscription.delta = (
        map_options.has_stream
        and bool(request.delta)
        and request.delta in grant.options.allowed_delta_types
    )
    if grant.options.conflates:  # on by default for maps: the latest of each key when slow
        if grant.max_frequency is not None:
            subscription.max_frequency = grant.max_frequency
        else:
            subscription.max_frequency = subscriptions.requested_frequency(
                request, grant.options.max_frequency
            )
    # The grant's options may come from a token override; the map table stays the namespace's.
    flow = MapFlow(request.type, map_options, node.clock.monotonic(), grant.data)
    flow.recovering = request.phase == STREAM
    subscription.map = flow
    session.subscriptions[channel] = subscription
    timeout = map_options.catch_up_timeout
    if timeout is not None:
        # The flow's sweep shares the slot of the subscription's expiry timer: both are
        # cancelled when the subscription ends, and going live replaces one with the other.
        subscription.expiry_handle = node.clock.call_later(
            timeout * FLOW_SWEEP_FACTOR, _sweep, session, subscription
        )
    return subscription


def _continuation(
    session: Session, request: SubscribeRequest, existing: Subscription | None
) -> Subscription:
    """The flow a later request continues: 103 without one, 113 while busy, 3008 when late."""
    flow = existing.map if existing is not None else None
    if existing is None or flow is None or flow.live or flow.kind != request.type:
        raise ReplyError(ErrorCode.PERMISSION_DENIED)
    if flow.busy:
        raise ReplyError(ErrorCode.CONCURRENT_PAGINATION)
    timeout = flow.options.catch_up_timeout
    if timeout is not None and session.node.clock.monotonic() - flow.started > timeout:
        log.info(
            "client %s: map subscribe to %r took over %s s",
            session.client_id,
            existing.channel,
            timeout,
        )
        raise DisconnectError(DisconnectCode.SLOW)
    if request.phase == STATE and flow.frozen is None:
        raise ReplyError(ErrorCode.PERMISSION_DENIED)  # a state page of a recovery flow
    if request.phase == STREAM and not flow.has_stream:
        raise ReplyError(ErrorCode.BAD_REQUEST)
    return existing


def _sweep(session: Session, subscription: Subscription) -> None:
    """An abandoned flow: drop it, so it no longer counts or holds a hub slot."""
    subscription.expiry_handle = None
    flow = subscription.map
    if flow is not None and not flow.live and not flow.busy:
        log.info(
            "client %s: map subscribe to %r abandoned", session.client_id, subscription.channel
        )
        _drop_flow(session, subscription)


def _drop_flow(session: Session, subscription: Subscription) -> None:
    """End a flow that will not go live (refused, failed or abandoned)."""
    flow = subscription.map
    if flow is None or flow.live:
        return
    if session.subscriptions.get(subscription.channel) is subscription:
        del session.subscriptions[subscription.channel]
    if subscription.expiry_handle is not None:
        subscription.expiry_handle.cancel()
        subscription.expiry_handle = None
    session.node.detach(subscription.channel, session)


# --------------------------------------------------------------------------- phases


async def _state_page(
    session: Session,
    subscription: Subscription,
    flow: MapFlow,
    command_id: int,
    request: SubscribeRequest,
    first: bool,
) -> None:
    node = session.node
    channel = subscription.channel
    page_size = flow.options.page_size(request.limit)
    if first:
        if not flow.has_stream:
            await node.attach(channel, session)  # no offsets: every change from now is kept
        page = await node.maps.read_state(channel, limit=page_size)
        flow.frozen = page.position
    else:
        frozen = flow.frozen
        assert frozen is not None
        if request.epoch and request.epoch != frozen.epoch:
            raise ReplyError(ErrorCode.UNRECOVERABLE_POSITION)
        page = await node.maps.read_state(
            channel, limit=page_size, cursor=request.cursor, revision=frozen
        )
    frozen = flow.frozen
    assert frozen is not None
    entries = page.entries
    if page.cursor:
        reply = MapSubscribeResult(
            MAP,
            phase=STATE,
            cursor=page.cursor,
            epoch=frozen.epoch,
            offset=frozen.offset,
            state=_entries(session, subscription, entries),
        )
        session.send(session.codec.encode_reply(command_id, "subscribe", reply))
        return
    if not flow.has_stream or frozen.offset + page_size >= page.position.offset:
        await _go_live(session, subscription, flow, command_id, since=frozen, state=entries)
        return
    # Far behind the top already: the client reads the stream from the frozen top first.
    reply = MapSubscribeResult(
        MAP,
        phase=STATE,
        epoch=frozen.epoch,
        offset=frozen.offset,
        state=_entries(session, subscription, entries),
    )
    session.send(session.codec.encode_reply(command_id, "subscribe", reply))


async def _stream_page(
    session: Session,
    subscription: Subscription,
    flow: MapFlow,
    command_id: int,
    request: SubscribeRequest,
) -> None:
    maps = session.node.maps
    channel = subscription.channel
    page_size = flow.options.page_size(request.limit)
    known = flow.frozen or flow.stream_top
    epoch = request.epoch or ""
    if known is not None and epoch and epoch != known.epoch:
        raise ReplyError(ErrorCode.UNRECOVERABLE_POSITION)
    since = StreamPosition(request.offset, epoch or (known.epoch if known else ""))
    if flow.stream_top is None:
        # The target: the flow goes LIVE once within a page of it (112 if since is gone).
        flow.stream_top = (await maps.read_stream(channel, limit=0, since=since)).position
    top = flow.stream_top
    if since.offset + page_size >= top.offset:
        await _go_live(session, subscription, flow, command_id, since=since, state=[])
        return
    stream = await maps.read_stream(channel, limit=page_size, since=since)
    changes = stream.changes
    if not changes:  # nothing between since and the target after all
        await _go_live(session, subscription, flow, command_id, since=since, state=[])
        return
    reply = MapSubscribeResult(
        MAP,
        phase=STREAM,
        epoch=stream.position.epoch,
        offset=changes[-1].offset,
        publications=_entries(session, subscription, changes),
    )
    session.send(session.codec.encode_reply(command_id, "subscribe", reply))


async def _go_live(
    session: Session,
    subscription: Subscription,
    flow: MapFlow,
    command_id: int,
    *,
    since: StreamPosition,
    state: list[MapEntry],
) -> None:
    """Join the channel, catch up from ``since``, reply LIVE, then deliver live."""
    node = session.node
    channel = subscription.channel
    await subscriptions.after_leave(session, channel)  # its presence entries come after
    reply = MapSubscribeResult(
        MAP, phase=LIVE, state=_entries(session, subscription, state), delta=subscription.delta
    )
    position: StreamPosition | None = None
    if flow.has_stream:
        await node.attach(channel, session)
        limit = flow.options.live_limit
        stream = await node.maps.read_stream(channel, limit=limit + 1, since=since)
        if len(stream.changes) > limit:
            raise ReplyError(ErrorCode.UNRECOVERABLE_POSITION)
        position = stream.position
        reply.epoch = position.epoch
        reply.offset = position.offset
        reply.recoverable = True
        reply.publications = _entries(session, subscription, stream.changes)
        if flow.recovering:
            reply.was_recovering = reply.recovered = True
    else:
        reply.epoch = since.epoch
    if flow.data:
        reply.data = Raw(flow.data)
    if subscription.options.presence and not session.closed:  # as a stream subscribe does
        await node.add_presence(channel, session, session.channel_info(subscription))
        if session.subscriptions.get(channel) is not subscription:  # ended meanwhile
            await node.remove_presence(channel, session)
    ttl = subscriptions.subscription_ttl(session, subscription)
    if ttl is not None:
        reply.expires = True
        reply.ttl = ttl
    if session.closed:
        return
    flow.live = True
    if subscription.expiry_handle is not None:  # the flow's sweep
        subscription.expiry_handle.cancel()
        subscription.expiry_handle = None
    session.send(session.codec.encode_reply(command_id, "subscribe", reply))
    await subscriptions.go_live(session, subscription, position)


def _entries(
    session: Session, subscription: Subscription, entries: list[MapEntry]
) -> list[MapPublication]:
    """Entries as a flow sends them: whole, and for a delta subscription as its codec sends
    whole data to one (JSON: a string the client keeps as the key's delta base)."""
    publications = [map_publication(entry) for entry in entries]
    if subscription.delta:
        whole = session.codec.recovered_for_delta
        publications = [whole(publication) for publication in publications]
    return publications


# --------------------------------------------------------------------------- writes


async def publish(session: Session, command_id: int, request: PublishRequest) -> bytes:
    """``publish`` with ``type: 1``: write a key, or remove it with ``removed: true``.

    103 when the namespace's ``map.allow_publish_for_*`` (``allow_remove_for_*``)
    do not allow it, or ``client_key = "user_id"`` for an anonymous client; 107
    when the channel is not a map, the key is empty, or a write has no data.
    Removing a missing key is a no-op answered like a removal.
    """
    node = session.node
    channel = request.channel
    if request.type != MAP:
        raise ReplyError(ErrorCode.BAD_REQUEST)
    _, options = node.maps.options(channel)
    subscription = session.subscriptions.get(channel)
    subscribed = subscription is not None and subscription.map is not None and subscription.map.live
    handled = node.hooks.handles("publish", channel)  # on_publish replaces the allow_* rules
    if handled:
        allowed = True
    elif request.removed:
        allowed = options.may_remove(session.user, subscribed=subscribed)
    else:
        allowed = options.may_publish(session.user, subscribed=subscribed)
    key = request.key
    if options.client_key == "client_id":
        key = session.client_id
    elif options.client_key == "user_id":
        if not session.user:
            raise ReplyError(ErrorCode.PERMISSION_DENIED)
        key = session.user
    if not allowed:
        raise ReplyError(ErrorCode.PERMISSION_DENIED)
    if not key:
        raise ReplyError(ErrorCode.BAD_REQUEST)
    if request.removed:
        await node.maps.remove(channel, key)
    else:
        data = request.data
        if data is NO_DATA or not len(data):
            raise ReplyError(ErrorCode.BAD_REQUEST)
        value = bytes(data)
        if handled:
            context = session.context(PublishContext, channel=channel, key=key)
            value = await node.hooks.publish(context, value) or value
        node.hooks.check_publication(channel, value)
        await node.maps.publish(channel, key, value, info=session.channel_info(subscription))
    return session.codec.encode_reply(command_id, "publish", EmptyResult())


# --------------------------------------------------------------------------- cleared


def cleared(session: Session, channel: str) -> None:
    """``map_clear`` dropped the channel: a live subscription reloads (unsubscribe 2502,
    which makes centrifuge-js forget its position and start from the state). A flow in
    progress finds the new epoch at its next step (112) and starts over on its own."""
    subscription = session.subscriptions.get(channel)
    if subscription is None or subscription.map is None or not subscription.map.live:
        return
    subscriptions.unsubscribe(session, channel, UnsubscribeCode.STATE_INVALIDATED)
