#!/usr/bin/env python3
"""The ASGI mount against the standalone server, measured in one run.

    .venv/bin/python benchmarks/asgi_mount.py [--markdown docs/benchmarks.md] [--duration 10]

Runs ``tidings bench --spawn --target tidings --target mount`` (scenarios A, B and C at
1,000 subscribers: deliveries/s, latency at a fixed rate, RSS per idle connection), each
server fresh and pinned to CPU 1, the generator to CPU 0. ``mount`` is ``rt.asgi()``
mounted at ``/rt`` in a FastAPI app under uvicorn (``tidings/bench/mount.py``; uvloop,
httptools, websockets' sans-I/O protocol), reading the same ``benchmarks/tidings-bench.toml``.
With ``--markdown`` the figures replace this script's section of the page (``make bench``
runs it after the main run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- asgi-mount -->"
FIGURES = [
    ("A", "deliveries_per_s", "deliveries/s, 1,000 subscribers", "{:,.0f}/s"),
    ("B", "p50_ms", "latency p50 at 200 publications/s", "{:,.1f} ms"),
    ("B", "p99_ms", "latency p99 at 200 publications/s", "{:,.1f} ms"),
    ("C", "rss_per_connection_kib", "RSS per idle connection", "{:,.2f} KiB"),
]


def run(duration: float, size: int, output: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "tidings", "bench", "--spawn", "--no-progress"]
    argv += ["--target", "tidings", "--target", "mount", "--server-cpus", "1"]
    argv += ["--generator-cpus", "0", "--duration", str(duration)]
    argv += ["--subscribers", str(size), "--json-out", str(output)]
    for scenario in ("A", "B", "C"):
        argv += ["--scenario", scenario]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    subprocess.run(argv, cwd=ROOT, env=env, check=False)
    document: dict[str, Any] = json.loads(output.read_text())
    return document


def figures(document: dict[str, Any]) -> list[tuple[str, str, str, str, list[str]]]:
    """(figure, standalone, mount, mount / standalone, notes) rows."""
    results = {(r["target"], r["scenario"]): r for r in document["results"]}
    rows = []
    for scenario, key, label, shape in FIGURES:
        values = []
        for target in ("tidings", "mount"):
            result = results.get((target, scenario), {})
            value = (result.get("metrics") or {}).get(key)
            values.append(value)
        cells = [shape.format(v) if v is not None else "-" for v in values]
        standalone, mount = values
        ratio = f"{mount / standalone:.2f}x" if standalone and mount is not None else "-"
        notes = [
            f"{target}: {note}"
            for target in ("tidings", "mount")
            for note in results.get((target, scenario), {}).get("notes", [])
        ]
        rows.append((label, cells[0], cells[1], ratio, notes))
    return rows


def markdown(document: dict[str, Any], load: str) -> str:
    lines = [
        MARKER,
        "## The ASGI mount against the standalone server",
        "",
        "`benchmarks/asgi_mount.py`: `tidings bench --spawn --target tidings --target mount`,",
        "scenarios A, B and C at 1,000 subscribers, both servers in the same run, each fresh",
        "and pinned to CPU 1, the generator to CPU 0. *mount* is `rt.asgi()` at `/rt` in a",
        "FastAPI app under uvicorn (uvloop, httptools, websockets' sans-I/O protocol), with the",
        "same configuration. The trade-off is explained in",
        "[python.md](python.md#mounting-in-fastapi).",
        "",
        "| figure | standalone | mount | mount / standalone |",
        "|---|---:|---:|---:|",
    ]
    notes: list[str] = []
    for label, standalone, mount, ratio, row_notes in figures(document):
        lines.append(f"| {label} | {standalone} | {mount} | {ratio} |")
        notes += row_notes
    lines += ["", f"Machine load when the run started: {load}."]
    if notes:
        lines += ["", "Notes from the run:", ""]
        lines += [f"- {note}" for note in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench-results" / "asgi.json")
    parser.add_argument("--markdown", type=Path, help="replace this script's section there")
    options = parser.parse_args()
    load = "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    options.json_out.parent.mkdir(parents=True, exist_ok=True)
    document = run(options.duration, options.subscribers, options.json_out)
    section = markdown(document, load)
    print(section)
    if options.markdown is not None:
        text = options.markdown.read_text() if options.markdown.exists() else ""
        text = text.split(MARKER)[0].rstrip() + "\n\n" + section
        options.markdown.write_text(text)


if __name__ == "__main__":
    main()
