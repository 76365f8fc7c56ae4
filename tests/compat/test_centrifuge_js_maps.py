"""centrifuge-js 5.8 map subscriptions (``newMapSubscription``, ``newMapClientsSubscription``,
``newMapUsersSubscription``, unmodified, under Node) against tidings, on WebSocket and on the
SSE emulation, on one node and across two nodes on Redis (docs/protocol.md section 14).

The driver keeps each map subscription's state as an application would (``sync`` replaces
it, ``update`` changes one key); tests compare it with the server's state, key by key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.compat.conftest import JsClient, JsClientFactory, JsError
from tests.conftest import (
    ClientFactory,
    RunningServer,
    StartServer,
    assert_still_serving,
    control_client,
    make_config,
    token,
)
from tests.support.http import api
from tests.support.maps import map_channels
from tests.support.polling import eventually
from tests.support.redis import delete_keys
from tidings.node import Node

pytestmark = [pytest.mark.node, pytest.mark.timeout(120)]

RECONNECT: dict[str, Any] = {
    "minReconnectDelay": 50,
    "maxReconnectDelay": 500,
}
RESUBSCRIBE: dict[str, Any] = {"minResubscribeDelay": 50, "maxResubscribeDelay": 500}

TRANSPORTS = ["websocket", "sse"]


def endpoints(server: RunningServer, transport: str) -> tuple[Any, dict[str, Any]]:
    """The URL argument and options of ``new Centrifuge`` for one transport."""
    if transport == "websocket":
        return server.ws_url, {}
    return (
        [{"transport": "sse", "endpoint": f"{server.http_url}/connection/sse"}],
        {"emulationEndpoint": f"{server.http_url}/emulation"},
    )


async def open_js(
    js_client: JsClientFactory,
    server: RunningServer,
    transport: str,
    user: str = "alice",
    *,
    protobuf: bool = False,
) -> JsClient:
    js = await js_client()
    url, options = endpoints(server, transport)
    if protobuf:  # the package's Protobuf build (centrifuge/build/protobuf)
        await js.call(
            "create", url=url, token=token(user), protobuf=True, options={**RECONNECT, **options}
        )
    else:
        await js.create(url, token=token(user), **RECONNECT, **options)
    connected = await js.connect()
    assert connected["transport"] == transport
    return js


async def map_subscribe(
    js: JsClient, channel: str, kind: str = "map", **options: Any
) -> dict[str, Any]:
    """Subscribe and wait until the SDK reports the subscription and its first sync."""
    await js.call(
        "new_map_subscription", channel=channel, kind=kind, options={**RESUBSCRIBE, **options}
    )
    await js.call("subscribe", channel=channel)
    subscribed: dict[str, Any] = await js.log.next("subscribed", channel)
    await js.log.next("sync", channel)
    return subscribed


async def server_state(node: Node, channel: str) -> dict[str, Any]:
    state = await node.map_state(channel)
    return {e.key: json.loads(e.data) if e.data else None for e in state.entries}


def json_values(state: dict[str, Any]) -> dict[str, Any]:
    """The driver's map state with Protobuf values (bytes, sent as ``__bytes__``) parsed."""
    return {
        key: json.loads(base64.b64decode(value["__bytes__"]))
        if isinstance(value, dict) and "__bytes__" in value
        else value
        for key, value in state.items()
    }


async def same_state(js: JsClient, node: Node, channel: str) -> None:
    """Wait until the SDK-side state equals the server's, key by key."""
    expected: dict[str, Any] = {}

    async def equal() -> bool:
        nonlocal expected
        expected = await server_state(node, channel)
        return json_values(await js.call("map_state", channel=channel)) == expected

    await eventually(equal, f"the client's {channel} to equal the server's", within=15)


def count_pages(node: Node) -> list[tuple[int, str]]:
    """Record the (limit, cursor) of every state read the node makes from now on."""
    seen: list[tuple[int, str]] = []
    read_state = node.maps.read_state

    async def recording(channel: str, **kwargs: Any) -> Any:
        seen.append((kwargs.get("limit", -1), kwargs.get("cursor", "")))
        return await read_state(channel, **kwargs)

    node.maps.read_state = recording  # type: ignore[method-assign]
    return seen


