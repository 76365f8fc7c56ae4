"""One node runs a loop, however many processes serve the application: a leader lock.

Every process of ``tidings serve ... --broker redis://...`` (and every worker of
``--workers N``) imports the application, so each would start the game loop.
:func:`run_as_leader` makes them take turns: each asks for a lock in Redis
(``SET key token NX PX ttl``); the one that holds it runs the loop and renews
the lock every ``ttl / 3``; the others ask again every second. When the leader
dies, its lock expires and another process takes over within ``ttl`` plus a
second. A leader that cannot renew (Redis unreachable, the lock lost) stops its
loop before its lock can have expired, so two loops never publish at once for
longer than a renewal's round trip.

With the in-memory broker there is one process, which always leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

log = logging.getLogger("examples.leader")

RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Lock(Protocol):
    async def acquire(self) -> bool: ...

    async def renew(self) -> bool: ...

    async def release(self) -> None: ...

    async def close(self) -> None: ...


class LocalLock:
    """The in-memory broker's lock: one process, always the leader."""

    async def acquire(self) -> bool:
        return True

    async def renew(self) -> bool:
        return True

    async def release(self) -> None:
        pass

    async def close(self) -> None:
        pass


class RedisLock:
    """A lock with a lease in Redis, held by a random token (so only its holder renews it)."""

    def __init__(self, url: str, key: str, ttl: float) -> None:
        import redis.asyncio

        self.redis: Any = redis.asyncio.Redis.from_url(url, socket_timeout=ttl / 3)
        self.key = key
        self.ttl_ms = int(ttl * 1000)
        self.token = secrets.token_hex(8)

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def renew(self) -> bool:
        return bool(await self.redis.eval(RENEW, 1, self.key, self.token, self.ttl_ms))

    async def release(self) -> None:
        await self.redis.eval(RELEASE, 1, self.key, self.token)

    async def close(self) -> None:
        await self.redis.aclose()


def lock_for(broker: str, key: str, ttl: float = 3.0) -> Lock:
    """The lock that fits the broker: Redis for ``redis://`` URLs, else one process alone."""
    if broker.startswith(("redis://", "rediss://", "unix://")):
        return RedisLock(broker, key, ttl)
    if broker != "memory":
        raise ValueError(
            f"leader lock: the example handles redis://, rediss:// and unix:// brokers, "
            f"not {broker.split('://')[0]}://"
        )
    return LocalLock()


async def run_as_leader(
    lock: Lock,
    loop: Callable[[], Coroutine[Any, Any, None]],
    *,
    ttl: float = 3.0,
    retry: float = 1.0,
) -> None:
    """Run ``loop()`` whenever this process holds ``lock``; never returns (cancel it to stop).

    The loop is cancelled as soon as a renewal fails or takes so long that the
    lease may have run out.
    """
    try:
        while True:
            try:
                leading = await lock.acquire()
            except Exception as exc:  # Redis down: stay a follower, ask again
                log.warning("leader lock: cannot ask for it: %s", exc)
                leading = False
            if not leading:
                await asyncio.sleep(retry)
                continue
            log.info("leader lock: this process runs the loop")
            task: asyncio.Task[None] = asyncio.create_task(loop())
            try:
                await _hold(lock, task, ttl)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            log.warning("leader lock: lost; this process no longer runs the loop")
            await asyncio.sleep(retry)
    finally:
        with contextlib.suppress(Exception):
            await lock.release()
        await lock.close()


async def _hold(lock: Lock, task: asyncio.Task[None], ttl: float) -> None:
    """Renew every ``ttl / 3`` while ``task`` runs; return when the lease is lost or it ends."""
    renewed_at = time.monotonic()
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=ttl / 3)
        if done:
            if not task.cancelled() and task.exception() is not None:
                log.error("the loop crashed", exc_info=task.exception())
                with contextlib.suppress(Exception):
                    await lock.release()  # let another process (or this one, later) try
            return
        try:
            held = await lock.renew()
        except Exception as exc:
            log.warning("leader lock: cannot renew: %s", exc)
            held = False
        now = time.monotonic()
        if not held or now - renewed_at > ttl * 2 / 3:
            return
        renewed_at = now
