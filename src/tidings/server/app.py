"""The standalone server: routes, the WebSocket upgrade, the status page, and the lifecycle.

Everything HTTP-library specific stays in :mod:`tidings.server.http` and the
transport adapters; the node and sessions never see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from tidings.config import Config
from tidings.errors import HttpErrorCode
from tidings.node import Node
from tidings.server.api import ApiEndpoint
from tidings.server.http import (
    HttpProtocol,
    RefusalLog,
    Request,
    Response,
    Router,
    json_response,
    text_response,
)
from tidings.server.monitoring import Monitoring
from tidings.server.origins import OriginPolicy
from tidings.server.static import StaticFiles
from tidings.server.transport_routes import TransportRoutes, session_request
from tidings.server.upgrades import (
    WebSocketUpgrades,
    refuse,
    select_client_protocol,
    wants_protobuf,
)
from tidings.session import Session

log = logging.getLogger("tidings.server")


def find_centrifuge_js() -> Path | None:
    """The browser bundle of centrifuge-js, shipped inside the package (demo/vendor).

    Vendored from npm unchanged, with its licence and a VERSION note, so Python
    alone serves the pages that use it (the status page, the admin page, an
    application's own pages such as examples/chat); a test checks it against the npm
    package of the version package-lock.json pins.
    """
    resource = resources.files("tidings") / "demo" / "vendor" / "centrifuge.js"
    path = Path(str(resource))
    return path if path.is_file() else None


class TidingsServer:
    """One listening node: HTTP edge + WebSocket + API + status page around a :class:`Node`.

    ``static`` are an application's ``(URL prefix, directory)`` pairs (``rt.static``);
    they take precedence over the built-in status page at ``/``.
    """

    def __init__(self, node: Node, *, static: Sequence[tuple[str, Path]] = ()) -> None:
        self.node = node
        self.static = [StaticFiles(prefix, directory) for prefix, directory in static]
        self.config: Config = node.config
        self.origins = OriginPolicy(self.config.allowed_origins)
        self.api = ApiEndpoint(node, self.config.api_key, insecure=self.config.api_insecure)
        self.router = Router()
        self._server: asyncio.AbstractServer | None = None
        self.refusals = RefusalLog()
        self.gate = AdmissionGate(
            per_ip=self.config.client_ip_connection_limit,
            rate=self.config.client_connection_rate_limit,
        )
        self.upgrades = WebSocketUpgrades(self.config, self.origins, self.gate.release)
        self.transports = TransportRoutes(node, self.upgrades, self.refusals)
        self.port = 0
        self._install_routes()

    # ------------------------------------------------------------------ routes

    def _install_routes(self) -> None:
        router = self.router
        router.upgrade("/connection/websocket", self._upgrade_websocket)
        router.route("/connection/websocket", self._websocket_without_upgrade)
        router.route("/api", self.api.handle)
        router.route("/api/*", self.api.handle)
        router.route("/health", self._health)
        Monitoring(self.node).install(router)  # /ready, and /metrics with metrics = true
        router.route("/", self._index)
        router.route("/vendor/centrifuge.js", self._centrifuge_js)
        self.transports.install(router)
        if self.config.admin:  # off by default; see tidings.server.admin
            from tidings.server.admin import install as install_admin

            install_admin(self)
        for files in self.static:  # last: a prefix "/" catches what nothing else serves
            if files.prefix == "/":
                router.route("/", files)
            router.route(files.prefix + "*", files)

    async def _health(self, request: Request) -> Response:
        return json_response(b'{"status":"ok"}')

    async def _websocket_without_upgrade(self, request: Request) -> Response:
        return self.transports.error(400, HttpErrorCode.EXPECTED_UPGRADE)

    async def _index(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"", "text/plain", [("allow", "GET, HEAD")])
        if not self.config.demo_enabled:
            return text_response(
                "tidings is running. Anonymous access (demo mode) is off because a token "
                "secret is configured.\n",
                200,
            )
        # Demo mode with no application page at /: say what runs, with a live connection check.
        page = resources.files("tidings") / "demo" / "index.html"
        return Response(
            200, page.read_bytes(), "text/html; charset=utf-8", [("cache-control", "no-cache")]
        )

    async def _centrifuge_js(self, request: Request) -> Response:
        path = find_centrifuge_js()
        if path is None:  # pragma: no cover - only a broken installation lacks it
            return text_response("centrifuge.js is missing from this installation\n", 404)
        return Response(
            200,
            path.read_bytes(),
            "text/javascript; charset=utf-8",
            [("cache-control", "max-age=3600")],
        )

    # ------------------------------------------------------------------ WebSocket

    def _upgrade_websocket(
        self, request: Request, transport: asyncio.Transport, rest: bytes
    ) -> None:
        upgrades = self.upgrades
        if not upgrades.origin_allowed(request):
            log.info(
                "websocket from %s refused: origin %r not allowed (see allowed_origins)",
                request.client,
                request.header("origin"),
                extra={"client": request.client, "status": 403},
            )
            refuse(transport, 403, HttpErrorCode.ORIGIN_NOT_ALLOWED)
            return
        opened = upgrades.handshake(
            request, transport, select_subprotocol=select_client_protocol, compression=True
        )
        if opened is None:
            return
        wire = upgrades.wire_for(opened, protobuf=wants_protobuf(request, opened))
        connection = upgrades.accept(opened, transport, request=request, wire=wire)
        connection.session = Session(self.node, connection, session_request(self.node, request))
        if rest:
            connection.data_received(rest)

    # ------------------------------------------------------------------ lifecycle

    def protocol_factory(self) -> HttpProtocol:
        return HttpProtocol(
            self.router,
            max_body=self.config.max_message_size,
            header_timeout=self.config.http_header_timeout,
            gate=self.gate,
            refusals=self.refusals,
        )

    async def start(self, *, sock: socket.socket | None = None) -> int:
        """Start the node and listen. Returns the bound port (useful with port 0)."""
        await self.node.start()
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(self.protocol_factory, sock=sock, backlog=4096)
        else:
            self._server = await loop.create_server(
                self.protocol_factory,
                self.config.host,
                self.config.port,
                backlog=4096,
                reuse_port=self.config.workers > 1,
            )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def shut_down(self) -> None:
        """A signalled shutdown: :meth:`stop`, bounded by ``shutdown_timeout`` (plus slack)."""
        log.info("shutting down: disconnecting clients with 3001")
        try:
            await asyncio.wait_for(self.stop(), timeout=self.config.shutdown_timeout + 2)
        except TimeoutError:
            log.warning("shutdown timed out; exiting anyway")

    async def stop(self) -> None:
        """Stop accepting, disconnect every client with 3001, wait for them to go, bounded."""
        if self._server is not None:
            self._server.close()
        self.transports.close()
        await self.node.shutdown()
        await self.upgrades.wait_closed(self.config.shutdown_timeout)
        if self._server is not None:
            close_clients = getattr(self._server, "close_clients", None)
            if close_clients is not None:  # Python 3.12+: idle keep-alive connections
                close_clients()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)


class AdmissionGate:
    """Per-IP concurrent connections and a node-wide accept rate (token bucket).

    Zero disables a limit. Checked once per TCP connection, before any parsing.
    """

    def __init__(self, *, per_ip: int, rate: int) -> None:
        self.per_ip = per_ip
        self.rate = rate
        self._open: dict[str, int] = {}
        self._tokens = float(rate)
        self._refilled = time.monotonic()
        self.refused = 0

    def admit(self, ip: str) -> bool:
        if self.rate:
            now = time.monotonic()
            self._tokens = min(float(self.rate), self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._tokens < 1.0:
                self.refused += 1
                return False
            self._tokens -= 1.0
        if self.per_ip:
            count = self._open.get(ip, 0)
            if count >= self.per_ip:
                self.refused += 1
                return False
            self._open[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        if not self.per_ip:
            return
        count = self._open.get(ip, 0) - 1
        if count > 0:
            self._open[ip] = count
        else:
            self._open.pop(ip, None)
