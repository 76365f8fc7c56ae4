"""``tidings serve --workers N``: processes sharing one port and the Redis broker."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.conftest import WsClient, token
from tests.scale.conftest import NODE_CONFIG, NodeProcess, spawn_tidings
from tests.support.http import api
from tests.support.redis import free_port

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

CHANNEL = "chat:workers"
MAX_CLIENTS = 40
"""Clients opened at most until both workers have one (the kernel picks per connection)."""


async def serving_workers(port: int) -> dict[str, int]:
    """Node id -> live client count of each worker that answered an API ``info``.

    Each call lands on one worker (SO_REUSEPORT), which lists itself first with
    its live counts; a few calls reach both.
    """
    counts: dict[str, int] = {}
    for _ in range(30):
        status, answer = await api(port, "info", {})
        assert status == 200, answer
        first = answer["result"]["nodes"][0]
        counts[first["uid"]] = first["num_clients"]
        if len(counts) == 2 and all(counts.values()):
            break
    return counts


async def test_two_workers_share_the_port_and_the_broker(
    scale_redis: str, prefix: str, tmp_path: Path
) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text(NODE_CONFIG)
    server = await spawn_tidings(
        "--workers", "2",
        "--config", str(config),
        "--broker", scale_redis,
        "--broker-prefix", prefix,
        "--shutdown-timeout", "3s",
        name="supervisor",
    )  # fmt: skip
    clients: list[WsClient] = []
    try:
        assert "with 2 workers" in server.log
        # A worker that dies is started again, and the port keeps being served.
        pid = int((await server.wait_for_line(r"worker 1 started \(pid (\d+)\)")).group(1))
        mark = len(server.lines)
        os.kill(pid, signal.SIGKILL)
        await server.wait_for_line(r"worker 1 exited unexpectedly", start=mark)
        await server.wait_for_line(r"worker 1 is serving", start=mark)
        assert any("[worker 2]" in line for line in server.lines), "logs name the worker"

        async def open_client() -> None:
            ws = await connect(f"ws://127.0.0.1:{server.port}/connection/websocket")
            client = WsClient(ws)
            clients.append(client)
            await client.connect(token(f"user{len(clients)}"))
            await client.subscribe(CHANNEL)

        for _ in range(4):
            await open_client()
        while len(clients) < MAX_CLIENTS:
            counts = await serving_workers(server.port)
            if len(counts) == 2 and all(counts.values()):
                break
            await open_client()
        assert sum(counts.values()) == len(clients) and all(counts.values()), counts

        # A publication through one worker reaches the clients of both.
        status, answer = await api(server.port, "publish", {"channel": CHANNEL, "data": {"x": 1}})
        assert status == 200 and answer["result"]["offset"] == 1, answer
        for client in clients:
            (publication,) = await client.publications(CHANNEL, 1, timeout=10)
            assert publication["data"] == {"x": 1}
        # The API channels call counts the subscribers of every worker.
        status, answer = await api(server.port, "channels", {"pattern": "chat:*"})
        assert answer["result"]["channels"] == {CHANNEL: {"num_clients": len(clients)}}

        server.process.send_signal(signal.SIGTERM)
        closes = await asyncio.gather(*(client.closed(timeout=15) for client in clients))
        assert set(closes) == {(3001, "shutdown")}
        assert await asyncio.wait_for(server.process.wait(), 15) == 0
        assert any("all workers stopped" in line for line in server.lines)
    finally:
        for client in clients:
            await client.close()
        await server.stop()


async def test_workers_with_the_memory_broker_exit_2_with_a_clear_message() -> None:
    server: NodeProcess = await spawn_tidings("--workers", "2", "--broker", "memory", wait=False)
    try:
        assert await asyncio.wait_for(server.process.wait(), 20) == 2
        await server.wait_for_line(r"configuration error")
        assert server.lines[-1] == (
            "tidings: configuration error: workers: more than one worker needs a shared broker "
            "(--broker redis://...); the memory broker lives inside one process"
        )
    finally:
        await server.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_an_unreachable_broker_at_start_exits_1_with_a_clear_message(workers: str) -> None:
    closed = free_port()  # nothing listens there
    server = await spawn_tidings(
        "--workers", workers, "--broker", f"redis://127.0.0.1:{closed}/0", wait=False
    )
    try:
        assert await asyncio.wait_for(server.process.wait(), 20) == 1
        await server.wait_for_line(r"cannot start: the broker is unreachable")
        if workers == "2":
            await server.wait_for_line(r"exited with code 1 before it could serve; stopping")
    finally:
        await server.stop()
