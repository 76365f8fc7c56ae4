"""The chat example's handlers through ``TestClient``: no browser, no socket.

The browser tests (test_chat_browser.py) show the page; these pin down the
rules the page relies on, one by one and fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from examples.chat.app import create_app
from tidings import ClientError, Tidings
from tidings.testing import TestClient

pytestmark = pytest.mark.timeout(20)


def entry(name: str, user: str = "browser-0001") -> dict[str, str]:
    return {"name": name, "user": user}


@pytest.fixture
async def rt() -> AsyncIterator[Tidings]:
    app = create_app(port=0)
    async with app:
        yield app


async def test_the_name_becomes_the_connection_info(rt: Tidings) -> None:
    async with TestClient(rt, data=entry("  Ada   Lovelace ")) as ada:
        assert ada.user == "browser-0001"
        assert ada.connect_result["data"] == {"name": "Ada Lovelace"}
        room = await ada.subscribe("chat:lobby")
        await ada.publish("chat:lobby", {"text": " hello "})
        message = await room.next()
        assert message.info is not None and message.info.conn_info == {"name": "Ada Lovelace"}
        assert message.data["text"] == "hello"
        presence = await ada.presence("chat:lobby")
        assert [info.conn_info for info in presence.values()] == [{"name": "Ada Lovelace"}]


@pytest.mark.parametrize(
    "data",
    [None, {}, entry(""), entry("   "), entry("x" * 33), entry("ada", user="short"), {"name": 1}],
)
async def test_an_entry_without_a_proper_name_is_refused(rt: Tidings, data: object) -> None:
    with pytest.raises(ClientError) as refused:
        async with TestClient(rt, data=data):
            pass
    assert refused.value.code == 400
    assert "name" in refused.value.message


async def test_the_server_stamps_the_time(rt: Tidings) -> None:
    async with TestClient(rt, data=entry("ada")) as ada:
        room = await ada.subscribe("chat:lobby")
        await ada.publish("chat:lobby", {"text": "when?", "sent_at": 1})  # a forged time
        message = await room.next()
        assert message.data["sent_at"] > 1_600_000_000_000


@pytest.mark.parametrize(
    ("text", "rule"),
    [("", "length >= 1"), ("    ", "regex"), ("x" * 501, "length <= 500"), (7, "Expected `str`")],
)
async def test_the_typed_channel_refuses_bad_messages(rt: Tidings, text: object, rule: str) -> None:
    async with TestClient(rt, data=entry("ada")) as ada:
        await ada.subscribe("chat:lobby")
        with pytest.raises(ClientError) as refused:
            await ada.publish("chat:lobby", {"text": text})
        assert refused.value.code == 107
        assert rule in refused.value.message and "$.text" in refused.value.message
        with pytest.raises(ClientError):
            await ada.publish("chat:lobby", {"text": "hi", "html": "<b>"})  # unknown field
        # Nothing refused reached the room, nor its history; the backend is held to it too.
        assert (await rt.history("chat:lobby")).publications == []
        with pytest.raises(ClientError) as from_backend:
            await rt.publish("chat:lobby", {"text": ""})
        assert from_backend.value.code == 107


async def test_typing_is_ephemeral(rt: Tidings) -> None:
    async with (
        TestClient(rt, data=entry("ada", "browser-0001")) as ada,
        TestClient(rt, data=entry("bob", "browser-0002")) as bob,
    ):
        watching = await bob.subscribe("typing:lobby")
        await ada.subscribe("typing:lobby")
        await ada.publish("typing:lobby", {"typing": True})
        signal = await watching.next()
        assert signal.data == {"typing": True}
        assert signal.info is not None and signal.info.conn_info == {"name": "ada"}
        assert signal.offset == 0  # no stream: nothing to recover or replay
        with pytest.raises(ClientError) as refused:
            await ada.publish("typing:lobby", {"typing": "yes"})
        assert refused.value.code == 107
        with pytest.raises(ClientError) as no_history:
            await rt.history("typing:lobby")
        assert no_history.value.code == 108


async def test_room_names_are_checked(rt: Tidings) -> None:
    async with TestClient(rt, data=entry("ada")) as ada:
        for channel in ("chat:Lobby", "chat:-x", "typing:a b", "chat:" + "x" * 33):
            with pytest.raises(ClientError) as refused:
                await ada.subscribe(channel)
            assert refused.value.code == 400, channel


async def test_rooms_lists_the_busy_rooms_first(rt: Tidings) -> None:
    async with (
        TestClient(rt, data=entry("ada", "browser-0001")) as ada,
        TestClient(rt, data=entry("bob", "browser-0002")) as bob,
    ):
        await ada.subscribe("chat:knitting")
        await bob.subscribe("chat:knitting")
        await bob.subscribe("chat:python")
        await bob.subscribe("typing:python")  # not a room
        rooms = await ada.rpc("rooms")
        assert rooms == [
            {"name": "knitting", "people": 2},
            {"name": "python", "people": 1},
            {"name": "lobby", "people": 0},
            {"name": "random", "people": 0},
        ]
