"""Figures the load generator computes, sans I/O: order checks, percentiles, rates.

The correctness rule of every scenario: each receiver gets every publication
exactly once, in order. A receiver tracks the next value it expects (offset for
tidings, the payload's sequence number for the reference) and counts two kinds
of anomaly: *skipped* values (a gap: something was lost or is late) and
*backward* values (a duplicate or a reordering). With both at zero and the
received count equal to the number published, delivery was exactly once, in
order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def advance_sequence(expected: int, values: Iterable[int]) -> tuple[int, int, int]:
    """Walk ``values`` from ``expected``; return ``(next expected, skipped, backward)``.

    A value above the expected one skips the difference and moves on past it;
    a value below it is counted as backward (a duplicate or late arrival) and
    does not move the expectation back.
    """
    skipped = 0
    backward = 0
    for value in values:
        if value == expected:
            expected += 1
        elif value > expected:
            skipped += value - expected
            expected = value + 1
        else:
            backward += 1
    return expected, skipped, backward


@dataclass(frozen=True)
class DeliveryCheck:
    """Exactly-once, in-order verdict over every receiver of a scenario."""

    receivers: int
    expected_each: int
    complete: int
    missing: int
    extra: int
    skipped: int
    backward: int

    @property
    def ok(self) -> bool:
        return (
            self.complete == self.receivers
            and self.missing == 0
            and self.extra == 0
            and self.skipped == 0
            and self.backward == 0
        )

    def as_dict(self) -> dict[str, int | bool]:
        return {
            "ok": self.ok,
            "receivers": self.receivers,
            "expected_each": self.expected_each,
            "complete": self.complete,
            "missing": self.missing,
            "extra": self.extra,
            "skipped": self.skipped,
            "backward": self.backward,
        }


def check_deliveries(
    receivers: Iterable[tuple[int, int, int, int]], expected_each: int, first: int = 1
) -> DeliveryCheck:
    """Judge receivers given as ``(received, next expected, skipped, backward)``.

    A receiver is complete when it received exactly ``expected_each`` values,
    with no anomaly, ending right after the last one (``first + expected_each``).
    """
    count = complete = missing = extra = skipped = backward = 0
    for received, next_expected, receiver_skipped, receiver_backward in receivers:
        count += 1
        skipped += receiver_skipped
        backward += receiver_backward
        if received < expected_each:
            missing += expected_each - received
        elif received > expected_each:
            extra += received - expected_each
        if (
            received == expected_each
            and receiver_skipped == 0
            and receiver_backward == 0
            and next_expected == first + expected_each
        ):
            complete += 1
    return DeliveryCheck(count, expected_each, complete, missing, extra, skipped, backward)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (``fraction`` in 0..1)."""
    if not sorted_values:
        return math.nan
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"expected a fraction between 0 and 1, got {fraction}")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies_ns: Iterable[int]) -> dict[str, float]:
    """Count, mean and p50/p90/p99/p99.9/max of latencies, in milliseconds."""
    values = sorted(latencies_ns)
    if not values:
        return {"count": 0}
    scale = 1e-6
    return {
        "count": len(values),
        "mean_ms": sum(values) / len(values) * scale,
        "min_ms": values[0] * scale,
        "p50_ms": percentile(values, 0.50) * scale,
        "p90_ms": percentile(values, 0.90) * scale,
        "p99_ms": percentile(values, 0.99) * scale,
        "p999_ms": percentile(values, 0.999) * scale,
        "max_ms": values[-1] * scale,
    }


def per_second(count: float, seconds: float) -> float:
    """``count`` per second over ``seconds``; NaN for an empty window."""
    return count / seconds if seconds > 0 else math.nan


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, or None when either is missing, not finite, or zero."""
    if value is None or reference is None:
        return None
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        return None
    return value / reference


def format_number(value: float | None, digits: int = 3) -> str:
    """Human-friendly number: thousands separators, ``digits`` significant figures."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
    return f"{value:.{decimals}f}"
