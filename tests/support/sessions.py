"""A session driven with bytes in and bytes out: no socket, a clock moved by hand.

The harness feeds protocol frames to :meth:`Session.handle_frame` and returns
the exact documents the session wrote, or the disconnect it closed with.
``tests/unit/test_session.py`` and ``tests/unit/test_session_maps.py`` drive it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from tests.conftest import SECRET
from tests.support.clock import FakeClock
from tidings.auth import make_token
from tidings.errors import Disconnect
from tidings.node import Node
from tidings.protocol.wire import WireFormat
from tidings.session import RequestInfo, Session


class PlainWire(WireFormat):
    """Documents joined by ``\\n``: what a WebSocket text frame carries, without the header."""

    __slots__ = ()

    def frame(self, documents: Sequence[bytes]) -> bytes:
        return b"\n".join(documents)


WIRE = PlainWire("plain", envelope=True)
T = TypeVar("T")


def json_documents(frames: list[bytes]) -> list[dict[str, Any]]:
    """What a JSON session wrote, one decoded document per line."""
    return [json.loads(line) for data in frames for line in data.split(b"\n")]


class RecordingTransport(Generic[T]):
    """The write side of a connection that keeps what it is given; ``read`` decodes it
    (JSON documents by default; the Protobuf tests parse replies with the SDK's classes)."""

    name = "test"
    unidirectional = False
    emulation = False

    def __init__(
        self,
        wire: WireFormat = WIRE,
        read: Callable[[list[bytes]], list[T]] = json_documents,  # type: ignore[assignment]
    ) -> None:
        self.wire = wire
        self._read = read
        self.written: list[bytes] = []
        self.closed_with: Disconnect | None = None

    @property
    def closed(self) -> bool:
        return self.closed_with is not None

    def write(self, data: bytes) -> None:
        assert self.closed_with is None, "written after close"
        self.written.append(data)

    def close(self, disconnect: Disconnect) -> None:
        self.closed_with = disconnect

    def write_buffer_size(self) -> int:
        return 0

    def take(self) -> list[T]:
        """Everything written since the last call, decoded."""
        documents = self._read(self.written)
        self.written = []
        return documents


class Harness:
    """One client session on ``node``, spoken to in protocol frames."""

    def __init__(self, node: Node, clock: FakeClock) -> None:
        self.node = node
        self.clock = clock
        self.transport: RecordingTransport[dict[str, Any]] = RecordingTransport()
        self.session = Session(node, self.transport, RequestInfo("192.0.2.7"))
        self.pushes: list[dict[str, Any]] = []
        self._next_id = 1

    def token(self, user: str = "alice", **claims: Any) -> str:
        ttl = claims.pop("ttl", 3600)
        return make_token(SECRET, user=user, ttl=ttl, clock=self.clock.time, **claims)

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send(self, *commands: dict[str, Any]) -> list[dict[str, Any]]:
        """Feed one frame holding ``commands``; wait until handled; return what was written."""
        self.session.handle_frame("\n".join(json.dumps(c) for c in commands).encode())
        await self.session.idle()
        await asyncio.sleep(0)  # the hub flushes at the end of the loop turn
        return self.transport.take()

    async def call(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send one command with an id; return its reply (pushes go to ``self.pushes``)."""
        written = await self.send(command)
        replies = [d for d in written if d.get("id") == command["id"]]
        self.pushes += [d for d in written if d.get("id") != command["id"]]
        assert len(replies) == 1, written
        return replies[0]

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """:meth:`call` with the next id."""
        return await self.call({"id": self.next_id(), method: params})

    async def connect(self, user: str = "alice", **claims: Any) -> dict[str, Any]:
        reply = await self.call({"id": 1, "connect": {"token": self.token(user, **claims)}})
        return dict(reply["connect"])

    async def flush(self) -> list[dict[str, Any]]:
        """Pushes written since the last look (after the hub's flush)."""
        await asyncio.sleep(0)
        self.pushes += self.transport.take()
        pushes, self.pushes = self.pushes, []
        return [p for p in pushes if p]  # pings are {}

    async def live_for(self, seconds: float) -> None:
        """Let time pass like a well-behaved client: answer every ping with a pong."""
        step = 5.0
        while seconds > 0:
            self.clock.advance(min(step, seconds))
            seconds -= step
            if {} in self.transport.take():
                await self.send({})
