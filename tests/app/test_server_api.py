"""The backend's side of the public API (``await rt.publish(...)`` and the rest), the
refresh handlers, and ``TestClient`` itself."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest

from tests.conftest import make_config, token
from tests.support.polling import eventually
from tidings import (
    ClientDisconnect,
    ClientError,
    ConnectContext,
    ConnectResult,
    RefreshContext,
    SubscribeContext,
    SubscribeResult,
    Tidings,
)
from tidings.testing import TestClient


class Tick(msgspec.Struct):
    price: float


def app_with(**overrides: Any) -> Tidings:
    return Tidings(make_config(**overrides))


async def test_publish_accepts_structs_and_reports_the_position() -> None:
    rt = app_with()
    async with TestClient(rt, token=token()) as client:
        sub = await client.subscribe("chat:ticks")
        first = await rt.publish("chat:ticks", Tick(1.5))
        second = await rt.publish("chat:ticks", {"price": 2.5}, tags={"source": "feed"})
        assert (first.offset, second.offset) == (1, 2) and first.epoch == second.epoch
        assert (await sub.next()).data == {"price": 1.5}
        pub = await sub.next()
        assert (pub.data, pub.offset, pub.tags) == ({"price": 2.5}, 2, {"source": "feed"})


async def test_publish_to_an_unknown_namespace_raises_102() -> None:
    rt = app_with()
    async with rt:
        with pytest.raises(ClientError) as refused:
            await rt.publish("nowhere:x", {})
    assert refused.value.code == 102


async def test_broadcast_gives_one_result_per_channel() -> None:
    rt = app_with()
    async with rt:
        results = await rt.broadcast(["chat:a", "nowhere:b", "chat:c"], {"n": 1})
    assert [getattr(r, "code", None) for r in results] == [None, 102, None]


async def test_history_presence_and_channels() -> None:
    rt = app_with()
    async with TestClient(rt, token=token("hal")) as client:
        await client.subscribe("chat:h")
        for n in range(3):
            await rt.publish("chat:h", {"n": n})
        history = await rt.history("chat:h", limit=-1)
        assert [p.data for p in history.publications] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert history.offset == 3
        since = await rt.history("chat:h", limit=-1, since=(1, history.epoch))
        assert [p.offset for p in since.publications] == [2, 3]
        presence = await rt.presence("chat:h")
        assert [info.user for info in presence.values()] == ["hal"]
        stats = await rt.presence_stats("chat:h")
        assert (stats.num_clients, stats.num_users) == (1, 1)
        assert await rt.channels("chat:*") == {"chat:h": 1}
        (node,) = await rt.info()
        assert node["num_clients"] == 1
        await rt.history_remove("chat:h")
        assert (await rt.history("chat:h", limit=-1)).publications == []
        with pytest.raises(ClientError) as no_presence:
            await rt.presence("quiet:x")
        assert no_presence.value.code == 108


async def test_server_side_subscribe_unsubscribe_and_disconnect() -> None:
    rt = app_with()
    async with TestClient(rt, token=token("ivy")) as client:
        await rt.subscribe("ivy", "chat:pushed")
        await eventually(lambda: rt.channels("chat:pushed"), "the server-side subscription")

        async def gone() -> bool:
            return not await rt.channels("chat:pushed")

        await rt.unsubscribe("ivy", "chat:pushed")
        await eventually(gone, "the unsubscribe")
        await rt.disconnect("ivy", code=4444, reason="bye")
        await eventually(lambda: client.disconnected is not None, "the disconnect")
        assert client.disconnected is not None
        assert (client.disconnected.code, client.disconnected.reason) == (4444, "bye")
        with pytest.raises(ClientDisconnect):
            await client.rpc("anything")
    with pytest.raises(ValueError):
        await rt.disconnect("ivy", code=1000)


async def test_on_refresh_extends_an_expiry_the_application_set() -> None:
    rt = app_with(expired_close_delay=0.0)
    refreshed = asyncio.Event()

    @rt.on_connect
    async def connect(ctx: ConnectContext) -> ConnectResult:
        return ConnectResult("jo", expire_at=int(time.time()) + 1)

    @rt.on_refresh
    async def refresh(ctx: RefreshContext) -> ConnectResult:
        refreshed.set()
        return ConnectResult(ctx.user, expire_at=int(time.time()) + 3600)

    async with TestClient(rt) as client:
        assert "expires" not in client.connect_result  # the server refreshes, not the client
        await asyncio.wait_for(refreshed.wait(), 5)
        await client.subscribe("chat:after-refresh")  # a round trip: still connected
        assert client.disconnected is None


async def test_without_an_extension_the_connection_expires_with_3005() -> None:
    rt = app_with(expired_close_delay=0.0)

    @rt.on_connect
    async def connect(ctx: ConnectContext) -> ConnectResult:
        return ConnectResult("kim", expire_at=int(time.time()) + 1)

    @rt.on_refresh
    async def refresh(ctx: RefreshContext) -> None:
        return None

    async with TestClient(rt) as client:
        await eventually(lambda: client.disconnected is not None, "the expiry")
        assert client.disconnected is not None and client.disconnected.code == 3005


async def test_on_sub_refresh_extends_or_ends_a_subscription() -> None:
    rt = app_with(expired_close_delay=0.0)
    allowed = {"chat:keep": True, "chat:drop": False}

    @rt.on_subscribe("chat:*")
    async def join(ctx: SubscribeContext) -> SubscribeResult:
        return SubscribeResult(expire_at=int(time.time()) + 1)

    @rt.on_sub_refresh("chat:*")
    async def still_allowed(ctx: SubscribeContext) -> SubscribeResult | None:
        if allowed[ctx.channel]:
            return SubscribeResult(expire_at=int(time.time()) + 3600)
        return None

    async with TestClient(rt, token=token("lee")) as client:
        keep = await client.subscribe("chat:keep")
        drop = await client.subscribe("chat:drop")
        assert "expires" not in keep.result
        await eventually(lambda: drop.unsubscribed is not None, "the expired subscription")
        assert drop.unsubscribed == (2501, "subscription expired")
        assert keep.unsubscribed is None


async def test_test_client_recovers_since_a_position() -> None:
    rt = app_with()
    async with TestClient(rt, token=token()) as client:
        sub = await client.subscribe("chat:r")
        await rt.publish("chat:r", {"n": 1})
        first = await sub.next()
        await sub.unsubscribe()
        for n in (2, 3):
            await rt.publish("chat:r", {"n": n})
        again = await client.subscribe("chat:r", since=(first.offset, sub.epoch))
        assert again.result["recovered"] is True
        assert [(await again.next()).data for _ in range(2)] == [{"n": 2}, {"n": 3}]
        with pytest.raises(TimeoutError):
            await again.next(timeout=0.05)


async def test_test_client_sees_joins_and_leaves() -> None:
    rt = app_with()
    async with TestClient(rt, token=token("watcher")) as watcher:
        sub = await watcher.subscribe("chat:jl", join_leave=True)
        assert (await asyncio.wait_for(sub.joins.get(), 5)).user == "watcher"
        async with TestClient(rt, token=token("visitor")) as visitor:
            await visitor.subscribe("chat:jl")
            assert (await asyncio.wait_for(sub.joins.get(), 5)).user == "visitor"
        assert (await asyncio.wait_for(sub.leaves.get(), 5)).user == "visitor"


async def test_handler_latency_reaches_the_metrics() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    rt = app_with(metrics=True)

    @rt.rpc("ping")
    async def ping(ctx: Any, params: Any) -> str:
        return "pong"

    @rt.rpc("boom")
    async def boom(ctx: Any, params: Any) -> str:
        raise ClientError(4000, "no")

    async with TestClient(rt, token=token()) as client:
        await client.rpc("ping")
        with pytest.raises(ClientError):
            await client.rpc("boom")
        text = rt.node.metrics.exposition(rt.node.clients.values()).decode()
    counts = {
        (sample.labels["event"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tidings_handler_duration_seconds"
        for sample in family.samples
        if sample.name.endswith("_count")
    }
    assert counts == {("rpc", "ok"): 1.0, ("rpc", "client_error"): 1.0}


async def test_test_client_follows_server_side_subscriptions() -> None:
    rt = app_with(subscribe_to_user_personal_channel=True, personal_channel_namespace="chat")

    @rt.on_connect
    async def connect(ctx: ConnectContext) -> ConnectResult:
        return ConnectResult(ctx.user, channels=["chat:news"])

    async with rt, TestClient(rt, token=token("pat")) as client:
        await rt.publish("chat:#pat", {"fill": 1})
        assert (await client.subscription("chat:#pat").next()).data == {"fill": 1}
        await rt.publish("chat:news", {"headline": "x"})
        assert (await client.subscription("chat:news").next()).data == {"headline": "x"}
        await rt.subscribe("pat", "chat:pushed")
        await eventually(lambda: _has(client, "chat:pushed"), "the API subscribe")
        await rt.publish("chat:pushed", {"n": 1})
        assert (await client.subscription("chat:pushed").next()).data == {"n": 1}


def _has(client: TestClient, channel: str) -> bool:
    try:
        client.subscription(channel)
    except KeyError:
        return False
    return True


async def test_listen_gives_backend_code_a_channel() -> None:
    rt = app_with()
    async with rt, rt.listen("chat:orders") as orders:
        async with TestClient(rt, token=token("buyer")) as client:
            await client.subscribe("chat:orders")
            await client.publish("chat:orders", {"qty": 3})
        await rt.publish("chat:orders", {"qty": 5}, key="ACME")
        first = await orders.next(timeout=2)
        assert (first.data, first.user, first.offset) == ({"qty": 3}, "buyer", 1)
        second = await orders.next(timeout=2)
        assert (second.data, second.key, second.offset) == ({"qty": 5}, "ACME", 2)
    with pytest.raises(ClientError):
        async with rt.listen("nowhere:x"):
            pass


async def test_a_listener_that_falls_behind_stops() -> None:
    from tidings import ListenerOverflow

    rt = app_with()
    async with rt, rt.listen("chat:flood", maxsize=3) as flood, rt.listen("chat:flood") as witness:
        for n in range(5):
            await rt.publish("chat:flood", {"n": n})
        for _ in range(5):  # the hub has delivered all five to every listener
            await witness.next(timeout=2)
        got = [(await flood.next(timeout=2)).data["n"] for _ in range(3)]
        assert got == [0, 1, 2]
        with pytest.raises(ListenerOverflow):
            await flood.next(timeout=2)
