"""A recording map event handler, shared by the map engine suites."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence

import pytest

from tidings.brokers.maps import MapEntry
from tidings.protocol.messages import StreamPosition

WAIT = 5.0
"""Seconds any awaited condition may take (far above what each needs)."""


class MapRecorder:
    """A MapEventHandler that remembers every call and lets tests wait for them."""

    def __init__(self) -> None:
        self.changes: dict[str, list[tuple[MapEntry, StreamPosition, bytes | None]]] = defaultdict(
            list
        )
        self.cleared: list[str] = []
        self.resubscribed: list[list[str]] = []
        self._changed = asyncio.Event()

    def handle_map_change(
        self, channel: str, change: MapEntry, position: StreamPosition, previous: bytes | None
    ) -> None:
        self.changes[channel].append((change, position, previous))
        self._changed.set()

    def handle_map_cleared(self, channel: str) -> None:
        self.cleared.append(channel)
        self._changed.set()

    def handle_map_resubscribed(self, channels: Sequence[str]) -> None:
        self.resubscribed.append(list(channels))
        self._changed.set()

    def offsets(self, channel: str) -> list[int]:
        return [change.offset for change, _, _ in self.changes[channel]]

    def keys(self, channel: str) -> list[tuple[str, bool]]:
        return [(change.key, change.removed) for change, _, _ in self.changes[channel]]

    async def wait(self, condition: Callable[[], bool], what: str, within: float = WAIT) -> None:
        try:
            async with asyncio.timeout(within):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"timed out after {within} s waiting for {what}")
