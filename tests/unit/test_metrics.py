"""tidings.metrics without a server: one registry per node, bounded labels, counts synced."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tidings.metrics import (
    BATCH_BUCKETS,
    Metrics,
    PrometheusMetrics,
    _observe_many,
    transport_label,
)
from tidings.protocol.wire import JSON_WIRE, SSE_WIRE, WebSocketDeflateWire

pytestmark = pytest.mark.timeout(30)


def samples(metrics: PrometheusMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()  # any collection syncs first
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("websocket", "websocket"),
        ("websocket+deflate/15", "websocket"),
        ("events-feed", "events"),
        ("longpoll", "longpoll"),
        ("uni_sse", "uni_sse"),
        ("something-new", "other"),
    ],
)
def test_transport_labels_are_a_fixed_set(name: str, label: str) -> None:
    assert transport_label(name) == label


def test_two_nodes_in_one_process_count_apart() -> None:
    first, second = PrometheusMetrics(), PrometheusMetrics()
    first.command("publish", 0)
    first.command("publish", 0)
    first.command("publish", 102)
    second.command("publish", 0)
    assert samples(first)[("tidings_commands_total", (("code", "0"), ("method", "publish")))] == 2
    assert samples(first)[("tidings_commands_total", (("code", "102"), ("method", "publish")))] == 1
    assert samples(second)[("tidings_commands_total", (("code", "0"), ("method", "publish")))] == 1


def test_deliveries_and_bytes_are_counted_per_batch_by_transport() -> None:
    metrics = PrometheusMetrics()
    deflate = WebSocketDeflateWire(15, 256)
    metrics.delivered(JSON_WIRE, 3, 1000, 500)  # 3 pushes in a 500-byte frame to 1,000
    metrics.delivered(deflate, 1, 10, 40)
    metrics.delivered(SSE_WIRE, 2, 5, 100)
    metrics.sent(JSON_WIRE, 25)  # a reply
    metrics.flushed(3)
    metrics.flushed(3)
    metrics.flushed(1)
    found = samples(metrics)
    assert found[("tidings_deliveries_total", (("transport", "websocket"),))] == 3000 + 10
    assert found[("tidings_sent_bytes_total", (("transport", "websocket"),))] == (
        500_000 + 400 + 25
    )
    assert found[("tidings_deliveries_total", (("transport", "sse"),))] == 10
    assert found[("tidings_hub_batch_pushes_count", ())] == 3
    assert found[("tidings_hub_batch_pushes_sum", ())] == 7
    assert found[("tidings_hub_batch_pushes_bucket", (("le", "2.0"),))] == 1
    assert found[("tidings_hub_batch_pushes_bucket", (("le", "4.0"),))] == 3
    # Synced once: a second scrape adds nothing.
    assert samples(metrics)[("tidings_hub_batch_pushes_count", ())] == 3


def test_many_observations_at_once_match_observing_one_by_one() -> None:
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h", "h", buckets=BATCH_BUCKETS, registry=one_by_one)
    tested = Histogram("h", "h", buckets=BATCH_BUCKETS, registry=at_once)
    for value, count in [(1, 5), (3, 2), (64, 7), (5000, 1), (0, 3)]:
        for _ in range(count):
            reference.observe(value)
        _observe_many(tested, value, count)

    def exposed(registry: CollectorRegistry) -> list[str]:
        return [
            line
            for line in generate_latest(registry).decode().splitlines()
            if not line.startswith("h_created")
        ]

    assert exposed(at_once) == exposed(one_by_one)


def test_handler_events_are_bounded() -> None:
    metrics = PrometheusMetrics()
    with metrics.time_handler("rpc"):
        pass
    with pytest.raises(ValueError), metrics.time_handler("connect"):
        raise ValueError("the handler failed")
    metrics.handler_duration("an-unheard-of-event", 0.002, "timeout")
    metrics.handler_duration("rpc", 0.002, "an-unheard-of-outcome")
    found = samples(metrics)
    count = "tidings_handler_duration_seconds_count"
    assert found[(count, (("event", "rpc"), ("outcome", "ok")))] == 1
    assert found[(count, (("event", "connect"), ("outcome", "error")))] == 1
    assert found[(count, (("event", "other"), ("outcome", "timeout")))] == 1
    assert found[(count, (("event", "rpc"), ("outcome", "other")))] == 1


def test_metrics_off_do_nothing() -> None:
    metrics = Metrics()
    assert metrics.fan_out is None and not metrics.enabled
    metrics.command("publish", 0)
    metrics.connected(JSON_WIRE)
    with metrics.time_handler("rpc"):
        pass
    assert metrics.exposition([]) == b""
