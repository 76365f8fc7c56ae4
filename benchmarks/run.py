#!/usr/bin/env python3
"""``make bench``: measure the reference server and tidings in one run.

1. Installs the reference server's npm packages when they are missing
   (``npm ci`` in ``benchmarks/reference``; the lock file pins them).
2. Runs ``tidings bench --spawn`` against the reference, then tidings, every
   scenario, each on a fresh server pinned to CPU 1 while the load generator
   runs pinned to CPU 0.
3. Writes ``bench-results/bench.json`` (every figure and the environment),
   ``docs/benchmarks.png`` (the chart, when matplotlib is installed) and
   ``docs/benchmarks.md`` (table, ratios, chart, checks).
4. Runs scenario D at its full 100,000 connections with ``benchmarks/hundred_thousand.py``
   (workers sharing Redis: one process may not hold that many sockets here) and appends
   its figures to ``docs/benchmarks.md``.
5. Measures the ASGI mount (``rt.asgi()`` under uvicorn) against the standalone server with
   ``benchmarks/asgi_mount.py`` and appends that section too.
6. Measures fan-out to Protobuf clients against JSON ones, and to a mixed channel, with
   ``benchmarks/protobuf_fanout.py``, and writes that section as well.

Arguments are passed on to ``tidings bench``; a later option overrides the
defaults here, and naming any ``--scenario`` replaces the default set. For a
quick look: ``python benchmarks/run.py --scenario A --subscribers 1000 --duration 5``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "benchmarks" / "reference"
ALL_SCENARIOS = ("A", "B", "C", "D", "E", "F", "G", "M")


def ensure_reference_packages() -> None:
    if (REFERENCE / "node_modules" / "ws").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("make bench needs Node.js and npm for the reference server (npm is not on PATH)")
    print("installing the reference server's packages (npm ci)", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=REFERENCE, check=True)


def arguments(extra: list[str]) -> list[str]:
    args = [
        "--spawn",
        "--target",
        "reference",
        "--target",
        "tidings",
        "--server-cpus",
        "1",
        "--generator-cpus",
        "0",
        "--json-out",
        str(ROOT / "bench-results" / "bench.json"),
        "--markdown",
        str(ROOT / "docs" / "benchmarks.md"),
    ]
    if importlib.util.find_spec("matplotlib") is not None:
        args += ["--chart", str(ROOT / "docs" / "benchmarks.png")]
    else:
        print("matplotlib is not installed: no chart (pip install 'tidings[bench]')", flush=True)
    if not any(arg == "--scenario" or arg.startswith("--scenario=") for arg in extra):
        for scenario in ALL_SCENARIOS:
            args += ["--scenario", scenario]
    return args + extra


def main() -> None:
    ensure_reference_packages()
    # Run from the checkout even when tidings is not installed.
    sys.path.insert(0, str(ROOT / "src"))
    from tidings.bench import bench

    extra = sys.argv[1:]
    code = bench.main(args=arguments(extra), prog_name="tidings bench", standalone_mode=False)
    if code:
        sys.exit(code)
    if not extra:  # the full run: scenario D at 100,000 connections too (see that script)
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "hundred_thousand.py"),
                "--markdown",
                str(ROOT / "docs" / "benchmarks.md"),
            ],
            check=True,
        )
        # The ASGI mount against the standalone server (see that script).
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "asgi_mount.py"),
                "--markdown",
                str(ROOT / "docs" / "benchmarks.md"),
            ],
            check=True,
        )
        # Protobuf clients against JSON ones (see that script).
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "protobuf_fanout.py"),
                "--markdown",
                str(ROOT / "docs" / "benchmarks.md"),
            ],
            check=True,
        )


if __name__ == "__main__":
    main()
