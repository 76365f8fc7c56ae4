"""The figures of one scenario run, and which of them are compared across servers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Metric:
    """A headline figure: compared between servers, drawn on the chart."""

    key: str
    label: str
    unit: str
    better: Better


HEADLINES: dict[str, tuple[Metric, ...]] = {
    "A": (
        Metric("deliveries_per_s", "deliveries/s", "/s", "higher"),
        Metric("publications_per_s", "publications/s", "/s", "higher"),
    ),
    "B": (
        Metric("p50_ms", "latency p50", "ms", "lower"),
        Metric("p99_ms", "latency p99", "ms", "lower"),
        Metric("max_ms", "latency max", "ms", "lower"),
    ),
    "C": (Metric("rss_per_connection_kib", "RSS per idle connection", "KiB", "lower"),),
    "D": (
        Metric("time_to_last_delivery_ms", "time to last delivery", "ms", "lower"),
        Metric("connections", "connections held", "", "higher"),
    ),
    "E": (
        Metric("deliveries_per_s", "deliveries/s", "/s", "higher"),
        Metric("p50_ms", "latency p50", "ms", "lower"),
        Metric("p99_ms", "latency p99", "ms", "lower"),
    ),
    "F": (
        Metric("deliveries_per_s", "deliveries/s", "/s", "higher"),
        Metric("publications_per_s", "publications/s", "/s", "higher"),
    ),
    "G": (
        Metric("bytes_per_publication_plain", "bytes per publication, no delta", "B", "lower"),
        Metric("bytes_per_publication_delta", "bytes per publication, delta", "B", "lower"),
    ),
    "M": (
        Metric("deliveries_per_s", "deliveries/s", "/s", "higher"),
        Metric("publications_per_s", "updates/s", "/s", "higher"),
    ),
}

TITLES = {
    "A": "one channel, publish as fast as accepted",
    "B": "fixed publication rate, publish-to-receive latency",
    "C": "memory per idle connection",
    "D": "many idle connections, one publication to all",
    "E": "chat: rooms of 10, every room publishing",
    "F": "Redis broker, 1 vs 2 worker processes",
    "G": "bytes on the wire with and without delta compression, 2 KB JSON, 3 fields changed",
    "M": "map updates vs plain publications, one channel, same run",
}


@dataclass
class ScenarioResult:
    """Everything one (target, scenario, size) run measured or why it did not run."""

    target: str
    scenario: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    check: dict[str, Any] | None = None
    generator: dict[str, float] = field(default_factory=dict)
    server: dict[str, float] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timeline: list[list[float]] = field(default_factory=list)
    """``[seconds, deliveries, publications]`` samples of a throughput run."""
    skipped: str | None = None
    error: str | None = None

    @property
    def title(self) -> str:
        return TITLES.get(self.scenario, "")

    @property
    def ok(self) -> bool:
        """Ran to the end with exactly-once, in-order delivery (when checked)."""
        if self.skipped is not None or self.error is not None:
            return False
        return self.check is None or bool(self.check.get("ok"))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["title"] = self.title
        data["ok"] = self.ok
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioResult:
        """The inverse of :meth:`as_dict` (derived keys are ignored)."""
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)
