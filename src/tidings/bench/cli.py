"""``tidings bench``: the command line of the load generator."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from tidings.bench.results import ScenarioResult
from tidings.bench.scenarios import DEFAULT_SIZES, Settings
from tidings.bench.spawn import find_repository_root

T = TypeVar("T")

DEFAULT_SCENARIOS = ("A", "B", "C")


@click.command("bench")
@click.option(
    "--target",
    "targets",
    type=click.Choice(["tidings", "reference", "mount"]),
    multiple=True,
    help="Server kind to measure; repeat for several (reference first makes the baseline). "
    "mount: rt.asgi() in a FastAPI app under uvicorn (needs fastapi and uvicorn). "
    "Default: tidings.",
)
@click.option(
    "--url",
    help="WebSocket URL of a running server (without --spawn). Default: "
    "ws://127.0.0.1:8000/connection/websocket (tidings), ws://127.0.0.1:8080/ (reference), "
    "ws://127.0.0.1:8000/rt/connection/websocket (mount).",
)
@click.option(
    "--scenario",
    "scenarios",
    type=click.Choice(list("ABCDEFGM"), case_sensitive=False),
    multiple=True,
    help="Scenario to run; repeatable. Default: A, B and C. M: map updates against plain "
    "publications in the same run.",
)
@click.option(
    "--subscribers",
    "sizes",
    type=click.IntRange(min=1),
    multiple=True,
    help="Receivers (A, B, F, G, M), connections (C, D) or chat clients (E); repeat for "
    "several sizes. Default per scenario: A 1000 and 10000, B 1000, C 10000, D 100000, "
    "E 10000, F 1000, G 100, M 1000.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds of publishing in A, B, E and F.",
)
@click.option(
    "--hold",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds D holds its idle connections before the publication.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.1),
    default=200.0,
    show_default=True,
    help="Publications per second in B.",
)
@click.option(
    "--chat-rate",
    type=click.FloatRange(min=0.1),
    default=2000.0,
    show_default=True,
    help="Publications per second in E, across all rooms.",
)
@click.option(
    "--rooms", type=click.IntRange(min=1), default=1000, show_default=True, help="Rooms in E."
)
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every figure and the environment to this JSON file.",
)
@click.option(
    "--chart",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the headline figures to this PNG (needs matplotlib: the bench extra).",
)
@click.option(
    "--markdown",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a results page (e.g. docs/benchmarks.md) with the table and chart.",
)
@click.option(
    "--spawn/--no-spawn",
    default=False,
    show_default=True,
    help="Start each server itself, a fresh one per scenario, pinned with taskset.",
)
@click.option(
    "--server-cpus",
    default="1",
    show_default=True,
    help="CPUs for spawned servers (taskset -c); empty to leave unpinned.",
)
@click.option(
    "--generator-cpus",
    default=None,
    help="CPUs to pin the generator to. Default: 0 with --spawn, unpinned otherwise.",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="tidings config for --spawn. Default: benchmarks/tidings-bench.toml.",
)
@click.option(
    "--redis-url",
    default="redis://127.0.0.1:6379/0",
    show_default=True,
    help="Broker URL for scenario F.",
)
@click.option(
    "--workers",
    "f_workers",
    type=click.IntRange(min=1),
    multiple=True,
    help="Worker counts compared in F; repeatable. Default: 1 and 2.",
)
@click.option(
    "--server-pid",
    type=int,
    help="PID of an externally started server, for RSS and CPU (C needs it).",
)
@click.option("--token", help="Connection token for tidings (default: connect anonymously).")
@click.option(
    "--window",
    type=click.IntRange(min=1),
    help="A/F: publications in flight before the publisher waits for its echo "
    "(default: 262144 deliveries' worth, 4 to 1024 publications).",
)
@click.option(
    "--lag-limit",
    type=click.IntRange(min=1),
    help="A/F: publications receivers may fall behind on average before publishing "
    "pauses (default: twice the window).",
)
@click.option(
    "--ramp-batch",
    type=click.IntRange(min=1),
    default=250,
    show_default=True,
    help="Connections opened at once during ramp-up.",
)
@click.option(
    "--source-ips",
    type=click.IntRange(min=1),
    help="Loopback source addresses (127.0.0.1..N); default: as many as needed.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the last deliveries after publishing ends.",
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Live progress display."
)
@click.option(
    "--from-json",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Measure nothing: redraw the table, chart and page from an earlier --json-out.",
)
@click.option(
    "--self-test",
    is_flag=True,
    help="Only measure the generator's own receive capacity (deliveries per CPU second).",
)
def bench(**options: Any) -> None:
    """Measure tidings (or the reference Node.js server) under load.

    Scenarios: A one channel, flat-out publishing, deliveries/s; B fixed rate,
    publish-to-receive latency; C server RSS per idle connection; D many idle
    connections, one publication to all; E chat rooms; F Redis broker, 1 vs 2
    workers; M map updates against plain publications, same run. Every receiver
    checks it got every publication exactly once, in order.
    """
    console = Console(stderr=False)
    if options["self_test"]:
        _self_test(console)
        return
    _validate(options)
    if options["chart"] is not None:
        _require_matplotlib()
    if options["from_json"] is not None:
        results, environment, setup = _load(options["from_json"])
    else:
        results, environment, setup = _run(options, console)
    _report(options, console, results, environment, setup)
    if any(result.error or (result.check and not result.check.get("ok")) for result in results):
        raise SystemExit(1)


def _validate(options: dict[str, Any]) -> None:
    targets = options["targets"] or ("tidings",)
    if options["url"] and options["spawn"]:
        raise click.UsageError("--url and --spawn exclude each other: --spawn picks its own port")
    if options["url"] and len(targets) > 1:
        raise click.UsageError("--url names one server: give a single --target with it")
    if options["server_pid"] and options["spawn"]:
        raise click.UsageError("--server-pid is for a server you started; --spawn knows its own")


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "--chart needs matplotlib: pip install 'tidings[bench]' (or pip install matplotlib)"
        ) from None


def _run(
    options: dict[str, Any], console: Console
) -> tuple[list[ScenarioResult], dict[str, Any], dict[str, Any]]:
    from tidings.bench.progress import Progress
    from tidings.bench.suite import DEFAULT_URLS, SuiteOptions, run_suite
    from tidings.bench.system import environment, pin_to_cpus, raise_open_files_limit

    targets = list(dict.fromkeys(options["targets"] or ("tidings",)))
    scenarios = [s.upper() for s in dict.fromkeys(options["scenarios"] or DEFAULT_SCENARIOS)]
    sizes = dict(DEFAULT_SIZES)
    if options["sizes"]:
        sizes = {scenario: tuple(options["sizes"]) for scenario in "ABCDEFGM"}
    generator_cpus = options["generator_cpus"]
    if generator_cpus is None and options["spawn"]:
        generator_cpus = "0"
    if generator_cpus:
        pin_to_cpus(generator_cpus)
    soft, hard = raise_open_files_limit()
    root = find_repository_root() if options["spawn"] else None
    if options["spawn"] and root is None:
        raise click.ClickException(
            "--spawn needs a tidings checkout: run it from the repository (benchmarks/reference)"
        )
    settings = Settings(
        duration=options["duration"],
        hold=options["hold"],
        rate_b=options["rate"],
        rate_e=options["chat_rate"],
        rooms=options["rooms"],
        window=options["window"],
        lag_limit=options["lag_limit"],
        ramp_batch=options["ramp_batch"],
        drain_timeout=options["drain_timeout"],
        token=options["token"],
        source_ips=options["source_ips"],
    )
    suite = SuiteOptions(
        targets=targets,
        scenarios=scenarios,
        settings=settings,
        sizes=sizes,
        spawn=options["spawn"],
        url=options["url"],
        server_pid=options["server_pid"],
        server_cpus=options["server_cpus"] or None,
        root=root,
        config=options["config"],
        redis_url=options["redis_url"],
        f_workers=tuple(options["f_workers"] or (1, 2)),
    )
    progress = Progress(console, enabled=options["progress"])
    results = _run_loop(run_suite(suite, progress))
    setup = {
        "targets": targets,
        "scenarios": scenarios,
        "spawn": options["spawn"],
        "url": None if options["spawn"] else options["url"] or DEFAULT_URLS[targets[0]],
        "server_cpus": suite.server_cpus if options["spawn"] else None,
        "generator_cpus": generator_cpus,
        "open_files": {"soft": soft, "hard": hard},
        "settings": {
            key: value
            for key, value in vars(settings).items()
            if key not in ("token", "extra_labels")
        },
        "event_loop": _loop_name(),
    }
    return results, environment(), setup


def _load(path: Path) -> tuple[list[ScenarioResult], dict[str, Any], dict[str, Any]]:
    try:
        document = json.loads(path.read_text())
        results = [ScenarioResult.from_dict(item) for item in document["results"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(f"{path}: expected a --json-out file ({exc})") from None
    return results, document.get("environment", {}), document.get("setup", {})


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _run_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (it is a tidings dependency off Windows)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def _report(
    options: dict[str, Any],
    console: Console,
    results: list[ScenarioResult],
    environment: dict[str, Any],
    setup: dict[str, Any],
) -> None:
    from tidings.bench import report

    report.print_table(console, results)
    document = report.suite_document(results, environment, setup)
    if options["json_out"] is not None:
        report.write_json(options["json_out"], document)
        console.print(f"wrote {options['json_out']}")
    chart = options["chart"]
    if chart is not None:
        try:
            report.draw_chart(chart, results)
        except (report.ChartUnavailable, ValueError) as exc:
            console.print(f"[red]no chart: {exc}[/red]")
            chart = None
        else:
            console.print(f"wrote {chart}")
    if options["markdown"] is not None:
        report.write_markdown(options["markdown"], results, environment, setup, chart)
        console.print(f"wrote {options['markdown']}")


def _self_test(console: Console) -> None:
    from rich.table import Table

    from tidings.bench.capacity import capacity_report

    table = Table(title="generator receive capacity (one core, no sockets)")
    table.add_column("target")
    table.add_column("frames per read", justify="right")
    table.add_column("documents per frame", justify="right")
    table.add_column("deliveries per CPU second", justify="right")
    for kind, runs in capacity_report().items():
        for run in runs:
            rate = run["deliveries_per_cpu_s"]
            table.add_row(
                kind,
                str(int(run["frames_per_read"])),
                str(int(run["documents_per_frame"])),
                f"{rate:,.0f}" if math.isfinite(rate) else "-",
            )
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    bench(sys.argv[1:])
