"""HTTP long polling for clients that only have ``fetch()``: ``GET /longpoll``.

No per-client state lives in the process between requests: the cursor the
client sends back (:mod:`tidings.protocol.cursor`) plus the history in the
broker are the whole state, so any node can answer any request (with the Redis
broker: no sticky sessions).

One request, as a state machine::

    REGISTERED --history has publications (or cannot reach)--> ANSWERED
        '--nothing new--> WAITING --publication--> ANSWERED (next loop turn)
                             |--timeout-----------> ANSWERED (empty list)
                             '--client gone-------> DROPPED

The waiter is registered in the hub *before* the history is read, as a
pending subscriber, so a publication racing the read is buffered by the hub
and merged by offset (the same rule a subscribe follows): nothing is lost and
nothing repeated. It holds a hub subscription only for the lifetime of one
request; it is removed on answer, timeout or disconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from tidings.protocol.codec import PreparedPush
from tidings.protocol.cursor import encode_cursor
from tidings.protocol.messages import StreamPosition
from tidings.protocol.wire import WireFormat, Writer
from tidings.server.feeds import maps
from tidings.server.feeds.events import payloads_of, publication_json

if TYPE_CHECKING:
    from tidings.node import Node

_encode = msgspec.json.encode


def _ignore(_: bytes) -> None:
    """A waiter collects in :meth:`LongPollWaiter.frame_pushes`; nothing is written."""


class LongPollWaiter(WireFormat):
    """One ``GET /longpoll`` request's hub subscription and what it collected.

    It is its own wire format: the hub hands it each batch once
    (:meth:`frame_pushes`), and it keeps the publications for its answer.
    """

    __slots__ = (
        "_answer_handle",
        "channels",
        "done",
        "node",
        "positions",
        "publications",
        "resync",
        "snapshots",
        "wire",
        "writer",
    )

    def __init__(self, node: Node, channels: list[str]) -> None:
        super().__init__("longpoll", envelope=False)
        self.node = node
        self.channels = channels
        self.wire: WireFormat = self
        self.writer: Writer = _ignore
        self.positions: dict[str, StreamPosition] = {}
        self.publications: list[bytes] = []
        self.resync: list[str] = []
        self.snapshots: list[bytes] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._answer_handle: asyncio.Handle | None = None

    async def register(self) -> None:
        """Join the hub as a pending subscriber of every channel (pushes are buffered)."""
        attached: list[str] = []
        try:
            for channel in self.channels:
                await self.node.attach(channel, self)
                attached.append(channel)
        except BaseException:
            for channel in attached:
                self.node.detach(channel, self)
            raise

    def release(self) -> None:
        """Leave the hub: answered, timed out or the client went away."""
        if self._answer_handle is not None:
            self._answer_handle.cancel()
            self._answer_handle = None
        for channel in self.channels:
            self.node.detach(channel, self)

    def finish(self) -> None:
        """Stop waiting now (the client left, or the server stops): answer what there is."""
        if not self.done.done():
            self.done.set_result(None)

    async def read_history(self, cursor: dict[str, StreamPosition]) -> None:
        """Publications since the cursor; positions from now for channels it does not name."""
        node = self.node
        for channel in self.channels:
            since = cursor.get(channel)
            channel_json = _encode(channel)
            if node.maps.is_map(channel):  # a snapshot, or the changes since (section 14)
                resume = await maps.catch_up(node, channel, channel_json, since)
                assert resume.position is not None  # /longpoll takes maps that keep changes
                self.positions[channel] = resume.position
                if resume.snapshot is not None:
                    self.snapshots.append(resume.snapshot)
                for change in resume.changes:
                    self.publications.append(maps.entry_change_json(channel_json, change))
                continue
            if since is None:
                self.positions[channel] = await node.stream_top(channel)
                continue
            publications, top, recovered = await node.recover(channel, since)
            if not recovered:
                self.resync.append(channel)
                self.positions[channel] = top
                continue
            position = StreamPosition(since.offset, top.epoch)
            for publication in publications:
                self.publications.append(
                    publication_json(channel_json, publication.offset, bytes(publication.data))
                )
                position = StreamPosition(publication.offset, top.epoch)
            self.positions[channel] = position

    @property
    def has_answer(self) -> bool:
        return bool(self.publications or self.resync or self.snapshots)

    def wait_live(self) -> None:
        """Nothing to answer yet: go live in the hub from the positions just read."""
        for channel in self.channels:
            self.node.go_live(
                channel,
                self,
                join_leave=False,
                positioned=True,
                position=self.positions[channel],
            )

    def frame(self, documents: Sequence[bytes]) -> bytes:
        raise NotImplementedError("a long-poll waiter receives broadcasts only")

    def frame_pushes(self, pushes: Sequence[PreparedPush]) -> bytes:
        """A batch from the hub: keep the publications after the waiter's positions."""
        for channel, offset, payload in payloads_of(pushes, _encode):
            current = self.positions.get(channel)
            if current is None or offset <= current.offset:
                continue
            if offset != current.offset + 1:
                # Lost between broker and node: answer now; the next request reads history.
                self._answer_soon()
                return b""
            self.publications.append(payload)
            self.positions[channel] = StreamPosition(offset, current.epoch)
        if self.publications:
            self._answer_soon()
        return b""

    def insufficient_state(self, channel: str) -> None:
        """The hub lost publications of ``channel``: answer with what is known to be whole."""
        self._answer_soon()

    def _answer_soon(self) -> None:
        """Answer on the next loop turn, so a burst across channels leaves in one response."""
        if self._answer_handle is None and not self.done.done():
            self._answer_handle = asyncio.get_running_loop().call_soon(self._answer)

    def _answer(self) -> None:
        self._answer_handle = None
        self.finish()

    def body(self) -> bytes:
        """``{"publications":[..],"cursor":".."}``, plus ``"resync":[..]`` if history fell
        short and ``"snapshots":[..]`` for map channels that start (again) from their state."""
        cursor = _encode(encode_cursor(self.positions))
        body = b'{"publications":[' + b",".join(self.publications) + b'],"cursor":' + cursor
        if self.resync:
            body += b',"resync":' + _encode(self.resync)
        if self.snapshots:
            body += b',"snapshots":[' + b",".join(self.snapshots) + b"]"
        return body + b"}"
