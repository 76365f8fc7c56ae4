"""The WebSocket upgrade every WebSocket route shares: origin check, handshake, hand-over.

``/connection/websocket`` and ``/connection/uni_websocket`` (and the conformance
suite's echo route) answer an upgrade the same way: check the origin, run
websockets' sans-I/O handshake (RFC 6455 section 4.2), swap the HTTP protocol
for a :class:`~tidings.transports.websocket.WebSocketConnection`, and count the
connection so shutdown can wait for it. A refused upgrade gets one JSON error,
like every other plain-HTTP refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import msgspec
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
from tidings.errors import Error
from tidings.protocol.wire import (
    JSON_WIRE,
    PROTOBUF_WIRE,
    ProtobufWire,
    WebSocketDeflateWire,
    WireFormat,
    deflated_binary,
)
from tidings.server.exchange import HttpRequest
from tidings.server.http import Request
from tidings.server.origins import OriginPolicy
from tidings.transports.base import transport_high_water
from tidings.transports.websocket import FrameProtocol, WebSocketConnection

log = logging.getLogger("tidings.server")

_QUIET_LOGGER = logging.getLogger("tidings.websocket.frames")
"""websockets logs every open and close at INFO; tidings logs refusals itself."""
_QUIET_LOGGER.setLevel(logging.WARNING)

SubprotocolSelector = Callable[[ServerProtocol, Sequence[Subprotocol]], Subprotocol | None]

JSON_SUBPROTOCOL = Subprotocol("centrifuge-json")
PROTOBUF_SUBPROTOCOL = Subprotocol("centrifuge-protobuf")


def select_json(_: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Echo ``centrifuge-json`` when offered (Node's ``ws`` aborts otherwise); refuse
    ``centrifuge-protobuf`` alone: the unidirectional WebSocket is JSON only."""
    if JSON_SUBPROTOCOL in offered:
        return JSON_SUBPROTOCOL
    if PROTOBUF_SUBPROTOCOL in offered:
        raise NegotiationError("the Protobuf protocol is not supported here")
    return None


def select_client_protocol(_: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """``/connection/websocket``: echo ``centrifuge-json`` or ``centrifuge-protobuf``,
    whichever the client offers (JSON when both); the echoed one is what the
    connection speaks (docs/protocol.md, "Protobuf")."""
    if JSON_SUBPROTOCOL in offered:
        return JSON_SUBPROTOCOL
    if PROTOBUF_SUBPROTOCOL in offered:
        return PROTOBUF_SUBPROTOCOL
    return None


def wants_protobuf(request: HttpRequest, ws: ServerProtocol) -> bool:
    """The connection speaks Protobuf: the ``centrifuge-protobuf`` subprotocol, or (for
    clients that cannot set one) ``?format=protobuf`` / ``?cf_protocol=protobuf``, as
    Centrifugo reads them. A JSON subprotocol wins over the query."""
    if ws.subprotocol is not None:
        return ws.subprotocol == PROTOBUF_SUBPROTOCOL
    return "protobuf" in (request.query_value("format"), request.query_value("cf_protocol"))


def refuse(transport: asyncio.Transport, status: int, error: Error) -> None:
    """Answer an upgrade with a JSON error and close (no HTTP parser owns the socket now)."""
    body = b'{"error":{"code":%d,"message":%b}}' % (error.code, msgspec.json.encode(error.message))
    head = b"HTTP/1.1 %d Refused\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        len(body),
    )
    transport.write(head + b"connection: close\r\n\r\n" + body)
    transport.close()


class WebSocketUpgrades:
    """Handshakes and the open WebSocket connections of one server."""

    def __init__(
        self, config: Config, origins: OriginPolicy, on_lost: Callable[[str], None]
    ) -> None:
        self.config = config
        self.origins = origins
        self.connections: set[WebSocketConnection] = set()
        self._on_lost = on_lost
        self._all_closed: asyncio.Event | None = None
        self._deflate_wires: dict[tuple[int, int, bool], WireFormat] = {}

    def origin_allowed(self, request: HttpRequest) -> bool:
        return self.origins.allows(request.header("origin"), request.header("host"))

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

    def handshake(
        self,
        request: Request,
        transport: asyncio.Transport,
        *,
        select_subprotocol: SubprotocolSelector = select_json,
        compression: bool = False,
    ) -> ServerProtocol | None:
        """Answer an upgrade (RFC 6455 section 4.2) with websockets' sans-I/O handshake.

        Returns the frame-level protocol, OPEN, on success; ``None`` when the
        handshake was refused (the refusal is already written and the
        connection closing).
        """
        ws = ServerProtocol(
            max_size=self.config.max_message_size,
            select_subprotocol=select_subprotocol,
            extensions=self._extensions() if compression else None,
            logger=_QUIET_LOGGER,
        )
        headers = Headers()
        for name, value in request.headers:
            if name.lower() == b"sec-websocket-protocol":
                # Some clients send the header empty (centrifuge-python <= 0.6); like
                # Centrifugo, read it as a list and drop what is empty.
                value = b", ".join(part.strip() for part in value.split(b",") if part.strip())
                if not value:
                    continue
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
        return self._open_protocol(ws)

    def _open_protocol(self, handshake: ServerProtocol) -> ServerProtocol:
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

    def wire_for(self, ws: ServerProtocol, *, protobuf: bool = False) -> WireFormat:
        """JSON text frames or Protobuf binary frames, compressed once per batch when
        deflate was negotiated. One instance per kind: the hub frames per instance."""
        for extension in ws.extensions:
            if isinstance(extension, PerMessageDeflate):
                bits = extension.local_max_window_bits
                min_size = self.config.websocket_compression_min_size
                key = (bits, min_size, protobuf)
                wire = self._deflate_wires.get(key)
                if wire is None:
                    wire = self._deflate_wires[key] = (
                        ProtobufWire(
                            f"websocket+protobuf+deflate/{bits}", deflated_binary(bits, min_size)
                        )
                        if protobuf
                        else WebSocketDeflateWire(bits, min_size)
                    )
                return wire
        return PROTOBUF_WIRE if protobuf else JSON_WIRE

    def accept(
        self,
        ws: ServerProtocol,
        transport: asyncio.Transport,
        *,
        request: Request,
        wire: WireFormat = JSON_WIRE,
        name: str = "websocket",
        unidirectional: bool = False,
    ) -> WebSocketConnection:
        """Swap the HTTP protocol for a WebSocket one; shared by every WebSocket route."""
        connection = WebSocketConnection(
            ws,
            transport,
            wire=wire,
            name=name,
            unidirectional=unidirectional,
            max_fragments=self.config.websocket_max_fragments,
        )
        connection.remote_ip = request.connection.hand_over()
        transport.set_protocol(connection)
        limit = self.config.write_buffer_limit
        transport.set_write_buffer_limits(high=transport_high_water(limit))
        self.connections.add(connection)
        connection.on_lost = self._lost
        return connection

    def _lost(self, connection: WebSocketConnection) -> None:
        self.connections.discard(connection)
        self._on_lost(connection.remote_ip)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def wait_closed(self, timeout: float) -> None:
        """Wait (bounded) for every connection to finish its close handshake, then abort."""
        if self.connections:
            self._all_closed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), timeout)
        for connection in list(self.connections):
            connection.transport.abort()
