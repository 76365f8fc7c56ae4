"""Unidirectional transports: ``uni_websocket``, ``uni_sse``, ``uni_http_stream``.

The client sends one ConnectRequest and only reads bare pushes; channels come
from the token's ``channels`` claim or the API ``subscribe``; connect errors
become disconnects (fact sheet section 8).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import (
    API_KEY,
    ClientFactory,
    RunningServer,
    assert_still_serving,
    control_client,
    token,
)
from tests.support.streams import LineStream, SseStream, error_body

pytestmark = pytest.mark.timeout(30)


class UniReader:
    """Bare push documents from any of the three transports."""

    def __init__(self, kind: str, source: Any) -> None:
        self.kind = kind
        self.source = source

    async def next(self, timeout: float = 5.0) -> Any:
        if self.kind == "uni_websocket":
            return json.loads(await self.source.recv())
        if self.kind == "uni_sse":
            return (await self.source.next(timeout)).json()
        return await self.source.next(timeout)

    async def until(self, predicate: Any) -> Any:
        while True:
            document = await self.next()
            if predicate(document):
                return document

    async def rest(self) -> list[Any]:
        documents = []
        try:
            while True:
                documents.append(await self.next())
        except (EOFError, ConnectionClosed):
            return documents


async def open_uni(
    kind: str, server: RunningServer, http: aiohttp.ClientSession, request: dict[str, Any]
) -> UniReader:
    body = json.dumps(request)
    if kind == "uni_websocket":
        url = f"ws://127.0.0.1:{server.port}/connection/uni_websocket?cf_connect={quote(body)}"
        return UniReader(kind, await ws_connect(url, open_timeout=5))
    if kind == "uni_sse":
        url = f"{server.http_url}/connection/uni_sse?cf_connect={quote(body)}"
        response = await http.get(url)
        assert response.status == 200
        return UniReader(kind, SseStream(response))
    response = await http.post(f"{server.http_url}/connection/uni_http_stream", data=body)
    assert response.status == 200
    return UniReader(kind, LineStream(response))


KINDS = ["uni_websocket", "uni_sse", "uni_http_stream"]


@pytest.mark.parametrize("kind", KINDS)
async def test_token_channels_api_subscribe_and_disconnect(
    kind: str, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    reader = await open_uni(kind, server, http, {"token": token(channels=["chat:u"])})
    connect = (await reader.next())["connect"]
    assert len(connect["session"]) == 36 and "pong" not in connect and "node" not in connect
    assert connect["subs"]["chat:u"]["recoverable"] is True
    await server.node.publish("chat:u", {"n": 1})
    pub = await reader.until(lambda d: "pub" in d)
    assert pub == {"channel": "chat:u", "pub": {"data": {"n": 1}, "offset": 1}}
    # The server API subscribes the user to another channel: a subscribe push.
    async with http.post(
        f"{server.http_url}/api/subscribe",
        json={"user": "alice", "channel": "open:api"},
        headers={"X-API-Key": API_KEY},
    ) as response:
        assert (await response.json()) == {"result": {}}
    subscribe = await reader.until(lambda d: "subscribe" in d)
    assert subscribe["channel"] == "open:api"
    await server.node.publish("open:api", {"n": 2})
    assert (await reader.until(lambda d: "pub" in d))["pub"]["data"] == {"n": 2}
    async with http.post(
        f"{server.http_url}/api/disconnect",
        json={"user": "alice"},
        headers={"X-API-Key": API_KEY},
    ):
        pass
    rest = await reader.rest()
    assert rest[-1] == {"disconnect": {"code": 3503, "reason": "force disconnect"}}


async def test_uni_websocket_connect_in_the_first_message_then_input_ignored(
    server: RunningServer,
) -> None:
    async with ws_connect(
        f"ws://127.0.0.1:{server.port}/connection/uni_websocket", open_timeout=5
    ) as ws:
        await ws.send(json.dumps({"token": token(channels=["chat:w"])}))
        assert "connect" in json.loads(await ws.recv())
        await ws.send("anything at all")  # ignored, not a protocol violation
        await ws.send(b"\x00binary")
        await server.node.publish("chat:w", {"n": 1})
        pub = await UniReader("uni_websocket", ws).until(lambda d: "pub" in d)
        assert pub["pub"]["data"] == {"n": 1}


async def test_uni_websocket_close_frame_carries_the_code(server: RunningServer) -> None:
    async with ws_connect(
        f"ws://127.0.0.1:{server.port}/connection/uni_websocket", open_timeout=5
    ) as ws:
        await ws.send("{not json")
        assert json.loads(await ws.recv()) == {
            "disconnect": {"code": 3501, "reason": "bad request"}
        }
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 3501


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("request_body", "code", "reason"),
    [
        ({"token": "EXPIRED"}, 3005, "connection expired"),
        ({"token": "not-a-jwt"}, 3500, "invalid token"),
        ({}, 3501, "bad request"),
    ],
)
async def test_connect_errors_become_disconnects(
    kind: str,
    request_body: dict[str, Any],
    code: int,
    reason: str,
    server: RunningServer,
    ws_client: ClientFactory,
    http: aiohttp.ClientSession,
) -> None:
    control = await control_client(server, ws_client)
    if request_body.get("token") == "EXPIRED":
        request_body = {"token": token(ttl=-10)}
    reader = await open_uni(kind, server, http, request_body)
    assert await reader.rest() == [{"disconnect": {"code": code, "reason": reason}}]
    await assert_still_serving(server, control)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "message"),
    [
        ("POST", "/connection/uni_http_stream", b"{bad", 400, 107, "bad request"),
        ("POST", "/connection/uni_http_stream", b'{"token": 5}', 400, 107, "bad request"),
        ("GET", "/connection/uni_http_stream", None, 405, 107, "method not allowed"),
        ("GET", "/connection/uni_sse?cf_connect=%7Bbad", None, 400, 107, "bad request"),
        ("GET", "/connection/uni_websocket", None, 400, 107, "bad request"),
    ],
)
async def test_bad_requests(
    server: RunningServer,
    ws_client: ClientFactory,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    code: int,
    message: str,
) -> None:
    control = await control_client(server, ws_client)
    async with http.request(method, server.http_url + path, data=body) as response:
        assert response.status == status
        assert await response.json() == error_body(code, message)
    await assert_still_serving(server, control)


async def test_uni_websocket_origin_refused(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    control = await control_client(server, ws_client)
    with pytest.raises(Exception, match="403"):
        await ws_connect(
            f"ws://127.0.0.1:{server.port}/connection/uni_websocket",
            origin="https://evil.test",  # type: ignore[arg-type]
            open_timeout=5,
        )
    await assert_still_serving(server, control)
