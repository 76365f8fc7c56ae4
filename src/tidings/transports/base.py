"""The write-only transport interface and wire formats.

A transport only writes; reading belongs to its adapter, which feeds frames
to the session. The session cannot tell WebSocket from SSE from a stream.

A :class:`WireFormat` turns JSON documents into the bytes one transport kind
puts on the wire (a WebSocket frame, SSE events, stream lines). The hub builds
those bytes once per format for a broadcast and hands the same object to every
recipient's ``write``: framing never happens per recipient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from tidings.errors import Disconnect

Writer = Callable[[bytes], None]

TRANSPORT_HIGH_WATER = 64 * 1024
"""Bytes a socket transport may buffer (each write copied) before its connection counts
as slow; past it the session queues references to shared frames instead
(``Session.on_write_paused``), so stalled clients do not each copy every broadcast."""


def transport_high_water(write_buffer_limit: int) -> int:
    """The transport's pause threshold for a given per-connection buffer limit."""
    return max(4096, min(TRANSPORT_HIGH_WATER, write_buffer_limit // 2))


class WireFormat:
    """How one kind of transport frames JSON documents. Instances are shared singletons.

    ``envelope`` is true for bidirectional transports (pushes wrapped as
    ``{"push":...}``) and false for unidirectional ones (bare push objects).
    """

    __slots__ = ("envelope", "name")

    def __init__(self, name: str, *, envelope: bool) -> None:
        self.name = name
        self.envelope = envelope

    def frame(self, documents: Sequence[bytes]) -> bytes:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<WireFormat {self.name}>"


class Transport(Protocol):
    """What a session needs from the connection it runs over.

    ``wire`` frames documents; ``write`` sends already framed bytes (prepared
    broadcasts arrive here); ``send`` frames and writes documents of this
    connection alone (replies, personal pushes); ``close`` ends the connection
    with a disconnect, in the way the transport conveys one (a WebSocket close
    frame, or a disconnect push before the response ends).
    """

    name: str
    wire: WireFormat
    unidirectional: bool
    emulation: bool

    @property
    def closed(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def send(self, documents: Sequence[bytes]) -> None: ...

    def close(self, disconnect: Disconnect) -> None: ...

    def write_buffer_size(self) -> int: ...
