"""centrifuge-js 5.8 (npm ``centrifuge``, unmodified) on delta compression and conflation.

* ``delta: 'fossil'``: a subscription that negotiated it receives exactly the data one
  without it receives, in fewer bytes, on WebSocket and on the SSE emulation.
* A ticker (1,000 keys, 2,000 updates/s) with a subscriber that stops reading and one
  that asks for 10 updates/s: both end with the latest value of every key, neither is
  disconnected, and the server holds at most one publication per key for each.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.compat.conftest import JsClientFactory
from tests.conftest import StartServer, full_namespace, make_config, standard_channels, token
from tidings.bench.quotes import QuoteBoard
from tidings.channels import ChannelOptions

pytestmark = pytest.mark.node

UPDATES = 40


def live_config(**overrides: Any) -> Any:
    channels = standard_channels()
    channels.namespaces["board"] = full_namespace(
        allowed_delta_types=["fossil"], delta_publish=True, join_leave=False, presence=False
    )
    channels.namespaces["ticker"] = ChannelOptions(
        history_size=10_000,
        history_ttl=300.0,
        force_recovery=True,
        allow_subscribe_for_client=True,
        conflate_by="key",
    )
    return make_config(channels=channels, **overrides)


def endpoint(port: int, transport: str) -> Any:
    if transport == "websocket":
        return f"ws://127.0.0.1:{port}/connection/websocket"
    return [{"transport": "sse", "endpoint": f"http://127.0.0.1:{port}/connection/sse"}]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_delta_fossil_gets_the_same_data_in_fewer_bytes(
    start_server: StartServer, js_client: JsClientFactory, transport: str
) -> None:
    server = await start_server(live_config())
    base = f"http://127.0.0.1:{server.port}"
    clients = {}
    for name, options in (("delta", {"delta": "fossil"}), ("plain", {})):
        js = clients[name] = await js_client()
        await js.call(
            "create",
            url=endpoint(server.port, transport),
            token=token(name),
            getToken=False,
            options={"emulationEndpoint": f"{base}/emulation"},
        )
        connected = await js.connect()
        assert connected["transport"] == transport
        subscribed = await js.subscribe("board:acme", **options)
        assert subscribed["positioned"] is True
        await js.call("bytes_received")  # count from here
    board = QuoteBoard(fields=3)
    sent = []
    for _ in range(UPDATES):
        document = board.update()
        sent.append(json.loads(document))
        await server.node.publish("board:acme", json.loads(document))
    received = {}
    for name, js in clients.items():
        events = await js.log.collect("publication", UPDATES, "board:acme")
        received[name] = [event["data"] for event in events]
    assert received["delta"] == received["plain"] == sent

    wire = {name: await js.call("bytes_received") for name, js in clients.items()}
    stats = await clients["delta"].call("delta_stats", channel="board:acme")
    assert stats["numDeltaPayloads"] == UPDATES - 1 and stats["numFullPayloads"] == 1
    print(  # the figures quoted in docs/benchmarks.md
        f"\n{transport}: {UPDATES} updates of a {len(document)}-byte JSON document, 3 fields "
        f"changed each: {wire['plain']} bytes without delta, {wire['delta']} with "
        f"({wire['delta'] / wire['plain']:.1%})"
    )
    assert wire["delta"] < wire["plain"] / 5
