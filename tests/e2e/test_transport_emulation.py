"""Bidirectional emulation (``/connection/http_stream``, ``/connection/sse``, ``/emulation``).

Raw HTTP clients check the wire; centrifuge-js under Node (``js/fallback.mjs``,
with ``ws`` and the ``eventsource`` package) checks that the real SDK falls
back to each emulation transport when the WebSocket upgrade is refused and
then works fully: subscribe, publish, presence, history, recovery.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.conftest import (
    ClientFactory,
    RunningServer,
    StartServer,
    assert_still_serving,
    control_client,
    token,
)
from tests.support.fallback import StartFallback
from tests.support.polling import eventually
from tests.support.streams import LineStream, SseStream, error_body

pytestmark = pytest.mark.timeout(30)


def connect_line(tok: str) -> str:
    return json.dumps({"connect": {"token": tok, "name": "test"}, "id": 1})


async def open_http_stream(
    http: aiohttp.ClientSession, server: RunningServer, body: str
) -> LineStream:
    response = await http.post(
        f"{server.http_url}/connection/http_stream",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 200
    assert response.headers["transfer-encoding"] == "chunked"
    return LineStream(response)


async def emulate(
    http: aiohttp.ClientSession, server: RunningServer, session: str, *commands: dict[str, Any]
) -> int:
    body = {
        "session": session,
        "node": server.node.id,
        "data": "\n".join(json.dumps(c) for c in commands),
    }
    async with http.post(f"{server.http_url}/emulation", json=body) as response:
        return response.status


async def test_http_stream_session(server: RunningServer, http: aiohttp.ClientSession) -> None:
    stream = await open_http_stream(http, server, connect_line(token()))
    connect = (await stream.next())["connect"]
    assert connect["node"] == server.node.id and len(connect["session"]) == 36
    assert connect["pong"] is True
    session = connect["session"]
    status = await emulate(
        http, server, session, {"id": 2, "subscribe": {"channel": "chat:e", "recoverable": True}}
    )
    assert status == 204
    subscribe = await stream.until(lambda d: d.get("id") == 2)
    assert subscribe["subscribe"]["recoverable"] is True
    await emulate(
        http, server, session, {"id": 3, "publish": {"channel": "chat:e", "data": {"x": 1}}}
    )
    assert (await stream.until(lambda d: d.get("id") == 3)) == {"id": 3, "publish": {}}
    pub = await stream.until(lambda d: "pub" in d.get("push", {}))
    assert pub["push"]["channel"] == "chat:e" and pub["push"]["pub"]["data"] == {"x": 1}
    await emulate(http, server, session, {"id": 4, "history": {"channel": "chat:e", "limit": -1}})
    history = await stream.until(lambda d: d.get("id") == 4)
    assert [p["data"] for p in history["history"]["publications"]] == [{"x": 1}]
    # The API disconnects the user: a disconnect push, then the response ends.
    server.node.clients[connect["client"]].close(server_disconnect())
    rest = await stream.rest()
    assert rest[-1] == {"push": {"disconnect": {"code": 3503, "reason": "force disconnect"}}}
    assert session not in server.node.emulation_sessions


def server_disconnect() -> Any:
    from tidings.errors import DisconnectCode

    return DisconnectCode.FORCE_DISCONNECT


async def test_sse_session_and_pings_answered_through_emulation(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(ping_interval=0.2, pong_timeout=1.0)
    response = await http.get(
        f"{server.http_url}/connection/sse?cf_connect={quote(connect_line(token()))}"
    )
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    stream = SseStream(response)
    connect = (await stream.next()).json()["connect"]
    session = connect["session"]
    assert connect["ping"] == 1 and connect["pong"] is True
    for _ in range(2):  # a ping each period, answered with {} through /emulation
        assert (await stream.next()).json() == {}
        assert await emulate(http, server, session, {}) == 204
    # Pings left unanswered: 3012 as a disconnect push, then the end of the stream.
    last = [e.json() for e in await stream.ended()]
    assert last[-1] == {"push": {"disconnect": {"code": 3012, "reason": "no pong"}}}
    assert all(document == {} for document in last[:-1])
    assert session not in server.node.emulation_sessions


async def test_shutdown_sends_3001_down_every_stream(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    stream = await open_http_stream(http, server, connect_line(token()))
    await stream.next()
    await server.server.stop()
    assert (await stream.rest())[-1] == {
        "push": {"disconnect": {"code": 3001, "reason": "shutdown"}}
    }


async def test_protocol_violation_on_the_stream_is_3501(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    stream = await open_http_stream(http, server, "not json")
    assert await stream.rest() == [
        {"push": {"disconnect": {"code": 3501, "reason": "bad request"}}}
    ]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code", "message"),
    [
        ("GET", "/connection/sse", None, {}, 400, 107, "bad request"),
        ("GET", "/connection/http_stream", None, {}, 405, 107, "method not allowed"),
        ("PUT", "/connection/sse", b"{}", {}, 405, 107, "method not allowed"),
        (
            "POST",
            "/emulation",
            b"\x12\x00\x1a\x01",
            {"Content-Type": "application/octet-stream"},
            400,
            107,
            "bad request",
        ),
        ("POST", "/emulation", b"{nope", {}, 400, 107, "bad request"),
        ("POST", "/emulation", b'{"node":"x"}', {}, 400, 107, "bad request"),
        (
            "POST",
            "/emulation",
            b'{"session":"s","node":"other","data":"{}"}',
            {},
            404,
            104,
            "not found",
        ),
        ("GET", "/emulation", None, {}, 405, 107, "method not allowed"),
        (
            "GET",
            "/connection/http_stream",
            None,
            {"Origin": "https://evil.test"},
            403,
            103,
            "origin not allowed",
        ),
    ],
)
async def test_bad_requests(
    server: RunningServer,
    ws_client: ClientFactory,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    code: int,
    message: str,
) -> None:
    control = await control_client(server, ws_client)
    async with http.request(method, server.http_url + path, data=body, headers=headers) as response:
        assert response.status == status, await response.text()
        assert await response.json() == error_body(code, message)
    await assert_still_serving(server, control)


async def test_unknown_session_and_oversized_body(
    server: RunningServer, ws_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    control = await control_client(server, ws_client)
    assert await emulate(http, server, "no-such-session", {"id": 2, "presence": {}}) == 204
    async with http.post(f"{server.http_url}/emulation", data=b"x" * 70_000) as response:
        assert response.status == 413
    preflight = await http.options(f"{server.http_url}/emulation")
    assert preflight.status == 204
    await assert_still_serving(server, control)


# --------------------------------------------------------------------------- centrifuge-js


@pytest.mark.node
@pytest.mark.parametrize("expected", ["http_stream", "sse"])
async def test_centrifuge_js_falls_back_and_works_fully(
    server: RunningServer, fallback_client: StartFallback, expected: str
) -> None:
    # The WebSocket endpoint refuses the upgrade (as a blocking proxy would); for the
    # sse case the http_stream endpoint is blocked too.
    blocked = ["websocket"] if expected == "http_stream" else ["websocket", "http_stream"]
    client = await fallback_client(server.http_url, blocked, "chat:fb")
    connected = await client.next(lambda d: d.get("event") == "connected")
    assert connected["transport"] == expected
    subscribed = await client.next(lambda d: d.get("event") == "subscribed")
    assert subscribed["recoverable"] is True
    await client.call("publish", data={"n": 1})
    await server.node.publish("chat:fb", {"n": 2})
    offsets = [
        (await client.next(lambda d: d.get("event") == "publication"))["offset"] for _ in range(2)
    ]
    assert offsets == [1, 2]
    presence = await client.call("presence")
    assert [info["user"] for info in presence.values()] == ["alice"]
    history = await client.call("history")
    assert [p["data"] for p in history] == [{"n": 1}, {"n": 2}]
    # Drop the session: the client reconnects on its own and recovers what it missed.
    (session,) = [s for s in server.node.clients.values() if s.transport.name == expected]
    from tidings.errors import DisconnectCode

    session.close(DisconnectCode.FORCE_RECONNECT)
    await client.next(lambda d: d.get("event") == "connecting")
    for n in (3, 4):
        await server.node.publish("chat:fb", {"n": n})
    resubscribed = await client.next(lambda d: d.get("event") == "subscribed")
    assert resubscribed["wasRecovering"] is True and resubscribed["recovered"] is True
    offsets = [
        (await client.next(lambda d: d.get("event") == "publication"))["offset"] for _ in range(2)
    ]
    assert offsets == [3, 4]
    await eventually(lambda: bool(server.node.emulation_sessions), what="the new emulation session")
    await client.call("quit")
