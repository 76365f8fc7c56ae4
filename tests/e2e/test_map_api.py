"""The server API's map methods over real HTTP on 127.0.0.1 (docs/protocol.md section 14),
in Centrifugo's shapes, with the exact refusal of each bad input."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.conftest import ClientFactory, RunningServer, StartServer, make_config, token
from tests.support.http import api
from tests.support.maps import map_channels

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(make_config(channels=map_channels()))


async def call(server: RunningServer, method: str, **params: Any) -> Any:
    status, body = await api(server.port, method, params)
    assert status == 200
    return body


async def test_publish_read_remove_stats_clear(server: RunningServer) -> None:
    first = await call(server, "map_publish", channel="prices:eur", key="EURUSD", data={"bid": 1})
    epoch = first["result"]["epoch"]
    assert first == {"result": {"offset": 1, "epoch": epoch}}
    b64 = base64.b64encode(b'{"bid":2}').decode()
    second = await call(
        server, "map_publish", channel="prices:eur", key="EURGBP", b64data=b64, tags={"venue": "x"}
    )
    assert second["result"]["offset"] == 2
    again = await call(
        server,
        "map_publish",
        channel="prices:eur",
        key="EURUSD",
        data={"bid": 3},
        key_mode="if_new",
    )
    assert again == {
        "result": {"offset": 2, "epoch": epoch, "suppressed": True, "suppress_reason": "key_exists"}
    }
    state = (await call(server, "map_read_state", channel="prices:eur", limit=-1))["result"]
    assert state["offset"] == 2 and state["epoch"] == epoch and "cursor" not in state
    assert [(e["key"], e["data"], e["offset"]) for e in state["entries"]] == [
        ("EURGBP", {"bid": 2}, 2),
        ("EURUSD", {"bid": 1}, 1),
    ]
    assert state["entries"][0]["tags"] == {"venue": "x"} and state["entries"][0]["time"] > 0
    page = (await call(server, "map_read_state", channel="prices:eur", limit=1))["result"]
    assert [e["key"] for e in page["entries"]] == ["EURGBP"] and page["cursor"] == "EURGBP"
    position = (await call(server, "map_read_state", channel="prices:eur"))["result"]
    assert position == {"entries": [], "offset": 2, "epoch": epoch}  # limit 0: position only
    one = (await call(server, "map_read_state", channel="prices:eur", key="EURUSD"))["result"]
    assert [e["key"] for e in one["entries"]] == ["EURUSD"]
    removed = await call(server, "map_remove", channel="prices:eur", key="EURUSD")
    assert removed == {"result": {"offset": 3, "epoch": epoch}}
    stream = (
        await call(
            server,
            "map_read_stream",
            channel="prices:eur",
            since_offset=1,
            since_epoch=epoch,
            limit=-1,
        )
    )["result"]
    assert [(e["key"], e.get("removed", False)) for e in stream["entries"]] == [
        ("EURGBP", False),
        ("EURUSD", True),
    ]
    assert await call(server, "map_stats", channel="prices:eur") == {"result": {"num_keys": 1}}
    assert await call(server, "map_clear", channel="prices:eur") == {"result": {}}
    after = (await call(server, "map_read_stream", channel="prices:eur"))["result"]
    assert after["offset"] == 0 and after["epoch"] != epoch


@pytest.mark.parametrize(
    ("method", "params", "code", "detail"),
    [
        ("map_publish", {"channel": "prices:x", "data": {}}, 107, "key: missing"),
        ("map_publish", {"key": "k", "data": {}}, 107, "channel: missing"),
        ("map_publish", {"channel": "prices:x", "key": "k"}, 107, "data: missing"),
        ("map_publish", {"channel": "prices:x", "key": "k", "b64data": "!!"}, 107, "b64data:"),
        (
            "map_publish",
            {"channel": "prices:x", "key": "k", "data": {}, "key_mode": "maybe"},
            107,
            "key_mode: expected",
        ),
        ("map_publish", {"channel": "chat:x", "key": "k", "data": {}}, 107, ""),
        ("map_publish", {"channel": "nowhere:x", "key": "k", "data": {}}, 102, "unknown namespace"),
        ("map_publish", {"channel": "eph:x", "key": "k", "data": {}, "version": 2}, 107, ""),
        (
            "map_read_state",
            {"channel": "prices:x", "limit": 1, "revision_offset": 1, "revision_epoch": "old"},
            112,
            "",
        ),
        (
            "map_read_stream",
            {"channel": "prices:x", "since_offset": 5, "since_epoch": "old"},
            112,
            "",
        ),
        ("map_stats", {}, 107, "channel: missing"),
        ("publish", {"channel": "prices:x", "data": {}}, 107, ""),  # a map takes keyed writes
    ],
    ids=[
        "no-key",
        "no-channel",
        "no-data",
        "bad-b64data",
        "bad-key-mode",
        "stream-namespace",
        "unknown-namespace",
        "version-in-ephemeral",
        "stale-revision",
        "stale-since",
        "stats-without-channel",
        "stream-publish-to-a-map",
    ],
)
async def test_refusals(
    server: RunningServer,
    ws_client: ClientFactory,
    method: str,
    params: dict[str, Any],
    code: int,
    detail: str,
) -> None:
    body = await call(server, method, **params)
    assert body["error"]["code"] == code, body
    assert detail in body["error"].get("detail", ""), body
    # The server carries on: a good call right after works.
    assert "result" in await call(server, "map_stats", channel="prices:x")
    client = await ws_client(server.ws_url)
    await client.connect(token("control"))
