"""Plain SSE for clients without an SDK: ``GET /events?channel=a&channel=b``.

Each publication is one event whose ``data:`` is
``{"channel": ..., "offset": ..., "data": ...}`` and whose ``id:`` is the
cursor (:mod:`tidings.protocol.cursor`) of every channel of the stream after
that publication. A browser ``EventSource`` that reconnects sends the last id
as ``Last-Event-ID`` and gets exactly what it missed, or an ``event: resync``
when history no longer reaches.

Shared bytes, as on every other transport. Clients asking for the same set of
channels share one :class:`EventsFeed`: the feed is the hub subscriber (one per
channel of the set, positioned, so the hub keeps its order), it turns each
batch into SSE events once, ids included, and writes the same bytes object to
every live member. The ids can be shared because every live member of a feed
has received exactly the feed's events since it joined, so its position in
every channel *is* the feed's position.

Joining (rules of the state machine, per member)::

    PENDING  --catch-up written, position == feed's--> LIVE --end--> gone
       |     --position ahead of the feed (broker ahead)--> CATCHING --equal--> LIVE
       '--gap or stale epoch--> end of stream (the browser resumes with its last id)

* PENDING: the member is registered before any history read, so every feed
  event from then on is buffered for it; the catch-up (history since its
  cursor, per channel) is written with its own ids; the buffer is then
  replayed, skipping what the catch-up covered (by offset).
* CATCHING: the catch-up went further than the feed has seen (a networked
  broker's history is ahead of its pub/sub); feed events up to the member's
  position are skipped, later ones written with the member's ids, until the
  two positions meet.
* LIVE: the member receives the feed's shared frames.

A feed whose channel loses publications (the hub reports insufficient state)
ends every member's stream: each browser reconnects with its own last id and
recovers from history, and a fresh feed takes over. The feed keeps no client
state that is not also in the ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import msgspec

from tidings.protocol.codec import PreparedPush
from tidings.protocol.cursor import encode_cursor, encode_entry
from tidings.protocol.maps import MapPublication
from tidings.protocol.messages import Publication, StreamPosition
from tidings.protocol.wire import END_CHUNK, WireFormat, Writer, chunk
from tidings.server.feeds import maps

if TYPE_CHECKING:
    from tidings.node import Node
    from tidings.server.exchange import ResponseStream

log = logging.getLogger("tidings.events")

HEARTBEAT = chunk(b": ping\n\n")
"""An SSE comment: ignored by clients, keeps proxies from closing an idle stream."""

_encode = msgspec.json.encode


def publication_json(channel_json: bytes, offset: int, data: bytes) -> bytes:
    """``{"channel":..,"offset":..,"data":..}``: one publication for plain-HTTP clients."""
    return b'{"channel":%b,"offset":%d,"data":%b}' % (channel_json, offset, data)


def publications_of(pushes: Sequence[PreparedPush]) -> Iterable[tuple[str, int, bytes]]:
    """``(channel, offset, data)`` of each publication in a hub batch: read from the
    prepared pushes' fields, never by decoding the JSON the hub framed."""
    for push in pushes:
        body = push.body
        if isinstance(body, Publication):
            yield push.channel, body.offset, bytes(body.data)


def payloads_of(
    pushes: Sequence[PreparedPush], channel_json: Callable[[str], bytes]
) -> Iterable[tuple[str, int, bytes]]:
    """``(channel, offset, payload)`` of each publication or map change in a hub batch,
    rendered for plain-HTTP clients from the prepared pushes' fields."""
    for push in pushes:
        body = push.body
        if isinstance(body, Publication):
            yield (
                push.channel,
                body.offset,
                publication_json(channel_json(push.channel), body.offset, bytes(body.data)),
            )
        elif isinstance(body, MapPublication):
            yield push.channel, body.offset, maps.change_json(channel_json(push.channel), body)


def sse_event(event_id: bytes, payload: bytes, kind: bytes = b"") -> bytes:
    event = b"event: " + kind + b"\n" if kind else b""
    return event + b"id: " + event_id + b"\ndata: " + payload + b"\n\n"


class FeedEvent:
    """One publication as a feed saw it; ``position`` is None on channels without history."""

    __slots__ = ("channel", "payload", "position")

    def __init__(self, channel: str, position: StreamPosition | None, payload: bytes) -> None:
        self.channel = channel
        self.position = position
        self.payload = payload


