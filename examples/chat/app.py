"""Chat: rooms, names, presence, typing indicators and history on tidings.

Run it from the repository root with ``tidings serve examples.chat.app:rt`` (or
``make serve``) and open http://127.0.0.1:8000 in two windows. On Redis, across
processes: ``tidings serve examples.chat.app:rt --broker redis://127.0.0.1:6379``
once per port.

What tidings does here (docs/python.md):

* ``on_connect`` turns the name typed on the entry screen (sent in the connect
  command's ``data``) into the connection's ``info``, so presence, join/leave and
  every publication carry it; nobody has to send their name with each message.
* ``chat:ROOM`` is a **typed channel**: a message is ``{"text": ...}`` of 1-500
  characters with something other than spaces in it (msgspec ``Meta``
  constraints). A refused message never reaches anyone; the sender gets error
  107 naming the rule, and the page shows it.
* ``on_publish`` stamps each message with the server's time, so a client cannot
  fake it; history and recovery (``tidings.toml``) give a late joiner the recent
  messages and a reconnecting page exactly the ones it missed.
* ``typing:ROOM`` carries "is typing" signals on a channel without history:
  ephemeral, never replayed.
* The ``rooms`` RPC lists the rooms people are in, with ``rt.channels()``
  (every node's subscribers on Redis).

There are no accounts: the page makes up a random user id once per browser and
sends it with the name. A real application takes the user from its own session
cookie in ``on_connect`` (``ctx.cookies``) instead.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tidings import (
    ClientError,
    ConnectContext,
    ConnectResult,
    PublishContext,
    RPCContext,
    SubscribeContext,
    Tidings,
)

HERE = Path(__file__).parent

ROOM = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
"""A room's name: what follows ``chat:`` and ``typing:``."""

DEFAULT_ROOMS = ("lobby", "python", "random")

MessageText = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=500,
        pattern=r"\S",  # something other than spaces
        description="the message, 1-500 characters, not only spaces",
    ),
]


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    """One message in ``chat:ROOM``; the sender's name rides in the publication's info."""

    text: MessageText
    sent_at: int = 0
    """Milliseconds since the epoch, set by the server (``on_publish``)."""


class Typing(msgspec.Struct, forbid_unknown_fields=True):
    """``typing:ROOM``: the sender started (``true``) or stopped (``false``) typing."""

    typing: bool


class Entry(msgspec.Struct):
    """The connect command's ``data``: who is entering."""

    name: Annotated[str, Meta(min_length=1, max_length=32)]
    user: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


class Room(msgspec.Struct):
    name: str
    people: int


def room_of(channel: str) -> str:
    """The room a ``chat:``/``typing:`` channel belongs to, or ClientError 400."""
    room = channel.partition(":")[2]
    if not ROOM.fullmatch(room):
        raise ClientError(400, "a room name is 1-32 lowercase letters, digits or dashes")
    return room


def create_app(**overrides: Any) -> Tidings:
    """The application; ``overrides`` are options such as ``port`` or ``broker`` (tests)."""
    rt = Tidings(HERE / "tidings.toml", **overrides)
    rt.static("/", HERE / "static")
    rt.channel("chat:*", schema=ChatMessage)
    rt.channel("typing:*", schema=Typing)

    @rt.on_connect
    async def enter(ctx: ConnectContext) -> ConnectResult:
        try:
            entry = msgspec.convert(ctx.data, Entry)
        except msgspec.ValidationError:
            raise ClientError(400, "choose a name of 1-32 characters") from None
        name = " ".join(entry.name.split())
        if not name:
            raise ClientError(400, "choose a name of 1-32 characters")
        return ConnectResult(entry.user, info={"name": name}, data={"name": name})

    @rt.on_subscribe("chat:*")
    async def join_room(ctx: SubscribeContext) -> None:
        room_of(ctx.channel)

    @rt.on_subscribe("typing:*")
    async def watch_typing(ctx: SubscribeContext) -> None:
        room_of(ctx.channel)

    @rt.on_publish("chat:*")
    async def post(ctx: PublishContext, message: ChatMessage) -> ChatMessage:
        return ChatMessage(text=message.text.strip(), sent_at=int(time.time() * 1000))

    @rt.rpc("rooms")
    async def rooms(ctx: RPCContext, params: Any) -> list[Room]:
        """The default rooms and every room someone is in, busiest first."""
        counts = {room: 0 for room in DEFAULT_ROOMS}
        for channel, subscribers in (await rt.channels("chat:*")).items():
            counts[channel.partition(":")[2]] = subscribers
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return [Room(name, people) for name, people in ranked]

    return rt


rt = create_app()
