"""The server HTTP API over real HTTP: auth, shapes, errors, and its effect on clients."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import API_KEY, ClientFactory, RunningServer, StartServer, token
from tests.support.http import api, http


async def test_publish_returns_position_and_reaches_subscribers(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    client = await ws_client(server.ws_url)
    await client.connect(token())
    await client.subscribe("chat:api")
    status, answer = await api(
        server.port, "publish", {"channel": "chat:api", "data": {"text": "hi"}}
    )
    assert status == 200
    assert answer["result"]["offset"] == 1 and len(answer["result"]["epoch"]) == 8
    (publication,) = await client.publications("chat:api", 1)
    assert publication == {"data": {"text": "hi"}, "offset": 1}


async def test_pretty_printed_data_is_sent_compact(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    client = await ws_client(server.ws_url)
    await client.connect(token())
    await client.subscribe("open:pretty")
    body = b'{"channel": "open:pretty",\n "data": {\n   "a": [1,\n 2]\n }\n}'
    status, _, answer = await http(
        server.port, "POST", "/api/publish", body, {"X-API-Key": API_KEY}
    )
    assert status == 200 and json.loads(answer) == {"result": {}}
    await client.push(lambda d: "pub" in d.get("push", {}))
    assert '"data":{"a":[1,2]}' in client.frames[-1]


async def test_authentication(server: RunningServer) -> None:
    port = server.port
    body = {"channel": "open:x", "data": 1}
    assert (await http(port, "POST", "/api/publish", body))[0] == 401
    assert (await http(port, "POST", "/api/publish", body, {"X-API-Key": "wrong"}))[0] == 401
    status, headers, answer = await http(port, "POST", "/api/publish", body, {"X-API-Key": "wrong"})
    assert status == 401 and headers["content-type"] == "application/json"
    assert json.loads(answer) == {
        "error": {
            "code": 101,
            "message": "unauthorized",
            "detail": "wrong API key: check the key against the server's api_key (TIDINGS_API_KEY)",
        }
    }
    _, _, answer = await http(port, "POST", "/api/publish", body)
    assert json.loads(answer)["error"]["detail"] == (
        "no API key: send it in X-API-Key (or Authorization: apikey KEY)"
    )
    assert (await http(port, "POST", "/api/publish", body, {"Authorization": f"apikey {API_KEY}"}))[
        0
    ] == 200
    assert (await http(port, "POST", "/api/publish", body, {"Authorization": f"ApiKey {API_KEY}"}))[
        0
    ] == 200
    assert (await http(port, "POST", f"/api/publish?api_key={API_KEY}", body))[0] == 200


async def test_no_key_configured_closes_the_api(start_server: StartServer) -> None:
    server = await start_server(api_key="")
    status, _, body = await http(server.port, "POST", "/api/info", {}, {"X-API-Key": ""})
    assert status == 401
    assert json.loads(body)["error"]["detail"] == (
        "the server API is closed: the server has no api_key "
        "(set TIDINGS_API_KEY or api_key where it runs)"
    )


async def test_bad_requests(server: RunningServer) -> None:
    port = server.port
    key = {"X-API-Key": API_KEY}
    assert (await http(port, "GET", "/api/publish", None, key))[0] == 405
    status, _, body = await http(port, "POST", "/api/publish", b"{not json", key)
    assert status == 400 and b"Traceback" not in body
    not_found = (await api(port, "nosuch", {}))[1]["error"]
    assert (not_found["code"], not_found["message"]) == (104, "not found")
    assert not_found["detail"].startswith("no API method 'nosuch'; methods: publish, broadcast")
    assert (await api(port, "publish", {"data": 1}))[1]["error"]["code"] == 107
    assert (await api(port, "publish", {"channel": "open:x"}))[1]["error"]["code"] == 107
    assert (await api(port, "publish", {"channel": 5, "data": 1}))[1]["error"]["code"] == 107
    assert (await api(port, "publish", {"channel": "nowhere:x", "data": 1}))[1]["error"] == {
        "code": 102,
        "message": "unknown channel",
        "detail": "channel: unknown namespace 'nowhere'; "
        "configure it as [channels.namespaces.nowhere]",
    }
    assert (await api(port, "presence", {"channel": "quiet:x"}))[1]["error"]["code"] == 108
    assert (await api(port, "history", {"channel": "quiet:x"}))[1]["error"]["code"] == 108
    oversized = json.dumps({"channel": "open:x", "data": "x" * 70000}).encode()
    status, _, body = await http(port, "POST", "/api/publish", oversized, key)
    assert (status, body) == (413, b"request body over max_message_size (65536 bytes)")
    # the API still works afterwards
    assert (await api(port, "info", {}))[0] == 200


async def test_transport_error_mode(server: RunningServer) -> None:
    status, _, body = await http(
        server.port,
        "POST",
        "/api/publish",
        {"channel": "nowhere:x", "data": 1},
        {"X-API-Key": API_KEY, "X-Centrifugo-Error-Mode": "transport"},
    )
    assert status == 404 and json.loads(body) == {
        "code": 102,
        "message": "unknown channel",
        "detail": "channel: unknown namespace 'nowhere'; "
        "configure it as [channels.namespaces.nowhere]",
    }


BAD_REQUESTS = [
    ("publish", {"channel": "open:x"}, "data: missing (send data, or b64data)"),
    (
        "publish",
        {"channel": "open:x", "dat": {"text": "hi"}},
        "data: missing (send data, or b64data); unknown field 'dat' (did you mean 'data'?)",
    ),
    (
        "publish",
        {"chanel": "open:x", "data": 1},
        "channel: missing; unknown field 'chanel' (did you mean 'channel'?)",
    ),
    ("publish", {"channel": 5, "data": 1}, "channel: expected str, got int"),
    (
        "publish",
        {"channel": "open:" + "x" * 300, "data": 1},
        "channel: 305 bytes, longer than channel_max_length (255)",
    ),
    (
        "publish",
        {"channel": "open:", "data": 1},
        "channel: not a valid name (no control characters; a namespace and a name on both "
        'sides of ":")',
    ),
    (
        "publish",
        {"channel": "open:x", "b64data": "%%"},
        "b64data: expected base64 of a JSON document",
    ),
    ("broadcast", {"data": 1}, "channels: missing"),
    ("history", {}, "channel: missing"),
    ("subscribe", {"channel": "chat:x"}, "user: missing"),
    (
        "disconnect",
        {"user": "u", "disconnect": {"code": 200}},
        "disconnect.code: expected 3000-4999, got 200",
    ),
]


@pytest.mark.parametrize(("method", "params", "detail"), BAD_REQUESTS)
async def test_bad_request_detail_names_the_field(
    server: RunningServer,
    caplog: pytest.LogCaptureFixture,
    method: str,
    params: dict[str, Any],
    detail: str,
) -> None:
    """The message stays the protocol's fixed text; ``detail`` and the log say what was wrong."""
    caplog.set_level("INFO", logger="tidings.api")
    status, answer = await api(server.port, method, params)
    assert status == 200
    assert answer == {"error": {"code": 107, "message": "bad request", "detail": detail}}
    assert f"API {method} refused: 107 bad request ({detail})" in caplog.messages


