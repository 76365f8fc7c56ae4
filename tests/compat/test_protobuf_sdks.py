"""The real SDKs in Protobuf mode against tidings: the scenarios the JSON compat tests run.

* centrifuge-js (npm ``centrifuge``, its ``centrifuge/build/protobuf`` build, unmodified)
  under Node 20, on WebSocket (``centrifuge-protobuf`` subprotocol) and on ``http_stream``
  (``application/octet-stream``, commands through Protobuf ``POST /emulation``);
* centrifuge-python with ``use_protobuf=True`` (WebSocket, its only transport).

Connect, subscribe, publish, history, presence, RPC, error codes, recovery after the
connection drops, delta compression, and a channel shared with JSON clients. In
Protobuf ``data`` is bytes: the SDKs hand the tests the bytes the server sent, which
must be the JSON text that was published.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from centrifuge import ClientState, DeltaType, ReplyError, StreamPosition

from tests.compat.conftest import (
    EVENT_TIMEOUT,
    EventLog,
    JsClientFactory,
    JsError,
    PyClientFactory,
    py_subscription_events,
)
from tests.conftest import (
    RunningServer,
    StartApp,
    StartServer,
    full_namespace,
    make_config,
    standard_channels,
    token,
)
from tests.support.polling import eventually
from tidings import ClientError, RPCContext, Tidings
from tidings.session import Session

TRANSPORTS = ["websocket", "http_stream"]


def as_bytes(value: Any) -> bytes:
    """What the driver reports for a Uint8Array: ``{"__bytes__": <base64>}``."""
    assert isinstance(value, dict) and "__bytes__" in value, value
    return base64.b64decode(value["__bytes__"])


def js_data(ctx: dict[str, Any]) -> Any:
    return json.loads(as_bytes(ctx["data"]))


def js_endpoint(server: RunningServer, transport: str) -> Any:
    if transport == "websocket":
        return server.ws_url
    return [{"transport": "http_stream", "endpoint": f"{server.http_url}/connection/http_stream"}]


async def js_protobuf_client(
    js_client: JsClientFactory, server: RunningServer, transport: str, user: str, **options: Any
) -> Any:
    js = await js_client()
    await js.call(
        "create",
        url=js_endpoint(server, transport),
        token=token(user),
        getToken=False,
        protobuf=True,
        options={"emulationEndpoint": f"{server.http_url}/emulation", **options},
    )
    return js


def session_of(server: RunningServer, client_id: str) -> Session:
    session = server.node.clients[client_id]
    assert isinstance(session, Session)
    return session


def drop(session: Session) -> None:
    """Cut the connection under the client: no close frame, no disconnect push."""
    transport: Any = session.transport
    socket = transport.transport if hasattr(transport, "ws") else transport.stream.transport
    socket.abort()


def count_pings(monkeypatch: pytest.MonkeyPatch) -> dict[Session, int]:
    """Pings the node's ping wheel sends, per session (the real ``Session.ping`` runs)."""
    sent: dict[Session, int] = {}
    ping = Session.ping

    def counting(session: Session, frame: bytes, *, tick: int = 0) -> None:
        assert frame == b"\x82\x01\x00" or frame.endswith(b"\x00\r\n")  # an empty Reply
        sent[session] = sent.get(session, 0) + 1
        ping(session, frame, tick=tick)

    monkeypatch.setattr(Session, "ping", counting)
    return sent


def numbers(values: list[Any]) -> list[int]:
    return [value["n"] for value in values]


# --------------------------------------------------------------------------- centrifuge-js


