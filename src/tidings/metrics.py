"""Prometheus metrics of one node, and the text a scrape of ``GET /metrics`` gets.

Every node owns one :class:`Metrics` (``node.metrics``); nothing here is
module-level state, so several nodes in one process each count their own
traffic in their own registry (never ``prometheus_client``'s global one).
With ``metrics = false`` (the default) the node holds the base class, whose
methods do nothing, and the hub is given no meter at all.

What is counted where, and why it costs next to nothing:

* the hub reports once per batch it writes: how many pushes, to how many
  subscribers of one wire format, how many bytes (:meth:`PrometheusMetrics.delivered`);
  the fan-out loop itself still writes one shared bytes object per recipient
  and does nothing else;
* the session reports a command's result code, a disconnect's code and the
  bytes of each reply; the node reports connections and publications from the
  broker; the Redis engine reports each round trip; the API each call;
* what happens per command, publication or batch is added to plain integers
  (~0.1 us a call, where a ``prometheus_client`` increment takes a lock and
  ~0.5 us) and moved into the Prometheus metrics by :meth:`PrometheusMetrics.sync`:
  before every scrape, and every second while workers share their metrics;
* gauges that would need a call per subscribe and unsubscribe
  (``tidings_subscriptions``) are sampled from the node's state instead: at
  each scrape, and every few seconds while workers share their metrics.

Label values come from small fixed sets (transports, command and API
methods, protocol codes, broker operations, handler events): never a
channel, a user or anything a client chooses freely.

Several worker processes (``--workers``) use ``prometheus_client``'s
multiprocess mode: the supervisor gives every worker one directory
(``PROMETHEUS_MULTIPROC_DIR``), each worker writes its values there, and a
scrape answered by any worker sums them all (docs/deployment.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client import Gauge, Histogram

    from tidings.protocol.wire import WireFormat

__all__ = [
    "CONTENT_TYPE",
    "HANDLER_EVENTS",
    "HANDLER_OUTCOMES",
    "TRANSPORTS",
    "FanOutMeter",
    "Metrics",
    "PrometheusMetrics",
    "metrics_for",
    "multiprocess_directory",
    "transport_label",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format every Prometheus version reads (what ``generate_latest`` writes
for names like ours)."""

TRANSPORTS = frozenset(
    {
        "websocket",
        "http_stream",
        "sse",
        "uni_websocket",
        "uni_http_stream",
        "uni_sse",
        "events",
        "longpoll",
    }
)
"""Values of the ``transport`` label (anything else is counted as ``other``)."""

HANDLER_EVENTS = frozenset(
    {"connect", "refresh", "subscribe", "sub_refresh", "publish", "rpc", "message", "disconnect"}
)
"""Values of ``tidings_handler_duration_seconds``' ``event`` label (else ``other``)."""

HANDLER_OUTCOMES = frozenset({"ok", "client_error", "disconnect", "timeout", "error"})
"""Values of its ``outcome`` label: returned, refused (``ClientError``), disconnected, ran past
``handler_timeout``, raised anything else (else ``other``)."""

BROKER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
"""Seconds: a Redis round trip on a LAN takes 0.1-1 ms; calls give up after 1 s."""

HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds: an in-process check is well under 1 ms; ``handler_timeout`` is 5 s by default."""

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Pushes per batch: 1 while idle; bursts coalesce up to 64 KiB per channel."""

SAMPLE_INTERVAL = 5.0
"""Seconds between two samples of the node's state while workers share their metrics."""


def transport_label(name: str) -> str:
    """A transport's (or wire format's) name as a bounded label value.

    ``websocket+deflate/15`` (a compressing WebSocket) is ``websocket``; the
    ``/events`` feed's wire is ``events``.
    """
    name = name.partition("+")[0]
    if name == "events-feed":
        return "events"
    return name if name in TRANSPORTS else "other"


def multiprocess_directory() -> str | None:
    """The directory workers share their values in, when ``prometheus_client`` runs in
    multiprocess mode (chosen when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``)."""
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class FanOutMeter(Protocol):
    """What the hub reports of each batch it writes (once per wire group, never per recipient)."""

    def flushed(self, pushes: int) -> None: ...

    def delivered(self, wire: WireFormat, pushes: int, recipients: int, size: int) -> None: ...


