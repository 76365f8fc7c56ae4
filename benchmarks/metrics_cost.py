"""What ``metrics = true`` costs: ``tidings bench`` scenario A with metrics off and on, alternated.

Each repeat runs scenario A (one channel, 1,000 subscribers, one publisher
publishing as fast as they receive) twice with ``tidings bench --spawn``: once
with ``benchmarks/tidings-bench.toml`` as it is, once with ``metrics = true``
added, in alternating order, each on a fresh server pinned to its own CPU. It
reports deliveries per second and the server's CPU time per delivery (the
figure a shared machine disturbs least), the median of each, and how much CPU
other processes used meanwhile. With ``--markdown`` it writes (or replaces)
its section of ``docs/benchmarks.md``.

    python benchmarks/metrics_cost.py --repeat 5 --markdown docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_CONFIG = REPO / "benchmarks" / "tidings-bench.toml"
MARKER = "<!-- metrics-cost -->"


@dataclass
class Variant:
    name: str
    config: Path
    deliveries_per_s: list[float] = field(default_factory=list)
    ns_per_delivery: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)

    def median(self, figures: list[float]) -> float:
        return statistics.median(figures) if figures else float("nan")


def run_once(variant: Variant, subscribers: int, duration: float) -> None:
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "result.json"
        command = [
            sys.executable, "-m", "tidings", "bench", "--spawn",
            "--scenario", "a", "--subscribers", str(subscribers),
            "--duration", str(duration), "--config", str(variant.config),
            "--json-out", str(out),
        ]  # fmt: skip
        subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        (result,) = json.loads(out.read_text())["results"]
    if not result["ok"]:
        raise SystemExit(f"{variant.name}: the run failed its delivery check: {result['check']}")
    metrics = result["metrics"]
    variant.deliveries_per_s.append(metrics["deliveries_per_s"])
    variant.ns_per_delivery.append(result["server"]["cpu_s"] / metrics["deliveries"] * 1e9)
    variant.others.append(result["generator"]["other_cpu_share"])
    print(
        f"{variant.name:>11}: {metrics['deliveries_per_s']:>12,.0f} deliveries/s, "
        f"{variant.ns_per_delivery[-1]:6.1f} ns server CPU per delivery, "
        f"others {variant.others[-1]:.0%} of a core",
        flush=True,
    )


def markdown(off: Variant, on: Variant, repeats: int, subscribers: int, load: str) -> str:
    def row(name: str, variant: Variant) -> str:
        rates = variant.deliveries_per_s
        costs = variant.ns_per_delivery
        return (
            f"| {name} | {variant.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
            f"| {variant.median(costs):.1f} ({min(costs):.1f}-{max(costs):.1f}) "
            f"| {min(variant.others):.0%}-{max(variant.others):.0%} |"
        )

    rate = on.median(on.deliveries_per_s) / off.median(off.deliveries_per_s) - 1
    cost = on.median(on.ns_per_delivery) / off.median(off.ns_per_delivery) - 1
    return f"""{MARKER}
## What metrics cost

`benchmarks/metrics_cost.py` runs scenario A ({subscribers:,} subscribers of one channel, one
publisher as fast as they receive, `tidings bench --spawn`: a fresh server pinned to one CPU,
the generator to the other) {repeats} times with `metrics = false` and {repeats} times with
`metrics = true`, alternating. Server CPU per delivery is the server's CPU time divided by the
deliveries; "others" is CPU used meanwhile by processes outside the run. Load average at the
start: {load}.

| metrics | deliveries/s, median (min-max) | server CPU ns per delivery, median (min-max) | others |
|---|---:|---:|---:|
{row("off", off)}
{row("on", on)}

With metrics on: deliveries/s {rate:+.1%}, server CPU per delivery {cost:+.1%} (medians).
The hub counts once per batch and wire format (`len(members)`), so the per-recipient loop is
the same one shared bytes object and one `write` per subscriber either way.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--markdown", type=Path, help="write the section into this page")
    options = parser.parse_args()
    load = " / ".join(f"{figure:.2f}" for figure in os.getloadavg())
    print(f"load average: {load}", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        on_config = Path(directory) / "metrics-on.toml"
        on_config.write_text("metrics = true\n" + BENCH_CONFIG.read_text())
        off, on = Variant("metrics off", BENCH_CONFIG), Variant("metrics on", on_config)
        for repeat in range(options.repeat):
            for variant in (off, on) if repeat % 2 == 0 else (on, off):
                run_once(variant, options.subscribers, options.duration)
    section = markdown(off, on, options.repeat, options.subscribers, load)
    print(section)
    if options.markdown is not None:
        text = options.markdown.read_text() if options.markdown.exists() else ""
        before, _, after = text.partition(MARKER)
        rest = after.partition("<!-- ")  # keep any section that follows ours
        tail = rest[1] + rest[2] if rest[1] else ""
        options.markdown.write_text(
            before.rstrip() + "\n\n" + section + ("\n" + tail if tail else "")
        )


if __name__ == "__main__":
    main()
