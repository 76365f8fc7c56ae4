"""The one way a test waits for a condition: poll it until it holds, fail at a deadline.

Never a fixed sleep to let something happen. :func:`eventually` is for tests and
async fixtures; :func:`eventually_blocking` is the same loop for the few places
that run outside the event loop (starting a ``redis-server`` from a session
fixture).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

STEP = 0.01
"""Seconds between two looks at the condition."""


async def eventually(condition: Callable[[], Any], what: str, within: float = 5.0) -> None:
    """Poll a condition (sync or async) until it holds, failing with ``what`` at the deadline."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(STEP)


def eventually_blocking(condition: Callable[[], Any], what: str, within: float = 5.0) -> None:
    """:func:`eventually` for code that runs outside the event loop (it blocks the thread)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        time.sleep(STEP)