async def test_unknown_namespace_is_named_in_the_log(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="tidings.api")
    await api(server.port, "publish", {"channel": "nowhere:x", "data": 1})
    (record,) = [r for r in caplog.records if r.name == "tidings.api"]
    assert "unknown namespace 'nowhere'" in record.getMessage()
    assert (record.code, record.channel) == (102, "nowhere:x")  # type: ignore[attr-defined]


async def test_batch_and_broadcast_errors_carry_details(server: RunningServer) -> None:
    _, answer = await api(
        server.port,
        "batch",
        {"commands": [{"publish": {"channel": "open:x"}}, {"a": {}, "b": {}}]},
    )
    details = [reply["error"]["detail"] for reply in answer["replies"]]
    assert details == [
        "data: missing (send data, or b64data)",
        "commands: each command is an object with exactly one method",
    ]
    _, answer = await api(
        server.port, "broadcast", {"channels": ["open:a", "nowhere:b"], "data": 1}
    )
    assert answer["result"]["responses"][1]["error"]["detail"].startswith(
        "channel: unknown namespace 'nowhere'"
    )


async def test_malformed_body_is_a_json_error(server: RunningServer) -> None:
    status, headers, body = await http(
        server.port, "POST", "/api/publish", b"{not json", {"X-API-Key": API_KEY}
    )
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "error": {"code": 107, "message": "bad request", "detail": "the body is not a JSON object"}
    }


