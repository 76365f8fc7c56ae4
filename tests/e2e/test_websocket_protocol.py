"""The client protocol over a real WebSocket on 127.0.0.1: every command, every code.

Each bad-input test checks the exact error or disconnect code, then that the
server still serves a control client (publish reaches it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from tests.conftest import (
    SECRET,
    ClientFactory,
    RunningServer,
    StartApp,
    StartServer,
    assert_still_serving,
    control_client,
    make_config,
    token,
)
from tidings import RPCContext, Tidings
from tidings.auth import make_token


async def test_runs_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_connect_reply(server: RunningServer, ws_client: ClientFactory) -> None:
    client = await ws_client(server.ws_url)
    result = await client.connect(token("alice"), name="js", version="5.0")
    assert len(result["client"]) == 36
    assert result["version"] == server.node.version
    assert result["expires"] is True and 3590 <= result["ttl"] <= 3600
    assert result["ping"] == 25 and result["pong"] is True
    assert "session" not in result and "node" not in result


async def test_connect_reply_precedes_replies_in_the_same_frame(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    client = await ws_client(server.ws_url)
    await client.send(
        {"connect": {"token": token("alice")}, "id": 1},
        {"subscribe": {"channel": "chat:a"}, "id": 2},
        {"subscribe": {"channel": "open:b"}, "id": 3},
    )
    await client.reply(3)
    order = [line for frame in client.frames for line in frame.split("\n")]
    ids = [line.split(",")[0] for line in order if line.startswith('{"id"')]
    assert ids == ['{"id":1', '{"id":2', '{"id":3']


async def test_subscribe_publish_presence_history(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    alice = await ws_client(server.ws_url)
    await alice.connect(token("alice", info={"name": "Alice"}))
    result = await alice.subscribe("chat:room")
    assert result["recoverable"] is True and result["positioned"] is True
    assert len(result["epoch"]) == 8 and result.get("offset", 0) == 0
    join = await alice.push(lambda d: "join" in d.get("push", {}))
    assert join["push"]["join"]["info"]["user"] == "alice"
    assert join["push"]["join"]["info"]["conn_info"] == {"name": "Alice"}

    bob = await ws_client(server.ws_url)
    await bob.connect(token("bob"))
    await bob.subscribe("chat:room")
    bob_join = await alice.push(lambda d: "join" in d.get("push", {}))
    assert bob_join["push"]["join"]["info"]["user"] == "bob"

    reply = await bob.call("publish", {"channel": "chat:room", "data": {"text": "hi"}})
    assert reply == {"id": reply["id"], "publish": {}}
    (publication,) = await alice.publications("chat:room", 1)
    assert publication["data"] == {"text": "hi"}
    assert publication["offset"] == 1
    assert publication["info"]["user"] == "bob"

    presence = await alice.call("presence", {"channel": "chat:room"})
    users = sorted(info["user"] for info in presence["presence"]["presence"].values())
    assert users == ["alice", "bob"]
    stats = await alice.call("presence_stats", {"channel": "chat:room"})
    assert stats["presence_stats"] == {"num_clients": 2, "num_users": 2}

    history = await alice.call("history", {"channel": "chat:room", "limit": 10})
    assert [p["data"] for p in history["history"]["publications"]] == [{"text": "hi"}]
    assert history["history"]["offset"] == 1 and history["history"]["epoch"] == result["epoch"]

    unsubscribe = await bob.call("unsubscribe", {"channel": "chat:room"})
    assert unsubscribe["unsubscribe"] == {}
    leave = await alice.push(lambda d: "leave" in d.get("push", {}))
    assert leave["push"]["leave"]["info"]["user"] == "bob"
    stats = await alice.call("presence_stats", {"channel": "chat:room"})
    assert stats["presence_stats"] == {"num_clients": 1, "num_users": 1}


async def test_disconnect_removes_presence_and_announces_leave(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    alice = await ws_client(server.ws_url)
    await alice.connect(token("alice"))
    await alice.subscribe("chat:room")
    bob = await ws_client(server.ws_url)
    await bob.connect(token("bob"))
    await bob.subscribe("chat:room")
    await bob.close()
    leave = await alice.push(lambda d: "leave" in d.get("push", {}))
    assert leave["push"]["leave"]["info"]["user"] == "bob"
    stats = await alice.call("presence_stats", {"channel": "chat:room"})
    assert stats["presence_stats"] == {"num_clients": 1, "num_users": 1}


async def test_history_limit_since_reverse(server: RunningServer, ws_client: ClientFactory) -> None:
    for n in range(1, 6):
        await server.node.publish("chat:h", {"n": n})
    client = await ws_client(server.ws_url)
    await client.connect(token())
    await client.subscribe("chat:h")

    async def history(**params: Any) -> dict[str, Any]:
        reply = await client.call("history", {"channel": "chat:h", **params})
        assert "history" in reply, reply
        return reply["history"]

    top = await history()
    assert top["publications"] == [] and top["offset"] == 5
    epoch = top["epoch"]
    assert [p["offset"] for p in (await history(limit=2))["publications"]] == [1, 2]
    assert [p["offset"] for p in (await history(limit=2, reverse=True))["publications"]] == [5, 4]
    assert [p["offset"] for p in (await history(limit=-1))["publications"]] == [1, 2, 3, 4, 5]
    since = {"offset": 3, "epoch": epoch}
    assert [p["offset"] for p in (await history(limit=-1, since=since))["publications"]] == [4, 5]
    assert [
        p["offset"] for p in (await history(limit=10, since=since, reverse=True))["publications"]
    ] == [
        2,
        1,
    ]
    bad_epoch = await client.call(
        "history", {"channel": "chat:h", "limit": 1, "since": {"offset": 1, "epoch": "x"}}
    )
    assert bad_epoch["error"] == {"code": 112, "message": "unrecoverable position"}
    bad_reverse = await client.call(
        "history",
        {"channel": "chat:h", "limit": 1, "since": {"offset": 0, "epoch": epoch}, "reverse": True},
    )
    assert bad_reverse["error"]["code"] == 107


async def test_history_is_trimmed_to_size(server: RunningServer, ws_client: ClientFactory) -> None:
    for n in range(1, 8):
        await server.node.publish("small:t", {"n": n})
    client = await ws_client(server.ws_url)
    await client.connect(token())
    await client.subscribe("small:t")
    reply = await client.call("history", {"channel": "small:t", "limit": -1})
    assert [p["offset"] for p in reply["history"]["publications"]] == [5, 6, 7]


async def test_server_ping_and_pong(start_server: StartServer, ws_client: ClientFactory) -> None:
    server = await start_server(ping_interval=0.2, pong_timeout=0.5)
    client = await ws_client(server.ws_url)
    result = await client.connect(token())
    assert result["ping"] == 1 and result["pong"] is True
    for _ in range(3):
        frame = await asyncio.wait_for(client.ws.recv(), 3)
        assert frame == "{}"
        await client.send_raw("{}")
    await client.subscribe("chat:still-here")


async def test_missing_pong_disconnects_with_3012(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    server = await start_server(ping_interval=0.2, pong_timeout=0.3)
    client = await ws_client(server.ws_url)
    await client.connect(token())
    assert await client.closed(timeout=5) == (3012, "no pong")


async def test_no_connect_in_time_closes_with_3502(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    server = await start_server(stale_close_delay=0.3)
    control = await control_client(server, ws_client)
    idle = await ws_client(server.ws_url)
    assert await idle.closed(timeout=5) == (3502, "stale")
    await assert_still_serving(server, control)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param("not json", id="malformed-json"),
        pytest.param('{"id":1,"nonsense":{}}', id="unknown-method"),
        pytest.param('{"id":1,"subscribe":{"channel":"chat:x"}}', id="command-before-connect"),
        pytest.param('{"id":1,"subscribe":{}}', id="missing-channel"),
        pytest.param("", id="empty-frame"),
        pytest.param("{}", id="pong-without-ping"),
    ],
)
async def test_protocol_violations_disconnect_with_3501(
    server: RunningServer, ws_client: ClientFactory, frame: str
) -> None:
    control = await control_client(server, ws_client)
    client = await ws_client(server.ws_url)
    if "before-connect" not in frame and "subscribe" not in frame:
        await client.connect(token())
    await client.send_raw(frame)
    assert await client.closed() == (3501, "bad request")
    await assert_still_serving(server, control)


async def test_second_connect_is_a_violation(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    control = await control_client(server, ws_client)
    client = await ws_client(server.ws_url)
    await client.connect(token())
    await client.send({"connect": {"token": token()}, "id": 2})
    assert await client.closed() == (3501, "bad request")
    await assert_still_serving(server, control)


async def test_binary_frame_disconnects_with_3506(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    control = await control_client(server, ws_client)
    client = await ws_client(server.ws_url)
    await client.connect(token())
    await client.send_raw(b'{"id":2,"presence":{"channel":"chat:x"}}')
    assert await client.closed() == (3506, "inappropriate protocol")
    await assert_still_serving(server, control)


async def test_oversized_frame_closes_with_1009(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    server = await start_server(max_message_size=1024)
    control = await control_client(server, ws_client)
    client = await ws_client(server.ws_url)
    await client.connect(token())
    await client.send({"id": 2, "publish": {"channel": "chat:x", "data": "x" * 2000}})
    code, _ = await client.closed()
    assert code == 1009
    await assert_still_serving(server, control)


async def test_invalid_utf8_closes_with_1007(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    control = await control_client(server, ws_client)
    client = await ws_client(server.ws_url)
    await client.connect(token())
    # A text frame whose payload is not UTF-8: websockets' client refuses to build one,
    # so the frame is written to the socket directly.
    client.ws.protocol.send_text(b"\xff\xfe")  # type: ignore[attr-defined]
    client.ws.send_data()  # type: ignore[attr-defined]
    code, _ = await client.closed()
    assert code == 1007
    await assert_still_serving(server, control)


async def test_connect_token_errors(server: RunningServer, ws_client: ClientFactory) -> None:
    control = await control_client(server, ws_client)

    expired = await ws_client(server.ws_url)
    reply = await expired.call("connect", {"token": make_token(SECRET, user="a", ttl=-10)})
    assert reply["error"] == {"code": 109, "message": "token expired"}

    tampered = await ws_client(server.ws_url)
    good = token("alice")
    await tampered.send(
        {"connect": {"token": good[:-3] + ("AAA" if good[-3:] != "AAA" else "BBB")}, "id": 1}
    )
    assert await tampered.closed() == (3500, "invalid token")

    wrong_key = await ws_client(server.ws_url)
    await wrong_key.send(
        {"connect": {"token": make_token("another-secret-0123456789abcdef01", user="a")}, "id": 1}
    )
    assert await wrong_key.closed() == (3500, "invalid token")

    garbage = await ws_client(server.ws_url)
    await garbage.send({"connect": {"token": "not.a.jwt"}, "id": 1})
    assert await garbage.closed() == (3500, "invalid token")

    subscription_token = await ws_client(server.ws_url)
    await subscription_token.send({"connect": {"token": token("a", channel="chat:x")}, "id": 1})
    assert await subscription_token.closed() == (3500, "invalid token")

    anonymous = await ws_client(server.ws_url)
    await anonymous.send({"connect": {}, "id": 1})
    assert await anonymous.closed() == (3501, "bad request")
    await assert_still_serving(server, control)


async def test_algorithm_comes_from_configuration_not_the_token(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    import base64
    import json as jsonlib

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(jsonlib.dumps(data).encode()).rstrip(b"=").decode()

    unsigned = b64({"alg": "none", "typ": "JWT"}) + "." + b64({"sub": "mallory"}) + "."
    client = await ws_client(server.ws_url)
    await client.send({"connect": {"token": unsigned}, "id": 1})
    assert await client.closed() == (3500, "invalid token")


async def test_anonymous_connect_when_allowed(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    server = await start_server(allow_anonymous_connect_without_token=True)
    client = await ws_client(server.ws_url)
    result = await client.connect()
    assert result["client"]
    assert (await client.subscribe("open:x")) == {}
    denied = await client.call("subscribe", {"channel": "chat:x"})
    assert denied["error"]["code"] == 103


async def test_subscribe_errors(server: RunningServer, ws_client: ClientFactory) -> None:
    control = await control_client(server, ws_client)
    client = await ws_client(server.ws_url)
    await client.connect(token("alice"))

    async def error(channel: str, **params: Any) -> dict[str, Any]:
        reply = await client.call("subscribe", {"channel": channel, **params})
        assert "error" in reply, reply
        return reply["error"]

    assert await error("nowhere:x") == {"code": 102, "message": "unknown channel"}
    assert await error("$private") == {"code": 103, "message": "permission denied"}
    assert await error("x" * 256) == {"code": 107, "message": "bad request"}
    await client.subscribe("chat:dup")
    assert await error("chat:dup") == {"code": 105, "message": "already subscribed"}
    assert (await error("chat:map", type=1, phase=2))["code"] == 103  # not a map namespace
    assert (await error("chat:map", type=4))["code"] == 108  # shared poll
    bad_token = await error("$private", token="garbage")
    assert bad_token["code"] == 103
    expired = await error(
        "$private", token=make_token(SECRET, user="alice", channel="$private", ttl=-5)
    )
    assert expired["code"] == 109
    await assert_still_serving(server, control)


async def test_channel_limit_gives_106(start_server: StartServer, ws_client: ClientFactory) -> None:
    server = await start_server(client_channel_limit=2)
    client = await ws_client(server.ws_url)
    await client.connect(token())
    await client.subscribe("chat:1")
    await client.subscribe("chat:2")
    reply = await client.call("subscribe", {"channel": "chat:3"})
    assert reply["error"] == {"code": 106, "message": "limit exceeded"}


async def test_permission_errors_on_other_commands(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    control = await control_client(server, ws_client)
    client = await ws_client(server.ws_url)
    await client.connect(token())
    # Not subscribed: chat only lets subscribers publish or read presence/history.
    for method in ("publish", "presence", "presence_stats", "history"):
        params: dict[str, Any] = {"channel": "chat:closed"}
        if method == "publish":
            params["data"] = {"x": 1}
        reply = await client.call(method, params)
        assert reply["error"] == {"code": 103, "message": "permission denied"}, method
    await client.subscribe("quiet:x")
    assert (await client.call("presence", {"channel": "quiet:x"}))["error"]["code"] == 108
    assert (await client.call("history", {"channel": "quiet:x"}))["error"]["code"] == 108
    assert (await client.call("publish", {"channel": "nowhere:x", "data": 1}))["error"][
        "code"
    ] == 102
    await client.subscribe("chat:empty")
    assert (await client.call("publish", {"channel": "chat:empty"}))["error"]["code"] == 107
    await assert_still_serving(server, control)


async def test_private_channel_with_subscription_token(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    client = await ws_client(server.ws_url)
    connected = await client.connect(token("alice"))
    sub_token = make_token(SECRET, user="alice", channel="$vip", ttl=600, info={"role": "vip"})
    result = await client.subscribe("$vip", token=sub_token)
    assert result["expires"] is True and 590 <= result["ttl"] <= 600
    refreshed = await client.call(
        "sub_refresh",
        {"channel": "$vip", "token": make_token(SECRET, user="alice", channel="$vip", ttl=900)},
    )
    assert refreshed["sub_refresh"]["expires"] is True and refreshed["sub_refresh"]["ttl"] > 800
    expired = await client.call(
        "sub_refresh",
        {"channel": "$vip", "token": make_token(SECRET, user="alice", channel="$vip", ttl=-5)},
    )
    assert expired["error"]["code"] == 110
    assert connected["client"]


async def test_subscription_token_for_another_user_disconnects_3500(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    client = await ws_client(server.ws_url)
    await client.connect(token("alice"))
    foreign = make_token(SECRET, user="bob", channel="$vip", ttl=600)
    await client.send({"subscribe": {"channel": "$vip", "token": foreign}, "id": 2})
    assert await client.closed() == (3500, "invalid token")


async def test_user_limited_channel(start_server: StartServer, ws_client: ClientFactory) -> None:
    from tests.conftest import make_config, standard_channels
    from tidings.channels import ChannelOptions

    channels = standard_channels()
    channels.namespaces["dm"] = ChannelOptions(allow_user_limited_channels=True)
    server = await start_server(make_config(channels=channels))
    alice = await ws_client(server.ws_url)
    await alice.connect(token("alice"))
    assert (await alice.subscribe("dm:talk#alice,bob")) == {}
    carol = await ws_client(server.ws_url)
    await carol.connect(token("carol"))
    reply = await carol.call("subscribe", {"channel": "dm:talk#alice,bob"})
    assert reply["error"]["code"] == 103


async def test_refresh(server: RunningServer, ws_client: ClientFactory) -> None:
    client = await ws_client(server.ws_url)
    connected = await client.connect(token("alice", ttl=60))
    reply = await client.call("refresh", {"token": token("alice", ttl=7200)})
    result = reply["refresh"]
    assert result["client"] == connected["client"]
    assert result["expires"] is True and 7190 <= result["ttl"] <= 7200


async def test_refresh_for_another_user_disconnects_3500(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    client = await ws_client(server.ws_url)
    await client.connect(token("alice"))
    await client.send({"refresh": {"token": token("bob")}, "id": 2})
    assert await client.closed() == (3500, "invalid token")


async def test_refresh_with_expired_token_disconnects_3005(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    client = await ws_client(server.ws_url)
    await client.connect(token("alice"))
    await client.send({"refresh": {"token": make_token(SECRET, user="alice", ttl=-30)}, "id": 2})
    assert await client.closed() == (3005, "connection expired")


async def test_connection_expires_without_refresh(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    server = await start_server(expired_close_delay=0.2)
    client = await ws_client(server.ws_url)
    result = await client.connect(make_token(SECRET, user="alice", ttl=1))
    assert result["expires"] is True and result["ttl"] <= 1
    assert await client.closed(timeout=6) == (3005, "connection expired")


async def test_rpc_without_any_handler_is_108_and_send_is_ignored(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    """As Centrifugo without an RPC proxy: 108 (not available)."""
    client = await ws_client(server.ws_url)
    await client.connect(token())
    await client.send({"send": {"data": {"hello": 1}}})
    reply = await client.call("rpc", {"method": "nothing", "data": {}})
    assert reply["error"] == {"code": 108, "message": "not available"}


async def test_rpc_handler_registered_in_python(
    start_app: StartApp, ws_client: ClientFactory
) -> None:
    app = Tidings(make_config())

    @app.rpc("echo")
    async def echo(ctx: RPCContext, params: Any) -> Any:
        return params

    server = await start_app(app)
    client = await ws_client(server.ws_url)
    await client.connect(token())
    reply = await client.call("rpc", {"method": "echo", "data": {"x": [1, 2]}})
    assert reply["rpc"] == {"data": {"x": [1, 2]}}
    unknown = await client.call("rpc", {"method": "nothing", "data": {}})
    assert unknown["error"] == {"code": 104, "message": "method not found"}


async def test_server_side_subscriptions_from_token(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    await server.node.publish("chat:news", {"n": 1})
    client = await ws_client(server.ws_url)
    result = await client.connect(token("alice", channels=["chat:news", "nowhere:x"]))
    subs = result["subs"]
    assert list(subs) == ["chat:news"]
    assert subs["chat:news"]["recoverable"] is True and subs["chat:news"]["offset"] == 1
    await server.node.publish("chat:news", {"n": 2})
    (publication,) = await client.publications("chat:news", 1)
    assert publication == {"data": {"n": 2}, "offset": 2}


async def test_shared_frame_for_many_subscribers(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    clients = []
    for index in range(20):
        client = await ws_client(server.ws_url)
        await client.connect(token(f"u{index}"))
        await client.subscribe("open:fan")
        clients.append(client)
    await server.node.publish("open:fan", {"hello": "all"})
    for client in clients:
        (publication,) = await client.publications("open:fan", 1)
        assert publication == {"data": {"hello": "all"}}


async def test_burst_is_coalesced_in_order(server: RunningServer, ws_client: ClientFactory) -> None:
    client = await ws_client(server.ws_url)
    await client.connect(token())
    await client.subscribe("chat:burst")
    await asyncio.gather(*(server.node.publish("chat:burst", {"n": n}) for n in range(50)))
    publications = await client.publications("chat:burst", 50)
    assert [p["offset"] for p in publications] == list(range(1, 51))
    push_frames = [f for f in client.frames if '"pub"' in f]
    assert len(push_frames) < 50  # several publications shared a frame and a write


async def test_unknown_path_and_plain_get(server: RunningServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert first.startswith(b"HTTP/1.1 400")
    writer.close()


async def test_an_empty_subprotocol_header_is_ignored(server: RunningServer) -> None:
    """centrifuge-python 0.6 sends ``Sec-WebSocket-Protocol:`` empty; Centrifugo accepts it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: \r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    assert b"sec-websocket-protocol" not in head.lower()
    writer.close()
