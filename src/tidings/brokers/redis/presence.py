"""Presence over Redis: who is in a channel, across every node.

Per channel a hash of ``ClientInfo`` JSON, a hash of users and a sorted set of
expiry times (keys from :class:`~tidings.brokers.redis.keys.Keys`), pruned by
every script that touches them. Expiry uses the Redis server's clock
(``TIME``), so nodes need not agree on time.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from redis import exceptions as redis_errors

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
from tidings.brokers.redis.scripts import milliseconds
from tidings.protocol.messages import ClientInfo

__all__ = ["RedisPresence"]

_encode = msgspec.json.Encoder().encode
_decode_client_info = msgspec.json.Decoder(ClientInfo).decode


class RedisPresence:
    """A :class:`~tidings.brokers.base.PresenceStore` over Redis (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tidings",
        timeout: float = DEFAULT_TIMEOUT,
        round_trips: RoundTrips | None = None,
    ) -> None:
        self._keys = Keys(prefix)
        self._round_trips = round_trips
        self._timeout = timeout
        self._connector = Connector(parse_redis_url(url), timeout, f"{prefix}.presence")
        self._client = self._connector.command_client()

    async def add_presence(
        self, channel: str, client_id: str, info: ClientInfo, ttl: float
    ) -> None:
        args: list[str | bytes] = [client_id, _encode(info), info.user, milliseconds(ttl)]
        await bounded(
            "add presence",
            self._timeout,
            scripts.PRESENCE_ADD(self._client, self._keys.presence(channel), args),
            self._round_trips,
        )

    async def add_presence_many(
        self, entries: Sequence[tuple[str, str, ClientInfo]], ttl: float
    ) -> None:
        """Add or refresh many ``(channel, client id, info)`` entries in one round trip.

        The same script as :meth:`add_presence`, once per entry, sent as one
        pipeline (on a cluster redis-py splits it by master: one round trip
        each). The Node's periodic refresh uses it, so N entries cost one round
        trip instead of N. Entries whose script was not cached yet are sent
        again with ``EVAL``; any other failure raises.
        """
        if not entries:
            return
        ttl_ms = milliseconds(ttl)
        script = scripts.PRESENCE_ADD

        commands: list[list[str | bytes]] = [
            [*self._keys.presence(channel), client_id, _encode(info), info.user, ttl_ms]
            for channel, client_id, info in entries
        ]

        async def run() -> None:
            pipe = self._client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command("EVALSHA", script.sha, 3, *command)
            results = await pipe.execute(raise_on_error=False)
            retry = [
                commands[i]
                for i, result in enumerate(results)
                if isinstance(result, redis_errors.NoScriptError)
            ]
            if retry:
                pipe = self._client.pipeline(transaction=False)
                for command in retry:
                    pipe.execute_command("EVAL", script.source, 3, *command)
                results = await pipe.execute(raise_on_error=False)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

        await bounded("refresh presence", self._timeout, run(), self._round_trips)

    async def remove_presence(self, channel: str, client_id: str) -> None:
        await bounded(
            "remove presence",
            self._timeout,
            scripts.PRESENCE_REMOVE(self._client, self._keys.presence(channel), [client_id]),
            self._round_trips,
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        flat = await bounded(
            "presence",
            self._timeout,
            scripts.PRESENCE_GET(self._client, self._keys.presence(channel), []),
            self._round_trips,
        )
        return {flat[i].decode(): _decode_client_info(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        clients, users = await bounded(
            "presence stats",
            self._timeout,
            scripts.PRESENCE_STATS(self._client, self._keys.presence(channel), []),
            self._round_trips,
        )
        return int(clients), int(users)

    async def close(self) -> None:
        await close_client(self._client)
        await self._connector.close()
