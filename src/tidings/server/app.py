"""The standalone server: routes, the WebSocket upgrade, the demo, and the lifecycle.

Everything HTTP-library specific stays in :mod:`tidings.server.http` and the
transport adapters; the node and sessions never see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import socket
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from websockets.datastructures import Headers
from websockets.exceptions import NegotiationError
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from tidings.config import Config
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
from tidings.server.origins import OriginPolicy
from tidings.server.transports import install as install_transports
from tidings.session import Session
from tidings.transports.base import WireFormat, transport_high_water
from tidings.transports.websocket import (
    JSON_WIRE,
    FrameProtocol,
    WebSocketConnection,
    deflate_wire,
)

log = logging.getLogger("tidings.server")

_QUIET_LOGGER = logging.getLogger("tidings.websocket.frames")
"""websockets logs every open and close at INFO; tidings logs refusals itself."""
_QUIET_LOGGER.setLevel(logging.WARNING)

SubprotocolSelector = Callable[[ServerProtocol, Sequence[Subprotocol]], Subprotocol | None]

JSON_SUBPROTOCOL = Subprotocol("centrifuge-json")
PROTOBUF_SUBPROTOCOL = Subprotocol("centrifuge-protobuf")


def _select_subprotocol(_: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Echo ``centrifuge-json`` when offered (Node's ``ws`` aborts otherwise); refuse Protobuf."""
    if JSON_SUBPROTOCOL in offered:
        return JSON_SUBPROTOCOL
    if PROTOBUF_SUBPROTOCOL in offered:
        raise NegotiationError("the Protobuf protocol is not supported")
    return None


def find_centrifuge_js() -> Path | None:
    """The browser bundle of centrifuge-js, shipped inside the package (demo/vendor).

    Vendored from npm unchanged, with its licence and a VERSION note, so Python
    alone serves the demo and the admin page; a test checks it against the npm
    package of the version package-lock.json pins.
    """
    resource = resources.files("tidings") / "demo" / "vendor" / "centrifuge.js"
    path = Path(str(resource))
    return path if path.is_file() else None


