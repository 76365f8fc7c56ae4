"""The application API as the real SDKs meet it: centrifuge-js under Node and
centrifuge-python, against a ``Tidings`` application's handlers."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from centrifuge import ReplyError as PyReplyError

from tests.compat.conftest import EVENT_TIMEOUT, JsClientFactory, JsError, PyClientFactory
from tests.conftest import StartApp, make_config
from tidings import (
    ClientError,
    ConnectContext,
    ConnectResult,
    PublishContext,
    RPCContext,
    Tidings,
)

pytestmark = pytest.mark.node


class ChatMessage(msgspec.Struct):
    text: str


class Shout(msgspec.Struct):
    text: str
    by: str


class QuoteRequest(msgspec.Struct):
    symbol: str


class Quote(msgspec.Struct):
    symbol: str
    price: float


def application() -> Tidings:
    """Tenants log in with a header (no token); chat is typed and shouted; quotes by RPC."""
    rt = Tidings(make_config())
    rt.channel("chat:*", schema=Shout)

    @rt.on_connect
    async def connect(ctx: ConnectContext) -> ConnectResult | None:
        tenant = ctx.headers.get("x-tenant")
        if tenant is None:
            return None
        return ConnectResult(f"{tenant}-user", info={"tenant": tenant})

    @rt.on_publish("chat:*")
    async def shout(ctx: PublishContext, data: ChatMessage) -> Shout:
        if not data.text:
            raise ClientError(4001, "say something")
        return Shout(data.text.upper(), ctx.user)

    @rt.rpc("quote")
    async def quote(ctx: RPCContext, params: QuoteRequest) -> Quote:
        return Quote(params.symbol, 42.5)

    @rt.rpc("crash")
    async def crash(ctx: RPCContext, params: Any) -> Any:
        raise RuntimeError("internal details that must not leak")

    return rt


async def test_centrifuge_js_meets_the_handlers(
    start_app: StartApp, js_client: JsClientFactory
) -> None:
    server = await start_app(application())
    js = await js_client()
    await js.create(server.ws_url, headers={"X-Tenant": "acme"})
    connected = await js.connect()
    session = server.node.clients[connected["client"]]
    assert session.user == "acme-user"

    await js.subscribe("chat:room")
    await js.call("publish", channel="chat:room", data={"text": "hello"})
    publication = await js.log.next("publication", "chat:room")
    assert publication["data"] == {"text": "HELLO", "by": "acme-user"}

    with pytest.raises(JsError) as invalid:
        await js.call("publish", channel="chat:room", data={"text": 7})
    assert invalid.value.code == 107 and "text" in invalid.value.message
    with pytest.raises(JsError) as refused:
        await js.call("publish", channel="chat:room", data={"text": ""})
    assert (refused.value.code, refused.value.message) == (4001, "say something")

    assert await js.call("rpc", method="quote", data={"symbol": "ACME"}) == {
        "data": {"symbol": "ACME", "price": 42.5}
    }
    with pytest.raises(JsError) as crashed:
        await js.call("rpc", method="crash", data={})
    assert (crashed.value.code, crashed.value.message) == (100, "internal server error")
    # The connection is still open: the next call works on the same client.
    assert (await js.call("rpc", method="quote", data={"symbol": "X"}))["data"]["symbol"] == "X"
    assert server.node.clients.get(connected["client"]) is session


async def test_centrifuge_python_meets_the_handlers(
    start_app: StartApp, py_client: PyClientFactory
) -> None:
    server = await start_app(application())
    client, log = py_client(server.ws_url, headers={"X-Tenant": "globex"})
    await client.connect()
    connected = await log.next("connected", "client")
    assert server.node.clients[connected.client].user == "globex-user"
    result = await client.rpc("quote", {"symbol": "GLBX"}, timeout=EVENT_TIMEOUT)
    assert result.data == {"symbol": "GLBX", "price": 42.5}
    with pytest.raises(PyReplyError) as crashed:
        await client.rpc("crash", {}, timeout=EVENT_TIMEOUT)
    assert crashed.value.code == 100
    assert (await client.rpc("quote", {"symbol": "Y"}, timeout=EVENT_TIMEOUT)).data["symbol"] == "Y"


async def test_without_the_header_the_connection_is_refused(
    start_app: StartApp, py_client: PyClientFactory
) -> None:
    server = await start_app(application())
    client, log = py_client(server.ws_url)
    await client.connect()
    disconnected = await log.next("disconnected", "client")
    assert disconnected.code == 3501
