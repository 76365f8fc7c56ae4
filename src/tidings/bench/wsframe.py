"""Client-side WebSocket framing for the load generator, sans I/O (RFC 6455).

The generator opens thousands of connections from one process, so each one
must cost less than the server side it measures: no client library objects,
no per-connection tasks, just bytes. This module builds the opening handshake
and masked client frames, and reads server frames incrementally.

What it deliberately does not do, because the generator never needs it:
extensions (no permessage-deflate is offered, so RSV bits must be zero),
subprotocols, and UTF-8 validation of text frames (the checks downstream parse
the JSON anyway).

Two shortcuts, both allowed by servers in practice and both chosen for cost:

* One fixed ``Sec-WebSocket-Key`` for every connection. Section 4.1 asks for a
  random nonce; servers only echo its hash, so the expected accept value is
  computed once.
* One fixed masking key (section 5.3 asks for an unpredictable one per frame).
  Servers unmask whatever key arrives, so the server's cost is the same, and the
  generator masks each payload with a single big-integer XOR.
"""

from __future__ import annotations

import base64
import hashlib
import struct

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009

MASK_KEY = b"\x37\xfa\x21\x3d"
HANDSHAKE_KEY = "dGlkaW5ncy1iZW5jaC0xNg=="  # base64 of the 16 bytes b"tidings-bench-16"
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024


