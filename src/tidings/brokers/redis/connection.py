"""Connections to Redis: command clients, pub/sub connections and bounded calls.

Every command runs under a timeout (:data:`DEFAULT_TIMEOUT`, 1 s); past it, or
when Redis cannot be reached, the call raises
:class:`~tidings.errors.BrokerUnavailable`. Command clients never retry on
their own: a retry after a lost reply would publish twice. Each bounded call
can be reported to :class:`RoundTrips` (the node's metrics): its time when it
succeeded, its operation when it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from tidings.brokers.redis.address import TLS_OPTIONS, RedisAddress
from tidings.errors import BrokerUnavailable

__all__ = [
    "DEFAULT_TIMEOUT",
    "UNAVAILABLE",
    "Connector",
    "RoundTrips",
    "bounded",
    "close_client",
]

T = TypeVar("T")

DEFAULT_TIMEOUT = 1.0
"""Seconds a command may take before ``BrokerUnavailable``."""

UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # includes BusyLoading, MasterNotFound, auth failures
    redis_errors.TimeoutError,
    redis_errors.ClusterError,  # includes ClusterDown, MasterDown
    redis_errors.RedisClusterException,  # includes SlotNotCovered, "cannot be connected"
    redis_errors.ReadOnlyError,  # a failover in progress
    redis_errors.TryAgainError,
    OSError,
    TimeoutError,  # our own asyncio.timeout
)
"""Failures that mean "Redis is not reachable now", as opposed to a bug."""


_CLIENT_NAME_UNSAFE = re.compile(r"[^!-~]")


COMMAND_CONNECTIONS = 64
"""Connections a node's command client may open to one Redis; more concurrent commands
wait for one (bounded by the broker timeout)."""


class Connector:
    """Makes command clients and pub/sub connections for one :class:`RedisAddress`."""

    def __init__(self, address: RedisAddress, timeout: float, client_name: str) -> None:
        self.address = address
        self.timeout = timeout
        self.client_name = _CLIENT_NAME_UNSAFE.sub("_", client_name)
        self._sentinel: Sentinel | None = None
        self._pubsub_pool: ConnectionPool | None = None

    def _common(self) -> dict[str, Any]:
        address = self.address
        options: dict[str, Any] = {
            "protocol": 2,
            "socket_connect_timeout": self.timeout,
            "socket_keepalive": True,
        }
        if address.kind != "standalone":
            options["username"] = address.username
            options["password"] = address.password
            for name, value in address.options:
                if name in TLS_OPTIONS:
                    options[name] = value
        return options

    def command_client(self) -> Redis | RedisCluster:
        """The client for commands: bounded socket timeouts, no client-side retries."""
        address = self.address
        options = self._common()
        options["socket_timeout"] = self.timeout
        if address.kind == "cluster":
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in address.hosts],
                ssl=address.tls,
                **options,
            )
        options["retry"] = Retry(NoBackoff(), 0)
        client: Redis
        if address.kind == "sentinel":
            client = self._sentinel_client().master_for(
                address.service, redis_class=Redis, **options
            )
        else:
            # A burst of concurrent commands (an application publishing hundreds of
            # channels at once) waits for a free connection, up to the timeout, instead
            # of failing at the pool's limit.
            pool = BlockingConnectionPool.from_url(
                address.url, max_connections=COMMAND_CONNECTIONS, timeout=self.timeout, **options
            )
            client = Redis(connection_pool=pool)
        return client

    def _sentinel_client(self) -> Sentinel:
        if self._sentinel is None:
            address = self.address
            extra = dict(address.options)
            sentinel_options = {
                "socket_timeout": self.timeout,
                "socket_connect_timeout": self.timeout,
                "username": extra.get("sentinel_username"),
                "password": extra.get("sentinel_password"),
            }
            common = self._common()
            if address.tls:
                common["ssl"] = True
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(address.hosts), sentinel_kwargs=sentinel_options, db=address.db, **common
            )
        return self._sentinel

    def pubsub_connection(self, host: str = "", port: int = 0) -> Connection:
        """A fresh, unconnected pub/sub connection (reads block; liveness is pinged)."""
        address = self.address
        options = self._common()
        options["socket_timeout"] = None
        options["client_name"] = self.client_name
        if address.kind == "cluster":
            connection_class = SSLConnection if address.tls else Connection
            return connection_class(host=host, port=port, **options)
        if self._pubsub_pool is None:
            if address.kind == "sentinel":
                client = self._sentinel_client().master_for(
                    address.service, redis_class=Redis, **options
                )
                self._pubsub_pool = client.connection_pool
            else:
                self._pubsub_pool = ConnectionPool.from_url(address.url, **options)
        connection: Connection = self._pubsub_pool.make_connection()
        return connection

    async def close(self) -> None:
        """Close what the connector itself holds: sentinel clients, the pub/sub pool."""
        with contextlib.suppress(*UNAVAILABLE):
            if self._pubsub_pool is not None:
                await self._pubsub_pool.disconnect()
            if self._sentinel is not None:
                for client in self._sentinel.sentinels:
                    await close_client(client)


@dataclass(frozen=True, slots=True)
class RoundTrips:
    """Where bounded calls are reported: ``succeeded(operation, seconds)``,
    ``failed(operation)``; operations are the calls' names with ``_`` for spaces."""

    succeeded: Callable[[str, float], None]
    failed: Callable[[str], None]


async def bounded(
    what: str, seconds: float, call: Awaitable[T], round_trips: RoundTrips | None = None
) -> T:
    """Await ``call`` for at most ``seconds``; unreachable Redis -> BrokerUnavailable."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            result = await call
    except UNAVAILABLE as exc:
        if round_trips is not None:
            round_trips.failed(what.replace(" ", "_"))
        raise BrokerUnavailable(f"redis {what} failed: {type(exc).__name__}: {exc}") from exc
    if round_trips is not None:
        round_trips.succeeded(what.replace(" ", "_"), time.perf_counter() - started)
    return result


async def close_client(client: Redis | RedisCluster) -> None:
    close = getattr(client, "aclose", None) or client.close
    with contextlib.suppress(*UNAVAILABLE):
        await close()
