"""Publications of a channel, delivered to the application's own Python code.

``async with rt.listen("orders:queue") as orders: async for pub in orders: ...``
gives backend code a subscription without a client: a game loop reading its
players' inputs, a matching engine reading orders, a bridge into another
system. It is a hub subscriber like the plain-HTTP feeds, so it gets every
publication the node gets, from every node through the broker, in order, with
the payload decoded once per listener.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from tidings.errors import TidingsError
from tidings.protocol.codec import PreparedPush
from tidings.protocol.messages import Publication
from tidings.protocol.wire import WireFormat, Writer

if TYPE_CHECKING:
    from tidings.node import Node


class ListenerOverflow(TidingsError):
    """A listener fell ``maxsize`` publications behind: it stops rather than hold more."""


class Received:
    """One publication as a listener sees it: ``data`` decoded, ``offset``, the publisher's
    ``client``/``user`` when a client published it, ``key`` and ``tags``."""

    __slots__ = ("channel", "client", "data", "key", "offset", "tags", "user")

    def __init__(self, channel: str, publication: Publication) -> None:
        self.channel = channel
        raw = bytes(publication.data)
        self.data: Any = msgspec.json.decode(raw) if raw else None
        self.offset = publication.offset
        info = publication.info
        self.client = info.client if info is not None else ""
        self.user = info.user if info is not None else ""
        self.key = publication.key
        self.tags = publication.tags

    def __repr__(self) -> str:
        return f"<Received {self.channel}@{self.offset} {self.data!r}>"


def _discard(_: bytes) -> None:
    """A listener collects in :meth:`Listener.frame_pushes`; nothing is written."""


class Listener(WireFormat):
    """A hub subscriber feeding an asyncio queue; its own wire format (see the feeds)."""

    __slots__ = ("_channel", "_closed", "_node", "_overflowed", "_queue", "wire", "writer")

    def __init__(self, node: Node, channel: str, maxsize: int) -> None:
        super().__init__("listener", envelope=False)
        self._node = node
        self._channel = channel
        self._queue: asyncio.Queue[Received] = asyncio.Queue(maxsize)
        self._overflowed = False
        self._closed = False
        self.wire: WireFormat = self
        self.writer: Writer = _discard

    async def open(self) -> None:
        await self._node.attach(self._channel, self)
        self._node.go_live(self._channel, self, join_leave=False, positioned=False, position=None)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._node.detach(self._channel, self)

    def frame(self, documents: Sequence[bytes]) -> bytes:
        raise NotImplementedError("a listener receives broadcasts only")

    def frame_pushes(self, pushes: Sequence[PreparedPush]) -> bytes:
        for push in pushes:
            body = push.body
            if isinstance(body, Publication) and not self._overflowed:
                try:
                    self._queue.put_nowait(Received(push.channel, body))
                except asyncio.QueueFull:
                    self._overflowed = True  # told to the reader at its next read
        return b""

    def insufficient_state(self, channel: str) -> None:
        """Not positioned: a listener never promised order across lost publications."""

    async def __aiter__(self) -> AsyncIterator[Received]:
        while True:
            if self._overflowed and self._queue.empty():
                raise ListenerOverflow(
                    f"the listener of {self._channel!r} fell more than "
                    f"{self._queue.maxsize} publications behind"
                )
            yield await self._queue.get()

    async def next(self, timeout: float | None = None) -> Received:
        """The next publication (``TimeoutError`` after ``timeout`` seconds)."""
        if self._overflowed and self._queue.empty():
            raise ListenerOverflow(f"the listener of {self._channel!r} fell behind")
        async with asyncio.timeout(timeout):
            return await self._queue.get()

    def pending(self) -> int:
        """Publications received and not read yet."""
        return self._queue.qsize()
