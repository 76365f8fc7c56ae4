"""The SDK-suite runner (tests/sdk/run.py): what it asks Jest to leave out.

The patterns are compiled by Node.js as Jest compiles them (``new RegExp(p, "i")``),
so a listed name with regular-expression syntax in it is still matched literally.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

RUNNER = Path(__file__).resolve().parents[1] / "sdk" / "run.py"


def load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sdk_run", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sdk_run"] = module
    spec.loader.exec_module(module)
    return module


run = load_runner()


def exclusions(*lines: str) -> object:
    return run.Exclusions({("js", line): "a reason" for line in lines})


def node_matches(pattern: str, names: list[str]) -> list[bool]:
    """Which ``names`` Jest would run under ``--testNamePattern=pattern``."""
    script = (
        "const [p, names] = JSON.parse(process.argv[1]);"
        "const r = new RegExp(p, 'i');"
        "console.log(JSON.stringify(names.map((n) => r.test(n))));"
    )
    node = shutil.which("node")
    assert node is not None
    out = subprocess.run(
        [node, "-e", script, json.dumps([pattern, names])],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    result: list[bool] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_name_pattern_leaves_out_exactly_the_listed_tests() -> None:
    listed = [
        "map delta: recovery after unsubscribe/resubscribe",
        "rpc (buffered) till connected [websocket] $1.5 + x? {a|b}",
    ]
    args = run.jest_exclusion_args(exclusions(*listed))
    (pattern,) = [a.removeprefix("--testNamePattern=") for a in args if "testNamePattern" in a]
    others = [
        "map delta: recovery after unsubscribe/resubscribe and more",
        "the map delta: recovery after unsubscribe/resubscribe",
        "rpc (buffered) till connected [websocket] $1.5 + xx {a|b}",
        "subscribes and unsubscribes from many subs",
    ]
    assert node_matches(pattern, listed + others) == [False, False, True, True, True, True]


def test_whole_files_are_ignored_by_path_and_node_modules_stays_ignored() -> None:
    args = run.jest_exclusion_args(exclusions("map.test.ts", "shared_poll.protobuf.test.ts"))
    assert args == [
        "--testPathIgnorePatterns",
        "/node_modules/",
        r"/map\.test\.ts$",
        r"/shared_poll\.protobuf\.test\.ts$",
    ]


def test_the_committed_exclusion_list_parses_and_gives_each_line_a_reason() -> None:
    loaded = run.Exclusions.load(run.EXCLUDED)
    assert all(reason for reason in loaded.reasons.values())
    assert all(suite in ("python", "js") for suite, _ in loaded.reasons)


HANGING_SUITE = """
import threading
import unittest


class Module(unittest.TestCase):
    def test_1_passes(self):
        pass

    def test_2_hangs(self):
        threading.Event().wait()  # never set: hangs until the runner stops the process

    def test_3_passes_after_the_hang(self):
        for variant in ("json", "protobuf"):
            with self.subTest(variant=variant):
                pass

    def test_4_fails(self):
        self.assertEqual(1, 2)
"""


@pytest.mark.timeout(60)
def test_a_module_that_hangs_costs_only_the_hanging_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module's process is stopped; the tests it did not finish run one per process,
    so the hang fails its own test and the others still count as they are."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "test_hangs.py").write_text(HANGING_SUITE)
    monkeypatch.setattr(run, "MODULE_SECONDS_PER_TEST", 0.0)
    work = tmp_path / "work"
    work.mkdir()
    outcomes = run.run_python_suite(run.Exclusions(), 2.0, work, suite_dir=tmp_path)
    statuses = {o.test.rsplit(".", 1)[1]: (o.status, o.detail[:20]) for o in outcomes}
    assert statuses == {
        "test_1_passes": ("passed", ""),
        "test_2_hangs": ("failed", "timed out after 2 s"),
        "test_3_passes_after_the_hang": ("passed", ""),
        "test_4_fails": ("failed", "tests.test_hangs.Mod"),
    }
