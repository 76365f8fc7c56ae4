"""Map subscriptions of a session, on bytes: every phase, every refusal code, client writes,
map presence and a cleared map (docs/protocol.md section 14).

The node runs the memory map engine on the harness's fake clock, so key TTLs and the
catch-up timeout pass when the test says so. :func:`sdk_subscribe` follows the requests
centrifuge-js 5.8 sends (state pages, stream pages, until the server answers LIVE) and
merges what it got the way the SDK does, so a test can compare it with the server's state.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from tests.conftest import make_config
from tests.support.clock import FakeClock
from tests.support.maps import map_channels
from tests.support.polling import eventually
from tests.support.sessions import Harness
from tidings.brokers.memory_map import MemoryMapBroker
from tidings.errors import Disconnect
from tidings.node import Node
from tidings.protocol import fossil
from tidings.protocol.codec import encode_reply
from tidings.protocol.messages import Command, SubscribeRequest
from tidings.session import commands

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def node(clock: FakeClock) -> AsyncIterator[Node]:
    config = make_config(channels=map_channels(), broker_unsubscribe_delay=0.0, coalesce_delay=0.0)
    running = Node(config, clock=clock, map_broker=MemoryMapBroker(clock.time, cleanup_interval=0))
    await running.start()
    yield running
    await running.shutdown()


@pytest.fixture
async def client(node: Node, clock: FakeClock) -> Harness:
    harness = Harness(node, clock)
    await harness.connect()
    return harness


def expire(node: Node) -> None:
    broker = node.map_broker
    assert isinstance(broker, MemoryMapBroker)
    broker.expire()


async def fill(node: Node, channel: str, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        await node.map_publish(channel, f"k{n:04d}", {"v": n})


async def server_state(node: Node, channel: str) -> dict[str, Any]:
    state = await node.map_state(channel)
    return {entry.key: json.loads(entry.data) if entry.data else None for entry in state.entries}


@dataclass
class Subscribed:
    """What an SDK-like client ends with: the merged state, its position, the replies."""

    state: dict[str, Any]
    offset: int
    epoch: str
    live: dict[str, Any]
    replies: list[dict[str, Any]] = field(default_factory=list)


async def sdk_subscribe(
    client: Harness,
    channel: str,
    *,
    type: int = 1,
    limit: int = 0,
    recover_from: tuple[int, str] | None = None,
    between: Any = None,
    delta: bool = False,
) -> Subscribed:
    """The request sequence of centrifuge-js 5.8's map subscribe, and its merge.

    ``between`` (an async callable) runs after each reply but the last, as the server's
    world moves on while the client pages.
    """
    base: dict[str, Any] = {"channel": channel, "type": type, "flag": 1}
    if delta:
        base["delta"] = "fossil"
    if limit:
        base["limit"] = limit
    state_entries: list[dict[str, Any]] = []
    stream_entries: list[dict[str, Any]] = []
    replies: list[dict[str, Any]] = []
    flow_offset, flow_epoch = 0, None
    if recover_from is not None:
        phase, recovering = 1, True
        flow_offset, flow_epoch = recover_from
    else:
        phase, recovering = 2, False
    cursor = ""
    while True:
        request = dict(base, phase=phase)
        if phase == 2:
            if cursor:
                request["cursor"] = cursor
            if flow_epoch:
                request.update(offset=flow_offset, epoch=flow_epoch)
        else:
            request.update(offset=flow_offset, epoch=flow_epoch)
            if recovering:
                request["recover"] = True
        reply = await client.request("subscribe", request)
        replies.append(reply)
        assert "subscribe" in reply, reply
        result = reply["subscribe"]
        assert result["type"] == 1
        if not result.get("phase"):
            break
        if result["phase"] == 2:
            if not flow_epoch:
                flow_epoch, flow_offset = result["epoch"], result.get("offset", 0)
            state_entries += result.get("state", [])
            cursor = result.get("cursor", "")
            if not cursor:
                phase = 1
        else:
            stream_entries += result["publications"]
            flow_offset = result["offset"]
        if between is not None:
            await between()
    live = result
    state_entries += live.get("state", [])
    stream_entries += live.get("publications", [])
    merged = {entry["key"]: entry.get("data") for entry in state_entries}
    for change in stream_entries:
        if change.get("removed"):
            merged.pop(change["key"], None)
        else:
            merged[change["key"]] = change.get("data")
    return Subscribed(merged, live.get("offset", 0), live.get("epoch", ""), live, replies)


def apply_pushes(state: dict[str, Any], pushes: list[dict[str, Any]], channel: str) -> int:
    """Apply live map pushes of ``channel`` in order; returns the last offset seen."""
    last = 0
    for push in pushes:
        pub = push.get("push", {}).get("pub")
        if pub is None or push["push"].get("channel") != channel:
            continue
        if pub.get("removed"):
            state.pop(pub["key"], None)
        else:
            state[pub["key"]] = pub.get("data")
        last = pub.get("offset", last)
    return last


# --------------------------------------------------------------------------- STATE -> LIVE


async def test_a_small_map_arrives_whole_in_one_live_reply(node: Node, client: Harness) -> None:
    await fill(node, "prices:a", 5)
    reply = await client.request(
        "subscribe", {"channel": "prices:a", "type": 1, "phase": 2, "flag": 1}
    )
    result = reply["subscribe"]
    top = await node.maps.top("prices:a")
    assert result == {
        "type": 1,
        "epoch": top.epoch,
        "offset": 5,
        "recoverable": True,
        "state": [{"key": f"k{n:04d}", "data": {"v": n}, "offset": n + 1} for n in range(5)],
    }
    await node.map_publish("prices:a", "k0001", {"v": "new"})
    await node.map_remove("prices:a", "k0002")
    assert await client.flush() == [
        {
            "push": {
                "channel": "prices:a",
                "pub": {"key": "k0001", "data": {"v": "new"}, "offset": 6},
            }
        },
        {"push": {"channel": "prices:a", "pub": {"key": "k0002", "offset": 7, "removed": True}}},
    ]


async def test_state_pages_with_a_frozen_top_then_live(node: Node, client: Harness) -> None:
    await fill(node, "prices:p", 250)
    subscribed = await sdk_subscribe(client, "prices:p", limit=100)
    phases = [reply["subscribe"].get("phase", 0) for reply in subscribed.replies]
    assert phases == [2, 2, 0]
    first, second = (reply["subscribe"] for reply in subscribed.replies[:2])
    assert first["cursor"] and second["cursor"] and first["offset"] == second["offset"] == 250
    assert [len(reply["subscribe"]["state"]) for reply in subscribed.replies] == [100, 100, 50]
    assert subscribed.state == await server_state(node, "prices:p")
    assert subscribed.offset == 250 and subscribed.live["recoverable"] is True


async def test_changes_while_paging_come_through_the_stream(node: Node, client: Harness) -> None:
    """More changes than a page while paging: STATE, then STREAM pages, then LIVE."""
    await fill(node, "prices:busy", 250)
    writes = iter(range(10_000))

    async def world_moves_on() -> None:
        for _ in range(130):
            n = next(writes)
            if n % 10 == 3:
                await node.map_remove("prices:busy", f"k{n % 250:04d}")
            else:
                await node.map_publish("prices:busy", f"k{(n * 7) % 300:04d}", {"w": n})

    subscribed = await sdk_subscribe(client, "prices:busy", limit=100, between=world_moves_on)
    phases = [reply["subscribe"].get("phase", 0) for reply in subscribed.replies]
    assert phases[:3] == [2, 2, 2] and 1 in phases and phases[-1] == 0, phases
    # Later state pages leave out what was written after the frozen top...
    frozen = subscribed.replies[0]["subscribe"]["offset"]
    for reply in subscribed.replies[:3]:
        assert all(entry["offset"] <= frozen for entry in reply["subscribe"]["state"])
    # ...and a STREAM page always carries changes and the offset of its last one.
    for reply in subscribed.replies:
        result = reply["subscribe"]
        if result.get("phase") == 1:
            assert (
                result["publications"] and result["offset"] == result["publications"][-1]["offset"]
            )
    assert subscribed.state == await server_state(node, "prices:busy")
    assert subscribed.offset == (await node.maps.top("prices:busy")).offset


async def test_ephemeral_maps_go_live_at_the_last_page_without_offsets(
    node: Node, client: Harness
) -> None:
    await fill(node, "eph:1", 3)
    subscribed = await sdk_subscribe(client, "eph:1")
    assert subscribed.state == await server_state(node, "eph:1")
    live = subscribed.live
    assert "recoverable" not in live and "offset" not in live and live["epoch"]
    assert all("offset" not in entry for entry in live["state"])
    await node.map_publish("eph:1", "k0000", {"v": "x"})
    assert await client.flush() == [
        {"push": {"channel": "eph:1", "pub": {"key": "k0000", "data": {"v": "x"}}}}
    ]
    reply = await client.request(
        "subscribe", {"channel": "eph:1", "type": 1, "phase": 1, "offset": 0, "recover": True}
    )
    assert reply["error"]["code"] == 105  # already subscribed


# --------------------------------------------------------------------------- recovery


async def test_recovery_returns_exactly_the_changed_keys(
    node: Node, client: Harness, clock: FakeClock
) -> None:
    await fill(node, "prices:r", 100)
    before = await sdk_subscribe(client, "prices:r")
    await client.send({"id": 90, "unsubscribe": {"channel": "prices:r"}})
    for n in range(50):  # the client is away: 50 keys change
        if n % 5 == 0:
            await node.map_remove("prices:r", f"k{n:04d}")
        else:
            await node.map_publish("prices:r", f"k{n:04d}", {"v": -n})
    again = Harness(node, clock)
    await again.connect()
    after = await sdk_subscribe(again, "prices:r", recover_from=(before.offset, before.epoch))
    live = after.live
    assert live["was_recovering"] is True and live["recovered"] is True
    assert [change["offset"] for change in live["publications"]] == list(range(101, 151))
    assert "state" not in live
    merged = dict(before.state)
    apply_pushes(
        merged,
        [{"push": {"channel": "prices:r", "pub": p}} for p in live["publications"]],
        "prices:r",
    )
    assert merged == await server_state(node, "prices:r")


async def test_recovery_far_behind_pages_the_stream_first(node: Node, client: Harness) -> None:
    await fill(node, "prices:far", 10)
    top = await node.maps.top("prices:far")
    await fill(node, "prices:far", 350, start=10)
    after = await sdk_subscribe(
        client, "prices:far", limit=100, recover_from=(top.offset, top.epoch)
    )
    phases = [reply["subscribe"].get("phase", 0) for reply in after.replies]
    assert phases == [1, 1, 1, 0]
    assert after.live["recovered"] is True
    assert len(after.state) == 350 and after.offset == 360


async def test_recovery_from_another_epoch_is_112_and_the_flow_is_gone(
    node: Node, client: Harness
) -> None:
    await fill(node, "prices:e", 3)
    reply = await client.request(
        "subscribe",
        {
            "channel": "prices:e",
            "type": 1,
            "phase": 1,
            "offset": 2,
            "epoch": "gone",
            "recover": True,
        },
    )
    assert reply["error"] == {"code": 112, "message": "unrecoverable position"}
    assert "prices:e" not in client.session.subscriptions
    fresh = await sdk_subscribe(client, "prices:e")  # from scratch, as the SDK does next
    assert fresh.state == await server_state(node, "prices:e")


async def test_a_catch_up_beyond_the_live_limit_is_112(node: Node, client: Harness) -> None:
    await fill(node, "tight:1", 3)
    top = await node.maps.top("tight:1")
    await fill(node, "tight:1", 8, start=3)  # 8 changes: within a page (10), over the limit (5)
    reply = await client.request(
        "subscribe",
        {
            "channel": "tight:1",
            "type": 1,
            "phase": 1,
            "offset": top.offset,
            "epoch": top.epoch,
            "recover": True,
        },
    )
    assert reply["error"]["code"] == 112


async def test_a_trimmed_stream_is_112(node: Node, client: Harness) -> None:
    await fill(node, "tight:trim", 2)
    top = await node.maps.top("tight:trim")
    await fill(node, "tight:trim", 30, start=2)  # stream_size 20: offset 3 is gone
    reply = await client.request(
        "subscribe",
        {
            "channel": "tight:trim",
            "type": 1,
            "phase": 1,
            "offset": top.offset,
            "epoch": top.epoch,
            "recover": True,
        },
    )
    assert reply["error"]["code"] == 112


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"channel": "prices:x", "type": 2, "phase": 2}, 103),  # not the namespace's type
        ({"channel": "chat:x", "type": 1, "phase": 2}, 103),  # a stream namespace
        ({"channel": "prices:x", "type": 0}, 103),  # a stream subscribe to a map namespace
        ({"channel": "prices:x", "type": 1, "phase": 2, "cursor": "k1", "offset": 1}, 103),
        ({"channel": "prices:x", "type": 1, "phase": 1, "offset": 0}, 103),  # no recover, no flow
        ({"channel": "prices:x", "type": 1, "phase": 0}, 107),  # clients never ask for LIVE
        ({"channel": "prices:x", "type": 1, "phase": 7}, 107),
        ({"channel": "eph:x", "type": 1, "phase": 1, "recover": True}, 107),  # no stream
        ({"channel": "prices:x", "type": 1, "phase": 2, "tf": {"op": "eq"}}, 107),
        ({"channel": "prices:x", "type": 4}, 108),  # shared poll
        ({"channel": "nowhere:x", "type": 1, "phase": 2}, 102),
    ],
    ids=[
        "wrong-type",
        "stream-namespace",
        "stream-subscribe-to-a-map",
        "continuation-without-flow",
        "stream-without-recover",
        "live-phase",
        "unknown-phase",
        "stream-in-ephemeral",
        "tags-filter",
        "shared-poll",
        "unknown-namespace",
    ],
)
async def test_refusals(client: Harness, request_: dict[str, Any], code: int) -> None:
    reply = await client.request("subscribe", request_)
    assert reply["error"]["code"] == code, reply
    assert request_["channel"] not in client.session.subscriptions
    assert not client.session.closed
    # The connection carries on: a good subscribe still works.
    ok = await client.request("subscribe", {"channel": "prices:ok", "type": 1, "phase": 2})
    assert "subscribe" in ok


async def test_a_new_first_request_mid_flow_or_live_is_105(node: Node, client: Harness) -> None:
    await fill(node, "prices:dup", 250)
    first = await client.request(
        "subscribe", {"channel": "prices:dup", "type": 1, "phase": 2, "limit": 100}
    )
    assert first["subscribe"]["cursor"]
    again = await client.request(
        "subscribe", {"channel": "prices:dup", "type": 1, "phase": 2, "limit": 100}
    )
    assert again["error"] == {"code": 105, "message": "already subscribed"}
    await sdk_subscribe(client, "prices:live")
    live_again = await client.request(
        "subscribe", {"channel": "prices:live", "type": 1, "phase": 2}
    )
    assert live_again["error"]["code"] == 105


async def test_flows_count_toward_the_channel_limit(node: Node, clock: FakeClock) -> None:
    node.config.client_channel_limit = 1
    client = Harness(node, clock)
    await client.connect()
    await fill(node, "prices:l", 150)
    first = await client.request(
        "subscribe", {"channel": "prices:l", "type": 1, "phase": 2, "limit": 100}
    )
    assert first["subscribe"]["cursor"]
    over = await client.request("subscribe", {"channel": "prices:m", "type": 1, "phase": 2})
    assert over["error"]["code"] == 106


async def test_two_requests_of_one_flow_at_once_get_113(node: Node, client: Harness) -> None:
    """Commands of one connection run one at a time, so a client cannot produce this; the
    guard is for callers that dispatch concurrently (as this test does)."""
    await fill(node, "prices:c", 250)
    first = await client.request(
        "subscribe", {"channel": "prices:c", "type": 1, "phase": 2, "limit": 100}
    )
    cursor, offset, epoch = (first["subscribe"][k] for k in ("cursor", "offset", "epoch"))
    page = {
        "channel": "prices:c",
        "type": 1,
        "phase": 2,
        "limit": 100,
        "cursor": cursor,
        "offset": offset,
        "epoch": epoch,
    }
    broker = node.map_broker
    read_state = broker.read_state
    gate = asyncio.Event()

    async def slow_read_state(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()  # an engine that takes its time (Redis under load)
        return await read_state(*args, **kwargs)

    broker.read_state = slow_read_state  # type: ignore[method-assign]
    first, second = (Command(id=n, subscribe=SubscribeRequest(**page)) for n in (10, 11))
    running = asyncio.create_task(commands.dispatch(client.session, "subscribe", first))
    await eventually(lambda: client.session.subscriptions["prices:c"].map.busy, "the page read")
    await commands.dispatch(client.session, "subscribe", second)
    gate.set()
    await running
    written = client.transport.take()
    replies = {document["id"]: document for document in written}
    assert "subscribe" in replies[10]
    assert replies[11] == {
        "id": 11,
        "error": {"code": 113, "message": "concurrent pagination", "temporary": True},
    }


async def test_a_slow_flow_is_disconnected_with_3008(
    node: Node, client: Harness, clock: FakeClock
) -> None:
    await fill(node, "prices:slow", 250)
    first = await client.request(
        "subscribe", {"channel": "prices:slow", "type": 1, "phase": 2, "limit": 100}
    )
    clock.advance(5.5)  # subscribe_catch_up_timeout is 5 s
    result = first["subscribe"]
    await client.send(
        {
            "id": 50,
            "subscribe": {
                "channel": "prices:slow",
                "type": 1,
                "phase": 2,
                "limit": 100,
                "cursor": result["cursor"],
                "offset": result["offset"],
                "epoch": result["epoch"],
            },
        }
    )
    assert client.transport.closed_with == Disconnect(3008, "slow")


async def test_an_abandoned_flow_is_swept(node: Node, client: Harness, clock: FakeClock) -> None:
    await fill(node, "prices:gone", 250)
    first = await client.request(
        "subscribe", {"channel": "prices:gone", "type": 1, "phase": 2, "limit": 100}
    )
    assert "prices:gone" in client.session.subscriptions
    clock.advance(10.5)
    assert "prices:gone" not in client.session.subscriptions
    result = first["subscribe"]
    late = await client.request(
        "subscribe",
        {
            "channel": "prices:gone",
            "type": 1,
            "phase": 2,
            "limit": 100,
            "cursor": result["cursor"],
            "offset": result["offset"],
            "epoch": result["epoch"],
        },
    )
    assert late["error"]["code"] == 103
    assert (await sdk_subscribe(client, "prices:gone")).offset == 250


# --------------------------------------------------------------------------- client writes


async def test_client_writes_and_removals(node: Node, client: Harness, clock: FakeClock) -> None:
    await sdk_subscribe(client, "prices:w")
    written = await client.request(
        "publish", {"channel": "prices:w", "type": 1, "key": "z", "data": {"v": 1}}
    )
    assert written["publish"] == {}
    (push,) = await client.flush()  # the writer gets its own change as a push
    assert push["push"]["pub"]["key"] == "z" and push["push"]["pub"]["info"]["user"] == "alice"
    removed = await client.request(
        "publish", {"channel": "prices:w", "type": 1, "key": "z", "removed": True}
    )
    assert removed["publish"] == {}
    missing = await client.request(
        "publish", {"channel": "prices:w", "type": 1, "key": "nope", "removed": True}
    )
    assert missing["publish"] == {}  # a removal of nothing is a silent no-op
    assert [p["push"]["pub"] for p in await client.flush()] == [
        {"key": "z", "offset": 2, "removed": True}
    ]
    outsider = Harness(node, clock)
    await outsider.connect("bob")
    refused = await outsider.request(
        "publish", {"channel": "prices:w", "type": 1, "key": "y", "data": {}}
    )
    assert refused["error"]["code"] == 103  # allow_publish_for_subscriber only
    for params, code in (
        ({"channel": "prices:w", "type": 1, "key": "", "data": {}}, 107),
        ({"channel": "prices:w", "type": 1, "key": "k"}, 107),  # no data
        ({"channel": "chat:w", "type": 1, "key": "k", "data": {}}, 107),  # not a map
        ({"channel": "prices:w", "data": {}}, 103),  # a stream publish: no stream rights
        ({"channel": "eph:w", "type": 1, "key": "k", "data": {}}, 103),  # no write permission
    ):
        reply = await client.request("publish", params)
        assert reply["error"]["code"] == code, (params, reply)
    assert not client.session.closed


async def test_client_key_and_remove_client_on_unsubscribe(
    node: Node, client: Harness, clock: FakeClock
) -> None:
    watcher = Harness(node, clock)
    await watcher.connect("bob")
    await sdk_subscribe(watcher, "cursors:doc")
    await sdk_subscribe(client, "cursors:doc")
    reply = await client.request(
        "publish", {"channel": "cursors:doc", "type": 1, "key": "ignored", "data": {"x": 3}}
    )
    assert reply["publish"] == {}
    client_id = client.session.client_id
    assert await server_state(node, "cursors:doc") == {client_id: {"x": 3}}
    await client.send({"id": 70, "unsubscribe": {"channel": "cursors:doc"}})
    await asyncio.sleep(0)  # the leave runs as its own task
    await asyncio.sleep(0)
    assert await server_state(node, "cursors:doc") == {}
    pubs = [p["push"]["pub"] for p in await watcher.flush()]
    assert pubs[-1] == {"key": client_id, "removed": True}


# --------------------------------------------------------------------------- map presence


async def test_map_presence_of_clients_and_users(
    node: Node, client: Harness, clock: FakeClock
) -> None:
    watcher = Harness(node, clock)
    await watcher.connect("carol")
    clients_view = await sdk_subscribe(watcher, "clients:game:1", type=2)
    users_view = await sdk_subscribe(watcher, "users:game:1", type=3)
    assert clients_view.state == {} and users_view.state == {}
    await client.request("subscribe", {"channel": "game:1"})
    second = Harness(node, clock)
    await second.connect()  # alice again, on another connection
    await second.request("subscribe", {"channel": "game:1"})
    pubs = [p["push"] for p in await watcher.flush()]
    by_channel = {(push["channel"], push["pub"]["key"]): push["pub"] for push in pubs}
    alice_1 = by_channel[("clients:game:1", client.session.client_id)]
    assert (
        alice_1["info"]["user"] == "alice" and alice_1["info"]["client"] == client.session.client_id
    )
    assert "data" not in alice_1
    assert ("clients:game:1", second.session.client_id) in by_channel
    assert [key for channel, key in by_channel if channel == "users:game:1"] == ["alice"]
    assert by_channel[("users:game:1", "alice")] == {"key": "alice", "offset": 1}
    # One connection leaves: its entry goes; the user stays while another connection holds it.
    await client.send({"id": 80, "unsubscribe": {"channel": "game:1"}})
    for _ in range(3):
        await asyncio.sleep(0)
    pubs = [p["push"]["pub"] for p in await watcher.flush()]
    assert pubs == [{"key": client.session.client_id, "offset": 3, "removed": True}]
    # Held entries are refreshed without a change; once nobody holds the user it expires.
    await second.send({"id": 81, "unsubscribe": {"channel": "game:1"}})
    for _ in range(3):
        await asyncio.sleep(0)
    assert await server_state(node, "users:game:1") == {"alice": None}
    clock.advance(61)
    expire(node)
    assert await server_state(node, "users:game:1") == {}


async def test_map_presence_survives_a_quick_resubscribe(node: Node, client: Harness) -> None:
    """The leave of the first subscription ends before the next one writes its entry, so
    the entry is there while the client is subscribed (it used to be removed after it)."""
    frame = [
        {"id": 10, "subscribe": {"channel": "game:q"}},
        {"id": 11, "unsubscribe": {"channel": "game:q"}},
        {"id": 12, "subscribe": {"channel": "game:q"}},
    ]
    await client.send(*frame)
    await eventually(lambda: client.session.leaving is None, "the leave to finish")
    state = await server_state(node, "clients:game:q")
    assert list(state) == [client.session.client_id]


async def test_held_presence_entries_outlive_their_ttl(
    node: Node, client: Harness, clock: FakeClock
) -> None:
    await client.request("subscribe", {"channel": "game:2"})
    for _ in range(6):  # 150 s, key_ttl 60 s: only the node's refreshes keep the entry
        await client_pong_for(client, 25)
        expire(node)
    assert set(await server_state(node, "clients:game:2")) == {client.session.client_id}
    assert await server_state(node, "users:game:2") == {"alice": None}


async def client_pong_for(client: Harness, seconds: float) -> None:
    """Let time pass like a well-behaved client, and let the node's refresh task run."""
    while seconds > 0:
        step = min(5.0, seconds)
        seconds -= step
        client.clock.advance(step)
        written = client.transport.take()
        client.pushes += [document for document in written if document]
        if {} in written:
            await client.send({})
        for _ in range(5):
            await asyncio.sleep(0)


