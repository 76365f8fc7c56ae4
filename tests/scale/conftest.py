"""Fixtures for the scale-out suite: tidings nodes as real processes sharing Redis.

* :func:`tidings_nodes` starts ``python -m tidings serve --port 0 --broker URL
  --broker-prefix P`` processes (each prefix unique to a test, its keys deleted
  afterwards) and kills every one of them at teardown.
* :class:`FailoverProxy` is a TCP proxy in front of several nodes: each new
  connection goes to the first node that accepts it, so SDK clients configured
  with one URL reconnect to a surviving node when theirs is killed.
* :class:`JsSubscriber` runs one centrifuge-js client (``js/subscriber.mjs``) and
  :func:`py_subscriber` one centrifuge-python client; both record what their
  SDK reports in a :class:`Story`.
* ``private_redis_factory`` runs redis-servers of the test's own
  (:class:`~tests.support.redis.RedisServer`), which it may kill and restart on
  the same port and data dir.
* ``scale_redis`` is the shared Redis and ``prefix`` a key prefix of the test's
  own on it, its keys deleted afterwards.

Nothing here sleeps for a fixed time: waits are on events or polls with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from centrifuge import (  # type: ignore[import-untyped]
    Client,
    ClientEventHandler,
    PublicationContext,
    SubscribedContext,
    SubscriptionEventHandler,
)

from tests.conftest import token
from tests.support.processes import WAIT, NodeProcess, spawn_tidings
from tests.support.redis import (
    StartRedis,
    delete_keys,
    redis_servers,
    skip_without_redis_server,
    unique_prefix,
)

REPO = Path(__file__).resolve().parents[2]
JS_SUBSCRIBER = Path(__file__).resolve().parent / "js" / "subscriber.mjs"


PRESENCE_TTL = 2.0
PRESENCE_REFRESH = 0.5

NODE_CONFIG = """
[channels.namespaces.chat]
history_size = 2000
history_ttl = "300s"
force_recovery = true
presence = true
join_leave = true
force_push_join_leave = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_publish_for_client = true
allow_history_for_subscriber = true
allow_presence_for_subscriber = true
allow_presence_for_client = true
"""
"""The ``chat`` namespace every node process serves: history, recovery, presence."""


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def scale_redis(shared_redis: str) -> str:
    """The shared Redis URL (a skip when it is down)."""
    return shared_redis


@pytest.fixture
async def prefix(scale_redis: str) -> AsyncIterator[str]:
    """A key prefix unique to this test on the shared Redis; its keys are deleted afterwards."""
    value = unique_prefix()
    yield value
    await delete_keys(scale_redis, value)


@pytest.fixture
def private_redis_factory() -> Iterator[StartRedis]:
    """Start private redis-servers (skipped without the binary); all stopped at teardown."""
    skip_without_redis_server()
    with redis_servers() as start:
        yield start


# --------------------------------------------------------------------------- node processes


StartNodes = Callable[..., Awaitable[list[NodeProcess]]]


@pytest.fixture
async def tidings_nodes(tmp_path: Path) -> AsyncIterator[StartNodes]:
    """Start tidings node processes on a broker; every one is killed at teardown."""
    config = tmp_path / "tidings.toml"
    config.write_text(NODE_CONFIG)
    started: list[NodeProcess] = []

    async def start(count: int, broker: str, prefix: str, *extra: str) -> list[NodeProcess]:
        async def one(index: int) -> NodeProcess:
            node = await spawn_tidings(
                "--config", str(config),
                "--broker", broker,
                "--broker-prefix", prefix,
                "--presence-ttl", f"{PRESENCE_TTL}s",
                "--presence-refresh-interval", f"{PRESENCE_REFRESH}s",
                "--shutdown-timeout", "3s",
                "--node-name", f"node{len(started) + index}",
                *extra,
                name=f"node{len(started) + index}",
            )  # fmt: skip
            started.append(node)
            return node

        return list(await asyncio.gather(*(one(i) for i in range(count))))

    yield start
    for node in started:
        await node.stop()


# --------------------------------------------------------------------------- failover proxy


class FailoverProxy:
    """A TCP proxy on 127.0.0.1: each connection goes to the first backend that accepts.

    Backends are tried in the order given, so every client lands on the first
    one while it lives; when it dies its connections end (the client sees the
    TCP connection close) and reconnects land on the next. ``landed`` counts
    connections per backend port.
    """

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.landed: dict[int, int] = {}
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.landed[port] = self.landed.get(port, 0) + 1
            self._writers.update((writer, backend_writer))
            await asyncio.gather(
                self._pipe(reader, backend_writer), self._pipe(backend_reader, writer)
            )
            return
        writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)


@pytest.fixture
async def failover_proxy() -> AsyncIterator[Callable[[list[int]], Awaitable[FailoverProxy]]]:
    made: list[FailoverProxy] = []

    async def make(backends: list[int]) -> FailoverProxy:
        proxy = FailoverProxy(backends)
        await proxy.start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.close()


# --------------------------------------------------------------------------- SDK clients


@dataclass
class Story:
    """What one SDK client reported: its connections, subscribes and publications.

    Each ``subscribed`` entry has ``recovered``, ``wasRecovering``, ``offset``,
    ``epoch`` and ``at``: how many publications had arrived before it.
    """

    name: str
    client_ids: list[str] = field(default_factory=list)
    subscribed: list[dict[str, Any]] = field(default_factory=list)
    publications: list[tuple[int, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, event: str) -> None:
        self.events.append(event)
        self.changed.set()

    @property
    def offsets(self) -> list[int]:
        return [offset for offset, _ in self.publications]

    async def wait(
        self, condition: Callable[[Story], bool], what: str, within: float = WAIT
    ) -> None:
        """Wait until ``condition(self)`` holds (it is checked whenever an event arrives)."""
        try:
            async with asyncio.timeout(within):
                while not condition(self):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            pytest.fail(
                f"{self.name}: timed out after {within} s waiting for {what}; "
                f"events {self.events[-20:]}, offsets {self.offsets[-10:]}"
            )


class JsSubscriber:
    """One centrifuge-js client (``js/subscriber.mjs``) subscribed to one channel."""

    def __init__(self, process: asyncio.subprocess.Process, story: Story) -> None:
        self.process = process
        self.story = story
        self._stderr: list[str] = []
        self._readers = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        story = self.story
        while line := await self.process.stdout.readline():
            document = json.loads(line)
            event = document["event"]
            if event == "publication":
                story.publications.append((int(document["offset"]), document["data"]))
            elif event == "connected":
                story.client_ids.append(document["client"])
            elif event == "subscribed":
                story.subscribed.append({**document, "at": len(story.publications)})
            story.record(event)
        story.record("exited")

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self._stderr.append(line.decode(errors="replace").rstrip())

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()
        for task in self._readers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def node_missing() -> str:
    if shutil.which("node") is None:
        return "Node.js is not installed"
    for package in ("centrifuge", "ws"):
        if not (REPO / "node_modules" / package / "package.json").is_file():
            return f"npm package {package!r} is not installed (run `npm ci`)"
    return ""


@pytest.fixture
async def js_subscriber() -> AsyncIterator[Callable[..., Awaitable[JsSubscriber]]]:
    """Start centrifuge-js clients under Node; every process is killed at teardown."""
    reason = node_missing()
    if reason:
        pytest.skip(reason)
    made: list[JsSubscriber] = []

    async def start(url: str, channel: str, user: str = "js") -> JsSubscriber:
        process = await asyncio.create_subprocess_exec(
            "node",
            str(JS_SUBSCRIBER),
            url,
            token(user),
            channel,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        subscriber = JsSubscriber(process, Story(f"centrifuge-js {user}"))
        made.append(subscriber)
        return subscriber

    yield start
    for subscriber in made:
        await subscriber.close()


class _PyClientEvents(ClientEventHandler):  # type: ignore[misc]
    def __init__(self, story: Story) -> None:
        self.story = story

    async def on_connected(self, ctx: Any) -> None:
        self.story.client_ids.append(ctx.client)
        self.story.record("connected")

    async def on_disconnected(self, ctx: Any) -> None:
        self.story.record(f"disconnected {ctx.code}")

    async def on_connecting(self, ctx: Any) -> None:
        self.story.record(f"connecting {ctx.code}")


class _PySubscriptionEvents(SubscriptionEventHandler):  # type: ignore[misc]
    def __init__(self, story: Story) -> None:
        self.story = story

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        position = ctx.stream_position
        self.story.subscribed.append(
            {
                "recovered": ctx.recovered,
                "wasRecovering": ctx.was_recovering,
                "offset": position.offset if position else 0,
                "epoch": position.epoch if position else "",
                "at": len(self.story.publications),
            }
        )
        self.story.record("subscribed")

    async def on_subscribing(self, ctx: Any) -> None:
        self.story.record(f"subscribing {ctx.code}")

    async def on_unsubscribed(self, ctx: Any) -> None:
        self.story.record(f"unsubscribed {ctx.code}")

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.story.publications.append((ctx.pub.offset, ctx.pub.data))
        self.story.record("publication")


@pytest.fixture
async def py_subscriber() -> AsyncIterator[Callable[..., Awaitable[Story]]]:
    """centrifuge-python clients subscribed to one channel; disconnected at teardown."""
    made: list[Client] = []

    async def start(url: str, channel: str, user: str = "py") -> Story:
        story = Story(f"centrifuge-python {user}")
        client = Client(
            url,
            events=_PyClientEvents(story),
            token=token(user),
            min_reconnect_delay=0.05,
            max_reconnect_delay=0.5,
            proxy=None,
        )
        subscription = client.new_subscription(
            channel,
            events=_PySubscriptionEvents(story),
            recoverable=True,
            min_resubscribe_delay=0.05,
            max_resubscribe_delay=0.5,
        )
        made.append(client)
        await client.connect()
        await subscription.subscribe()
        return story

    yield start
    for client in made:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 5)
