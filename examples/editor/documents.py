"""Where the editor keeps its documents: Yjs updates merged with pycrdt.

A document is the list of Yjs updates it received, merged into one now and then
(:func:`compact`): the merge of all of them *is* the document, and the state a
newcomer needs is that single update, not the edit history (140 keystrokes
make 3,380 bytes of updates and a 161-byte document). Updates commute and
applying one twice changes nothing (they are a CRDT), so the stores need no
ordering and no de-duplication.

* :class:`MemoryDocuments`: in the process, for the in-memory broker;
* :class:`RedisDocuments`: a Redis list per document, shared by every process
  on the broker's Redis and kept across restarts.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol, cast

from pycrdt import Doc, Text, get_state, get_update, merge_updates

if TYPE_CHECKING:
    from redis.asyncio import Redis

TEXT = "text"
"""The name of the document's ``Y.Text`` (the page binds CodeMirror to it)."""

MERGE_AFTER = 64
"""Updates kept apart before they are merged into one (one per keystroke or so)."""


class DocumentStore(Protocol):
    async def apply(self, name: str, update: bytes) -> None:
        """Add a Yjs update (already checked with :func:`check_update`) to ``name``."""
        ...

    async def state(self, name: str) -> bytes:
        """The whole document as one Yjs update (an empty document if none)."""
        ...

    async def recent(self, limit: int) -> list[str]:
        """The names of the documents edited last, newest first."""
        ...

    async def close(self) -> None: ...


EMPTY = Doc().get_update()


def check_update(update: bytes) -> None:
    """Raise ValueError unless ``update`` decodes as a Yjs (v1) update."""
    get_state(update)


def compact(updates: list[bytes]) -> bytes:
    """All of ``updates`` as one update, as small as pycrdt makes it.

    ``merge_updates`` keeps every keystroke's item; a ``Doc`` squashes them, but
    drops what waits for an update it has not seen (Yjs keeps such items
    "pending"). So: squash through a Doc, and keep the plain merge instead when
    the Doc left any item out.
    """
    if not updates:
        return EMPTY
    merged = updates[0] if len(updates) == 1 else merge_updates(*updates)
    doc: Doc[Text] = Doc()
    doc.apply_update(merged)
    left_out = get_update(merged, doc.get_state())
    return doc.get_update() if left_out[0] == 0 else merged  # 0: no items left out


def first_line(state: bytes, width: int = 60) -> str:
    """The document's first non-empty line: its title in the document list."""
    doc: Doc[Text] = Doc()
    doc.apply_update(state)
    text = str(doc.get(TEXT, type=Text))
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line[:width]


class MemoryDocuments:
    """Documents in this process (the in-memory broker: one process)."""

    def __init__(self) -> None:
        self._updates: dict[str, list[bytes]] = {}

    async def apply(self, name: str, update: bytes) -> None:
        updates = self._updates.pop(name, [])
        updates.append(update)
        if len(updates) > MERGE_AFTER:
            updates = [compact(updates)]
        self._updates[name] = updates  # last edited last

    async def state(self, name: str) -> bytes:
        updates = self._updates.get(name)
        if not updates:
            return EMPTY
        self._updates[name] = [compact(updates)]
        return self._updates[name][0]

    async def recent(self, limit: int) -> list[str]:
        return list(reversed(self._updates))[:limit]

    async def close(self) -> None:
        return None


# Replace the first ``ARGV[1]`` updates of the list by their merge ``ARGV[2]``, unless
# another process merged since they were read (its merge bumped the generation). New
# updates only ever go to the tail, so they are never lost.
MERGE_SCRIPT = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[3] then return 0 end
redis.call('LTRIM', KEYS[1], tonumber(ARGV[1]), -1)
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
"""


class RedisDocuments:
    """Documents in Redis, under ``PREFIX:editor:``: every process sees the same ones.

    ``{name}:updates`` is a list of Yjs updates (RPUSH, atomic with any number of
    writers), ``{name}:generation`` counts merges, ``documents`` is a sorted set of
    names by last edit. The two keys of a document share a hash tag, so the merge
    script also runs on a Redis Cluster.
    """

    def __init__(self, url: str, prefix: str) -> None:
        from redis.asyncio import Redis  # the redis extra: only with the Redis broker

        self.redis: Redis = Redis.from_url(url)
        self.prefix = f"{prefix}:editor"
        self._merge = self.redis.register_script(MERGE_SCRIPT)

    def _keys(self, name: str) -> tuple[str, str]:
        return f"{self.prefix}:{{{name}}}:updates", f"{self.prefix}:{{{name}}}:generation"

    async def apply(self, name: str, update: bytes) -> None:
        updates, _ = self._keys(name)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(updates, update)
            pipe.zadd(f"{self.prefix}:documents", {name: time.time()})
            length, _ = await pipe.execute()
        if length > MERGE_AFTER:
            await self.state(name)  # merges them

    async def state(self, name: str) -> bytes:
        updates_key, generation_key = self._keys(name)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(generation_key)
            pipe.lrange(updates_key, 0, -1)
            generation, updates = await pipe.execute()
        state = compact(updates)
        if len(updates) > 1:
            await self._merge(
                keys=[updates_key, generation_key],
                args=[len(updates), state, generation or b""],
            )
        return state

    async def recent(self, limit: int) -> list[str]:
        names = await self.redis.zrevrange(f"{self.prefix}:documents", 0, limit - 1)
        return [name.decode() for name in cast(list[bytes], names)]

    async def close(self) -> None:
        await self.redis.aclose()
