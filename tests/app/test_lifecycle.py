"""The application's lifecycle and configuration in code: startup and shutdown hooks,
namespaces set in Python, demo mode off, and a subscribe snapshot that misses nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.conftest import WsClient, make_config, token
from tests.support.processes import spawn
from tidings import SubscribeContext, SubscribeResult, Tidings
from tidings.testing import TestClient


def test_an_application_closes_the_demo_unless_asked() -> None:
    assert Tidings().config.demo == "off"
    assert not Tidings().config.demo_enabled
    assert Tidings(demo="on").config.demo_enabled


async def test_startup_and_shutdown_hooks_run_in_order() -> None:
    rt = Tidings(make_config())
    events: list[str] = []

    @rt.on_startup
    async def first() -> None:
        events.append(f"start, node running: {rt.node.num_clients == 0}")
        await rt.publish("chat:boot", {"ready": True})

    @rt.on_shutdown
    async def last() -> None:
        events.append("stop")

    async with rt:
        assert events == ["start, node running: True"]
    assert events[-1] == "stop"
    with pytest.raises(TypeError, match="async def"):
        rt.on_startup(lambda: None)  # type: ignore[arg-type]


async def test_namespaces_can_be_configured_in_code() -> None:
    rt = Tidings(make_config())
    rt.namespace(
        "scores",
        history_size=10,
        history_ttl="5m",
        allow_subscribe_for_client=True,
        allow_history_for_subscriber=True,
    )
    async with TestClient(rt, token=token()) as client:
        sub = await client.subscribe("scores:final")
        await rt.publish("scores:final", {"home": 2})
        assert (await sub.next()).offset == 1
    with pytest.raises(RuntimeError):
        rt.namespace("late", presence=True)
    with pytest.raises(Exception, match="history_ttl"):
        Tidings(make_config()).namespace("bad", history_ttl="soon")


async def test_a_snapshot_from_on_subscribe_misses_nothing_published_after_it() -> None:
    """The data function runs after the subscription joined the channel: a publication made
    right after the snapshot is read (here, by the snapshot itself) still arrives."""
    rt = Tidings(make_config())
    state = {"count": 41}

    @rt.on_subscribe("quiet:*")  # quiet: no history, nothing to recover from
    async def join(ctx: SubscribeContext) -> SubscribeResult:
        async def snapshot() -> dict[str, Any]:
            seen = dict(state)
            state["count"] += 1
            await rt.publish(ctx.channel, {"count": state["count"]})
            return seen

        return SubscribeResult(data=snapshot)

    async with TestClient(rt, token=token()) as client:
        sub = await client.subscribe("quiet:counter")
        assert sub.result["data"] == {"count": 41}
        assert (await sub.next()).data == {"count": 42}


APP = """
from tidings import RPCContext, Tidings

rt = Tidings(port=1)
started = []


@rt.on_startup
async def start() -> None:
    started.append("yes")


@rt.rpc("started")
async def was_started(ctx: RPCContext, params: object) -> list:
    return started
"""


@pytest.mark.timeout(60)
async def test_serve_runs_the_startup_hooks(tmp_path: Path) -> None:
    (tmp_path / "hookapp.py").write_text(APP)
    server = await spawn(
        "hookapp:rt", "--app-dir", str(tmp_path), "--allow-anonymous-connect-without-token"
    )
    try:
        client = WsClient(await connect(f"ws://127.0.0.1:{server.port}/connection/websocket"))
        await client.connect()
        reply = await client.call("rpc", {"method": "started"})
        assert reply["rpc"]["data"] == ["yes"]
        await client.close()
    finally:
        server.process.terminate()
        assert await server.process.wait() == 0
