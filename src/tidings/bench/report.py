"""Turning results into a terminal table, JSON, a PNG chart and ``docs/benchmarks.md``.

Ratios are always ``tidings / reference`` for the same figure measured in the
same run; each row says whether higher or lower is better, so a ratio above 1
is good for throughput and bad for latency or memory.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tidings.bench.results import HEADLINES, Metric, ScenarioResult
from tidings.bench.stats import format_number, ratio


@dataclass
class Row:
    """One headline figure of one scenario size, for every target that ran it."""

    label: str
    scenario: str
    metric: Metric
    values: dict[str, float | None]
    ok: dict[str, bool]
    baseline: str | None = None
    """What the ratio compares against: "reference", or a row label (scenarios F, M)."""
    ratio: float | None = None


def _base_label(result: ScenarioResult) -> str:
    return result.label


def comparison_rows(results: Sequence[ScenarioResult]) -> list[Row]:
    """Headline rows, pairing each tidings figure with the reference's of the same label."""
    by_label: dict[str, dict[str, ScenarioResult]] = {}
    order: list[str] = []
    for result in results:
        label = _base_label(result)
        if label not in by_label:
            by_label[label] = {}
            order.append(label)
        by_label[label][result.target] = result
    rows: list[Row] = []
    for label in order:
        runs = by_label[label]
        scenario = next(iter(runs.values())).scenario
        for metric in HEADLINES.get(scenario, ()):
            values = {target: _metric(run, metric.key) for target, run in runs.items()}
            if all(value is None for value in values.values()):
                continue
            ok = {target: run.ok for target, run in runs.items()}
            row = Row(label, scenario, metric, values, ok)
            if "reference" in values and "tidings" in values:
                row.baseline = "reference"
                row.ratio = ratio(values["tidings"], values["reference"])
            rows.append(row)
    _scaling_ratios(rows)
    _map_ratios(rows)
    return rows


def _map_ratios(rows: list[Row]) -> None:
    """Scenario M compares tidings' map updates with its plain publications of the same run
    (the reference has no maps)."""
    plains = {
        (row.label.removesuffix(" plain"), row.metric.key): row
        for row in rows
        if row.scenario == "M" and row.label.endswith(" plain")
    }
    for row in rows:
        if row.scenario != "M" or not row.label.endswith(" map"):
            continue
        plain = plains.get((row.label.removesuffix(" map"), row.metric.key))
        if plain is not None:
            row.baseline = plain.label
            row.ratio = ratio(row.values.get("tidings"), plain.values.get("tidings"))


def _scaling_ratios(rows: list[Row]) -> None:
    """Scenario F compares its multi-worker runs with the 1-worker run of the same size."""
    singles = {
        (row.label.split(" ")[0], row.metric.key): row
        for row in rows
        if row.scenario == "F" and row.label.endswith(" 1 worker")
    }
    for row in rows:
        if row.scenario != "F" or row.label.endswith(" 1 worker"):
            continue
        single = singles.get((row.label.split(" ")[0], row.metric.key))
        if single is not None:
            row.baseline = single.label
            row.ratio = ratio(row.values.get("tidings"), single.values.get("tidings"))


def _metric(result: ScenarioResult, key: str) -> float | None:
    if result.skipped is not None or result.error is not None:
        return None
    value = result.metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _targets(results: Sequence[ScenarioResult]) -> list[str]:
    targets: list[str] = []
    for result in results:
        if result.target not in targets:
            targets.append(result.target)
    # The reference first, as the baseline.
    return sorted(targets, key=lambda target: target != "reference")


def _value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    text = format_number(value)
    return f"{text} {unit}" if unit and unit != "/s" else (text + (unit if unit else ""))


