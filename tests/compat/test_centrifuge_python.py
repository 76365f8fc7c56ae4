"""centrifuge-python (PyPI ``centrifuge-python``, unmodified) against tidings.

The SDK runs in the test's event loop next to the in-process server; its events
land in an :class:`EventLog` and the tests wait on them with deadlines.
"""

from __future__ import annotations

from typing import Any

import pytest
from cent import Disconnect, DisconnectRequest, SubscribeRequest, UnsubscribeRequest
from centrifuge import (
    ClientState,
    DeltaType,
    ReplyError,
    StreamPosition,
    SubscriptionState,
)

from tests.compat.conftest import (
    EVENT_TIMEOUT,
    ApiFactory,
    EventLog,
    HistoryKeepingBroker,
    Launch,
    PyClientFactory,
    py_subscription_events,
)
from tests.conftest import RunningServer, StartApp, StartServer, make_config, token
from tests.support.polling import eventually
from tidings import ClientError, RPCContext, Tidings
from tidings.node import Node

FAST_RECONNECT: dict[str, Any] = {"min_reconnect_delay": 0.1, "max_reconnect_delay": 1.0}


def numbers(contexts: list[Any]) -> list[int]:
    return [ctx.pub.data["n"] for ctx in contexts]


async def connected_client(
    py_client: PyClientFactory, url: str, **options: Any
) -> tuple[Any, EventLog, str]:
    client, log = py_client(url, **options)
    await client.connect()
    connected = await log.next("connected", "client")
    return client, log, connected.client


async def subscribed(client: Any, log: EventLog, channel: str, **options: Any) -> Any:
    subscription = client.new_subscription(
        channel, events=py_subscription_events(log, channel), **options
    )
    await subscription.subscribe()
    await subscription.ready(timeout=EVENT_TIMEOUT)
    return subscription


async def test_every_client_command(start_app: StartApp, py_client: PyClientFactory) -> None:
    """connect, subscribe, publish, presence, presence_stats, history, rpc, unsubscribe."""
    app = Tidings(make_config())

    @app.rpc("echo")
    async def echo(ctx: RPCContext, params: Any) -> Any:
        return {"user": ctx.user, "got": params}

    @app.rpc("refuse")
    async def refuse(ctx: RPCContext, params: Any) -> Any:
        raise ClientError(1001, "not today")

    @app.rpc("crash")
    async def crash(ctx: RPCContext, params: Any) -> Any:
        raise RuntimeError("internal details that must not leak")

    server = await start_app(app)
    client, log, client_id = await connected_client(
        py_client, server.ws_url, token=token("alice", info={"name": "Alice"}), name="compat"
    )
    assert server.node.clients[client_id].name == "compat"
    sub = await subscribed(client, log, "chat:tour", join_leave=True, recoverable=True)
    first = await log.next("subscribed", "chat:tour")
    assert first.recoverable and first.positioned and not first.was_recovering
    epoch = first.stream_position.epoch
    join = await log.next("join", "chat:tour")
    assert (join.info.client, join.info.user, join.info.conn_info) == (
        client_id,
        "alice",
        {"name": "Alice"},
    )

    await sub.publish({"n": 1})
    own = await log.next("publication", "chat:tour")
    assert (own.pub.data, own.pub.offset) == ({"n": 1}, 1)
    assert own.pub.info is not None and own.pub.info.client == client_id

    presence = await sub.presence()
    assert list(presence.clients) == [client_id]
    assert presence.clients[client_id].conn_info == {"name": "Alice"}
    stats = await sub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (1, 1)

    for n in (2, 3, 4):
        await server.node.publish("chat:tour", {"n": n})
    assert numbers(await log.collect("publication", 3, "chat:tour")) == [2, 3, 4]
    latest = await sub.history(limit=2, reverse=True)
    assert [p.offset for p in latest.publications] == [4, 3]
    assert (latest.offset, latest.epoch) == (4, epoch)
    since = await sub.history(limit=-1, since=StreamPosition(offset=2, epoch=epoch))
    assert [p.data for p in since.publications] == [{"n": 3}, {"n": 4}]
    with pytest.raises(ReplyError) as wrong_epoch:
        await sub.history(limit=1, since=StreamPosition(offset=1, epoch="other"))
    assert wrong_epoch.value.code == 112

    result = await client.rpc("echo", {"x": 1})
    assert result.data == {"user": "alice", "got": {"x": 1}}
    with pytest.raises(ReplyError) as unknown:
        await client.rpc("no-such-method", {})
    assert (unknown.value.code, unknown.value.message) == (104, "method not found")
    with pytest.raises(ReplyError) as refused:
        await client.rpc("refuse", {})
    assert (refused.value.code, refused.value.message) == (1001, "not today")
    with pytest.raises(ReplyError) as crashed:
        await client.rpc("crash", {})
    assert (crashed.value.code, crashed.value.message) == (100, "internal server error")
    assert crashed.value.temporary is True
    assert client.state == ClientState.CONNECTED

    await sub.unsubscribe()
    assert (await log.next("unsubscribed", "chat:tour")).code == 0
    await eventually(
        lambda: "chat:tour" not in server.node.clients[client_id].subscriptions,
        what="the server to drop the subscription",
        within=EVENT_TIMEOUT,
    )

    await client.disconnect()
    assert (await log.next("disconnected", "client")).code == 0
    await eventually(
        lambda: client_id not in server.node.clients,
        what="the session to end",
        within=EVENT_TIMEOUT,
    )
    assert not log.named("error")