class TidingsServer:
    """One listening node: HTTP edge + WebSocket + API + demo around a :class:`Node`."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.config: Config = node.config
        self.origins = OriginPolicy(self.config.allowed_origins)
        self.api = ApiEndpoint(node, self.config.api_key, insecure=self.config.api_insecure)
        self.router = Router()
        self._server: asyncio.AbstractServer | None = None
        self._websockets: set[WebSocketConnection] = set()
        self.refusals = RefusalLog()
        self.gate = AdmissionGate(
            per_ip=self.config.client_ip_connection_limit,
            rate=self.config.client_connection_rate_limit,
        )
        self._all_closed: asyncio.Event | None = None
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
        router.route("/", self._index)
        router.route("/demo/*", self._demo_asset)
        router.route("/vendor/centrifuge.js", self._centrifuge_js)
        self.transports = install_transports(self)
        if self.config.admin:  # off by default; see tidings.server.admin
            from tidings.server.admin import install as install_admin

            install_admin(self)

    def add_route(self, path: str, handler: Callable[[Request], object]) -> None:
        """Extension point for other transports (SSE, streaming, long polling)."""
        self.router.route(path, handler)  # type: ignore[arg-type]

    async def _health(self, request: Request) -> Response:
        return json_response(b'{"status":"ok"}')

    async def _websocket_without_upgrade(self, request: Request) -> Response:
        return text_response("expected a WebSocket upgrade", 400)

    async def _index(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"", "text/plain", [("allow", "GET, HEAD")])
        if not self.config.demo_enabled:
            return text_response(
                "tidings is running. The demo is off because a token secret is configured "
                '(set demo = "on" to serve it anyway).\n',
                200,
            )
        return self._packaged("index.html")

    async def _demo_asset(self, request: Request) -> Response:
        if not self.config.demo_enabled:
            return text_response("not found", 404)
        name = request.path[len("/demo/") :]
        if not name or "/" in name or name.startswith("."):
            return text_response("not found", 404)
        return self._packaged(name)

    def _packaged(self, name: str) -> Response:
        resource = resources.files("tidings") / "demo" / name
        if not resource.is_file():
            return text_response("not found", 404)
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        return Response(200, resource.read_bytes(), content_type, [("cache-control", "no-cache")])

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

    def origin_allowed(self, request: Request) -> bool:
        return self.origins.allows(request.header("origin"), request.header("host"))

    def _upgrade_websocket(
        self, request: Request, transport: asyncio.Transport, rest: bytes
    ) -> None:
        if not self.origin_allowed(request):
            log.info(
                "websocket from %s refused: origin %r not allowed (see allowed_origins)",
                request.client,
                request.header("origin"),
                extra={"client": request.client, "status": 403},
            )
            _refuse(transport, 403, "origin not allowed")
            return
        if "protobuf" in (request.query_value("cf_protocol"), request.query_value("format")):
            _refuse(transport, 400, "the Protobuf protocol is not supported")
            return
        opened = self.websocket_handshake(request, transport, compression=True)
        if opened is None:
            return
        connection = self.accept_websocket(
            opened, transport, request=request, wire=self._wire_for(opened)
        )
        connection.session = Session(self.node, connection, remote=request.client)
        if rest:
            connection.data_received(rest)

    @property
    def _extensions(self) -> list[ServerPerMessageDeflateFactory] | None:
        if not self.config.websocket_compression:
            return None
        # No context takeover either way: the server compresses each batch once for
        # every recipient, and the client's inflater is reset per message, so an idle
        # connection keeps no compression window.
        return [
            ServerPerMessageDeflateFactory(
                server_no_context_takeover=True, client_no_context_takeover=True
            )
        ]

    def websocket_handshake(
        self,
        request: Request,
        transport: asyncio.Transport,
        *,
        select_subprotocol: SubprotocolSelector = _select_subprotocol,
        compression: bool = False,
    ) -> ServerProtocol | None:
        """Answer an upgrade (RFC 6455 section 4.2) with websockets' sans-I/O handshake.

        Returns the frame-level protocol, OPEN, on success; ``None`` when the
        handshake was refused (the refusal is already written and the
        connection closing). Every WebSocket route goes through here.
        """
        ws = ServerProtocol(
            max_size=self.config.max_message_size,
            select_subprotocol=select_subprotocol,
            extensions=self._extensions if compression else None,
            logger=_QUIET_LOGGER,
        )
        headers = Headers()
        for name, value in request.headers:
            headers[name.decode("latin-1")] = value.decode("latin-1")
        response = ws.accept(WsRequest(request.raw_path.decode("latin-1"), headers))
        ws.send_response(response)
        for chunk in ws.data_to_send():
            if chunk:
                transport.write(chunk)
        if response.status_code != 101:
            log.info("websocket handshake from %s refused: %s", request.client, ws.handshake_exc)
            transport.close()
            return None
        return self.open_protocol(ws)

    def open_protocol(self, handshake: ServerProtocol) -> ServerProtocol:
        """A frame-level protocol in the OPEN state, carrying what the handshake negotiated.

        The handshake object was never fed the request bytes (httptools parsed
        them), so its parser still expects HTTP; a fresh one constructed OPEN
        parses frames, and the handshake's request/response objects are freed.
        """
        ws = FrameProtocol(
            state=State.OPEN, max_size=self.config.max_message_size, logger=_QUIET_LOGGER
        )
        ws.extensions = handshake.extensions
        ws.subprotocol = handshake.subprotocol
        return ws

    def _wire_for(self, ws: ServerProtocol) -> WireFormat:
        """Plain JSON frames, or frames compressed once per batch when deflate was negotiated."""
        for extension in ws.extensions:
            if isinstance(extension, PerMessageDeflate):
                return deflate_wire(
                    extension.local_max_window_bits, self.config.websocket_compression_min_size
                )
        return JSON_WIRE

    def accept_websocket(
        self,
        ws: ServerProtocol,
        transport: asyncio.Transport,
        *,
        request: Request,
        **options: object,
    ) -> WebSocketConnection:
        """Swap the HTTP protocol for a WebSocket one; shared by every WebSocket route."""
        connection = WebSocketConnection(
            ws,
            transport,
            max_fragments=self.config.websocket_max_fragments,
            **options,  # type: ignore[arg-type]
        )
        connection.remote_ip = request.connection.hand_over()
        transport.set_protocol(connection)
        limit = self.config.write_buffer_limit
        transport.set_write_buffer_limits(high=transport_high_water(limit))
        self._websockets.add(connection)
        connection.on_lost = self._websocket_lost
        return connection

    def _websocket_lost(self, connection: WebSocketConnection) -> None:
        self._websockets.discard(connection)
        self.gate.release(connection.remote_ip)
        if not self._websockets and self._all_closed is not None:
            self._all_closed.set()

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

    async def stop(self) -> None:
        """Stop accepting, disconnect every client with 3001, wait for them to go, bounded."""
        if self._server is not None:
            self._server.close()
        self.transports.close()
        await self.node.shutdown()
        if self._websockets:
            self._all_closed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), self.config.shutdown_timeout)
        for connection in list(self._websockets):
            connection.transport.abort()
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


def _refuse(transport: asyncio.Transport, status: int, text: str) -> None:
    body = text.encode()
    phrase = {400: "Bad Request", 403: "Forbidden"}.get(status, "Error")
    head = b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n" % (
        status,
        phrase.encode(),
        len(body),
    )
    transport.write(head + b"connection: close\r\n\r\n" + body)
    transport.close()
