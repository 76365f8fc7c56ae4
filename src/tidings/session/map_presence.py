"""What a subscription's start and end write into map channels (docs/protocol.md section 14).

* Map presence: a namespace with ``map_clients_presence_channel_prefix`` (or
  ``map_users_...``) keeps one entry per subscribed client (per user) in the
  map channel ``<prefix><channel>``, whatever the subscription's own type.
* ``map.remove_client_on_unsubscribe``: a map namespace removes the key named
  by the client's ID from the channel when the client leaves (the entry a
  client writes under ``map.client_key = "client_id"``, such as its cursor).

Both are best effort once the subscribe is answered: a failure is logged, the
subscription stands (presence entries also expire by their ``key_ttl``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tidings.errors import BrokerUnavailable, ReplyError

if TYPE_CHECKING:
    from tidings.session.connection import Session
    from tidings.session.subscriptions import Subscription

log = logging.getLogger("tidings.session")


async def joined(session: Session, subscription: Subscription) -> None:
    """The subscription went live: add the client's (and user's) presence entries."""
    options = subscription.options
    if not (
        options.map_clients_presence_channel_prefix or options.map_users_presence_channel_prefix
    ):
        return
    try:
        await session.node.maps.presence_join(
            options,
            subscription.channel,
            session.client_id,
            session.channel_info(subscription),
            session,
        )
    except (BrokerUnavailable, ReplyError) as exc:
        log.warning(
            "map presence of %s in %r not written: %s",
            session.client_id,
            subscription.channel,
            exc,
        )


async def left(session: Session, subscription: Subscription) -> None:
    """The subscription ended: remove what its start wrote, and the client's own key."""
    options = subscription.options
    maps = session.node.maps
    try:
        if options.map_clients_presence_channel_prefix or options.map_users_presence_channel_prefix:
            await maps.presence_leave(
                options, subscription.channel, session.client_id, session.user, session
            )
        if (
            options.map is not None
            and options.map.remove_client_on_unsubscribe
            and subscription.live
        ):
            await maps.remove(subscription.channel, session.client_id)
    except (BrokerUnavailable, ReplyError) as exc:
        log.warning(
            "map entries of %s in %r not removed: %s", session.client_id, subscription.channel, exc
        )
