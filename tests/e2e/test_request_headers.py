"""What a connection keeps of its opening HTTP request: the headers and cookies a handler
may read, over a real WebSocket; and nothing but the peer's address when no handler
could read them (an idle connection's copy would cost it a sixth of its memory)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ClientFactory, StartApp, StartServer, make_config, token
from tidings import RPCContext, Tidings

pytestmark = pytest.mark.timeout(30)


async def test_an_rpc_handler_alone_sees_the_handshake_headers_and_cookies(
    start_app: StartApp, ws_client: ClientFactory
) -> None:
    rt = Tidings(make_config())

    @rt.rpc("whoami")
    async def whoami(ctx: RPCContext, params: Any) -> dict[str, Any]:
        return {"tenant": ctx.headers.get("X-Tenant"), "sid": ctx.cookies.get("sid")}

    running = await start_app(rt)
    client = await ws_client(
        running.ws_url, additional_headers={"X-Tenant": "acme", "Cookie": "sid=abc"}
    )
    await client.connect(token("alice"))
    reply = await client.call("rpc", {"method": "whoami", "data": {}})
    assert reply["rpc"]["data"] == {"tenant": "acme", "sid": "abc"}


async def test_without_handlers_a_connection_keeps_only_its_peer_address(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    running = await start_server()
    client = await ws_client(running.ws_url, additional_headers={"X-Tenant": "acme"})
    connected = await client.connect(token("alice"))
    request = running.node.clients[connected["client"]].request
    assert request.remote.startswith("127.0.0.1:")
    assert not request.headers and not request.cookies
