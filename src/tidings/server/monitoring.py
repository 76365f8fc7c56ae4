"""``GET /ready`` (readiness) and ``GET /metrics`` (Prometheus), next to ``/health``.

* ``/health`` (in :mod:`tidings.server.app`) says the process serves HTTP:
  liveness, nothing more.
* ``/ready`` says whether this node should be sent clients: the broker answers
  within ``readiness_timeout`` (a round trip, and a networked broker's pub/sub
  links up: :meth:`tidings.brokers.base.Broker.ping`) and the node is not
  shutting down. ``200 {"status":"ready"}``, else ``503 {"status":"not ready",
  "reason":...}``. The reason is short and fixed ("broker unavailable"); the
  broker's own error, which may name hosts, goes to the log, once per change.
* ``/metrics`` (``metrics = true``) is the node's :mod:`tidings.metrics` in the
  Prometheus text format. With ``metrics_token`` set it needs
  ``Authorization: Bearer <token>`` (compared in constant time), else 401.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

import msgspec

from tidings.config import format_duration
from tidings.errors import BrokerUnavailable
from tidings.metrics import CONTENT_TYPE
from tidings.node import Node
from tidings.server.http import Request, Response, Router, json_response

__all__ = ["Monitoring"]

log = logging.getLogger("tidings.server")

_READY = b'{"status":"ready"}'
_UNAUTHORIZED = msgspec.json.encode(
    {
        "error": {
            "code": 101,
            "message": "unauthorized",
            "detail": "send the metrics_token in an Authorization: Bearer header",
        }
    }
)


def _not_ready(reason: str) -> Response:
    body = msgspec.json.encode({"status": "not ready", "reason": reason})
    return Response(503, body, "application/json", [("cache-control", "no-store")])


class Monitoring:
    """The probe and scrape routes of one server (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._token = node.config.metrics_token.encode()
        self._was_ready: bool | None = None

    def install(self, router: Router) -> None:
        router.route("/ready", self.ready)
        if self.node.config.metrics:
            router.route("/metrics", self.metrics)

    # ------------------------------------------------------------------ readiness

    async def ready(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"", "text/plain", [("allow", "GET, HEAD")])
        node = self.node
        if node.closing:
            return self._report(False, "shutting down")
        deadline = node.config.readiness_timeout
        try:
            async with asyncio.timeout(deadline):
                await node.broker.ping()
        except TimeoutError:
            return self._report(
                False, "broker unavailable", f"no answer within {format_duration(deadline)}"
            )
        except BrokerUnavailable as exc:
            return self._report(False, "broker unavailable", str(exc))
        return self._report(True)

    def _report(self, ready: bool, reason: str = "", detail: str = "") -> Response:
        """The answer; a change from ready to not ready (or back) is logged once."""
        if ready != self._was_ready:
            if ready:
                log.info("ready: the broker answers", extra={"status": 200})
            else:
                log.warning("not ready: %s%s", reason, f" ({detail})" if detail else "")
            self._was_ready = ready
        if ready:
            return Response(200, _READY, "application/json", [("cache-control", "no-store")])
        return _not_ready(reason)

    # ------------------------------------------------------------------ metrics

    async def metrics(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"", "text/plain", [("allow", "GET, HEAD")])
        if self._token and not self._bearer(request):
            log.info(
                "metrics scrape from %s refused: no or wrong bearer token (metrics_token)",
                request.client,
                extra={"client": request.client, "status": 401},
            )
            response = json_response(_UNAUTHORIZED, 401)
            response.headers.append(("www-authenticate", 'Bearer realm="metrics"'))
            return response
        node = self.node
        body = node.metrics.exposition(node.clients.values())
        return Response(200, body, CONTENT_TYPE, [("cache-control", "no-store")])

    def _bearer(self, request: Request) -> bool:
        scheme, _, value = (request.header("authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self._token
        )
