"""A cursor copied from an answer works in a URL as it is; older ``%XX`` cursors still work."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from tests.conftest import RunningServer, StartServer, token

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    """Polls with nothing new answer after 0.3 s with the current cursor."""
    return await start_server(longpoll_timeout=0.3)


async def poll(server: RunningServer, query: str) -> dict[str, Any]:
    """``GET /longpoll?<query>`` with the query written on the wire exactly as given."""
    url = URL(f"{server.http_url}/longpoll?{query}", encoded=True)
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def test_long_poll_cursor_pasted_into_the_url_as_is(server: RunningServer) -> None:
    for n in range(3):
        await server.node.publish("chat:room 1", {"n": n})
    auth = f"token={token()}"
    channel = f"channel={quote('chat:room 1', safe='')}"
    first = await poll(server, f"{channel}&{auth}&cursor=")
    assert first["publications"] == []
    cursor = first["cursor"]
    assert isinstance(cursor, str) and cursor.startswith("chat@3Aroom@201:")
    await server.node.publish("chat:room 1", {"n": 3})
    # The cursor text from the JSON answer, unencoded, straight into the query.
    second = await poll(server, f"{channel}&{auth}&cursor={cursor}")
    assert [p["data"] for p in second["publications"]] == [{"n": 3}]


async def test_sse_id_pasted_into_last_event_id_as_is(server: RunningServer) -> None:
    await server.node.publish("chat:q", {"n": 0})
    reply = await poll(server, f"channel=chat:q&token={token()}&cursor=")
    await server.node.publish("chat:q", {"n": 1})
    path = f"/events?channel=chat:q&token={token()}&last_event_id={reply['cursor']}"
    stream = await sse_until(server, path, b'"data":{"n":1}')
    assert b"HTTP/1.1 200" in stream and b'"data":{"n":0}' not in stream


async def test_legacy_percent_cursor_still_works_encoded_once_more(server: RunningServer) -> None:
    await server.node.publish("chat:old", {"n": 0})
    reply = await poll(server, f"channel=chat:old&token={token()}&cursor=")
    epoch = str(reply["cursor"]).split(":")[1]
    await server.node.publish("chat:old", {"n": 1})
    legacy = f"chat%3Aold:{epoch}:1"
    answer = await poll(server, f"channel=chat:old&token={token()}&cursor={quote(legacy)}")
    assert [p["data"] for p in answer["publications"]] == [{"n": 1}]


async def sse_until(server: RunningServer, path: str, marker: bytes) -> bytes:
    """Open an SSE stream with the path written as given; read until ``marker`` arrives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        data = b""
        while marker not in data:
            chunk = await asyncio.wait_for(reader.read(4096), 5)
            assert chunk, f"stream ended before {marker!r}: {data!r}"
            data += chunk
        return data
    finally:
        writer.close()
