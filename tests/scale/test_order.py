"""Three tidings processes on one Redis behave as one server: the same order everywhere."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.conftest import WsClient, token
from tests.scale.conftest import NodeProcess, StartNodes

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

CHANNELS = [f"chat:order-{n}" for n in range(3)]
PER_PUBLISHER = 40
"""Publications each publisher sends; one publisher per (node, channel)."""


async def ws(node: NodeProcess, user: str) -> WsClient:
    client = WsClient(await connect(node.ws_url, compression=None, max_size=None, open_timeout=10))
    await client.connect(token(user))
    return client


async def test_concurrent_publishers_on_three_nodes_give_one_order_everywhere(
    tidings_nodes: StartNodes, scale_redis: str, prefix: str
) -> None:
    nodes = await tidings_nodes(3, scale_redis, prefix)
    subscribers: list[tuple[NodeProcess, WsClient]] = []
    publishers: list[tuple[WsClient, NodeProcess, str]] = []
    try:
        for node in nodes:
            for n in range(2):
                client = await ws(node, f"reader-{node.name}-{n}")
                for channel in CHANNELS:
                    reply = await client.subscribe(channel)
                    assert reply["recoverable"] is True
                subscribers.append((node, client))
            for channel in CHANNELS:  # one connection each: a WsClient reads one reply at a time
                publishers.append((await ws(node, f"writer-{node.name}"), node, channel))

        async def publish_all(publisher: WsClient, node: NodeProcess, channel: str) -> None:
            for seq in range(PER_PUBLISHER):
                data = {"node": node.name, "seq": seq}
                reply = await publisher.call(
                    "publish", {"channel": channel, "data": data}, timeout=10
                )
                assert "publish" in reply, reply

        # Every node publishes to every channel at once, each publisher awaiting its replies.
        await asyncio.gather(*(publish_all(*publisher) for publisher in publishers))
        total = PER_PUBLISHER * len(nodes)
        seen: dict[str, list[list[tuple[int, Any]]]] = defaultdict(list)
        for _, client in subscribers:
            for channel in CHANNELS:
                publications = await client.publications(channel, total, timeout=15)
                seen[channel].append([(p["offset"], p["data"]) for p in publications])
        for channel, stories in seen.items():
            first = stories[0]
            assert [offset for offset, _ in first] == list(range(1, total + 1)), channel
            for story in stories[1:]:
                assert story == first, f"{channel}: two subscribers saw different orders"
            # Each publisher awaited every reply, so its own publications keep their order.
            by_publisher: dict[str, list[int]] = defaultdict(list)
            for _, data in first:
                by_publisher[data["node"]].append(data["seq"])
            assert all(seqs == list(range(PER_PUBLISHER)) for seqs in by_publisher.values())
            assert len(by_publisher) == len(nodes)
        # Nothing more arrives: no duplicates trail behind.
        for _, client in subscribers:
            assert not [push for push in client.pushes if push and "pub" in push.get("push", {})], (
                "a subscriber got more publications than were sent"
            )
    finally:
        for _, client in subscribers:
            await client.close()
        for publisher, _, _ in publishers:
            await publisher.close()
