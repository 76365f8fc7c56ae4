"""Delta compression across nodes on Redis: each node deltas against the stream's previous
publication, which it received itself; only the publisher's wish crosses Redis.

Two in-process nodes share the test's Redis prefix. Publications go through the server API
of one node; delta subscribers on both decode every publication as centrifuge-js does.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import (
    ClientFactory,
    RunningServer,
    StartServer,
    WsClient,
    make_config,
    standard_channels,
    token,
)
from tests.scale.conftest import WAIT
from tests.support.http import api
from tests.support.polling import eventually
from tidings.bench.quotes import QuoteBoard
from tidings.channels import ChannelOptions
from tidings.protocol import fossil

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

CHANNEL = "board:acme"


async def delta_nodes(start_server: StartServer, url: str, prefix: str) -> list[RunningServer]:
    channels = standard_channels()
    channels.namespaces["board"] = ChannelOptions(
        history_size=100,
        history_ttl=300.0,
        force_recovery=True,
        allow_subscribe_for_client=True,
        allowed_delta_types=["fossil"],
    )
    nodes = [
        await start_server(
            make_config(broker=url, broker_prefix=prefix, channels=channels, node_name=f"n{n}")
        )
        for n in range(2)
    ]
    ids = {node.node.id for node in nodes}
    await eventually(
        lambda: all({n["uid"] for n in node.node.known_nodes()} == ids for node in nodes),
        "every node to know every other",
        within=WAIT,
    )
    return nodes


class Decoder:
    """centrifuge-js on a subscription whose reply said ``delta: true``."""

    def __init__(self) -> None:
        self.previous = b""
        self.deltas = 0

    def decode(self, pub: dict[str, Any]) -> Any:
        full = pub["data"].encode()
        if pub.get("delta"):
            full = fossil.apply(self.previous, full)
            self.deltas += 1
        self.previous = full
        return json.loads(full)


async def delta_subscriber(ws_client: ClientFactory, node: RunningServer, user: str) -> WsClient:
    client = await ws_client(node.ws_url)
    await client.connect(token(user))
    result = await client.subscribe(CHANNEL, delta="fossil")
    assert result["delta"] is True
    return client


async def test_deltas_against_the_stream_s_previous_publication_on_every_node(
    start_server: StartServer, ws_client: ClientFactory, scale_redis: str, prefix: str
) -> None:
    publisher_node, other_node = await delta_nodes(start_server, scale_redis, prefix)
    here = await delta_subscriber(ws_client, publisher_node, "here")
    there = await delta_subscriber(ws_client, other_node, "there")
    board = QuoteBoard(fields=3)
    sent = []
    for n in range(20):
        document = json.loads(board.update())
        sent.append(document)
        # Every fifth publication does not ask for a delta: it goes whole, and the next
        # one is a delta against it again.
        params = {"channel": CHANNEL, "data": document, "delta": n % 5 != 4}
        status, answer = await api(publisher_node.port, "publish", params)
        assert status == 200 and "error" not in answer, answer
    for client in (here, there):
        decoder = Decoder()
        publications = await client.publications(CHANNEL, len(sent), timeout=WAIT)
        assert [decoder.decode(pub) for pub in publications] == sent
        # The first is whole (the subscriber held nothing), so are the four that did not ask.
        flags = [bool(pub.get("delta")) for pub in publications]
        assert [n for n, flag in enumerate(flags) if not flag] == [0, 4, 9, 14, 19]
        assert decoder.deltas == len(sent) - 5


async def test_a_subscriber_on_a_node_that_just_subscribed_starts_whole_then_deltas(
    start_server: StartServer, ws_client: ClientFactory, scale_redis: str, prefix: str
) -> None:
    publisher_node, other_node = await delta_nodes(start_server, scale_redis, prefix)
    board = QuoteBoard(fields=3)
    for _ in range(3):  # the other node has no subscriber yet: it receives none of these
        await api(
            publisher_node.port,
            "publish",
            {"channel": CHANNEL, "data": json.loads(board.update()), "delta": True},
        )
    late = await delta_subscriber(ws_client, other_node, "late")
    sent = []
    for _ in range(3):
        document = json.loads(board.update())
        sent.append(document)
        await api(
            publisher_node.port, "publish", {"channel": CHANNEL, "data": document, "delta": True}
        )
    decoder = Decoder()
    publications = await late.publications(CHANNEL, 3, timeout=WAIT)
    assert [decoder.decode(pub) for pub in publications] == sent
    assert [bool(pub.get("delta")) for pub in publications] == [False, True, True]