# --------------------------------------------------------------------------- TTL, clear


async def test_expired_keys_reach_subscribers_as_removals(
    node: Node, client: Harness, clock: FakeClock
) -> None:
    await node.map_publish("prices:ttl", "a", {"v": 1})
    subscribed = await sdk_subscribe(client, "prices:ttl")
    assert subscribed.state == {"a": {"v": 1}}
    for _ in range(3):
        await client_pong_for(client, 20.5)
    expire(node)
    assert [p["push"]["pub"] for p in await client.flush()] == [
        {"key": "a", "offset": 2, "removed": True}
    ]


async def test_map_clear_makes_live_subscribers_reload(node: Node, client: Harness) -> None:
    await fill(node, "prices:clr", 3)
    before = await sdk_subscribe(client, "prices:clr")
    await node.map_clear("prices:clr")
    pushes = await client.flush()
    assert pushes == [
        {
            "push": {
                "channel": "prices:clr",
                "unsubscribe": {"code": 2502, "reason": "state invalidated"},
            }
        }
    ]
    await node.map_publish("prices:clr", "new", {"v": 1})
    after = await sdk_subscribe(client, "prices:clr")  # what centrifuge-js does after 2502
    assert after.epoch != before.epoch and after.state == {"new": {"v": 1}}


async def test_the_reply_is_encoded_as_the_sheet_shows() -> None:
    """A STATE page on the wire: type, phase, cursor, frozen position, state entries."""
    from tidings.protocol.maps import STATE, MapPublication, MapSubscribeResult

    reply = MapSubscribeResult(
        1,
        phase=STATE,
        cursor="b",
        epoch="E1",
        offset=5,
        state=[MapPublication("a", offset=1), MapPublication("b", offset=2)],
    )
    assert encode_reply(2, "subscribe", reply) == (
        b'{"id":2,"subscribe":{"type":1,"phase":2,"epoch":"E1","offset":5,"cursor":"b",'
        b'"state":[{"key":"a","offset":1},{"key":"b","offset":2}]}}'
    )


