"""OpenTelemetry: spans of API calls (children of the caller's ``traceparent``) and of
handler calls when ``opentelemetry = true``; nothing, not even the import, when it is off."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import StartServer, make_config
from tests.support.http import api
from tidings.errors import ConfigError
from tidings.node import Node
from tidings.tracing import OpenTelemetryTracing, Tracing

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def recorder() -> tuple[TracerProvider, InMemorySpanExporter]:
    """An SDK tracer provider of the test's own that keeps finished spans in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_api_calls_are_spans_in_the_callers_trace(start_server: StartServer) -> None:
    running = await start_server(opentelemetry=True)
    assert isinstance(running.node.tracing, OpenTelemetryTracing)
    provider, exporter = recorder()
    running.node.tracing = OpenTelemetryTracing(provider)

    status, answer = await api(
        running.port, "publish", {"channel": "chat:t", "data": 1}, traceparent=TRACEPARENT
    )
    assert status == 200 and "result" in answer, answer
    (span,) = by_name(exporter.get_finished_spans(), "tidings.api.publish")
    assert span.kind is SpanKind.SERVER
    assert span.context is not None and span.parent is not None
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.status.status_code is StatusCode.UNSET

    # A refused call is an error span with the protocol code; never the data or the key.
    await api(running.port, "publish", {"channel": "nowhere:x", "data": {"secret": "s3"}})
    refused = by_name(exporter.get_finished_spans(), "tidings.api.publish")[-1]
    assert refused.status.status_code is StatusCode.ERROR
    assert refused.attributes is not None and refused.attributes["tidings.error.code"] == 102
    assert "s3" not in str(refused.to_json())
    assert refused.parent is None  # no traceparent: a trace of its own

    # A batch: one span, its methods as children.
    exporter.clear()
    await api(
        running.port,
        "batch",
        {"commands": [{"publish": {"channel": "chat:t", "data": 2}}, {"info": {}}]},
    )
    spans = exporter.get_finished_spans()
    (batch,) = by_name(spans, "tidings.api.batch")
    children = by_name(spans, "tidings.api.publish") + by_name(spans, "tidings.api.info")
    assert len(children) == 2
    assert batch.context is not None
    assert all(c.parent is not None and c.parent.span_id == batch.context.span_id for c in children)


async def test_the_handler_hooks_time_and_trace_a_call() -> None:
    node = Node(make_config(opentelemetry=True, metrics=True))
    provider, exporter = recorder()
    node.tracing = OpenTelemetryTracing(provider)
    with (
        node.metrics.time_handler("rpc"),
        node.tracing.span("tidings.handler.rpc", attributes={"tidings.rpc.method": "quote"}),
    ):
        await asyncio.sleep(0)
    with pytest.raises(RuntimeError), node.tracing.span("tidings.handler.connect"):
        raise RuntimeError("the handler failed")
    rpc, connect = exporter.get_finished_spans()
    assert rpc.kind is SpanKind.INTERNAL and rpc.attributes == {"tidings.rpc.method": "quote"}
    assert connect.status.status_code is StatusCode.ERROR  # recorded with its exception
    text = node.metrics.exposition([]).decode()
    assert 'tidings_handler_duration_seconds_count{event="rpc",outcome="ok"} 1.0' in text


def test_tracing_off_spans_are_one_shared_object() -> None:
    tracing = Node(make_config()).tracing
    assert type(tracing) is Tracing and not tracing.enabled
    with tracing.span("a") as first, tracing.span("b") as second:
        first.fail(100, "x")
        assert first is second


def test_opentelemetry_on_without_the_package_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(ConfigError, match=r"opentelemetry: needs the opentelemetry-api package"):
        make_config(opentelemetry=True)


SERVE_AND_CALL = textwrap.dedent(
    """
    import asyncio, json, sys
    from tidings.config import Config
    from tidings.node import Node
    from tidings.server.app import TidingsServer

    async def main():
        server = TidingsServer(Node(Config(port=0, api_insecure=True)))
        port = await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"channel": "demo:x", "data": 1}).encode()
        writer.write(b"POST /api/publish HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n"
                     b"Content-Length: %d\\r\\n\\r\\n%s" % (len(body), body))
        answer = await reader.read()
        assert b'"result"' in answer, answer
        await server.stop()
        loaded = {name.split(".")[0] for name in sys.modules}
        print(sorted(loaded & {"opentelemetry", "prometheus_client"}))

    asyncio.run(main())
    """
)


async def test_off_by_default_nothing_is_imported() -> None:
    """A server that answered an API call with both options off never imported either library."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVE_AND_CALL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "[]"
