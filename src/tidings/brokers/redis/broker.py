"""The Redis broker: publications, join/leave and control between nodes, and the streams.

What it guarantees, beyond the contracts in :mod:`tidings.brokers.base`:

* **One Lua step per publication.** ``publish`` is a single ``EVALSHA`` of
  ``lua/publish.lua``: the script checks the idempotency key, creates the epoch
  if the channel's meta hash is missing, ``HINCRBY``s the top offset, ``XADD``s
  the publication to the channel's stream (exact ``MAXLEN`` trim, expired head
  trimmed), refreshes the TTLs and ``PUBLISH``es (``SPUBLISH`` on a cluster)
  the encoded publication. Redis runs a script alone, so offsets are unique,
  contiguous and published in offset order; one pub/sub connection per Redis
  server delivers them in that order.
* **Epochs.** The epoch lives in the meta hash next to the top offset. Whatever
  loses that hash (restart without persistence, ``FLUSHDB``, ``meta_ttl``
  expiry) makes the next publication or history read start a new epoch at
  offset 0 and drop any stale items, so a client that recovers from the old
  epoch is told ``recovered: false``, never handed a silent gap.
* **Interest.** The broker subscribes in Redis only to channels the Node asked
  for (reference-counted), plus one node-wide control channel. When a pub/sub
  link comes back after a failure it subscribes everything again and then
  calls the handler's ``handle_resubscribed(channels)``: the channels listed
  may have missed publications.
* **Bounded waits.** Every call runs under ``timeout`` seconds; past it the
  call raises :class:`~tidings.errors.BrokerUnavailable`. Publications are
  never retried by the client (a retry after a lost reply would publish twice).

Pub/sub messages carry one kind byte: ``p<offset>,<epoch>,<publication JSON>``
(epoch empty without history; ``d`` instead of ``p`` when the publisher asked for
delta encoding), ``j<ClientInfo JSON>``, ``l<ClientInfo JSON>``;
the control channel carries the Node's bytes unchanged.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from redis.asyncio.cluster import RedisCluster

from tidings.brokers.base import (
    IDEMPOTENCY_WINDOW,
    BrokerEventHandler,
    HistoryOptions,
    new_epoch,
)
from tidings.brokers.redis import scripts
from tidings.brokers.redis.address import parse_redis_url
from tidings.brokers.redis.connection import (
    DEFAULT_TIMEOUT,
    Connector,
    RoundTrips,
    bounded,
    close_client,
)
from tidings.brokers.redis.keys import Keys
from tidings.brokers.redis.pubsub import DEFAULT_PING_INTERVAL, PubSubLink, move_to_owners
from tidings.brokers.redis.scripts import milliseconds
from tidings.errors import BrokerUnavailable
from tidings.protocol.messages import ClientInfo, Publication, StreamPosition

__all__ = ["RedisBroker"]

logger = logging.getLogger("tidings.brokers.redis")

_encode = msgspec.json.Encoder().encode
_decode_publication = msgspec.json.Decoder(Publication).decode
_decode_client_info = msgspec.json.Decoder(ClientInfo).decode


class RedisBroker:
    """Broker and history reader over Redis (see :mod:`tidings.brokers.base`).

    ``timeout`` bounds every call (publish, history, subscribe confirmation);
    ``ping_interval`` is how long a pub/sub connection may stay silent before it
    is pinged (no answer within another interval: reconnect). ``name`` labels
    this node's pub/sub connections in ``CLIENT LIST``; ``round_trips`` is told of every
    bounded call (the node's metrics).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tidings",
        timeout: float = DEFAULT_TIMEOUT,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        idempotency_window: float = IDEMPOTENCY_WINDOW,
        name: str = "",
        round_trips: RoundTrips | None = None,
    ) -> None:
        self._address = parse_redis_url(url)
        self._round_trips = round_trips
        self._keys = Keys(prefix)
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._idempotency_window = str(max(1, round(idempotency_window)))
        self._connector = Connector(
            self._address, timeout, f"{prefix}.{name}.pubsub" if name else f"{prefix}.pubsub"
        )
        self._cluster = self._address.kind == "cluster"
        self._publish_command = "SPUBLISH" if self._cluster else "PUBLISH"
        self._client = self._connector.command_client()
        self._handler: BrokerEventHandler | None = None
        self._interest: dict[str, int] = {}
        self._links: dict[str, PubSubLink] = {}
        self._routes: dict[bytes, PubSubLink] = {}
        self._control = self._keys.control.encode()
        self._started = False
        self._rerouting: asyncio.Lock | None = None

    def set_event_handler(self, handler: BrokerEventHandler) -> None:
        self._handler = handler

    async def start(self) -> None:
        """Subscribe to the control channel; BrokerUnavailable if Redis does not answer in time."""
        if self._started:
            return
        self._started = True
        self._rerouting = asyncio.Lock()
        try:
            if self._cluster:
                await bounded(
                    "cluster discovery",
                    self._timeout,
                    self._cluster_client().initialize(),
                    self._round_trips,
                )
            await self._link_for(self._control).add(self._control, "", self._timeout)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        links = list(self._links.values())
        self._links.clear()
        self._routes.clear()
        self._interest.clear()
        self._started = False
        for link in links:
            await link.close()
        await close_client(self._client)
        await self._connector.close()

    # ----------------------------------------------------------- interest

    async def subscribe(self, channel: str) -> None:
        """Count one more local interest; on the first, subscribe in Redis and wait for it."""
        if not self._started:
            raise RuntimeError("RedisBroker.subscribe before start()")
        count = self._interest.get(channel, 0)
        self._interest[channel] = count + 1
        name = self._keys.pubsub(channel).encode()
        link = self._routes.get(name) or self._link_for(name)
        self._routes[name] = link
        try:
            await link.add(name, channel, self._timeout)
        except BrokerUnavailable:
            left = self._interest.get(channel, 0) - 1
            if left > 0:
                self._interest[channel] = left
            else:
                await self._drop(channel, name)
            raise

    async def unsubscribe(self, channel: str) -> None:
        """Count one less local interest; after the last, unsubscribe in Redis (never raises)."""
        count = self._interest.get(channel, 0)
        if count > 1:
            self._interest[channel] = count - 1
        elif count == 1:
            await self._drop(channel, self._keys.pubsub(channel).encode())

    async def _drop(self, channel: str, name: bytes) -> None:
        self._interest.pop(channel, None)
        link = self._routes.pop(name, None)
        if link is not None:
            await link.remove(name)

    def _cluster_client(self) -> RedisCluster:
        assert isinstance(self._client, RedisCluster)
        return self._client

    def _link_for(self, name: bytes) -> PubSubLink:
        """The pub/sub connection that can hear ``name`` (its slot's master on a cluster)."""
        if self._cluster:
            node = self._cluster_client().get_node_from_key(name.decode())
            if node is None:
                raise BrokerUnavailable("redis cluster: no node serves this channel's slot")
            host, port = str(node.host), int(node.port)
            endpoint = f"{host}:{port}"
        else:
            host, port, endpoint = "", 0, "redis"
        link = self._links.get(endpoint)
        if link is None:
            connector = self._connector
            link = PubSubLink(
                endpoint,
                lambda: connector.pubsub_connection(host, port),
                sharded=self._cluster,
                connect_timeout=self._timeout,
                ping_interval=self._ping_interval,
                on_message=self._dispatch,
                on_resubscribed=self._resubscribed,
                reroute=self._reroute,
            )
            self._links[endpoint] = link
            link.start()
        return link

    async def _reroute(self, link: PubSubLink) -> None:
        """Re-read the cluster's slots and move names whose slot now lives elsewhere."""
        if not self._cluster or self._rerouting is None or not self._started:
            return
        async with self._rerouting:
            client = self._cluster_client()
            try:
                await bounded(
                    "cluster discovery",
                    self._timeout,
                    client.nodes_manager.initialize(),
                    self._round_trips,
                )
            except BrokerUnavailable as exc:
                logger.warning("redis cluster: %s", exc)
                return
            moves = move_to_owners(link, self._link_for, self._routes)
            for target, names in moves.items():
                logger.info("redis cluster: %d channels moved to %s", len(names), target.endpoint)
                target.adopt(names)

    # ----------------------------------------------------------- events

    def _dispatch(self, name: bytes, channel: str, data: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            if name == self._control:
                handler.handle_control(data)
                return
            kind = data[:1]
            if kind == b"p" or kind == b"d":
                head, epoch, body = data[1:].split(b",", 2)
                publication = _decode_publication(body)
                offset = int(head)
                position = None
                if epoch:
                    publication.offset = offset
                    position = StreamPosition(offset, epoch.decode())
                handler.handle_publication(channel, publication, position, delta=kind == b"d")
            elif kind == b"j":
                handler.handle_join(channel, _decode_client_info(data[1:]))
            elif kind == b"l":
                handler.handle_leave(channel, _decode_client_info(data[1:]))
            else:
                logger.warning("redis pub/sub: unknown message kind %r in %r", kind, channel)
        except (ValueError, msgspec.DecodeError) as exc:
            logger.warning("redis pub/sub: undecodable message in %r: %s", channel, exc)
        except Exception:
            logger.exception("redis pub/sub: event handler failed for %r", channel)

    def _resubscribed(self, channels: list[str]) -> None:
        """A link holds its names again: tell the Node about the channels it still wants."""
        handler = self._handler
        channels = [channel for channel in channels if channel in self._interest]
        if handler is None or not channels:
            return
        try:
            handler.handle_resubscribed(channels)
        except Exception:
            logger.exception("redis pub/sub: handle_resubscribed failed")

    # ----------------------------------------------------------- publishing

    async def publish(
        self,
        channel: str,
        publication: Publication,
        *,
        history: HistoryOptions | None = None,
        idempotency_key: str = "",
        delta: bool = False,
    ) -> StreamPosition | None:
        base = self._keys.channel(channel)
        keys = [base + ":meta", base + ":history", base + ":pub"]
        if idempotency_key:
            keys.append(f"{base}:idempotency:{idempotency_key}")
        if publication.offset:
            publication = msgspec.structs.replace(publication, offset=0)
        payload = _encode(publication)
        if history is None:
            args: list[str | bytes] = [payload, "0", "0", "0", "0", ""]
        else:
            args = [
                payload,
                "1",
                str(max(0, history.size)),
                milliseconds(history.ttl),
                milliseconds(history.meta_ttl),
                new_epoch(),
            ]
        args += [self._idempotency_window, self._publish_command, "d" if delta else "p"]
        offset, epoch, _repeated = await bounded(
            "publish", self._timeout, scripts.PUBLISH(self._client, keys, args), self._round_trips
        )
        if not epoch:
            return None
        return StreamPosition(offset, epoch.decode())

    async def _send(self, what: str, name: str, message: bytes) -> None:
        await bounded(
            what,
            self._timeout,
            scripts.SEND(self._client, [name], [message, self._publish_command]),
            self._round_trips,
        )

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._send("join", self._keys.pubsub(channel), b"j" + _encode(info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._send("leave", self._keys.pubsub(channel), b"l" + _encode(info))

    async def publish_control(self, message: bytes) -> None:
        await self._send("control", self._keys.control, message)

    async def ping(self) -> None:
        """A PING round trip, and every pub/sub link up (the control one holding its channel)."""
        if not self._started:
            raise BrokerUnavailable("redis broker not started")
        await bounded("ping", self._timeout, self._client.ping(), self._round_trips)
        for link in self._links.values():
            if not link.connected:
                raise BrokerUnavailable(f"redis pub/sub {link.endpoint}: not connected")
        if not any(link.holds(self._control) for link in self._links.values()):
            raise BrokerUnavailable("redis pub/sub: the control channel is not subscribed")

    # ----------------------------------------------------------- history

    async def history(
        self,
        channel: str,
        *,
        limit: int = 0,
        since: StreamPosition | None = None,
        reverse: bool = False,
        meta_ttl: float | None = None,
    ) -> tuple[list[Publication], StreamPosition]:
        base = self._keys.channel(channel)
        command, start, end = "", "", ""
        if since is None:
            if limit != 0:
                command, start, end = ("XREVRANGE", "+", "-") if reverse else ("XRANGE", "-", "+")
        elif reverse:
            if since.offset > 1:
                command, start, end = "XREVRANGE", str(since.offset - 1), "-"
        else:
            command, start, end = "XRANGE", str(since.offset + 1), "+"
        args = [
            new_epoch(),
            milliseconds(meta_ttl) if meta_ttl is not None else "0",
            command,
            start,
            end,
            str(limit) if limit > 0 else "0",
        ]
        top, epoch, entries = await bounded(
            "history",
            self._timeout,
            scripts.HISTORY(self._client, [base + ":meta", base + ":history"], args),
            self._round_trips,
        )
        publications = []
        for entry_id, fields in entries:
            publication = _decode_publication(fields[1])
            publication.offset = int(entry_id.partition(b"-")[0])
            publications.append(publication)
        return publications, StreamPosition(top, epoch.decode())

    async def remove_history(self, channel: str) -> None:
        key = self._keys.channel(channel) + ":history"
        await bounded(
            "remove history",
            self._timeout,
            self._client.execute_command("DEL", key),
            self._round_trips,
        )
