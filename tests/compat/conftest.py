"""Fixtures for the client-compatibility suite: real SDKs against a real server on 127.0.0.1.

* :class:`EventLog` records what an SDK reported, in order; tests wait on it with
  deadlines (never fixed sleeps) and assert on the whole story afterwards.
* :class:`JsClient` drives one centrifuge-js client in a Node 20 process
  (``js/driver.mjs``): commands go in on stdin, results, events and token
  requests come back as JSON lines.
* ``py_client`` builds centrifuge-python clients whose events land in an
  :class:`EventLog`.
* ``launch`` starts servers like the root ``start_server`` fixture, but can hand
  the node a broker, so a test can restart a node on the same port and keep
  (or lose) its history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cent import AsyncClient
from centrifuge import Client, ClientEventHandler, ClientState, SubscriptionEventHandler

from tests.conftest import API_KEY, RunningServer, make_config
from tidings.brokers.memory import MemoryBroker
from tidings.config import Config
from tidings.node import Node
from tidings.server.app import TidingsServer

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "js" / "driver.mjs"
EVENT_TIMEOUT = 10.0
"""Default deadline for one awaited SDK event: generous for a loaded 2-core machine."""


def node_missing_reason() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed"
    for package in ("centrifuge", "ws"):
        if not (REPO / "node_modules" / package / "package.json").is_file():
            return f"npm package {package!r} is not installed (run `npm ci` in {REPO})"
    return None


# --------------------------------------------------------------------------- event log


@dataclass
class Event:
    """One thing an SDK reported. ``source`` is "client" or the subscription's channel."""

    source: str
    name: str
    ctx: Any


