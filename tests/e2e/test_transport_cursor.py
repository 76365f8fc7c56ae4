"""One stream, every transport: the same publications in the same order, one cursor throughout."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.conftest import ClientFactory, RunningServer, token
from tests.support.polling import eventually
from tests.support.streams import LineStream, open_sse
from tidings.protocol.cursor import encode_cursor, parse_cursor
from tidings.protocol.messages import StreamPosition

pytestmark = pytest.mark.timeout(30)


CHANNEL = "chat:same"
COUNT = 20


def sse_url(server: RunningServer, **params: str) -> str:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return f"{server.http_url}/events?channel={quote(CHANNEL)}&token={token()}&{query}"


def poll_url(server: RunningServer, cursor: str) -> str:
    return (
        f"{server.http_url}/longpoll?channel={quote(CHANNEL)}&token={token()}"
        f"&cursor={quote(cursor, safe='')}"
    )


async def test_the_same_sequence_over_every_transport(
    server: RunningServer, ws_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    ws = await ws_client(server.ws_url)
    await ws.connect(token())
    await ws.subscribe(CHANNEL)

    sse = await open_sse(http, sse_url(server))

    stream = LineStream(
        await http.post(
            f"{server.http_url}/connection/http_stream",
            data=json.dumps({"connect": {"token": token()}, "id": 1}),
        )
    )
    session = (await stream.next())["connect"]["session"]
    async with http.post(
        f"{server.http_url}/emulation",
        json={
            "session": session,
            "node": server.node.id,
            "data": json.dumps({"id": 2, "subscribe": {"channel": CHANNEL}}),
        },
    ):
        pass
    await stream.until(lambda d: d.get("id") == 2)

    _, top = await server.node.history.history(CHANNEL, limit=0)
    await eventually(
        lambda: any(feed.live for feed in server.server.transports.feeds.feeds.values()),
        what="the /events member live",
    )

    async def long_poll_all() -> list[tuple[int, Any]]:
        cursor, got = encode_cursor({CHANNEL: top}), []
        while len(got) < COUNT:
            async with http.get(poll_url(server, cursor)) as response:
                result = await response.json()
            got += [(p["offset"], p["data"]) for p in result["publications"]]
            cursor = result["cursor"]
        return got

    polling = asyncio.create_task(long_poll_all())
    for n in range(COUNT):
        await server.node.publish(CHANNEL, {"n": n, "text": "line\nbreak" if n % 5 == 0 else "x"})

    over_ws = [(p["offset"], p["data"]) for p in await ws.publications(CHANNEL, COUNT)]
    over_sse = [(e.json()["offset"], e.json()["data"]) for e in await sse.events(COUNT)]
    over_stream = []
    while len(over_stream) < COUNT:
        document = await stream.next()
        if "pub" in document.get("push", {}):
            pub = document["push"]["pub"]
            over_stream.append((pub["offset"], pub["data"]))
    over_poll = await polling
    assert [offset for offset, _ in over_ws] == list(range(1, COUNT + 1))
    assert over_ws == over_sse == over_stream == over_poll
    sse.close()


async def test_one_cursor_from_websocket_to_sse_to_long_polling_and_back(
    server: RunningServer, ws_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    received: list[int] = []

    # 1. WebSocket: subscribe, read 1..3, leave. The client holds (epoch, offset).
    ws = await ws_client(server.ws_url)
    await ws.connect(token())
    reply = await ws.subscribe(CHANNEL, recoverable=True)
    epoch = reply["epoch"]
    for n in range(1, 4):
        await server.node.publish(CHANNEL, {"n": n})
    received += [p["data"]["n"] for p in await ws.publications(CHANNEL, 3)]
    await ws.close()

    # 2. SSE from the converted position: exactly 4 and 5.
    for n in (4, 5):
        await server.node.publish(CHANNEL, {"n": n})
    cursor = encode_cursor({CHANNEL: StreamPosition(received[-1], epoch)})
    assert cursor == f"chat@3Asame:{epoch}:3"  # what the documented JS helper builds
    sse = await open_sse(http, sse_url(server), headers={"Last-Event-ID": cursor})
    events = await sse.events(2)
    received += [e.json()["data"]["n"] for e in events]
    sse.close()

    # 3. Long polling with the last event id as its cursor: exactly 6.
    await server.node.publish(CHANNEL, {"n": 6})
    async with http.get(poll_url(server, events[-1].id or "")) as response:
        result = await response.json()
    received += [p["data"]["n"] for p in result["publications"]]

    # 4. Back to WebSocket: recover from the long-poll cursor, exactly 7 and 8.
    for n in (7, 8):
        await server.node.publish(CHANNEL, {"n": n})
    position = parse_cursor(result["cursor"])[CHANNEL]
    ws2 = await ws_client(server.ws_url)
    await ws2.connect(token())
    recovered = await ws2.subscribe(
        CHANNEL, recover=True, offset=position.offset, epoch=position.epoch
    )
    assert recovered["recovered"] is True
    received += [p["data"]["n"] for p in recovered["publications"]]

    assert received == [1, 2, 3, 4, 5, 6, 7, 8]
