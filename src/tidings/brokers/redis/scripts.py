"""The Lua scripts of the Redis engine, read once from the ``lua/`` files next to this module.

Each script is a ``.lua`` file; the functions several of them need
(``server_time_ms`` in ``clock.lua``, ``trim_expired``, ``prune``) are files of
their own, placed before a script's body as it names them here. A script runs
by ``EVALSHA``; a server that does not have it yet (``NOSCRIPT``: it restarted,
or ``SCRIPT FLUSH``) gets it by ``EVAL`` once, which also caches it. ``EVAL``,
unlike ``SCRIPT LOAD``, is routed by its keys, so the fallback works unchanged
on a cluster.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

__all__ = [
    "HISTORY",
    "MAP_CLEAR",
    "MAP_EXPIRE",
    "MAP_INDEX_RELEASE",
    "MAP_PUBLISH",
    "MAP_READ_STATE",
    "MAP_READ_STREAM",
    "MAP_REMOVE",
    "MAP_STATS",
    "PRESENCE_ADD",
    "PRESENCE_GET",
    "PRESENCE_REMOVE",
    "PRESENCE_STATS",
    "PUBLISH",
    "SEND",
    "Script",
    "milliseconds",
]


@functools.cache
def _read(name: str) -> str:
    """One file of ``lua/``, read once however many scripts use it."""
    return resources.files("tidings.brokers.redis").joinpath("lua", name).read_text("utf-8")


class Script:
    """One script: its source (the files it uses, then its own) and the SHA1 ``EVALSHA`` names."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, *, uses: Sequence[str] = ()) -> None:
        self.name = name
        self.source = "".join(_read(part) for part in (*uses, name))
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(
        self, client: Redis | RedisCluster, keys: Sequence[str], args: Sequence[str | bytes]
    ) -> Any:
        try:
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            return await client.execute_command("EVAL", self.source, len(keys), *keys, *args)

    def __repr__(self) -> str:
        return f"Script({self.name!r}, sha={self.sha[:12]})"


PUBLISH = Script("publish.lua", uses=("clock.lua", "trim_expired.lua"))
HISTORY = Script("history.lua", uses=("clock.lua", "trim_expired.lua"))
SEND = Script("send.lua")
PRESENCE_ADD = Script("presence_add.lua", uses=("prune_presence.lua", "clock.lua"))
PRESENCE_REMOVE = Script("presence_remove.lua")
PRESENCE_GET = Script("presence_get.lua", uses=("prune_presence.lua", "clock.lua"))
PRESENCE_STATS = Script("presence_stats.lua", uses=("prune_presence.lua", "clock.lua"))

_MAP = ("clock.lua", "map_common.lua")
MAP_PUBLISH = Script("map_publish.lua", uses=_MAP)
MAP_REMOVE = Script("map_remove.lua", uses=_MAP)
MAP_READ_STATE = Script("map_read_state.lua", uses=_MAP)
MAP_READ_STREAM = Script("map_read_stream.lua", uses=_MAP)
MAP_STATS = Script("map_stats.lua", uses=_MAP)
MAP_CLEAR = Script("map_clear.lua", uses=_MAP)
MAP_EXPIRE = Script("map_expire.lua", uses=_MAP)
MAP_INDEX_RELEASE = Script("map_index_release.lua")


def milliseconds(seconds: float) -> str:
    """A duration as the scripts take it: whole milliseconds, never negative."""
    return str(max(0, round(seconds * 1000)))
