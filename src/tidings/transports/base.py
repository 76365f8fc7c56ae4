"""What every transport adapter shares: the write-buffer thresholds.

An adapter carries a session over one kind of connection (a WebSocket, a
chunked HTTP response). It only writes what the session and the hub hand it;
the bytes come pre-framed by :mod:`tidings.protocol.wire`.
"""

from __future__ import annotations

TRANSPORT_HIGH_WATER = 64 * 1024
"""Bytes a socket transport may buffer (each write copied) before its connection counts
as slow; past it the session queues references to shared frames instead
(``Session.on_write_paused``), so stalled clients do not each copy every broadcast."""


def transport_high_water(write_buffer_limit: int) -> int:
    """The transport's pause threshold for a given per-connection buffer limit."""
    return max(4096, min(TRANSPORT_HIGH_WATER, write_buffer_limit // 2))
