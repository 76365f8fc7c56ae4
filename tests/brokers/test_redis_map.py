"""What only the Redis map engine has: one script per change, one slot per channel, the
cleanup of idle channels on the server's clock, lost data and a dropped pub/sub link.

The contract itself is checked by ``test_map_conformance.py`` (memory, Redis, Cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from tests.support.maps import MapRecorder
from tests.support.redis import Cluster, RedisServer, delete_keys, unique_prefix
from tidings.brokers.maps import MapMode, MapRetention, UnrecoverablePosition
from tidings.brokers.redis import RedisMapBroker
from tidings.brokers.redis.map import EXPIRY_SHARDS

pytestmark = pytest.mark.timeout(60)

PERSISTENT = MapRetention.of(MapMode.PERSISTENT, stream_size=100)


def value(n: object) -> bytes:
    return msgspec.json.encode({"v": n})


class Nodes:
    """Started RedisMapBrokers on one URL and prefix, each with a recorder; cleaned up after."""

    def __init__(self, url: str, admin_urls: list[str]) -> None:
        self.url = url
        self.admin_urls = admin_urls
        self.prefix = unique_prefix("tmap")
        self.brokers: list[RedisMapBroker] = []

    async def node(self, name: str = "", **options: Any) -> tuple[RedisMapBroker, MapRecorder]:
        broker = RedisMapBroker(
            self.url, prefix=self.prefix, name=name or f"n{len(self.brokers)}", **options
        )
        self.brokers.append(broker)
        recorder = MapRecorder()
        broker.set_event_handler(recorder)
        await broker.start()
        return broker, recorder

    async def close(self) -> None:
        for broker in self.brokers:
            await broker.close()
        for url in self.admin_urls:
            await delete_keys(url, self.prefix)


@pytest.fixture
async def nodes(shared_redis: str) -> AsyncIterator[Nodes]:
    made = Nodes(shared_redis, [shared_redis])
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def private(private_redis: RedisServer) -> AsyncIterator[Nodes]:
    made = Nodes(private_redis.url, [private_redis.url])
    try:
        yield made
    finally:
        await made.close()


async def test_each_change_is_one_script_call(private: Nodes) -> None:
    """State, stream and pub/sub in one EVALSHA: the node sends nothing else per change
    (MONITOR shows what clients send; what a script runs is marked "lua")."""
    broker, recorder = await private.node()
    await broker.subscribe("m:atomic")
    await broker.publish("m:atomic", "warm", value(0), retention=PERSISTENT)  # loads the
    await broker.remove("m:atomic", "warm", retention=PERSISTENT)  # scripts first
    admin = Redis.from_url(private.url)
    sent: list[str] = []
    try:
        async with admin.monitor() as monitor:
            await admin.ping()  # the monitor is on before the writes
            reading = asyncio.create_task(_read_monitor(monitor, sent))
            for n in range(10):
                await broker.publish("m:atomic", f"k{n % 3}", value(n), retention=PERSISTENT)
            await broker.remove("m:atomic", "k1", retention=PERSISTENT)
            marker = Redis.from_url(private.url)
            await marker.echo("done")
            await marker.aclose()
            await asyncio.wait_for(reading, 10)
    finally:
        await admin.aclose()
    assert sent == ["EVALSHA"] * 11, sent
    await recorder.wait(lambda: len(recorder.changes["m:atomic"]) == 13, "13 changes")
    assert recorder.offsets("m:atomic") == list(range(1, 14))


async def _read_monitor(monitor: Any, sent: list[str]) -> None:
    """Record the commands clients sent (not those scripts ran) until ``ECHO done``."""
    async for command in monitor.listen():
        if command.get("client_type") == "lua":
            continue
        name = command["command"].split()[0].upper()
        if name == "ECHO":
            return
        if name not in ("PING", "CLIENT", "HELLO", "SELECT", "AUTH"):  # connection set-up
            sent.append(name)


async def test_a_channels_keys_share_one_cluster_slot(redis_cluster: Cluster) -> None:
    made = Nodes(redis_cluster.url, [f"redis://127.0.0.1:{p}/0" for p in redis_cluster.ports])
    try:
        broker, _ = await made.node()
        keep = MapRetention.of(MapMode.RECOVERABLE, key_ttl=60)
        for channel in ("m:{odd}", "m:a%b", "prices:EURUSD"):
            await broker.publish(
                channel, "k", value(1), retention=keep, tags={"t": "x"}, idempotency_key="once"
            )
            await broker.read_state(channel, retention=keep, limit=-1)
        slots: dict[str, set[int]] = {}
        for url in made.admin_urls:
            admin = Redis.from_url(url)
            try:
                async for key in admin.scan_iter(match=f"{made.prefix}:*"):
                    name = key.decode()
                    if "mapexp" in name:
                        continue
                    channel = name[len(made.prefix) + 2 : name.rindex("}:m:")]
                    slots.setdefault(channel, set()).add(key_slot(key))
            finally:
                await admin.aclose()
        assert set(slots) == {"m:{odd%7D", "m:a%25b", "prices:EURUSD"}
        assert all(len(found) == 1 for found in slots.values()), slots
    finally:
        await made.close()


async def test_idle_channels_expire_on_the_servers_clock(nodes: Nodes) -> None:
    """No clock passed: deadlines are Redis's; a node that never touches the channel hears
    the removal, found by another node's cleanup through the expiry index."""
    writer, _ = await nodes.node("writer", cleanup_interval=0)
    _, watcher = await nodes.node("watcher", cleanup_interval=0.05)
    await nodes.brokers[1].subscribe("m:idle")
    keep = MapRetention.of(MapMode.RECOVERABLE, key_ttl=0.3, stream_ttl=60)
    await writer.publish("m:idle", "a", value(1), retention=keep)
    await writer.publish("m:idle", "b", value(2), retention=keep)
    await watcher.wait(lambda: len(watcher.changes["m:idle"]) == 4, "two writes, two expiries")
    assert watcher.keys("m:idle") == [("a", False), ("b", False), ("a", True), ("b", True)]
    assert await writer.stats("m:idle") == 0
    admin = Redis.from_url(nodes.url)
    try:
        for shard in range(EXPIRY_SHARDS):  # nothing left to visit: the index is empty again
            assert await admin.zcard(f"{nodes.prefix}:{{mapexp{shard}}}") == 0
    finally:
        await admin.aclose()