def print_table(console: Console, results: Sequence[ScenarioResult]) -> None:
    """The final table: headline figures per target, ratio, and the correctness check."""
    targets = _targets(results)
    table = Table(title="tidings bench", show_lines=False)
    table.add_column("scenario")
    table.add_column("figure")
    for target in targets:
        table.add_column(target, justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("better")
    for row in comparison_rows(results):
        cells = [row.label, row.metric.label]
        for target in targets:
            value = row.values.get(target)
            mark = "" if value is None else ("" if row.ok.get(target, True) else " [red]✗[/red]")
            cells.append(_value_text(value, row.metric.unit) + mark)
        cells.append(_ratio_text(row))
        cells.append(row.metric.better)
        table.add_row(*cells)
    console.print(table)
    for result in results:
        if result.skipped:
            console.print(f"[dim]{result.target} {result.label}: skipped: {result.skipped}[/dim]")
        if result.error:
            console.print(f"[red]{result.target} {result.label}: failed: {result.error}[/red]")
        if result.check is not None and not result.check.get("ok"):
            console.print(
                f"[red]{result.target} {result.label}: delivery check failed: {result.check}[/red]"
            )
        for note in result.notes:
            console.print(f"[yellow]{result.target} {result.label}: {note}[/yellow]")
        for problem, count in list(result.problems.items())[:5]:
            console.print(f"[yellow]{result.target} {result.label}: {count}x {problem}[/yellow]")


def _ratio_text(row: Row) -> str:
    if row.ratio is None:
        return "-"
    if row.baseline == "reference":
        suffix = ""
    elif row.scenario == "M":
        suffix = " vs plain"
    else:
        suffix = " vs 1 worker"
    return f"{row.ratio:.2f}x{suffix}"


def suite_document(
    results: Sequence[ScenarioResult], environment: dict[str, Any], setup: dict[str, Any]
) -> dict[str, Any]:
    """Everything measured, for the JSON file."""
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment,
        "setup": setup,
        "results": [result.as_dict() for result in results],
        "comparison": [
            {
                "label": row.label,
                "scenario": row.scenario,
                "metric": row.metric.key,
                "unit": row.metric.unit,
                "better": row.metric.better,
                "values": row.values,
                "ok": row.ok,
                "baseline": row.baseline,
                "ratio": row.ratio,
            }
            for row in comparison_rows(results)
        ],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=_json_default) + "\n")


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} in JSON")


class ChartUnavailable(Exception):
    """matplotlib is missing: the chart needs the optional ``bench`` extra."""


@dataclass
class Panel:
    """One small bar chart: a figure of one scenario size, one bar per server (or per
    worker count, for scenario F)."""

    title: str
    unit: str
    bars: list[tuple[str, float]]


CHART_SKIPS = frozenset({"connections", "publications_per_s"})
"""Figures left off the chart: implied by another panel (deliveries = publications x
receivers) or the same for every server (connections held)."""


def chart_panels(results: Sequence[ScenarioResult]) -> list[Panel]:
    """The chart's panels, in table order; scenario F's worker counts share a panel."""
    panels: list[Panel] = []
    scaling: dict[tuple[str, str], Panel] = {}
    targets = _targets(results)
    for row in comparison_rows(results):
        if row.metric.key in CHART_SKIPS:
            continue
        if row.scenario == "F":
            base, _, workers = row.label.partition(" ")
            value = row.values.get("tidings")
            if value is None:
                continue
            panel = scaling.get((base, row.metric.key))
            if panel is None:
                panel = Panel(f"{base} (Redis broker): {row.metric.label}", row.metric.unit, [])
                scaling[(base, row.metric.key)] = panel
                panels.append(panel)
            panel.bars.append((workers, value))
            continue
        bars = [
            (target, value) for target in targets if (value := row.values.get(target)) is not None
        ]
        title = f"{row.label}: {row.metric.label}"
        if row.ratio is not None:
            title += f"\n{_ratio_text(row)} ({row.metric.better} is better)"
        panels.append(Panel(title, row.metric.unit, bars))
    return panels


