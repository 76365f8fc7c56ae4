"""Errors never leak internals: no tracebacks, paths, exception or library text reaches a client.

Every refusal a client can provoke is collected, over WebSocket (close
reasons), the HTTP edge (status bodies), the transports' JSON errors and the
server API, and checked against :data:`LEAK_MARKERS`. Texts come from the
catalogs in ``errors.py`` and a few fixed HTTP phrases.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tests.conftest import API_KEY, RunningServer, StartServer, token
from tests.security.conftest import LogCapture
from tests.support.http import http
from tidings.bench.wsframe import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameReader,
    encode_frame,
    handshake_request,
    parse_close,
    parse_handshake_response,
)
from tidings.errors import DisconnectCode

pytestmark = pytest.mark.timeout(60)

LEAK_MARKERS = re.compile(
    r"Traceback|File \"|\.py\b|site-packages|(?<![\w:/])/[\w.-]+/[\w.-]+/|Error\(|Exception|"
    r"msgspec|websockets|httptools|jwt|uvloop|\bat 0x|line \d+",
    re.IGNORECASE,
)

CATALOG_REASONS = {
    value.code: value.reason for value in vars(DisconnectCode).values() if hasattr(value, "code")
}


def assert_no_leak(where: str, text: str | bytes) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    match = LEAK_MARKERS.search(text)
    assert match is None, f"{where} leaks {match.group(0)!r}: {text[:300]!r}"


async def close_after(port: int, frames: bytes, *, connect: bool = True) -> tuple[int, str]:
    """Send raw frames on a fresh WebSocket; return the server's close code and reason."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(handshake_request("127.0.0.1", "/connection/websocket"))
    buffer = b""
    while True:
        buffer += await asyncio.wait_for(reader.read(4096), 5)
        done, rest = parse_handshake_response(buffer)
        if done:
            break
    if connect:
        command = json.dumps({"id": 1, "connect": {"token": token("leaky")}}).encode()
        writer.write(encode_frame(OP_TEXT, command))
    writer.write(frames)
    frame_reader = FrameReader()
    frame_reader.feed(rest)
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                return 0, ""
            for opcode, payload in frame_reader.feed(data)[1]:
                if opcode == 0x8:
                    return parse_close(payload)
    finally:
        writer.close()


PROVOCATIONS = {
    "malformed-json": (encode_frame(OP_TEXT, b"{nope"), 3501),
    "deep-json-within-limits": (
        encode_frame(OP_TEXT, b'{"id":2,"x":' + b"[" * 900 + b"]" * 900 + b"}"),
        3501,
    ),
    "binary": (encode_frame(OP_BINARY, b"\x00"), 3506),
    "invalid-utf8": (encode_frame(OP_TEXT, b"\xff\xfe"), 1007),
    "bad-token": (encode_frame(OP_TEXT, b'{"id":2,"refresh":{"token":"x.y.z"}}'), 3500),
    "second-connect": (encode_frame(OP_TEXT, b'{"id":2,"connect":{}}'), 3501),
}

LIBRARY_PROVOCATIONS = {
    "too-big": (encode_frame(OP_TEXT, b" " * 70_000), 1009),
    "reserved-bits": (bytes((0xC1,)) + encode_frame(OP_TEXT, b"{}")[1:], 1002),
    "bad-opcode": (bytes((0x83,)) + encode_frame(OP_TEXT, b"{}")[1:], 1002),
    "lone-continuation": (encode_frame(OP_CONTINUATION, b"x"), 1002),
    "long-ping": (encode_frame(OP_PING, b"x" * 200), 1002),
}


@pytest.mark.parametrize("name", sorted(PROVOCATIONS))
async def test_close_reasons_are_catalog_texts(
    name: str, server: RunningServer, server_log: LogCapture
) -> None:
    frames, expected = PROVOCATIONS[name]
    code, reason = await close_after(server.port, frames)
    assert code == expected
    assert_no_leak(f"close reason of {name}", reason)
    assert reason == CATALOG_REASONS.get(code, "invalid utf-8"), reason
    assert not server_log.errors(), server_log.errors()


@pytest.mark.parametrize("name", sorted(LIBRARY_PROVOCATIONS))
async def test_close_reasons_from_the_frame_parser_are_catalog_texts(
    name: str, server: RunningServer
) -> None:
    frames, expected = LIBRARY_PROVOCATIONS[name]
    code, reason = await close_after(server.port, frames)
    assert code == expected
    assert reason in {"message too big", "protocol error", ""}, reason


HTTP_PROVOCATIONS = [
    ("GET", "/nowhere", None, {}),
    ("DELETE", "/api/publish", None, {"X-API-Key": API_KEY}),
    ("POST", "/api/publish", b"{not json", {"X-API-Key": API_KEY}),
    ("POST", "/api/publish", b'{"channel":"chat:\\u0000","data":{}}', {"X-API-Key": API_KEY}),
    ("POST", "/api/nonsense", b"{}", {"X-API-Key": API_KEY}),
    ("POST", "/api/publish", b"{}", {"X-API-Key": "wrong"}),
    ("POST", "/api", b'{"method":"publish","params":5}', {"X-API-Key": API_KEY}),
    ("POST", "/api/publish", b"x" * 70_000, {"X-API-Key": API_KEY}),
    ("GET", "/connection/websocket", None, {}),
    ("GET", "/connection/sse?cf_connect=%7Bbad", None, {}),
    ("POST", "/connection/http_stream", b"\xff\xfe", {"Content-Type": "application/octet-stream"}),
    ("POST", "/emulation", b"[1,2", {}),
    ("POST", "/connection/uni_http_stream", b"{bad", {}),
    ("GET", "/events?channel=chat%3Ax", None, {"Authorization": "Bearer a.b.c"}),
    ("GET", "/events?channel=%00", None, {"Authorization": f"Bearer {token()}"}),
    ("GET", "/longpoll?channel=chat%3Ax&cursor=%%%", None, {"Authorization": f"Bearer {token()}"}),
    ("POST", "/longpoll", b'{"channel":5}', {"Authorization": f"Bearer {token()}"}),
    ("GET", "/demo/../../etc/passwd", None, {}),
]


async def test_http_error_bodies_leak_nothing(
    server: RunningServer, server_log: LogCapture
) -> None:
    seen = []
    for method, path, body, headers in HTTP_PROVOCATIONS:
        status, _, payload = await http(server.port, method, path, body, headers)
        seen.append(status)
        if status >= 400:
            assert_no_leak(f"{method} {path} -> {status}", payload)
    assert any(status >= 400 for status in seen)
    assert not server_log.errors(), server_log.errors()


async def test_raw_http_garbage_gets_fixed_answers(start_server: StartServer) -> None:
    server = await start_server(http_header_timeout=0.5)
    for raw in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
        b"POST /api/publish HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ",  # never finished: 408
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert_no_leak(f"answer to {raw[:20]!r}", answer)


async def test_deeply_nested_api_body_is_a_bad_request(
    server: RunningServer, server_log: LogCapture
) -> None:
    body = b'{"channel":"chat:x","data":' + b"[" * 1000 + b"]" * 1000 + b"}"
    status, _, payload = await http(
        server.port, "POST", "/api/publish", body, {"X-API-Key": API_KEY}
    )
    assert_no_leak("deep API body", payload)
    assert status == 400 and not server_log.errors(), (status, server_log.errors())
