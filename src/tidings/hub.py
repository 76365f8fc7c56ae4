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

Two kinds of subscriber do not share the plain frames, and still cost no
per-recipient encoding:

* **Delta subscribers** (docs/protocol.md, "Delta compression") are grouped
  under a variant of their wire format (:meth:`WireFormat.for_delta`), so the
  delta of each publication against the previous one is made once per channel
  and its frame once per batch, like any wire format's. The hub hands each
  publication the payload of the previous one (``PreparedPush.base``) only when
  it saw the stream's previous offset itself; otherwise the publication goes out
  whole. A delta subscriber that holds no previous publication yet (it just went
  live, or conflation made it skip some) gets its next batch in the "start"
  variant (the first publication whole, the rest deltas), then moves to the
  "deltas" variant; conflated drains are "strings" (every publication whole).
  A map channel's changes are *per key* (docs/protocol.md section 14): each
  carries the previous value of its own key as its base, read by the map engine
  with the write, and a map subscriber holds every key's value from its subscribe
  reply on, so it joins the "deltas" variant at once (:attr:`_Channel.keyed`).
* **Conflated subscribers** (:meth:`Hub.conflate`) are not written publications
  at all: each has a :class:`~tidings.conflation.Conflator` that keeps the latest
  publication per key, drained when the subscriber's rate allows (a timer on the
  hub's clock) or when a slow one can take more (:meth:`Hub.release`). Memory per
  conflated subscriber is bounded by the number of keys.

The hub knows nothing of brokers, sessions or feeds: it talks to the
:class:`Subscriber` interface, which both implement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Protocol

from tidings.clock import Clock, LoopClock, Timer
from tidings.conflation import Conflator
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

    __slots__ = ("buffer", "conflator", "delta", "held", "join_leave", "position", "positioned")

    def __init__(self) -> None:
        self.buffer: list[tuple[PreparedPush, bool]] | None = []
        self.position: StreamPosition | None = None
        self.join_leave = False
        self.positioned = False
        self.delta = False
        self.conflator: Conflator[PreparedPush] | None = None
        self.held = False


class _Conflated:
    """A live subscriber whose publications go through a conflator instead of its writer.

    ``held``: its connection cannot take more now (nothing is drained until
    :meth:`Hub.release`).
    """

    __slots__ = ("conflator", "delta", "held", "join_leave")

    def __init__(
        self, conflator: Conflator[PreparedPush], *, join_leave: bool, delta: bool, held: bool
    ) -> None:
        self.conflator = conflator
        self.join_leave = join_leave
        self.delta = delta
        self.held = held


