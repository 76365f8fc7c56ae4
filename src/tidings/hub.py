"""Node-local registry of subscribers and the fan-out of prepared bytes.

The hot path: a publication arrives from the broker already encoded once
(:class:`PreparedPush`). The hub appends it to its channel's batch and, at
the end of the event-loop turn (or after ``coalesce_delay``), frames the batch
once per wire format and writes **the same bytes object** to every
subscriber's ``write``. Per recipient that is one dict step and one call: no
encoding, no framing, no coroutine. Publications that arrive in one burst go
out as one frame and one write per recipient (the protocol allows several
documents per frame), which cuts system calls under load without delaying a
lone publication.

Ordering rules kept here:

* A subscriber whose subscribe is in progress is *pending*: pushes for its
  channel are buffered for it. When the subscribe reply is out, the buffer is
  merged with what the reply already carried (deduplicated by offset), so a
  publication racing a subscribe is neither lost nor duplicated.
* Offsets of a channel with history must grow by one within an epoch. An
  older or repeated offset is dropped; a gap or an epoch change means
  publications were lost between broker and node, and every positioned
  subscriber is told so (insufficient state) to recover.

The hub knows nothing of brokers, sessions or feeds: it talks to the
:class:`Subscriber` interface, which both implement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Protocol

from tidings.protocol.codec import PreparedPush
from tidings.protocol.messages import StreamPosition
from tidings.protocol.wire import WireFormat, Writer

if TYPE_CHECKING:
    from tidings.metrics import FanOutMeter


class Subscriber(Hashable, Protocol):
    """What the hub needs of a subscriber: a client session, or a plain-HTTP feed.

    ``wire`` frames the batches it receives (subscribers of one wire format
    share the framed bytes); ``writer`` is where they go (the hub may swap it
    with :meth:`Hub.set_writer` while the subscriber is slow). The position it
    has seen is the hub's to track, from the subscribe's ``complete_subscribe``
    on; when that position can no longer be trusted the hub calls
    ``insufficient_state`` and forgets nothing itself: the subscriber decides
    (a session makes its client recover, a feed ends its streams).
    """

    wire: WireFormat
    writer: Writer

    def insufficient_state(self, channel: str) -> None: ...


_Group = dict[WireFormat, dict[Subscriber, Writer]]


class _Pending:
    """A subscribe in progress (``buffer``) or waiting for the stream to pass ``position``."""

    __slots__ = ("buffer", "join_leave", "position", "positioned")

    def __init__(self) -> None:
        self.buffer: list[tuple[PreparedPush, bool]] | None = []
        self.position: StreamPosition | None = None
        self.join_leave = False
        self.positioned = False


class _Channel:
    __slots__ = (
        "batch",
        "batch_bytes",
        "batch_join_leave",
        "epoch",
        "join_leave",
        "last_offset",
        "name",
        "pending",
        "plain",
        "positioned",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.plain: _Group = {}
        self.join_leave: _Group = {}
        self.pending: dict[Subscriber, _Pending] = {}
        self.positioned: set[Subscriber] = set()
        self.batch: list[tuple[PreparedPush, bool]] = []
        self.batch_bytes = 0
        self.batch_join_leave = False
        self.last_offset = -1
        self.epoch = ""

    def is_empty(self) -> bool:
        return not (self.pending or any(self.plain.values()) or any(self.join_leave.values()))

    def count(self) -> int:
        """Subscribers whose subscribe reply is out: live ones and those waiting to go live."""
        waiting = sum(1 for pending in self.pending.values() if pending.buffer is None)
        live = sum(map(len, self.plain.values())) + sum(map(len, self.join_leave.values()))
        return live + waiting


class Hub:
    """Channel -> subscribers, grouped by wire format, with batched fan-out."""

    def __init__(
        self,
        *,
        coalesce_delay: float = 0.0,
        coalesce_max_bytes: int = 64 * 1024,
        meter: FanOutMeter | None = None,
    ) -> None:
        self._meter = meter
        """Told once per batch and wire format what was written (metrics); never per recipient."""
        self._channels: dict[str, _Channel] = {}
        self._dirty: list[_Channel] = []
        self._flush_handle: asyncio.Handle | None = None
        self._last_flush = float("-inf")
        self._coalesce_delay = coalesce_delay
        self._coalesce_max_bytes = coalesce_max_bytes

    # ------------------------------------------------------------------ registry

    def __contains__(self, channel: str) -> bool:
        return channel in self._channels

    def channels(self) -> Iterator[tuple[str, int]]:
        """``(channel, number of local subscribers)`` for every channel with one."""
        for name, channel in self._channels.items():
            count = channel.count()
            if count:
                yield name, count

    def num_channels(self) -> int:
        return len(self._channels)

    def begin_subscribe(self, channel: str, subscriber: Subscriber) -> bool:
        """Start buffering pushes for a subscribe in progress.

        Returns ``True`` when the channel had no local subscriber before, so the
        node must subscribe to it in the broker.
        """
        state = self._channels.get(channel)
        created = state is None
        if state is None:
            state = self._channels[channel] = _Channel(channel)
        state.pending[subscriber] = _Pending()
        return created

    def complete_subscribe(
        self,
        channel: str,
        subscriber: Subscriber,
        *,
        join_leave: bool,
        positioned: bool,
        position: StreamPosition | None,
    ) -> None:
        """The subscribe reply is out: replay what was buffered, then go live.

        ``position`` is the stream position the reply gave the client (with
        the publications it carried already applied). Buffered publications at
        or below it are dropped; later ones are written now. When the node has
        not yet seen the stream reach ``position`` (another node's publication
        may still be on its way), the subscriber waits, skipping offsets up to
        ``position``, and goes live with the first newer one.
        """
        state = self._channels.get(channel)
        if state is None:
            return
        pending = state.pending.get(subscriber)
        if pending is None:
            return
        # Pushes batched before now were offered to this subscriber's buffer:
        # flush them to everyone else first, so going live cannot repeat them.
        if state.batch:
            self._flush_channel(state)
        buffered = pending.buffer or []
        pending.buffer = None
        pending.join_leave = join_leave
        pending.positioned = positioned
        pending.position = position
        documents: list[PreparedPush] = []
        for push, is_join_leave in buffered:
            if is_join_leave:
                if join_leave:
                    documents.append(push)
                continue
            verdict = self._advance(pending, push)
            if verdict is None:
                continue
            if verdict is False:
                del state.pending[subscriber]
                subscriber.insufficient_state(channel)
                return
            documents.append(push)
        if documents:
            frame = subscriber.wire.frame_pushes(documents)
            subscriber.writer(frame)
            if self._meter is not None:
                self._meter.delivered(subscriber.wire, len(documents), 1, len(frame))
        position = pending.position
        if (
            position is None
            or not position.epoch
            or (state.epoch == position.epoch and state.last_offset >= position.offset)
        ):
            del state.pending[subscriber]
            self._go_live(state, subscriber, join_leave=join_leave, positioned=positioned)

    @staticmethod
    def _advance(pending: _Pending, push: PreparedPush) -> bool | None:
        """Check a publication against a pending subscriber's position.

        ``None``: already seen, skip. ``True``: next in order, deliver.
        ``False``: epoch changed or offsets jumped: insufficient state.
        """
        position = pending.position
        if position is None or not push.offset:
            return True
        if push.epoch != position.epoch:
            return False
        if push.offset <= position.offset:
            return None
        if push.offset != position.offset + 1 and position.offset:
            return False
        pending.position = StreamPosition(push.offset, push.epoch)
        return True

    def _go_live(
        self, state: _Channel, subscriber: Subscriber, *, join_leave: bool, positioned: bool
    ) -> None:
        group = state.join_leave if join_leave else state.plain
        members = group.get(subscriber.wire)
        if members is None:
            members = group[subscriber.wire] = {}
        members[subscriber] = subscriber.writer
        if positioned:
            state.positioned.add(subscriber)

    def remove(self, channel: str, subscriber: Subscriber) -> bool:
        """Forget a subscriber (live or pending). ``True`` when the channel is now empty."""
        state = self._channels.get(channel)
        if state is None:
            return False
        state.pending.pop(subscriber, None)
        state.positioned.discard(subscriber)
        wire = subscriber.wire
        for group in (state.plain, state.join_leave):
            members = group.get(wire)
            if members is not None and members.pop(subscriber, None) is not None and not members:
                del group[wire]
        if state.is_empty():
            if state.batch:
                state.batch = []
            del self._channels[channel]
            return True
        return False

    def positioned_subscribers(self, channel: str) -> list[Subscriber]:
        """Live and pending subscribers of ``channel`` that were promised order."""
        state = self._channels.get(channel)
        if state is None:
            return []
        pending = [s for s, p in state.pending.items() if p.positioned or p.buffer is not None]
        return [*state.positioned, *pending]

    def set_writer(self, channel: str, subscriber: Subscriber, writer: Writer) -> None:
        """Swap the writer of a live subscriber (the session does it when a client is slow)."""
        state = self._channels.get(channel)
        if state is None:
            return
        for group in (state.plain, state.join_leave):
            members = group.get(subscriber.wire)
            if members is not None and subscriber in members:
                members[subscriber] = writer

    # ------------------------------------------------------------------ fan-out

    def broadcast_publication(self, channel: str, push: PreparedPush) -> None:
        """Queue a publication for every local subscriber of ``channel``."""
        state = self._channels.get(channel)
        if state is None:
            return
        offset = push.offset
        if offset:
            if state.last_offset >= 0 and push.epoch == state.epoch:
                if offset <= state.last_offset:
                    return
                if offset != state.last_offset + 1:
                    self._lost_publications(state)
            elif state.epoch and push.epoch != state.epoch:
                self._lost_publications(state)
            state.last_offset = offset
            state.epoch = push.epoch
        if state.pending:
            self._offer_to_pending(state, push, False)
        self._enqueue(state, push, False)

    def broadcast_join_leave(self, channel: str, push: PreparedPush) -> None:
        """Queue a join or leave push for subscribers that asked for them."""
        state = self._channels.get(channel)
        if state is None:
            return
        if state.pending:
            self._offer_to_pending(state, push, True)
        if state.join_leave:
            self._enqueue(state, push, True)

    def _lost_publications(self, state: _Channel) -> None:
        for subscriber in list(state.positioned):
            subscriber.insufficient_state(state.name)

    def _offer_to_pending(self, state: _Channel, push: PreparedPush, is_join_leave: bool) -> None:
        insufficient: list[Subscriber] = []
        for subscriber, pending in list(state.pending.items()):
            if pending.buffer is not None:
                pending.buffer.append((push, is_join_leave))
                continue
            if is_join_leave:
                if pending.join_leave:
                    frame = subscriber.wire.frame_pushes([push])
                    subscriber.writer(frame)
                    if self._meter is not None:
                        self._meter.delivered(subscriber.wire, 1, 1, len(frame))
                continue
            verdict = self._advance(pending, push)
            if verdict is None:
                continue
            del state.pending[subscriber]
            if verdict is False:
                insufficient.append(subscriber)
            else:
                # Batched pushes predate this one and were skipped for this
                # subscriber: write them to the others before it goes live.
                if state.batch:
                    self._flush_channel(state)
                self._go_live(
                    state,
                    subscriber,
                    join_leave=pending.join_leave,
                    positioned=pending.positioned,
                )
        for subscriber in insufficient:
            subscriber.insufficient_state(state.name)

    def _enqueue(self, state: _Channel, push: PreparedPush, is_join_leave: bool) -> None:
        if not state.batch:
            self._dirty.append(state)
        state.batch.append((push, is_join_leave))
        state.batch_join_leave |= is_join_leave
        state.batch_bytes += len(push.envelope)
        if state.batch_bytes >= self._coalesce_max_bytes:
            self._flush_channel(state)
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            delay = self._coalesce_delay
            if delay > 0 and loop.time() - self._last_flush < delay:
                # Flushes are back to back: traffic is heavy, so gather for a while and
                # write once per subscriber for the whole burst.
                self._flush_handle = loop.call_later(delay, self.flush)
            else:
                # Idle until now: out in this same loop turn, no added latency.
                self._flush_handle = loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every queued batch. Runs once per loop turn while traffic flows."""
        self._flush_handle = None
        dirty = self._dirty
        self._dirty = []
        for state in dirty:
            if state.batch:
                self._flush_channel(state)
        self._last_flush = asyncio.get_running_loop().time()

    def _flush_channel(self, state: _Channel) -> None:
        batch = state.batch
        state.batch = []
        state.batch_bytes = 0
        has_join_leave = state.batch_join_leave
        state.batch_join_leave = False
        everything = [push for push, _ in batch]
        publications = (
            [push for push, is_join_leave in batch if not is_join_leave]
            if has_join_leave
            else everything
        )
        frames: dict[WireFormat, bytes] = {}
        meter = self._meter
        if publications:
            for wire, members in state.plain.items():
                data = frames[wire] = wire.frame_pushes(publications)
                if meter is not None:  # once per wire group: a len, never per recipient
                    meter.delivered(wire, len(publications), len(members), len(data))
                _write_all(members, data)
        for wire, members in state.join_leave.items():
            shared = frames.get(wire) if not has_join_leave else None
            data = shared if shared is not None else wire.frame_pushes(everything)
            if meter is not None:
                pushes = len(everything) if shared is None else len(publications)
                meter.delivered(wire, pushes, len(members), len(data))
            _write_all(members, data)
        if meter is not None:
            meter.flushed(len(batch))


def _write_all(members: dict[Subscriber, Writer], data: bytes) -> None:
    """The per-recipient loop: one call per subscriber, same bytes for all."""
    for write in list(members.values()):
        write(data)