def accept_value(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key`` (section 4.2.2)."""
    digest = hashlib.sha1((key + _GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


EXPECTED_ACCEPT = accept_value(HANDSHAKE_KEY).encode("ascii")


def handshake_request(host: str, path: str, key: str = HANDSHAKE_KEY) -> bytes:
    """The HTTP/1.1 upgrade request that opens a connection (section 4.1).

    No ``Origin`` header: a non-browser client sends none, and Centrifugo-style
    servers accept such clients without an allowed-origins list.
    """
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode("ascii")


class HandshakeError(Exception):
    """The server answered the upgrade with something other than a valid 101."""


def parse_handshake_response(
    buffer: bytes, expected_accept: bytes = EXPECTED_ACCEPT
) -> tuple[bool, bytes]:
    """Check the server's upgrade answer once its head is complete.

    Returns ``(False, buffer)`` while the head (up to the blank line) is still
    incomplete, and ``(True, rest)`` once a valid ``101 Switching Protocols``
    arrived, ``rest`` being the bytes after the head (frames sent right behind
    it). Raises :class:`HandshakeError` naming what was expected and what came.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > 16384:
            raise HandshakeError("expected an HTTP response head, got 16 KiB without a blank line")
        return False, buffer
    head = buffer[:end].split(b"\r\n")
    status = head[0]
    if not status.startswith(b"HTTP/1.1 101"):
        raise HandshakeError(f"expected HTTP/1.1 101, got {status[:80]!r}")
    accept = None
    for line in head[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            accept = value.strip()
    if accept != expected_accept:
        raise HandshakeError(f"expected Sec-WebSocket-Accept {expected_accept!r}, got {accept!r}")
    return True, buffer[end + 4 :]


def apply_mask(payload: bytes, key: bytes = MASK_KEY) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``key`` (section 5.3).

    One big-integer XOR instead of a per-byte loop: a 200-byte payload costs
    about as much as a single Python-level operation.
    """
    size = len(payload)
    if not size:
        return payload
    stream = (key * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")
    return masked.to_bytes(size, "little")


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask_key: bytes = MASK_KEY
) -> bytes:
    """One masked client frame (section 5.2): header, masking key, masked payload."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        header = bytes((first, 0x80 | size))
    elif size < 65536:
        header = struct.pack("!BBH", first, 0xFE, size)
    else:
        header = struct.pack("!BBQ", first, 0xFF, size)
    return header + mask_key + apply_mask(payload, mask_key)


def encode_text(payload: bytes) -> bytes:
    """A complete masked text frame."""
    return encode_frame(OP_TEXT, payload)


def encode_close(code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
    """A masked close frame with a status code and reason (section 5.5.1)."""
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:123])


def parse_close(payload: bytes) -> tuple[int, str]:
    """Status code and reason of a received close frame; 1005 when it has none."""
    if len(payload) < 2:
        return 1005, ""
    code = struct.unpack("!H", payload[:2])[0]
    return code, payload[2:].decode("utf-8", "replace")


class FrameReader:
    """Incremental reader of server-to-client frames.

    :meth:`feed` takes whatever bytes the socket gave and returns the complete
    data messages (fragments reassembled, text and binary alike) and the
    control frames they contained. A partial frame at the end is kept for the
    next call. A violation of the framing rules never raises: it sets
    :attr:`failure` to ``(close code, reason)``, and the reader returns nothing
    from then on.

    The loop is the generator's hot path (one pass per received frame), so it
    special-cases the common unfragmented text frame and keeps to local names.
    """

    __slots__ = ("_buffer", "_fragment_opcode", "_fragments", "failure", "max_message")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buffer = b""
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0
        self.failure: tuple[int, str] | None = None
        self.max_message = max_message

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame kept for the next :meth:`feed`."""
        return len(self._buffer)

    def feed(self, data: bytes) -> tuple[list[bytes], list[tuple[int, bytes]]]:
        """Parse ``data``; return ``(messages, control frames as (opcode, payload))``."""
        messages: list[bytes] = []
        controls: list[tuple[int, bytes]] = []
        if self.failure is not None:
            return messages, controls
        buf = self._buffer + data if self._buffer else data
        size = len(buf)
        pos = 0
        in_message = self._fragments is not None
        while size - pos >= 2:
            first = buf[pos]
            length = buf[pos + 1]
            if length < 126:
                start = pos + 2
            elif length == 126:
                start = pos + 4
                if start > size:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
            elif length == 127:
                start = pos + 10
                if start > size:
                    break
                length = int.from_bytes(buf[pos + 2 : start], "big")
            else:
                self._fail(CLOSE_PROTOCOL_ERROR, "server frame is masked (RFC 6455 5.1)")
                break
            if length > self.max_message:
                self._fail(CLOSE_TOO_BIG, f"frame of {length} bytes exceeds {self.max_message}")
                break
            end = start + length
            if end > size:
                break
            if (first == 0x81 or first == 0x82) and not in_message:
                messages.append(buf[start:end])
            elif self._other_frame(first, buf[start:end], messages, controls):
                in_message = self._fragments is not None
            else:
                break
            pos = end
        self._buffer = buf[pos:] if pos < size else b""
        return messages, controls

    def _other_frame(
        self,
        first: int,
        payload: bytes,
        messages: list[bytes],
        controls: list[tuple[int, bytes]],
    ) -> bool:
        """Handle any frame but an unfragmented data frame; False once failed."""
        if first & 0x70:
            return self._fail(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
        opcode = first & 0x0F
        fin = bool(first & 0x80)
        if opcode >= 0x8:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                return self._fail(CLOSE_PROTOCOL_ERROR, f"unknown control opcode {opcode:#x}")
            if not fin or len(payload) > 125:
                return self._fail(CLOSE_PROTOCOL_ERROR, "control frames must be whole and short")
            controls.append((opcode, payload))
            return True
        if opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                return self._fail(
                    CLOSE_PROTOCOL_ERROR, "expected a continuation frame, got a new data frame"
                )
            self._fragments = [payload]
            self._fragment_opcode = opcode
            return True
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                return self._fail(CLOSE_PROTOCOL_ERROR, "continuation frame outside a message")
            self._fragments.append(payload)
            if fin:
                messages.append(b"".join(self._fragments))
                self._fragments = None
            elif sum(map(len, self._fragments)) > self.max_message:
                return self._fail(CLOSE_TOO_BIG, f"message exceeds {self.max_message} bytes")
            return True
        return self._fail(CLOSE_PROTOCOL_ERROR, f"unknown data opcode {opcode:#x}")

    def _fail(self, code: int, reason: str) -> bool:
        self.failure = (code, reason)
        self._buffer = b""
        return False