async def write_keys(node: Node, channel: str, count: int, tag: str = "v") -> None:
    for n in range(count):
        await node.map_publish(channel, f"key{n:04d}", {tag: n, "pad": "x" * 20})


async def fifty_changes(writer: Node, channel: str) -> None:
    """30 updates, 10 new keys, 10 removals."""
    for n in range(30):
        await writer.map_publish(channel, f"key{n:04d}", {"changed": n})
    for n in range(10):
        await writer.map_publish(channel, f"new{n}", {"new": n})
    for n in range(10):
        await writer.map_remove(channel, f"key{990 + n:04d}")


# --------------------------------------------------------------------------- one node


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(make_config(channels=map_channels()))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_thousand_keys_updates_a_dropped_connection_and_an_epoch_change(
    server: RunningServer, js_client: JsClientFactory, transport: str
) -> None:
    node = server.node
    channel = "prices:board"
    await write_keys(node, channel, 1000)
    pages = count_pages(node)
    js = await open_js(js_client, server, transport)

    # Initial state, paginated as the SDK asks (pageSize 100: ten pages).
    subscribed = await map_subscribe(js, channel, pageSize=100)
    assert subscribed["recoverable"] is True and subscribed["wasRecovering"] is False
    assert subscribed["state"] == 1000
    assert pages == [(100, "")] + [(100, f"key{n * 100 - 1:04d}") for n in range(1, 10)]
    assert len(await js.call("map_state", channel=channel)) == 1000
    await same_state(js, node, channel)

    # Updates and removals, live.
    for n in range(20):
        await node.map_publish(channel, f"key{n * 7:04d}", {"live": n})
    for n in range(5):
        await node.map_remove(channel, f"key{500 + n:04d}")
    await js.log.collect("update", 25, channel)
    await same_state(js, node, channel)

    # A dropped connection while 50 keys change: it catches up with those 50, no sync.
    await js.call("disconnect")
    await js.log.next("disconnected", "client")
    await fifty_changes(node, channel)
    await js.call("connect")
    again = await js.log.next("subscribed", channel)
    assert again["wasRecovering"] is True and again["recovered"] is True
    updates = await js.log.collect("update", 50, channel)
    assert sum(1 for update in updates if update.get("removed")) == 10
    assert len(js.log.named("sync", channel)) == 1
    await same_state(js, node, channel)

    # An epoch change while connected (map_clear): the SDK reloads the new state.
    old_epoch = again["streamPosition"]["epoch"]
    await node.map_clear(channel)
    await write_keys(node, channel, 3, tag="after")
    fresh = await js.log.next("subscribed", channel)
    assert fresh["streamPosition"]["epoch"] != old_epoch
    await same_state(js, node, channel)
    assert await js.call("map_state", channel=channel) == {
        f"key{n:04d}": {"after": n, "pad": "x" * 20} for n in range(3)
    }

    # And one while disconnected: the recovery gets 112 and the SDK starts from scratch.
    await js.call("disconnect")
    await js.log.next("disconnected", "client")
    await node.map_clear(channel)
    await node.map_publish(channel, "only", {"left": True})
    await js.call("connect")
    await same_state(js, node, channel)
    assert await js.call("map_state", channel=channel) == {"only": {"left": True}}
    states = await js.call("state")
    assert states["subs"][channel] == "subscribed"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_client_writes_through_the_sdk(
    server: RunningServer, js_client: JsClientFactory, transport: str
) -> None:
    node = server.node
    writer = await open_js(js_client, server, transport, "alice")
    reader = await open_js(js_client, server, transport, "bob")
    await map_subscribe(writer, "prices:shared")
    await map_subscribe(reader, "prices:shared")
    assert await writer.call("map_publish", channel="prices:shared", key="a", data={"v": 1}) == {}
    assert await writer.call("map_publish", channel="prices:shared", key="b", data={"v": 2}) == {}
    assert await writer.call("map_remove", channel="prices:shared", key="a") == {}
    await reader.log.collect("update", 3, "prices:shared")
    await same_state(reader, node, "prices:shared")
    assert await reader.call("map_state", channel="prices:shared") == {"b": {"v": 2}}
    # A write the namespace does not allow is refused with its code; the client carries on.
    await map_subscribe(writer, "eph:readonly")
    with pytest.raises(JsError) as refused:
        await writer.call("map_publish", channel="eph:readonly", key="k", data={})
    assert refused.value.code == 103
    assert await writer.call("map_publish", channel="prices:shared", key="c", data={}) == {}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_map_clients_and_users_presence(
    server: RunningServer, js_client: JsClientFactory, transport: str
) -> None:
    watcher = await open_js(js_client, server, transport, "carol")
    await map_subscribe(watcher, "clients:game:7", kind="clients")
    await map_subscribe(watcher, "users:game:7", kind="users")
    player = await open_js(js_client, server, transport, "dave")
    await player.subscribe("game:7")
    joined = await watcher.log.next("update", "clients:game:7")
    assert joined["info"]["user"] == "dave" and joined["key"] == joined["info"]["client"]
    assert not joined.get("removed")
    user = await watcher.log.next("update", "users:game:7")
    assert user["key"] == "dave"
    await player.call("unsubscribe", channel="game:7")
    left = await watcher.log.next("update", "clients:game:7")
    assert left["removed"] is True and left["key"] == joined["key"]
    await same_state(watcher, server.node, "clients:game:7")
    # The user's entry stays until its key_ttl: a quick reconnect makes no noise.
    assert await watcher.call("map_state", channel="users:game:7") == {"dave": None}


