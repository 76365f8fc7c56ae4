"""Compression bombs: 100 MiB of inflation is refused with 1009, the server's RSS barely moves.

permessage-deflate (RFC 7692) lets ~100 KiB on the wire inflate to 100 MiB.
The server (its own process, ``websocket_compression = true``, the default
64 KiB ``max_message_size``) must refuse it without ever holding the inflated
message: websockets inflates each frame with a ``max_length`` of the budget
left, so at most ``max_message_size`` is ever produced. Two shapes:

* one frame: 100 MiB of zeros deflated into a single ~100 KiB frame;
* the same stream cut into 16 KiB fragments, each under the frame limit but
  each inflating to ~16 MiB, so only the decompression budget can stop it.

``VmHWM`` (the peak RSS the kernel recorded) is read before and after, so a
transient spike between samples cannot hide. A control client keeps working.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import zlib

import pytest

from tests.conftest import token
from tests.security.conftest import KeepAliveHttp, ServerProcess, mib
from tidings.bench.wsframe import (
    OP_CONTINUATION,
    OP_TEXT,
    FrameReader,
    encode_frame,
    parse_close,
)

pytestmark = pytest.mark.timeout(60)

INFLATED = 100 << 20
RSS_BOUND = 8 << 20
"""'A few MB': the inflation stops at 64 KiB; the rest is the bomb's own wire bytes."""


def deflated_zeros(size: int) -> bytes:
    """``size`` zero bytes as one permessage-deflate message body (RFC 7692 section 7.2.1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"\0" * (1 << 20)
    data = b"".join(compressor.compress(chunk) for _ in range(size // len(chunk)))
    data += compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def compressed(frame: bytes) -> bytes:
    """Set RSV1 on the first frame of a message: 'this message is compressed'."""
    return bytes((frame[0] | 0x40,)) + frame[1:]


async def open_deflate_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"permessage-deflate" in head.lower(), "deflate was not negotiated"
    connect = json.dumps({"id": 1, "connect": {"token": token("bomber")}}).encode()
    writer.write(encode_frame(OP_TEXT, connect))
    return reader, writer


async def close_code(reader: asyncio.StreamReader) -> int | None:
    """Read until the server's close frame (or EOF); return its code."""
    frames = FrameReader()
    while True:
        data = await asyncio.wait_for(reader.read(65536), 10)
        if not data:
            return None
        _, controls = frames.feed(data)
        for opcode, payload in controls:
            if opcode == 0x8:
                return parse_close(payload)[0]


def single_frame_bomb(body: bytes) -> bytes:
    return compressed(encode_frame(OP_TEXT, body))


def fragmented_bomb(body: bytes, size: int = 16 << 10) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    frames = [compressed(encode_frame(OP_TEXT, pieces[0], fin=False))]
    frames += [encode_frame(OP_CONTINUATION, piece, fin=False) for piece in pieces[1:-1]]
    frames.append(encode_frame(OP_CONTINUATION, pieces[-1], fin=True))
    return b"".join(frames)


@pytest.mark.parametrize("shape", ["single-frame", "fragmented"])
async def test_compression_bomb_is_refused_without_inflating(shape: str) -> None:
    server = await ServerProcess.start(websocket_compression=True)
    try:
        api = await KeepAliveHttp.open(server.port)
        control_reader, control_writer = await open_deflate_connection(server.port)
        body = deflated_zeros(INFLATED)
        bomb = single_frame_bomb(body) if shape == "single-frame" else fragmented_bomb(body)
        before, peak_before = server.rss, server.peak_rss
        # VmHWM only rises: the measurement means something while it sits near the RSS.
        assert peak_before - before < RSS_BOUND // 2, (mib(before), mib(peak_before))
        reader, writer = await open_deflate_connection(server.port)
        writer.write(bomb)
        code = await close_code(reader)
        peak = server.peak_rss
        print(
            f"\n{shape} bomb: {len(bomb) / 1024:.0f} KiB on the wire for {mib(INFLATED)} "
            f"inflated: close {code}; server RSS {mib(before)} before, peak +{mib(peak - before)}"
        )
        assert code == 1009
        assert peak - before < RSS_BOUND, f"peak RSS grew by {mib(peak - before)}"
        # The server carries on: the API answers and the other deflate client still works.
        reply = await api.api("publish", {"channel": "chat:after", "data": {"ok": True}})
        assert "result" in reply
        control_writer.write(
            encode_frame(OP_TEXT, b'{"id":2,"presence_stats":{"channel":"chat:after"}}')
        )
        frames = FrameReader()
        messages: list[bytes] = []
        while not any(b'"id":2' in m for m in messages):
            data = await asyncio.wait_for(control_reader.read(65536), 5)
            assert data, "the control connection was closed"
            messages += frames.feed(data)[0]
        assert not server.errors(), server.errors()
        writer.close()
        control_writer.close()
        await api.close()
    finally:
        await server.stop()