class EventLog:
    """Events in arrival order; :meth:`next` consumes them, :attr:`events` keeps them all."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._unread: list[Event] = []
        self._changed = asyncio.Event()
        self.failure: str | None = None

    def record(self, source: str, name: str, ctx: Any) -> None:
        event = Event(source, name, ctx)
        self.events.append(event)
        self._unread.append(event)
        self._changed.set()

    def fail(self, reason: str) -> None:
        self.failure = reason
        self._changed.set()

    def named(self, name: str, source: str | None = None) -> list[Event]:
        return [e for e in self.events if e.name == name and source in (None, e.source)]

    async def next(
        self,
        name: str,
        source: str | None = None,
        where: Callable[[Any], bool] | None = None,
        within: float = EVENT_TIMEOUT,
    ) -> Any:
        """The ctx of the first unread ``name`` event from ``source`` matching ``where``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            for index, event in enumerate(self._unread):
                if (
                    event.name == name
                    and source in (None, event.source)
                    and (where is None or where(event.ctx))
                ):
                    del self._unread[index]
                    return event.ctx
            if self.failure is not None:
                raise AssertionError(f"{self.failure} while waiting for {name!r} from {source}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = [(e.source, e.name) for e in self.events]
                raise AssertionError(
                    f"no {name!r} event from {source or 'any source'} within {within} s; "
                    f"events so far: {seen}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def collect(
        self,
        name: str,
        count: int,
        source: str | None = None,
        within: float = EVENT_TIMEOUT,
    ) -> list[Any]:
        return [await self.next(name, source, within=within) for _ in range(count)]


# --------------------------------------------------------------------------- centrifuge-js


class JsError(Exception):
    """A centrifuge-js call rejected; ``code`` is the protocol error code when there is one."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


TokenProvider = Callable[[str, str | None], str | Awaitable[str]]


class JsClient:
    """One centrifuge-js client in its own Node process (see ``js/driver.mjs``)."""

    def __init__(self, process: asyncio.subprocess.Process, tokens: TokenProvider | None) -> None:
        self.process = process
        self.log = EventLog()
        self.tokens = tokens
        self._results: dict[int, asyncio.Future[Any]] = {}
        self._token_tasks: set[asyncio.Task[None]] = set()
        self._next_id = 0
        self._stderr: list[str] = []
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_stdout())
        self._stderr_reader = asyncio.create_task(self._read_stderr())

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                document = json.loads(line)
            except json.JSONDecodeError:
                self._stderr.append(f"(stdout) {line.decode(errors='replace').rstrip()}")
                continue
            kind = document.get("type")
            if kind == "started":
                if not self._started.done():
                    self._started.set_result(None)
            elif kind == "result":
                future = self._results.pop(document["id"], None)
                if future is not None and not future.done():
                    future.set_result(document)
            elif kind == "event":
                source = "client" if document["source"] == "client" else document["channel"]
                self.log.record(source, document["event"], document.get("ctx") or {})
            elif kind == "token_request":
                task = asyncio.create_task(self._answer_token_request(document))
                self._token_tasks.add(task)
                task.add_done_callback(self._token_tasks.discard)
            else:
                self._stderr.append(f"(stdout) {document}")
        reason = f"the Node process ended (exit code {await self.process.wait()}): {self.stderr}"
        self.log.fail(reason)
        for future in self._results.values():
            if not future.done():
                future.set_exception(AssertionError(reason))
        if not self._started.done():
            self._started.set_exception(AssertionError(reason))

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self._stderr.append(line.decode(errors="replace").rstrip())

    @property
    def stderr(self) -> str:
        return "\n".join(self._stderr[-30:])

    async def _answer_token_request(self, request: dict[str, Any]) -> None:
        """Answer getToken from the test's provider; a provider failure fails the test."""
        kind, channel = request["kind"], request.get("channel")
        self.log.record("client" if channel is None else channel, "token_request", request)
        try:
            if self.tokens is None:
                raise AssertionError(f"centrifuge-js asked for a {kind} token; none expected")
            token = self.tokens(kind, channel)
            if not isinstance(token, str):
                token = await token
        except Exception as exc:
            self.log.fail(f"the token provider failed: {exc!r}")
            await self.call("token_reply", request=request["request"], error=repr(exc))
            return
        await self.call("token_reply", request=request["request"], token=token)

    async def call(self, op: str, within: float = EVENT_TIMEOUT, **args: Any) -> Any:
        """Run one driver command; return its value or raise :class:`JsError`."""
        self._next_id += 1
        command_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._results[command_id] = future
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": command_id, "op": op, **args}).encode() + b"\n")
        await self.process.stdin.drain()
        try:
            result = await asyncio.wait_for(future, within)
        except TimeoutError:
            raise AssertionError(
                f"centrifuge-js did not answer {op!r} within {within} s; stderr: {self.stderr}"
            ) from None
        if not result["ok"]:
            raise JsError(result["error"].get("code"), result["error"].get("message", ""))
        return result["value"]

    # Shorthands for the common steps.

    async def create(
        self, url: str, *, token: str = "", get_token: bool = False, **options: Any
    ) -> None:
        await self.call("create", url=url, token=token, getToken=get_token, options=options)

    async def connect(self) -> dict[str, Any]:
        await self.call("connect")
        connected: dict[str, Any] = await self.log.next("connected", "client")
        return connected

    async def subscribe(
        self, channel: str, *, get_token: bool = False, **options: Any
    ) -> dict[str, Any]:
        await self.call("new_subscription", channel=channel, options=options, getToken=get_token)
        await self.call("subscribe", channel=channel)
        subscribed: dict[str, Any] = await self.log.next("subscribed", channel)
        return subscribed

    async def state(self) -> dict[str, Any]:
        state: dict[str, Any] = await self.call("state")
        return state

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 3)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        for task in (self._reader, self._stderr_reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


JsClientFactory = Callable[..., Awaitable[JsClient]]


@pytest.fixture
async def js_client() -> AsyncIterator[JsClientFactory]:
    """Start Node processes running the centrifuge-js driver; all are killed at teardown."""
    reason = node_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    started: list[JsClient] = []

    async def start(tokens: TokenProvider | None = None) -> JsClient:
        process = await asyncio.create_subprocess_exec(
            "node",
            str(DRIVER),
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 22,
        )
        client = JsClient(process, tokens)
        started.append(client)
        await asyncio.wait_for(client._started, 15)
        return client

    yield start
    for client in started:
        await client.close()


# --------------------------------------------------------------------------- centrifuge-python


class PyClientEvents(ClientEventHandler):
    """Client-level events (including server-side subscriptions) into an EventLog."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def on_connecting(self, ctx: Any) -> None:
        self.log.record("client", "connecting", ctx)

    async def on_connected(self, ctx: Any) -> None:
        self.log.record("client", "connected", ctx)

    async def on_disconnected(self, ctx: Any) -> None:
        self.log.record("client", "disconnected", ctx)

    async def on_error(self, ctx: Any) -> None:
        self.log.record("client", "error", ctx)

    async def on_subscribed(self, ctx: Any) -> None:
        self.log.record("client", "subscribed", ctx)

    async def on_subscribing(self, ctx: Any) -> None:
        self.log.record("client", "subscribing", ctx)

    async def on_unsubscribed(self, ctx: Any) -> None:
        self.log.record("client", "unsubscribed", ctx)

    async def on_publication(self, ctx: Any) -> None:
        self.log.record("client", "publication", ctx)

    async def on_join(self, ctx: Any) -> None:
        self.log.record("client", "join", ctx)

    async def on_leave(self, ctx: Any) -> None:
        self.log.record("client", "leave", ctx)


class PySubscriptionEvents(SubscriptionEventHandler):
    """One subscription's events into an EventLog, with the channel as source."""

    def __init__(self, log: EventLog, channel: str) -> None:
        self.log = log
        self.channel = channel

    async def on_subscribing(self, ctx: Any) -> None:
        self.log.record(self.channel, "subscribing", ctx)

    async def on_subscribed(self, ctx: Any) -> None:
        self.log.record(self.channel, "subscribed", ctx)

    async def on_unsubscribed(self, ctx: Any) -> None:
        self.log.record(self.channel, "unsubscribed", ctx)

    async def on_publication(self, ctx: Any) -> None:
        self.log.record(self.channel, "publication", ctx)

    async def on_join(self, ctx: Any) -> None:
        self.log.record(self.channel, "join", ctx)

    async def on_leave(self, ctx: Any) -> None:
        self.log.record(self.channel, "leave", ctx)

    async def on_error(self, ctx: Any) -> None:
        self.log.record(self.channel, "error", ctx)


PyClientFactory = Callable[..., tuple[Client, EventLog]]


@pytest.fixture
async def py_client() -> AsyncIterator[PyClientFactory]:
    """centrifuge-python clients recording into an EventLog; disconnected at teardown."""
    made: list[Client] = []

    def make(url: str, **options: Any) -> tuple[Client, EventLog]:
        log = EventLog()
        options.setdefault("proxy", None)
        client = Client(url, events=PyClientEvents(log), **options)
        made.append(client)
        return client, log

    yield make
    for client in made:
        if client.state != ClientState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 5)


