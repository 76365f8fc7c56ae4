"""What ``metrics = true`` costs: ``tidings bench`` scenario A with metrics off and on, alternated.

Each repeat runs scenario A (one channel, 1,000 subscribers, one publisher
publishing as fast as they receive) twice with ``tidings bench --spawn``: once
with ``benchmarks/tidings-bench.toml`` as it is, once with ``metrics = true``
added, in alternating order, each on a fresh server pinned to its own CPU. It
reports deliveries per second and the server's CPU time per delivery (the
figure a shared machine disturbs least), the median of each, and how much CPU
other processes used meanwhile. On a shared machine that spread is wider than
the cost, so it also times each metering call in-process and bounds what they
add per delivery in this scenario. With ``--markdown`` it writes (or replaces)
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
import timeit
from dataclasses import dataclass, field
from pathlib import Path

from tidings.bench.report import replace_section
from tidings.metrics import PrometheusMetrics
from tidings.protocol.wire import JSON_WIRE

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


PER_PUBLICATION = {
    "publication_received": "metrics.publication_received()",
    "command": "metrics.command('publish', 0)",
    "sent": "metrics.sent(wire, 40)",  # the publish command's reply
}
PER_BATCH = {
    "delivered": "metrics.delivered(wire, 5, 1000, 600)",
    "flushed": "metrics.flushed(5)",
}


def call_costs() -> dict[str, float]:
    """Nanoseconds per metering call, best of 5 runs of 200,000 calls each."""
    namespace = {"metrics": PrometheusMetrics(), "wire": JSON_WIRE}
    costs = {}
    for name, statement in {**PER_PUBLICATION, **PER_BATCH}.items():
        runs = timeit.repeat(statement, globals=namespace, number=200_000, repeat=5)
        costs[name] = min(runs) / 200_000 * 1e9
    return costs


def markdown(
    off: Variant, on: Variant, repeats: int, subscribers: int, load: str, costs: dict[str, float]
) -> str:
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
    overlap = max(min(on.ns_per_delivery), min(off.ns_per_delivery)) <= min(
        max(on.ns_per_delivery), max(off.ns_per_delivery)
    )
    verdict = (
        "within run-to-run noise: the ranges of the two overlap"
        if overlap
        else "outside run-to-run noise: the ranges do not overlap"
    )
    per_publication = sum(costs[name] for name in PER_PUBLICATION)
    per_batch = sum(costs[name] for name in PER_BATCH)
    bound = (per_publication + per_batch) / subscribers  # at worst one batch per publication
    baseline = off.median(off.ns_per_delivery)
    call_rows = "\n".join(
        f"| `{name}` | per {'publication' if name in PER_PUBLICATION else 'batch'} | {ns:.0f} |"
        for name, ns in costs.items()
    )
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

With metrics on: deliveries/s {rate:+.1%}, server CPU per delivery {cost:+.1%} (medians),
{verdict}.

What the metering itself adds can be bounded from its calls, timed in-process (best of 5 x
200,000 calls, same run):

| call | made | ns |
|---|---|---:|
{call_rows}

Per publication that is {per_publication:.0f} ns, per batch {per_batch:.0f} ns; with
{subscribers:,} subscribers and at worst one batch per publication, at most {bound:.2f} ns per
delivery: {bound / baseline:.1%} of the {baseline:.1f} ns a delivery costs with metrics off.
The hub counts once per batch and wire format (`len(members)`): the per-recipient loop is the
same one shared bytes object and one `write` per subscriber either way.
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
    costs = call_costs()
    with tempfile.TemporaryDirectory() as directory:
        on_config = Path(directory) / "metrics-on.toml"
        on_config.write_text("metrics = true\n" + BENCH_CONFIG.read_text())
        off, on = Variant("metrics off", BENCH_CONFIG), Variant("metrics on", on_config)
        for repeat in range(options.repeat):
            for variant in (off, on) if repeat % 2 == 0 else (on, off):
                run_once(variant, options.subscribers, options.duration)
    section = markdown(off, on, options.repeat, options.subscribers, load, costs)
    print(section)
    if options.markdown is not None:
        text = options.markdown.read_text() if options.markdown.exists() else ""
        options.markdown.write_text(replace_section(text, MARKER, section))


if __name__ == "__main__":
    main()
