"""``/longpoll``: held requests, cursor continuation, publishing, refusals, and no state kept."""

from __future__ import annotations

import asyncio
import uuid
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
    make_config,
    token,
)
from tests.support.polling import eventually
from tests.support.redis import REDIS_URL, delete_keys
from tests.support.streams import error_body
from tidings.protocol.cursor import encode_cursor, parse_cursor

pytestmark = pytest.mark.timeout(30)


def poll_url(server: RunningServer, *channels: str, **params: str) -> str:
    query = [("channel", c) for c in channels] + list(params.items())
    return f"{server.http_url}/longpoll?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query)


async def poll(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        assert response.headers["cache-control"].startswith("private, no-cache")
        result: dict[str, Any] = await response.json()
        return result


def hub_subscribers(server: RunningServer) -> int:
    return sum(count for _, count in server.node.hub.channels())


def data(result: dict[str, Any]) -> list[tuple[str, int, Any]]:
    return [(p["channel"], p["offset"], p["data"]) for p in result["publications"]]


async def test_waits_for_a_publication_then_continues_from_the_cursor(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    tok = token()
    waiting = asyncio.create_task(poll(http, poll_url(server, "chat:a", "chat:b", token=tok)))
    await eventually(lambda: len(server.server.transports.waiters) == 1, what="a waiting poll")
    await eventually(lambda: hub_subscribers(server) == 2, what="the waiter in the hub")
    await server.node.publish("chat:b", {"n": 1})
    first = await waiting
    assert data(first) == [("chat:b", 1, {"n": 1})]
    cursor = parse_cursor(first["cursor"])
    assert cursor["chat:b"].offset == 1 and cursor["chat:a"].offset == 0
    await eventually(lambda: hub_subscribers(server) == 0, what="the waiter to leave the hub")
    # Published while no request is open: the cursor and history carry it.
    await server.node.publish("chat:a", {"n": 2})
    await server.node.publish("chat:b", {"n": 3})
    second = await poll(
        http, poll_url(server, "chat:a", "chat:b", token=tok, cursor=first["cursor"])
    )
    assert data(second) == [("chat:a", 1, {"n": 2}), ("chat:b", 2, {"n": 3})]
    third = asyncio.create_task(
        poll(http, poll_url(server, "chat:a", "chat:b", token=tok, cursor=second["cursor"]))
    )
    await eventually(lambda: hub_subscribers(server) == 2, what="the third poll waiting")
    await server.node.publish("chat:a", {"n": 4})
    await server.node.publish("chat:a", {"n": 5})
    assert data(await third) == [("chat:a", 2, {"n": 4}), ("chat:a", 3, {"n": 5})]


async def test_timeout_answers_an_empty_list_and_a_cursor(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(longpoll_timeout=0.2)
    await server.node.publish("chat:t", {"n": 1})
    result = await poll(http, poll_url(server, "chat:t", token=token()))
    assert result["publications"] == []
    assert parse_cursor(result["cursor"])["chat:t"].offset == 1
    assert hub_subscribers(server) == 0


async def test_client_that_gives_up_leaves_the_hub_at_once(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    request = asyncio.create_task(http.get(poll_url(server, "chat:gone", token=token())))
    await eventually(lambda: hub_subscribers(server) == 1, what="the waiter in the hub")
    response = await request  # headers arrive at once; the body when there is one
    response.close()  # the client gives up
    await eventually(lambda: hub_subscribers(server) == 0, what="the waiter to go")
    assert not server.server.transports.waiters


async def test_resync_when_history_no_longer_reaches(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    for n in range(6):
        await server.node.publish("small:r", {"n": n})
    epoch = (await server.node.history.history("small:r", limit=0))[1].epoch
    result = await poll(
        http, poll_url(server, "small:r", token=token(), cursor=f"small%3Ar:{epoch}:1")
    )
    assert result["publications"] == [] and result["resync"] == ["small:r"]
    assert parse_cursor(result["cursor"])["small:r"].offset == 6


async def test_publish_with_post(server: RunningServer, http: aiohttp.ClientSession) -> None:
    """chat: allows publishing for subscribers; a poster who may subscribe counts as one."""
    waiting = asyncio.create_task(poll(http, poll_url(server, "chat:p", token=token())))
    await eventually(lambda: hub_subscribers(server) == 1, what="a waiting poll")
    async with http.post(
        f"{server.http_url}/longpoll",
        json={"channel": "chat:p", "data": {"text": "hi"}},
        headers={"Authorization": f"Bearer {token('bob')}"},
    ) as response:
        assert response.status == 200
        result = await response.json()
        assert result["offset"] == 1
    assert data(await waiting) == [("chat:p", 1, {"text": "hi"})]


async def test_publish_to_a_history_channel_reports_its_position(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{server.http_url}/longpoll?token={token()}",
        json={"channel": "positioned:x", "data": [1, 2]},
    ) as response:
        result = await response.json()
    assert result["offset"] == 1 and len(result["epoch"]) == 8


@pytest.mark.parametrize(
    ("method", "query", "body", "status", "code", "message"),
    [
        ("GET", "channel=chat:a&token=OK&cursor=nonsense", None, 400, 107, "bad request"),
        (
            "GET",
            "channel=chat:a&token=OK&cursor=chat%253Aa%3AE%3A-1",
            None,
            400,
            107,
            "bad request",
        ),
        ("GET", "channel=chat:a&token=bad", None, 401, 101, "unauthorized"),
        ("GET", "channel=chat:a&token=EXPIRED", None, 401, 109, "token expired"),
        ("GET", "channel=nowhere:a&token=OK", None, 404, 102, "unknown channel"),
        ("GET", "channel=%24chat:a&token=OK", None, 403, 103, "permission denied"),
        ("GET", "channel=quiet:a&token=OK", None, 400, 108, "not available"),
        ("POST", "token=OK", b"{not json", 400, 107, "bad request"),
        ("POST", "token=OK", b'{"channel":"open:a"}', 400, 107, "bad request"),
        ("POST", "token=OK", b'{"channel":"chat:a","data":1,"x":2}', 400, 107, "bad request"),
        ("POST", "token=OK", b'{"channel":"quiet:a","data":1}', 403, 103, "permission denied"),
        ("POST", "token=OK", b'{"channel":"nowhere:a","data":1}', 404, 102, "unknown channel"),
        ("POST", "", b'{"channel":"open:a","data":1}', 401, 101, "unauthorized"),
        ("PUT", "token=OK", b"{}", 405, 107, "method not allowed"),
        ("DELETE", "channel=chat:a&token=OK", None, 405, 107, "method not allowed"),
    ],
)
async def test_bad_requests_get_json_errors(
    server: RunningServer,
    ws_client: ClientFactory,
    http: aiohttp.ClientSession,
    method: str,
    query: str,
    body: bytes | None,
    status: int,
    code: int,
    message: str,
) -> None:
    control = await control_client(server, ws_client)
    query = query.replace("token=OK", f"token={token()}")
    query = query.replace("token=EXPIRED", f"token={token(ttl=-10)}")
    async with http.request(method, f"{server.http_url}/longpoll?{query}", data=body) as response:
        assert response.status == status, await response.text()
        assert await response.json() == error_body(code, message)
        if status == 405:
            assert response.headers["allow"] == "GET, POST"
    assert hub_subscribers(server) == 1  # only the control client
    await assert_still_serving(server, control)


async def test_oversized_post_body_is_413(
    server: RunningServer, ws_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    control = await control_client(server, ws_client)
    body = b'{"channel":"open:a","data":"' + b"x" * 70_000 + b'"}'
    async with http.post(f"{server.http_url}/longpoll?token={token()}", data=body) as response:
        assert response.status == 413
        assert await response.text() == "request body over max_message_size (65536 bytes)"
    await assert_still_serving(server, control)


@pytest.mark.redis
async def test_no_sticky_sessions_across_nodes_with_redis(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """One poll on node A, the next on node B with A's cursor: the broker holds the state."""
    prefix = f"tlp{uuid.uuid4().hex[:12]}"
    try:
        first = await start_server(make_config(broker=REDIS_URL, broker_prefix=prefix))
        second = await start_server(make_config(broker=REDIS_URL, broker_prefix=prefix))
    except Exception as exc:  # pragma: no cover - no Redis on this machine
        pytest.skip(f"Redis is not reachable: {exc}")
    try:
        await _poll_across_nodes(first, second, http)
    finally:
        await delete_keys(REDIS_URL, prefix)


async def _poll_across_nodes(
    first: RunningServer, second: RunningServer, http: aiohttp.ClientSession
) -> None:
    tok = token()
    channel = f"chat:longpoll-{uuid.uuid4().hex}"
    _, top = await first.node.history.history(channel, limit=0)
    cursor = encode_cursor({channel: top})
    waiting = asyncio.create_task(poll(http, poll_url(second, channel, token=tok, cursor=cursor)))
    await eventually(lambda: hub_subscribers(second) == 1, what="the poll on node B")
    await first.node.publish(channel, {"from": "A"})
    on_b = await waiting
    assert data(on_b) == [(channel, 1, {"from": "A"})]
    await second.node.publish(channel, {"from": "B"})
    on_a = await poll(http, poll_url(first, channel, token=tok, cursor=on_b["cursor"]))
    assert data(on_a) == [(channel, 2, {"from": "B"})]
