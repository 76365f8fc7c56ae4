"""Latest-value conflation: what a subscriber that cannot take every update gets.

A :class:`Conflator` belongs to one subscriber of one channel. While the
subscriber is slow (its transport's buffer is full) or asks for at most N
updates per second, the hub offers it every publication instead of writing
it, and the conflator keeps **only the latest item of each key**. Its memory
is bounded by the number of keys, never by the update rate: a ticker of 1,000
symbols updating 2,000 times a second holds at most 1,000 items per slow
subscriber, however long it stays slow.

What gets written, and in which order, when the subscriber can take more
(:meth:`Conflator.drain`): every pending key once, with its latest item, in
the order of the keys' **last updates** (oldest first). On a stream with
offsets that is ascending offset order, which keeps a client's recovery
position safe: when the client has applied item *o*, every key whose latest
change is at or below *o* has reached it, and every other key's latest change
lies above *o*, so a reconnect that recovers from *o* misses nothing. Items
superseded in the buffer are never written (their successor is). Draining
everything at once, rather than a few keys at a time, means no key starves
however hot it is.

The rate limit (``max_frequency`` updates per second) is per key, as in
Lightstreamer: drains are at least ``1 / max_frequency`` seconds apart, and a
key appears at most once per drain.

An empty key is a key like any other: publications without one (a channel
with a single current value) conflate to the latest.

Pure data structure: no asyncio, no sockets; the clock is injectable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class Conflator(Generic[Item]):
    """One subscriber's latest item per key, waiting to be written."""

    __slots__ = ("_clock", "_interval", "_last_drain", "_pending", "superseded")

    def __init__(
        self,
        *,
        max_frequency: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_frequency is not None and max_frequency <= 0:
            raise ValueError(f"max_frequency must be above 0 updates/s, got {max_frequency!r}")
        self._clock = clock
        self._interval = 1.0 / max_frequency if max_frequency else 0.0
        self._last_drain = -math.inf
        self._pending: dict[str, Item] = {}
        self.superseded = 0
        """Items replaced before they were written (a measure of what conflation saved)."""

    def __len__(self) -> int:
        """Keys waiting to be written."""
        return len(self._pending)

    def __bool__(self) -> bool:
        return bool(self._pending)

    @property
    def interval(self) -> float:
        """Least seconds between two drains (0: no rate limit)."""
        return self._interval

    def offer(self, key: str, item: Item) -> None:
        """Keep ``item`` as ``key``'s latest; it moves behind every key updated before it."""
        pending = self._pending
        if key in pending:
            del pending[key]  # re-inserted at the end: dicts keep insertion order
            self.superseded += 1
        pending[key] = item

    def due(self) -> float:
        """The clock time from which :meth:`drain` may run (``-inf``: at once)."""
        return self._last_drain + self._interval

    def ready(self) -> bool:
        """Items are waiting and the rate limit allows a drain now."""
        return bool(self._pending) and self._clock() >= self.due()

    def drain(self) -> list[Item]:
        """Every pending key's latest item, oldest update first; empties the buffer.

        The caller checks :meth:`ready` first (or knows the subscriber asked for
        no rate limit); draining early is allowed but counts as the drain.
        """
        items = list(self._pending.values())
        self._pending.clear()
        if items:
            self._last_drain = self._clock()
        return items

    def clear(self) -> None:
        """Forget everything pending (the subscriber left or resubscribes)."""
        self._pending.clear()
