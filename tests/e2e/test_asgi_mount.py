"""``rt.asgi()`` mounted in FastAPI, under uvicorn and hypercorn, on 127.0.0.1.

The same node also listens standalone (``TidingsServer(rt.node)``), so every test
can hold the mount to the standalone edge: a publication from a FastAPI route
(``await rt.publish``) reaches clients of both, and bad input gets the same
status, body and headers from both.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import API_KEY, ClientFactory, make_config, token
from tests.support.asgi import ASGI_SERVERS, MOUNT, PAGE_ORIGIN, Mounted, mounted, serve_asgi
from tests.support.fallback import StartFallback
from tests.support.http import http as raw_http
from tests.support.polling import eventually
from tests.support.streams import open_sse
from tidings import Tidings
from tidings.bench.wsframe import OP_TEXT, encode_frame, handshake_request

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=ASGI_SERVERS)
async def mount(request: pytest.FixtureRequest) -> AsyncIterator[Mounted]:
    async with mounted(request.param) as running:
        yield running


@pytest.fixture
async def uvicorn_mount() -> AsyncIterator[Mounted]:
    async with mounted("uvicorn") as running:
        yield running


# --------------------------------------------------------------------------- clients


@pytest.mark.node
@pytest.mark.parametrize("expected", ["http_stream", "sse"])
async def test_centrifuge_js_falls_back_to_the_mounts_streams(
    mount: Mounted, fallback_client: StartFallback, expected: str
) -> None:
    blocked = ["websocket"] if expected == "http_stream" else ["websocket", "http_stream"]
    client = await fallback_client(mount.base, blocked, "chat:fb")
    connected = await client.next(lambda d: d.get("event") == "connected")
    assert connected["transport"] == expected
    assert (await client.next(lambda d: d.get("event") == "subscribed"))["recoverable"] is True
    await client.call("publish", data={"n": 1})
    await mount.rt.publish("chat:fb", {"n": 2})
    publications = [await client.next(lambda d: d.get("event") == "publication") for _ in (1, 2)]
    assert [(p["offset"], p["data"]) for p in publications] == [(1, {"n": 1}), (2, {"n": 2})]
    presence = await client.call("presence")
    assert [info["user"] for info in presence.values()] == ["alice"]
    history = await client.call("history")
    assert [p["data"] for p in history] == [{"n": 1}, {"n": 2}]
    await client.call("quit")


async def test_events_and_longpoll_through_the_mount(
    mount: Mounted, http: aiohttp.ClientSession
) -> None:
    auth = {"Authorization": f"Bearer {token('alice')}"}
    events = await open_sse(http, f"{mount.base}/events?channel=chat:ev", headers=auth)
    try:
        await eventually(lambda: mount.asgi.routes.feeds.members(), what="the /events member")
        await mount.rt.publish("chat:ev", {"n": 1})
        first = await events.next()
        assert first.json() == {"channel": "chat:ev", "offset": 1, "data": {"n": 1}}
        cursor = first.id
        assert cursor

        # POST /longpoll publishes (as a client may in this namespace); /events sees it.
        async with http.post(
            f"{mount.base}/longpoll", json={"channel": "chat:ev", "data": {"n": 2}}, headers=auth
        ) as posted:
            assert posted.status == 200 and (await posted.json())["offset"] == 2
        assert (await events.next()).json()["data"] == {"n": 2}

        # GET /longpoll from the first event's cursor: the second publication, at once.
        async with http.get(
            f"{mount.base}/longpoll?channel=chat:ev&cursor={cursor}", headers=auth
        ) as polled:
            answer = await polled.json()
        assert [p["data"] for p in answer["publications"]] == [{"n": 2}]

        # A poll that waits is answered by the next publication.
        waiting = asyncio.ensure_future(
            http.get(
                f"{mount.base}/longpoll?channel=chat:ev&cursor={answer['cursor']}", headers=auth
            )
        )
        await eventually(lambda: mount.asgi.routes.waiters, what="the poll to wait")
        await mount.rt.publish("chat:ev", {"n": 3})
        response = await asyncio.wait_for(waiting, 5)
        assert [p["data"] for p in (await response.json())["publications"]] == [{"n": 3}]
        response.close()

        # EventSource resumes from its last id.
        resumed = await open_sse(
            http,
            f"{mount.base}/events?channel=chat:ev",
            headers={**auth, "Last-Event-ID": cursor},
        )
        try:
            replayed = await resumed.events(2)
            assert [e.json()["offset"] for e in replayed] == [2, 3]
        finally:
            resumed.close()
    finally:
        events.close()


def subscribers(mount: Mounted, channel: str) -> int:
    return dict(mount.rt.node.hub.channels()).get(channel, 0)


async def test_server_api_through_the_mount(mount: Mounted, http: aiohttp.ClientSession) -> None:
    async with http.post(
        f"{mount.base}/api/publish",
        json={"channel": "chat:api", "data": {"n": 1}},
        headers={"X-API-Key": API_KEY},
    ) as response:
        assert response.status == 200
        assert (await response.json())["result"]["offset"] == 1
    async with http.post(
        f"{mount.base}/api", data=json.dumps({"method": "info", "params": {}})
    ) as response:
        assert response.status == 401
    history = await mount.rt.history("chat:api", limit=-1)
    assert [p.data for p in history.publications] == [{"n": 1}]


# --------------------------------------------------------------------------- refusals

BAD_REQUESTS: list[tuple[str, str, dict[str, str], bytes]] = [
    ("GET", "/events?channel=chat:x", {}, b""),  # no token: 401 with a challenge
    ("GET", "/events?channel=chat:x", {"Origin": "http://evil.example"}, b""),
    ("PUT", "/events?channel=chat:x", {"Origin": PAGE_ORIGIN}, b""),
    ("OPTIONS", "/events", {"Origin": PAGE_ORIGIN}, b""),
    ("GET", f"/events?channel=chat:x&token={token()}&last_event_id=garbage", {}, b""),
    ("GET", f"/events?token={token()}&channel=nowhere:x", {}, b""),
    ("GET", f"/longpoll?channel=quiet:x&token={token()}", {}, b""),
    ("POST", f"/longpoll?token={token()}", {}, b"[1,2"),
    ("GET", "/connection/sse", {}, b""),
    ("POST", "/emulation", {"Content-Type": "application/octet-stream"}, b"\x12\x00\x1a\x01"),
    ("POST", "/emulation", {}, b"not json"),
    ("POST", "/emulation", {}, b'{"session":"s","node":"gone","data":"{}"}'),
    ("POST", "/connection/uni_http_stream", {}, b"{"),
    ("GET", "/connection/websocket", {}, b""),
    ("GET", "/connection/uni_websocket", {}, b""),
    ("POST", "/api/publish", {}, b"{}"),
    ("POST", "/api/publish", {"X-API-Key": API_KEY}, b"{nope"),
    ("POST", "/api/publish", {"X-API-Key": API_KEY}, b'{"channel":"' + b"x" * 70000 + b'"}'),
    ("GET", "/api/publish", {"X-API-Key": API_KEY}, b""),
    ("GET", "/nowhere", {}, b""),
]

COMPARED_HEADERS = (
    "content-type",
    "allow",
    "www-authenticate",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "vary",
)


async def test_bad_input_gets_the_standalone_edges_codes(mount: Mounted) -> None:
    for method, path, headers, body in BAD_REQUESTS:
        headers = {"Host": "127.0.0.1", **headers}
        status, head, payload = await raw_http(mount.standalone.port, method, path, body, headers)
        m_status, m_head, m_payload = await raw_http(
            mount.port, method, MOUNT + path, body, headers
        )
        what = f"{method} {path[:60]}"
        assert 400 <= status < 500 or status == 204, (what, status, payload)
        assert (m_status, m_payload) == (status, payload), what
        for name in COMPARED_HEADERS:
            assert m_head.get(name) == head.get(name), (what, name)


async def websocket_refusal(url: str, **options: Any) -> tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, open_timeout=5, **options):
            pass
    response = refused.value.response
    return response.status_code, bytes(response.body or b"")


async def test_websocket_refusals_match_the_standalone_edge(mount: Mounted) -> None:
    for path, options in [
        ("/connection/websocket", {"origin": "http://evil.example"}),
        ("/connection/uni_websocket", {"origin": "http://evil.example"}),
        ("/nowhere", {}),
    ]:
        standalone = await websocket_refusal(
            f"ws://127.0.0.1:{mount.standalone.port}{path}", **options
        )
        mounted_answer = await websocket_refusal(
            f"ws://127.0.0.1:{mount.port}{MOUNT}{path}", **options
        )
        assert mounted_answer == standalone, path
    # Protobuf on uni_websocket (JSON only): refused with the catalog's error (the
    # standalone handshake answers 400 with the handshake library's text instead).
    uni_url = mount.ws_url.replace("/connection/websocket", "/connection/uni_websocket")
    status, body = await websocket_refusal(uni_url, subprotocols=["centrifuge-protobuf"])
    assert status == 400
    assert json.loads(body) == {"error": {"code": 107, "message": "bad request"}}


async def test_websocket_frames_the_session_refuses(
    mount: Mounted, ws_client: ClientFactory
) -> None:
    binary = await ws_client(mount.ws_url)
    await binary.connect(token())
    await binary.send_raw(b"\x00\x01")
    assert await binary.closed() == (3506, "inappropriate protocol")

    too_big = await ws_client(mount.ws_url)
    await too_big.connect(token())
    await too_big.send_raw(json.dumps({"id": 9, "rpc": {"data": "x" * 70000}}))
    assert await too_big.closed() == (1009, "message too big")

    garbage = await ws_client(mount.ws_url)
    await garbage.send_raw("not json")
    code, _ = await garbage.closed()
    assert code == 3501  # bad request, as on the standalone edge

    # uni_websocket: the ConnectRequest as the first message, the token's channels.
    uni = await ws_client(f"ws://127.0.0.1:{mount.port}{MOUNT}/connection/uni_websocket")
    await uni.send_raw(json.dumps({"token": token(channels=["chat:uni"])}))
    connected = json.loads(await asyncio.wait_for(uni.ws.recv(), 5))
    assert "chat:uni" in connected["connect"]["subs"]
    await uni.send_raw("ignored: the client only reads now")
    await mount.rt.publish("chat:uni", {"n": 1})
    pushes = []
    while not any("pub" in p for p in pushes):
        pushes.append(json.loads(await asyncio.wait_for(uni.ws.recv(), 5)))
    assert pushes[-1] == {"channel": "chat:uni", "pub": {"data": {"n": 1}, "offset": 1}}


async def test_a_client_that_stops_reading_is_cut_with_3008() -> None:
    async with mounted("uvicorn", write_buffer_limit=256 * 1024, slow_timeout=30.0) as mount:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", mount.port))
            commands = json.dumps({"id": 1, "connect": {"token": token("lazy")}}) + "\n"
            commands += json.dumps({"id": 2, "subscribe": {"channel": "quiet:firehose"}})
            request = handshake_request(f"127.0.0.1:{mount.port}", f"{MOUNT}/connection/websocket")
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, request)
            answer = b""
            while b"\r\n\r\n" not in answer:  # frames wait for the 101, as a browser's do
                answer += await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
            assert answer.startswith(b"HTTP/1.1 101")
            await loop.sock_sendall(sock, encode_frame(OP_TEXT, commands.encode()))
            await eventually(lambda: subscribers(mount, "quiet:firehose"), what="the subscription")
            payload = {"blob": "x" * 1000}
            for n in range(20_000):  # ~20 MB at most: kernel buffers hold a few
                await mount.rt.publish("quiet:firehose", payload)
                if n % 20 == 0:
                    await asyncio.sleep(0)  # let the hub flush and the sender run
                if mount.disconnects:
                    break
            await eventually(lambda: mount.disconnects, what="the slow client to be cut")
            assert mount.disconnects == [3008]
            await eventually(
                lambda: not subscribers(mount, "quiet:firehose"),
                what="the slow client's subscription to go",
            )
        finally:
            sock.close()


async def test_the_mount_alone_runs_the_node_through_its_lifespan(
    ws_client: ClientFactory,
) -> None:
    rt = Tidings(make_config())
    async with serve_asgi(rt.asgi(), "uvicorn") as port:
        client = await ws_client(f"ws://127.0.0.1:{port}/connection/websocket")
        assert (await client.connect(token()))["client"]
        await client.subscribe("chat:alone")
        await rt.publish("chat:alone", {"n": 1})
        assert [p["data"] for p in await client.publications("chat:alone", 1)] == [{"n": 1}]
        assert not rt.node.closing
    assert rt.node.closing


async def test_stopping_the_node_ends_the_mounts_streams(http: aiohttp.ClientSession) -> None:
    async with mounted("uvicorn") as mount:
        auth = {"Authorization": f"Bearer {token('alice')}"}
        events = await open_sse(http, f"{mount.base}/events?channel=chat:end", headers=auth)
        poll = asyncio.ensure_future(
            http.get(f"{mount.base}/longpoll?channel=chat:end", headers=auth)
        )
        await eventually(lambda: mount.asgi.routes.waiters, what="the poll to wait")
        await mount.rt.stop()  # what the lifespan does at shutdown
        assert await events.ended() == []
        answered = await asyncio.wait_for(poll, 5)
        assert answered.status == 200
        assert (await answered.json())["publications"] == []
