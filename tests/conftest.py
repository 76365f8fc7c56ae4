"""Shared fixtures: in-process servers on ephemeral ports, raw WebSocket clients, tokens,
the shared Redis and private Redis servers.

Tests run on uvloop, as production does. Nothing here sleeps for a fixed time:
helpers wait on frames with deadlines. Plain helpers more than one suite needs
live in ``tests/support``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import settings
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.redis import (
    REDIS_URL,
    Cluster,
    RedisServer,
    cluster,
    redis_servers,
    redis_unreachable,
    skip_without_redis_server,
)
from tidings.application import Tidings
from tidings.auth import make_token
from tidings.channels import ChannelOptions
from tidings.config import ChannelsConfig, Config
from tidings.node import Node
from tidings.server.app import TidingsServer

# Fuzz tests draw the same examples on every run, so CI results are reproducible; set
# TIDINGS_HYPOTHESIS_PROFILE=explore to draw fresh ones locally.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("TIDINGS_HYPOTHESIS_PROFILE", "ci"))

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium: Playwright drives it and never downloads a browser of its own."""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Headless, and nothing that reaches for the network: this machine's is closed."""

SECRET = "tidings-test-secret-0123456789abcdef"
API_KEY = "tidings-test-api-key"


_test_deadline = [float("inf")]
"""When the running test's own timeout runs out (monotonic seconds): see ``_loop_with_a_pulse``."""


@pytest.fixture(autouse=True)
def _deadline(request: pytest.FixtureRequest) -> Iterator[None]:
    """Arm the deadline of an async test a little before pytest-timeout's own."""
    marker = request.node.get_closest_marker("timeout")
    limit = (
        float(marker.args[0])
        if marker and marker.args
        else float(request.config.getini("timeout") or 0)
    )
    if limit > 0:
        _test_deadline[0] = time.monotonic() + limit - max(1.0, limit * 0.1)
    try:
        yield
    finally:
        _test_deadline[0] = float("inf")


