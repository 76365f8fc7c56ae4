"""A chat in FastAPI, with tidings mounted at /rt. One file; run it with one command.

From a tidings checkout (after `make install`):

    .venv/bin/uvicorn app:app --app-dir examples/fastapi_quickstart

Elsewhere: `pip install tidings fastapi uvicorn`, then `uvicorn app:app` next to this file.
Open http://127.0.0.1:8000, pick a name and chat; a second browser (or a private window)
is a second user.

What it shows: a login route that sets a session cookie; `on_connect` reading that cookie
(no JWT anywhere); an `on_subscribe` rule; a typed chat channel whose messages are
validated from every source; an RPC that publishes from the backend; and `rt.asgi()`
mounted in the FastAPI app, whose lifespan starts and stops tidings.
"""

from __future__ import annotations

import random
import secrets
from typing import Annotated, Any
from urllib.parse import parse_qs

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tidings import ClientError, ConnectResult, Tidings

rt = Tidings(demo="off")  # no token secret: every connection is decided by on_connect

SESSIONS: dict[str, str] = {}
"""Session id -> user name. Use your application's own session store."""

BANNED = {"mallory"}


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class Roll(msgspec.Struct):
    sides: Annotated[int, msgspec.Meta(ge=2, le=100)] = 6


class Rolled(msgspec.Struct):
    sides: int
    value: int


# Every publication into "chat", from browsers, the HTTP API or rt.publish, must be a
# ChatMessage; anything else is refused with error 107 naming the bad field.
rt.channel("chat", schema=ChatMessage)


@rt.on_connect
async def connect(ctx: Any) -> ConnectResult:
    """The session cookie the login route set is the credential."""
    user = SESSIONS.get(ctx.cookies.get("session", ""))
    if user is None:
        raise ClientError(401, "log in first")
    return ConnectResult(user, info={"name": user}, data={"name": user})


@rt.on_subscribe("chat")
async def join(ctx: Any) -> None:
    if ctx.user in BANNED:
        raise ClientError(403, "banned from the chat")


@rt.on_publish("chat")
async def post(ctx: Any, data: ChatMessage) -> ChatMessage:
    """Browsers may publish into the chat; what they send is tidied on the way."""
    return ChatMessage(text=" ".join(data.text.split()))


@rt.rpc("roll")
async def roll(ctx: Any, params: Roll) -> Rolled:
    """Roll a die for the caller and tell the whole chat."""
    rolled = Rolled(params.sides, random.randint(1, params.sides))
    await rt.publish("chat", ChatMessage(f"{ctx.user} rolled {rolled.value} (d{rolled.sides})"))
    return rolled


app = FastAPI(lifespan=rt.lifespan)
app.mount("/rt", rt.asgi())


@app.post("/login")
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode())
    name = (form.get("name") or [""])[0].strip()[:32]
    if not name:
        return RedirectResponse("/", status_code=303)
    sid = secrets.token_urlsafe(24)
    SESSIONS[sid] = name
    response = RedirectResponse("/", status_code=303)
    response.set_cookie("session", sid, httponly=True, samesite="strict")
    return response


@app.get("/")
async def index(request: Request) -> HTMLResponse:
    if request.cookies.get("session") not in SESSIONS:
        return HTMLResponse(LOGIN)
    return HTMLResponse(CHAT)


LOGIN = """<!doctype html>
<meta charset="utf-8"><title>chat: log in</title>
<form method="post" action="/login">
  <input name="name" placeholder="your name" autofocus required>
  <button>Log in</button>
</form>
"""

CHAT = """<!doctype html>
<meta charset="utf-8"><title>chat</title>
<p id="status">connecting...</p>
<ul id="log"></ul>
<form id="say"><input id="text" autocomplete="off" autofocus><button>Send</button></form>
<button id="roll">Roll a die</button>
<script src="/rt/vendor/centrifuge.js"></script>
<script>
const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
// No token: the browser sends the session cookie with the WebSocket handshake.
const client = new Centrifuge(`${scheme}://${location.host}/rt/connection/websocket`);
const line = (text) => {
  const item = document.createElement('li');
  item.textContent = text;
  document.getElementById('log').append(item);
};
const status = (text) => { document.getElementById('status').textContent = text; };
client.on('connected', (ctx) => status(`connected as ${ctx.data.name}`));
client.on('disconnected', (ctx) => status(`disconnected: ${ctx.reason}`));

const chat = client.newSubscription('chat');
chat.on('publication', (ctx) => line(`${ctx.info ? ctx.info.user : 'server'}: ${ctx.data.text}`));
chat.on('error', (ctx) => status(`chat: ${ctx.error.message}`));
chat.subscribe();
client.connect();

document.getElementById('say').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = document.getElementById('text');
  try {
    await chat.publish({text: input.value});
    input.value = '';
  } catch (error) {
    status(`not sent: ${error.message}`);
  }
});
document.getElementById('roll').addEventListener('click', async () => {
  const result = await client.rpc('roll', {sides: 6});
  status(`you rolled ${result.data.value}`);
});
</script>
"""
