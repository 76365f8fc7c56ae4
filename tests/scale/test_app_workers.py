"""``tidings serve myapp:rt --workers 2``: the application's handlers run in every worker.

The application logs connections in from a header (no token) and stamps every
client publication with the process that accepted it, so a subscriber on one
worker can see that a handler on the other worker ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.conftest import WsClient
from tests.scale.conftest import NODE_CONFIG, spawn_tidings

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

APP = """
import os
from pathlib import Path

from tidings import ConnectContext, ConnectResult, PublishContext, Tidings

rt = Tidings(Path(__file__).with_name("tidings.toml"))


@rt.on_connect
async def connect(ctx: ConnectContext) -> ConnectResult | None:
    user = ctx.headers.get("x-user")
    return ConnectResult(user, data={"pid": os.getpid()}) if user else None


@rt.on_publish("chat:*")
async def post(ctx: PublishContext, data: dict) -> dict:
    return {**data, "stamped_by": os.getpid()}
"""

MAX_CLIENTS = 40
"""Clients opened at most until both workers have one (the kernel picks per connection)."""


async def open_client(port: int, user: str) -> tuple[WsClient, int]:
    ws = await connect(
        f"ws://127.0.0.1:{port}/connection/websocket",
        additional_headers={"X-User": user},
        compression=None,
        open_timeout=5,
    )
    client = WsClient(ws)
    result = await client.connect()
    return client, int(result["data"]["pid"])


async def test_handlers_run_in_every_worker(scale_redis: str, prefix: str, tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(NODE_CONFIG)
    (tmp_path / "chatapp.py").write_text(APP)
    server = await spawn_tidings(
        "chatapp:rt",
        "--app-dir", str(tmp_path),
        "--workers", "2",
        "--broker", scale_redis,
        "--broker-prefix", prefix,
        "--shutdown-timeout", "3s",
        name="supervisor",
    )  # fmt: skip
    by_pid: dict[int, WsClient] = {}
    opened: list[WsClient] = []
    try:
        for n in range(MAX_CLIENTS):
            client, pid = await open_client(server.port, f"user{n}")
            opened.append(client)
            by_pid.setdefault(pid, client)
            if len(by_pid) == 2:
                break
        assert len(by_pid) == 2, "the kernel never gave the second worker a connection"
        (pid_a, a), (pid_b, b) = sorted(by_pid.items())
        for client in (a, b):
            await client.subscribe("chat:stamped")
        await a.call("publish", {"channel": "chat:stamped", "data": {"from": "a"}})
        await b.call("publish", {"channel": "chat:stamped", "data": {"from": "b"}})
        for client in (a, b):
            seen: list[dict[str, Any]] = [
                p["data"] for p in await client.publications("chat:stamped", 2)
            ]
            assert sorted(seen, key=json.dumps) == [
                {"from": "a", "stamped_by": pid_a},
                {"from": "b", "stamped_by": pid_b},
            ]
    finally:
        for client in opened:
            await client.close()
        await server.stop()