@pytest.mark.node
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_js_every_client_command(
    start_app: StartApp, js_client: JsClientFactory, transport: str
) -> None:
    app = Tidings(make_config())

    @app.rpc("echo")
    async def echo(ctx: RPCContext, params: Any) -> Any:
        return {"user": ctx.user, "got": params}

    server = await start_app(app)
    js = await js_protobuf_client(js_client, server, transport, "alice")
    connected = await js.connect()
    assert connected["transport"] == transport
    client_id = connected["client"]
    assert session_of(server, client_id).wire.codec.name == "protobuf"

    subscribed = await js.subscribe("chat:tour", joinLeave=True)
    assert subscribed["recoverable"] is True and subscribed["positioned"] is True
    epoch = subscribed["streamPosition"]["epoch"]
    join = await js.log.next("join", "chat:tour")
    assert join["info"]["client"] == client_id and join["info"]["user"] == "alice"

    assert await js.call("publish", channel="chat:tour", data={"n": 1}) == {}
    own = await js.log.next("publication", "chat:tour")
    assert as_bytes(own["data"]) == b'{"n":1}' and own["offset"] == 1
    assert own["info"]["user"] == "alice"

    presence = await js.call("presence", channel="chat:tour")
    assert list(presence["clients"]) == [client_id]
    stats = await js.call("presence_stats", channel="chat:tour")
    assert stats == {"numClients": 1, "numUsers": 1}

    for n in (2, 3, 4):
        await server.node.publish("chat:tour", {"n": n})
    got = await js.log.collect("publication", 3, "chat:tour")
    assert [js_data(ctx) for ctx in got] == [{"n": 2}, {"n": 3}, {"n": 4}]
    latest = await js.call("history", channel="chat:tour", options={"limit": 2, "reverse": True})
    assert [p["offset"] for p in latest["publications"]] == [4, 3]
    assert (latest["offset"], latest["epoch"]) == (4, epoch)
    since = await js.call(
        "history",
        channel="chat:tour",
        options={"limit": 10, "since": {"offset": 2, "epoch": epoch}},
    )
    assert [js_data(p) for p in since["publications"]] == [{"n": 3}, {"n": 4}]

    result = await js.call("rpc", method="echo", data={"x": [1, 2]})
    assert js_data(result) == {"user": "alice", "got": {"x": [1, 2]}}
    with pytest.raises(JsError) as unknown:
        await js.call("rpc", method="no-such-method", data={})
    assert (unknown.value.code, unknown.value.message) == (104, "method not found")
    with pytest.raises(JsError) as binary:
        await js.call("publish", channel="chat:tour", data={"__bytes__": "AP8A"})
    assert (binary.value.code, binary.value.message) == (107, "bad request")

    await js.call("new_subscription", channel="nowhere:x", options={})
    await js.call("subscribe", channel="nowhere:x")
    refused = await js.log.next("unsubscribed", "nowhere:x")
    assert refused["code"] == 102

    await js.call("unsubscribe", channel="chat:tour")
    assert (await js.log.next("unsubscribed", "chat:tour"))["code"] == 0
    await js.call("disconnect")
    assert (await js.log.next("disconnected", "client"))["code"] == 0
    await eventually(
        lambda: client_id not in server.node.clients, what="the session to end", within=10
    )
    assert not js.log.named("error")


@pytest.mark.node
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_js_recovers_after_the_connection_drops(
    server: RunningServer, js_client: JsClientFactory, transport: str
) -> None:
    """The socket dies (no close frame, no disconnect push): the SDK reconnects and
    recovers what was published meanwhile, each publication once and in order."""
    js = await js_protobuf_client(js_client, server, transport, "alice", minReconnectDelay=500)
    first = await js.connect()
    await js.subscribe("chat:drop")
    for n in (1, 2):
        await server.node.publish("chat:drop", {"n": n})
    assert [js_data(c) for c in await js.log.collect("publication", 2, "chat:drop")] == [
        {"n": 1},
        {"n": 2},
    ]

    drop(session_of(server, first["client"]))
    await eventually(
        lambda: first["client"] not in server.node.clients,
        what="the server to notice the dropped connection",
        within=EVENT_TIMEOUT,
    )
    for n in range(3, 8):  # the SDK waits at least minReconnectDelay before reconnecting
        await server.node.publish("chat:drop", {"n": n})

    second = await js.log.next("connected", "client")
    assert second["client"] != first["client"]
    again = await js.log.next("subscribed", "chat:drop", where=lambda ctx: ctx["wasRecovering"])
    assert again["recovered"] is True
    await server.node.publish("chat:drop", {"n": 8})
    await js.log.next("publication", "chat:drop", where=lambda ctx: js_data(ctx)["n"] == 8)
    everything = [e.ctx for e in js.log.named("publication", "chat:drop")]
    assert numbers([js_data(ctx) for ctx in everything]) == list(range(1, 9))
    assert [ctx["offset"] for ctx in everything] == list(range(1, 9))


@pytest.mark.node
async def test_js_delta_fossil_over_protobuf_gets_the_same_data_in_fewer_bytes(
    start_server: StartServer, js_client: JsClientFactory
) -> None:
    channels = standard_channels()
    channels.namespaces["board"] = full_namespace(
        allowed_delta_types=["fossil"], delta_publish=True, join_leave=False, presence=False
    )
    server = await start_server(make_config(channels=channels))
    clients = {}
    for name, options in (("delta", {"delta": "fossil"}), ("plain", {})):
        js = clients[name] = await js_protobuf_client(js_client, server, "websocket", name)
        await js.connect()
        await js.subscribe("board:acme", **options)
        await js.call("bytes_received")  # count from here
    quotes = [{"symbol": "ACME", "bid": 100 + n, "text": "x" * 400} for n in range(10)]
    for quote in quotes:
        await server.node.publish("board:acme", quote)
    received = {
        name: [js_data(c) for c in await js.log.collect("publication", 10, "board:acme")]
        for name, js in clients.items()
    }
    assert received["delta"] == received["plain"] == quotes
    sizes = {name: await js.call("bytes_received") for name, js in clients.items()}
    assert sizes["delta"] < sizes["plain"] / 3, sizes