async def test_an_epoch_change_between_pages_is_112(node: Node, client: Harness) -> None:
    await fill(node, "prices:pg", 250)
    first = (
        await client.request(
            "subscribe", {"channel": "prices:pg", "type": 1, "phase": 2, "limit": 100}
        )
    )["subscribe"]
    await node.map_clear("prices:pg")
    second = await client.request(
        "subscribe",
        {
            "channel": "prices:pg",
            "type": 1,
            "phase": 2,
            "limit": 100,
            "cursor": first["cursor"],
            "offset": first["offset"],
            "epoch": first["epoch"],
        },
    )
    assert second["error"]["code"] == 112
    assert "prices:pg" not in client.session.subscriptions  # the SDK starts over: no 105
    assert (await sdk_subscribe(client, "prices:pg")).state == {}


async def test_a_stream_request_with_another_epoch_than_the_flows_is_112(
    node: Node, client: Harness
) -> None:
    await fill(node, "prices:se", 250)
    replies = []

    async def write_more() -> None:
        await fill(node, "prices:se", 150, start=1000)

    first = (
        await client.request(
            "subscribe", {"channel": "prices:se", "type": 1, "phase": 2, "limit": 100}
        )
    )["subscribe"]
    cursor, offset, epoch = first["cursor"], first["offset"], first["epoch"]
    while cursor:
        await write_more()
        page = (
            await client.request(
                "subscribe",
                {
                    "channel": "prices:se",
                    "type": 1,
                    "phase": 2,
                    "limit": 100,
                    "cursor": cursor,
                    "offset": offset,
                    "epoch": epoch,
                },
            )
        )["subscribe"]
        replies.append(page)
        cursor = page.get("cursor", "")
    assert replies[-1]["phase"] == 2  # far behind: the client must read the stream
    wrong = await client.request(
        "subscribe",
        {"channel": "prices:se", "type": 1, "phase": 1, "offset": offset, "epoch": "other"},
    )
    assert wrong["error"]["code"] == 112


