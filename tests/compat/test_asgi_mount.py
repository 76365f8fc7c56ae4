"""Real clients through ``rt.asgi()`` mounted in FastAPI: centrifuge-js, and a browser.

* centrifuge-js (Node, ``ws``) over the mount's WebSocket, next to a client of the
  same node's standalone listener: a FastAPI route's ``await rt.publish`` reaches
  both, and what centrifuge-js publishes through the mount reaches the other edge.
* Headless Chromium opens a page served by the FastAPI app under uvicorn, logs in
  through a route that sets a cookie, and chats over the mount with no token:
  ``on_connect`` reads the cookie.
"""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp
import pytest

from tests.conftest import ClientFactory, make_config, token
from tests.support.asgi import ASGI_SERVERS, MOUNT, Mounted, mounted, serve_asgi
from tidings import ClientError, ConnectResult, Tidings
from tidings.server.app import find_centrifuge_js

pytestmark = pytest.mark.timeout(60)


@pytest.mark.node
@pytest.mark.parametrize("kind", ASGI_SERVERS)
async def test_centrifuge_js_over_the_mount_and_a_standalone_client_share_a_channel(
    kind: str, js_client: Any, ws_client: ClientFactory
) -> None:
    async with mounted(kind) as mount:
        await _share_a_channel(mount, js_client, ws_client)


async def _share_a_channel(mount: Mounted, js_client: Any, ws_client: ClientFactory) -> None:
    js = await js_client()
    await js.create(mount.ws_url, token=token("alice"))
    connected = await js.connect()
    assert connected["transport"] == "websocket"
    await js.subscribe("chat:shared")
    beside = await ws_client(mount.standalone_ws_url)
    await beside.connect(token("bob"))
    await beside.subscribe("chat:shared")

    # A FastAPI route publishes with `await rt.publish(...)`: both edges deliver it.
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{mount.port}/notify/chat:shared", json={"n": 1}) as r,
    ):
        assert r.status == 200 and await r.json() == {"offset": 1}
    first = await js.log.next("publication", "chat:shared")
    assert first["data"] == {"n": 1} and first["offset"] == 1
    assert [p["data"] for p in await beside.publications("chat:shared", 1)] == [{"n": 1}]

    # centrifuge-js publishes through the mount: the standalone client gets it.
    await js.call("publish", channel="chat:shared", data={"n": 2})
    (publication,) = await beside.publications("chat:shared", 1)
    assert publication["data"] == {"n": 2} and publication["info"]["user"] == "alice"
    assert (await js.log.next("publication", "chat:shared"))["data"] == {"n": 2}
    await js.call("exit")


PAGE = """<!doctype html>
<meta charset="utf-8">
<title>chat</title>
<ul id="log"></ul>
<script src="/centrifuge.js"></script>
<script>
const log = (text) => {
  const item = document.createElement('li');
  item.textContent = text;
  document.getElementById('log').append(item);
};
// No token: the session cookie the login route set is the credential.
const client = new Centrifuge(`ws://${location.host}/rt/connection/websocket`);
client.on('connected', (ctx) => log(`connected as ${ctx.data.user}`));
client.on('disconnected', (ctx) => log(`disconnected ${ctx.code}`));
const sub = client.newSubscription('chat:lobby');
sub.on('publication', (ctx) => log(`${ctx.info ? ctx.info.user : 'server'}: ${ctx.data.text}`));
sub.on('subscribed', () => {
  log('subscribed');
  sub.publish({text: 'hello from the page'});
});
sub.subscribe();
client.connect();
</script>
"""


def chat_app(rt: Tidings) -> Any:
    """A FastAPI app with a login route that sets a session cookie, the page, and tidings."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, RedirectResponse, Response

    sessions: dict[str, str] = {}

    @rt.on_connect
    async def connect(ctx: Any) -> ConnectResult:
        user = sessions.get(ctx.cookies.get("session", ""))
        if user is None:
            raise ClientError(401, "log in first")
        return ConnectResult(user=user, data={"user": user})

    app = FastAPI(lifespan=rt.lifespan)

    @app.get("/login")
    async def login(name: str) -> Response:
        sid = secrets.token_urlsafe(16)
        sessions[sid] = name
        response = RedirectResponse("/", status_code=303)
        response.set_cookie("session", sid, httponly=True, samesite="strict")
        return response

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/centrifuge.js")
    async def bundle() -> Response:
        path = find_centrifuge_js()
        assert path is not None
        return Response(path.read_bytes(), media_type="text/javascript")

    app.mount(MOUNT, rt.asgi())
    return app


@pytest.mark.browser
async def test_browser_logs_in_with_a_cookie_and_chats_over_the_mount(browser: Any) -> None:
    rt = Tidings(make_config())  # same-host pages only: the page and the mount share one
    async with serve_asgi(chat_app(rt), "uvicorn", probe=f"{MOUNT}/health") as port:
        page = await browser.new_page()
        try:
            await page.goto(f"http://127.0.0.1:{port}/login?name=ann")
            log = page.locator("#log")
            await log.get_by_text("connected as ann").wait_for(timeout=10_000)
            await log.get_by_text("ann: hello from the page").wait_for(timeout=10_000)
            await rt.publish("chat:lobby", {"text": "hello from the backend"})
            await log.get_by_text("server: hello from the backend").wait_for(timeout=10_000)

            # Without the cookie, on_connect refuses: the page never connects.
            anonymous = await browser.new_page()
            try:
                await anonymous.goto(f"http://127.0.0.1:{port}/")
                await anonymous.locator("#log").get_by_text("disconnected").wait_for(timeout=10_000)
                assert "connected as" not in await anonymous.locator("#log").inner_text()
            finally:
                await anonymous.close()
        finally:
            await page.close()