# --------------------------------------------------------------------------- members


PENDING, CATCHING, LIVE, ENDED = "pending", "catching", "live", "ended"


class EventsMember:
    """One ``/events`` response. Its ``write`` is the socket's (frames come pre-chunked)."""

    __slots__ = ("buffer", "expiry", "feed", "positions", "state", "stream", "write")

    def __init__(self, stream: ResponseStream) -> None:
        self.stream = stream
        self.write: Writer = stream.write
        self.feed: EventsFeed | None = None
        self.state = PENDING
        self.positions: dict[str, StreamPosition] = {}
        self.buffer: list[FeedEvent] | None = []
        self.expiry: asyncio.TimerHandle | None = None

    def cursor(self) -> bytes:
        return encode_cursor(self.positions).encode()

    def end(self) -> None:
        """Finish the response; the browser reconnects with its last event id."""
        if self.state == ENDED:
            return
        self.state = ENDED
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if not self.stream.closed:
            self.stream.write(END_CHUNK)
            self.stream.end()

    def apply(self, events: Iterable[FeedEvent]) -> bool:
        """Write the events this member has not seen, with its own ids. False on a gap."""
        parts = []
        positions = self.positions
        for event in events:
            position = event.position
            if position is None:
                parts.append(sse_event(self.cursor(), event.payload))
                continue
            current = positions.get(event.channel)
            if current is not None and current.epoch == position.epoch:
                if position.offset <= current.offset:
                    continue
                if position.offset != current.offset + 1:
                    self._write(parts)
                    return False
            elif current is not None:
                self._write(parts)
                return False
            positions[event.channel] = position
            parts.append(sse_event(self.cursor(), event.payload))
        self._write(parts)
        return True

    def _write(self, parts: list[bytes]) -> None:
        if parts and not self.stream.closed:
            self.write(chunk(b"".join(parts)))


# --------------------------------------------------------------------------- feeds


