"""A session driven with bytes in and bytes out: no socket, a clock moved by hand.

Each test feeds protocol frames to :meth:`Session.handle_frame` and reads the exact
documents the session wrote, or the disconnect it closed with. Timers (stale close,
pings, expiry) fire when the test advances the fake clock, so a 25-second ping
interval costs no time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import make_config
from tests.support.clock import FakeClock
from tests.support.polling import eventually
from tests.support.sessions import Harness
from tidings.errors import Disconnect
from tidings.node import Node


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def node(clock: FakeClock) -> AsyncIterator[Node]:
    running = Node(make_config(broker_unsubscribe_delay=0.0), clock=clock)
    await running.start()
    yield running
    await running.shutdown()


@pytest.fixture
async def harness(node: Node, clock: FakeClock) -> Harness:
    return Harness(node, clock)


# --------------------------------------------------------------------------- connect


async def test_connect_reply(harness: Harness) -> None:
    result = await harness.connect()
    assert result["version"] == harness.node.version
    assert result["expires"] is True and result["ttl"] == 3600
    assert result["ping"] == 25 and result["pong"] is True
    assert harness.session.user == "alice"
    assert harness.node.clients[result["client"]] is harness.session


async def test_commands_of_one_frame_are_answered_in_order(harness: Harness) -> None:
    replies = await harness.send(
        {"id": 1, "connect": {"token": harness.token()}},
        {"id": 2, "subscribe": {"channel": "chat:a"}},
        {"id": 3, "presence_stats": {"channel": "chat:a"}},
    )
    assert [reply["id"] for reply in replies if "id" in reply] == [1, 2, 3]
    assert replies[-1]["presence_stats"] == {"num_clients": 1, "num_users": 1}


async def test_a_quick_resubscribe_keeps_its_presence(harness: Harness) -> None:
    """Found by centrifuge-js' suite ("subscribe and unsubscribe loop"): a leave removes the
    client's presence entry in a task of its own, and used to run after the next subscribe
    had added it again, leaving a subscribed client out of presence."""
    await harness.connect()
    loop: list[dict[str, Any]] = []
    for n in range(5):
        loop.append({"id": 10 + 2 * n, "subscribe": {"channel": "chat:loop"}})
        loop.append({"id": 11 + 2 * n, "unsubscribe": {"channel": "chat:loop"}})
    loop.append({"id": 30, "subscribe": {"channel": "chat:loop"}})
    await harness.send(*loop)
    await eventually(lambda: harness.session.leaving is None, "the leaves to finish")
    assert list(await harness.node.presence_of("chat:loop")) == [harness.session.client_id]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"{", 3501),
        (b'{"id":1,"subscribe":{"channel":"chat:a"}}', 3501),  # before connect
        (b'{"id":1,"connect":{"token":"not.a.jwt"}}', 3500),
        (b'{"id":1,"connect":{}}', 3501),  # no token, anonymous access off
        (b"", 3501),
    ],
    ids=["malformed", "before-connect", "bad-token", "anonymous", "empty"],
)
async def test_connect_refusals_disconnect(harness: Harness, frame: bytes, code: int) -> None:
    harness.session.handle_frame(frame)
    await harness.session.idle()
    assert harness.transport.closed_with is not None
    assert harness.transport.closed_with.code == code
    assert harness.session.closed


async def test_expired_connect_token_is_error_109_and_input_ignored_after(harness: Harness) -> None:
    expired = harness.token(ttl=-10)
    (reply,) = await harness.send({"id": 1, "connect": {"token": expired}})
    assert reply == {"id": 1, "error": {"code": 109, "message": "token expired"}}
    assert await harness.send({"id": 2, "connect": {"token": harness.token()}}) == []


async def test_second_connect_is_a_violation(harness: Harness) -> None:
    await harness.connect()
    await harness.send({"id": 2, "connect": {"token": harness.token()}})
    assert harness.transport.closed_with is not None
    assert harness.transport.closed_with.code == 3501


# --------------------------------------------------------------------------- timers


async def test_stale_connection_is_closed_with_3502(harness: Harness) -> None:
    harness.clock.advance(9.9)
    assert not harness.session.closed
    harness.clock.advance(0.2)
    assert harness.transport.closed_with == Disconnect(3502, "stale")


async def test_connected_session_is_not_stale(harness: Harness) -> None:
    await harness.connect()
    harness.clock.advance(11)
    assert not harness.session.closed


async def test_ping_then_no_pong_closes_with_3012(harness: Harness) -> None:
    await harness.connect()
    harness.clock.advance(25)
    assert harness.transport.take() == [{}]
    harness.clock.advance(8)
    assert harness.transport.closed_with == Disconnect(3012, "no pong")


async def test_pong_keeps_the_connection(harness: Harness) -> None:
    await harness.connect()
    for _ in range(3):
        harness.clock.advance(25)
        assert harness.transport.take() == [{}]
        assert await harness.send({}) == []  # the pong
    harness.clock.advance(10)
    assert not harness.session.closed


async def test_pong_without_ping_is_a_violation(harness: Harness) -> None:
    await harness.connect()
    await harness.send({})
    assert harness.transport.closed_with is not None
    assert harness.transport.closed_with.code == 3501


async def test_connection_expires_with_3005(harness: Harness) -> None:
    assert (await harness.connect(ttl=60))["ttl"] == 60
    await harness.live_for(60 + harness.node.config.expired_close_delay - 1)
    assert not harness.session.closed
    harness.clock.advance(1.1)
    assert harness.transport.closed_with == Disconnect(3005, "connection expired")


async def test_refresh_moves_the_expiry(harness: Harness) -> None:
    await harness.connect(ttl=60)
    await harness.live_for(50)
    reply = await harness.call({"id": 2, "refresh": {"token": harness.token(ttl=600)}})
    assert reply["refresh"]["ttl"] == 600
    await harness.live_for(100)
    assert not harness.session.closed


async def test_refresh_for_another_user_closes_with_3500(harness: Harness) -> None:
    await harness.connect()
    await harness.send({"id": 2, "refresh": {"token": harness.token("mallory")}})
    assert harness.transport.closed_with == Disconnect(3500, "invalid token")


# --------------------------------------------------------------------------- subscribe


async def test_subscribe_with_recovery_returns_exactly_the_missed(harness: Harness) -> None:
    node = harness.node
    first = await node.publish("chat:r", {"n": 1})
    for n in (2, 3):
        await node.publish("chat:r", {"n": n})
    await harness.connect()
    reply = await harness.call(
        {
            "id": 2,
            "subscribe": {
                "channel": "chat:r",
                "recover": True,
                "offset": first.offset,
                "epoch": first.epoch,
            },
        }
    )
    result = reply["subscribe"]
    assert result["recovered"] is True and result["was_recovering"] is True
    assert [p["data"] for p in result["publications"]] == [{"n": 2}, {"n": 3}]
    assert [p["offset"] for p in result["publications"]] == [2, 3]
    await node.publish("chat:r", {"n": 4})
    await asyncio.sleep(0)
    pushes = [d for d in harness.transport.take() if "pub" in d.get("push", {})]
    assert [p["push"]["pub"]["offset"] for p in pushes] == [4]


async def test_recovery_from_another_epoch_is_not_recovered(harness: Harness) -> None:
    await harness.node.publish("chat:e", {"n": 1})
    await harness.connect()
    reply = await harness.call(
        {
            "id": 2,
            "subscribe": {"channel": "chat:e", "recover": True, "offset": 1, "epoch": "other"},
        }
    )
    result = reply["subscribe"]
    assert result["was_recovering"] is True and "recovered" not in result
    assert result["offset"] == 1 and "publications" not in result


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ({"subscribe": {"channel": "nowhere:x"}}, 102),
        ({"subscribe": {"channel": "$chat:private"}}, 103),
        ({"subscribe": {"channel": "chat:\u0000"}}, 107),
        ({"subscribe": {"channel": "chat:a", "type": 4}}, 108),
        ({"publish": {"channel": "quiet:a", "data": {}}}, 103),
        ({"history": {"channel": "quiet:a"}}, 108),
        ({"presence": {"channel": "quiet:a"}}, 108),
        ({"rpc": {"method": "nothing"}}, 108),  # no RPC handler at all: not available
        ({"sub_refresh": {"channel": "chat:not-in", "token": "x"}}, 103),
    ],
    ids=[
        "unknown-namespace",
        "private",
        "bad-name",
        "unknown-type",
        "publish-forbidden",
        "no-history",
        "no-presence",
        "no-rpc-handlers",
        "sub-refresh-not-subscribed",
    ],
)
async def test_refusals_are_error_replies(
    harness: Harness, command: dict[str, Any], code: int
) -> None:
    await harness.connect()
    reply = await harness.call({"id": 2, **command})
    assert reply["error"]["code"] == code
    assert not harness.session.closed


async def test_already_subscribed_and_channel_limit(node: Node, clock: FakeClock) -> None:
    node.config.client_channel_limit = 2
    harness = Harness(node, clock)
    await harness.connect()
    await harness.send({"id": 2, "subscribe": {"channel": "chat:1"}})
    again = await harness.call({"id": 3, "subscribe": {"channel": "chat:1"}})
    assert again["error"]["code"] == 105
    await harness.send({"id": 4, "subscribe": {"channel": "chat:2"}})
    over = await harness.call({"id": 5, "subscribe": {"channel": "chat:3"}})
    assert over["error"]["code"] == 106


async def test_subscription_token_expiry_unsubscribes_with_2501(harness: Harness) -> None:
    await harness.connect()
    sub_token = harness.token(channel="$chat:s", ttl=30)
    reply = await harness.call({"id": 2, "subscribe": {"channel": "$chat:s", "token": sub_token}})
    assert reply["subscribe"]["expires"] is True and reply["subscribe"]["ttl"] == 30
    await harness.live_for(30 + harness.node.config.expired_close_delay - 1)
    harness.transport.take()
    harness.clock.advance(1.1)
    (push,) = harness.transport.take()
    assert push == {
        "push": {
            "channel": "$chat:s",
            "unsubscribe": {"code": 2501, "reason": "subscription expired"},
        }
    }
    assert "$chat:s" not in harness.session.subscriptions


async def test_commands_over_the_rate_get_111_then_3013(node: Node, clock: FakeClock) -> None:
    node.config.client_command_rate_limit = 2
    node.config.client_command_burst = 2
    harness = Harness(node, clock)
    replies = await harness.send(
        {"id": 1, "connect": {"token": harness.token()}},
        {"id": 2, "presence_stats": {"channel": "chat:x"}},
        {"id": 3, "presence_stats": {"channel": "chat:x"}},
    )
    assert replies[-1] == {
        "id": 3,
        "error": {"code": 111, "message": "too many requests", "temporary": True},
    }
    flood = [{"id": 10 + n, "presence_stats": {"channel": "chat:x"}} for n in range(11)]
    await harness.send(*flood)
    assert harness.transport.closed_with == Disconnect(3013, "too many requests")


async def test_nothing_is_written_after_close(harness: Harness) -> None:
    await harness.connect()
    await harness.send({"id": 2, "subscribe": {"channel": "chat:gone"}})
    harness.session.handle_frame(b"{")  # a violation: closed with 3501
    await harness.node.publish("chat:gone", {"late": True})
    await asyncio.sleep(0)
    harness.clock.advance(60)  # pings, expiry: nothing may write
    assert harness.transport.take() == []


async def test_flag_asks_for_112_instead_of_not_recovered(harness: Harness) -> None:
    """The SDKs set ``flag`` bit 2 when the app can reload its state (centrifuge-js getState)."""
    await harness.node.publish("chat:f", {"n": 1})
    await harness.connect()
    reply = await harness.call(
        {
            "id": 2,
            "subscribe": {
                "channel": "chat:f",
                "recover": True,
                "offset": 1,
                "epoch": "gone",
                "flag": 3,
            },
        }
    )
    assert reply["error"] == {"code": 112, "message": "unrecoverable position"}
    assert "chat:f" not in harness.session.subscriptions


async def test_personal_channel_is_subscribed_on_connect(node: Node, clock: FakeClock) -> None:
    node.config.subscribe_to_user_personal_channel = True
    node.config.personal_channel_namespace = "chat"
    harness = Harness(node, clock)
    result = await harness.connect("zoe")
    assert list(result["subs"]) == ["chat:#zoe"]
    assert "chat:#zoe" in harness.session.subscriptions


async def test_a_pong_timeout_longer_than_the_ping_interval(clock: FakeClock) -> None:
    """A client that answers every ping stays, even when the next ping comes before the
    previous one's deadline; one that stops answering is closed at that ping's deadline."""
    node = Node(make_config(ping_interval=1.0, pong_timeout=2.5), clock=clock)
    await node.start()
    try:
        harness = Harness(node, clock)
        await harness.connect()
        for _ in range(6):
            clock.advance(1)
            assert harness.transport.take() == [{}]
            await harness.send({})
        assert not harness.session.closed
        clock.advance(1)  # a ping nobody answers
        harness.transport.take()
        clock.advance(2)
        assert not harness.session.closed
        clock.advance(1)
        assert harness.transport.closed_with == Disconnect(3012, "no pong")
    finally:
        await node.shutdown()