class _NoTimer:
    """A timer that measures nothing (metrics off)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None


_NO_TIMER = _NoTimer()


class Metrics:
    """A node's meters with metrics off: every call does nothing.

    ``prometheus_client`` is not even imported then (its import costs ~60 ms).

    The instrumented code calls these methods unconditionally; the one hot
    path (the hub's fan-out) is given :attr:`fan_out`, which is ``None`` here.
    """

    enabled = False

    @property
    def fan_out(self) -> FanOutMeter | None:
        """The hub's meter, or ``None`` for no metering at all."""
        return None

    # connections and sessions
    def connected(self, wire: WireFormat) -> None:
        """A client finished ``connect`` on a transport of this wire format."""

    def disconnected(self, wire: WireFormat) -> None:
        """A connected client is gone."""

    def disconnect(self, code: int) -> None:
        """The server closed a connection with this disconnect code."""

    def command(self, method: str, code: int) -> None:
        """A client command was answered: ``code`` 0, an error code, or a disconnect code."""

    def sent(self, wire: WireFormat, size: int) -> None:
        """A reply or personal push of ``size`` bytes was written."""

    def publication_received(self) -> None:
        """The broker handed this node a publication for its local subscribers."""

    # the engine, the API and the application
    def broker_round_trip(self, operation: str, seconds: float) -> None:
        """One round trip to a networked engine (the Redis broker and presence)."""

    def broker_error(self, operation: str) -> None:
        """A round trip that failed or timed out (answered as error 100)."""

    def api_call(self, method: str, code: int, seconds: float) -> None:
        """One server API method ran (``code`` 0, or its error code). ``method`` is one the
        API knows, or ``unknown``: never a name from the URL as it came."""

    def handler_duration(self, event: str, seconds: float, outcome: str = "ok") -> None:
        """One application handler call took ``seconds`` and ended with ``outcome``.

        The signature of :data:`tidings.handlers.Observer`:
        ``handlers.observers.append(node.metrics.handler_duration)`` feeds it.
        """

    def time_handler(self, event: str) -> _NoTimer | _HandlerTimer:
        """``with node.metrics.time_handler("rpc"): ...`` times an application handler.

        ``event`` is one of :data:`HANDLER_EVENTS`. The time is recorded when
        the block ends, whether it returned or raised.
        """
        return _NO_TIMER

    # sampled gauges, syncing, scrapes
    def sample(self, clients: Iterable[_Sampled]) -> None:
        """Set the sampled gauges from the node's connected clients."""

    def sync(self) -> None:
        """Move what was counted since the last call into the Prometheus metrics."""

    def tick(self, clients: Iterable[_Sampled]) -> None:
        """Called by the node every second: while workers share, what was counted since the
        last tick is written where the others' scrapes read it."""

    def exposition(self, clients: Iterable[_Sampled]) -> bytes:
        """The text of a scrape (sampled gauges refreshed first)."""
        return b""


class _Sampled(Protocol):
    """What sampling needs of a connected client."""

    @property
    def wire(self) -> WireFormat: ...

    @property
    def subscriptions(self) -> Mapping[str, object]: ...


class _HandlerTimer:
    """Times one handler call into ``tidings_handler_duration_seconds`` (an exception that
    leaves the block is outcome ``error``)."""

    __slots__ = ("_event", "_metrics", "_started")

    def __init__(self, metrics: Metrics, event: str) -> None:
        self._metrics = metrics
        self._event = event
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        outcome = "ok" if kind is None else "error"
        self._metrics.handler_duration(self._event, time.perf_counter() - self._started, outcome)


class PrometheusMetrics(Metrics):
    """The meters of one node, in a registry of its own (see the module docstring)."""

    enabled = True

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = registry = CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir
        self._next_sample = 0.0
        if multiprocess_dir is None:
            # Collected first, so whoever collects this registry sees what was just counted.
            registry.register(_SyncFirst(self))
            # One process: its CPU, memory and open files (multiprocess mode has no such
            # collector: those are per worker and a scrape reaches only one).
            ProcessCollector(registry=registry)

        self.connections = Gauge(
            "tidings_connections",
            "Client connections that finished connect, by transport.",
            ["transport"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connects = Counter(
            "tidings_connects",
            "Connects accepted, by transport.",
            ["transport"],
            registry=registry,
        )
        self.subscriptions = Gauge(
            "tidings_subscriptions",
            "Channel subscriptions of connected clients, by transport (sampled: at each scrape, "
            "and every 5 s per worker behind --workers).",
            ["transport"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.commands = Counter(
            "tidings_commands",
            "Client commands answered, by method and result code (0: success; 100-199: an error "
            "reply; 3000-4999: the command ended the connection).",
            ["method", "code"],
            registry=registry,
        )
        self.disconnects = Counter(
            "tidings_disconnects",
            "Connections the server closed, by disconnect code (3001 shutdown, 3008 slow, "
            "3012 no pong, 3013 too many requests...).",
            ["code"],
            registry=registry,
        )
        self.publications = Counter(
            "tidings_publications_received",
            "Publications the broker handed to this node for its local subscribers.",
            registry=registry,
        )
        self.deliveries = Counter(
            "tidings_deliveries",
            "Pushes written to subscribers (publications, joins, leaves): one per push per "
            "recipient, counted once per batch.",
            ["transport"],
            registry=registry,
        )
        self.sent_bytes = Counter(
            "tidings_sent_bytes",
            "Bytes written to clients: broadcast batches, replies and personal pushes "
            "(not pings or close frames).",
            ["transport"],
            registry=registry,
        )
        self.batches = Histogram(
            "tidings_hub_batch_pushes",
            "Pushes per channel batch the hub wrote at once (1 while idle; more under load, "
            "see coalesce_delay).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.broker_latency = Histogram(
            "tidings_broker_round_trip_seconds",
            "Round trips to the Redis engine that succeeded, by operation.",
            ["operation"],
            buckets=BROKER_BUCKETS,
            registry=registry,
        )
        self.broker_errors = Counter(
            "tidings_broker_errors",
            "Round trips to the Redis engine that failed or timed out, by operation.",
            ["operation"],
            registry=registry,
        )
        self.api_calls = Counter(
            "tidings_api_requests",
            "Server API method calls, by method and result code (0: success).",
            ["method", "code"],
            registry=registry,
        )
        self.api_latency = Histogram(
            "tidings_api_request_duration_seconds",
            "Time to run a server API method, by method.",
            ["method"],
            buckets=(*BROKER_BUCKETS[3:], 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.handlers = Histogram(
            "tidings_handler_duration_seconds",
            "Time spent in application handlers, by event and outcome (ok, client_error, "
            "disconnect, timeout, error).",
            ["event", "outcome"],
            buckets=HANDLER_BUCKETS,
            registry=registry,
        )
        self._connections: dict[str, Gauge] = {}
        for name in (*sorted(TRANSPORTS), "other"):  # every one shows, at 0, from the start
            self._connections[name] = self.connections.labels(name)
            self.connects.labels(name)
            self.subscriptions.labels(name)
            self.deliveries.labels(name)
            self.sent_bytes.labels(name)
        # Counted on the hot paths as plain integers, moved into the metrics by sync().
        self._commands_since: dict[tuple[str, int], int] = {}
        self._wires_since: dict[str, list[int]] = {}
        """Wire format name -> [deliveries, bytes]; by name, since feeds are wire formats of
        their own and come and go."""
        self._batches_since: dict[int, int] = {}
        self._publications_since = 0

    @property
    def fan_out(self) -> FanOutMeter:
        return self

    # ------------------------------------------------------------------ hub

    def flushed(self, pushes: int) -> None:
        batches = self._batches_since
        batches[pushes] = batches.get(pushes, 0) + 1

    def delivered(self, wire: WireFormat, pushes: int, recipients: int, size: int) -> None:
        counts = self._wires_since.get(wire.name)
        if counts is None:
            counts = self._wires_since[wire.name] = [0, 0]
        counts[0] += pushes * recipients
        counts[1] += size * recipients

    # ------------------------------------------------------------------ sessions

    def connected(self, wire: WireFormat) -> None:
        label = transport_label(wire.name)
        self._connections[label if label in self._connections else "other"].inc()
        self.connects.labels(label).inc()

    def disconnected(self, wire: WireFormat) -> None:
        label = transport_label(wire.name)
        self._connections[label if label in self._connections else "other"].dec()

    def disconnect(self, code: int) -> None:
        self.disconnects.labels(str(code)).inc()

    def command(self, method: str, code: int) -> None:
        commands = self._commands_since
        key = (method, code)
        commands[key] = commands.get(key, 0) + 1

    def sent(self, wire: WireFormat, size: int) -> None:
        counts = self._wires_since.get(wire.name)
        if counts is None:
            counts = self._wires_since[wire.name] = [0, 0]
        counts[1] += size

    def publication_received(self) -> None:
        self._publications_since += 1

    # ------------------------------------------------------------------ engine, API, handlers

    def broker_round_trip(self, operation: str, seconds: float) -> None:
        self.broker_latency.labels(operation).observe(seconds)

    def broker_error(self, operation: str) -> None:
        self.broker_errors.labels(operation).inc()

    def api_call(self, method: str, code: int, seconds: float) -> None:
        self.api_calls.labels(method, str(code)).inc()
        self.api_latency.labels(method).observe(seconds)

    def handler_duration(self, event: str, seconds: float, outcome: str = "ok") -> None:
        self.handlers.labels(
            event if event in HANDLER_EVENTS else "other",
            outcome if outcome in HANDLER_OUTCOMES else "other",
        ).observe(seconds)

    def time_handler(self, event: str) -> _HandlerTimer:
        return _HandlerTimer(self, event if event in HANDLER_EVENTS else "other")

    # ------------------------------------------------------------------ sampling and scrapes

    def sample(self, clients: Iterable[_Sampled]) -> None:
        counts = dict.fromkeys(TRANSPORTS, 0)
        for client in clients:
            label = transport_label(client.wire.name)
            counts[label] = counts.get(label, 0) + len(client.subscriptions)
        for label, count in counts.items():
            self.subscriptions.labels(label).set(count)

    def sync(self) -> None:
        """Move what was counted since the last call into the Prometheus metrics."""
        if self._publications_since:
            self.publications.inc(self._publications_since)
            self._publications_since = 0
        if self._commands_since:
            commands, self._commands_since = self._commands_since, {}
            for (method, code), count in commands.items():
                self.commands.labels(method, str(code)).inc(count)
        if self._wires_since:
            wires, self._wires_since = self._wires_since, {}
            for name, (deliveries, size) in wires.items():
                label = transport_label(name)
                if deliveries:
                    self.deliveries.labels(label).inc(deliveries)
                if size:
                    self.sent_bytes.labels(label).inc(size)
        if self._batches_since:
            batches, self._batches_since = self._batches_since, {}
            for pushes, count in batches.items():
                _observe_many(self.batches, pushes, count)

    def tick(self, clients: Iterable[_Sampled]) -> None:
        if self.multiprocess_dir is None:
            return  # one process: a scrape syncs and samples what it shows
        self.sync()
        now = time.monotonic()
        if now >= self._next_sample:
            self._next_sample = now + SAMPLE_INTERVAL
            self.sample(clients)

    def exposition(self, clients: Iterable[_Sampled]) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        self.sample(clients)
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)  # syncs first (_SyncFirst)
        self.sync()
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


class _SyncFirst:
    """Registered first in a node's registry: a collection syncs before anything is read."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Any]:
        self._metrics.sync()
        return ()


def _observe_many(histogram: Histogram, value: float, count: int) -> None:
    """``count`` observations of ``value`` at once (the hub's batch sizes, synced).

    ``prometheus_client`` has no such call: this adds to the histogram's own
    bucket and sum values (``_upper_bounds``, ``_buckets``, ``_sum``, present
    in every version since 0.4), and falls back to observing one by one if
    they ever change. ``tests/unit/test_metrics.py`` checks both give the
    same exposition.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for _ in range(count):
            histogram.observe(value)
        return
    total.inc(value * count)
    for index, bound in enumerate(bounds):
        if value <= bound:
            buckets[index].inc(count)
            return


def metrics_for(enabled: bool) -> Metrics:
    """The node's meters: real ones (in multiprocess mode when workers share) or none."""
    if not enabled:
        return Metrics()
    return PrometheusMetrics(multiprocess_dir=multiprocess_directory())
