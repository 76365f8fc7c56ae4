"""``tidings bench`` scenario G against a server running the bench configuration.

The figures themselves are for ``tidings bench``; this checks that the scenario
measures what it says: both halves decode exactly the published documents, and
the half that negotiated delta compression receives a fraction of the bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import StartServer
from tidings.bench.delta import delta_bytes
from tidings.bench.progress import Progress
from tidings.bench.scenarios import Harness, Settings
from tidings.config import load_config

pytestmark = pytest.mark.timeout(60)

BENCH_CONFIG = Path(__file__).parents[2] / "benchmarks" / "tidings-bench.toml"


async def test_scenario_g_decodes_every_document_and_counts_fewer_bytes_with_delta(
    start_server: StartServer,
) -> None:
    server = await start_server(load_config(BENCH_CONFIG, env={}, overrides={"port": 0}))
    settings = Settings(duration=0.5)
    progress = Progress(Console(quiet=True), enabled=False)
    harness = Harness("tidings", server.ws_url, settings, progress)
    result = await delta_bytes(harness, 6)
    assert result.error is None, result.error
    assert result.check is not None and result.check["ok"], result.check
    assert result.metrics["publications"] == 50
    assert 2000 < result.metrics["bytes_per_publication_plain"] < 2600
    assert result.metrics["delta_share"] < 0.3


async def test_scenario_g_is_skipped_for_the_reference(start_server: StartServer) -> None:
    server = await start_server()
    progress = Progress(Console(quiet=True), enabled=False)
    harness = Harness("reference", server.ws_url, Settings(), progress)
    result = await delta_bytes(harness, 2)
    assert result.skipped == "the reference server has no delta compression"
