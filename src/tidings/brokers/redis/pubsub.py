"""Pub/sub links: one connection per Redis server, read in order by one task.

A :class:`PubSubLink` holds the names (Redis pub/sub channels) the broker wants
heard on one server: every name on a standalone or Sentinel deployment, the
names whose slot that master serves on a cluster (there with ``SSUBSCRIBE``).
It is a plain redis-py ``Connection`` owned by its reader task, not redis-py's
``PubSub``, so that the link decides when to reconnect and knows which
subscriptions Redis has confirmed.

The link knows nothing of the broker: it is given its settings and three
callbacks (a message arrived; names are subscribed again after a reconnect; the
server no longer serves some names, re-read the cluster's slots).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.connection import Connection

from tidings.brokers.redis.connection import UNAVAILABLE
from tidings.errors import BrokerUnavailable

__all__ = ["DEFAULT_PING_INTERVAL", "RECONNECT_BACKOFF_MAX", "PubSubLink"]

logger = logging.getLogger("tidings.brokers.redis")

DEFAULT_PING_INTERVAL = 5.0
"""Seconds of pub/sub silence before a PING; no answer within as long again = dead."""

RECONNECT_BACKOFF_MAX = 2.0
"""Ceiling of the pause between pub/sub reconnect attempts (the first is immediate)."""

_RECONNECT_ON: tuple[type[BaseException], ...] = (*UNAVAILABLE, redis_errors.RedisError)
"""Failures after which a pub/sub connection starts over."""

OnMessage = Callable[[bytes, str, bytes], None]
"""``(name, channel, data)``: a message on a wanted name (channel "" for the control name)."""

OnResubscribed = Callable[[list[str]], None]
"""The channels of a batch of names Redis has confirmed again (after a reconnect or a move)."""

Reroute = Callable[["PubSubLink"], Coroutine[Any, Any, None]]
"""Re-read where names live and move those this link's server no longer serves."""


class _Batch:
    """Names awaiting their subscribe confirmation before the broker is told."""

    __slots__ = ("channels", "pending")

    def __init__(self, pending: set[bytes], channels: list[str]) -> None:
        self.pending = pending
        self.channels = channels


