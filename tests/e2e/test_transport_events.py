"""``GET /events``: plain SSE with cursor ids, resume by ``Last-Event-ID``, and every refusal."""

from __future__ import annotations

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
from tests.support.polling import eventually
from tests.support.streams import SseStream, error_body, open_sse
from tidings.config import Config
from tidings.errors import ConfigError
from tidings.protocol.cursor import parse_cursor

pytestmark = pytest.mark.timeout(30)


def events_url(server: RunningServer, *channels: str, **params: str) -> str:
    query = [("channel", c) for c in channels] + list(params.items())
    return f"{server.http_url}/events?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query)


async def subscribed(server: RunningServer, count: int = 1) -> None:
    """Wait until ``count`` /events members are live (their catch-up is done)."""

    def live() -> int:
        return sum(len(feed.live) for feed in server.server.transports.feeds.feeds.values())

    await eventually(lambda: live() >= count, what=f"{count} live /events members")


async def publish(server: RunningServer, channel: str, count: int, start: int = 0) -> None:
    for index in range(start, start + count):
        await server.node.publish(channel, {"n": index})


def payloads(events: list[Any]) -> list[Any]:
    return [(e.json()["channel"], e.json()["offset"], e.json()["data"]["n"]) for e in events]


async def test_publications_arrive_as_events_with_cursor_ids(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    stream = await open_sse(http, events_url(server, "chat:a", token=token()))
    assert stream.response.headers["cache-control"].startswith("private, no-cache, no-store")
    assert stream.response.headers["x-accel-buffering"] == "no"
    await subscribed(server)
    await publish(server, "chat:a", 3)
    events = await stream.events(3)
    assert payloads(events) == [("chat:a", 1, 0), ("chat:a", 2, 1), ("chat:a", 3, 2)]
    epoch = parse_cursor(events[0].id or "")["chat:a"].epoch
    assert [e.id for e in events] == [f"chat@3Aa:{epoch}:{n}" for n in (1, 2, 3)]
    assert stream.retry == 1000
    stream.close()


async def test_resume_with_last_event_id_gets_exactly_what_was_missed(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    url = events_url(server, "chat:a", "chat:b", token=token())
    first = await open_sse(http, url)
    await subscribed(server)
    await publish(server, "chat:a", 2)
    await publish(server, "chat:b", 1)
    seen = await first.events(3)
    first.close()
    await eventually(lambda: not server.server.transports.feeds.feeds, what="the feed to go")
    await publish(server, "chat:a", 2, start=2)
    await publish(server, "chat:b", 2, start=1)
    second = await open_sse(http, url, headers={"Last-Event-ID": seen[-1].id or ""})
    missed = await second.events(4)
    assert payloads(missed) == [
        ("chat:a", 3, 2),
        ("chat:a", 4, 3),
        ("chat:b", 2, 1),
        ("chat:b", 3, 2),
    ]
    await subscribed(server)
    await publish(server, "chat:b", 1, start=3)
    (live,) = await second.events(1)
    assert payloads([live]) == [("chat:b", 4, 3)]
    cursor = parse_cursor(live.id or "")
    assert (cursor["chat:a"].offset, cursor["chat:b"].offset) == (4, 4)
    second.close()


async def test_last_event_id_query_parameter(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    await publish(server, "chat:q", 3)
    epoch = (await server.node.history.history("chat:q", limit=0))[1].epoch
    stream = await open_sse(
        http, events_url(server, "chat:q", token=token(), last_event_id=f"chat%3Aq:{epoch}:1")
    )
    assert payloads(await stream.events(2)) == [("chat:q", 2, 1), ("chat:q", 3, 2)]
    stream.close()


async def test_resync_when_history_no_longer_reaches(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    await publish(server, "small:r", 6)  # history_size = 3 keeps offsets 4..6
    epoch = (await server.node.history.history("small:r", limit=0))[1].epoch
    stream = await open_sse(
        http,
        events_url(server, "small:r", token=token()),
        headers={"Last-Event-ID": f"small%3Ar:{epoch}:1"},
    )
    resync = await stream.next()
    assert resync.event == "resync"
    assert resync.json() == {"channel": "small:r", "epoch": epoch, "offset": 6}
    assert parse_cursor(resync.id or "")["small:r"].offset == 6
    await subscribed(server)
    await publish(server, "small:r", 1, start=6)
    assert payloads([await stream.next()]) == [("small:r", 7, 6)]
    stream.close()


async def test_same_channel_set_shares_one_feed_and_one_bytes_object(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    url_ab = events_url(server, "chat:a", "chat:b", token=token())
    url_ba = events_url(server, "chat:b", "chat:a", token=token("bob"))
    one, two = await open_sse(http, url_ab), await open_sse(http, url_ba)
    await subscribed(server, 2)
    feeds = server.server.transports.feeds.feeds
    assert len(feeds) == 1
    (feed,) = feeds.values()
    frames: list[bytes] = []
    for member in list(feed.live):
        original = member.write

        def spy(data: bytes, original: Any = original) -> None:
            frames.append(data)
            original(data)

        feed.live[member] = spy
    await publish(server, "chat:a", 1)
    assert (await one.next()).data == (await two.next()).data
    assert len(frames) == 2 and frames[0] is frames[1]
    one.close()
    two.close()


async def test_heartbeat_comments_keep_idle_streams_alive(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(sse_heartbeat_interval=0.05)
    stream = await open_sse(http, events_url(server, "chat:a", token=token()))
    await subscribed(server)
    read = stream.next(timeout=0.5)
    with pytest.raises(TimeoutError):
        await read
    assert "ping" in stream.comments
    stream.close()


async def test_channels_from_the_token_and_cookie_and_bearer(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    tok = token(channels=["$chat:feed"])
    # A private channel is refused without a token grant, allowed with it.
    stream = await open_sse(
        http, f"{server.http_url}/events", headers={"Authorization": f"Bearer {tok}"}
    )
    await subscribed(server)
    await server.node.publish("$chat:feed", {"n": 1})
    assert (await stream.next()).json()["channel"] == "$chat:feed"
    stream.close()
    cookie = await open_sse(
        http,
        events_url(server, "chat:c"),
        headers={"Cookie": f"tidings_token={token()}"},
    )
    cookie.close()


async def test_stream_ends_at_token_expiry(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(expired_close_delay=0.0)
    stream = await open_sse(http, events_url(server, "chat:a", token=token(ttl=1)))
    await stream.ended(timeout=5)


async def test_server_stop_ends_streams(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    stream = await open_sse(http, events_url(server, "chat:a", token=token()))
    await subscribed(server)
    await server.server.stop()
    await stream.ended()


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("query", "headers", "status", "code", "message"),
    [
        ("channel=chat:a&token=OK&last_event_id=garbage", {}, 400, 107, "bad request"),
        ("channel=chat:a&token=OK", {"Last-Event-ID": "chat%3Aa:E:01"}, 400, 107, "bad request"),
        ("channel=chat:a&token=OK&last_event_id=" + "a" * 9000, {}, 400, 107, "bad request"),
        ("channel=chat:a&token=not-a-jwt", {}, 401, 101, "unauthorized"),
        ("channel=chat:a&token=EXPIRED", {}, 401, 109, "token expired"),
        ("channel=chat:a", {}, 401, 101, "unauthorized"),
        ("channel=nowhere:a&token=OK", {}, 404, 102, "unknown channel"),
        ("channel=$secret&token=OK", {}, 403, 103, "permission denied"),
        ("channel=positioned:a&token=OK", {}, 200, 0, ""),
        ("token=OK", {}, 400, 107, "bad request"),
        ("channel=&token=OK", {}, 400, 107, "bad request"),
        ("channel=" + "x" * 300 + "&token=OK", {}, 400, 107, "bad request"),
    ],
)
async def test_bad_requests_get_json_errors(
    server: RunningServer,
    ws_client: ClientFactory,
    http: aiohttp.ClientSession,
    query: str,
    headers: dict[str, str],
    status: int,
    code: int,
    message: str,
) -> None:
    control = await control_client(server, ws_client)
    query = query.replace("token=OK", f"token={token()}")
    query = query.replace("token=EXPIRED", f"token={token(ttl=-10)}")
    query = query.replace("$", "%24")
    response = await http.get(f"{server.http_url}/events?{query}", headers=headers)
    assert response.status == status, await response.text()
    if status != 200:
        assert await response.json() == error_body(code, message)
    response.close()
    await assert_still_serving(server, control)


async def test_too_many_channels(
    start_server: StartServer, ws_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(client_channel_limit=2)
    control = await control_client(server, ws_client)
    response = await http.get(events_url(server, "chat:a", "chat:b", "chat:c", token=token()))
    assert response.status == 400
    assert await response.json() == error_body(106, "limit exceeded")
    await assert_still_serving(server, control)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_wrong_method(
    server: RunningServer, ws_client: ClientFactory, http: aiohttp.ClientSession, method: str
) -> None:
    control = await control_client(server, ws_client)
    response = await http.request(method, events_url(server, "chat:a", token=token()))
    assert response.status == 405
    assert response.headers["allow"] == "GET"
    assert await response.json() == error_body(107, "method not allowed")
    await assert_still_serving(server, control)


async def test_origin_policy_and_cors(
    start_server: StartServer, ws_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(
        allowed_origins=["https://app.example.com"], cors_allow_credentials=True
    )
    control = await control_client(server, ws_client)
    refused = await http.get(
        events_url(server, "chat:a", token=token()), headers={"Origin": "https://evil.example"}
    )
    assert refused.status == 403
    assert await refused.json() == error_body(103, "origin not allowed")
    preflight = await http.options(
        f"{server.http_url}/events",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "last-event-id" in preflight.headers["access-control-allow-headers"]
    stream = await open_sse(
        http,
        events_url(server, "chat:a", token=token()),
        headers={"Origin": "https://app.example.com"},
    )
    assert stream.response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert stream.response.headers["vary"] == "origin"
    stream.close()
    await assert_still_serving(server, control)


async def test_cors_wildcard_without_credentials(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(allowed_origins=["*"])
    stream = await open_sse(
        http, events_url(server, "chat:a", token=token()), headers={"Origin": "https://x.test"}
    )
    assert stream.response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in stream.response.headers
    stream.close()


def test_wildcard_with_credentials_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="cors_allow_credentials"):
        Config(allowed_origins=["*"], cors_allow_credentials=True).validate()
    with pytest.raises(ConfigError, match="cors_allow_credentials"):
        Config(cors_allowed_origins=["*"], cors_allow_credentials=True).validate()
    Config(cors_allowed_origins=["https://a.test"], cors_allow_credentials=True).validate()


async def read_all(stream: SseStream) -> bytes:
    return bytes(stream.raw)