class _Channel:
    __slots__ = (
        "batch",
        "batch_bytes",
        "batch_join_leave",
        "conflated",
        "drain_timer",
        "epoch",
        "fresh",
        "join_leave",
        "keyed",
        "last_offset",
        "name",
        "pending",
        "plain",
        "positioned",
        "previous",
        "previous_offset",
        "variant",
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
        self.previous: PreparedPush | None = None
        """The last publication queued here (its payload is the base of the next delta)."""
        self.previous_offset = 0
        """Its offset (0: it had none, so no stream continuity can be vouched for)."""
        self.variant: dict[Subscriber, WireFormat] = {}
        """Delta subscribers' group keys (every other subscriber is grouped under its wire)."""
        self.fresh: set[Subscriber] = set()
        """Delta subscribers owed full payloads until their next batch of publications."""
        self.keyed = False
        """A map channel: delta chains are per key, and every delta subscriber holds the
        value of every key (no "start" variant, no ``fresh``)."""
        self.conflated: dict[Subscriber, _Conflated] = {}
        self.drain_timer: Timer | None = None

    def is_empty(self) -> bool:
        return not (
            self.pending
            or self.conflated
            or any(self.plain.values())
            or any(self.join_leave.values())
        )

    def count(self) -> int:
        """Subscribers whose subscribe reply is out: live ones and those waiting to go live."""
        waiting = sum(1 for pending in self.pending.values() if pending.buffer is None)
        live = sum(map(len, self.plain.values())) + sum(map(len, self.join_leave.values()))
        return live + waiting + len(self.conflated)

    def key_of(self, subscriber: Subscriber) -> WireFormat:
        """The group key a live subscriber is filed under."""
        return self.variant.get(subscriber) or subscriber.wire


class Hub:
    """Channel -> subscribers, grouped by wire format, with batched fan-out."""

    def __init__(
        self,
        *,
        coalesce_delay: float = 0.0,
        coalesce_max_bytes: int = 64 * 1024,
        clock: Clock | None = None,
        meter: FanOutMeter | None = None,
    ) -> None:
        self._clock: Clock = clock or LoopClock()
        """Timers of rate-limited conflated subscribers (their conflators read the same clock)."""
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
        delta: bool = False,
        keyed: bool = False,
        conflator: Conflator[PreparedPush] | None = None,
    ) -> None:
        """The subscribe reply is out: replay what was buffered, then go live.

        ``position`` is the stream position the reply gave the client (with
        the publications it carried already applied). Buffered publications at
        or below it are dropped; later ones are written now. When the node has
        not yet seen the stream reach ``position`` (another node's publication
        may still be on its way), the subscriber waits, skipping offsets up to
        ``position``, and goes live with the first newer one.

        ``delta``: the subscriber negotiated delta compression (its publications
        carry data as JSON strings, deltas once it holds the previous one).
        ``keyed``: a map subscription, whose reply gave it every key's value at
        ``position``: deltas against each key's previous value from the first
        publication on (the channel is then :attr:`_Channel.keyed`).
        ``conflator``: it asked for a rate; it goes live conflated (see
        :meth:`conflate`).
        """
        state = self._channels.get(channel)
        if state is None:
            return
        pending = state.pending.get(subscriber)
        if pending is None:
            return
        state.keyed = state.keyed or keyed
        # Pushes batched before now were offered to this subscriber's buffer:
        # flush them to everyone else first, so going live cannot repeat them.
        if state.batch:
            self._flush_channel(state)
        buffered = pending.buffer or []
        pending.buffer = None
        pending.join_leave = join_leave
        pending.positioned = positioned
        pending.position = position
        pending.delta = delta
        pending.conflator = conflator
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
        holds_previous = False
        if documents:
            wire = subscriber.wire
            if delta:
                wire = wire.for_delta("deltas" if state.keyed else "start")
            frame = wire.frame_pushes(documents)
            subscriber.writer(frame)
            if self._meter is not None:
                self._meter.delivered(subscriber.wire, len(documents), 1, len(frame))
            # The replay ended with the channel's last publication: deltas from the next on.
            holds_previous = documents[-1] is state.previous
        position = pending.position
        if (
            position is None
            or not position.epoch
            or (state.epoch == position.epoch and state.last_offset >= position.offset)
        ):
            del state.pending[subscriber]
            self._go_live(state, subscriber, pending, holds_previous=holds_previous)

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
        self,
        state: _Channel,
        subscriber: Subscriber,
        pending: _Pending,
        *,
        holds_previous: bool = False,
    ) -> None:
        if pending.positioned:
            state.positioned.add(subscriber)
        if pending.conflator is not None:
            state.conflated[subscriber] = _Conflated(
                pending.conflator,
                join_leave=pending.join_leave,
                delta=pending.delta,
                held=pending.held,
            )
            return
        self._join_group(
            state,
            subscriber,
            join_leave=pending.join_leave,
            delta=pending.delta,
            holds_previous=holds_previous,
        )

    @staticmethod
    def _join_group(
        state: _Channel,
        subscriber: Subscriber,
        *,
        join_leave: bool,
        delta: bool,
        holds_previous: bool = False,
    ) -> None:
        key = subscriber.wire
        if delta and (holds_previous or state.keyed):
            key = state.variant[subscriber] = key.for_delta("deltas")
        elif delta:  # a full payload first: the subscriber holds no previous publication yet
            key = state.variant[subscriber] = key.for_delta("start")
            state.fresh.add(subscriber)
        group = state.join_leave if join_leave else state.plain
        members = group.get(key)
        if members is None:
            members = group[key] = {}
        members[subscriber] = subscriber.writer

    @staticmethod
    def _leave_group(
        state: _Channel, subscriber: Subscriber, *, prune: bool = True
    ) -> tuple[bool, bool] | None:
        """Take a live subscriber out of its group: ``(join_leave, delta)``, or ``None``
        when it is in none (pending, conflated or gone).

        ``prune=False`` leaves an emptied group in place: a flush may be iterating
        the groups (a write that fills a connection conflates its subscriber), and
        the flush loops do not copy them (:meth:`_prune` runs after them).
        """
        key = state.key_of(subscriber)
        for group, join_leave in ((state.plain, False), (state.join_leave, True)):
            members = group.get(key)
            if members is not None and members.pop(subscriber, None) is not None:
                if prune and not members:
                    del group[key]
                delta = state.variant.pop(subscriber, None) is not None
                state.fresh.discard(subscriber)
                return join_leave, delta
        return None

    @staticmethod
    def _prune(state: _Channel) -> None:
        """Drop the groups conflation emptied."""
        for group in (state.plain, state.join_leave):
            for key in [key for key, members in group.items() if not members]:
                del group[key]

    def remove(self, channel: str, subscriber: Subscriber) -> bool:
        """Forget a subscriber (live or pending). ``True`` when the channel is now empty."""
        state = self._channels.get(channel)
        if state is None:
            return False
        state.pending.pop(subscriber, None)
        state.positioned.discard(subscriber)
        if state.conflated.pop(subscriber, None) is not None:
            self._prune(state)
        self._leave_group(state, subscriber)
        if state.is_empty():
            if state.batch:
                state.batch = []
            if state.drain_timer is not None:
                state.drain_timer.cancel()
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
        key = state.key_of(subscriber)
        for group in (state.plain, state.join_leave):
            members = group.get(key)
            if members is not None and subscriber in members:
                members[subscriber] = writer

    # ------------------------------------------------------------------ conflation

    def conflate(
        self,
        channel: str,
        subscriber: Subscriber,
        conflator: Conflator[PreparedPush],
        *,
        held: bool = False,
    ) -> bool:
        """From now on ``channel``'s publications reach the live ``subscriber`` through
        ``conflator`` (the latest per key), not one by one.

        ``held``: its connection cannot take more (it is slow); nothing is written
        until :meth:`release`. Otherwise the conflator is drained whenever its
        rate allows. A subscriber already conflated keeps its conflator (and
        becomes held if asked); one whose reply is out but that waits for the
        stream to reach its position goes live conflated. ``False`` when the
        subscriber's subscribe is still in progress, or it is not here.
        Join and leave pushes it asked for still reach it one by one.
        """
        state = self._channels.get(channel)
        if state is None:
            return False
        pending = state.pending.get(subscriber)
        if pending is not None:
            if pending.buffer is not None:
                return False
            if pending.conflator is None:
                pending.conflator = conflator
            pending.held = pending.held or held
            return True
        entry = state.conflated.get(subscriber)
        if entry is not None:
            entry.held = entry.held or held
            return True
        located = self._leave_group(state, subscriber, prune=False)
        if located is None:
            return False
        join_leave, delta = located
        state.conflated[subscriber] = _Conflated(
            conflator, join_leave=join_leave, delta=delta, held=held
        )
        return True

    def release(self, channel: str, subscriber: Subscriber) -> None:
        """A held subscriber can take more: write what its conflator kept.

        One that asked for no rate then shares the channel's frames again (a
        delta subscriber starting with a full payload); a rate-limited one stays
        conflated and is drained when its rate allows.
        """
        state = self._channels.get(channel)
        if state is None:
            return
        pending = state.pending.get(subscriber)
        if pending is not None and pending.conflator is not None:
            pending.held = False
            if not pending.conflator.interval:
                pending.conflator = None
            return
        entry = state.conflated.get(subscriber)
        if entry is None:
            return
        entry.held = False
        conflator = entry.conflator
        if conflator.interval:
            if conflator.ready():
                self._drain(subscriber, entry)
            self._schedule_drain(state)
            return
        del state.conflated[subscriber]
        items = conflator.drain()
        self._prune(state)
        self._join_group(state, subscriber, join_leave=entry.join_leave, delta=entry.delta)
        # Last: the write may find the connection full again, and conflate it anew.
        if items:
            self._write_conflated(subscriber, entry, items)

    def conflation_backlog(self, channel: str, subscriber: Subscriber) -> int | None:
        """Keys waiting in a conflated subscriber's conflator (``None``: not conflated).

        Never more than the number of distinct keys published to the channel,
        however fast they change: what a slow subscriber costs the server.
        """
        state = self._channels.get(channel)
        if state is None:
            return None
        entry = state.conflated.get(subscriber)
        if entry is not None:
            return len(entry.conflator)
        pending = state.pending.get(subscriber)
        if pending is not None and pending.conflator is not None:
            return len(pending.conflator)
        return None

    def _offer_conflated(
        self,
        state: _Channel,
        conflated: list[tuple[Subscriber, _Conflated]],
        publications: list[PreparedPush],
        batch: list[tuple[PreparedPush, bool]],
        has_join_leave: bool,
    ) -> None:
        """A flushed batch reaches the conflated subscribers: into each one's conflator
        (no encoding), drained at once where its rate allows."""
        join_leave = [push for push, is_join_leave in batch if is_join_leave]
        for subscriber, entry in conflated:
            if state.conflated.get(subscriber) is not entry:
                continue  # left, or released, during the shared writes
            conflator = entry.conflator
            for push in publications:
                conflator.offer(push.key, push)
            if has_join_leave and entry.join_leave:
                subscriber.writer(subscriber.wire.frame_pushes(join_leave))
            if not entry.held and conflator.ready():
                self._drain(subscriber, entry)
        self._schedule_drain(state)

    def _drain(self, subscriber: Subscriber, entry: _Conflated) -> None:
        items = entry.conflator.drain()
        if items:
            self._write_conflated(subscriber, entry, items)

    def _write_conflated(
        self, subscriber: Subscriber, entry: _Conflated, items: list[PreparedPush]
    ) -> None:
        data = _conflated_wire(subscriber, entry).frame_pushes(items)
        if self._meter is not None:
            self._meter.delivered(subscriber.wire, len(items), 1, len(data))
        subscriber.writer(data)

    def _schedule_drain(self, state: _Channel) -> None:
        """Arm the channel's timer for the earliest rate-limited drain still owed."""
        if state.drain_timer is not None:
            return
        due = min(
            (
                entry.conflator.due()
                for entry in state.conflated.values()
                if not entry.held and entry.conflator
            ),
            default=None,
        )
        if due is not None:
            delay = max(0.0, due - self._clock.monotonic())
            state.drain_timer = self._clock.call_later(delay, self._drain_due, state)

    def _drain_due(self, state: _Channel) -> None:
        state.drain_timer = None
        if self._channels.get(state.name) is not state:
            return
        for subscriber, entry in list(state.conflated.items()):
            ready = not entry.held and entry.conflator.ready()
            if ready and state.conflated.get(subscriber) is entry:
                self._drain(subscriber, entry)
        self._schedule_drain(state)

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
                elif push.delta and not push.per_key and state.previous_offset == state.last_offset:
                    # This node queued the stream's previous publication itself: a delta
                    # against it is what every delta subscriber here holds.
                    previous = state.previous
                    if previous is not None:
                        push.base = previous.payload
            elif state.epoch and push.epoch != state.epoch:
                self._lost_publications(state)
            state.last_offset = offset
            state.epoch = push.epoch
        state.previous = push
        state.previous_offset = offset
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
                self._go_live(state, subscriber, pending)
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
        # Taken before the writes: one of them may fill a connection, and the subscriber
        # conflated then already got this batch (it leaves its group, which stays).
        conflated = list(state.conflated.items()) if state.conflated else None
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
        if state.fresh and publications:
            self._promote_fresh(state)
        if state.conflated:
            self._prune(state)
            if conflated:
                self._offer_conflated(state, conflated, publications, batch, has_join_leave)

    @staticmethod
    def _promote_fresh(state: _Channel) -> None:
        """Delta subscribers that were just sent full payloads hold the channel's last
        publication now: from the next batch on they share the deltas' frames."""
        for subscriber in list(state.fresh):
            first = state.variant[subscriber]
            key = state.variant[subscriber] = first.for_delta("deltas")
            for group in (state.plain, state.join_leave):
                members = group.get(first)
                if members is not None and subscriber in members:
                    writer = members.pop(subscriber)
                    if not members:
                        del group[first]
                    group.setdefault(key, {})[subscriber] = writer
        state.fresh.clear()


def _conflated_wire(subscriber: Subscriber, entry: _Conflated) -> WireFormat:
    """Conflated publications skip others: a delta subscriber gets them whole."""
    return subscriber.wire.for_delta("strings") if entry.delta else subscriber.wire


def _write_all(members: dict[Subscriber, Writer], data: bytes) -> None:
    """The per-recipient loop: one call per subscriber, same bytes for all."""
    for write in list(members.values()):
        write(data)
