"""Map channels for tests: the namespaces the suites share, and a recording event handler."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import pytest

from tests.conftest import standard_channels
from tidings.brokers.maps import MapEntry
from tidings.channels import ChannelOptions
from tidings.config import ChannelsConfig
from tidings.maps_config import MapOptions
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


def map_namespace(subscription_type: str = "map", **map_options: Any) -> ChannelOptions:
    return ChannelOptions(
        subscription_type=subscription_type,
        allow_subscribe_for_client=True,
        map=MapOptions(**map_options).checked("test", subscription_type),
    )


def map_channels() -> ChannelsConfig:
    """The standard namespaces plus maps of every mode, a cursor map, map presence, and
    fossil delta on a map with a stream (``dmap``, small pages) and an ephemeral one
    (``deph``, where it is never negotiated)."""
    channels = standard_channels()
    channels.namespaces.update(
        {
            "prices": map_namespace(
                mode="recoverable",
                key_ttl=60,
                stream_size=1000,
                allow_publish_for_subscriber=True,
                allow_remove_for_subscriber=True,
            ),
            "eph": map_namespace(mode="ephemeral", key_ttl=30),
            "pmap": msgspec.structs.replace(
                map_namespace(mode="persistent"), presence=True, join_leave=True
            ),
            "tight": map_namespace(
                mode="persistent",
                min_page_size=1,
                default_page_size=10,
                max_page_size=10,
                live_transition_max_publication_limit=5,
                stream_size=20,
            ),
            "dmap": msgspec.structs.replace(
                map_namespace(
                    mode="persistent",
                    min_page_size=1,
                    default_page_size=10,
                    max_page_size=10,
                    stream_size=100,
                ),
                allowed_delta_types=["fossil"],
                delta_publish=True,
            ),
            "deph": msgspec.structs.replace(
                map_namespace(mode="ephemeral", key_ttl=30),
                allowed_delta_types=["fossil"],
                delta_publish=True,
            ),
            "cursors": map_namespace(
                mode="ephemeral",
                key_ttl=30,
                client_key="client_id",
                remove_client_on_unsubscribe=True,
                allow_publish_for_subscriber=True,
            ),
            "game": ChannelOptions(
                allow_subscribe_for_client=True,
                map_clients_presence_channel_prefix="clients:",
                map_users_presence_channel_prefix="users:",
            ),
            "clients": map_namespace("map_clients", mode="recoverable", key_ttl=60),
            "users": map_namespace("map_users", mode="recoverable", key_ttl=60),
        }
    )
    return channels
