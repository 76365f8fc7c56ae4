"""Delta compression and latest-value conflation, driven through a session with bytes.

The byte-level harness of ``tests/support/sessions.py``: frames in, the exact documents out, a
clock moved by hand (so a rate of 5 updates per second costs no time).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import full_namespace, make_config, standard_channels
from tests.support.clock import FakeClock
from tests.support.sessions import Harness
from tidings.channels import ChannelOptions
from tidings.node import Node
from tidings.protocol import fossil

LIVE = dict(
    history_size=100,
    history_ttl=300.0,
    force_positioning=True,
    allow_recovery=True,
    allow_subscribe_for_client=True,
)


def live_channels() -> Any:
    channels = standard_channels()
    channels.namespaces["deltas"] = ChannelOptions(
        **LIVE, allowed_delta_types=["fossil"], delta_publish=True
    )
    channels.namespaces["nodelta"] = ChannelOptions(**LIVE)
    channels.namespaces["unpositioned"] = ChannelOptions(
        allow_subscribe_for_client=True, allowed_delta_types=["fossil"]
    )
    channels.namespaces["ticker"] = ChannelOptions(**LIVE, conflate_by="key")
    channels.namespaces["slowticker"] = ChannelOptions(**LIVE, conflate_by="key", max_frequency=5)
    channels.namespaces["chat"] = full_namespace()
    return channels


@pytest.fixture
async def node(clock: FakeClock) -> AsyncIterator[Node]:
    running = Node(
        make_config(broker_unsubscribe_delay=0.0, coalesce_delay=0.0, channels=live_channels()),
        clock=clock,
    )
    await running.start()
    yield running
    await running.shutdown()


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def harness(node: Node, clock: FakeClock) -> Harness:
    return Harness(node, clock)


def document(n: int) -> dict[str, Any]:
    """A ~500-byte state where one field changes per update."""
    return {"n": n, "board": [{"level": i, "bid": 100 + i, "ask": 101 + i} for i in range(15)]}


def publications(written: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["push"]["pub"] for d in written if "pub" in d.get("push", {})]


class SdkDecoder:
    """centrifuge-js on a subscription whose reply said ``delta: true``."""

    def __init__(self) -> None:
        self.previous = b""

    def decode(self, pub: dict[str, Any]) -> Any:
        text = pub["data"]
        assert isinstance(text, str)
        full = fossil.apply(self.previous, text.encode()) if pub.get("delta") else text.encode()
        self.previous = full
        return json.loads(full)


async def publish(node: Node, channel: str, *values: Any, **kwargs: Any) -> None:
    for value in values:
        await node.publish(channel, value, **kwargs)
    await asyncio.sleep(0)  # the hub flushes at the end of the loop turn


# --------------------------------------------------------------------------- delta


async def test_delta_negotiated_full_string_first_then_deltas(harness: Harness) -> None:
    await harness.connect()
    reply = await harness.call({"id": 2, "subscribe": {"channel": "deltas:a", "delta": "fossil"}})
    assert reply["subscribe"]["delta"] is True and reply["subscribe"]["positioned"] is True
    for n in range(1, 4):
        await publish(harness.node, "deltas:a", document(n))
    pubs = publications(harness.transport.take())
    assert [p.get("delta", False) for p in pubs] == [False, True, True]
    assert all(isinstance(p["data"], str) for p in pubs)
    assert len(json.dumps(pubs[1])) < len(json.dumps(pubs[0])) / 5
    sdk = SdkDecoder()
    assert [sdk.decode(p) for p in pubs] == [document(1), document(2), document(3)]


async def test_publications_that_do_not_ask_go_whole(harness: Harness) -> None:
    await harness.connect()
    await harness.call({"id": 2, "subscribe": {"channel": "nodelta:a", "delta": "fossil"}})
    # The namespace does not allow delta: the reply says nothing, data stays plain JSON.
    await publish(harness.node, "nodelta:a", document(1))
    assert publications(harness.transport.take())[0]["data"] == document(1)
    await harness.call({"id": 3, "subscribe": {"channel": "deltas:b", "delta": "fossil"}})
    await publish(harness.node, "deltas:b", document(1))
    await publish(harness.node, "deltas:b", document(2), delta=False)  # API publish, no delta
    await publish(harness.node, "deltas:b", document(3))
    pubs = publications(harness.transport.take())
    assert [p.get("delta", False) for p in pubs] == [False, False, True]


@pytest.mark.parametrize(
    ("channel", "request_extra"),
    [("nodelta:x", {"delta": "fossil"}), ("unpositioned:x", {"delta": "fossil"}), ("deltas:x", {})],
    ids=["not-allowed", "not-positioned", "not-asked"],
)
async def test_delta_not_negotiated(
    harness: Harness, channel: str, request_extra: dict[str, Any]
) -> None:
    await harness.connect()
    reply = await harness.call({"id": 2, "subscribe": {"channel": channel, **request_extra}})
    assert "delta" not in reply["subscribe"]
    await publish(harness.node, channel, document(1), document(2))
    assert [p["data"] for p in publications(harness.transport.take())] == [
        document(1),
        document(2),
    ]


async def test_recovered_publications_are_strings_then_live_starts_whole(harness: Harness) -> None:
    node = harness.node
    first = await node.publish("deltas:r", document(1))
    await node.publish("deltas:r", document(2))
    await node.publish("deltas:r", document(3))
    await harness.connect()
    reply = await harness.call(
        {
            "id": 2,
            "subscribe": {
                "channel": "deltas:r",
                "delta": "fossil",
                "recover": True,
                "recoverable": True,
                "offset": first.offset,
                "epoch": first.epoch,
            },
        }
    )
    result = reply["subscribe"]
    assert result["delta"] is True and result["recovered"] is True
    sdk = SdkDecoder()
    assert [sdk.decode(p) for p in result["publications"]] == [document(2), document(3)]
    await publish(node, "deltas:r", document(4))
    await publish(node, "deltas:r", document(5))
    pubs = publications(harness.transport.take())
    assert [p.get("delta", False) for p in pubs] == [False, True]
    assert [sdk.decode(p) for p in pubs] == [document(4), document(5)]


# --------------------------------------------------------------------------- conflation


async def test_slow_client_on_a_conflating_channel_gets_the_latest_and_stays(
    harness: Harness, node: Node
) -> None:
    await harness.connect()
    await harness.call({"id": 2, "subscribe": {"channel": "ticker:eu"}})
    harness.session.on_write_paused()  # the transport's buffer is full
    for n in range(1, 301):
        await node.publish("ticker:eu", {"p": n}, key=f"s{n % 7}")
    await asyncio.sleep(0)
    assert harness.transport.take() == []
    harness.clock.advance(node.config.slow_timeout + 1)  # a slow client, but not cut
    assert not harness.session.closed
    harness.transport.take()  # the server's pings
    harness.session.on_write_resumed()
    pubs = publications(harness.transport.take())
    assert {p["key"]: p["data"]["p"] for p in pubs} == {f"s{n % 7}": n for n in range(294, 301)}
    assert [p["offset"] for p in pubs] == list(range(294, 301))
    await publish(node, "ticker:eu", {"p": 301}, key="s0")
    assert [p["offset"] for p in publications(harness.transport.take())] == [301]


async def test_slow_client_with_a_plain_channel_is_still_cut(harness: Harness, node: Node) -> None:
    await harness.connect()
    await harness.call({"id": 2, "subscribe": {"channel": "ticker:eu"}})
    await harness.call({"id": 3, "subscribe": {"channel": "chat:room"}})
    harness.session.on_write_paused()
    harness.clock.advance(node.config.slow_timeout + 0.1)
    assert harness.transport.closed_with is not None
    assert harness.transport.closed_with.code == 3008


async def test_rate_asked_in_subscribe_data(harness: Harness, node: Node) -> None:
    await harness.connect()
    reply = await harness.call(
        {"id": 2, "subscribe": {"channel": "ticker:us", "data": {"max_frequency": 5}}}
    )
    assert "error" not in reply
    for n in range(1, 4):
        await publish(node, "ticker:us", {"p": n}, key="ACME")
    assert [p["data"]["p"] for p in publications(harness.transport.take())] == [1]
    harness.clock.advance(0.19)
    assert publications(harness.transport.take()) == []
    harness.clock.advance(0.01)
    assert [p["data"]["p"] for p in publications(harness.transport.take())] == [3]


@pytest.mark.parametrize(
    ("channel", "data", "interval"),
    [
        ("slowticker:a", None, 0.2),  # the namespace's 5/s
        ("slowticker:b", {"max_frequency": 2}, 0.5),  # less: granted
        ("slowticker:c", {"max_frequency": 50}, 0.2),  # more: capped at the namespace's
        ("slowticker:d", {"other": "app data"}, 0.2),
        ("slowticker:e", [1, 2], 0.2),
    ],
    ids=["default", "less", "more", "app-data", "not-an-object"],
)
async def test_namespace_rate_and_what_a_client_may_ask(
    harness: Harness, node: Node, channel: str, data: Any, interval: float
) -> None:
    await harness.connect()
    request: dict[str, Any] = {"channel": channel}
    if data is not None:
        request["data"] = data
    await harness.call({"id": 2, "subscribe": request})
    await publish(node, channel, {"p": 1}, key="k")
    await publish(node, channel, {"p": 2}, key="k")
    assert [p["data"]["p"] for p in publications(harness.transport.take())] == [1]
    harness.clock.advance(interval - 0.01)
    assert publications(harness.transport.take()) == []
    harness.clock.advance(0.01)
    assert [p["data"]["p"] for p in publications(harness.transport.take())] == [2]


async def test_slow_client_without_subscriptions_is_still_timed_out(
    harness: Harness, node: Node
) -> None:
    await harness.connect()
    harness.session.on_write_paused()
    harness.clock.advance(node.config.slow_timeout + 0.1)
    assert harness.transport.closed_with is not None
    assert harness.transport.closed_with.code == 3008