def draw_chart(path: Path, results: Sequence[ScenarioResult]) -> None:
    """One small bar chart per headline figure, the servers side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ChartUnavailable(
            "--chart needs matplotlib: pip install 'tidings[bench]' (or pip install matplotlib)"
        ) from None
    panels = chart_panels(results)
    if not panels:
        raise ValueError("nothing to draw: no scenario produced a headline figure")
    colours = {"reference": "#8c8c8c", "tidings": "#2a7ab9", "mount": "#d9822b"}
    columns = min(4, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.4 * columns, 2.9 * lines), squeeze=False)
    for axis, panel in zip(axes.flat, panels, strict=False):
        names = [name for name, _ in panel.bars]
        values = [value for _, value in panel.bars]
        bars = axis.bar(names, values, color=[colours.get(name, "#2a7ab9") for name in names])
        for bar, value in zip(bars, values, strict=True):
            axis.annotate(
                format_number(value),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        axis.set_title(panel.title, fontsize=9)
        axis.set_ylabel(panel.unit or "count", fontsize=8)
        axis.tick_params(labelsize=8)
        axis.ticklabel_format(axis="y", style="plain", useOffset=False)
        axis.margins(y=0.2)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_markdown(
    path: Path,
    results: Sequence[ScenarioResult],
    environment: dict[str, Any],
    setup: dict[str, Any],
    chart: Path | None,
) -> None:
    """``docs/benchmarks.md``: environment, method, table, chart, checks and notes."""
    targets = _targets(results)
    lines = [
        "# Benchmarks",
        "",
        *_provenance(targets, setup),
        "",
        "## Environment",
        "",
        "| | |",
        "|---|---|",
    ]
    env_rows = [
        ("CPU", f"{environment.get('cpu_model')} ({environment.get('cpu_count')} cores)"),
        ("memory", f"{(environment.get('memory_bytes') or 0) / 2**30:.0f} GiB"),
        ("kernel", environment.get("kernel")),
        ("Python", f"{environment.get('python')} (uvloop {environment.get('uvloop')})"),
        ("Node.js", environment.get("node") or "not found"),
        ("tidings", environment.get("tidings") or "source tree"),
        ("open files limit", str(environment.get("open_files_limit", {}).get("hard"))),
        ("server CPUs", setup.get("server_cpus") or "not pinned"),
        ("generator CPUs", setup.get("generator_cpus") or "not pinned"),
    ]
    lines += [f"| {name} | {value} |" for name, value in env_rows]
    lines += ["", "## Method", "", *_method_servers(setup)]
    lines += [
        "- Payloads are 100 bytes carrying a sequence number and the send time. Every",
        "  receiver checks that it got every publication exactly once, in order (tidings",
        "  offsets; the reference's sequence numbers).",
        "- Ratios are tidings / reference; the last column says which direction is better.",
        "",
        "## Results",
        "",
    ]
    header = ["scenario", "figure", *targets, "ratio", "better"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(targets) + 1) + ["---"]) + "|")
    for row in comparison_rows(results):
        cells = [row.label, row.metric.label]
        for target in targets:
            value = row.values.get(target)
            mark = "" if value is None or row.ok.get(target, True) else " (check failed)"
            cells.append(_value_text(value, row.metric.unit) + mark)
        cells += [_ratio_text(row), row.metric.better]
        lines.append("| " + " | ".join(cells) + " |")
    if chart is not None:
        relative = os.path.relpath(chart, path.parent)
        lines += ["", f"![benchmark chart]({Path(relative).as_posix()})"]
    lines += [
        "",
        "## Runs",
        "",
        "| target | scenario | delivery check | generator CPU | server CPU | notes |",
        "|---|---|---|---:|---:|---|",
    ]
    for result in results:
        if result.skipped:
            check = "not run"
        elif result.error:
            check = "failed to run"
        elif result.check is None:
            check = "n/a"
        else:
            check = "exactly once, in order" if result.check.get("ok") else "FAILED"
        generator = result.generator.get("cpu_share")
        server = result.server.get("cpu_share")
        notes = [*result.notes]
        if result.skipped:
            notes.append(f"skipped: {result.skipped}")
        if result.error:
            notes.append(f"error: {result.error}")
        text = "; ".join(one_line(note) for note in notes)
        lines.append(
            f"| {result.target} | {result.label} | {check} | "
            f"{_share(generator)} | {_share(server)} | {text} |"
        )
    lines += [
        "",
        "Generator CPU is the load generator's share of its core during the measuring",
        "window; below 90 % the generator was not the bottleneck.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = path.read_text() if path.exists() else ""
    start = kept.find(SECTION_START)
    tail = kept[start:] if start >= 0 else ""
    path.write_text("\n".join(lines) + (tail if tail else ""))


SECTION_START = "\n<!-- "
"""Sections other scripts (and people) keep on the page begin with a marker comment
(``<!-- asgi-mount -->``); rewriting the generated part above them keeps them."""


def replace_section(page: str, marker: str, section: str) -> str:
    """``page`` with the section that starts at ``marker`` replaced by ``section`` (which
    starts with that marker): up to the next section's marker or the end. Appended when
    the page has no such section yet."""
    before, found, after = page.partition(marker)
    if not found:
        return page.rstrip() + "\n\n" + section
    end = after.find(SECTION_START)
    rest = after[end:] if end >= 0 else ""
    return before.rstrip() + "\n\n" + section.rstrip() + "\n" + rest


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])/(?:[\w.\-]+/)+([\w.\-]+)")


def _spawned(setup: dict[str, Any]) -> bool:
    """Did the run start its own servers? (Pages from older JSON files have no key: yes.)"""
    return bool(setup.get("spawn", True))


def _provenance(targets: Sequence[str], setup: dict[str, Any]) -> list[str]:
    if _spawned(setup):
        against = "both servers in turn." if len(targets) > 1 else "one server."
        return [
            "Generated by `make bench` (`tidings bench --spawn`); do not edit by hand. "
            "Every figure",
            f"below was measured in one run, on one machine, against {against}",
        ]
    where = f" at {setup['url']}" if setup.get("url") else ""
    return [
        f"Generated by `tidings bench` against a server started separately{where}; every figure",
        "below was measured in one run, on one machine.",
    ]


def _method_servers(setup: dict[str, Any]) -> list[str]:
    """How the servers ran: pinned fresh processes (``--spawn``) or one started by hand."""
    if _spawned(setup):
        return [
            "- The reference is `benchmarks/reference/server.js` (express + http + ws): every",
            "  message it receives is sent to every open client. tidings runs",
            "  `tidings serve --config benchmarks/tidings-bench.toml`.",
            "- Each scenario gets a fresh server process, pinned with `taskset` to the server",
            "  CPUs; the load generator (one process, uvloop, raw protocol clients) is pinned",
            "  to the generator CPUs. Scenario F is the exception: it asks how workers scale,",
            "  and N workers need N cores, so its servers and the generator run unpinned and",
            "  share the machine's cores (the runs table shows what each used).",
        ]
    generator = setup.get("generator_cpus")
    pinning = f"pinned to CPUs {generator}" if generator else "not pinned"
    return [
        "- An ad-hoc run (no `--spawn`): every scenario ran against the same server, started",
        "  by hand beforehand; its configuration, its CPUs and what else ran on the machine",
        "  are not recorded here, and it was not restarted between scenarios.",
        f"- The load generator (one process, uvloop, raw protocol clients) was {pinning}.",
    ]


def one_line(text: str, limit: int = 240) -> str:
    """A note fit for a Markdown table cell: first and last line, no machine paths.

    A failed start quotes the server's log; the page keeps its first line and
    the final one (the exception), and shortens absolute paths to their file
    name, so nothing of the machine that ran the benchmark leaks into the docs.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    kept = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    kept = _ABSOLUTE_PATH.sub(lambda match: match.group(1), kept).replace("|", "/")
    return kept if len(kept) <= limit else kept[: limit - 3] + "..."


def _share(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.0%}"
