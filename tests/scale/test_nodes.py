"""Node-level paths across nodes on Redis, with several nodes in this test process.

Each node is a full :class:`~tidings.node.Node` + server on its own port, on a
:class:`~tidings.brokers.redis.RedisBroker` with the test's own key prefix: the
server API on one node acts on clients of another, join/leave and presence are
shared, ``channels`` and ``info`` see every node, and when Redis cannot answer,
clients and API callers get error 100 (temporary) within the broker's bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import ClientFactory, RunningServer, StartServer, WsClient, make_config, token
from tests.scale.conftest import PRESENCE_REFRESH, PRESENCE_TTL, WAIT
from tests.support.http import api
from tests.support.polling import eventually
from tests.support.redis import Cluster, StartRedis, delete_keys, unique_prefix
from tidings.brokers.redis import RedisPresence
from tidings.protocol.messages import ClientInfo

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def redis_nodes(
    start_server: StartServer, url: str, prefix: str, count: int = 2
) -> list[RunningServer]:
    nodes = [
        await start_server(
            make_config(
                broker=url,
                broker_prefix=prefix,
                presence_ttl=PRESENCE_TTL,
                presence_refresh_interval=PRESENCE_REFRESH,
                node_name=f"node{n}",
            )
        )
        for n in range(count)
    ]
    ids = {node.node.id for node in nodes}

    def all_known() -> bool:
        return all({n["uid"] for n in node.node.known_nodes()} == ids for node in nodes)

    await eventually(all_known, "every node to know every other", within=WAIT)
    return nodes


async def client_on(ws_client: ClientFactory, node: RunningServer, user: str) -> WsClient:
    client = await ws_client(node.ws_url)
    await client.connect(token(user))
    return client


def push_of(kind: str, channel: str) -> Callable[[dict[str, Any]], bool]:
    return lambda d: d.get("push", {}).get("channel") == channel and kind in d["push"]


def join_of(channel: str, user: str) -> Callable[[dict[str, Any]], bool]:
    is_join = push_of("join", channel)
    return lambda d: is_join(d) and d["push"]["join"]["info"]["user"] == user


async def test_server_api_on_one_node_acts_on_clients_of_another(
    start_server: StartServer, ws_client: ClientFactory, scale_redis: str, prefix: str
) -> None:
    api_node, home = await redis_nodes(start_server, scale_redis, prefix)
    alice = await client_on(ws_client, home, "alice")
    bob = await client_on(ws_client, home, "bob")

    status, answer = await api(api_node.port, "subscribe", {"user": "alice", "channel": "chat:s"})
    assert (status, answer) == (200, {"result": {}})
    subscribed = await alice.push(push_of("subscribe", "chat:s"))
    assert subscribed["push"]["subscribe"]["recoverable"] is True

    await api(api_node.port, "publish", {"channel": "chat:s", "data": {"n": 1}})
    (publication,) = await alice.publications("chat:s", 1)
    assert publication["data"] == {"n": 1} and publication["offset"] == 1

    await api(api_node.port, "unsubscribe", {"user": "alice", "channel": "chat:s"})
    unsubscribed = await alice.push(push_of("unsubscribe", "chat:s"))
    assert unsubscribed["push"]["unsubscribe"] == {"code": 2000, "reason": "server unsubscribe"}

    await api(api_node.port, "refresh", {"user": "bob", "expired": True})
    assert await bob.closed() == (3005, "connection expired")

    await api(
        api_node.port,
        "disconnect",
        {"user": "alice", "disconnect": {"code": 4001, "reason": "go away"}},
    )
    assert await alice.closed() == (4001, "go away")


async def test_join_leave_and_presence_are_shared_by_the_nodes(
    start_server: StartServer, ws_client: ClientFactory, scale_redis: str, prefix: str
) -> None:
    first, second = await redis_nodes(start_server, scale_redis, prefix)
    alice = await client_on(ws_client, first, "alice")
    await alice.subscribe("chat:jl")
    bob = await client_on(ws_client, second, "bob")
    await bob.subscribe("chat:jl")

    join = await alice.push(join_of("chat:jl", "bob"))
    bob_client = join["push"]["join"]["info"]["client"]

    presence = (await alice.call("presence", {"channel": "chat:jl"}))["presence"]["presence"]
    assert {info["user"] for info in presence.values()} == {"alice", "bob"}
    assert bob_client in presence
    stats = (await alice.call("presence_stats", {"channel": "chat:jl"}))["presence_stats"]
    assert stats == {"num_clients": 2, "num_users": 2}

    await bob.close()
    leave = await alice.push(push_of("leave", "chat:jl"))
    assert leave["push"]["leave"]["info"]["client"] == bob_client
    presence = (await alice.call("presence", {"channel": "chat:jl"}))["presence"]["presence"]
    assert {info["user"] for info in presence.values()} == {"alice"}


async def test_channels_and_info_count_every_node(
    start_server: StartServer, ws_client: ClientFactory, scale_redis: str, prefix: str
) -> None:
    nodes = await redis_nodes(start_server, scale_redis, prefix, count=3)
    for index, node in enumerate(nodes):
        for n in range(index + 1):
            client = await client_on(ws_client, node, f"u{index}-{n}")
            await client.subscribe("quiet:everywhere")
        client = await client_on(ws_client, node, f"only{index}")
        await client.subscribe(f"quiet:only-{index}")
    expected = {"quiet:everywhere": {"num_clients": 6}} | {
        f"quiet:only-{index}": {"num_clients": 1} for index in range(3)
    }
    for node in nodes:
        _, answer = await api(node.port, "channels", {})
        assert answer["result"]["channels"] == expected
        _, answer = await api(node.port, "channels", {"pattern": "*only-1"})
        assert answer["result"]["channels"] == {"quiet:only-1": {"num_clients": 1}}

    async def info_counts() -> bool:
        _, answer = await api(nodes[0].port, "info", {})
        counts = {n["name"]: n["num_clients"] for n in answer["result"]["nodes"]}
        return counts == {"node0": 2, "node1": 3, "node2": 4}

    await eventually(info_counts, "info to count the clients of every node", within=WAIT)

    # A node that shuts down says so: the others stop counting (and asking) it at once.
    await nodes[2].server.stop()
    await eventually(
        lambda: len(nodes[0].node.known_nodes()) == 2,
        "the stopped node to leave the list",
        within=WAIT,
    )
    started = time.monotonic()
    _, answer = await api(nodes[0].port, "channels", {"pattern": "quiet:every*"})
    assert answer["result"]["channels"] == {"quiet:everywhere": {"num_clients": 3}}
    assert time.monotonic() - started < 0.9, "no wait for a node that said goodbye"


async def test_a_silent_node_costs_the_channels_call_a_bounded_wait(
    start_server: StartServer, ws_client: ClientFactory, scale_redis: str, prefix: str
) -> None:
    first, second = await redis_nodes(start_server, scale_redis, prefix)
    client = await client_on(ws_client, first, "alice")
    await client.subscribe("quiet:here")
    # The second node stops answering control messages, as if it had died a moment ago.
    second.node.handle_control = lambda message: None  # type: ignore[method-assign]
    started = time.monotonic()
    _, answer = await api(first.port, "channels", {})
    assert answer["result"]["channels"] == {"quiet:here": {"num_clients": 1}}
    assert 0.9 < time.monotonic() - started < 3.0


async def test_redis_that_cannot_answer_gives_error_100_within_the_bound(
    private_redis_factory: StartRedis,  # first: torn down after the node
    start_server: StartServer,
    ws_client: ClientFactory,
) -> None:
    redis = private_redis_factory()
    (node,) = await redis_nodes(start_server, redis.url, "unavailable", count=1)
    internal = {"code": 100, "message": "internal server error", "temporary": True}
    commands: list[tuple[str, dict[str, Any]]] = [
        ("publish", {"channel": "chat:u", "data": {"n": 1}}),
        ("history", {"channel": "chat:u", "limit": -1}),
        ("presence", {"channel": "chat:u"}),
        ("presence_stats", {"channel": "chat:u"}),
        ("subscribe", {"channel": "chat:other"}),
    ]
    clients = []
    for n in range(len(commands)):  # one client per command: they wait side by side
        client = await client_on(ws_client, node, f"user{n}")
        await client.subscribe("chat:u")
        # The join is announced after the subscribe reply: wait until it is through.
        await client.push(join_of("chat:u", f"user{n}"))
        clients.append(client)

    async def client_call(client: WsClient, method: str, params: dict[str, Any]) -> None:
        started = time.monotonic()
        reply = await client.call(method, params, timeout=10)
        elapsed = time.monotonic() - started
        assert reply.get("error") == internal, (method, reply)
        assert elapsed < 1.8, f"{method} took {elapsed:.2f} s"

    async def api_call(method: str, params: dict[str, Any], expected: Any, calls: int) -> None:
        started = time.monotonic()
        assert await api(node.port, method, params) == (200, expected)
        assert time.monotonic() - started < 1.8 * calls  # broadcast: one bound per channel

    redis.pause()
    try:
        await asyncio.gather(
            *(
                client_call(client, *command)
                for client, command in zip(clients, commands, strict=True)
            ),
            api_call("publish", {"channel": "chat:u", "data": {}}, {"error": internal}, 1),
            api_call(
                "broadcast",
                {"channels": ["chat:u", "chat:v"], "data": {}},
                {"result": {"responses": [{"error": internal}, {"error": internal}]}},
                2,
            ),
        )
    finally:
        redis.resume()
    # The connections carried on, and the errors were temporary: the same calls now work.
    reply = await clients[0].call("publish", {"channel": "chat:u", "data": {"n": 2}}, timeout=10)
    assert reply.get("publish") == {}, reply
    assert await clients[-1].subscribe("chat:other")


async def test_presence_refresh_is_one_batch_per_interval(
    start_server: StartServer, ws_client: ClientFactory, scale_redis: str, prefix: str
) -> None:
    (node,) = await redis_nodes(start_server, scale_redis, prefix, count=1)
    presence = node.node.presence
    assert isinstance(presence, RedisPresence)
    for n in range(12):
        client = await client_on(ws_client, node, f"user{n}")
        await client.subscribe(f"chat:p{n % 3}")
    batches: list[int] = []
    single: list[str] = []
    add_many, add_one = presence.add_presence_many, presence.add_presence

    async def counting_many(entries: Any, ttl: float) -> None:
        batches.append(len(entries))
        await add_many(entries, ttl)

    async def counting_one(channel: str, client_id: str, info: ClientInfo, ttl: float) -> None:
        single.append(channel)
        await add_one(channel, client_id, info, ttl)

    presence.add_presence_many = counting_many  # type: ignore[method-assign]
    presence.add_presence = counting_one  # type: ignore[method-assign]
    await eventually(lambda: len(batches) >= 2, "two presence refreshes", within=5)
    assert batches[:2] == [12, 12] and single == []
    stats = await presence.presence_stats("chat:p0")
    assert stats == (4, 4)


@pytest.mark.parametrize("topology", ["redis", "cluster"])
async def test_add_presence_many_writes_entries_that_expire(
    topology: str, request: pytest.FixtureRequest
) -> None:
    if topology == "cluster":
        cluster: Cluster = request.getfixturevalue("redis_cluster")
        url, admins = cluster.url, [f"redis://127.0.0.1:{port}/0" for port in cluster.ports]
    else:
        url = request.getfixturevalue("scale_redis")
        admins = [url]
    prefix = unique_prefix()
    store = RedisPresence(url, prefix=prefix)
    try:
        entries = [
            (f"chat:m{n % 7}", f"client-{n}", ClientInfo(f"user{n % 5}", f"client-{n}"))
            for n in range(60)
        ]
        await store.add_presence_many(entries, 0.5)
        await store.add_presence_many(entries[:3], 300)  # a refresh keeps only these
        assert len(await store.presence("chat:m0")) == 9
        assert await store.presence_stats("chat:m1") == (9, 5)

        async def only_refreshed() -> bool:
            found = {}
            for n in range(7):
                found.update(await store.presence(f"chat:m{n}"))
            return set(found) == {"client-0", "client-1", "client-2"}

        await eventually(only_refreshed, "unrefreshed entries to expire", within=5)
    finally:
        await store.close()
        for admin in admins:
            await delete_keys(admin, prefix)


async def test_three_nodes_on_a_redis_cluster_share_order_and_presence(
    start_server: StartServer,
    ws_client: ClientFactory,
    redis_cluster: Cluster,
) -> None:
    prefix = unique_prefix()
    try:
        nodes = await redis_nodes(start_server, redis_cluster.url, prefix, count=3)
        channels = [f"chat:c{n}" for n in range(4)]  # spread over the masters' slots
        readers = []
        for index, node in enumerate(nodes):
            reader = await client_on(ws_client, node, f"reader{index}")
            for channel in channels:
                await reader.subscribe(channel)
            readers.append(reader)

        async def publish(node: RunningServer, channel: str) -> None:
            for n in range(15):
                _, answer = await api(
                    node.port, "publish", {"channel": channel, "data": {"from": node.port, "n": n}}
                )
                assert "result" in answer, answer

        await asyncio.gather(*(publish(node, channel) for node in nodes for channel in channels))
        for channel in channels:
            seen = [
                [(p["offset"], p["data"]) for p in await reader.publications(channel, 45)]
                for reader in readers
            ]
            assert [offset for offset, _ in seen[0]] == list(range(1, 46))
            assert seen[1] == seen[0] and seen[2] == seen[0]
        presence = await readers[0].call("presence_stats", {"channel": "chat:c3"})
        assert presence["presence_stats"] == {"num_clients": 3, "num_users": 3}
    finally:
        for port in redis_cluster.ports:
            await delete_keys(f"redis://127.0.0.1:{port}/0", prefix)


async def test_emulation_commands_reach_the_stream_on_another_node(
    start_server: StartServer, scale_redis: str, prefix: str
) -> None:
    """Without sticky routing, /emulation POSTs to any node reach the session's stream."""
    import json

    import aiohttp

    from tests.support.streams import LineStream

    home, elsewhere = await redis_nodes(start_server, scale_redis, prefix)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        response = await http.post(
            f"{home.http_url}/connection/http_stream",
            data=json.dumps({"connect": {"token": token("alice")}, "id": 1}),
            headers={"Content-Type": "application/json"},
        )
        stream = LineStream(response)
        connect = (await stream.next())["connect"]
        assert connect["node"] == home.node.id
        body = {
            "session": connect["session"],
            "node": connect["node"],
            "data": json.dumps({"id": 2, "subscribe": {"channel": "chat:hop"}}),
        }
        async with http.post(f"{elsewhere.http_url}/emulation", json=body) as answer:
            assert answer.status == 204
        reply = await stream.until(lambda d: d.get("id") == 2)
        assert "subscribe" in reply
        gone = {**body, "node": "no-such-node"}
        async with http.post(f"{elsewhere.http_url}/emulation", json=gone) as answer:
            assert answer.status == 404
        response.close()


