"""Bidirectional WebSocket: ``/connection/websocket``.

After the HTTP edge accepts the upgrade, the connection's asyncio protocol is
swapped for a :class:`WebSocketConnection`. It feeds bytes to ``websockets``'
sans-I/O :class:`ServerProtocol` (frame parsing, masking, size limit, control
frames, the close handshake) and hands complete messages to the session: text
messages on a JSON connection, binary ones on a Protobuf connection (the
``centrifuge-protobuf`` subprotocol). A message of the other kind ends the
connection with 3506 (docs/protocol.md section 5).

Writes bypass that object: server frames are unmasked, so a broadcast frame
built once is valid for every recipient and goes straight to the socket
transport (``write`` is the transport's own bound method: no Python frame in
between). Disconnects travel only in the close frame (docs/protocol.md section 5).
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from tidings.errors import Disconnect, DisconnectCode
from tidings.protocol.wire import JSON_WIRE, WireFormat

if TYPE_CHECKING:
    from tidings.session import Session

log = logging.getLogger("tidings.websocket")

CLOSE_TIMEOUT = 5.0
"""Seconds to wait for the client's close frame before dropping TCP (as Centrifugo)."""

CLOSE_REASONS = {
    d.code: d.reason
    for d in (
        DisconnectCode.PROTOCOL_ERROR,
        DisconnectCode.INVALID_UTF8,
        DisconnectCode.MESSAGE_TOO_BIG,
        DisconnectCode.INTERNAL_ERROR,
    )
}
"""Close reasons from tidings' catalog: a library's own text never reaches a client."""


class FrameProtocol(ServerProtocol):
    """websockets' sans-I/O frame layer, closing with catalog reasons.

    The library explains a failure in the close reason ("frame with 70000 bytes
    exceeds limit of 65536 bytes"); that text is logged, and the client gets the
    fixed reason for the code.
    """

    def fail(self, code: int, reason: str = "") -> None:
        if reason:
            log.info("websocket failed with %d: %s", code, reason)
        super().fail(code, CLOSE_REASONS.get(int(code), ""))


class WebSocketConnection(asyncio.Protocol):
    """One upgraded connection: reads frames for a session, writes what it is given."""

    __slots__ = (
        "_close_handle",
        "_fragments",
        "_utf8",
        "closed",
        "emulation",
        "max_fragments",
        "name",
        "on_binary",
        "on_lost",
        "on_text",
        "remote_ip",
        "session",
        "transport",
        "unidirectional",
        "wire",
        "write",
        "ws",
    )

    def __init__(
        self,
        ws: ServerProtocol,
        transport: asyncio.Transport,
        *,
        wire: WireFormat = JSON_WIRE,
        name: str = "websocket",
        unidirectional: bool = False,
        max_fragments: int = 1024,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.write: Callable[[bytes], None] = transport.write
        self.wire = wire
        self.name = name
        self.unidirectional = unidirectional
        self.emulation = False
        self.max_fragments = max_fragments
        self.remote_ip = ""
        self.closed = False
        self.session: Session | None = None
        self.on_text: Callable[[bytes], None] | None = None
        self.on_binary: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[WebSocketConnection], None] | None = None
        self._fragments: list[bytes] | None = None
        self._utf8: codecs.IncrementalDecoder | None = None
        self._close_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ Transport

    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    def close(self, disconnect: Disconnect) -> None:
        """Send the close frame with the disconnect code and reason, then wait for the echo."""
        if self.closed:
            return
        self.closed = True
        ws = self.ws
        if ws.state is State.OPEN:
            ws.send_close(disconnect.code, disconnect.reason[:123])
            self._flush_protocol_output()
        if not self.transport.is_closing():
            self._close_handle = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, self.transport.abort
            )

    # ------------------------------------------------------------------ asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        if events:
            for event in events:
                frame = cast(Frame, event)  # after the handshake, events are frames
                opcode = frame.opcode
                if opcode is Opcode.TEXT and self.wire.codec.binary:
                    self._inappropriate()
                elif opcode is Opcode.TEXT:
                    if frame.fin:
                        self._text(bytes(frame.data))
                    else:
                        self._fragments = [bytes(frame.data)]
                        self._utf8 = codecs.getincrementaldecoder("utf-8")()
                        if not self._check_utf8(bytes(frame.data), final=False):
                            break
                elif opcode is Opcode.CONT:
                    if self._fragments is None:  # continuation of a refused binary message
                        continue
                    self._fragments.append(bytes(frame.data))
                    if len(self._fragments) > self.max_fragments:
                        self._fragments = self._utf8 = None
                        self._fail(1009, "too many fragments")
                        break
                    text = self._utf8 is not None
                    if text and not self._check_utf8(bytes(frame.data), final=frame.fin):
                        break
                    if frame.fin:
                        message = b"".join(self._fragments)
                        self._fragments = self._utf8 = None
                        if text:
                            self._deliver(message)
                        else:
                            self._deliver_binary(message)
                elif opcode is Opcode.BINARY:
                    if self.on_binary is None and not self.wire.codec.binary:
                        self._inappropriate()
                    elif frame.fin:
                        self._deliver_binary(bytes(frame.data))
                    else:  # reassembled like text, under the same fragment cap
                        self._fragments = [bytes(frame.data)]
        self._flush_protocol_output()
        if ws.state is State.CLOSED or ws.close_rcvd is not None or ws.parser_exc is not None:
            self._peer_closed()

    def _text(self, payload: bytes) -> None:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(1007, "invalid utf-8")
            return
        self._deliver(payload)

    def _check_utf8(self, chunk: bytes, *, final: bool) -> bool:
        assert self._utf8 is not None
        try:
            self._utf8.decode(chunk, final)
        except UnicodeDecodeError:
            self._fragments = self._utf8 = None
            self._fail(1007, "invalid utf-8")
            return False
        return True

    def _deliver(self, message: bytes) -> None:
        if self.closed:
            return
        if self.on_text is not None:
            self.on_text(message)
        elif self.session is not None:
            self.session.handle_frame(message)

    def _deliver_binary(self, message: bytes) -> None:
        if self.closed:
            return
        if self.on_binary is not None:
            self.on_binary(message)
        elif self.session is not None:
            self.session.handle_frame(message)

    def _inappropriate(self) -> None:
        """A binary message on a JSON connection, or a text one on a Protobuf connection:
        3506 (docs/protocol.md section 5)."""
        if self.session is not None and self.on_text is None and not self.closed:
            self.session.close(DisconnectCode.INAPPROPRIATE_PROTOCOL)

    def _fail(self, code: int, reason: str) -> None:
        """Close with ``code`` now. The session lets go at once: the socket may take a while
        to drain what was queued before the close frame, and nothing may follow that frame."""
        if self.ws.state is State.OPEN:
            self.ws.fail(code, reason)
        self.closed = True
        if self.session is not None:
            self.session.transport_closed()

    def _flush_protocol_output(self) -> None:
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:  # end of stream: the close handshake is done
                self.transport.close()

    def _peer_closed(self) -> None:
        self.closed = True
        if self.session is not None:
            if self.ws.parser_exc is not None and self.ws.close_sent is not None:
                code = self.ws.close_sent.code
                log.info("websocket closed with %s: %s", code, self.ws.parser_exc)
            self.session.transport_closed()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush_protocol_output()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._close_handle is not None:
            self._close_handle.cancel()
            self._close_handle = None
        if self.on_lost is not None:
            self.on_lost(self)
        if self.session is not None:
            self.session.transport_closed()

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.on_write_paused()

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.on_write_resumed()
