"""Application handlers through the public API, driven by ``tidings.testing.TestClient``.

Every test builds a ``Tidings`` application with public names only and talks to
it the way an application's own tests would.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, TypedDict

import msgspec
import pytest

from tests.conftest import SECRET, make_config, token
from tidings import (
    ClientDisconnect,
    ClientError,
    ConnectContext,
    ConnectResult,
    DisconnectContext,
    MessageContext,
    PublishContext,
    RPCContext,
    SubscribeContext,
    SubscribeResult,
    Tidings,
)
from tidings.auth import make_token
from tidings.testing import TestClient


class ChatMessage(msgspec.Struct):
    text: str
    mood: str = "neutral"


class Quote(msgspec.Struct):
    symbol: str
    price: float


class QuoteRequest(msgspec.Struct):
    symbol: str


def app_with(**overrides: Any) -> Tidings:
    return Tidings(make_config(**overrides))


# --------------------------------------------------------------------------- connect


async def test_cookie_logs_a_connection_in_without_a_token() -> None:
    rt = app_with()
    seen: list[ConnectContext] = []

    @rt.on_connect
    async def connect(ctx: ConnectContext) -> ConnectResult | None:
        seen.append(ctx)
        if ctx.cookies.get("sid") == "abc":
            return ConnectResult("alice", info={"name": "Alice"}, data={"welcome": True})
        return None

    async with TestClient(rt, headers={"Cookie": "sid=abc; theme=dark", "X-Tenant": "acme"}) as c:
        assert c.user == "alice"
        assert c.connect_result["data"] == {"welcome": True}
        (ctx,) = seen
        assert ctx.user == "" and ctx.transport == "websocket" and ctx.client == c.client_id
        assert ctx.headers.get("x-tenant") == ctx.headers["X-TENANT"] == "acme"
        assert ctx.cookies == {"sid": "abc", "theme": "dark"}
        presence = await (await c.subscribe("chat:lobby")).client.presence("chat:lobby")
        assert presence[c.client_id].conn_info == {"name": "Alice"}


async def test_no_token_no_anonymous_and_a_handler_that_says_nothing_is_refused() -> None:
    rt = app_with()

    @rt.on_connect
    async def connect(ctx: ConnectContext) -> None:
        return None

    with pytest.raises(ClientDisconnect) as refused:
        async with TestClient(rt):
            pass
    assert refused.value.code == 3501


async def test_handler_sees_the_token_user_and_may_relabel_it() -> None:
    rt = app_with()

    @rt.on_connect
    async def connect(ctx: ConnectContext) -> ConnectResult:
        return ConnectResult(f"{ctx.user}@tenant", channels=["chat:inbox"])

    async with TestClient(rt, token=token("bob")) as client:
        assert client.user == "bob@tenant"
        assert "chat:inbox" in client.connect_result["subs"]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ClientError(4001, "come back later"), (4001, "come back later")),
        (RuntimeError("secret internals"), (100, "internal server error")),
    ],
)
async def test_connect_refusals(raised: Exception, expected: tuple[int, str]) -> None:
    rt = app_with()

    @rt.on_connect
    async def connect(ctx: ConnectContext) -> None:
        raise raised

    with pytest.raises(ClientError) as refused:
        async with TestClient(rt, token=token()):
            pass
    assert (refused.value.code, refused.value.message) == expected


async def test_disconnect_from_a_handler() -> None:
    rt = app_with()

    @rt.on_connect
    async def connect(ctx: ConnectContext) -> None:
        raise ClientDisconnect(4501, "banned")

    with pytest.raises(ClientDisconnect) as gone:
        async with TestClient(rt, token=token()):
            pass
    assert (gone.value.code, gone.value.reason) == (4501, "banned")


async def test_on_disconnect_runs_when_a_client_leaves() -> None:
    rt = app_with()
    left: asyncio.Queue[DisconnectContext] = asyncio.Queue()

    @rt.on_disconnect
    async def gone(ctx: DisconnectContext) -> None:
        await left.put(ctx)

    async with rt:
        async with TestClient(rt, token=token("carol")) as client:
            client_id = client.client_id
        ctx = await asyncio.wait_for(left.get(), 5)
    assert (ctx.client, ctx.user) == (client_id, "carol")


# --------------------------------------------------------------------------- subscribe


async def test_on_subscribe_replaces_the_namespace_rules() -> None:
    rt = app_with()

    @rt.on_subscribe("quiet:*")  # quiet: a namespace nobody may publish to, presence off
    async def join(ctx: SubscribeContext) -> SubscribeResult | None:
        if ctx.channel == "quiet:vip" and ctx.user != "vip":
            raise ClientError()
        return SubscribeResult(info={"seat": 7}, data={"rules": "be nice"})

    async with TestClient(rt, token=token("alice")) as client:
        sub = await client.subscribe("quiet:room")
        assert sub.result["data"] == {"rules": "be nice"}
        with pytest.raises(ClientError) as refused:
            await client.subscribe("quiet:vip")
        assert refused.value.code == 103
    async with TestClient(rt, token=token("vip")) as client:
        await client.subscribe("quiet:vip")


async def test_on_subscribe_sees_the_subscribe_data_and_private_channels() -> None:
    rt = app_with()
    asked: list[Any] = []

    @rt.on_subscribe("$chat:*")
    async def join(ctx: SubscribeContext) -> None:
        asked.append(ctx.data)

    async with TestClient(rt, token=token()) as client:
        await client.subscribe("$chat:secret", data={"password": "swordfish"})
    assert asked == [{"password": "swordfish"}]


async def test_unknown_namespace_is_still_102_with_a_handler() -> None:
    rt = app_with()

    @rt.on_subscribe("*")
    async def join(ctx: SubscribeContext) -> None:
        return None

    async with TestClient(rt, token=token()) as client:
        with pytest.raises(ClientError) as refused:
            await client.subscribe("nowhere:x")
    assert refused.value.code == 102


# --------------------------------------------------------------------------- publish


async def test_on_publish_validates_and_reshapes() -> None:
    rt = app_with()

    @rt.on_publish("chat:*")
    async def post(ctx: PublishContext, data: ChatMessage) -> ChatMessage:
        return ChatMessage(text=data.text.strip(), mood="happy" if "!" in data.text else data.mood)

    async with TestClient(rt, token=token("ed")) as client:
        sub = await client.subscribe("chat:room")
        await client.publish("chat:room", {"text": "  hi!  "})
        pub = await sub.next(timeout=1)
        assert pub.data == {"text": "hi!", "mood": "happy"}
        assert pub.info is not None and pub.info.user == "ed"
        with pytest.raises(ClientError) as invalid:
            await client.publish("chat:room", {"text": 5})
        assert invalid.value.code == 107
        assert "text" in invalid.value.message and "Traceback" not in invalid.value.message


async def test_on_publish_none_publishes_as_sent_and_client_error_refuses() -> None:
    rt = app_with()

    @rt.on_publish("quiet:*")  # quiet forbids client publications: the handler decides
    async def post(ctx: PublishContext, data: dict[str, Any]) -> None:
        if data.get("spam"):
            raise ClientError(4000, "no spam")

    async with TestClient(rt, token=token()) as client:
        sub = await client.subscribe("quiet:board")
        await client.publish("quiet:board", {"n": 1})
        assert (await sub.next()).data == {"n": 1}
        with pytest.raises(ClientError) as refused:
            await client.publish("quiet:board", {"spam": True})
        assert (refused.value.code, refused.value.message) == (4000, "no spam")


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Move(TypedDict):
    direction: str


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        (ChatMessage, {"text": "ok"}, {"txt": "typo"}),
        (Point, {"x": 1, "y": 2}, {"x": "one", "y": 2}),
        (Move, {"direction": "up"}, {"direction": 3}),
    ],
    ids=["struct", "dataclass", "typeddict"],
)
async def test_typed_channels_validate_every_source(schema: Any, good: Any, bad: Any) -> None:
    rt = app_with()
    rt.channel("open:*", schema=schema)
    async with TestClient(rt, token=token()) as client:
        sub = await client.subscribe("open:typed")
        await client.publish("open:typed", good)
        assert (await sub.next()).data == good
        with pytest.raises(ClientError) as refused:
            await client.publish("open:typed", bad)
        assert refused.value.code == 107
        await rt.publish("open:typed", good)
        assert (await sub.next()).data == good
        with pytest.raises(ClientError):
            await rt.publish("open:typed", bad)
    await rt.publish("chat:untyped", bad)  # other channels take anything


async def test_typed_channel_with_a_pydantic_model() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Order(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        qty: int

    rt = app_with()
    rt.channel("open:orders", schema=Order)
    async with TestClient(rt, token=token()) as client:
        await client.publish("open:orders", {"qty": 3})
        with pytest.raises(ClientError) as refused:
            await client.publish("open:orders", {"qty": "many"})
    assert refused.value.code == 107 and "qty" in refused.value.message


# --------------------------------------------------------------------------- RPC


async def test_rpc_with_typed_params_and_a_struct_result() -> None:
    rt = app_with()

    @rt.rpc("quote")
    async def quote(ctx: RPCContext, params: QuoteRequest) -> Quote:
        return Quote(params.symbol, 12.5)

    async with TestClient(rt, token=token()) as client:
        assert await client.rpc("quote", {"symbol": "ACME"}) == {"symbol": "ACME", "price": 12.5}
        with pytest.raises(ClientError) as invalid:
            await client.rpc("quote", {"ticker": "ACME"})
        assert invalid.value.code == 107 and "symbol" in invalid.value.message
        with pytest.raises(ClientError) as unknown:
            await client.rpc("nothing")
        assert unknown.value.code == 104


@pytest.mark.parametrize("failure", ["raises", "timeout", "unencodable", "wrong-result"])
async def test_a_failing_handler_gets_100_and_the_connection_stays(failure: str) -> None:
    rt = app_with(handler_timeout=0.2)

    @rt.rpc("fail")
    async def fail(ctx: RPCContext, params: Any) -> Any:
        if failure == "raises":
            raise KeyError("internals")
        if failure == "timeout":
            await asyncio.Event().wait()
        if failure == "unencodable":
            return {"when": object()}
        return None

    @rt.rpc("ok")
    async def ok(ctx: RPCContext, params: Any) -> Any:
        return "fine"

    async with TestClient(rt, token=token()) as client:
        if failure == "wrong-result":
            assert await client.rpc("fail") is None  # None is valid JSON: null
            return
        with pytest.raises(ClientError) as failed:
            await client.rpc("fail")
        assert (failed.value.code, failed.value.message) == (100, "internal server error")
        assert await client.rpc("ok") == "fine"


async def test_rpcs_of_one_connection_run_concurrently() -> None:
    rt = app_with()
    release, started = asyncio.Event(), asyncio.Event()

    @rt.rpc("slow")
    async def slow(ctx: RPCContext, params: Any) -> str:
        started.set()
        await release.wait()
        return "slow"

    @rt.rpc("fast")
    async def fast(ctx: RPCContext, params: Any) -> str:
        return "fast"

    async with TestClient(rt, token=token()) as client:
        slow_call = asyncio.ensure_future(client.rpc("slow"))
        await asyncio.wait_for(started.wait(), 5)  # the slow one is running first
        assert await client.rpc("fast") == "fast"
        assert not slow_call.done()
        release.set()
        assert await slow_call == "slow"


async def test_on_message_receives_sends_in_order() -> None:
    rt = app_with()
    got: list[Any] = []

    @rt.on_message
    async def message(ctx: MessageContext, data: dict[str, int]) -> None:
        got.append((ctx.user, data["n"]))

    async with TestClient(rt, token=token("fay")) as client:
        for n in range(3):
            await client.send({"n": n})
    assert got == [("fay", 0), ("fay", 1), ("fay", 2)]


async def test_handlers_must_be_async() -> None:
    rt = app_with()
    with pytest.raises(TypeError, match="async def"):

        @rt.on_connect  # type: ignore[arg-type]
        def connect(ctx: ConnectContext) -> None:
            return None


async def test_subscription_token_still_grants_on_its_own() -> None:
    rt = app_with()

    @rt.on_subscribe("chat:*")
    async def join(ctx: SubscribeContext) -> None:
        raise ClientError()

    sub_token = make_token(SECRET, user="gil", channel="chat:granted", ttl=60)
    async with TestClient(rt, token=token("gil")) as client:
        await client.subscribe("chat:granted", token=sub_token)
        with pytest.raises(ClientError):
            await client.subscribe("chat:other")


async def test_on_subscribe_sets_a_conflation_rate() -> None:
    """On a conflating channel the application may slow one subscriber down: it gets the
    latest value of each key, not every update."""
    rt = Tidings(make_config())
    rt.namespace("quotes", conflate_by="key", allow_subscribe_for_client=True)

    @rt.on_subscribe("quotes:*")
    async def join(ctx: SubscribeContext) -> SubscribeResult:
        return SubscribeResult(max_frequency=2.0 if ctx.user == "slow" else None)

    async with (
        TestClient(rt, token=token("slow")) as slow,
        TestClient(rt, token=token("fast")) as fast,
    ):
        slow_sub = await slow.subscribe("quotes:acme")
        fast_sub = await fast.subscribe("quotes:acme")
        for price in range(1, 21):
            await rt.publish("quotes:acme", {"price": price}, key="ACME")
            await asyncio.sleep(0)  # one publication per loop turn: no batching to hide in
        fast_seen = [(await fast_sub.next()).data["price"] for _ in range(20)]
        assert fast_seen == list(range(1, 21))
        slow_seen = [(await slow_sub.next(timeout=2)).data["price"]]
        while slow_seen[-1] != 20:
            slow_seen.append((await slow_sub.next(timeout=2)).data["price"])
        # At 2 per second: the first value at once, the latest half a second later.
        assert slow_seen == [1, 20]