def _loop_with_a_pulse() -> asyncio.AbstractEventLoop:
    """uvloop, the loop production uses, with a pulse that enforces the test's timeout.

    pytest-timeout's signal method cannot stop a test on uvloop: the SIGALRM handler
    runs inside one of the loop's own callbacks, whose exception the loop only logs.
    So every 0.2 s the pulse looks at the running test's deadline (``_deadline``) and,
    past it, cancels the loop's tasks: a test awaiting something that never comes
    fails with the place it was stuck in its traceback, and the run goes on.
    pytest-timeout (thread method) remains the backstop for a test blocked outside
    the loop.
    """
    loop = uvloop.new_event_loop()

    def pulse() -> None:
        if loop.is_closed():
            return
        if time.monotonic() > _test_deadline[0]:
            _test_deadline[0] = float("inf")
            for task in asyncio.all_tasks(loop):
                task.cancel("the test ran past its timeout")
        loop.call_later(0.2, pulse)

    loop.call_soon(pulse)
    return loop


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Run every async test on uvloop (with a pulse, see ``_loop_with_a_pulse``)."""
    return {"uvloop": _loop_with_a_pulse}


def full_namespace(**overrides: Any) -> ChannelOptions:
    """History, recovery, presence and join/leave, open to authenticated subscribers."""
    options: dict[str, Any] = {
        "history_size": 100,
        "history_ttl": 300.0,
        "force_recovery": True,
        "presence": True,
        "join_leave": True,
        "force_push_join_leave": True,
        "allow_subscribe_for_client": True,
        "allow_publish_for_subscriber": True,
        "allow_history_for_subscriber": True,
        "allow_presence_for_subscriber": True,
    }
    options.update(overrides)
    return ChannelOptions(**options)


def standard_channels() -> ChannelsConfig:
    return ChannelsConfig(
        allow_subscribe_for_client=True,
        namespaces={
            "chat": full_namespace(),
            "open": ChannelOptions(
                allow_subscribe_for_client=True,
                allow_subscribe_for_anonymous=True,
                allow_publish_for_client=True,
                allow_publish_for_anonymous=True,
            ),
            "small": full_namespace(history_size=3),
            "quiet": ChannelOptions(allow_subscribe_for_client=True),
            "positioned": ChannelOptions(
                history_size=50,
                history_ttl=300.0,
                allow_subscribe_for_client=True,
                allow_history_for_client=True,
                allow_publish_for_client=True,
            ),
        },
    )


def make_config(**overrides: Any) -> Config:
    values: dict[str, Any] = {
        "port": 0,
        "token_hmac_secret": SECRET,
        "api_key": API_KEY,
        "channels": standard_channels(),
        "demo": "off",
    }
    values.update(overrides)
    config = Config(**values)
    config.validate()
    return config


def token(user: str = "alice", **kwargs: Any) -> str:
    kwargs.setdefault("ttl", 3600)
    return make_token(SECRET, user=user, **kwargs)


@dataclass
class RunningServer:
    server: TidingsServer
    node: Node
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    running: list[RunningServer] = []

    async def start(config: Config | None = None, **overrides: Any) -> RunningServer:
        node = Node(config or make_config(**overrides))
        server = TidingsServer(node)
        port = await server.start()
        result = RunningServer(server, node, port)
        running.append(result)
        return result

    yield start
    for item in running:
        await item.server.stop()


StartApp = Callable[[Tidings], Awaitable[RunningServer]]


@pytest.fixture
async def start_app() -> AsyncIterator[StartApp]:
    """Serve a :class:`Tidings` application standalone on an ephemeral port."""
    running: list[RunningServer] = []

    async def start(app: Tidings) -> RunningServer:
        server = TidingsServer(app.node, static=app.static_routes)
        await app.start()
        port = await server.start()
        result = RunningServer(server, app.node, port)
        running.append(result)
        return result

    yield start
    for item in running:
        await item.server.stop()


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server()


class WsClient:
    """A raw protocol client over a real WebSocket: exact frames in, exact frames out."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pushes: list[dict[str, Any]] = []
        self.replies: dict[int, dict[str, Any]] = {}
        self.frames: list[str] = []
        self._next_id = 0

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def send(self, *commands: dict[str, Any]) -> None:
        await self.ws.send("\n".join(json.dumps(command) for command in commands))

    async def _read(self, timeout: float) -> None:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(frame, str), "server sent a binary frame"
        self.frames.append(frame)
        for line in frame.split("\n"):
            document = json.loads(line)
            if document.get("id"):
                self.replies[document["id"]] = document
            else:
                self.pushes.append(document)

    async def call(
        self, method: str, params: dict[str, Any], timeout: float = 5.0
    ) -> dict[str, Any]:
        command_id = self.next_id()
        await self.send({"id": command_id, method: params})
        return await self.reply(command_id, timeout)

    async def reply(self, command_id: int, timeout: float = 5.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while command_id not in self.replies:
            await self._read(max(0.01, deadline - asyncio.get_running_loop().time()))
        return self.replies.pop(command_id)

    async def connect(self, tok: str | None = None, **params: Any) -> dict[str, Any]:
        if tok:
            params["token"] = tok
        reply = await self.call("connect", params)
        assert "connect" in reply, reply
        return reply["connect"]

    async def subscribe(self, channel: str, **params: Any) -> dict[str, Any]:
        reply = await self.call("subscribe", {"channel": channel, **params})
        assert "subscribe" in reply, reply
        return reply["subscribe"]

    async def push(
        self, predicate: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first unread push matching ``predicate`` (pings ``{}`` are skipped)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for index, document in enumerate(self.pushes):
                if document and (predicate is None or predicate(document)):
                    return self.pushes.pop(index)
            await self._read(max(0.01, deadline - asyncio.get_running_loop().time()))

    async def publications(
        self, channel: str, count: int, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        found = []
        for _ in range(count):
            push = await self.push(
                lambda d: d.get("push", {}).get("channel") == channel and "pub" in d["push"],
                timeout,
            )
            found.append(push["push"]["pub"])
        return found

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str | None]:
        """Read until the server closes; return its close code and reason."""
        try:
            while True:
                await self._read(timeout)
        except ConnectionClosed as closed:
            if closed.rcvd is None:
                return None, None
            return closed.rcvd.code, closed.rcvd.reason

    async def close(self) -> None:
        await self.ws.close()


ClientFactory = Callable[..., Awaitable[WsClient]]


@pytest.fixture
async def ws_client() -> AsyncIterator[ClientFactory]:
    opened: list[WsClient] = []

    async def open_client(url: str, **kwargs: Any) -> WsClient:
        kwargs.setdefault("compression", None)
        kwargs.setdefault("max_size", None)
        ws = await connect(url, open_timeout=5, **kwargs)
        client = WsClient(ws)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.ws.close()


@pytest.fixture(scope="session")
def shared_redis() -> str:
    """The shared Redis URL (``TIDINGS_TEST_REDIS_URL``), or a skip naming it when it is down."""
    reason = redis_unreachable(REDIS_URL)
    if reason:
        pytest.skip(reason)
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Cluster]:
    """A private 3-master Redis Cluster on free loopback ports, for the whole session."""
    skip_without_redis_server()
    with cluster() as started:
        yield started


@pytest.fixture(scope="session")
def private_redis() -> Iterator[RedisServer]:
    """A private standalone redis-server that tests may pause, count and flush."""
    skip_without_redis_server()
    with redis_servers() as start:
        yield start("--appendonly", "no")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Debian chromium (skips when it is not installed: `make test` installs it)."""
    if not CHROMIUM.exists():  # noqa: ASYNC240 - one stat at setup
        pytest.skip(f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    async_api = pytest.importorskip("playwright.async_api")
    async with async_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield launched
        finally:
            await launched.close()


async def control_client(server: RunningServer, ws_client: ClientFactory) -> WsClient:
    """A well-behaved client next to a misbehaving one: it must never notice."""
    client = await ws_client(server.ws_url)
    await client.connect(token("control"))
    await client.subscribe("chat:control")
    return client


async def assert_still_serving(server: RunningServer, control: WsClient) -> None:
    """After someone's bad input, the server and its other clients carry on."""
    marker = {"marker": time.monotonic()}
    await server.node.publish("chat:control", marker)
    (publication,) = await control.publications("chat:control", 1)
    assert publication["data"] == marker
