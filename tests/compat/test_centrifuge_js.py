"""centrifuge-js (npm ``centrifuge``, unmodified) under Node 20 with ``ws``, against tidings.

Each test drives one or more Node processes running ``js/driver.mjs`` and asserts on
what the SDK reported: results of its promises and the events it emitted, in order.
Server-side effects are checked on the in-process node.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cent import (
    Disconnect,
    DisconnectRequest,
    PublishRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)

from tests.compat.conftest import (
    EVENT_TIMEOUT,
    ApiFactory,
    HistoryKeepingBroker,
    JsClientFactory,
    JsError,
    Launch,
    PyClientFactory,
    py_subscription_events,
)
from tests.conftest import RunningServer, StartApp, StartServer, make_config, token
from tests.support.polling import eventually
from tidings import MessageContext, RPCContext, Tidings
from tidings.node import Node

pytestmark = pytest.mark.node

FAST_RECONNECT: dict[str, Any] = {"minReconnectDelay": 100, "maxReconnectDelay": 1000}


def numbers(events: list[dict[str, Any]]) -> list[int]:
    return [event["data"]["n"] for event in events]


async def test_every_client_command(start_app: StartApp, js_client: JsClientFactory) -> None:
    """connect, subscribe, publish, presence, presence_stats, history, rpc, send, unsubscribe."""
    sent: list[tuple[str, Any]] = []
    got_send = asyncio.Event()
    app = Tidings(make_config())

    @app.rpc("echo")
    async def echo(ctx: RPCContext, params: Any) -> Any:
        return params

    @app.on_message
    async def on_send(ctx: MessageContext, data: Any) -> None:
        sent.append((ctx.user, data))
        got_send.set()

    server = await start_app(app)

    js = await js_client()
    await js.create(
        server.ws_url,
        token=token("alice", info={"name": "Alice"}),
        name="compat",
        headers={"X-Tenant": "acme"},
    )
    connected = await js.connect()
    client_id = connected["client"]
    assert connected["transport"] == "websocket"
    session = server.node.clients[client_id]
    assert (session.user, session.name) == ("alice", "compat")
    assert session.client_headers == {"X-Tenant": "acme"}

    subscribed = await js.subscribe("chat:tour", joinLeave=True)
    assert subscribed["recoverable"] is True and subscribed["positioned"] is True
    assert subscribed["wasRecovering"] is False
    epoch = subscribed["streamPosition"]["epoch"]
    assert len(epoch) == 8
    join = await js.log.next("join", "chat:tour")
    assert join["info"]["client"] == client_id
    assert join["info"]["connInfo"] == {"name": "Alice"}

    assert await js.call("publish", channel="chat:tour", data={"n": 1}) == {}
    own = await js.log.next("publication", "chat:tour")
    assert own["data"] == {"n": 1} and own["offset"] == 1
    assert own["info"]["user"] == "alice" and own["info"]["client"] == client_id

    presence = await js.call("presence", channel="chat:tour")
    assert list(presence["clients"]) == [client_id]
    assert presence["clients"][client_id]["user"] == "alice"
    assert presence["clients"][client_id]["connInfo"] == {"name": "Alice"}
    stats = await js.call("presence_stats", channel="chat:tour")
    assert stats == {"numClients": 1, "numUsers": 1}

    for n in (2, 3, 4):
        await server.node.publish("chat:tour", {"n": n})
    assert numbers(await js.log.collect("publication", 3, "chat:tour")) == [2, 3, 4]
    latest = await js.call("history", channel="chat:tour", options={"limit": 2, "reverse": True})
    assert [p["offset"] for p in latest["publications"]] == [4, 3]
    assert (latest["offset"], latest["epoch"]) == (4, epoch)
    since = await js.call(
        "history",
        channel="chat:tour",
        options={"limit": 10, "since": {"offset": 2, "epoch": epoch}},
    )
    assert [p["data"] for p in since["publications"]] == [{"n": 3}, {"n": 4}]

    assert await js.call("rpc", method="echo", data={"ping": [1, 2]}) == {"data": {"ping": [1, 2]}}
    with pytest.raises(JsError) as unknown:
        await js.call("rpc", method="no-such-method", data={})
    assert (unknown.value.code, unknown.value.message) == (104, "method not found")

    await js.call("send", data={"note": "fire and forget"})
    await asyncio.wait_for(got_send.wait(), EVENT_TIMEOUT)
    assert sent == [("alice", {"note": "fire and forget"})]

    await js.call("unsubscribe", channel="chat:tour")
    unsubscribed = await js.log.next("unsubscribed", "chat:tour")
    assert unsubscribed["code"] == 0  # unsubscribe() called by the app
    await eventually(
        lambda: "chat:tour" not in session.subscriptions,
        what="the server to drop the subscription",
        within=EVENT_TIMEOUT,
    )
    assert await server.node.presence.presence_stats("chat:tour") == (0, 0)

    await js.call("disconnect")
    disconnected = await js.log.next("disconnected", "client")
    assert disconnected["code"] == 0  # disconnect() called by the app
    await eventually(
        lambda: client_id not in server.node.clients,
        what="the session to end",
        within=EVENT_TIMEOUT,
    )
    assert not js.log.named("error")


async def test_join_and_leave_between_js_and_python(
    server: RunningServer, js_client: JsClientFactory, py_client: PyClientFactory
) -> None:
    js = await js_client()
    await js.create(server.ws_url, token=token("alice"))
    await js.connect()
    await js.subscribe("chat:jl", joinLeave=True)
    await js.log.next("join", "chat:jl", where=lambda ctx: ctx["info"]["user"] == "alice")

    bob, bob_log = py_client(server.ws_url, token=token("bob", info={"name": "Bob"}))
    bob_sub = bob.new_subscription("chat:jl", events=py_subscription_events(bob_log, "chat:jl"))
    await bob.connect()
    bob_id = (await bob_log.next("connected", "client")).client
    await bob_sub.subscribe()
    await bob_sub.ready(timeout=EVENT_TIMEOUT)

    join = await js.log.next("join", "chat:jl")
    assert join["info"] == {"client": bob_id, "user": "bob", "connInfo": {"name": "Bob"}}
    await bob_sub.publish({"text": "from python"})
    publication = await js.log.next("publication", "chat:jl")
    assert publication["data"] == {"text": "from python"}
    assert publication["info"]["client"] == bob_id

    await bob.disconnect()
    leave = await js.log.next("leave", "chat:jl")
    assert leave["info"]["client"] == bob_id and leave["info"]["user"] == "bob"


async def test_recovery_after_api_disconnect_with_reconnect_code(
    server: RunningServer, js_client: JsClientFactory, cent_api: ApiFactory
) -> None:
    """Disconnect 3011: the SDK reconnects and recovers what was published meanwhile."""
    js = await js_client()
    await js.create(server.ws_url, token=token("alice"))
    first = await js.connect()
    await js.subscribe("chat:recover")
    for n in (1, 2):
        await server.node.publish("chat:recover", {"n": n})
    assert numbers(await js.log.collect("publication", 2, "chat:recover")) == [1, 2]

    api = cent_api(server)
    force_reconnect = Disconnect(code=3011, reason="force reconnect")
    await api.disconnect(DisconnectRequest(user="alice", disconnect=force_reconnect))
    # The SDK waits at least minReconnectDelay (500 ms) before it reconnects; the
    # publications below land well inside that window, while it has no connection.
    await eventually(
        lambda: first["client"] not in server.node.clients,
        what="the server to drop alice",
        within=EVENT_TIMEOUT,
    )
    for n in range(3, 8):
        await server.node.publish("chat:recover", {"n": n})

    connecting = await js.log.next("connecting", "client", where=lambda ctx: ctx["code"] != 0)
    assert (connecting["code"], connecting["reason"]) == (3011, "force reconnect")
    second = await js.log.next("connected", "client")
    assert second["client"] != first["client"]
    resubscribed = await js.log.next("subscribed", "chat:recover")
    assert resubscribed["wasRecovering"] is True and resubscribed["recovered"] is True
    assert numbers(await js.log.collect("publication", 5, "chat:recover")) == [3, 4, 5, 6, 7]

    await server.node.publish("chat:recover", {"n": 8})
    await js.log.next("publication", "chat:recover", where=lambda ctx: ctx["data"]["n"] == 8)
    everything = [event.ctx for event in js.log.named("publication", "chat:recover")]
    assert numbers(everything) == list(range(1, 9))
    assert [ctx["offset"] for ctx in everything] == list(range(1, 9))


async def test_first_subscribe_from_a_known_position(
    server: RunningServer, js_client: JsClientFactory
) -> None:
    """The ``since`` option: recover from a position the app saved, on the first subscribe."""
    positions = [await server.node.publish("chat:since", {"n": n}) for n in range(1, 6)]
    js = await js_client()
    await js.create(server.ws_url, token=token("alice"))
    await js.connect()
    since = {"offset": 2, "epoch": positions[1].epoch}
    subscribed = await js.subscribe("chat:since", since=since)
    assert subscribed["wasRecovering"] is True and subscribed["recovered"] is True
    assert numbers(await js.log.collect("publication", 3, "chat:since")) == [3, 4, 5]
    await server.node.publish("chat:since", {"n": 6})
    await js.log.next("publication", "chat:since")
    assert numbers([e.ctx for e in js.log.named("publication")]) == [3, 4, 5, 6]


async def test_recovery_after_server_restart_on_the_same_port(
    launch: Launch, js_client: JsClientFactory
) -> None:
    """The history outlives the node (as with Redis): publications made while the
    server was down arrive after the restart with ``recovered: true``, each once."""
    broker = HistoryKeepingBroker()
    first = await launch(broker=broker)
    js = await js_client()
    await js.create(first.ws_url, token=token("alice"), **FAST_RECONNECT)
    await js.connect()
    subscribed = await js.subscribe("chat:restart")
    for n in (1, 2):
        await first.node.publish("chat:restart", {"n": n})
    assert numbers(await js.log.collect("publication", 2, "chat:restart")) == [1, 2]

    await first.server.stop()
    connecting = await js.log.next("connecting", "client", where=lambda ctx: ctx["code"] != 0)
    assert (connecting["code"], connecting["reason"]) == (3001, "shutdown")

    async def publish_while_away(node: Node) -> None:
        for n in range(3, 7):
            await node.publish("chat:restart", {"n": n})

    second = await launch(make_config(port=first.port), broker=broker, prepare=publish_while_away)
    assert second.port == first.port
    resubscribed = await js.log.next("subscribed", "chat:restart", within=15)
    assert resubscribed["wasRecovering"] is True and resubscribed["recovered"] is True
    assert resubscribed["streamPosition"]["epoch"] == subscribed["streamPosition"]["epoch"]
    assert numbers(await js.log.collect("publication", 4, "chat:restart")) == [3, 4, 5, 6]

    await second.node.publish("chat:restart", {"n": 7})
    await js.log.next("publication", "chat:restart", where=lambda ctx: ctx["data"]["n"] == 7)
    assert numbers([e.ctx for e in js.log.named("publication")]) == list(range(1, 8))


async def test_no_recovery_after_in_memory_server_restart(
    launch: Launch, js_client: JsClientFactory
) -> None:
    """A restarted in-memory node starts a new epoch: ``recovered: false``, nothing replayed."""
    first = await launch()
    js = await js_client()
    await js.create(first.ws_url, token=token("alice"), **FAST_RECONNECT)
    await js.connect()
    subscribed = await js.subscribe("chat:lost")
    await first.node.publish("chat:lost", {"n": 1})
    await js.log.next("publication", "chat:lost")
    await first.server.stop()
    await js.log.next("connecting", "client", where=lambda ctx: ctx["code"] == 3001)

    async def publish_while_away(node: Node) -> None:
        await node.publish("chat:lost", {"n": 2})

    second = await launch(make_config(port=first.port), prepare=publish_while_away)
    resubscribed = await js.log.next("subscribed", "chat:lost", within=15)
    assert resubscribed["wasRecovering"] is True and resubscribed["recovered"] is False
    position = resubscribed["streamPosition"]
    assert position["epoch"] != subscribed["streamPosition"]["epoch"]
    assert position["offset"] == 1

    await second.node.publish("chat:lost", {"n": 3})
    live = await js.log.next("publication", "chat:lost")
    assert live["data"] == {"n": 3}, "a publication of the lost epoch was replayed"
    assert live["offset"] == 2


@pytest.mark.timeout(30)
async def test_connection_token_refresh_with_get_token(
    start_server: StartServer, js_client: JsClientFactory
) -> None:
    """A 2 s connection token: the SDK calls getToken again and sends ``refresh``."""
    server = await start_server(expired_close_delay=5.0)
    issued: list[str] = []

    def tokens(kind: str, channel: str | None) -> str:
        assert (kind, channel) == ("connection", None)
        issued.append(token("alice", ttl=2 if not issued else 3600))
        return issued[-1]

    js = await js_client(tokens)
    await js.create(server.ws_url, get_token=True)
    connected = await js.connect()
    session = server.node.clients[connected["client"]]
    assert session.expire_at is not None
    first_expiry = session.expire_at

    await js.log.collect("token_request", 2, "client")
    await eventually(
        lambda: session.expire_at is not None and session.expire_at > first_expiry + 600,
        what="the refresh command to move the connection's expiry",
        within=EVENT_TIMEOUT,
    )
    assert server.node.clients.get(connected["client"]) is session
    assert (await js.state())["client"] == "connected"
    assert len(js.log.named("connected")) == 1
    assert [e.ctx["code"] for e in js.log.named("connecting")] == [0]
    assert not js.log.named("disconnected") and not js.log.named("error")


@pytest.mark.timeout(30)
async def test_private_channel_subscription_token_and_sub_refresh(
    start_server: StartServer, js_client: JsClientFactory
) -> None:
    """``$`` channel: getToken(ctx) supplies the subscription JWT, then ``sub_refresh``."""
    server = await start_server(expired_close_delay=5.0)
    issued: list[str] = []

    def tokens(kind: str, channel: str | None) -> str:
        assert (kind, channel) == ("subscription", "$chat:secret")
        ttl = 2 if not issued else 3600
        issued.append(token("alice", channel=channel, ttl=ttl, info={"role": "insider"}))
        return issued[-1]

    js = await js_client(tokens)
    await js.create(server.ws_url, token=token("alice"))
    connected = await js.connect()
    await js.subscribe("$chat:secret", get_token=True)
    session = server.node.clients[connected["client"]]
    subscription = session.subscriptions["$chat:secret"]
    assert subscription.expire_at is not None
    first_expiry = subscription.expire_at

    await js.log.collect("token_request", 2, "$chat:secret")
    await eventually(
        lambda: subscription.expire_at is not None and subscription.expire_at > first_expiry + 600,
        what="sub_refresh to move the subscription's expiry",
        within=EVENT_TIMEOUT,
    )
    assert session.subscriptions["$chat:secret"] is subscription
    assert len(js.log.named("subscribed", "$chat:secret")) == 1

    await js.call("publish", channel="$chat:secret", data={"n": 1})
    publication = await js.log.next("publication", "$chat:secret")
    assert publication["info"]["chanInfo"] == {"role": "insider"}

    await js.call("new_subscription", channel="$chat:no-token", options={})
    await js.call("subscribe", channel="$chat:no-token")
    refused = await js.log.next("unsubscribed", "$chat:no-token")
    assert (refused["code"], refused["reason"]) == (103, "permission denied")
    assert (await js.state())["client"] == "connected"


async def test_server_side_subscriptions(
    server: RunningServer, js_client: JsClientFactory, cent_api: ApiFactory
) -> None:
    """Channels from the token's ``channels`` claim and from the API ``subscribe``:
    client-level events, as centrifuge-js reports server-side subscriptions."""
    js = await js_client()
    await js.create(server.ws_url, token=token("alice", channels=["chat:personal"]))
    connected = await js.connect()
    subscribed = await js.log.next("subscribed", "client")
    assert subscribed["channel"] == "chat:personal"
    assert subscribed["recoverable"] is True and subscribed["positioned"] is True
    join = await js.log.next("join", "client")
    assert join["channel"] == "chat:personal" and join["info"]["client"] == connected["client"]

    await server.node.publish("chat:personal", {"n": 1})
    publication = await js.log.next("publication", "client")
    assert (publication["channel"], publication["data"], publication["offset"]) == (
        "chat:personal",
        {"n": 1},
        1,
    )
    await js.call("publish", channel="chat:personal", data={"n": 2})
    own = await js.log.next("publication", "client")
    assert own["data"] == {"n": 2} and own["info"]["user"] == "alice"

    api = cent_api(server)
    await api.subscribe(SubscribeRequest(user="alice", channel="chat:added", data={"why": "api"}))
    added = await js.log.next("subscribed", "client", where=lambda c: c["channel"] == "chat:added")
    assert added["data"] == {"why": "api"}
    await api.publish(PublishRequest(channel="chat:added", data={"n": 3}))
    pushed = await js.log.next("publication", "client")
    assert (pushed["channel"], pushed["data"]) == ("chat:added", {"n": 3})

    await api.unsubscribe(UnsubscribeRequest(user="alice", channel="chat:added"))
    removed = await js.log.next("unsubscribed", "client")
    assert removed["channel"] == "chat:added"
    assert "chat:added" not in server.node.clients[connected["client"]].subscriptions


async def test_api_unsubscribe_reaches_the_subscription_with_code_2000(
    server: RunningServer, js_client: JsClientFactory, cent_api: ApiFactory
) -> None:
    js = await js_client()
    await js.create(server.ws_url, token=token("alice"))
    await js.connect()
    await js.subscribe("chat:kick")
    await cent_api(server).unsubscribe(UnsubscribeRequest(user="alice", channel="chat:kick"))
    unsubscribed = await js.log.next("unsubscribed", "chat:kick")
    assert (unsubscribed["code"], unsubscribed["reason"]) == (2000, "server unsubscribe")
    state = await js.state()
    assert state == {"client": "connected", "subs": {"chat:kick": "unsubscribed"}}


async def test_api_disconnect_with_terminal_code(
    server: RunningServer, js_client: JsClientFactory, cent_api: ApiFactory
) -> None:
    """3503 "force disconnect" (the API default) is terminal: disconnected, no reconnect."""
    js = await js_client()
    await js.create(server.ws_url, token=token("alice"))
    await js.connect()
    await cent_api(server).disconnect(DisconnectRequest(user="alice"))
    disconnected = await js.log.next("disconnected", "client")
    assert (disconnected["code"], disconnected["reason"]) == (3503, "force disconnect")
    assert (await js.state())["client"] == "disconnected"
    assert [e.ctx["code"] for e in js.log.named("connecting")] == [0]
    assert "alice" not in server.node.users


async def test_server_side_subscription_recovers_after_reconnect(
    server: RunningServer, js_client: JsClientFactory, cent_api: ApiFactory
) -> None:
    """On reconnect centrifuge-js sends ``connect.subs`` with its positions (docs/protocol.md
    section 4): the token's channels are recovered, publications once and in order."""
    js = await js_client()
    await js.create(server.ws_url, token=token("alice", channels=["chat:personal"]))
    first = await js.connect()
    await js.log.next("subscribed", "client")
    await server.node.publish("chat:personal", {"n": 1})
    await js.log.next("publication", "client")

    await cent_api(server).disconnect(
        DisconnectRequest(user="alice", disconnect=Disconnect(code=3011, reason="reconnect"))
    )
    await eventually(
        lambda: first["client"] not in server.node.clients,
        what="the server to drop alice",
        within=EVENT_TIMEOUT,
    )
    for n in (2, 3):
        await server.node.publish("chat:personal", {"n": n})

    again = await js.log.next("subscribed", "client", where=lambda ctx: ctx["wasRecovering"])
    assert again["channel"] == "chat:personal" and again["recovered"] is True
    assert numbers(await js.log.collect("publication", 2, "client")) == [2, 3]
    await server.node.publish("chat:personal", {"n": 4})
    await js.log.next("publication", "client")
    assert numbers([e.ctx for e in js.log.named("publication")]) == [1, 2, 3, 4]