async def test_history_presence_and_channels(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    client = await ws_client(server.ws_url)
    await client.connect(token("alice"))
    await client.subscribe("chat:stats")
    for n in range(3):
        await api(server.port, "publish", {"channel": "chat:stats", "data": {"n": n}})
    _, history = await api(
        server.port, "history", {"channel": "chat:stats", "limit": 2, "reverse": True}
    )
    assert [p["data"]["n"] for p in history["result"]["publications"]] == [2, 1]
    assert history["result"]["offset"] == 3
    _, empty = await api(server.port, "history", {"channel": "chat:unused"})
    assert empty["result"]["publications"] == [] and empty["result"]["offset"] == 0
    _, presence = await api(server.port, "presence", {"channel": "chat:stats"})
    (entry,) = presence["result"]["presence"].values()
    assert entry["user"] == "alice"
    _, stats = await api(server.port, "presence_stats", {"channel": "chat:stats"})
    assert stats["result"] == {"num_clients": 1, "num_users": 1}
    _, channels = await api(server.port, "channels", {"pattern": "chat:*"})
    assert channels["result"]["channels"] == {"chat:stats": {"num_clients": 1}}
    _, removed = await api(server.port, "history_remove", {"channel": "chat:stats"})
    assert removed == {"result": {}}
    _, after = await api(server.port, "history", {"channel": "chat:stats", "limit": -1})
    assert after["result"]["publications"] == [] and after["result"]["offset"] == 3


async def test_info(server: RunningServer, ws_client: ClientFactory) -> None:
    client = await ws_client(server.ws_url)
    await client.connect(token("alice"))
    _, info = await api(server.port, "info", {})
    (node,) = info["result"]["nodes"]
    assert node["uid"] == server.node.id and node["num_clients"] == 1 and node["num_users"] == 1


async def test_broadcast_and_batch(server: RunningServer) -> None:
    _, broadcast = await api(
        server.port, "broadcast", {"channels": ["chat:a", "nowhere:b", "open:c"], "data": {"x": 1}}
    )
    responses = broadcast["result"]["responses"]
    assert responses[0]["result"]["offset"] == 1
    assert responses[1]["error"]["code"] == 102
    assert responses[1]["error"]["message"] == "unknown channel"
    assert responses[2] == {"result": {}}
    assert (await api(server.port, "broadcast", {"channels": [], "data": 1}))[1]["error"][
        "code"
    ] == 107
    _, batch = await api(
        server.port,
        "batch",
        {
            "commands": [
                {"publish": {"channel": "chat:a", "data": 2}},
                {"nosuch": {}},
                {"history": {"channel": "chat:a", "limit": -1}},
            ],
            "parallel": False,
        },
    )
    replies = batch["replies"]
    assert replies[0] == {"publish": {"offset": 2, "epoch": responses[0]["result"]["epoch"]}}
    assert (replies[1]["error"]["code"], replies[1]["error"]["message"]) == (104, "not found")
    assert len(replies[2]["history"]["publications"]) == 2


async def test_legacy_api_endpoint(server: RunningServer) -> None:
    body = (
        b'{"method":"publish","params":{"channel":"open:l","data":1}}\n'
        b'{"method":"info","params":{}}'
    )
    status, _, answer = await http(server.port, "POST", "/api", body, {"X-API-Key": API_KEY})
    first, second = answer.split(b"\n")
    assert status == 200 and json.loads(first) == {"result": {}}
    assert "nodes" in json.loads(second)["result"]


async def test_idempotent_publish(server: RunningServer) -> None:
    params = {"channel": "chat:once", "data": 1, "idempotency_key": "k1"}
    _, first = await api(server.port, "publish", params)
    _, second = await api(server.port, "publish", params)
    assert first == second
    _, history = await api(server.port, "history", {"channel": "chat:once", "limit": -1})
    assert len(history["result"]["publications"]) == 1


@pytest.mark.parametrize(
    ("method", "params", "expect"),
    [
        ("disconnect", {"user": "alice"}, (3503, "force disconnect")),
        (
            "disconnect",
            {"user": "alice", "disconnect": {"code": 4001, "reason": "bye"}},
            (4001, "bye"),
        ),
        ("refresh", {"user": "alice", "expired": True}, (3005, "connection expired")),
    ],
)
async def test_api_actions_on_connections(
    server: RunningServer,
    ws_client: ClientFactory,
    method: str,
    params: dict[str, Any],
    expect: tuple[int, str],
) -> None:
    alice = await ws_client(server.ws_url)
    await alice.connect(token("alice"))
    bob = await ws_client(server.ws_url)
    await bob.connect(token("bob"))
    await bob.subscribe("chat:x")
    assert (await api(server.port, method, params))[1] == {"result": {}}
    assert await alice.closed() == expect
    await api(server.port, "publish", {"channel": "chat:x", "data": 1})
    (publication,) = await bob.publications("chat:x", 1)
    assert publication["data"] == 1


async def test_disconnect_whitelist(server: RunningServer, ws_client: ClientFactory) -> None:
    keep = await ws_client(server.ws_url)
    kept_id = (await keep.connect(token("alice")))["client"]
    drop = await ws_client(server.ws_url)
    await drop.connect(token("alice"))
    await api(server.port, "disconnect", {"user": "alice", "whitelist": [kept_id]})
    assert (await drop.closed())[0] == 3503
    assert (await keep.subscribe("chat:still")) is not None


async def test_api_subscribe_and_unsubscribe(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    client = await ws_client(server.ws_url)
    await client.connect(token("alice"))
    assert (await api(server.port, "subscribe", {"user": "alice", "channel": "chat:srv"}))[1] == {
        "result": {}
    }
    subscribe_push = await client.push(lambda d: "subscribe" in d.get("push", {}))
    assert subscribe_push["push"]["channel"] == "chat:srv"
    assert subscribe_push["push"]["subscribe"]["recoverable"] is True
    await api(server.port, "publish", {"channel": "chat:srv", "data": {"n": 1}})
    (publication,) = await client.publications("chat:srv", 1)
    assert publication["data"] == {"n": 1}
    await api(server.port, "unsubscribe", {"user": "alice", "channel": "chat:srv"})
    unsubscribe = await client.push(lambda d: "unsubscribe" in d.get("push", {}))
    assert unsubscribe["push"] == {
        "channel": "chat:srv",
        "unsubscribe": {"code": 2000, "reason": "server unsubscribe"},
    }


async def test_health_and_not_found(server: RunningServer) -> None:
    status, _, body = await http(server.port, "GET", "/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert (await http(server.port, "GET", "/no/such/page"))[0] == 404