async def test_presence_of_a_map_namespace(node: Node, client: Harness) -> None:
    """The namespace's own ``presence`` works for map subscribers as for streams."""
    await sdk_subscribe(client, "pmap:1")
    assert set(await node.presence_of("pmap:1")) == {client.session.client_id}
    await client.send({"id": 90, "unsubscribe": {"channel": "pmap:1"}})
    for _ in range(3):
        await asyncio.sleep(0)
    assert await node.presence_of("pmap:1") == {}


async def test_a_slow_map_subscriber_gets_the_latest_of_each_key_and_stays(
    node: Node, client: Harness
) -> None:
    """Maps conflate by default: a client that cannot keep up is never cut for it."""
    subscribed = await sdk_subscribe(client, "prices:slow2")
    client.session.on_write_paused()  # the transport's buffer is full
    for n in range(1, 301):
        await node.map_publish("prices:slow2", f"s{n % 7}", {"p": n})
    await asyncio.sleep(0)
    assert client.transport.take() == []
    client.clock.advance(node.config.slow_timeout + 1)
    assert not client.session.closed
    client.transport.take()  # pings
    client.session.on_write_resumed()
    pubs = [d["push"]["pub"] for d in client.transport.take() if "pub" in d.get("push", {})]
    assert {p["key"]: p["data"]["p"] for p in pubs} == {f"s{n % 7}": n for n in range(294, 301)}
    assert [p["offset"] for p in pubs] == list(range(294, 301))
    state = dict(subscribed.state)
    changes = [{"push": {"channel": "prices:slow2", "pub": p}} for p in pubs]
    apply_pushes(state, changes, "prices:slow2")
    assert state == await server_state(node, "prices:slow2")