async def test_message_over_the_size_limit_is_terminal(
    start_server: StartServer, js_client: JsClientFactory
) -> None:
    """The server closes with 1009; centrifuge-js reports "message size limit" and stops."""
    server = await start_server(max_message_size=4096)
    js = await js_client()
    await js.create(server.ws_url, token=token("alice"))
    await js.connect()
    with pytest.raises(JsError):
        await js.call("publish", channel="open:big", data={"blob": "x" * 8192})
    disconnected = await js.log.next("disconnected", "client")
    assert (disconnected["code"], disconnected["reason"]) == (3, "message size limit exceeded")
    assert (await js.state())["client"] == "disconnected"
    assert "alice" not in server.node.users


async def test_delta_requested_but_not_negotiated(
    server: RunningServer, js_client: JsClientFactory
) -> None:
    """``delta: 'fossil'`` is a request: without ``delta: true`` in the reply, data stays plain."""
    js = await js_client()
    await js.create(server.ws_url, token=token("alice"))
    await js.connect()
    await js.subscribe("chat:delta", delta="fossil")
    for n in (1, 2):
        await server.node.publish("chat:delta", {"n": n, "text": "same text every time"})
    publications = await js.log.collect("publication", 2, "chat:delta")
    assert [p["data"] for p in publications] == [
        {"n": 1, "text": "same text every time"},
        {"n": 2, "text": "same text every time"},
    ]
