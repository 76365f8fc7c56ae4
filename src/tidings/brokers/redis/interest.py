"""A node's interest in Redis pub/sub channels: reference counts, links and cluster moves.

What :class:`~tidings.brokers.redis.broker.RedisBroker` does for its stream
channels, as a part of its own, for the map engine
(:class:`~tidings.brokers.redis.map.RedisMapBroker`), which keeps its own
connections: one :class:`~tidings.brokers.redis.pubsub.PubSubLink` per Redis
server (per cluster master), names routed to the link of their slot, and
names moved when a slot moves. The first interest in a channel subscribes in
Redis and waits for the confirmation; the last one unsubscribes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from tidings.brokers.redis.connection import Connector, bounded
from tidings.brokers.redis.pubsub import OnMessage, OnResubscribed, PubSubLink, move_to_owners
from tidings.errors import BrokerUnavailable

__all__ = ["Interest"]

logger = logging.getLogger("tidings.brokers.redis")


class Interest:
    """Counted interest in channels, each heard on the pub/sub ``name`` the caller gives."""

    def __init__(
        self,
        connector: Connector,
        client: Redis | RedisCluster,
        *,
        timeout: float,
        ping_interval: float,
        on_message: OnMessage,
        on_resubscribed: Callable[[list[str]], None],
    ) -> None:
        self._connector = connector
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._counts: dict[str, int] = {}
        self._links: dict[str, PubSubLink] = {}
        self._routes: dict[bytes, PubSubLink] = {}
        self._rerouting = asyncio.Lock()
        self._closed = False

    def __contains__(self, channel: str) -> bool:
        return channel in self._counts

    async def add(self, channel: str, name: bytes) -> None:
        """One more interest; on the first, subscribe ``name`` and wait for Redis to confirm."""
        self._counts[channel] = self._counts.get(channel, 0) + 1
        link = self._routes.get(name) or self._link_for(name)
        self._routes[name] = link
        try:
            await link.add(name, channel, self._timeout)
        except BrokerUnavailable:
            await self.discard(channel, name)
            raise

    async def discard(self, channel: str, name: bytes) -> None:
        """One less interest; after the last, unsubscribe ``name`` (never raises)."""
        count = self._counts.get(channel, 0)
        if count > 1:
            self._counts[channel] = count - 1
            return
        self._counts.pop(channel, None)
        link = self._routes.pop(name, None)
        if link is not None:
            await link.remove(name)

    async def close(self) -> None:
        self._closed = True
        links = list(self._links.values())
        self._links.clear()
        self._routes.clear()
        self._counts.clear()
        for link in links:
            await link.close()

    def _link_for(self, name: bytes) -> PubSubLink:
        """The pub/sub connection that can hear ``name`` (its slot's master on a cluster)."""
        if isinstance(self._client, RedisCluster):
            node = self._client.get_node_from_key(name.decode())
            if node is None:
                raise BrokerUnavailable("redis cluster: no node serves this channel's slot")
            host, port = str(node.host), int(node.port)
            endpoint = f"{host}:{port}"
        else:
            host, port, endpoint = "", 0, "redis"
        link = self._links.get(endpoint)
        if link is None:
            connector = self._connector
            resubscribed: OnResubscribed = self._resubscribed
            link = PubSubLink(
                endpoint,
                lambda: connector.pubsub_connection(host, port),
                sharded=self._cluster,
                connect_timeout=self._timeout,
                ping_interval=self._ping_interval,
                on_message=self._on_message,
                on_resubscribed=resubscribed,
                reroute=self._reroute,
            )
            self._links[endpoint] = link
            link.start()
        return link

    def _resubscribed(self, channels: list[str]) -> None:
        wanted = [channel for channel in channels if channel in self._counts]
        if wanted:
            self._on_resubscribed(wanted)

    async def _reroute(self, link: PubSubLink) -> None:
        """Re-read the cluster's slots and move names whose slot now lives elsewhere."""
        client = self._client
        if not isinstance(client, RedisCluster) or self._closed:
            return
        async with self._rerouting:
            try:
                await bounded("cluster discovery", self._timeout, client.nodes_manager.initialize())
            except BrokerUnavailable as exc:
                logger.warning("redis cluster: %s", exc)
                return
            moves = move_to_owners(link, self._link_for, self._routes)
            for target, names in moves.items():
                logger.info(
                    "redis cluster: %d map channels moved to %s", len(names), target.endpoint
                )
                target.adopt(names)
