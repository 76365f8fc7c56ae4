"""OpenTelemetry spans of server API calls and application handler calls, when asked for.

``opentelemetry = true`` turns them on; it needs the ``opentelemetry-api``
package (``pip install 'tidings[tracing]'``), and spans go wherever the
process's tracer provider sends them: the OpenTelemetry SDK configured by the
application, or by ``opentelemetry-instrument tidings serve`` from the
``OTEL_*`` environment variables (docs/deployment.md). Without the option the
node holds the base :class:`Tracing`, whose spans are one shared object that
does nothing, and ``opentelemetry`` is never imported.

Spans:

* ``tidings.api.<method>`` (kind SERVER) around each server API method, a
  child of the caller's trace when the request carries a W3C ``traceparent``
  header (a batch's methods are children of the ``tidings.api.batch`` span);
* ``tidings.handler.<event>`` (kind INTERNAL) around an application handler,
  opened by the handler runner through :meth:`Tracing.span`.

A refused call carries ``tidings.error.code`` and an error status. Spans
never carry a token, an API key, or the data of a publication.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

__all__ = ["OpenTelemetryTracing", "Span", "Tracing", "tracing_for"]

Attributes = Mapping[str, str | int | float | bool]


class Span:
    """An open span, as code that opened it sees it (this one records nothing)."""

    __slots__ = ()

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        """Add an attribute (a channel name, a method: never a secret or payload)."""

    def fail(self, code: int, message: str) -> None:
        """Mark the call refused or failed with a protocol error code."""

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None


_NO_SPAN = Span()


class Tracing:
    """No tracing (the default): every span is one shared object that does nothing."""

    enabled = False

    def span(
        self,
        name: str,
        *,
        server: bool = False,
        attributes: Attributes | None = None,
        headers: Iterable[tuple[bytes, bytes]] | None = None,
    ) -> Span:
        """``with node.tracing.span("tidings.handler.rpc", attributes={...}) as span:``.

        ``server`` marks a span that handles a request from outside (kind
        SERVER); ``headers`` are that request's (lower-case names, as the HTTP
        edge keeps them), whose ``traceparent`` makes the span a child of the
        caller's trace.
        """
        return _NO_SPAN


class _OpenSpan(Span):
    """A span of OpenTelemetry's, current while its ``with`` block runs."""

    __slots__ = ("_manager", "_span")

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._span: Any = None

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        self._span.set_attribute(key, value)

    def fail(self, code: int, message: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("tidings.error.code", code)
        self._span.set_status(Status(StatusCode.ERROR, message))

    def __enter__(self) -> Span:
        self._span = self._manager.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._manager.__exit__(kind, error, traceback)


class OpenTelemetryTracing(Tracing):
    """Spans through the OpenTelemetry API: ``provider`` or the process's global one."""

    enabled = True

    def __init__(self, provider: Any = None) -> None:
        from opentelemetry import propagate, trace

        from tidings.version import __version__

        self._tracer = trace.get_tracer("tidings", __version__, tracer_provider=provider)
        self._extract = propagate.extract
        self._server = trace.SpanKind.SERVER
        self._internal = trace.SpanKind.INTERNAL

    def span(
        self,
        name: str,
        *,
        server: bool = False,
        attributes: Attributes | None = None,
        headers: Iterable[tuple[bytes, bytes]] | None = None,
    ) -> Span:
        parent = None
        if headers is not None:
            carrier = {key.decode("latin-1"): value.decode("latin-1") for key, value in headers}
            parent = self._extract(carrier)
        return _OpenSpan(
            self._tracer.start_as_current_span(
                name,
                context=parent,
                kind=self._server if server else self._internal,
                attributes=dict(attributes) if attributes else None,
            )
        )


def tracing_for(enabled: bool) -> Tracing:
    """The node's tracing: OpenTelemetry's when ``opentelemetry = true``, else none."""
    return OpenTelemetryTracing() if enabled else Tracing()