async def test_bad_map_requests_get_their_codes_and_nobody_else_notices(
    server: RunningServer, js_client: JsClientFactory, ws_client: ClientFactory
) -> None:
    control = await control_client(server, ws_client)
    raw = await ws_client(server.ws_url)
    await raw.connect(token("mallory"))
    await server.node.map_publish("prices:raw", "k", {"v": 1})
    for request, code in (
        ({"channel": "prices:raw", "type": 1, "phase": 0}, 107),
        ({"channel": "prices:raw", "type": 1, "phase": 9}, 107),
        ({"channel": "prices:raw", "type": 2, "phase": 2}, 103),
        ({"channel": "prices:raw", "type": 1, "phase": 2, "cursor": "k"}, 103),
        ({"channel": "prices:raw", "type": 1, "phase": 1, "offset": 0}, 103),
        ({"channel": "prices:raw", "type": 1, "phase": 2, "tf": {"key": "a"}}, 107),
        ({"channel": "prices:raw", "type": 4}, 108),
        ({"channel": "eph:raw", "type": 1, "phase": 1, "recover": True}, 107),
        (
            {
                "channel": "prices:raw",
                "type": 1,
                "phase": 1,
                "offset": 99,
                "epoch": "x",
                "recover": True,
            },
            112,
        ),
        ({"channel": "chat:raw", "type": 1, "phase": 2}, 103),
        ({"channel": "prices:raw"}, 103),
    ):
        reply = await raw.call("subscribe", request)
        assert reply.get("error", {}).get("code") == code, (request, reply)
    for params, code in (
        ({"channel": "prices:raw", "type": 1, "key": "", "data": {}}, 103),
        ({"channel": "chat:raw", "type": 1, "key": "k", "data": {}}, 107),
        ({"channel": "prices:raw", "type": 2, "key": "k", "data": {}}, 107),
    ):
        reply = await raw.call("publish", params)
        assert reply.get("error", {}).get("code") == code, (params, reply)
    ok = await raw.call("subscribe", {"channel": "prices:raw", "type": 1, "phase": 2})
    assert ok["subscribe"]["state"][0]["key"] == "k"
    again = await raw.call("subscribe", {"channel": "prices:raw", "type": 1, "phase": 2})
    assert again["error"]["code"] == 105
    # The SDK: a map subscription on a stream namespace ends with the server's code.
    js = await open_js(js_client, server, "websocket")
    await js.call("new_map_subscription", channel="chat:notamap", kind="map", options={})
    await js.call("subscribe", channel="chat:notamap")
    unsubscribed = await js.log.next("unsubscribed", "chat:notamap")
    assert unsubscribed["code"] == 103
    await assert_still_serving(server, control)


