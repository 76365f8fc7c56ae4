"""Unidirectional WebSocket: ``/connection/uni_websocket``.

The client sends one ConnectRequest (in the ``cf_connect`` query parameter or
as its first text message) and then only reads: bare pushes, each in its own
text frame (fact sheet section 8). Anything it sends after that is ignored.
A disconnect is the disconnect push, then the close frame.

The connection itself is the ordinary :class:`WebSocketConnection`; this
module only adds the wire format and a thin transport that writes the push
before the close frame. Broadcast writes still go straight to the socket.
"""

from __future__ import annotations

from tidings.errors import Disconnect
from tidings.protocol.codec import prepare_push
from tidings.protocol.messages import DisconnectPush
from tidings.protocol.wire import UNI_WEBSOCKET_WIRE, WireFormat, Writer
from tidings.transports.websocket import WebSocketConnection


class UniWebSocketTransport:
    """The session's view of a unidirectional WebSocket connection."""

    __slots__ = ("connection", "write")

    name = "uni_websocket"
    wire: WireFormat = UNI_WEBSOCKET_WIRE
    unidirectional = True
    emulation = False

    def __init__(self, connection: WebSocketConnection) -> None:
        self.connection = connection
        self.write: Writer = connection.transport.write

    @property
    def closed(self) -> bool:
        return bool(self.connection.closed)

    def close(self, disconnect: Disconnect) -> None:
        if self.connection.closed:
            return
        push = prepare_push("", "disconnect", DisconnectPush(disconnect.code, disconnect.reason))
        self.connection.write(self.wire.frame((push.bare,)))
        self.connection.close(disconnect)

    def write_buffer_size(self) -> int:
        return self.connection.write_buffer_size()
