"""``GET /metrics``: a Prometheus scrape, parsed by ``prometheus_client``, that matches what
the test did (connections, subscriptions, deliveries, commands, a 3008, broker round trips)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ClientFactory, StartServer, token
from tests.support.http import api, http
from tests.support.polling import eventually
from tests.support.redis import delete_keys, unique_prefix
from tidings.bench.wsframe import OP_TEXT, encode_frame, handshake_request

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int, **headers: str) -> Samples:
    """``GET /metrics`` parsed as Prometheus parses it: (sample name, labels) -> value."""
    status, answer_headers, body = await http(port, "GET", "/metrics", headers=headers)
    assert status == 200, body
    assert answer_headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.name.startswith(("tidings_", "process_")), family.name
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_scrape_counts_what_happened(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    clients, publications = 3, 4
    running = await start_server(metrics=True)
    subscribers = []
    for index in range(clients):
        client = await ws_client(running.ws_url)
        await client.connect(token(f"user{index}"))
        await client.subscribe("open:metrics")  # no join/leave: deliveries are publications
        subscribers.append(client)
    for number in range(publications):
        status, answer = await api(
            running.port, "publish", {"channel": "open:metrics", "data": {"n": number}}
        )
        assert status == 200 and "result" in answer, answer
    for client in subscribers:
        assert len(await client.publications("open:metrics", publications)) == publications
    # Refused commands and API calls are counted with their codes.
    refused = await subscribers[0].call("publish", {"channel": "nowhere:x", "data": {}})
    assert refused["error"]["code"] == 102
    status, answer = await api(running.port, "publish", {"channel": "nowhere:x", "data": 1})
    assert answer["error"]["code"] == 102
    status, answer = await api(running.port, "no_such_method", {})
    assert answer["error"]["code"] == 104

    samples = await scrape(running.port)

    assert value(samples, "tidings_connections", transport="websocket") == clients
    assert value(samples, "tidings_connections", transport="sse") == 0  # every transport shows
    assert value(samples, "tidings_connects_total", transport="websocket") == clients
    assert value(samples, "tidings_subscriptions", transport="websocket") == clients
    assert value(samples, "tidings_publications_received_total") == publications
    assert value(samples, "tidings_deliveries_total", transport="websocket") == (
        clients * publications
    )
    assert value(samples, "tidings_hub_batch_pushes_sum") == publications
    assert value(samples, "tidings_hub_batch_pushes_count") >= 1
    assert value(samples, "tidings_commands_total", method="connect", code="0") == clients
    assert value(samples, "tidings_commands_total", method="subscribe", code="0") == clients
    assert value(samples, "tidings_commands_total", method="publish", code="102") == 1
    assert value(samples, "tidings_api_requests_total", method="publish", code="0") == publications
    assert value(samples, "tidings_api_requests_total", method="publish", code="102") == 1
    assert value(samples, "tidings_api_requests_total", method="unknown", code="104") == 1
    assert value(samples, "tidings_api_request_duration_seconds_count", method="publish") == (
        publications + 1
    )
    # Replies, and the frames of every delivery: at least the payloads themselves.
    payload = len(json.dumps({"n": 0}))
    assert value(samples, "tidings_sent_bytes_total", transport="websocket") > (
        clients * publications * payload
    )
    assert value(samples, "process_resident_memory_bytes") > 0
    # Labels are bounded: no channel, user or method name from a URL becomes one.
    labels = {v for (_, pairs) in samples for _, v in pairs}
    assert not labels & {"open:metrics", "nowhere:x", "user0", "no_such_method"}

    # Connections gone are gone from the gauge; the counters keep them.
    for client in subscribers:
        await client.close()
    await eventually(lambda: not running.node.clients, "the clients to leave")
    samples = await scrape(running.port)
    assert value(samples, "tidings_connections", transport="websocket") == 0
    assert value(samples, "tidings_subscriptions", transport="websocket") == 0
    assert value(samples, "tidings_connects_total", transport="websocket") == clients


def open_never_reading(port: int) -> socket.socket:
    """A WebSocket client that connects, subscribes, and never reads again (4 KiB buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    commands = json.dumps({"id": 1, "connect": {"token": token("lazy")}}) + "\n"
    commands += json.dumps({"id": 2, "subscribe": {"channel": "open:firehose"}})
    request = handshake_request(f"127.0.0.1:{port}", "/connection/websocket")
    sock.sendall(request + encode_frame(OP_TEXT, commands.encode()))
    return sock


async def test_a_slow_client_is_counted_as_disconnect_3008(start_server: StartServer) -> None:
    running = await start_server(metrics=True, write_buffer_limit=64 * 1024, slow_timeout=0.2)
    sock = await asyncio.to_thread(open_never_reading, running.port)
    try:
        await eventually(lambda: running.node.hub.num_channels() == 1, "the slow subscriber")
        big = {"channel": "open:firehose", "data": {"x": "y" * 16_000}}

        async def cut_off() -> bool:
            await api(running.port, "publish", big)
            return value(await scrape(running.port), "tidings_disconnects_total", code="3008") == 1

        await eventually(cut_off, "a 3008 for the client that does not read", within=20)
        samples = await scrape(running.port)
        assert value(samples, "tidings_connections", transport="websocket") == 0
    finally:
        sock.close()


async def test_a_metrics_token_guards_the_scrape(start_server: StartServer) -> None:
    running = await start_server(metrics=True, metrics_token="scrape-token-0123456789")
    status, headers, body = await http(running.port, "GET", "/metrics")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body)["error"]["code"] == 101
    status, _, _ = await http(
        running.port, "GET", "/metrics", headers={"Authorization": "Bearer wrong-token"}
    )
    assert status == 401
    samples = await scrape(running.port, Authorization="Bearer scrape-token-0123456789")
    assert ("tidings_connections", (("transport", "websocket"),)) in samples


async def test_without_metrics_there_is_no_route_and_no_meter(start_server: StartServer) -> None:
    running = await start_server()
    status, _, _ = await http(running.port, "GET", "/metrics")
    assert status == 404
    assert not running.node.metrics.enabled
    assert running.node.hub._meter is None  # the fan-out runs with nothing extra


@pytest.mark.redis
async def test_broker_round_trips_are_timed(
    start_server: StartServer, ws_client: ClientFactory, shared_redis: str
) -> None:
    prefix = unique_prefix("tmetrics")
    publications = 5
    try:
        running = await start_server(metrics=True, broker=shared_redis, broker_prefix=prefix)
        client = await ws_client(running.ws_url)
        await client.connect(token("alice"))
        await client.subscribe("chat:latency")  # reads the stream position: one "history"
        for number in range(publications):
            status, answer = await api(
                running.port, "publish", {"channel": "chat:latency", "data": number}
            )
            assert status == 200 and "result" in answer, answer
        await client.publications("chat:latency", publications)
        samples = await scrape(running.port)
        count = value(samples, "tidings_broker_round_trip_seconds_count", operation="publish")
        assert count == publications
        total = value(samples, "tidings_broker_round_trip_seconds_sum", operation="publish")
        assert 0 < total < publications * 1.0
        buckets = [
            (float(dict(labels)["le"]), number)
            for (name, labels), number in samples.items()
            if name == "tidings_broker_round_trip_seconds_bucket"
            and dict(labels)["operation"] == "publish"
        ]
        assert sorted(buckets)[-1] == (float("inf"), publications)
        assert value(samples, "tidings_broker_round_trip_seconds_count", operation="history") >= 1
        assert value(samples, "tidings_broker_errors_total", operation="publish") == 0
    finally:
        await delete_keys(shared_redis, prefix)