@pytest.mark.node
@pytest.mark.timeout(40)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_js_answers_protobuf_pings(
    start_server: StartServer,
    js_client: JsClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
) -> None:
    """The server's ping is one empty Reply; the SDK's pong (an empty Command, through
    ``/emulation`` on http_stream) keeps the connection through several pings."""
    pings = count_pings(monkeypatch)
    server = await start_server(ping_interval=2.0, pong_timeout=1.0)
    js = await js_protobuf_client(js_client, server, transport, "alice")
    client_id = (await js.connect())["client"]
    session = session_of(server, client_id)
    await eventually(lambda: pings.get(session, 0) >= 3, what="three pings", within=20)
    await eventually(lambda: not session.awaiting_pong, what="the third pong", within=5)
    assert server.node.clients.get(client_id) is session
    assert not js.log.named("disconnected") and len(js.log.named("connected")) == 1


# --------------------------------------------------------------------------- centrifuge-python


async def py_protobuf_client(
    py_client: PyClientFactory, server: RunningServer, user: str, **options: Any
) -> tuple[Any, EventLog, str]:
    client, log = py_client(server.ws_url, token=token(user), use_protobuf=True, **options)
    await client.connect()
    connected = await log.next("connected", "client")
    return client, log, connected.client


async def py_subscribed(client: Any, log: EventLog, channel: str, **options: Any) -> Any:
    subscription = client.new_subscription(
        channel, events=py_subscription_events(log, channel), **options
    )
    await subscription.subscribe()
    await subscription.ready(timeout=EVENT_TIMEOUT)
    return subscription


async def test_python_every_client_command(start_app: StartApp, py_client: PyClientFactory) -> None:
    app = Tidings(make_config())

    @app.rpc("echo")
    async def echo(ctx: RPCContext, params: Any) -> Any:
        return {"user": ctx.user, "got": params}

    @app.rpc("refuse")
    async def refuse(ctx: RPCContext, params: Any) -> Any:
        raise ClientError(1001, "not today")

    server = await start_app(app)
    client, log, client_id = await py_protobuf_client(py_client, server, "alice")
    assert session_of(server, client_id).wire.codec.name == "protobuf"
    sub = await py_subscribed(client, log, "chat:tour", join_leave=True, recoverable=True)
    first = await log.next("subscribed", "chat:tour")
    assert first.recoverable and first.positioned
    epoch = first.stream_position.epoch
    join = await log.next("join", "chat:tour")
    assert (join.info.client, join.info.user) == (client_id, "alice")

    payload = json.dumps({"n": 1}).encode()  # what the SDK's own suite sends: b'{"n": 1}'
    await sub.publish(payload)
    own = await log.next("publication", "chat:tour")
    assert (own.pub.data, own.pub.offset) == (payload, 1)  # the very bytes
    presence = await sub.presence()
    assert list(presence.clients) == [client_id]
    stats = await sub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (1, 1)

    for n in (2, 3, 4):
        await server.node.publish("chat:tour", {"n": n})
    got = await log.collect("publication", 3, "chat:tour")
    assert [json.loads(ctx.pub.data) for ctx in got] == [{"n": 2}, {"n": 3}, {"n": 4}]
    latest = await sub.history(limit=2, reverse=True)
    assert [p.offset for p in latest.publications] == [4, 3]
    assert (latest.offset, latest.epoch) == (4, epoch)
    since = await sub.history(limit=-1, since=StreamPosition(offset=2, epoch=epoch))
    assert [json.loads(p.data) for p in since.publications] == [{"n": 3}, {"n": 4}]
    with pytest.raises(ReplyError) as wrong_epoch:
        await sub.history(limit=1, since=StreamPosition(offset=1, epoch="other"))
    assert wrong_epoch.value.code == 112

    result = await client.rpc("echo", b'{"x":1}')
    assert json.loads(result.data) == {"user": "alice", "got": {"x": 1}}
    with pytest.raises(ReplyError) as unknown:
        await client.rpc("no-such-method", b"{}")
    assert (unknown.value.code, unknown.value.message) == (104, "method not found")
    with pytest.raises(ReplyError) as refused:
        await client.rpc("refuse", b"{}")
    assert (refused.value.code, refused.value.message) == (1001, "not today")
    with pytest.raises(ReplyError) as binary:
        await sub.publish(b"\x00\xff")
    assert binary.value.code == 107
    assert client.state == ClientState.CONNECTED

    await sub.unsubscribe()
    assert (await log.next("unsubscribed", "chat:tour")).code == 0
    await client.disconnect()
    assert (await log.next("disconnected", "client")).code == 0
    assert not log.named("error")


