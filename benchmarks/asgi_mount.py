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

from tidings.bench.report import replace_section

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- asgi-mount -->"
FIGURES = [
    ("A", "deliveries_per_s", "deliveries/s, 1,000 subscribers", "{:,.0f}/s", max),
    ("B", "p50_ms", "latency p50 at 200 publications/s", "{:,.1f} ms", min),
    ("B", "p99_ms", "latency p99 at 200 publications/s", "{:,.1f} ms", min),
    ("C", "rss_per_connection_kib", "RSS per idle connection", "{:,.2f} KiB", min),
]
"""Scenario, metric, label, format, and which of several runs is the best."""


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


def figures(documents: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(figure, standalone, mount, mount / standalone) rows: the best of the runs."""
    rows = []
    for scenario, key, label, shape, best in FIGURES:
        values: list[float | None] = []
        for target in ("tidings", "mount"):
            found = [
                float(result["metrics"][key])
                for document in documents
                for result in document["results"]
                if result["target"] == target
                and result["scenario"] == scenario
                and not result.get("error")
                and (result.get("metrics") or {}).get(key) is not None
            ]
            values.append(best(found) if found else None)
        cells = [shape.format(v) if v is not None else "-" for v in values]
        standalone, mount = values
        ratio = f"{mount / standalone:.2f}x" if standalone and mount is not None else "-"
        rows.append((label, cells[0], cells[1], ratio))
    return rows


def busy_notes(documents: list[dict[str, Any]]) -> list[str]:
    """What the runs said about other processes on the machine."""
    return [
        f"run {index}, {result['target']} {result['label']}: {note}"
        for index, document in enumerate(documents, 1)
        for result in document["results"]
        for note in result.get("notes", [])
        if note.startswith("busy machine")
    ]


def markdown(documents: list[dict[str, Any]], loads: list[str]) -> str:
    lines = [
        MARKER,
        "## The ASGI mount against the standalone server",
        "",
        "`benchmarks/asgi_mount.py`: `tidings bench --spawn --target tidings --target mount`,",
        f"scenarios A, B and C at 1,000 subscribers, best of {len(documents)} runs; in each run",
        "both servers are measured one after the other, each fresh",
        "and pinned to CPU 1, the generator to CPU 0. *mount* is `rt.asgi()` at `/rt` in a",
        "FastAPI app under uvicorn (uvloop, httptools, websockets' sans-I/O protocol), with the",
        "same configuration. The trade-off is explained in",
        "[python.md](python.md#mounting-in-fastapi).",
        "",
        "| figure | standalone | mount | mount / standalone |",
        "|---|---:|---:|---:|",
    ]
    for label, standalone, mount, ratio in figures(documents):
        lines.append(f"| {label} | {standalone} | {mount} | {ratio} |")
    lines += ["", "Machine load when each run started: " + "; ".join(loads) + "."]
    notes = busy_notes(documents)
    if notes:
        lines += ["", "Other processes ran meanwhile (the machine is shared):", ""]
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="take the best of this many runs")
    parser.add_argument(
        "--json-out",
        type=Path,
        default=ROOT / "bench-results" / "asgi.json",
        help="each run's figures go to NAME.1.json, NAME.2.json, ...",
    )
    parser.add_argument("--markdown", type=Path, help="replace this script's section there")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="measure nothing: write the section from earlier runs' JSON files",
    )
    options = parser.parse_args()
    options.json_out.parent.mkdir(parents=True, exist_ok=True)
    documents, loads = [], []
    for path in options.from_json or ():
        documents.append(json.loads(path.read_text()))
        loads.append(str(documents[-1].get("setup", {}).get("load", "not recorded")))
    for index in range(0 if options.from_json else options.runs):
        loads.append(", ".join(f"{x:.2f}" for x in os.getloadavg()))
        output = options.json_out.with_suffix(f".{index + 1}.json")
        document = run(options.duration, options.subscribers, output)
        document.setdefault("setup", {})["load"] = loads[-1]
        output.write_text(json.dumps(document, indent=2) + "\n")
        documents.append(document)
    section = markdown(documents, loads)
    print(section)
    if options.markdown is not None:
        text = options.markdown.read_text() if options.markdown.exists() else ""
        options.markdown.write_text(replace_section(text, MARKER, section))


if __name__ == "__main__":
    main()