def py_subscription_events(log: EventLog, channel: str) -> PySubscriptionEvents:
    return PySubscriptionEvents(log, channel)


# --------------------------------------------------------------------------- servers


class HistoryKeepingBroker(MemoryBroker):
    """A memory broker whose streams outlive a node, as Redis's do across a node restart."""

    async def close(self) -> None:
        return None


Launch = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def launch() -> AsyncIterator[Launch]:
    """Start a server with an optional broker; ``prepare(node)`` runs before it listens.

    ``prepare`` lets a test publish on a restarted node while no client can
    reach it yet: the client is provably away for those publications.
    """
    running: list[RunningServer] = []

    async def start(
        config: Config | None = None,
        *,
        broker: MemoryBroker | None = None,
        prepare: Callable[[Node], Awaitable[None]] | None = None,
        **overrides: Any,
    ) -> RunningServer:
        node = Node(config or make_config(**overrides), broker=broker)
        server = TidingsServer(node)
        if prepare is not None:
            await node.start()
            await prepare(node)
        port = await server.start()
        result = RunningServer(server, node, port)
        running.append(result)
        return result

    yield start
    for item in reversed(running):
        await item.server.stop()


ApiFactory = Callable[..., AsyncClient]


@pytest.fixture
async def cent_api() -> AsyncIterator[ApiFactory]:
    """``cent.AsyncClient`` instances for a server's ``/api``; closed at teardown."""
    made: list[AsyncClient] = []

    def make(server: RunningServer, key: str = API_KEY) -> AsyncClient:
        client = AsyncClient(f"{server.http_url}/api", key, timeout=10.0)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()