async def test_lost_data_starts_a_new_epoch(nodes: Nodes) -> None:
    broker, _ = await nodes.node()
    first = await broker.publish("m:lost", "a", value(1), retention=PERSISTENT)
    await delete_keys(nodes.url, nodes.prefix)  # what FLUSHDB or an eviction does
    state = await broker.read_state("m:lost", retention=PERSISTENT, limit=-1)
    assert state.entries == [] and state.position.offset == 0
    assert state.position.epoch != first.position.epoch
    with pytest.raises(UnrecoverablePosition):
        await broker.read_stream("m:lost", retention=PERSISTENT, since=first.position, limit=-1)


async def test_a_dropped_pubsub_link_is_reported_and_heals(nodes: Nodes) -> None:
    broker, seen = await nodes.node("victim", ping_interval=1.0)
    await broker.subscribe("m:link")
    admin = Redis.from_url(nodes.url)
    try:
        killed = 0
        for client in await admin.client_list(_type="pubsub"):
            if client.get("name") == f"{nodes.prefix}.victim.maps":
                killed += int(await admin.execute_command("CLIENT", "KILL", "ID", client["id"]))
        assert killed == 1
    finally:
        await admin.aclose()
    await seen.wait(lambda: seen.resubscribed == [["m:link"]], "handle_map_resubscribed")
    await broker.publish("m:link", "a", value(1), retention=PERSISTENT)
    await seen.wait(lambda: len(seen.changes["m:link"]) == 1, "a change after the reconnect")


async def test_changes_from_many_writers_reach_every_node_in_order(nodes: Nodes) -> None:
    brokers = [await nodes.node() for _ in range(3)]
    for broker, _ in brokers:
        await broker.subscribe("m:race")
    await asyncio.gather(
        *(
            broker.publish("m:race", f"k{n % 5}", value(n), retention=PERSISTENT)
            for n in range(60)
            for broker, _ in [brokers[n % 3]]
        )
    )
    for _, seen in brokers:
        await seen.wait(lambda seen=seen: len(seen.changes["m:race"]) == 60, "60 changes")
        assert seen.offsets("m:race") == list(range(1, 61))


async def test_close_ends_even_when_the_expiry_task_swallows_its_cancel(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancellation that lands inside the Redis client can be swallowed by it; closing
    must still end (it once waited for the expiry task forever)."""
    broker, _ = await nodes.node(cleanup_interval=0.05)
    entered = asyncio.Event()

    async def stubborn_expire() -> int:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):  # swallowed, as a library may
            await asyncio.Event().wait()  # never set: only a cancel ends it
        return 0

    monkeypatch.setattr(broker, "expire", stubborn_expire)
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.wait_for(broker.close(), 5)