# --------------------------------------------------------------------------- fossil delta


def row(key: int, n: int) -> dict[str, Any]:
    """A ~1.5 KB map value of which a write changes two fields."""
    levels = [{"level": i, "bid": 100 + i, "ask": 101 + i, "venue": "XNAS"} for i in range(24)]
    levels[n % 24]["bid"] = 1000 + n
    return {"row": key, "n": n, "levels": levels}


DELTA_CASES = [("websocket", False), ("sse", False), ("websocket", True)]


@pytest.mark.parametrize(
    ("transport", "protobuf"), DELTA_CASES, ids=["websocket", "sse", "websocket-protobuf"]
)
async def test_map_delta_gets_the_same_state_in_fewer_bytes(
    server: RunningServer, js_client: JsClientFactory, transport: str, protobuf: bool
) -> None:
    """``delta: 'fossil'`` on a map (``dmap``: persistent, ``delta_publish``, pages of 10):
    per-key deltas decoded by the SDK into exactly the state a plain subscriber holds, in
    a fraction of the bytes; a removal ends a key's chain; a dropped connection catches up
    (through a STREAM page: more changes than a page) and deltas go on from there."""
    node = server.node
    channel = "dmap:board"
    for key in range(12):
        await node.map_publish(channel, f"row{key:02d}", row(key, 0))
    clients = {}
    for name, options in (("delta", {"delta": "fossil"}), ("plain", {})):
        js = clients[name] = await open_js(js_client, server, transport, name, protobuf=protobuf)
        await map_subscribe(js, channel, **options)
        await js.call("bytes_received")  # count from here
    for step in range(1, 41):
        await node.map_publish(channel, f"row{step % 12:02d}", row(step % 12, step))
    for js in clients.values():
        await js.log.collect("update", 40, channel)
        await same_state(js, node, channel)
    wire = {name: await js.call("bytes_received") for name, js in clients.items()}
    stats = await clients["delta"].call("delta_stats", channel=channel)
    assert (stats["numFullPayloads"], stats["numDeltaPayloads"]) == (12, 40)  # state, updates
    print(  # the figures quoted in docs/benchmarks.md
        f"\nmap {transport}{' protobuf' if protobuf else ''}: 40 updates of ~1.5 KB values: "
        f"{wire['plain']} bytes without delta, {wire['delta']} with "
        f"({wire['delta'] / wire['plain']:.1%})"
    )
    assert wire["delta"] < wire["plain"] / 4, wire

    js = clients["delta"]
    await node.map_remove(channel, "row00")
    await node.map_publish(channel, "row00", row(0, 100))  # anew: whole
    await node.map_publish(channel, "row00", row(0, 101))  # a delta against it
    await js.log.collect("update", 3, channel)
    await same_state(js, node, channel)

    await js.call("disconnect")
    await js.log.next("disconnected", "client")
    for step in range(102, 117):  # 15 changes: more than a page of 10
        await node.map_publish(channel, f"row{step % 12:02d}", row(step % 12, step))
    await node.map_remove(channel, "row05")
    await js.call("connect")
    again = await js.log.next("subscribed", channel)
    assert again["recovered"] is True
    await js.log.collect("update", 16, channel)
    await same_state(js, node, channel)
    await node.map_publish(channel, "row01", row(1, 200))
    await js.log.next("update", channel)
    await same_state(js, node, channel)
    after = await js.call("delta_stats", channel=channel)
    assert after["numDeltaPayloads"] > stats["numDeltaPayloads"] + 1


# --------------------------------------------------------------------------- two nodes