async def test_conflate_by_none_turns_conflation_off_for_a_map(node: Node) -> None:
    assert node.rules.options("prices:x").conflates  # maps conflate by default
    plain = msgspec.structs.replace(node.rules.options("prices:x"), conflate_by="none")
    assert not plain.conflates


# --------------------------------------------------------------------------- fossil delta


def board(n: int, tag: str = "") -> dict[str, Any]:
    """A ~400-byte map value where one field changes between writes."""
    return {"n": n, "tag": tag, "levels": [{"level": i, "bid": 100 + i} for i in range(12)]}


class MapSdk:
    """centrifuge-js 5.8 on a map subscription whose LIVE reply said ``delta: true``: the
    state and stream entries seed one delta base per key, a removal ends it."""

    def __init__(self, state: dict[str, Any]) -> None:
        assert all(isinstance(text, str) for text in state.values()), state
        self.previous = {key: text.encode() for key, text in state.items()}

    def decode(self, pub: dict[str, Any]) -> Any:
        text = pub["data"]
        assert isinstance(text, str), "a delta subscriber must get data as a JSON string"
        key = pub["key"]
        full = (
            fossil.apply(self.previous[key], text.encode()) if pub.get("delta") else text.encode()
        )
        if pub.get("removed"):
            del self.previous[key]
        else:
            self.previous[key] = full
        return json.loads(full)


