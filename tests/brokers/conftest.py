"""One broker conformance suite, parameterised by engine.

The ``engine`` fixture is a factory over the implementations:

* ``memory``: :class:`MemoryBroker` / :class:`MemoryPresence` (a single node);
* ``redis``: :class:`RedisBroker` / :class:`RedisPresence` on the shared Redis at
  ``TIDINGS_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``);
* ``cluster``: the same classes on a private 3-master Redis Cluster that a
  session fixture (``redis_cluster`` in ``tests/conftest.py``) starts from the
  ``redis-server`` binary.

Each test gets a unique key prefix, and its keys are deleted afterwards. Tests
never sleep for a fixed time: they wait on events or poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from tests.support.redis import Cluster, delete_keys
from tidings.brokers.base import BrokerEventHandler
from tidings.brokers.memory import MemoryBroker, MemoryPresence
from tidings.brokers.redis import RedisBroker, RedisPresence
from tidings.protocol.messages import ClientInfo, Publication, StreamPosition

WAIT = 5.0
"""Seconds any awaited condition may take (far above what each needs)."""


class Recorder:
    """A BrokerEventHandler that remembers everything and lets tests wait for it."""

    def __init__(self) -> None:
        self.publications: dict[str, list[tuple[Publication, StreamPosition | None]]] = defaultdict(
            list
        )
        self.joins: dict[str, list[ClientInfo]] = defaultdict(list)
        self.leaves: dict[str, list[ClientInfo]] = defaultdict(list)
        self.controls: list[bytes] = []
        self.resubscribed: list[list[str]] = []
        self.deltas: set[tuple[str, int]] = set()
        """``(channel, offset)`` of the publications delivered with ``delta=True``."""
        self._changed = asyncio.Event()

    def _touch(self) -> None:
        self._changed.set()

    def handle_publication(
        self,
        channel: str,
        publication: Publication,
        position: StreamPosition | None,
        *,
        delta: bool = False,
    ) -> None:
        self.publications[channel].append((publication, position))
        if delta:
            self.deltas.add((channel, publication.offset))
        self._touch()

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.joins[channel].append(info)
        self._touch()

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves[channel].append(info)
        self._touch()

    def handle_control(self, message: bytes) -> None:
        self.controls.append(message)
        self._touch()

    def handle_resubscribed(self, channels: Sequence[str]) -> None:
        self.resubscribed.append(list(channels))
        self._touch()

    def offsets(self, channel: str) -> list[int]:
        return [publication.offset for publication, _ in self.publications[channel]]

    async def wait(self, condition: Callable[[], bool], what: str, within: float = WAIT) -> None:
        """Wait for an event that makes ``condition`` true."""
        try:
            async with asyncio.timeout(within):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"timed out after {within} s waiting for {what}")


class Engine:
    """What a test needs from one implementation. Subclasses fill in the hooks."""

    kind = ""
    multi_node = True
    """Several brokers share traffic (False: each broker is its own world)."""

    def __init__(self) -> None:
        self.prefix = f"tt{uuid.uuid4().hex[:12]}"
        self.brokers: list[Any] = []
        self.stores: list[Any] = []

    async def node(self, name: str = "") -> tuple[Any, Recorder]:
        """A started broker (one "node") with a Recorder as its event handler."""
        broker = self.make_broker(name or f"n{len(self.brokers)}")
        self.brokers.append(broker)
        recorder = Recorder()
        handler: BrokerEventHandler = recorder
        broker.set_event_handler(handler)
        await broker.start()
        return broker, recorder

    async def presence(self) -> Any:
        store = self.make_presence()
        self.stores.append(store)
        return store

    def make_broker(self, name: str) -> Any:
        raise NotImplementedError

    def make_presence(self) -> Any:
        raise NotImplementedError

    def sibling(self, channel: str) -> str:
        """Another channel whose traffic shares ``channel``'s pub/sub connection."""
        return channel + "-sibling"

    async def lose_data(self) -> None:
        """What FLUSHDB does to this engine's keys."""
        raise NotImplementedError

    async def kill_pubsub(self, node_name: str) -> int:
        """Kill a node's pub/sub connections; returns how many were killed."""
        raise NotImplementedError

    async def close(self) -> None:
        for broker in self.brokers:
            await broker.close()
        for store in self.stores:
            await store.close()


class MemoryEngine(Engine):
    kind = "memory"
    multi_node = False

    def make_broker(self, name: str) -> Any:
        return MemoryBroker()

    def make_presence(self) -> Any:
        return MemoryPresence()


class RedisEngine(Engine):
    def __init__(self, kind: str, url: str, admin_urls: list[str], *, may_flush: bool) -> None:
        super().__init__()
        self.kind = kind
        self.url = url
        self.may_flush = may_flush
        self.admin_urls = admin_urls
        self.admins = [Redis.from_url(admin_url) for admin_url in admin_urls]

    def make_broker(self, name: str) -> Any:
        return RedisBroker(self.url, prefix=self.prefix, name=name, ping_interval=1.0)

    def make_presence(self) -> Any:
        return RedisPresence(self.url, prefix=self.prefix)

    def sibling(self, channel: str) -> str:
        if self.kind != "cluster":
            return super().sibling(channel)
        slot = key_slot(f"{self.prefix}:{{{channel}}}:pub".encode())
        for n in range(1_000_000):
            candidate = f"{channel}-{n}"
            if key_slot(f"{self.prefix}:{{{candidate}}}:pub".encode()) == slot:
                return candidate
        raise AssertionError("no sibling channel found")

    async def delete_keys(self) -> None:
        for url in self.admin_urls:
            await delete_keys(url, self.prefix)

    async def lose_data(self) -> None:
        if self.may_flush:
            for admin in self.admins:
                await admin.flushall()
        else:  # the shared database: forget only this test's keys
            await self.delete_keys()

    async def kill_pubsub(self, node_name: str) -> int:
        wanted = f"{self.prefix}.{node_name}.pubsub"
        killed = 0
        for admin in self.admins:
            for client in await admin.client_list(_type="pubsub"):
                if client.get("name") == wanted:
                    killed += int(await admin.execute_command("CLIENT", "KILL", "ID", client["id"]))
        return killed

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.delete_keys()
            for admin in self.admins:
                await admin.aclose()


@contextlib.asynccontextmanager
async def make_engine(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    made: Engine
    if kind == "memory":
        made = MemoryEngine()
    elif kind == "redis":
        url = request.getfixturevalue("shared_redis")
        made = RedisEngine("redis", url, [url], may_flush=False)
    else:
        started: Cluster = request.getfixturevalue("redis_cluster")
        made = RedisEngine(
            "cluster",
            started.url,
            [f"redis://127.0.0.1:{port}/0" for port in started.ports],
            may_flush=True,
        )
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture(params=["memory", "redis", "cluster"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    """Every implementation."""
    async with make_engine(request.param, request) as made:
        yield made


@pytest.fixture(params=["redis", "cluster"])
async def redis_engine(request: pytest.FixtureRequest) -> AsyncIterator[RedisEngine]:
    """The Redis engines only, for what memory has no counterpart of."""
    async with make_engine(request.param, request) as made:
        assert isinstance(made, RedisEngine)
        yield made