async def test_python_recovers_after_the_connection_drops(
    server: RunningServer, py_client: PyClientFactory
) -> None:
    client, log, first_id = await py_protobuf_client(
        py_client, server, "alice", min_reconnect_delay=0.5
    )
    await py_subscribed(client, log, "chat:drop", recoverable=True)
    for n in (1, 2):
        await server.node.publish("chat:drop", {"n": n})
    await log.collect("publication", 2, "chat:drop")

    drop(session_of(server, first_id))
    await eventually(
        lambda: first_id not in server.node.clients,
        what="the server to notice the dropped connection",
        within=EVENT_TIMEOUT,
    )
    for n in range(3, 8):
        await server.node.publish("chat:drop", {"n": n})
    assert (await log.next("connected", "client")).client != first_id
    again = await log.next("subscribed", "chat:drop", where=lambda ctx: ctx.was_recovering)
    assert again.recovered is True
    await server.node.publish("chat:drop", {"n": 8})
    await log.next("publication", "chat:drop", where=lambda ctx: ctx.pub.offset == 8)
    everything = [e.ctx.pub for e in log.named("publication", "chat:drop")]
    assert [json.loads(p.data)["n"] for p in everything] == list(range(1, 9))
    assert [p.offset for p in everything] == list(range(1, 9))


async def test_python_delta_fossil_over_protobuf(
    start_server: StartServer, py_client: PyClientFactory
) -> None:
    """Delta data is the fossil delta's bytes; the SDK rebuilds every publication."""
    channels = standard_channels()
    channels.namespaces["board"] = full_namespace(
        allowed_delta_types=["fossil"], delta_publish=True, join_leave=False, presence=False
    )
    server = await start_server(make_config(channels=channels))
    client, log, client_id = await py_protobuf_client(py_client, server, "alice")
    await py_subscribed(client, log, "board:acme", delta=DeltaType.FOSSIL)
    assert session_of(server, client_id).subscriptions["board:acme"].delta is True
    quotes = [{"symbol": "ACME", "bid": 100 + n, "text": "x" * 400} for n in range(10)]
    for quote in quotes:
        await server.node.publish("board:acme", quote)
    got = await log.collect("publication", 10, "board:acme")
    assert [json.loads(ctx.pub.data) for ctx in got] == quotes


@pytest.mark.timeout(40)
async def test_python_answers_protobuf_pings(
    start_server: StartServer, py_client: PyClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = count_pings(monkeypatch)
    server = await start_server(ping_interval=2.0, pong_timeout=1.0)
    client, log, client_id = await py_protobuf_client(py_client, server, "alice")
    session = session_of(server, client_id)
    await eventually(lambda: pings.get(session, 0) >= 3, what="three pings", within=20)
    await eventually(lambda: not session.awaiting_pong, what="the third pong", within=5)
    assert server.node.clients.get(client_id) is session
    assert client.state == ClientState.CONNECTED and not log.named("disconnected")


async def test_python_server_side_subscriptions(
    server: RunningServer, py_client: PyClientFactory
) -> None:
    client, log = py_client(
        server.ws_url, token=token("alice", channels=["chat:personal"]), use_protobuf=True
    )
    await client.connect()
    subscribed = await log.next("subscribed", "client")
    assert subscribed.channel == "chat:personal" and subscribed.recoverable
    await server.node.publish("chat:personal", {"n": 1})
    publication = await log.next("publication", "client")
    assert (publication.channel, json.loads(publication.pub.data)) == ("chat:personal", {"n": 1})


# --------------------------------------------------------------------------- mixed


@pytest.mark.node
async def test_protobuf_js_and_json_python_share_a_channel(
    server: RunningServer, js_client: JsClientFactory, py_client: PyClientFactory
) -> None:
    js = await js_protobuf_client(js_client, server, "websocket", "alice")
    await js.connect()
    await js.subscribe("chat:mixed")
    bob, bob_log = py_client(server.ws_url, token=token("bob"))
    await bob.connect()
    bob_sub = await py_subscribed(bob, bob_log, "chat:mixed")

    await js.call("publish", channel="chat:mixed", data={"from": "protobuf js"})
    await bob_sub.publish({"from": "json python"})
    js_got = [js_data(c) for c in await js.log.collect("publication", 2, "chat:mixed")]
    py_got = [c.pub.data for c in await bob_log.collect("publication", 2, "chat:mixed")]
    expected = [{"from": "protobuf js"}, {"from": "json python"}]
    assert js_got == py_got == expected