class EventsFeed(WireFormat):
    """The ordered event stream of one set of channels, shared by its members.

    A feed is the hub's subscriber for its channels and its own wire format:
    the hub frames each batch once for it (:meth:`frame_pushes`, which builds
    the SSE events and advances the feed's cursor) and hands the bytes to its
    writer, which writes them to every live member.
    """

    __slots__ = (
        "_batch",
        "_channel_json",
        "_entries",
        "_fail_handle",
        "_order",
        "channels",
        "cursor",
        "history_channels",
        "live",
        "map_channels",
        "node",
        "on_gone",
        "pending",
        "positions",
        "ready",
        "wire",
        "writer",
    )

    def __init__(
        self,
        node: Node,
        channels: frozenset[str],
        history_channels: frozenset[str],
        on_gone: Callable[[EventsFeed], None],
    ) -> None:
        super().__init__("events-feed", envelope=False)
        self.node = node
        self.channels = channels
        self.history_channels = history_channels
        self.on_gone = on_gone
        self.wire: WireFormat = self
        self.writer: Writer = self._deliver
        self._batch: list[FeedEvent] = []
        self.positions: dict[str, StreamPosition] = {}
        self._order = sorted(history_channels)
        self._entries: dict[str, str] = {}
        self._channel_json = {channel: _encode(channel) for channel in channels}
        self.map_channels = frozenset(c for c in channels if node.maps.is_map(c))
        """Channels that start with a snapshot (docs/transports.md, "Map channels")."""
        self.cursor = b""
        self.live: dict[EventsMember, Writer] = {}
        self.pending: set[EventsMember] = set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fail_handle: asyncio.Handle | None = None

    def __repr__(self) -> str:
        return f"<EventsFeed {sorted(self.channels)} live={len(self.live)}>"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Subscribe every channel in the hub at the stream's current top."""
        node = self.node
        attached: list[str] = []
        try:
            for channel in sorted(self.channels):
                await node.attach(channel, self)
                attached.append(channel)
            tops = {
                channel: await (
                    node.maps.top(channel)
                    if channel in self.map_channels
                    else node.stream_top(channel)
                )
                for channel in self._order
            }
            for channel, top in tops.items():
                self._set_position(channel, top)
            for channel in attached:
                node.go_live(
                    channel,
                    self,
                    join_leave=False,
                    positioned=channel in tops,
                    position=tops.get(channel),
                )
        except BaseException as exc:
            for channel in attached:
                node.detach(channel, self)
            if not self.ready.done():
                self.ready.set_exception(exc)
                self.ready.exception()  # retrieved here; joiners re-raise it
            self.on_gone(self)
            raise
        self.ready.set_result(None)

    def _release(self) -> None:
        for channel in self.channels:
            self.node.detach(channel, self)
        self.on_gone(self)

    def remove(self, member: EventsMember) -> None:
        """A member's stream ended. The last one takes the feed with it."""
        self.live.pop(member, None)
        self.pending.discard(member)
        if not self.live and not self.pending and self.ready.done():
            self._release()

    def insufficient_state(self, channel: str) -> None:
        """The hub saw publications lost in ``channel``: every member resumes from history."""
        log.info("events feed %s lost publications in %r: members resume", self, channel)
        self.fail()

    def fail(self) -> None:
        if self._fail_handle is None:  # never tear down in the middle of a hub fan-out
            self._fail_handle = asyncio.get_running_loop().call_soon(self._fail_now)

    def _fail_now(self) -> None:
        if self._fail_handle is not None:
            self._fail_handle.cancel()
        self._fail_handle = None
        members = [*self.live, *self.pending]
        self.live.clear()
        self.pending.clear()
        self._release()
        for member in members:
            member.end()

    def close(self) -> None:
        """Server shutdown: end every member's stream."""
        self._fail_now()

    # ------------------------------------------------------------------ positions

    def _set_position(self, channel: str, position: StreamPosition) -> None:
        self.positions[channel] = position
        self._entries[channel] = encode_entry(channel, position)
        entries = self._entries
        self.cursor = ",".join(entries[name] for name in self._order if name in entries).encode()

    def channel_json(self, channel: str) -> bytes:
        return self._channel_json[channel]

    # ------------------------------------------------------------------ fan-out

    def frame(self, documents: Sequence[bytes]) -> bytes:
        raise NotImplementedError("a feed receives broadcasts only")

    def frame_pushes(self, pushes: Sequence[PreparedPush]) -> bytes:
        """A batch from the hub: the SSE events, ids included, built once for every member.

        The hub calls this exactly once per batch of each channel (the feed is the
        only subscriber of its wire), so advancing the feed's cursor here is safe.
        """
        events: list[FeedEvent] = []
        parts: list[bytes] = []
        positions = self.positions
        for channel, offset, payload in payloads_of(pushes, self.channel_json):
            position: StreamPosition | None = None
            current = positions.get(channel)
            if current is not None:
                if offset <= current.offset:
                    continue
                if offset != current.offset + 1:
                    self.fail()
                    break
                position = StreamPosition(offset, current.epoch)
                self._set_position(channel, position)
            events.append(FeedEvent(channel, position, payload))
            parts.append(sse_event(self.cursor, payload))
        self._batch = events
        return chunk(b"".join(parts)) if parts else b""

    def _deliver(self, shared: bytes) -> None:
        """Write the batch :meth:`frame_pushes` built to every live member; members still
        catching up take the events themselves."""
        events, self._batch = self._batch, []
        if not events:
            return
        for write in list(self.live.values()):
            write(shared)
        for member in list(self.pending):
            if member.buffer is not None:
                member.buffer.extend(events)
            elif not member.apply(events):
                self._drop(member)
            else:
                self._promote(member)

    # ------------------------------------------------------------------ joining

    async def join(self, member: EventsMember, cursor: dict[str, StreamPosition]) -> None:
        """Catch ``member`` up from ``cursor`` (history, or ``event: resync``), then go live."""
        member.feed = self
        member.buffer = []
        self.pending.add(member)
        node = self.node
        catch_up: list[tuple[str, list[Publication], StreamPosition]] = []
        resync: list[tuple[str, StreamPosition]] = []
        start: dict[str, StreamPosition] = {}
        snapshots: list[tuple[str, bytes, StreamPosition | None]] = []
        map_changes: list[FeedEvent] = []
        for channel in sorted(self.map_channels):
            channel_json = self._channel_json[channel]
            resume = await maps.catch_up(node, channel, channel_json, cursor.get(channel))
            if resume.position is not None:
                start[channel] = resume.position
            if resume.snapshot is not None:
                snapshots.append((channel, resume.snapshot, resume.position))
                continue
            epoch = resume.position.epoch if resume.position is not None else ""
            map_changes += [
                FeedEvent(
                    channel,
                    StreamPosition(change.offset, epoch),
                    maps.entry_change_json(channel_json, change),
                )
                for change in resume.changes
            ]
            since = cursor.get(channel)
            if since is not None:  # the changes apply from the client's own position
                start[channel] = StreamPosition(since.offset, epoch)
        for channel in self._order:
            if channel in self.map_channels:
                continue
            since = cursor.get(channel)
            if since is not None:
                publications, top, recovered = await node.recover(channel, since)
                if recovered:
                    start[channel] = StreamPosition(since.offset, top.epoch)
                    catch_up.append((channel, publications, top))
                    continue
                start[channel] = since
                resync.append((channel, top))
            else:
                start[channel] = await node.stream_top(channel)
        if member.state == ENDED:
            self.remove(member)
            return
        # From here on everything is synchronous: no feed event can slip in between.
        member.positions = start
        parts: list[bytes] = [b"id: " + member.cursor() + b"\n\n"]
        for channel, top in resync:
            member.positions[channel] = top
            body = b'{"channel":%b,"epoch":%b,"offset":%d}' % (
                self._channel_json[channel],
                _encode(top.epoch),
                top.offset,
            )
            parts.append(sse_event(member.cursor(), body, b"resync"))
        for channel, snapshot, position in snapshots:
            if position is not None:
                member.positions[channel] = position
            parts.append(sse_event(member.cursor(), snapshot, b"snapshot"))
        member._write(parts)
        events = map_changes + [
            FeedEvent(
                channel,
                StreamPosition(publication.offset, top.epoch),
                publication_json(
                    self._channel_json[channel], publication.offset, bytes(publication.data)
                ),
            )
            for channel, publications, top in catch_up
            for publication in publications
        ]
        buffered = member.buffer or []
        member.buffer = None
        member.state = CATCHING
        if not member.apply(events) or not member.apply(buffered):
            self._drop(member)
            return
        self._promote(member)

    def _promote(self, member: EventsMember) -> None:
        """Go live once the member stands exactly where the feed stands."""
        mine, feeds = member.positions, self.positions
        for channel in self._order:
            if mine[channel].epoch != feeds[channel].epoch:
                # The feed never saw this stream's new epoch: it is stale. Start over.
                self.fail()
                return
            if mine[channel].offset < feeds[channel].offset:
                self._drop(member)  # cannot happen with an ordered hub; resume from history
                return
            if mine[channel].offset > feeds[channel].offset:
                return  # the broker's history is ahead of its pub/sub: keep catching up
        self.pending.discard(member)
        member.state = LIVE
        self.live[member] = member.write

    def _drop(self, member: EventsMember) -> None:
        self.pending.discard(member)
        self.live.pop(member, None)
        member.end()


class EventsFeeds:
    """Every feed of a node, by channel set. Owned by the server's transport routes."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.feeds: dict[frozenset[str], EventsFeed] = {}

    async def feed(self, channels: frozenset[str], history_channels: frozenset[str]) -> EventsFeed:
        """The running feed for ``channels``, started on first use."""
        feed = self.feeds.get(channels)
        if feed is None:
            feed = self.feeds[channels] = EventsFeed(
                self.node, channels, history_channels, self._gone
            )
            self.node.spawn(self._start(feed))
        await asyncio.shield(feed.ready)
        return feed

    async def _start(self, feed: EventsFeed) -> None:
        try:
            await feed.start()
        except Exception as exc:
            log.warning("events feed for %s failed to start: %s", sorted(feed.channels), exc)

    def _gone(self, feed: EventsFeed) -> None:
        if self.feeds.get(feed.channels) is feed:
            del self.feeds[feed.channels]

    def members(self) -> list[EventsMember]:
        return [member for feed in self.feeds.values() for member in (*feed.live, *feed.pending)]

    def heartbeat(self) -> None:
        for member in self.members():
            if not member.stream.closed:
                member.write(HEARTBEAT)

    def close(self) -> None:
        for feed in list(self.feeds.values()):
            feed.close()
