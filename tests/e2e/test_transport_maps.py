"""Map channels for plain-HTTP clients: ``/events`` and ``/longpoll`` start with a snapshot,
then stream the changes, and resume with the same cursor (docs/transports.md, "Map channels").
"""

from __future__ import annotations

import asyncio
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
    make_config,
    token,
)
from tests.support.maps import map_channels
from tests.support.polling import eventually
from tests.support.streams import open_sse
from tidings.node import Node
from tidings.protocol.cursor import parse_cursor

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(make_config(channels=map_channels()))


def url(server: RunningServer, path: str, *channels: str, **params: str) -> str:
    query = [("channel", c) for c in channels] + list(params.items())
    return f"{server.http_url}{path}?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query)


async def members_live(server: RunningServer, count: int = 1) -> None:
    def live() -> int:
        return sum(len(feed.live) for feed in server.server.transports.feeds.feeds.values())

    await eventually(lambda: live() >= count, what=f"{count} live /events members")


async def state_of(node: Node, channel: str) -> dict[str, Any]:
    state = await node.map_state(channel)
    return {e.key: json.loads(e.data) for e in state.entries}


def apply(state: dict[str, Any], change: dict[str, Any]) -> None:
    if change.get("removed"):
        state.pop(change["key"], None)
    else:
        state[change["key"]] = change["data"]


async def test_events_start_with_a_snapshot_then_changes_then_resume(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    node = server.node
    for n in range(5):
        await node.map_publish("prices:sse", f"k{n}", {"v": n})
    stream = await open_sse(http, url(server, "/events", "prices:sse", token=token()))
    snapshot = await stream.next()
    assert snapshot.event == "snapshot"
    body = snapshot.json()
    top = await node.maps.top("prices:sse")
    assert (body["channel"], body["epoch"], body["offset"]) == ("prices:sse", top.epoch, 5)
    assert [(e["key"], e["data"], e["offset"]) for e in body["entries"]] == [
        (f"k{n}", {"v": n}, n + 1) for n in range(5)
    ]
    assert parse_cursor(snapshot.id or "")["prices:sse"].offset == 5
    state = {e["key"]: e["data"] for e in body["entries"]}
    await members_live(server)
    await node.map_publish("prices:sse", "k1", {"v": "new"})
    await node.map_remove("prices:sse", "k2")
    changed, removed = await stream.events(2)
    assert changed.json() == {
        "channel": "prices:sse",
        "offset": 6,
        "key": "k1",
        "data": {"v": "new"},
    }
    assert removed.json() == {"channel": "prices:sse", "offset": 7, "key": "k2", "removed": True}
    for event in (changed, removed):
        apply(state, event.json())
    last_id = removed.id or ""
    stream.close()
    # Away: three changes. Back with the last id: exactly those, no snapshot.
    await node.map_publish("prices:sse", "k3", {"v": 33})
    await node.map_publish("prices:sse", "k9", {"v": 9})
    await node.map_remove("prices:sse", "k0")
    again = await open_sse(
        http,
        url(server, "/events", "prices:sse", token=token()),
        headers={"Last-Event-ID": last_id},
    )
    missed = await again.events(3)
    assert [event.event for event in missed] == ["message"] * 3
    assert [event.json()["offset"] for event in missed] == [8, 9, 10]
    for event in missed:
        apply(state, event.json())
    assert state == await state_of(node, "prices:sse")
    again.close()


async def test_events_snapshot_again_when_the_position_is_gone(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    node = server.node
    await node.map_publish("prices:gone", "a", {"v": 1})
    stream = await open_sse(http, url(server, "/events", "prices:gone", token=token()))
    first = await stream.next()
    stream.close()
    await node.map_clear("prices:gone")
    await node.map_publish("prices:gone", "b", {"v": 2})
    again = await open_sse(
        http,
        url(server, "/events", "prices:gone", token=token(), last_event_id=first.id or ""),
    )
    snapshot = await again.next()
    assert snapshot.event == "snapshot"
    assert [e["key"] for e in snapshot.json()["entries"]] == ["b"]
    assert snapshot.json()["epoch"] != first.json()["epoch"]
    again.close()


async def test_a_cleared_map_ends_the_stream_and_the_resume_snapshots(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    node = server.node
    await node.map_publish("prices:clr", "a", {"v": 1})
    stream = await open_sse(http, url(server, "/events", "prices:clr", token=token()))
    await stream.next()
    await members_live(server)
    await node.map_clear("prices:clr")
    await stream.ended()  # the browser reconnects with its last id and gets a new snapshot


async def test_ephemeral_maps_snapshot_on_every_connect_and_have_no_cursor_entry(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    node = server.node
    await node.map_publish("eph:sse", "a", {"v": 1})
    stream = await open_sse(http, url(server, "/events", "eph:sse", "prices:x", token=token()))
    events = await stream.events(2)
    snapshots = {e.json()["channel"]: e.json() for e in events}
    assert snapshots["eph:sse"]["entries"] == [{"key": "a", "data": {"v": 1}}]
    assert "eph:sse" not in parse_cursor(events[-1].id or "")
    await members_live(server)
    await node.map_publish("eph:sse", "b", {"v": 2})
    change = await stream.next()
    assert change.json() == {"channel": "eph:sse", "key": "b", "data": {"v": 2}}
    stream.close()


async def test_longpoll_snapshot_changes_and_resume(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    node = server.node
    for n in range(3):
        await node.map_publish("prices:lp", f"k{n}", {"v": n})
    headers = {"Authorization": f"Bearer {token()}"}
    async with http.get(url(server, "/longpoll", "prices:lp"), headers=headers) as response:
        first = await response.json()
    assert first["publications"] == []
    (snapshot,) = first["snapshots"]
    assert snapshot["offset"] == 3 and len(snapshot["entries"]) == 3
    state = {e["key"]: e["data"] for e in snapshot["entries"]}
    await node.map_publish("prices:lp", "k1", {"v": "x"})
    await node.map_remove("prices:lp", "k0")
    cursor = first["cursor"]
    async with http.get(
        url(server, "/longpoll", "prices:lp", cursor=cursor), headers=headers
    ) as response:
        second = await response.json()
    assert "snapshots" not in second
    assert [p["offset"] for p in second["publications"]] == [4, 5]
    for change in second["publications"]:
        apply(state, change)
    assert state == await state_of(node, "prices:lp")
    # Nothing new: the request waits, and a change answers it.
    waiting = http.get(
        url(server, "/longpoll", "prices:lp", cursor=second["cursor"]), headers=headers
    )
    task = asyncio.ensure_future(waiting)
    await eventually(lambda: server.server.transports.waiters, "the long poll to wait")
    await node.map_publish("prices:lp", "k7", {"v": 7})
    async with await task as response:
        third = await response.json()
    assert third["publications"] == [
        {"channel": "prices:lp", "offset": 6, "key": "k7", "data": {"v": 7}}
    ]


async def test_longpoll_refuses_ephemeral_maps(
    server: RunningServer, http: aiohttp.ClientSession, ws_client: ClientFactory
) -> None:
    control = await control_client(server, ws_client)
    headers = {"Authorization": f"Bearer {token()}"}
    async with http.get(url(server, "/longpoll", "eph:lp"), headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == 108
    await assert_still_serving(server, control)
