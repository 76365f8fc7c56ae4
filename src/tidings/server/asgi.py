"""The standalone server's endpoints as an ASGI 3 application: ``rt.asgi()``.

Mounted in FastAPI or Starlette (``app.mount("/rt", rt.asgi())``) or served on
its own (``uvicorn module:app``), it answers, relative to where it is mounted
(the scope's ``root_path``):

* ``/connection/websocket`` and ``/connection/uni_websocket`` (WebSocket scopes);
* ``/connection/http_stream``, ``/connection/sse``, ``/emulation``,
  ``/connection/uni_sse``, ``/connection/uni_http_stream``, ``/events``,
  ``/longpoll``, ``/api``, ``/health`` and ``/vendor/centrifuge.js`` (HTTP scopes; the
  demo page is not served);
* ``lifespan``, when it is the top-level application: it starts and stops the node.

What is shared with the standalone edge, and what is not:

* Every plain-HTTP route is the standalone edge's own handler
  (:class:`~tidings.server.transport_routes.TransportRoutes`,
  :class:`~tidings.server.api.ApiEndpoint`) behind the same ``guard``: origin
  policy, CORS, method checks, error bodies and codes. The mount only adapts a
  request and a response stream (:mod:`tidings.server.exchange`).
* Limits: ``max_message_size`` (413 with the same text, and 1009 on a WebSocket),
  ``client_ip_connection_limit`` and ``client_connection_rate_limit`` (counted per
  request and WebSocket here: the ASGI server owns the TCP connections), and
  every session-level limit (command rates, channels, slow consumers: 3008).
  Header sizes, header timeouts and the WebSocket frame layer (ping/pong frames,
  fragments, UTF-8 checks, compression) belong to the ASGI server.
* The WebSocket handshake is the server's; refusals (origin 403, Protobuf 400,
  unknown path 404, limits 503) use the ASGI "WebSocket Denial Response"
  extension to send the standalone edge's JSON body, or a plain 403 where the
  server lacks it. Binary frames close with 3506, as on the standalone edge.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

from tidings.errors import DisconnectCode, ErrorCode, HttpErrorCode
from tidings.node import Node
from tidings.protocol.wire import JSON_WIRE, PROTOBUF_WIRE, UNI_WEBSOCKET_WIRE
from tidings.server.api import ApiEndpoint
from tidings.server.app import AdmissionGate, find_centrifuge_js
from tidings.server.exchange import RequestFields
from tidings.server.http import (
    RefusalLog,
    Request,
    Response,
    Router,
    body_too_large,
    json_response,
    text_response,
)
from tidings.server.origins import OriginPolicy
from tidings.server.transport_routes import TransportRoutes, error_response, session_request
from tidings.server.upgrades import JSON_SUBPROTOCOL, PROTOBUF_SUBPROTOCOL, WebSocketUpgrades
from tidings.session import Session
from tidings.transports.asgi import (
    AsgiOutput,
    AsgiResponseStream,
    AsgiWebSocket,
    SharedMessages,
    body_messages,
    websocket_messages,
)
from tidings.transports.base import transport_high_water

log = logging.getLogger("tidings.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Lifecycle = Callable[[], Awaitable[None]]

INTERNAL_ERROR = b'{"error":{"code":100,"message":"internal server error"}}'


def route_path(scope: Scope) -> str:
    """The path below the mount point: ``path`` without ``root_path`` (ASGI 3 and
    Starlette's ``Mount`` keep the full path in ``path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :]
    return path


def client_address(scope: Scope) -> tuple[str, str]:
    """``("ip:port", "ip")`` of the peer, as the server (or its proxy headers) says."""
    client = scope.get("client")
    if not client:
        return "", ""
    host, port = client[0], client[1]
    return f"{host}:{port}", str(host)


class AsgiRequest(RequestFields):
    """An :class:`~tidings.server.exchange.HttpRequest` from an ASGI scope and its body."""

    __slots__ = (
        "_mount",
        "_query",
        "_receive",
        "_send",
        "_watch",
        "body",
        "client",
        "headers",
        "method",
        "path",
        "query_string",
        "stream",
    )

    def __init__(
        self,
        mount: AsgiMount,
        scope: Scope,
        path: str,
        body: bytes,
        receive: Receive,
        send: Send,
    ) -> None:
        self._mount = mount
        self._receive = receive
        self._send = send
        self.method: str = scope.get("method", "GET")
        self.path = path
        self.headers: list[tuple[bytes, bytes]] = [
            (bytes(name).lower(), bytes(value)) for name, value in scope["headers"]
        ]
        self.body = body
        self.client = client_address(scope)[0]
        self.query_string: bytes = scope.get("query_string", b"")
        self._query: dict[str, list[str]] | None = None
        self.stream: AsgiResponseStream | None = None
        self._watch: asyncio.Task[None] | None = None

    def start_stream(
        self, status: int, headers: list[tuple[str, str]], *, chunked: bool = True
    ) -> AsgiResponseStream:
        """Start the response; the client's ``http.disconnect`` ends the stream.

        Writes take complete HTTP chunks either way (the routes frame them); the
        ASGI server chunks the body itself.
        """
        mount = self._mount
        output = AsgiOutput(self._send, mount.high_water)
        stream = self.stream = AsgiResponseStream(output, mount.bodies, status, headers)
        self._watch = asyncio.get_running_loop().create_task(self._watch_disconnect(stream))
        return stream

    async def _watch_disconnect(self, stream: AsgiResponseStream) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                stream.lost()
                return

    def stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None


class AsgiMount:
    """The ASGI application (``rt.asgi()``). One per mount; it owns the mount's
    ``/events`` feeds and long-poll waiters, and shares the node with every
    other listener of the process."""

    def __init__(
        self,
        node: Node,
        *,
        start: Lifecycle | None = None,
        stop: Lifecycle | None = None,
    ) -> None:
        self.node = node
        self.config = config = node.config
        self._start = start or node.start
        self._stop = stop or node.shutdown
        self.refusals = RefusalLog()
        self.origins = OriginPolicy(config.allowed_origins)
        self.gate = AdmissionGate(
            per_ip=config.client_ip_connection_limit, rate=config.client_connection_rate_limit
        )
        self.upgrades = WebSocketUpgrades(config, self.origins, self.gate.release)
        self.routes = TransportRoutes(node, self.upgrades, self.refusals)
        self.api = ApiEndpoint(node, config.api_key, insecure=config.api_insecure)
        self.router = Router()
        self.routes.install(self.router)
        self.router.route("/connection/websocket", self._websocket_without_upgrade)
        self.router.route("/api", self.api.handle)
        self.router.route("/api/*", self.api.handle)
        self.router.route("/health", self._health)
        self.router.route("/vendor/centrifuge.js", self._centrifuge_js)
        self.high_water = transport_high_water(config.write_buffer_limit)
        self.frames = SharedMessages(websocket_messages)
        self.bodies = SharedMessages(body_messages)
        self._started: asyncio.Future[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # ------------------------------------------------------------------ the node

    async def _serving(self) -> bool:
        """Start the node on first use if no lifespan did (idempotent); False once it stops.

        Requests arriving while it starts wait for the same start.
        """
        if self.node.closing:
            return False
        if self._started is None:
            self._started = asyncio.ensure_future(self._start_once())
        if not self._started.done():
            await asyncio.shield(self._started)
        self._started.result()
        return True

    async def _start_once(self) -> None:
        await self._start()
        self.node.spawn(self._close_with_node(), daemon=True)

    async def _close_with_node(self) -> None:
        """End the mount's ``/events`` streams and waiting polls when the node stops
        (a node cancels its daemons at once on shutdown)."""
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self.routes.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._serving()
                except Exception as exc:
                    log.exception("tidings failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.routes.close()
                await self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------ HTTP

    async def _health(self, request: object) -> Response:
        return json_response(b'{"status":"ok"}')

    async def _centrifuge_js(self, request: object) -> Response:
        """The vendored centrifuge-js bundle, as the standalone server serves it, so a page
        of the application can load the SDK from the mount (``/rt/vendor/centrifuge.js``)."""
        path = find_centrifuge_js()
        if path is None:  # pragma: no cover - only a broken installation lacks it
            return text_response("centrifuge.js is missing from this installation\n", 404)
        return Response(
            200,
            path.read_bytes(),
            "text/javascript; charset=utf-8",
            [("cache-control", "max-age=3600")],
        )

    async def _websocket_without_upgrade(self, request: object) -> Response:
        return error_response(400, HttpErrorCode.EXPECTED_UPGRADE)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = scope.get("method") == "HEAD"
        client, ip = client_address(scope)
        if not self.gate.admit(ip):
            self.refusals.note(503, "too many connections", client)
            await _respond(send, text_response("too many connections", 503), head=head)
            return
        request: AsgiRequest | None = None
        try:
            if not await self._serving():
                await _respond(send, json_response(INTERNAL_ERROR, 503), head=head)
                return
            body = await self._read_body(scope, receive)
            if body is None:
                limit = self.config.max_message_size
                self.refusals.note(413, body_too_large(limit), client)
                await _respond(send, text_response(body_too_large(limit), 413), head=head)
                return
            path = route_path(scope)
            request = AsgiRequest(self, scope, path, body, receive, send)
            handler = self.router.find(path)
            try:
                # Every handler of this router takes any HttpRequest (the routes' and the
                # API's own signatures); the Router's annotation names the standalone one.
                response = (
                    text_response("not found", 404)
                    if handler is None
                    else await handler(cast(Request, request))
                )
            except Exception:
                log.exception("%s %s failed", request.method, path)
                response = json_response(INTERNAL_ERROR, 500)
            stream = request.stream
            if stream is None:
                await _respond(send, response or json_response(INTERNAL_ERROR, 500), head=head)
                return
            if response is not None:  # a handler that started a stream answers through it
                stream.end()
            await stream.done
        finally:
            self.gate.release(ip)
            if request is not None:
                request.stop_watching()
                if request.stream is not None:
                    request.stream.lost()  # cancelled (server shutdown): let the session go

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None past ``max_message_size`` (the header is checked first)."""
        limit = self.config.max_message_size
        for name, value in scope["headers"]:
            if bytes(name).lower() == b"content-length":
                text = bytes(value).strip()
                if text.isdigit() and int(text) > limit:
                    return None
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                return None
            parts.append(part)
            if not message.get("more_body", False):
                break
        return b"".join(parts)

    # ------------------------------------------------------------------ WebSocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        path = route_path(scope)
        client, ip = client_address(scope)
        if path not in ("/connection/websocket", "/connection/uni_websocket"):
            await _deny(scope, send, text_response("not found", 404))
            return
        if not self.gate.admit(ip):
            self.refusals.note(503, "too many connections", client)
            await _deny(scope, send, text_response("too many connections", 503))
            return
        try:
            if not await self._serving():
                await _deny(scope, send, json_response(INTERNAL_ERROR, 503))
                return
            request = AsgiRequest(self, scope, path, b"", receive, send)
            unidirectional = path == "/connection/uni_websocket"
            refusal = self._refusal(request, scope, unidirectional)
            if refusal is not None:
                await _deny(scope, send, refusal)
                return
            offered = scope.get("subprotocols") or ()
            accept: Message = {"type": "websocket.accept"}
            # Echoed as the standalone edge does (Node's ws aborts unless it is): JSON when
            # offered, else Protobuf (docs/protocol.md section 13).
            if JSON_SUBPROTOCOL in offered:
                accept["subprotocol"] = JSON_SUBPROTOCOL
            elif PROTOBUF_SUBPROTOCOL in offered:
                accept["subprotocol"] = PROTOBUF_SUBPROTOCOL
            protobuf = not unidirectional and (
                accept.get("subprotocol") == PROTOBUF_SUBPROTOCOL
                or (
                    "subprotocol" not in accept
                    and "protobuf"
                    in (request.query_value("format"), request.query_value("cf_protocol"))
                )
            )
            await send(accept)
            await self._converse(
                request, receive, send, unidirectional=unidirectional, protobuf=protobuf
            )
        finally:
            self.gate.release(ip)

    def _refusal(self, request: AsgiRequest, scope: Scope, unidirectional: bool) -> Response | None:
        """The standalone upgrade's refusals: origin (403), Protobuf on uni_websocket (400)."""
        if not self.upgrades.origin_allowed(request):
            log.info(
                "websocket from %s refused: origin %r not allowed (see allowed_origins)",
                request.client,
                request.header("origin"),
                extra={"client": request.client, "status": 403},
            )
            return error_response(403, HttpErrorCode.ORIGIN_NOT_ALLOWED)
        offered = scope.get("subprotocols") or ()
        if unidirectional and PROTOBUF_SUBPROTOCOL in offered and JSON_SUBPROTOCOL not in offered:
            return error_response(400, ErrorCode.BAD_REQUEST)  # JSON only (docs/protocol.md s. 13)
        return None

    async def _converse(
        self,
        request: AsgiRequest,
        receive: Receive,
        send: Send,
        *,
        unidirectional: bool,
        protobuf: bool = False,
    ) -> None:
        """Carry one session: messages in to it; its writes go out through the output."""
        output = AsgiOutput(send, self.high_water)
        if unidirectional:
            transport = AsgiWebSocket(
                output,
                self.frames,
                name="uni_websocket",
                wire=UNI_WEBSOCKET_WIRE,
                unidirectional=True,
            )
        else:
            wire = PROTOBUF_WIRE if protobuf else JSON_WIRE
            transport = AsgiWebSocket(output, self.frames, wire=wire)
        session = Session(self.node, transport, session_request(self.node, request))
        output.on_pause = session.on_write_paused
        output.on_resume = session.on_write_resumed
        task = asyncio.current_task()
        assert task is not None

        def finished() -> None:
            if output.aborted:  # abandoned: stop waiting for the client
                task.cancel()

        output.on_finished = finished
        connect_pending = unidirectional
        if unidirectional:
            session.session_id = str(uuid.uuid4())
            cf_connect = request.query_value("cf_connect")
            if cf_connect is not None:
                connect_pending = False
                self.routes.connect_unidirectional(session, cf_connect.encode())
        limit = self.config.max_message_size
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    text = message.get("text")
                    if protobuf:
                        if text is not None:  # text on a Protobuf connection
                            session.close(DisconnectCode.INAPPROPRIATE_PROTOCOL)
                            continue
                        data = message.get("bytes") or b""
                    elif text is None:
                        if not unidirectional:  # binary on a JSON connection
                            session.close(DisconnectCode.INAPPROPRIATE_PROTOCOL)
                        continue
                    else:
                        data = text.encode()
                    if len(data) > limit:
                        log.info("websocket from %s: message over %d bytes", request.client, limit)
                        session.transport_closed()
                        transport.close(DisconnectCode.MESSAGE_TOO_BIG)
                    elif not unidirectional:
                        session.handle_frame(data)
                    elif connect_pending:  # later messages are ignored (docs/protocol.md s. 8)
                        connect_pending = False
                        self.routes.connect_unidirectional(session, data)
                elif kind == "websocket.disconnect":
                    break
        except asyncio.CancelledError:
            if not output.aborted:
                raise
            task.uncancel()
        finally:
            transport.lost()
            session.transport_closed()


async def _respond(send: Send, response: Response, *, head: bool) -> None:
    headers = [
        (b"content-type", response.content_type.encode("latin-1")),
        (b"content-length", b"%d" % len(response.body)),
    ]
    headers += [
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})


async def _deny(scope: Scope, send: Send, response: Response) -> None:
    """Refuse a WebSocket handshake with the standalone edge's status and body."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})  # the server answers 403
        return
    headers = [
        (b"content-type", response.content_type.encode("latin-1")),
        (b"content-length", b"%d" % len(response.body)),
    ]
    await send(
        {"type": "websocket.http.response.start", "status": response.status, "headers": headers}
    )
    await send({"type": "websocket.http.response.body", "body": response.body})
