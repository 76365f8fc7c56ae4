"""HTTP as a test speaks it to a server on 127.0.0.1: one raw request, one API call."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.conftest import API_KEY


async def http(
    port: int,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a fresh connection; returns status, headers and body."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    body = body or b""
    headers = headers or {}
    head = [f"{method} {path} HTTP/1.1", f"Content-Length: {len(body)}", "Connection: close"]
    if not any(name.lower() == "host" for name in headers):  # a test may name its own
        head.append("Host: 127.0.0.1")
    head += [f"{name}: {value}" for name, value in headers.items()]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    header_blob, _, payload = raw.partition(b"\r\n\r\n")
    lines = header_blob.decode().split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, parsed, payload


async def api(port: int, method: str, params: dict[str, Any], **headers: str) -> tuple[int, Any]:
    """One server API call (``POST /api/<method>`` with the test API key): status and JSON."""
    status, _, body = await http(
        port, "POST", f"/api/{method}", params, {"X-API-Key": API_KEY, **headers}
    )
    return status, json.loads(body) if body else None
