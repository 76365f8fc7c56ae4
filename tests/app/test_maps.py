"""Map channels from Python: ``rt.map_publish`` and the rest, handlers and typed channels on
map writes, and ``TestClient.subscribe_map``."""

from __future__ import annotations

import msgspec
import pytest

from tests.conftest import make_config, token
from tidings import ClientError, PublishContext, Tidings
from tidings.testing import TestClient


class Price(msgspec.Struct):
    bid: float
    ask: float


def map_app() -> Tidings:
    rt = Tidings(make_config())
    rt.namespace(
        "prices",
        subscription_type="map",
        allow_subscribe_for_client=True,
        map={"mode": "recoverable", "key_ttl": "60s", "stream_size": 100},
    )
    return rt


async def test_map_state_from_python_and_a_subscriber_following_it() -> None:
    rt = map_app()
    async with rt, TestClient(rt, token=token()) as client:
        first = await rt.map_publish("prices:fx", "EURUSD", {"bid": 1.1, "ask": 1.2})
        await rt.map_publish("prices:fx", "USDJPY", {"bid": 150.0, "ask": 150.1})
        board = await client.subscribe_map("prices:fx")
        assert board.state == {
            "EURUSD": {"bid": 1.1, "ask": 1.2},
            "USDJPY": {"bid": 150.0, "ask": 150.1},
        }
        await rt.map_publish("prices:fx", "EURUSD", {"bid": 1.15, "ask": 1.25})
        await rt.map_remove("prices:fx", "USDJPY")
        await board.next()
        await board.next()
        assert board.state == {"EURUSD": {"bid": 1.15, "ask": 1.25}}
        snapshot = await rt.map_state("prices:fx")
        assert snapshot.as_dict() == {"EURUSD": {"bid": 1.15, "ask": 1.25}}
        assert snapshot.epoch == first.epoch and snapshot.offset == 4
        changes = await rt.map_stream("prices:fx", since=(first.offset, first.epoch))
        assert [(c.key, c.removed) for c in changes.changes] == [
            ("USDJPY", False),
            ("EURUSD", False),
            ("USDJPY", True),
        ]
        assert await rt.map_stats("prices:fx") == 1
        again = await rt.map_publish("prices:fx", "EURUSD", {"bid": 1, "ask": 2}, key_mode="if_new")
        assert again.suppressed and again.reason == "key_exists"
        await rt.map_clear("prices:fx")
        assert await rt.map_stats("prices:fx") == 0
        with pytest.raises(ClientError) as not_a_map:
            await rt.map_publish("chat:x", "k", {})
        assert not_a_map.value.code == 107


async def test_client_map_writes_go_through_on_publish_and_typed_channels() -> None:
    rt = map_app()
    rt.channel("prices:*", schema=Price)
    written: list[tuple[str, str]] = []

    @rt.on_publish("prices:*")
    async def quote(ctx: PublishContext, data: Price) -> Price:
        written.append((ctx.key, ctx.user))
        return Price(round(data.bid, 2), round(data.ask, 2))

    async with rt, TestClient(rt, token=token("maker")) as client:
        board = await client.subscribe_map("prices:fx")
        await client.map_publish("prices:fx", "GBPUSD", {"bid": 1.234567, "ask": 1.25})
        await board.next()
        assert board.state == {"GBPUSD": {"bid": 1.23, "ask": 1.25}}
        assert written == [("GBPUSD", "maker")]
        with pytest.raises(ClientError) as invalid:
            await client.map_publish("prices:fx", "BAD", {"bid": "high"})
        assert invalid.value.code == 107
    with pytest.raises(ClientError) as typed:
        await rt.map_publish("prices:fx", "BAD", {"spread": 1})
    assert typed.value.code == 107


async def test_a_late_subscriber_gets_many_keys_page_by_page() -> None:
    rt = map_app()
    async with TestClient(rt, token=token()) as client:
        for n in range(250):
            await rt.map_publish("prices:many", f"k{n:03}", {"n": n})
        board = await client.subscribe_map("prices:many")
        assert len(board.state) == 250 and board.state["k249"] == {"n": 249}