@pytest.fixture
async def two_nodes(
    start_server: StartServer, shared_redis: str
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    prefix = f"tmapjs{uuid.uuid4().hex[:10]}"
    common: dict[str, Any] = {
        "broker": shared_redis,
        "broker_prefix": prefix,
        "channels": map_channels(),
    }
    first = await start_server(make_config(node_name="a", **common))
    second = await start_server(make_config(node_name="b", **common))
    try:
        yield first, second
    finally:
        await delete_keys(shared_redis, prefix)


@pytest.mark.redis
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_across_two_nodes_on_redis(
    two_nodes: tuple[RunningServer, RunningServer], js_client: JsClientFactory, transport: str
) -> None:
    """The client on node a, every change through node b (the server API, as a backend)."""
    near, far = two_nodes
    channel = "prices:cluster"

    async def publish(key: str, data: Any) -> None:
        status, body = await api(
            far.port, "map_publish", {"channel": channel, "key": key, "data": data}
        )
        assert status == 200 and "result" in body, body

    for n in range(1000):
        await far.node.map_publish(channel, f"key{n:04d}", {"v": n})
    js = await open_js(js_client, near, transport)
    subscribed = await map_subscribe(js, channel, pageSize=200)
    assert subscribed["state"] == 1000
    await same_state(js, far.node, channel)

    for n in range(10):
        await publish(f"key{n:04d}", {"far": n})
    await js.log.collect("update", 10, channel)
    await same_state(js, near.node, channel)

    await js.call("disconnect")
    await js.log.next("disconnected", "client")
    await fifty_changes(far.node, channel)
    await js.call("connect")
    again = await js.log.next("subscribed", channel)
    assert again["recovered"] is True
    await js.log.collect("update", 50, channel)
    await same_state(js, far.node, channel)

    _, body = await api(far.port, "map_clear", {"channel": channel})
    assert body == {"result": {}}
    await publish("after", {"clear": True})
    await same_state(js, near.node, channel)
    assert await js.call("map_state", channel=channel) == {"after": {"clear": True}}


@pytest.mark.redis
async def test_subscribing_while_the_map_changes_on_another_node(
    two_nodes: tuple[RunningServer, RunningServer], js_client: JsClientFactory
) -> None:
    """Writes through node b all along a paginated subscribe on node a: frozen top, stream
    pages, the LIVE switch racing Redis pub/sub; the client ends with exactly the state."""
    near, far = two_nodes
    channel = "prices:moving"
    await write_keys(far.node, channel, 1000)
    stop = asyncio.Event()

    async def change(n: int) -> None:
        if n % 9 == 4:
            await far.node.map_remove(channel, f"key{(n * 31) % 1000:04d}")
        else:
            await far.node.map_publish(channel, f"key{(n * 17) % 1100:04d}", {"w": n})

    async def keep_writing() -> int:
        n = 0
        while not stop.is_set():  # 20 writes in flight: more than a page while it pages
            await asyncio.gather(*(change(n + k) for k in range(20)))
            n += 20
        return n

    writer = asyncio.create_task(keep_writing())
    try:
        js = await open_js(js_client, near, "websocket")
        await map_subscribe(js, channel, pageSize=100)
        await js.log.collect("update", 20, channel)  # live updates flow after the sync
    finally:
        stop.set()
        written = await writer
    assert written > 100
    await same_state(js, far.node, channel)


@pytest.mark.redis
async def test_map_delta_across_two_nodes_on_redis(
    two_nodes: tuple[RunningServer, RunningServer], js_client: JsClientFactory
) -> None:
    """Each key's previous value crosses Redis with its change: node a makes the deltas for
    writes made through node b, and the SDK decodes exactly the server's state."""
    near, far = two_nodes
    channel = "dmap:cluster"

    async def publish(key: str, data: Any) -> None:
        status, body = await api(
            far.port, "map_publish", {"channel": channel, "key": key, "data": data}
        )
        assert status == 200 and "result" in body, body

    for key in range(4):
        await publish(f"row{key}", row(key, 0))
    js = await open_js(js_client, near, "websocket")
    await map_subscribe(js, channel, delta="fossil")
    for step in range(1, 21):
        await publish(f"row{step % 4}", row(step % 4, step))
    await js.log.collect("update", 20, channel)
    await same_state(js, near.node, channel)
    stats = await js.call("delta_stats", channel=channel)
    assert (stats["numFullPayloads"], stats["numDeltaPayloads"]) == (4, 20)
    assert stats["bytesReceived"] < stats["bytesDecoded"] / 3
