"""``tidings bench`` scenario M (map updates against plain publications) runs end to end
against a server with the bench configuration, and checks every delivery."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import StartServer
from tidings.bench.progress import Progress
from tidings.bench.scenarios import Harness, Settings, map_updates
from tidings.config import load_config

pytestmark = pytest.mark.timeout(60)

BENCH_CONFIG = Path(__file__).parents[2] / "benchmarks" / "tidings-bench.toml"


async def test_scenario_m_measures_both_kinds_in_one_run(start_server: StartServer) -> None:
    config = load_config(BENCH_CONFIG, env={}, overrides={"port": 0})
    server = await start_server(config)
    progress = Progress(Console(quiet=True), enabled=False)
    harness = Harness("tidings", server.ws_url, Settings(duration=0.3), progress)
    plain, mapped = await map_updates(harness, 20)
    assert (plain.label, mapped.label) == ("M@20 plain", "M@20 map")
    for result in (plain, mapped):
        assert result.ok, (result.error, result.check, result.problems)
        assert result.metrics["publications"] > 0
        assert result.metrics["deliveries"] == result.metrics["publications"] * 20
    assert mapped.params["keys"] == 1000
