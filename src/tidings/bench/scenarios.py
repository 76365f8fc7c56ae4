"""The scenarios A-F, each a coroutine that returns a :class:`ScenarioResult`.

Common rules:

* Every receiver is opened and ready (for tidings: connected and subscribed)
  before the first publication, on a channel no earlier run used, so tidings
  offsets start at 1 and every receiver expects exactly 1, 2, 3, ...
* The publisher is a connection of its own whose deliveries are counted apart
  from the receivers': for the reference it gets its own messages back (the
  broadcast includes the sender), for tidings it subscribes too, so both
  servers deliver each publication to receivers + 1 connections, and the
  publisher's own copies pace it.
* Figures are taken over a measuring window; the generator's CPU use over the
  same window (fraction of one core) is reported with them, so a result where
  the generator was the bottleneck says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tidings.bench.client import (
    CLIENT_CLASSES,
    READY,
    BenchClient,
    ClientFailed,
    Tally,
    TidingsClient,
    TidingsMapClient,
)
from tidings.bench.payload import make_payload
from tidings.bench.progress import Progress
from tidings.bench.results import ScenarioResult
from tidings.bench.stats import check_deliveries, latency_summary, per_second
from tidings.bench.system import (
    all_cpu_seconds,
    cpu_times,
    descendants,
    ephemeral_ports,
    own_cpus,
    tree_cpu_seconds,
    tree_rss_bytes,
)

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
GENERATOR_BOUND = 0.9
"""Generator CPU share of its core above which a throughput figure is a lower bound."""
OTHER_LOAD = 0.1
MACHINE_BOUND = 0.9
"""All cores this busy: nothing was left for the server to grow into (scenario F's workers)."""
"""CPU (in cores) used by unrelated processes above which a run is flagged as disturbed."""


@dataclass
class Settings:
    """Knobs shared by the scenarios (the CLI fills them)."""

    duration: float = 10.0
    hold: float = 60.0
    rate_b: float = 200.0
    rate_e: float = 2000.0
    rooms: int = 1000
    window: int | None = None
    lag_limit: int | None = None
    in_flight: int = 262_144
    ramp_batch: int = 250
    connect_timeout: float = 60.0
    drain_timeout: float = 60.0
    stall_timeout: float = 10.0
    token: str | None = None
    payload_size: int = 100
    fd_reserve: int = 64
    source_ips: int | None = None
    extra_labels: dict[str, str] = field(default_factory=dict)


class RampError(Exception):
    """Opening connections failed part way; ``clients`` holds those that opened."""

    def __init__(self, message: str, clients: list[BenchClient]) -> None:
        super().__init__(message)
        self.clients = clients


class Harness:
    """Opens and closes client connections against one server URL."""

    def __init__(
        self,
        kind: str,
        url: str,
        settings: Settings,
        progress: Progress,
        *,
        server_pid: int | None = None,
        server_cpus: set[int] | None = None,
    ) -> None:
        if kind not in CLIENT_CLASSES:
            raise ValueError(f"expected a target of tidings, reference or mount, got {kind!r}")
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise ValueError(f"expected a ws:// URL, got {url!r}")
        self.kind = kind
        self.url = url
        self.settings = settings
        self.progress = progress
        self.server_pid = server_pid
        self.server_cpus = server_cpus
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.host_header = parts.netloc
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        family = socket.getaddrinfo(self.host, self.port, socket.AF_INET, socket.SOCK_STREAM)
        address = family[0][4]
        self.address: tuple[str, int] = (str(address[0]), int(address[1]))
        self.client_class = CLIENT_CLASSES[kind]
        self.run_id = secrets.token_hex(4)
        self._source_ips: list[str | None] = [None]

    # -- connections --------------------------------------------------------------

    def channel(self, name: str, namespace: str = "bench") -> str:
        """A channel name in the bench namespace that no earlier run used."""
        return f"{namespace}:{name}-{self.run_id}-{secrets.token_hex(3)}"

    def plan_sources(self, total: int) -> None:
        """Spread ``total`` connections over loopback source addresses if one is not enough.

        Each source address has the kernel's ephemeral port range (about 28,000
        ports by default); beyond that, connections bind 127.0.0.2, .3, ...
        with IP_BIND_ADDRESS_NO_PORT so ports are chosen per destination.
        """
        per_address = max(1000, ephemeral_ports() - 2000)
        wanted = self.settings.source_ips or math.ceil(total / per_address)
        loopback = ipaddress.ip_address(self.address[0]).is_loopback
        if wanted <= 1 or not loopback or self.address[0] != "127.0.0.1":
            self._source_ips = [None]
        else:
            self._source_ips = [f"127.0.0.{index + 1}" for index in range(wanted)]

    async def open_clients(
        self,
        tally: Tally,
        count: int,
        channel_of: Callable[[int], str | None],
        *,
        what: str = "subscribers",
        first_index: int = 0,
    ) -> list[BenchClient]:
        """Open ``count`` clients in batches, each batch fully ready before the next.

        Raises :class:`RampError` (with the clients that did open) when a batch
        fails or does not get ready within ``connect_timeout``.
        """
        loop = asyncio.get_running_loop()
        settings = self.settings
        clients: list[BenchClient] = []
        self.progress.watch(tally, connections=count)
        self.progress.phase(f"opening {count:,} {what}")
        for first in range(0, count, settings.ramp_batch):
            group: list[BenchClient] = []
            for index in range(first, min(count, first + settings.ramp_batch)):
                group.append(self._client(tally, loop, channel_of(index), first_index + index))
            results = await asyncio.gather(
                *(self._connect(client) for client in group), return_exceptions=True
            )
            failures = [result for result in results if isinstance(result, BaseException)]
            opened = [
                client for client, result in zip(group, results, strict=True) if result is None
            ]
            clients.extend(opened)
            if failures:
                self._settle_futures(group)
                raise RampError(
                    f"{len(failures)} of {len(group)} connections failed, "
                    f"{len(clients):,} of {count:,} opened ({failures[0]!r})",
                    clients,
                )
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(client.ready for client in group)),
                    settings.connect_timeout,
                )
            except (TimeoutError, ClientFailed) as exc:
                self._settle_futures(group)
                ready = sum(1 for client in group if client.state == READY)
                ready += len(clients) - len(group)
                reason = (
                    f"not ready within {settings.connect_timeout:.0f} s"
                    if isinstance(exc, TimeoutError)
                    else str(exc)
                )
                raise RampError(
                    f"connections failed at {ready:,} of {count:,} ready: {reason}", clients
                ) from None
        return clients

    def _client(
        self, tally: Tally, loop: asyncio.AbstractEventLoop, channel: str | None, index: int
    ) -> BenchClient:
        ready: asyncio.Future[BenchClient] = loop.create_future()
        if issubclass(self.client_class, TidingsClient):
            return self.client_class(
                tally,
                ready,
                host=self.host_header,
                path=self.path,
                channel=channel,
                index=index,
                token=self.settings.token,
            )
        return self.client_class(
            tally, ready, host=self.host_header, path=self.path, channel=channel, index=index
        )

    async def _connect(self, client: BenchClient) -> None:
        loop = asyncio.get_running_loop()
        source = self._source_ips[client.index % len(self._source_ips)]
        if source is None:
            await loop.create_connection(lambda: client, self.address[0], self.address[1])
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, self.address)
        except BaseException:
            sock.close()
            raise
        await loop.create_connection(lambda: client, sock=sock)

    @staticmethod
    def _settle_futures(clients: Sequence[BenchClient]) -> None:
        """Mark pending ready futures as failed so nothing waits on them later."""
        for client in clients:
            if not client.ready.done():
                client.ready.set_exception(ClientFailed("abandoned"))
            with contextlib.suppress(BaseException):
                client.ready.exception()

    async def close_clients(self, clients: Sequence[BenchClient]) -> None:
        self.progress.phase(f"closing {len(clients):,} connections")
        for client in clients:
            client.close()
        # Let the transports flush their close frames before the next phase.
        await asyncio.sleep(0)
        gc.collect()

    def fd_budget(self) -> int:
        """How many client connections this process and the server can both hold."""
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        budget = soft
        if self.server_pid is not None:
            budget = min(budget, _process_nofile(self.server_pid) or budget)
        return max(0, budget - self.settings.fd_reserve)

    # -- measuring ------------------------------------------------------------------

    def cpu_window(self) -> CpuWindow:
        return CpuWindow(self.server_pid, self.server_cpus)

    def server_rss(self) -> int | None:
        return tree_rss_bytes(self.server_pid) if self.server_pid else None

    async def wait_for(self, tally: Tally, total: int, limit: float) -> bool:
        """Wait until ``tally`` counted ``total`` deliveries; False after ``limit`` seconds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tally.expect(total, future)
        try:
            await asyncio.wait_for(future, limit)
        except TimeoutError:
            return False
        finally:
            tally.drained = None
            tally.drain_target = 1 << 62
        return True


def _process_nofile(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/limits") as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


class CpuWindow:
    """CPU used by the generator, the server and everything else over a window.

    Generator: ``cpu_share`` is this process's CPU time over wall time (1.0 =
    one core) and ``headroom`` is what is left of its core; ``core_busy`` is
    how busy the generator's CPUs were from all causes (kernel network work,
    other processes). Server: its process tree's ``cpu_share``, and
    ``core_busy`` of the server CPUs when known. ``other_cpu_share`` is the CPU
    every other process on the machine used meanwhile: a benchmark on a busy
    machine says so.
    """

    def __init__(self, server_pid: int | None, server_cpus: set[int] | None = None) -> None:
        self.server_pid = server_pid
        self.cpus = own_cpus()
        self.server_cpus = server_cpus
        self.others = all_cpu_seconds()
        self.wall = time.monotonic()
        self.generator = time.process_time()
        self.core = cpu_times(self.cpus)
        self.server_core = cpu_times(server_cpus) if server_cpus else (0, 0)
        self.server = tree_cpu_seconds(server_pid) if server_pid else 0.0

    def stop(self) -> tuple[dict[str, float], dict[str, float]]:
        wall = time.monotonic() - self.wall
        generator_cpu = time.process_time() - self.generator
        generator = {
            "window_s": wall,
            "cpu_s": generator_cpu,
            "cpu_share": generator_cpu / wall if wall > 0 else math.nan,
        }
        generator["headroom"] = 1.0 - generator["cpu_share"]
        busy, total = cpu_times(self.cpus)
        if total > self.core[1]:
            generator["core_busy"] = (busy - self.core[0]) / (total - self.core[1])
            generator["cores"] = len(self.cpus)
        server: dict[str, float] = {}
        mine = {os.getpid()}
        if self.server_pid:
            server_cpu = tree_cpu_seconds(self.server_pid) - self.server
            server = {"cpu_s": server_cpu, "cpu_share": server_cpu / wall if wall > 0 else math.nan}
            mine.update(descendants(self.server_pid))
            if self.server_cpus:
                busy, total = cpu_times(self.server_cpus)
                if total > self.server_core[1]:
                    server["core_busy"] = (busy - self.server_core[0]) / (
                        total - self.server_core[1]
                    )
        others = 0.0
        for pid, seconds in all_cpu_seconds().items():
            if pid not in mine:
                others += seconds - self.others.get(pid, 0.0)
        generator["other_cpu_share"] = others / wall if wall > 0 else math.nan
        return generator, server


# -- publishing -----------------------------------------------------------------------


class Publisher:
    """Sends numbered payloads through one client and counts them."""

    def __init__(self, client: BenchClient, payload_size: int, publisher_id: int = 0) -> None:
        self.client = client
        self.payload_size = payload_size
        self.publisher_id = publisher_id
        self.sent = 0

    def frames(self, count: int) -> bytes:
        parts = []
        monotonic_ns = time.monotonic_ns
        size = self.payload_size
        for _ in range(count):
            self.sent += 1
            payload = make_payload(self.sent, monotonic_ns(), self.publisher_id, size)
            parts.append(self.client.publication_frame(payload))
        return b"".join(parts)

    def publish(self, count: int = 1) -> None:
        self.client.send(self.frames(count))


def pacing(settings: Settings, receivers: int) -> tuple[int, int]:
    """The publisher's echo window and the receivers' lag limit, in publications.

    By default the window holds ``in_flight`` deliveries (256 Ki: 256
    publications at 1,000 receivers, 26 at 10,000), between 4 and 1,024
    publications. A deeper queue lets a batching server batch more, but a server
    that buffers without bound (the reference) only grows its memory: measured
    at 1,000 receivers, tidings gained about 1.7x from 64 to 256 publications
    in flight, while the reference was flat from 16 to 1,024.
    """
    window = settings.window or max(4, min(1024, settings.in_flight // max(1, receivers)))
    lag_limit = settings.lag_limit or 2 * window
    return window, lag_limit


async def publish_flat_out(
    harness: Harness,
    publisher: Publisher,
    publisher_tally: Tally,
    receivers_tally: Tally,
    receivers: int,
    duration: float,
) -> tuple[float, str | None]:
    """Publish as fast as the server accepts for ``duration`` seconds.

    Two windows pace the publisher: at most ``window`` publications not yet
    echoed back to the publisher itself, and receivers at most ``lag_limit``
    publications behind on average. Without the second, a server that accepts
    faster than it delivers would only fill its buffers (and disconnect slow
    clients), which measures nothing. Returns the publishing time and, if the
    server stopped making progress, why.
    """
    settings = harness.settings
    window, lag_limit = pacing(settings, receivers)
    client = publisher.client
    start = time.monotonic()
    end = start + duration
    while time.monotonic() < end:
        if client.closing:
            return time.monotonic() - start, "the publisher's connection closed"
        in_flight = publisher.sent - client.received
        if in_flight >= window:
            if not await harness.wait_for(
                publisher_tally, publisher.sent - window // 2, settings.stall_timeout
            ):
                return time.monotonic() - start, "no echo to the publisher for too long"
            continue
        behind = publisher.sent * receivers - receivers_tally.delivered
        if behind >= lag_limit * receivers:
            target = (publisher.sent - lag_limit // 2) * receivers
            if not await harness.wait_for(receivers_tally, target, settings.stall_timeout):
                return time.monotonic() - start, "receivers stopped making progress"
            continue
        publisher.publish(window - in_flight)
        if client.paused:
            await asyncio.sleep(0.001)
    return time.monotonic() - start, None


async def publish_at_rate(publishers: Sequence[Publisher], rate: float, duration: float) -> float:
    """Publish ``rate`` times per second for ``duration`` seconds, round robin over
    ``publishers``; returns the time it took.

    Each wake-up sends every publication that is due, so late wake-ups catch up
    at once. Sleeps last at least a millisecond (the event loop's timer
    resolution): shorter ones return at once and would spin the generator.
    """
    total = int(rate * duration)
    start = time.monotonic()
    sent = 0
    index = 0
    count = len(publishers)
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            publishers[index].publish()
            index = (index + 1) % count
            sent += 1
        next_due = start + sent / rate
        await asyncio.sleep(max(0.001, next_due - time.monotonic()))
    return time.monotonic() - start


# -- scenarios ------------------------------------------------------------------------


def _result(harness: Harness, scenario: str, label: str, **params: object) -> ScenarioResult:
    result = ScenarioResult(harness.kind, scenario, label, params=dict(params))
    result.params.update(harness.settings.extra_labels)
    return result


def _finish(
    result: ScenarioResult,
    tallies: Sequence[Tally],
    window: tuple[dict[str, float], dict[str, float]] | None,
) -> ScenarioResult:
    for tally in tallies:
        for problem, count in tally.problems.items():
            result.problems[problem] = result.problems.get(problem, 0) + count
    if window is not None:
        result.generator, result.server = window
        share = result.generator.get("cpu_share", 0.0)
        others = result.generator.get("other_cpu_share", 0.0)
        if share >= GENERATOR_BOUND:
            result.notes.append(
                f"generator-bound: the generator used {share:.0%} of its core, so the "
                "server may be faster than this figure"
            )
        if others >= OTHER_LOAD:
            result.notes.append(
                f"busy machine: other processes used {others:.0%} of a core meanwhile"
            )
        cores = result.generator.get("cores", 0.0)
        used = share + others + result.server.get("cpu_share", 0.0)
        if cores and used >= MACHINE_BOUND * cores:
            result.notes.append(
                f"machine-bound: server, generator and others used {used:.2f} of the "
                f"{cores:.0f} cores, so the figure measures the machine, not the server"
            )
    return result


async def _open_publisher(
    harness: Harness, channel: str | None, index: int
) -> tuple[Tally, BenchClient]:
    tally = Tally()
    clients = await harness.open_clients(
        tally, 1, lambda _: channel, what="publisher", first_index=index
    )
    return tally, clients[0]


async def throughput(
    harness: Harness,
    receivers: int,
    *,
    scenario: str = "A",
    label: str | None = None,
    namespace: str = "bench",
) -> ScenarioResult:
    """Scenario A (and F, M): one channel, ``receivers`` subscribers, publish flat out."""
    settings = harness.settings
    result = _result(
        harness,
        scenario,
        label or f"{scenario}@{receivers}",
        receivers=receivers,
        duration_s=settings.duration,
        payload_bytes=settings.payload_size,
    )
    result.params["window"], result.params["lag_limit"] = pacing(settings, receivers)
    harness.plan_sources(receivers + 1)
    channel = harness.channel("a", namespace)
    tally = Tally()
    clients: list[BenchClient] = []
    publisher_tally = Tally()
    try:
        clients = await harness.open_clients(tally, receivers, lambda _: channel)
        publisher_tally, publisher_client = await _open_publisher(harness, channel, receivers)
        clients.append(publisher_client)
        publisher = Publisher(publisher_client, settings.payload_size)
        harness.progress.watch(tally, connections=receivers, published=lambda: publisher.sent)
        harness.progress.phase("publishing", seconds=settings.duration)
        cpu = harness.cpu_window()
        started = time.monotonic_ns()
        async with Timeline(tally, lambda: publisher.sent) as timeline:
            publish_time, stall = await publish_flat_out(
                harness, publisher, publisher_tally, tally, receivers, settings.duration
            )
            harness.progress.phase("waiting for the last deliveries")
            drained = await harness.wait_for(
                tally, publisher.sent * receivers, settings.drain_timeout
            )
        window = cpu.stop()
        result.timeline = timeline.samples
        elapsed = (tally.last_delivery_ns - started) / 1e9
        result.metrics.update(
            publications=publisher.sent,
            deliveries=tally.delivered,
            publish_time_s=publish_time,
            elapsed_s=elapsed,
            deliveries_per_s=per_second(tally.delivered, elapsed),
            publications_per_s=per_second(publisher.sent, elapsed),
        )
        if stall:
            result.notes.append(f"stalled: {stall}")
        if not drained:
            result.notes.append(
                f"not every delivery arrived within {settings.drain_timeout:.0f} s of the end"
            )
        result.check = check_deliveries(
            (client.sequence_state() for client in clients[:-1]), publisher.sent
        ).as_dict()
        return _finish(result, (tally, publisher_tally), window)
    finally:
        await harness.close_clients(clients)


class Timeline:
    """Samples ``[seconds, deliveries, publications]`` every half second while open.

    Kept in the JSON output: a flat stretch shows a stall that an average hides.
    """

    step = 0.5

    def __init__(self, tally: Tally, published: Callable[[], int]) -> None:
        self.tally = tally
        self.published = published
        self.samples: list[list[float]] = []
        self._start = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Timeline:
        self._start = time.monotonic()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()

    def _sample(self) -> None:
        elapsed = round(time.monotonic() - self._start, 3)
        self.samples.append([elapsed, self.tally.delivered, self.published()])

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.step)


async def latency(harness: Harness, receivers: int) -> ScenarioResult:
    """Scenario B: ``receivers`` subscribers, a fixed rate, publish-to-receive latency."""
    settings = harness.settings
    result = _result(
        harness,
        "B",
        f"B@{receivers}",
        receivers=receivers,
        rate_per_s=settings.rate_b,
        duration_s=settings.duration,
        payload_bytes=settings.payload_size,
    )
    harness.plan_sources(receivers + 1)
    channel = harness.channel("b")
    tally = Tally(latencies=True)
    clients: list[BenchClient] = []
    publisher_tally = Tally()
    try:
        clients = await harness.open_clients(tally, receivers, lambda _: channel)
        publisher_tally, publisher_client = await _open_publisher(harness, channel, receivers)
        clients.append(publisher_client)
        publisher = Publisher(publisher_client, settings.payload_size)
        harness.progress.watch(tally, connections=receivers, published=lambda: publisher.sent)
        harness.progress.phase(f"publishing {settings.rate_b:,.0f}/s", seconds=settings.duration)
        cpu = harness.cpu_window()
        publish_time = await publish_at_rate([publisher], settings.rate_b, settings.duration)
        harness.progress.phase("waiting for the last deliveries")
        drained = await harness.wait_for(tally, publisher.sent * receivers, settings.drain_timeout)
        window = cpu.stop()
        assert tally.latencies is not None
        result.metrics.update(
            publications=publisher.sent,
            deliveries=tally.delivered,
            publish_time_s=publish_time,
            achieved_rate_per_s=per_second(publisher.sent, publish_time),
            **latency_summary(tally.latencies),
        )
        tally.latencies = None
        if not drained:
            result.notes.append(
                f"not every delivery arrived within {settings.drain_timeout:.0f} s of the end"
            )
        result.check = check_deliveries(
            (client.sequence_state() for client in clients[:-1]), publisher.sent
        ).as_dict()
        return _finish(result, (tally, publisher_tally), window)
    finally:
        await harness.close_clients(clients)


async def _settled_rss(harness: Harness, *, limit: float = 10.0) -> int:
    """Server RSS once two readings half a second apart differ by under 0.5 %."""
    previous = harness.server_rss() or 0
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        current = harness.server_rss() or 0
        if previous and abs(current - previous) <= previous * 0.005:
            return current
        previous = current
    return previous


async def memory(harness: Harness, connections: int) -> ScenarioResult:
    """Scenario C: server RSS per idle connection (connected and subscribed for tidings).

    RSS is read before any connection and once it settles after the last one;
    then one publication checks that every idle connection is still served.
    """
    result = _result(harness, "C", f"C@{connections}", connections=connections)
    if harness.server_pid is None:
        result.skipped = "needs the server's PID: use --spawn or --server-pid"
        return result
    budget = harness.fd_budget() - 1
    if connections > budget:
        result.skipped = f"needs {connections:,} open files; the limit allows {budget:,}"
        return result
    harness.plan_sources(connections)
    channel = harness.channel("c")
    tally = Tally()
    clients: list[BenchClient] = []
    try:
        harness.progress.phase("reading the idle server's RSS")
        before = await _settled_rss(harness)
        cpu = harness.cpu_window()
        clients = await harness.open_clients(tally, connections, lambda _: channel)
        ramp = cpu.stop()
        harness.progress.phase("waiting for the server's RSS to settle")
        after = await _settled_rss(harness)
        result.metrics.update(
            connections=len(clients),
            server_rss_before_mib=before / 2**20,
            server_rss_after_mib=after / 2**20,
            rss_per_connection_kib=(after - before) / len(clients) / 1024,
            ramp_s=ramp[0]["window_s"],
        )
        if tally.lost:
            result.notes.append(f"{tally.lost:,} connections were lost while idle")
        receivers = list(clients)
        publisher_tally, publisher_client = await _open_publisher(harness, channel, connections)
        clients.append(publisher_client)
        harness.progress.phase("one publication to check every connection")
        Publisher(publisher_client, harness.settings.payload_size).publish()
        if not await harness.wait_for(tally, len(receivers), harness.settings.drain_timeout):
            result.notes.append("the check publication did not reach every connection")
        result.check = check_deliveries(
            (client.sequence_state() for client in receivers), 1
        ).as_dict()
        return _finish(result, (tally, publisher_tally), ramp)
    finally:
        await harness.close_clients(clients)


async def fan_out(harness: Harness, connections: int) -> ScenarioResult:
    """Scenario D: hold many idle connections, then time one publication reaching all."""
    settings = harness.settings
    budget = harness.fd_budget() - 1
    held = min(connections, budget)
    result = _result(
        harness,
        "D",
        f"D@{connections}",
        requested_connections=connections,
        hold_s=settings.hold,
    )
    if held < connections:
        result.notes.append(
            f"capped at {held:,} connections: RLIMIT_NOFILE allows {budget + 1:,} "
            "open files per process here (raise the hard limit for the full count)"
        )
    harness.plan_sources(held + 1)
    channel = harness.channel("d")
    tally = Tally(latencies=True)
    clients: list[BenchClient] = []
    publisher_tally = Tally()
    try:
        cpu = harness.cpu_window()
        try:
            clients = await harness.open_clients(tally, held, lambda _: channel)
        except RampError as exc:
            clients = exc.clients
            result.notes.append(f"ramp-up stopped early: {exc}")
            if not clients:
                raise
        ramp = cpu.stop()
        # Every connection ready after the ramp must get the publication: one lost
        # while idle counts as missing it.
        receivers = [client for client in clients if client.state == READY]
        result.metrics["ramp_s"] = ramp[0]["window_s"]
        result.metrics["ramp_per_s"] = per_second(len(receivers), ramp[0]["window_s"])
        publisher_tally, publisher_client = await _open_publisher(harness, channel, held)
        harness.progress.watch(tally, connections=held)
        harness.progress.phase(
            f"holding {len(receivers):,} idle connections", seconds=settings.hold
        )
        rss_held = await _hold(harness, settings.hold)
        lost_while_idle = tally.lost
        harness.progress.phase("one publication to all")
        cpu = harness.cpu_window()
        publisher = Publisher(publisher_client, settings.payload_size)
        sent_at = time.monotonic_ns()
        publisher.publish()
        alive = sum(1 for client in receivers if client.state == READY)
        drained = await harness.wait_for(tally, alive, settings.drain_timeout)
        window = cpu.stop()
        assert tally.latencies is not None
        summary = latency_summary(tally.latencies)
        tally.latencies = None
        result.metrics.update(
            connections=len(receivers),
            lost_while_idle=lost_while_idle,
            deliveries=tally.delivered,
            time_to_last_delivery_ms=(tally.last_delivery_ns - sent_at) / 1e6,
            time_to_first_delivery_ms=(tally.first_delivery_ns - sent_at) / 1e6,
            p50_ms=summary.get("p50_ms", math.nan),
            p99_ms=summary.get("p99_ms", math.nan),
        )
        if rss_held is not None:
            result.metrics["server_rss_mib"] = rss_held / 2**20
        if not drained:
            result.notes.append(
                f"the publication did not reach everyone within {settings.drain_timeout:.0f} s"
            )
        result.check = check_deliveries(
            (client.sequence_state() for client in receivers), 1
        ).as_dict()
        clients.append(publisher_client)
        return _finish(result, (tally, publisher_tally), window)
    finally:
        await harness.close_clients(clients)


async def _hold(harness: Harness, seconds: float) -> int | None:
    """Stay idle (answering pings) for ``seconds``; return the server RSS at the end."""
    await asyncio.sleep(seconds)
    return harness.server_rss()


async def chat(harness: Harness, clients_count: int) -> ScenarioResult:
    """Scenario E: rooms of equal size, each client publishes in turn to its room."""
    settings = harness.settings
    rooms = max(1, min(settings.rooms, clients_count))
    result = _result(
        harness,
        "E",
        f"E@{clients_count}",
        clients=clients_count,
        rooms=rooms,
        rate_per_s=settings.rate_e,
        duration_s=settings.duration,
        payload_bytes=settings.payload_size,
    )
    if harness.kind == "reference":
        result.skipped = (
            "the reference server has no rooms: every message goes to every client, "
            "so this workload cannot be expressed"
        )
        return result
    harness.plan_sources(clients_count)
    channels = [harness.channel(f"e{room}") for room in range(rooms)]
    tally = Tally(latencies=True)
    clients: list[BenchClient] = []
    try:
        clients = await harness.open_clients(
            tally, clients_count, lambda index: channels[index % rooms], what="chat clients"
        )
        publishers = [Publisher(client, settings.payload_size, client.index) for client in clients]
        harness.progress.watch(
            tally,
            connections=clients_count,
            published=lambda: sum(publisher.sent for publisher in publishers),
        )
        harness.progress.phase(
            f"publishing {settings.rate_e:,.0f}/s across {rooms:,} rooms", seconds=settings.duration
        )
        cpu = harness.cpu_window()
        started = time.monotonic_ns()
        publish_time = await publish_at_rate(publishers, settings.rate_e, settings.duration)
        per_room = [0] * rooms
        members = [0] * rooms
        for publisher in publishers:
            per_room[publisher.client.index % rooms] += publisher.sent
        for client in clients:
            members[client.index % rooms] += 1
        expected = sum(per_room[room] * members[room] for room in range(rooms))
        harness.progress.phase("waiting for the last deliveries")
        drained = await harness.wait_for(tally, expected, settings.drain_timeout)
        window = cpu.stop()
        assert tally.latencies is not None
        published = sum(per_room)
        elapsed = (tally.last_delivery_ns - started) / 1e9
        result.metrics.update(
            publications=published,
            deliveries=tally.delivered,
            publish_time_s=publish_time,
            elapsed_s=elapsed,
            deliveries_per_s=per_second(tally.delivered, elapsed),
            achieved_rate_per_s=per_second(published, publish_time),
            **latency_summary(tally.latencies),
        )
        tally.latencies = None
        if not drained:
            result.notes.append(
                f"not every delivery arrived within {settings.drain_timeout:.0f} s of the end"
            )
        states: list[list[tuple[int, int, int, int]]] = [[] for _ in range(rooms)]
        for client in clients:
            states[client.index % rooms].append(client.sequence_state())
        checks = [check_deliveries(states[room], per_room[room]) for room in range(rooms)]
        result.check = {
            "ok": all(check.ok for check in checks),
            "receivers": sum(check.receivers for check in checks),
            "rooms": rooms,
            "complete": sum(check.complete for check in checks),
            "missing": sum(check.missing for check in checks),
            "extra": sum(check.extra for check in checks),
            "skipped": sum(check.skipped for check in checks),
            "backward": sum(check.backward for check in checks),
        }
        return _finish(result, (tally,), window)
    finally:
        await harness.close_clients(clients)


MAP_NAMESPACE = "benchmap"
"""The map namespace of benchmarks/tidings-bench.toml (recoverable, open to anonymous)."""


async def map_updates(harness: Harness, receivers: int) -> list[ScenarioResult]:
    """Scenario M: scenario A's workload twice on one server, in the same run: plain
    publications to ``receivers`` subscribers of a stream channel, then map updates (a
    ticker of :attr:`TidingsMapClient.map_keys` keys, ``publish`` with ``type: 1``) to as
    many subscribers of a map channel. Both are checked for exactly-once, in-order
    delivery by offset, and their rates compare what a map's state keeping costs."""
    plain = await throughput(harness, receivers, scenario="M", label=f"M@{receivers} plain")
    plain.params["kind"] = "plain publications"
    label = f"M@{receivers} map"
    if harness.kind != "tidings":
        return [plain, ScenarioResult(harness.kind, "M", label, skipped="no map channels")]
    harness.client_class = TidingsMapClient
    try:
        mapped = await throughput(
            harness, receivers, scenario="M", label=label, namespace=MAP_NAMESPACE
        )
    finally:
        harness.client_class = CLIENT_CLASSES[harness.kind]
    mapped.params.update(kind="map updates", keys=TidingsMapClient.map_keys)
    return [plain, mapped]


SCENARIOS = {
    "A": throughput,
    "B": latency,
    "C": memory,
    "D": fan_out,
    "E": chat,
}
"""Scenario F is scenario A against tidings restarted with a Redis broker (see suite); G,
bytes with and without delta compression, is :mod:`tidings.bench.delta`."""

DEFAULT_SIZES = {
    "A": (1000, 10000),
    "B": (1000,),
    "C": (10000,),
    "D": (100000,),
    "E": (10000,),
    "F": (1000,),
    "G": (100,),
    "M": (1000,),
}
