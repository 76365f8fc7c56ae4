"""Recovery and the subscribe/publish race, over real WebSockets.

Recovery returns exactly the missed publications with ``recovered: true``, or
none with ``recovered: false``: never a silent gap, never a duplicate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from tests.conftest import ClientFactory, RunningServer, StartServer, make_config, token
from tidings.brokers.base import BrokerEventHandler, HistoryOptions
from tidings.brokers.memory import MemoryBroker
from tidings.node import Node
from tidings.protocol.messages import Publication, StreamPosition
from tidings.server.app import TidingsServer


async def subscribed_position(
    server: RunningServer, ws_client: ClientFactory, channel: str
) -> tuple[int, str]:
    client = await ws_client(server.ws_url)
    await client.connect(token())
    result = await client.subscribe(channel)
    await client.close()
    return result.get("offset", 0), result["epoch"]


async def test_recovers_exactly_the_missed_publications(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    await server.node.publish("chat:r", {"n": 0})
    offset, epoch = await subscribed_position(server, ws_client, "chat:r")
    assert offset == 1
    for n in range(1, 6):
        await server.node.publish("chat:r", {"n": n})
    client = await ws_client(server.ws_url)
    await client.connect(token())
    result = await client.subscribe("chat:r", recover=True, offset=offset, epoch=epoch)
    assert result["recovered"] is True and result["was_recovering"] is True
    assert result["offset"] == offset and result["epoch"] == epoch
    assert [p["offset"] for p in result["publications"]] == [2, 3, 4, 5, 6]
    assert [p["data"]["n"] for p in result["publications"]] == [1, 2, 3, 4, 5]
    await server.node.publish("chat:r", {"n": 6})
    (live,) = await client.publications("chat:r", 1)
    assert live["offset"] == 7


async def test_recovery_from_the_top_is_recovered_and_empty(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    await server.node.publish("chat:r", {"n": 0})
    offset, epoch = await subscribed_position(server, ws_client, "chat:r")
    client = await ws_client(server.ws_url)
    await client.connect(token())
    result = await client.subscribe("chat:r", recover=True, offset=offset, epoch=epoch)
    assert result["recovered"] is True and "publications" not in result


async def test_unknown_epoch_from_the_client_still_recovers(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    for n in range(3):
        await server.node.publish("chat:r", {"n": n})
    client = await ws_client(server.ws_url)
    await client.connect(token())
    result = await client.subscribe("chat:r", recover=True, offset=1)
    assert result["recovered"] is True
    assert [p["offset"] for p in result["publications"]] == [2, 3]


async def test_other_epoch_is_not_recovered(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    for n in range(3):
        await server.node.publish("chat:r", {"n": n})
    client = await ws_client(server.ws_url)
    await client.connect(token())
    result = await client.subscribe("chat:r", recover=True, offset=1, epoch="oldepoch")
    assert result.get("recovered", False) is False and result["was_recovering"] is True
    assert "publications" not in result
    assert result["offset"] == 3 and result["epoch"] != "oldepoch"


async def test_trimmed_history_is_not_recovered(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    offset, epoch = await subscribed_position(server, ws_client, "small:r")
    for n in range(5):  # the namespace keeps 3
        await server.node.publish("small:r", {"n": n})
    client = await ws_client(server.ws_url)
    await client.connect(token())
    result = await client.subscribe("small:r", recover=True, offset=offset, epoch=epoch)
    assert result.get("recovered", False) is False
    assert "publications" not in result and result["offset"] == 5


async def test_more_than_the_recovery_limit_is_not_recovered(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    server = await start_server(recovery_max_publication_limit=3)
    offset, epoch = await subscribed_position(server, ws_client, "chat:r")
    for n in range(4):
        await server.node.publish("chat:r", {"n": n})
    client = await ws_client(server.ws_url)
    await client.connect(token())
    result = await client.subscribe("chat:r", recover=True, offset=offset, epoch=epoch)
    assert result.get("recovered", False) is False


async def test_server_side_subscription_recovers_from_connect_subs(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    client = await ws_client(server.ws_url)
    first = await client.connect(token("alice", channels=["chat:feed"]))
    position = first["subs"]["chat:feed"]
    await client.close()
    await server.node.publish("chat:feed", {"n": 1})
    await server.node.publish("chat:feed", {"n": 2})
    again = await ws_client(server.ws_url)
    result = await again.connect(
        token("alice", channels=["chat:feed"]),
        subs={
            "chat:feed": {
                "recover": True,
                "offset": position.get("offset", 0),
                "epoch": position["epoch"],
            }
        },
    )
    sub = result["subs"]["chat:feed"]
    assert sub["recovered"] is True
    assert [p["data"]["n"] for p in sub["publications"]] == [1, 2]


# --------------------------------------------------------------------------- races


class InterleavingBroker(MemoryBroker):
    """A memory broker whose reads and deliveries take a few loop turns, like a remote one.

    History reads yield to the loop so publications land mid-subscribe, and
    deliveries reach the node a few turns after the publication was stored, so
    a subscriber may read a history top whose last item has not been delivered
    yet: the two races a networked broker has.
    """

    def __init__(self) -> None:
        super().__init__()
        self._real_handler: BrokerEventHandler | None = None

    def set_event_handler(self, handler: BrokerEventHandler) -> None:
        self._real_handler = handler
        super().set_event_handler(_Deferred(handler))

    async def history(
        self, channel: str, **kwargs: Any
    ) -> tuple[list[Publication], StreamPosition]:
        for _ in range(3):
            await asyncio.sleep(0)
        return await super().history(channel, **kwargs)


class _Deferred:
    def __init__(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        self._queue: list[tuple[str, Publication, StreamPosition | None, bool]] = []

    def handle_publication(
        self,
        channel: str,
        publication: Publication,
        position: StreamPosition | None,
        *,
        delta: bool = False,
    ) -> None:
        loop = asyncio.get_running_loop()
        # Keep order: deliveries are queued, and each hop drains the oldest.
        self._queue.append((channel, publication, position, delta))
        loop.call_soon(lambda: loop.call_soon(self._drain_one))

    def _drain_one(self) -> None:
        channel, publication, position, delta = self._queue.pop(0)
        self._handler.handle_publication(channel, publication, position, delta=delta)

    def handle_join(self, channel: str, info: Any) -> None:
        self._handler.handle_join(channel, info)

    def handle_leave(self, channel: str, info: Any) -> None:
        self._handler.handle_leave(channel, info)

    def handle_control(self, message: bytes) -> None:
        self._handler.handle_control(message)

    def handle_resubscribed(self, channels: Sequence[str]) -> None:
        self._handler.handle_resubscribed(channels)


async def test_publications_racing_subscribes_are_neither_lost_nor_duplicated(
    ws_client: ClientFactory,
) -> None:
    node = Node(make_config(), broker=InterleavingBroker())
    server = TidingsServer(node)
    port = await server.start()
    url = f"ws://127.0.0.1:{port}/connection/websocket"
    history = HistoryOptions(size=1000, ttl=300)
    try:
        publishing = True

        async def publisher() -> int:
            count = 0
            while publishing:
                count += 1
                await node.broker.publish(
                    "chat:race", Publication(data=_raw(count)), history=history
                )
                await asyncio.sleep(0)
            return count

        publisher_task = asyncio.create_task(publisher())
        clients = []
        results = []
        for index in range(12):
            client = await ws_client(url)
            await client.connect(token(f"u{index}"))
            params: dict[str, Any] = {}
            if index % 3 == 0:
                params = {"recover": True, "offset": 0, "epoch": ""}
            results.append(await client.subscribe("chat:race", **params))
            clients.append(client)
        publishing = False
        total = await publisher_task
        for client, result in zip(clients, results, strict=True):
            seen = [p["offset"] for p in result.get("publications", [])]
            start = result.get("offset", 0)
            expected_count = total - start
            live = await client.publications("chat:race", expected_count - len(seen), timeout=10)
            seen += [p["offset"] for p in live]
            assert seen == list(range(start + 1, total + 1)), (start, seen[:5])
            # nothing more arrives (no duplicate trails behind)
            await node.broker.publish("chat:race", Publication(data=_raw(-1)), history=history)
            (marker,) = await client.publications("chat:race", 1)
            assert marker["offset"] == total + 1
            total += 1
    finally:
        await server.stop()


def _raw(n: int) -> Any:
    from msgspec import Raw

    return Raw(b'{"n":%d}' % n)
