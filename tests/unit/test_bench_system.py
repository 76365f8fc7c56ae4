"""The generator's readings of /proc and its server command lines."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tidings.bench import system
from tidings.bench.spawn import ServerSpec, SpawnError, find_repository_root

pytestmark = pytest.mark.timeout(10)

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", {0}), ("0,1", {0, 1}), ("2-4", {2, 3, 4}), (" 1 , 3-4 ", {1, 3, 4})],
)
def test_cpu_lists(text: str, cpus: set[int]) -> None:
    assert system.parse_cpu_list(text) == cpus


def test_empty_cpu_list_is_refused() -> None:
    with pytest.raises(ValueError, match="CPU list"):
        system.parse_cpu_list(",")


@linux_only
def test_own_process_readings() -> None:
    pid = os.getpid()
    assert system.rss_bytes(pid) > 0
    assert system.cpu_seconds(pid) >= 0
    assert system.descendants(pid)[0] == pid
    assert system.tree_rss_bytes(pid) >= system.rss_bytes(pid)


@linux_only
def test_cpu_times_of_this_machine() -> None:
    busy, total = system.cpu_times(system.own_cpus())
    assert 0 <= busy <= total
    assert total > 0


def test_gone_process_reads_as_zero() -> None:
    assert system.rss_bytes(2**22 + 12345) == 0
    assert system.cpu_seconds(2**22 + 12345) == 0.0


def test_tidings_command_is_pinned_and_uses_this_python(tmp_path: Path) -> None:
    spec = ServerSpec("tidings", tmp_path, cpus="1", broker="redis://x", workers=2)
    argv, _env, cwd = spec.command(9000)
    assert argv[:3] == ["taskset", "-c", "1"]
    assert argv[3:6] == [sys.executable, "-m", "tidings"]
    assert argv[6:] == [
        "serve",
        "--config",
        str(tmp_path / "benchmarks" / "tidings-bench.toml"),
        "--port",
        "9000",
        "--broker",
        "redis://x",
        "--workers",
        "2",
    ]
    assert cwd == tmp_path


def test_reference_needs_its_packages(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="npm ci"):
        ServerSpec("reference", tmp_path).command(9000)


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="tidings, reference or mount"):
        ServerSpec("nginx", tmp_path, cpus=None).command(9000)


def test_the_mount_runs_under_uvicorn_with_the_bench_config(tmp_path: Path) -> None:
    argv, env, _ = ServerSpec("mount", tmp_path, cpus=None).command(9000)
    assert argv[1:4] == ["-m", "uvicorn", "tidings.bench.mount:app"]
    assert argv[argv.index("--port") + 1] == "9000"
    assert env["TIDINGS_BENCH_CONFIG"] == str(tmp_path / "benchmarks" / "tidings-bench.toml")


def test_repository_root_is_found_from_this_checkout() -> None:
    root = find_repository_root(Path(__file__).parent)
    assert root is not None
    assert (root / "benchmarks" / "reference" / "server.js").is_file()