async def test_protobuf_emulation_commands_reach_the_stream_on_another_node(
    start_server: StartServer, scale_redis: str, prefix: str
) -> None:
    """A Protobuf ``EmulationRequest`` posted to another node: its command bytes travel in
    the control message and reach the session as they were sent."""
    import aiohttp
    from centrifuge.protocol import client_pb2 as pb

    from tidings.errors import ProtocolViolation
    from tidings.protocol.protobuf import split_frame, varint

    def delimited(command: pb.Command) -> bytes:
        body = command.SerializeToString()
        return varint(len(body)) + body

    home, elsewhere = await redis_nodes(start_server, scale_redis, prefix)
    octets = {"Content-Type": "application/octet-stream"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        response = await http.post(
            f"{home.http_url}/connection/http_stream",
            data=delimited(pb.Command(id=1, connect=pb.ConnectRequest(token=token("alice")))),
            headers=octets,
        )
        buffer = b""
        replies: list[pb.Reply] = []
        while not replies:  # the connect reply, whole
            buffer += await asyncio.wait_for(response.content.readany(), WAIT)
            with contextlib.suppress(ProtocolViolation):
                replies = [pb.Reply.FromString(m) for m in split_frame(buffer)]
        connect = replies[0].connect
        assert connect.node == home.node.id
        request = pb.EmulationRequest(
            session=connect.session,
            node=connect.node,
            data=delimited(pb.Command(id=2, subscribe=pb.SubscribeRequest(channel="chat:hop"))),
        )
        async with http.post(
            f"{elsewhere.http_url}/emulation", data=request.SerializeToString(), headers=octets
        ) as answer:
            assert answer.status == 204
        while not any(reply.id == 2 for reply in replies):
            chunk = await asyncio.wait_for(response.content.readany(), WAIT)
            assert chunk, "the stream ended"
            buffer += chunk
            with contextlib.suppress(ProtocolViolation):  # a message cut between reads
                replies = [pb.Reply.FromString(m) for m in split_frame(buffer)]
        (subscribed,) = [reply for reply in replies if reply.id == 2]
        assert subscribed.HasField("subscribe")
        response.close()
