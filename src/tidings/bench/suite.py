"""Runs the selected scenarios against the selected targets, one after the other.

With ``spawn`` every (target, scenario, size) gets a fresh server process,
pinned to the server CPUs while this process is pinned to the generator CPUs.
Without it, the scenarios run against a server someone else started (``url``);
memory figures then need ``server_pid``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tidings.bench.delta import delta_bytes
from tidings.bench.progress import Progress
from tidings.bench.results import ScenarioResult
from tidings.bench.scenarios import (
    DEFAULT_SIZES,
    SCENARIOS,
    Harness,
    Settings,
    map_updates,
    throughput,
)
from tidings.bench.spawn import ServerSpec, SpawnedServer
from tidings.bench.system import parse_cpu_list

DEFAULT_URLS = {
    "tidings": "ws://127.0.0.1:8000/connection/websocket",
    "reference": "ws://127.0.0.1:8080/",
    "mount": "ws://127.0.0.1:8000/rt/connection/websocket",
}


@dataclass
class SuiteOptions:
    """What to run and where (the CLI fills it)."""

    targets: list[str]
    scenarios: list[str]
    settings: Settings
    sizes: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(DEFAULT_SIZES))
    spawn: bool = False
    url: str | None = None
    server_pid: int | None = None
    server_cpus: str | None = "1"
    root: Path | None = None
    config: Path | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    f_workers: tuple[int, ...] = (1, 2)


async def run_suite(options: SuiteOptions, progress: Progress) -> list[ScenarioResult]:
    results: list[ScenarioResult] = []
    for target in options.targets:
        for scenario in options.scenarios:
            for size in options.sizes.get(scenario, DEFAULT_SIZES[scenario]):
                if scenario == "F":
                    results.extend(await _scenario_f(options, progress, target, size))
                elif scenario == "M":
                    results.extend(await _scenario_m(options, progress, target, size))
                else:
                    results.append(await _one(options, progress, target, scenario, size))
    return results


async def _one(
    options: SuiteOptions, progress: Progress, target: str, scenario: str, size: int
) -> ScenarioResult:
    run = SCENARIOS[scenario] if scenario != "G" else delta_bytes
    title = f"{target} · scenario {scenario} @ {size:,}"
    try:
        async with _server(options, target) as (url, pid):
            progress.start(title, server_pid=pid)
            harness = Harness(
                target, url, options.settings, progress, server_pid=pid, server_cpus=_cpus(options)
            )
            return await run(harness, size)
    except Exception as exc:  # one failed run must not lose the others' results
        return ScenarioResult(target, scenario, f"{scenario}@{size}", error=_describe(exc))
    finally:
        progress.stop()
        gc.collect()


async def _scenario_m(
    options: SuiteOptions, progress: Progress, target: str, size: int
) -> list[ScenarioResult]:
    """Plain publications then map updates against one server process (the same run)."""
    try:
        async with _server(options, target) as (url, pid):
            progress.start(f"{target} · scenario M @ {size:,}", server_pid=pid)
            harness = Harness(
                target, url, options.settings, progress, server_pid=pid, server_cpus=_cpus(options)
            )
            return await map_updates(harness, size)
    except Exception as exc:
        return [ScenarioResult(target, "M", f"M@{size}", error=_describe(exc))]
    finally:
        progress.stop()
        gc.collect()


async def _scenario_f(
    options: SuiteOptions, progress: Progress, target: str, size: int
) -> list[ScenarioResult]:
    """Scenario A's workload against tidings with the Redis broker, 1 then N workers.

    F asks how workers scale, so its servers are not pinned: N workers need N
    cores, and pinning them all to the server CPU would measure one core shared
    N ways. The generator is unpinned for F too (on a 2-core machine it must
    share the cores with the workers); the run records how much CPU each took,
    and a result is marked generator-bound as usual.
    """
    label = f"F@{size}"
    if target != "tidings":
        skipped = f"F compares tidings serve --workers; the {target} target has none"
        return [ScenarioResult(target, "F", label, skipped=skipped)]
    if not options.spawn:
        skipped = "needs --spawn (it restarts tidings with 1 and 2 workers)"
        return [ScenarioResult(target, "F", label, skipped=skipped)]
    results = []
    pinned = os.sched_getaffinity(0)
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    try:
        for workers in options.f_workers:
            results.append(await _scenario_f_once(options, progress, target, size, workers))
    finally:
        os.sched_setaffinity(0, pinned)
    return results


async def _scenario_f_once(
    options: SuiteOptions, progress: Progress, target: str, size: int, workers: int
) -> ScenarioResult:
    label = f"F@{size}"
    worker_label = f"{label} {workers} worker{'s' if workers > 1 else ''}"
    prefix = f"tidings-bench-{uuid.uuid4().hex[:10]}"
    unpinned = dataclasses.replace(options, server_cpus=None)
    try:
        async with _server(
            unpinned, target, broker=options.redis_url, workers=workers, broker_prefix=prefix
        ) as (url, pid):
            progress.start(f"tidings · scenario F @ {size:,}, {workers} workers", server_pid=pid)
            harness = Harness(target, url, options.settings, progress, server_pid=pid)
            result = await throughput(harness, size, scenario="F", label=worker_label)
            result.params.update(workers=workers, broker="redis", pinned=False)
            return result
    except Exception as exc:
        return ScenarioResult(target, "F", worker_label, error=_describe(exc))
    finally:
        progress.stop()
        await _delete_redis_keys(options.redis_url, prefix)
        gc.collect()


async def _delete_redis_keys(url: str, prefix: str) -> None:
    """The run's own keys only (never a FLUSH: the Redis may be shared)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    except Exception:  # the figures matter more than the cleanup; say nothing
        pass
    finally:
        await client.aclose()


@asynccontextmanager
async def _server(
    options: SuiteOptions,
    target: str,
    *,
    broker: str | None = None,
    workers: int | None = None,
    broker_prefix: str | None = None,
) -> AsyncIterator[tuple[str, int | None]]:
    if not options.spawn:
        yield options.url or DEFAULT_URLS[target], options.server_pid
        return
    if options.root is None:
        raise RuntimeError("--spawn needs the repository checkout (benchmarks/ was not found)")
    spec = ServerSpec(
        target,
        options.root,
        cpus=options.server_cpus,
        config=options.config,
        broker=broker,
        broker_prefix=broker_prefix,
        workers=workers,
    )
    server = SpawnedServer(spec)
    await server.start()
    try:
        # Let the freshly started server finish its own warm-up (imports, JIT).
        await asyncio.sleep(0.5)
        yield server.url, server.pid
    finally:
        await server.stop()


def _cpus(options: SuiteOptions) -> set[int] | None:
    """The server's CPUs, when this run pinned it there."""
    if options.spawn and options.server_cpus:
        return parse_cpu_list(options.server_cpus)
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 2000 else text[:2000] + "..."
