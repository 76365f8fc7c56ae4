"""``kill -9`` of a node: its SDK clients reconnect to a survivor and lose nothing.

Three node processes share Redis. A centrifuge-js and a centrifuge-python client
connect through a failover proxy that sends them to the first node while it
lives. A publisher on the second node keeps publishing before, during and after
the first node is killed: each client must see every offset exactly once, in
order, after a recovery that says ``recovered: true``; and the dead node's
presence entries must be gone once the presence TTL has passed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.conftest import WsClient, token
from tests.scale.conftest import (
    PRESENCE_REFRESH,
    PRESENCE_TTL,
    FailoverProxy,
    JsSubscriber,
    NodeProcess,
    StartNodes,
    Story,
)
from tests.support.http import api
from tests.support.polling import eventually

pytestmark = [pytest.mark.redis, pytest.mark.node, pytest.mark.timeout(90)]

CHANNEL = "chat:failover"


async def presence(node: NodeProcess) -> set[str]:
    status, answer = await api(node.port, "presence", {"channel": CHANNEL})
    assert status == 200 and "result" in answer, answer
    return set(answer["result"]["presence"])


async def test_clients_of_a_killed_node_recover_every_publication_on_a_survivor(
    tidings_nodes: StartNodes,
    scale_redis: str,
    prefix: str,
    failover_proxy: Callable[[list[int]], Awaitable[FailoverProxy]],
    js_subscriber: Callable[..., Awaitable[JsSubscriber]],
    py_subscriber: Callable[..., Awaitable[Story]],
) -> None:
    victim, survivor, other = await tidings_nodes(3, scale_redis, prefix)
    proxy = await failover_proxy([victim.port, survivor.port, other.port])
    js = (await js_subscriber(proxy.ws_url, CHANNEL)).story
    py = await py_subscriber(proxy.ws_url, CHANNEL)
    stories = [js, py]
    for story in stories:
        await story.wait(lambda s: len(s.subscribed) == 1, "the first subscribe")
    assert proxy.landed == {victim.port: 2}

    publisher = WsClient(await connect(survivor.ws_url, compression=None, open_timeout=10))
    await publisher.connect(token("publisher"))
    sent = 0

    async def publish(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            sent += 1
            data: dict[str, Any] = {"n": sent}
            reply = await publisher.call("publish", {"channel": CHANNEL, "data": data}, timeout=10)
            assert "publish" in reply, reply

    try:
        await publish(20)
        for story in stories:
            await story.wait(lambda s: len(s.publications) == 20, "20 live publications")
        before = {story.client_ids[-1] for story in stories}
        assert before <= await presence(survivor), "presence is shared across nodes"

        victim.kill()
        killed_at = time.monotonic()
        # Refreshed at most PRESENCE_REFRESH ago, the dead node's entries are still there.
        assert before <= await presence(survivor)
        await publish(30)  # while the clients find another node
        for story in stories:
            await story.wait(lambda s: len(s.subscribed) == 2, "the resubscribe")
            assert story.subscribed[-1]["recovered"] is True, story.subscribed
            assert story.subscribed[-1]["wasRecovering"] is True
            assert len(story.client_ids) == 2, story.events
        await publish(10)
        for story in stories:
            await story.wait(lambda s: len(s.publications) >= sent, f"{sent} publications")
            assert story.offsets == list(range(1, sent + 1)), story.name
            assert [data["n"] for _, data in story.publications] == list(range(1, sent + 1))
            assert len({sub["epoch"] for sub in story.subscribed}) == 1
        assert victim.port in proxy.landed and len(proxy.landed) >= 2
        assert proxy.landed[victim.port] == 2

        # The killed node never removed its entries; they expire, nobody else's do.
        after = {story.client_ids[-1] for story in stories}
        await eventually(
            lambda: _presence_is(survivor, after),
            "the killed node's presence entries to expire",
            within=PRESENCE_TTL + 4 * PRESENCE_REFRESH + 5,
        )
        assert time.monotonic() - killed_at < PRESENCE_TTL + 4 * PRESENCE_REFRESH + 5
    finally:
        await publisher.close()


async def _presence_is(node: NodeProcess, expected: set[str]) -> bool:
    return await presence(node) == expected