def entries_of(reply: dict[str, Any]) -> list[dict[str, Any]]:
    result = reply["subscribe"]
    return [*result.get("state", []), *result.get("publications", [])]


def live_pubs(pushes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [push["push"]["pub"] for push in pushes if "pub" in push.get("push", {})]


async def test_map_delta_pages_are_strings_then_live_changes_are_per_key_deltas(
    node: Node, client: Harness
) -> None:
    for n in range(25):
        await node.map_publish("dmap:a", f"k{n:04d}", board(n))
    bursts = iter([range(0, 12), range(12, 24)])

    async def world_moves_on() -> None:
        """Two bursts while the state is paged: the flow reads two STREAM pages after it,
        then catches up with the rest (under the live limit of 10) going LIVE."""
        for n in next(bursts, ()):
            await node.map_publish("dmap:a", f"k{(n * 7) % 30:04d}", board(n, "w"))

    subscribed = await sdk_subscribe(client, "dmap:a", limit=10, between=world_moves_on, delta=True)
    phases = [reply["subscribe"].get("phase", 0) for reply in subscribed.replies]
    assert 2 in phases and 1 in phases and phases[-1] == 0, phases
    for reply in subscribed.replies:  # every page's data is a JSON string (the key's base)
        assert all(isinstance(entry["data"], str) for entry in entries_of(reply))
        assert "delta" not in reply["subscribe"] or reply["subscribe"].get("phase", 0) == 0
    assert subscribed.live["delta"] is True
    values = {key: json.loads(text) for key, text in subscribed.state.items()}
    assert values == await server_state(node, "dmap:a")

    sdk = MapSdk(subscribed.state)
    await node.map_publish("dmap:a", "k0001", board(1001))
    await node.map_publish("dmap:a", "k0002", board(1002))
    await node.map_publish("dmap:a", "k0001", board(1003))
    pubs = live_pubs(await client.flush())
    assert [(p["key"], p["delta"]) for p in pubs] == [
        ("k0001", True),
        ("k0002", True),
        ("k0001", True),
    ]
    assert all(len(p["data"]) < len(json.dumps(board(1001))) / 4 for p in pubs)
    assert [sdk.decode(p) for p in pubs] == [board(1001), board(1002), board(1003)]


async def test_a_map_removal_ends_the_keys_delta_chain(node: Node, client: Harness) -> None:
    await node.map_publish("dmap:r", "a", board(1))
    sdk = MapSdk((await sdk_subscribe(client, "dmap:r", delta=True)).state)
    await node.map_remove("dmap:r", "a")
    await node.map_publish("dmap:r", "a", board(2))
    await node.map_publish("dmap:r", "a", board(3))
    pubs = live_pubs(await client.flush())
    assert pubs[0] == {"key": "a", "data": "null", "offset": 2, "removed": True}
    assert [p.get("delta", False) for p in pubs] == [False, False, True]
    assert [sdk.decode(p) for p in pubs] == [None, board(2), board(3)]
    assert list(sdk.previous) == ["a"]


async def test_map_delta_recovery_catches_up_whole_then_deltas(
    node: Node, client: Harness, clock: FakeClock
) -> None:
    for n in range(5):
        await node.map_publish("dmap:rec", f"k{n}", board(n))
    before = await sdk_subscribe(client, "dmap:rec", delta=True)
    sdk = MapSdk(before.state)
    await client.send({"id": 90, "unsubscribe": {"channel": "dmap:rec"}})
    await node.map_publish("dmap:rec", "k1", board(11))  # the client is away
    await node.map_remove("dmap:rec", "k2")
    again = Harness(node, clock)
    await again.connect()
    after = await sdk_subscribe(
        again, "dmap:rec", recover_from=(before.offset, before.epoch), delta=True
    )
    live = after.live
    assert live["recovered"] is True and live["delta"] is True
    assert live["publications"] == [
        {"key": "k1", "data": json.dumps(board(11), separators=(",", ":")), "offset": 6},
        {"key": "k2", "data": "null", "offset": 7, "removed": True},
    ]
    for pub in live["publications"]:  # the SDK applies the catch-up as it would a push
        sdk.decode(pub)
    await node.map_publish("dmap:rec", "k1", board(12))
    (pub,) = live_pubs(await again.flush())
    assert pub["delta"] is True and sdk.decode(pub) == board(12)


async def test_a_map_write_that_does_not_ask_goes_whole(node: Node, client: Harness) -> None:
    """``delta=False`` overrides the namespace's ``delta_publish`` (as a stream publish's)."""
    await node.map_publish("dmap:w", "a", board(1))
    sdk = MapSdk((await sdk_subscribe(client, "dmap:w", delta=True)).state)
    await node.map_publish("dmap:w", "a", board(2), delta=False)
    await node.map_publish("dmap:w", "a", board(3))
    pubs = live_pubs(await client.flush())
    assert [p.get("delta", False) for p in pubs] == [False, True]
    assert [sdk.decode(p) for p in pubs] == [board(2), board(3)]


@pytest.mark.parametrize(
    ("channel", "asks"),
    [("deph:x", True), ("prices:x", True), ("dmap:x", False)],
    ids=["ephemeral map", "namespace without fossil", "not asked"],
)
async def test_map_delta_not_negotiated(
    node: Node, client: Harness, channel: str, asks: bool
) -> None:
    await node.map_publish(channel, "a", board(1))
    subscribed = await sdk_subscribe(client, channel, delta=asks)
    assert "delta" not in subscribed.live
    assert subscribed.live["state"][0]["data"] == board(1)  # raw JSON, as without asking
    await node.map_publish(channel, "a", board(2), delta=True)
    (pub,) = live_pubs(await client.flush())
    assert pub["data"] == board(2) and "delta" not in pub


async def test_map_deltas_are_made_once_per_change_for_every_subscriber(
    node: Node, client: Harness, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await node.map_publish("dmap:once", "a", board(1))
    others = [Harness(node, clock) for _ in range(3)]
    for other in others:
        await other.connect()
    for harness in (client, *others):
        await sdk_subscribe(harness, "dmap:once", delta=True)
    made: list[bytes] = []
    create = fossil.create

    def counting(base: bytes, target: bytes) -> bytes:
        made.append(target)
        return create(base, target)

    monkeypatch.setattr(fossil, "create", counting)
    await node.map_publish("dmap:once", "a", board(2))
    await node.map_publish("dmap:once", "a", board(3))
    received = [live_pubs(await harness.flush()) for harness in (client, *others)]
    assert all(pubs == received[0] for pubs in received) and len(received[0]) == 2
    assert len(made) == 2  # one delta per change, for the four subscribers
