"""``--workers 2 --metrics``: a scrape answered by either worker shows both workers' values
(``prometheus_client``'s multiprocess mode), and a dead worker's gauges leave the sums."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tests.conftest import WsClient, token
from tests.scale.conftest import spawn_tidings
from tests.support.http import api, http
from tests.support.polling import eventually

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]

CONFIG = """
[channels.namespaces.feed]
allow_subscribe_for_client = true
"""
CHANNEL = "feed:workers"
MAX_CLIENTS = 40


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = await http(port, "GET", "/metrics")
    assert status == 200, body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


async def clients_per_worker(port: int) -> dict[str, int]:
    """Worker name (``...-worker-N``) -> its live clients, from API ``info`` calls that
    land on either worker (each lists itself first)."""
    counts: dict[str, int] = {}
    for _ in range(30):
        status, answer = await api(port, "info", {})
        assert status == 200, answer
        first = answer["result"]["nodes"][0]
        counts[first["name"].rpartition("-")[2]] = first["num_clients"]
        if len(counts) == 2:
            break
    return counts


async def test_a_scrape_sums_every_worker(scale_redis: str, prefix: str, tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text(CONFIG)
    server = await spawn_tidings(
        "--workers", "2",
        "--metrics",
        "--config", str(config),
        "--broker", scale_redis,
        "--broker-prefix", prefix,
        "--shutdown-timeout", "3s",
        name="supervisor",
    )  # fmt: skip
    clients: list[WsClient] = []
    try:

        async def open_client() -> None:
            ws = await connect(f"ws://127.0.0.1:{server.port}/connection/websocket")
            client = WsClient(ws)
            clients.append(client)
            await client.connect(token(f"user{len(clients)}"))
            await client.subscribe(CHANNEL)

        for _ in range(4):
            await open_client()
        counts = await clients_per_worker(server.port)
        while not (len(counts) == 2 and all(counts.values())) and len(clients) < MAX_CLIENTS:
            await open_client()
            counts = await clients_per_worker(server.port)
        assert len(counts) == 2 and all(counts.values()), counts
        total = len(clients)
        assert sum(counts.values()) == total

        status, answer = await api(server.port, "publish", {"channel": CHANNEL, "data": 1})
        assert status == 200 and "result" in answer, answer
        for client in clients:
            await client.publications(CHANNEL, 1, timeout=10)

        # Each worker writes what it counted every second; then whichever worker answers,
        # the scrape holds both (each alone has fewer than `total`).
        async def both_counted() -> bool:
            samples = await scrape(server.port)
            return samples[("tidings_publications_received_total", ())] == 2  # once per worker

        await eventually(both_counted, "both workers' counts in a scrape", 10)
        for _ in range(6):
            samples = await scrape(server.port)
            websocket = (("transport", "websocket"),)
            assert samples[("tidings_connections", websocket)] == total
            assert samples[("tidings_connects_total", websocket)] == total
            assert samples[("tidings_deliveries_total", websocket)] == total
            assert samples[("tidings_publications_received_total", ())] == 2  # once per worker

        # Worker 1 dies: its clients are gone from the gauge, its counts stay in the counters.
        pid = int((await server.wait_for_line(r"worker 1 started \(pid (\d+)\)")).group(1))
        mark = len(server.lines)
        os.kill(pid, signal.SIGKILL)
        await server.wait_for_line(r"worker 1 is serving", start=mark)

        async def only_worker_2_counts() -> bool:
            samples = await scrape(server.port)
            return samples[("tidings_connections", (("transport", "websocket"),))] == counts["2"]

        await eventually(only_worker_2_counts, "the dead worker's connections to leave", 20)
        samples = await scrape(server.port)
        assert samples[("tidings_connects_total", (("transport", "websocket"),))] == total

        server.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.process.wait(), 20) == 0
    finally:
        for client in clients:
            await client.close()
        await server.stop()
