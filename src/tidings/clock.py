"""Time for sessions and the node, injectable so timers can be driven by a test.

A session's timers (stale close, expiry, slow consumer) and clocks (token
TTLs, the command rate limit) all go through one :class:`Clock`. Production
uses :class:`LoopClock` (the event loop's timers, the system's clocks); tests
substitute a clock they advance by hand, so a 25-second expiry takes no time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    """A scheduled callback that can be cancelled (an ``asyncio.TimerHandle``)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float:
        """Unix time in seconds (token ``exp`` and TTLs are measured against it)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (rates, intervals)."""
        ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` after ``delay`` seconds on the event loop."""
        ...


class LoopClock:
    """The running event loop's timers and the system's clocks."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback, *args)