class PubSubLink:
    """One pub/sub connection to one Redis server and the names it must hold.

    The reader task owns the connection: it connects, subscribes every wanted
    name, reads messages in order and, when the connection fails, starts over.
    ``names`` is the wanted set (name -> channel); a name counts as subscribed
    once Redis has acknowledged every SUBSCRIBE/UNSUBSCRIBE sent for it on this
    connection.
    """

    def __init__(
        self,
        endpoint: str,
        make_connection: Callable[[], Connection],
        *,
        sharded: bool,
        connect_timeout: float,
        ping_interval: float,
        on_message: OnMessage,
        on_resubscribed: OnResubscribed,
        reroute: Reroute,
    ) -> None:
        self.endpoint = endpoint
        self._make_connection = make_connection
        self._sharded = sharded
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._reroute = reroute
        self.names: dict[bytes, str] = {}
        self._confirmed: set[bytes] = set()
        self._inflight: dict[bytes, int] = {}
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._batches: list[_Batch] = []
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected_before = False

    @property
    def connected(self) -> bool:
        """The link's connection is up (it may still be subscribing its names)."""
        return self._conn is not None and self._conn.is_connected

    def holds(self, name: bytes) -> bool:
        """Redis confirmed ``name`` on the current connection."""
        return self.connected and name in self._confirmed

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(), name=f"tidings-redis-pubsub-{self.endpoint}"
            )

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        for work in list(self._tasks):
            work.cancel()
        if task is not None:
            task.cancel()
            # The Redis client may swallow a cancellation that lands in its read: the loops
            # also stop on _closing, and the wait is bounded either way.
            await asyncio.wait({task}, timeout=self._connect_timeout + self._ping_interval)
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(BrokerUnavailable("redis broker closed"))
        self._waiters.clear()

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on its own, keeping a reference until it is done (cancelled on close)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------- wanted names

    async def add(self, name: bytes, channel: str, seconds: float) -> None:
        """Want ``name`` and wait until Redis confirms it (BrokerUnavailable past ``seconds``)."""
        self.names[name] = channel
        if name in self._confirmed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(waiter)
        await self._send(b"SUBSCRIBE", [name])
        try:
            async with asyncio.timeout(seconds):
                await waiter
        except TimeoutError:
            raise BrokerUnavailable(
                f"redis subscribe to {channel or 'control'!r} not confirmed within {seconds} s"
            ) from None
        finally:
            waiters = self._waiters.get(name)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[name]

    def adopt(self, names: dict[bytes, str]) -> None:
        """Take over names from another server (slot moved); the broker hears when they are in."""
        self.names.update(names)
        self._batches.append(_Batch(set(names), [c for c in names.values() if c]))
        for name in names:
            self._confirmed.discard(name)
        if self._conn is not None:
            self._background(self._send(b"SUBSCRIBE", list(names)))

    def hand_over(self, name: bytes) -> None:
        """Forget ``name`` without unsubscribing: its slot moved and another link adopts it."""
        del self.names[name]

    async def remove(self, name: bytes) -> None:
        """Stop wanting ``name``. Never raises: a dead connection forgets it anyway."""
        if self.names.pop(name, None) is None:
            return
        self._confirmed.discard(name)
        for batch in self._batches:
            batch.pending.discard(name)
        self._fire_finished_batches()
        await self._send(b"UNSUBSCRIBE", [name])

    async def _send(self, command: bytes, names: Sequence[bytes]) -> None:
        conn = self._conn
        if conn is None or not names or not conn.is_connected:
            return  # the reader subscribes every wanted name when it (re)connects
        if self._sharded:  # one slot per SSUBSCRIBE: send one command per name
            packed = conn.pack_commands([(b"S" + command, name) for name in names])
        else:
            packed = conn.pack_commands([(command, *names)])
        for name in names:
            self._inflight[name] = self._inflight.get(name, 0) + 1
        try:
            await conn.send_packed_command(packed, check_health=False)
        except UNAVAILABLE as exc:
            logger.debug("redis pub/sub %s: send failed: %r", self.endpoint, exc)

    # ----------------------------------------------------------- reader

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            conn = self._make_connection()
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await conn.connect()  # type: ignore[no-untyped-call]
                self._conn = conn
                self._inflight.clear()
                self._confirmed.clear()
                names = list(self.names)
                if self._connected_before:
                    self._batches = [_Batch(set(names), [c for c in self.names.values() if c])]
                    logger.info(
                        "redis pub/sub %s: reconnected, resubscribing %d channels",
                        self.endpoint,
                        len(names),
                    )
                self._connected_before = True
                failures = 0
                await self._send(b"SUBSCRIBE", names)
                self._fire_finished_batches()
                await self._read(conn)
            except asyncio.CancelledError:
                raise
            except _RECONNECT_ON as exc:
                failures += 1
                logger.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "redis pub/sub %s: connection lost or refused (%s: %s)",
                    self.endpoint,
                    type(exc).__name__,
                    exc,
                )
            finally:
                self._conn = None
                self._confirmed.clear()
                await conn.disconnect()
            if failures > 1:
                await self._reroute(self)
            if failures:
                pause = min(RECONNECT_BACKOFF_MAX, 0.05 * 2 ** (failures - 1))
                await asyncio.sleep(pause * random.uniform(0.5, 1.0))

    async def _read(self, conn: Connection) -> None:
        interval = self._ping_interval
        awaiting_pong = False
        while not self._closing:
            try:
                response = await conn.read_response(timeout=interval, disconnect_on_error=False)
            except redis_errors.ResponseError as exc:
                # A MOVED/CROSSSLOT answer to an SSUBSCRIBE: the topology changed.
                logger.warning("redis pub/sub %s: %s", self.endpoint, exc)
                self._background(self._reroute(self))
                continue
            if response is None:  # silence for one interval
                if awaiting_pong:
                    raise redis_errors.TimeoutError(f"no answer to PING within {interval} s")
                awaiting_pong = True
                await conn.send_packed_command(conn.pack_command(b"PING"), check_health=False)
                continue
            awaiting_pong = False
            self._on_response(response)

    def _on_response(self, response: Any) -> None:
        kind = response[0]
        if kind == b"message" or kind == b"smessage":
            name = response[1]
            channel = self.names.get(name)
            if channel is not None:
                self._on_message(name, channel, response[2])
        elif kind == b"subscribe" or kind == b"ssubscribe":
            self._acknowledged(response[1])
        elif kind == b"unsubscribe" or kind == b"sunsubscribe":
            name = response[1]
            if self._inflight.get(name, 0) == 0 and name in self.names:
                # Redis dropped a sharded subscription whose slot moved away.
                self._confirmed.discard(name)
                self._background(self._reroute(self))
            else:
                self._acknowledged(name)

    def _acknowledged(self, name: bytes) -> None:
        left = self._inflight.get(name, 0) - 1
        if left > 0:
            self._inflight[name] = left
            return
        self._inflight.pop(name, None)
        if name not in self.names:
            return
        self._confirmed.add(name)
        for waiter in self._waiters.pop(name, ()):
            if not waiter.done():
                waiter.set_result(None)
        for batch in self._batches:
            batch.pending.discard(name)
        self._fire_finished_batches()

    def _fire_finished_batches(self) -> None:
        if not self._batches:
            return
        done = [batch for batch in self._batches if not batch.pending]
        if not done:
            return
        self._batches = [batch for batch in self._batches if batch.pending]
        for batch in done:
            self._on_resubscribed(batch.channels)


def move_to_owners(
    link: PubSubLink,
    owner_of: Callable[[bytes], PubSubLink],
    routes: dict[bytes, PubSubLink],
) -> dict[PubSubLink, dict[bytes, str]]:
    """After a cluster's slots moved: hand each of ``link``'s names whose slot now lives
    on another node over to that node's link (``owner_of``, which may raise
    ``BrokerUnavailable``: the name stays), updating ``routes``. Returns what each new
    owner must adopt; the caller adopts (and logs) it."""
    moves: dict[PubSubLink, dict[bytes, str]] = {}
    for name, channel in list(link.names.items()):
        try:
            target = owner_of(name)
        except BrokerUnavailable:
            continue
        if target is not link:
            link.hand_over(name)
            moves.setdefault(target, {})[name] = channel
            if name in routes:
                routes[name] = target
    return moves