async def test_join_and_leave(server: RunningServer, py_client: PyClientFactory) -> None:
    alice, alice_log, alice_id = await connected_client(py_client, server.ws_url, token=token())
    await subscribed(alice, alice_log, "chat:jl", join_leave=True)
    own = await alice_log.next("join", "chat:jl")
    assert own.info.client == alice_id

    bob, bob_log, bob_id = await connected_client(
        py_client, server.ws_url, token=token("bob", info={"name": "Bob"})
    )
    await subscribed(bob, bob_log, "chat:jl", join_leave=True)
    join = await alice_log.next("join", "chat:jl")
    assert (join.info.client, join.info.user, join.info.conn_info) == (
        bob_id,
        "bob",
        {"name": "Bob"},
    )

    await bob.disconnect()
    leave = await alice_log.next("leave", "chat:jl")
    assert (leave.info.client, leave.info.user) == (bob_id, "bob")


async def test_recovery_after_api_disconnect_with_reconnect_code(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    client, log, first_id = await connected_client(
        py_client, server.ws_url, token=token(), min_reconnect_delay=0.5
    )
    await subscribed(client, log, "chat:recover", recoverable=True)
    for n in (1, 2):
        await server.node.publish("chat:recover", {"n": n})
    assert numbers(await log.collect("publication", 2, "chat:recover")) == [1, 2]

    await cent_api(server).disconnect(
        DisconnectRequest(user="alice", disconnect=Disconnect(code=3011, reason="force reconnect"))
    )
    # The SDK waits at least min_reconnect_delay (0.5 s) before reconnecting.
    await eventually(
        lambda: first_id not in server.node.clients,
        what="the server to drop alice",
        within=EVENT_TIMEOUT,
    )
    for n in range(3, 8):
        await server.node.publish("chat:recover", {"n": n})

    connecting = await log.next("connecting", "client", where=lambda ctx: ctx.code != 0)
    assert (connecting.code, connecting.reason) == (3011, "force reconnect")
    assert (await log.next("connected", "client")).client != first_id
    again = await log.next("subscribed", "chat:recover", where=lambda ctx: ctx.was_recovering)
    assert again.recovered is True
    assert numbers(await log.collect("publication", 5, "chat:recover")) == [3, 4, 5, 6, 7]

    await server.node.publish("chat:recover", {"n": 8})
    await log.next("publication", "chat:recover")
    everything = [event.ctx for event in log.named("publication", "chat:recover")]
    assert numbers(everything) == list(range(1, 9))
    assert [ctx.pub.offset for ctx in everything] == list(range(1, 9))


async def test_recovery_after_server_restart_on_the_same_port(
    launch: Launch, py_client: PyClientFactory
) -> None:
    broker = HistoryKeepingBroker()
    first = await launch(broker=broker)
    client, log, _ = await connected_client(
        py_client, first.ws_url, token=token(), **FAST_RECONNECT
    )
    await subscribed(client, log, "chat:restart", recoverable=True)
    epoch = (await log.next("subscribed", "chat:restart")).stream_position.epoch
    for n in (1, 2):
        await first.node.publish("chat:restart", {"n": n})
    assert numbers(await log.collect("publication", 2, "chat:restart")) == [1, 2]

    await first.server.stop()
    connecting = await log.next("connecting", "client", where=lambda ctx: ctx.code != 0)
    assert (connecting.code, connecting.reason) == (3001, "shutdown")

    async def publish_while_away(node: Node) -> None:
        for n in range(3, 7):
            await node.publish("chat:restart", {"n": n})

    second = await launch(make_config(port=first.port), broker=broker, prepare=publish_while_away)
    again = await log.next("subscribed", "chat:restart", within=15)
    assert again.was_recovering and again.recovered
    assert again.stream_position.epoch == epoch
    assert numbers(await log.collect("publication", 4, "chat:restart")) == [3, 4, 5, 6]
    await second.node.publish("chat:restart", {"n": 7})
    await log.next("publication", "chat:restart")
    assert numbers([e.ctx for e in log.named("publication")]) == list(range(1, 8))


async def test_no_recovery_after_in_memory_server_restart(
    launch: Launch, py_client: PyClientFactory
) -> None:
    first = await launch()
    client, log, _ = await connected_client(
        py_client, first.ws_url, token=token(), **FAST_RECONNECT
    )
    await subscribed(client, log, "chat:lost", recoverable=True)
    epoch = (await log.next("subscribed", "chat:lost")).stream_position.epoch
    await first.node.publish("chat:lost", {"n": 1})
    await log.next("publication", "chat:lost")
    await first.server.stop()
    await log.next("connecting", "client", where=lambda ctx: ctx.code == 3001)

    async def publish_while_away(node: Node) -> None:
        await node.publish("chat:lost", {"n": 2})

    second = await launch(make_config(port=first.port), prepare=publish_while_away)
    again = await log.next("subscribed", "chat:lost", within=15)
    assert again.was_recovering is True and again.recovered is False
    assert again.stream_position.epoch != epoch and again.stream_position.offset == 1

    await second.node.publish("chat:lost", {"n": 3})
    live = await log.next("publication", "chat:lost")
    assert (live.pub.data, live.pub.offset) == ({"n": 3}, 2), "the lost epoch was replayed"


async def test_no_recovery_when_history_no_longer_reaches(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    """Namespace ``small`` keeps 3 publications: after 5 missed, ``recovered: false``."""
    client, log, first_id = await connected_client(
        py_client, server.ws_url, token=token(), min_reconnect_delay=0.5
    )
    await subscribed(client, log, "small:trimmed", recoverable=True)
    await server.node.publish("small:trimmed", {"n": 1})
    await log.next("publication", "small:trimmed")
    await cent_api(server).disconnect(
        DisconnectRequest(user="alice", disconnect=Disconnect(code=3011, reason="reconnect"))
    )
    await eventually(
        lambda: first_id not in server.node.clients,
        what="the server to drop alice",
        within=EVENT_TIMEOUT,
    )
    for n in range(2, 7):
        await server.node.publish("small:trimmed", {"n": n})

    again = await log.next("subscribed", "small:trimmed", where=lambda ctx: ctx.was_recovering)
    assert again.recovered is False
    assert again.stream_position.offset == 6
    await server.node.publish("small:trimmed", {"n": 7})
    live = await log.next("publication", "small:trimmed")
    assert live.pub.data == {"n": 7}, "part of the missed publications was replayed"


async def test_server_side_subscription_recovers_after_reconnect(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    _, log, first_id = await connected_client(
        py_client, server.ws_url, token=token(channels=["chat:personal"]), min_reconnect_delay=0.5
    )
    await log.next("subscribed", "client")
    await server.node.publish("chat:personal", {"n": 1})
    await log.next("publication", "client")
    await cent_api(server).disconnect(
        DisconnectRequest(user="alice", disconnect=Disconnect(code=3011, reason="reconnect"))
    )
    await eventually(
        lambda: first_id not in server.node.clients,
        what="the server to drop alice",
        within=EVENT_TIMEOUT,
    )
    for n in (2, 3):
        await server.node.publish("chat:personal", {"n": n})

    again = await log.next("subscribed", "client", where=lambda ctx: ctx.was_recovering)
    assert again.channel == "chat:personal" and again.recovered is True
    assert numbers(await log.collect("publication", 2, "client")) == [2, 3]
    await server.node.publish("chat:personal", {"n": 4})
    await log.next("publication", "client")
    assert numbers([e.ctx for e in log.named("publication")]) == [1, 2, 3, 4]


@pytest.mark.timeout(30)
async def test_connection_token_refresh_with_get_token(
    start_server: StartServer, py_client: PyClientFactory
) -> None:
    server = await start_server(expired_close_delay=5.0)
    issued: list[str] = []

    async def get_token() -> str:
        issued.append(token("alice", ttl=2 if not issued else 3600))
        return issued[-1]

    client, log, client_id = await connected_client(py_client, server.ws_url, get_token=get_token)
    session = server.node.clients[client_id]
    assert session.expire_at is not None
    first_expiry = session.expire_at
    await eventually(
        lambda: session.expire_at is not None and session.expire_at > first_expiry + 600,
        what="the refresh command to move the connection's expiry",
        within=EVENT_TIMEOUT,
    )
    assert len(issued) == 2
    assert client.state == ClientState.CONNECTED
    assert server.node.clients.get(client_id) is session
    assert len(log.named("connected")) == 1 and not log.named("error")


@pytest.mark.timeout(30)
async def test_connection_expires_without_refresh(
    start_server: StartServer, py_client: PyClientFactory
) -> None:
    """No get_token: the server closes with 3005 after the grace, the SDK reconnects
    with its stale token, gets error 109 and stops."""
    server = await start_server(expired_close_delay=0.5)
    client, log, _ = await connected_client(
        py_client, server.ws_url, token=token(ttl=2), **FAST_RECONNECT
    )
    connecting = await log.next("connecting", "client", where=lambda ctx: ctx.code != 0)
    assert (connecting.code, connecting.reason) == (3005, "connection expired")
    refused = await log.next("error", "client", where=lambda ctx: isinstance(ctx.error, ReplyError))
    assert (refused.error.code, refused.error.message) == (109, "token expired")
    await log.next("disconnected", "client")
    assert client.state == ClientState.DISCONNECTED
    assert "alice" not in server.node.users


@pytest.mark.timeout(30)
async def test_refresh_with_a_token_of_another_user_is_refused(
    server: RunningServer, py_client: PyClientFactory
) -> None:
    """A refresh token for someone else: disconnect 3500 "invalid token", terminal."""
    issued: list[str] = []

    async def get_token() -> str:
        issued.append(token("alice" if not issued else "mallory", ttl=2 if not issued else 3600))
        return issued[-1]

    client, log, _ = await connected_client(py_client, server.ws_url, get_token=get_token)
    disconnected = await log.next("disconnected", "client")
    assert (disconnected.code, disconnected.reason) == (3500, "invalid token")
    assert len(issued) == 2 and client.state == ClientState.DISCONNECTED


async def test_message_over_the_size_limit_closes_with_1009(
    start_server: StartServer, py_client: PyClientFactory
) -> None:
    """WebSocket close 1009 reaches the SDK as its "message size limit" (code 3).

    centrifuge-python 0.7 then reconnects (centrifuge-js stops: see its test).
    """
    server = await start_server(max_message_size=4096)
    client, log, first_id = await connected_client(
        py_client, server.ws_url, token=token(), **FAST_RECONNECT
    )
    sub = await subscribed(client, log, "chat:big")
    with pytest.raises(Exception):  # noqa: B017 - the SDK fails the call as it disconnects
        await sub.publish({"blob": "x" * 8192})
    connecting = await log.next("connecting", "client", where=lambda ctx: ctx.code != 0)
    assert (connecting.code, connecting.reason) == (3, "message size limit")
    assert first_id not in server.node.clients


async def test_expired_token_at_connect_gets_a_new_one(
    server: RunningServer, py_client: PyClientFactory
) -> None:
    """Connect error 109: the SDK asks get_token for a fresh token and connects with it."""
    calls: list[str] = []

    async def get_token() -> str:
        calls.append("get_token")
        return token("alice")

    expired = token("alice", ttl=-10)
    _, _, client_id = await connected_client(
        py_client, server.ws_url, token=expired, get_token=get_token, **FAST_RECONNECT
    )
    assert calls == ["get_token"]
    assert server.node.clients[client_id].user == "alice"


@pytest.mark.timeout(30)
async def test_private_channel_subscription_token_and_sub_refresh(
    start_server: StartServer, py_client: PyClientFactory
) -> None:
    server = await start_server(expired_close_delay=5.0)
    issued: list[str] = []

    async def get_token(channel: str) -> str:
        assert channel == "$chat:secret"
        ttl = 2 if not issued else 3600
        issued.append(token("alice", channel=channel, ttl=ttl, info={"role": "insider"}))
        return issued[-1]

    client, log, client_id = await connected_client(py_client, server.ws_url, token=token())
    sub = await subscribed(client, log, "$chat:secret", get_token=get_token)
    subscription = server.node.clients[client_id].subscriptions["$chat:secret"]
    assert subscription.expire_at is not None
    first_expiry = subscription.expire_at
    await eventually(
        lambda: subscription.expire_at is not None and subscription.expire_at > first_expiry + 600,
        what="sub_refresh to move the subscription's expiry",
        within=EVENT_TIMEOUT,
    )
    assert len(issued) == 2
    assert sub.state == SubscriptionState.SUBSCRIBED
    assert len(log.named("subscribed", "$chat:secret")) == 1

    await sub.publish({"n": 1})
    publication = await log.next("publication", "$chat:secret")
    assert publication.pub.info.chan_info == {"role": "insider"}

    refused = client.new_subscription(
        "$chat:no-token", events=py_subscription_events(log, "$chat:no-token")
    )
    await refused.subscribe()
    unsubscribed = await log.next("unsubscribed", "$chat:no-token")
    assert (unsubscribed.code, unsubscribed.reason) == (103, "permission denied")
    assert client.state == ClientState.CONNECTED


async def test_server_side_subscriptions(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    client, log, _ = await connected_client(
        py_client, server.ws_url, token=token(channels=["chat:personal"])
    )
    first = await log.next("subscribed", "client")
    assert first.channel == "chat:personal" and first.recoverable
    await server.node.publish("chat:personal", {"n": 1})
    publication = await log.next("publication", "client")
    assert (publication.channel, publication.pub.data, publication.pub.offset) == (
        "chat:personal",
        {"n": 1},
        1,
    )

    api = cent_api(server)
    await api.subscribe(SubscribeRequest(user="alice", channel="chat:added", data={"why": "api"}))
    added = await log.next("subscribed", "client", where=lambda ctx: ctx.channel == "chat:added")
    assert added.data == {"why": "api"}
    await client.publish("chat:added", {"n": 2})
    own = await log.next("publication", "client", where=lambda ctx: ctx.channel == "chat:added")
    assert own.pub.data == {"n": 2} and own.pub.info.user == "alice"

    await api.unsubscribe(UnsubscribeRequest(user="alice", channel="chat:added"))
    removed = await log.next("unsubscribed", "client")
    assert removed.channel == "chat:added"


async def test_api_unsubscribe_reaches_the_subscription_with_code_2000(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    client, log, _ = await connected_client(py_client, server.ws_url, token=token())
    sub = await subscribed(client, log, "chat:kick")
    await cent_api(server).unsubscribe(UnsubscribeRequest(user="alice", channel="chat:kick"))
    unsubscribed = await log.next("unsubscribed", "chat:kick")
    assert (unsubscribed.code, unsubscribed.reason) == (2000, "server unsubscribe")
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    assert client.state == ClientState.CONNECTED


@pytest.mark.parametrize(
    ("disconnect", "expected"),
    [
        pytest.param(None, (3503, "force disconnect"), id="default-3503"),
        pytest.param(Disconnect(code=4501, reason="banned"), (4501, "banned"), id="app-4501"),
    ],
)
async def test_api_disconnect_with_terminal_code(
    server: RunningServer,
    py_client: PyClientFactory,
    cent_api: ApiFactory,
    disconnect: Disconnect | None,
    expected: tuple[int, str],
) -> None:
    client, log, _ = await connected_client(py_client, server.ws_url, token=token())
    await cent_api(server).disconnect(DisconnectRequest(user="alice", disconnect=disconnect))
    disconnected = await log.next("disconnected", "client")
    assert (disconnected.code, disconnected.reason) == expected
    assert client.state == ClientState.DISCONNECTED
    assert [e.ctx.code for e in log.named("connecting")] == [0]
    assert "alice" not in server.node.users


async def test_delta_requested_but_not_negotiated(
    server: RunningServer, py_client: PyClientFactory
) -> None:
    client, log, _ = await connected_client(py_client, server.ws_url, token=token())
    await subscribed(client, log, "chat:delta", delta=DeltaType.FOSSIL)
    for n in (1, 2):
        await server.node.publish("chat:delta", {"n": n, "text": "same text every time"})
    publications = await log.collect("publication", 2, "chat:delta")
    assert [ctx.pub.data for ctx in publications] == [
        {"n": 1, "text": "same text every time"},
        {"n": 2, "text": "same text every time"},
    ]
