"""The hub's fan-out and ordering rules, with in-memory subscribers (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tidings.hub import Hub
from tidings.protocol.codec import PreparedPush, join_documents
from tidings.protocol.messages import StreamPosition
from tidings.protocol.wire import WireFormat


class LinesWire(WireFormat):
    def frame(self, documents: Sequence[bytes]) -> bytes:
        return join_documents(documents)


WIRE = LinesWire("lines", envelope=False)


class FakeSubscriber:
    def __init__(self, name: str, lost: list[tuple[str, str]] | None = None) -> None:
        self.name = name
        self.wire = WIRE
        self.writes: list[bytes] = []
        self.writer = self.writes.append
        self.lost = lost if lost is not None else []

    def insufficient_state(self, channel: str) -> None:
        self.lost.append((channel, self.name))

    def documents(self) -> list[bytes]:
        return [doc for write in self.writes for doc in write.split(b"\n")]

    def __repr__(self) -> str:
        return self.name


def pub(offset: int, epoch: str = "E") -> PreparedPush:
    body = b'"channel":"c","pub":{"offset":%d}' % offset
    return PreparedPush("c", "pub", None, body, offset, epoch)


def doc(offset: int) -> bytes:
    return b'{"channel":"c","pub":{"offset":%d}}' % offset


async def next_turn() -> None:
    await asyncio.sleep(0)


def live(
    hub: Hub,
    subscriber: FakeSubscriber,
    *,
    join_leave: bool = False,
    positioned: bool = False,
    position: StreamPosition | None = None,
) -> None:
    hub.begin_subscribe("c", subscriber)
    hub.complete_subscribe(
        "c", subscriber, join_leave=join_leave, positioned=positioned, position=position
    )


async def test_a_burst_goes_out_as_one_shared_write() -> None:
    hub = Hub()
    a, b = FakeSubscriber("a"), FakeSubscriber("b")
    live(hub, a)
    live(hub, b)
    for offset in (1, 2, 3):
        hub.broadcast_publication("c", pub(offset))
    assert a.writes == [] and b.writes == []
    await next_turn()
    assert a.writes == [doc(1) + b"\n" + doc(2) + b"\n" + doc(3)]
    assert a.writes[0] is b.writes[0]  # the very same bytes object for every recipient


async def test_batch_size_limit_flushes_early() -> None:
    hub = Hub(coalesce_max_bytes=60)
    a = FakeSubscriber("a")
    live(hub, a)
    hub.broadcast_publication("c", pub(1))
    hub.broadcast_publication("c", pub(2))
    assert len(a.writes) == 1  # over the byte budget: written at once
    await next_turn()


async def test_older_and_repeated_offsets_are_dropped() -> None:
    hub = Hub()
    a = FakeSubscriber("a")
    live(hub, a)
    for offset in (1, 2, 2, 1, 3):
        hub.broadcast_publication("c", pub(offset))
    await next_turn()
    assert a.documents() == [doc(1), doc(2), doc(3)]


async def test_a_gap_tells_positioned_subscribers_only() -> None:
    lost: list[tuple[str, str]] = []
    hub = Hub()
    plain, positioned = FakeSubscriber("plain", lost), FakeSubscriber("positioned", lost)
    live(hub, plain)
    live(hub, positioned, positioned=True, position=StreamPosition(0, ""))
    hub.broadcast_publication("c", pub(1))
    hub.broadcast_publication("c", pub(3))
    assert lost == [("c", "positioned")]
    hub.broadcast_publication("c", pub(4, epoch="F"))
    assert lost[-1] == ("c", "positioned")


async def test_subscribe_in_progress_buffers_then_merges_without_duplicates() -> None:
    hub = Hub()
    other, joining = FakeSubscriber("other"), FakeSubscriber("joining")
    live(hub, other)
    hub.broadcast_publication("c", pub(1))
    hub.begin_subscribe("c", joining)
    hub.broadcast_publication("c", pub(2))  # arrives while the subscribe is in progress
    hub.broadcast_publication("c", pub(3))
    # The reply recovered up to offset 2: only 3 is still owed.
    hub.complete_subscribe(
        "c", joining, join_leave=False, positioned=True, position=StreamPosition(2, "E")
    )
    assert joining.documents() == [doc(3)]
    hub.broadcast_publication("c", pub(4))
    await next_turn()
    assert joining.documents() == [doc(3), doc(4)]
    assert other.documents() == [doc(1), doc(2), doc(3), doc(4)]


async def test_subscriber_waits_for_the_stream_to_reach_its_position() -> None:
    """A remote broker may deliver offset 5 after the subscriber read a top of 5."""
    hub = Hub()
    s = FakeSubscriber("s")
    hub.begin_subscribe("c", s)
    hub.broadcast_publication("c", pub(4))
    hub.complete_subscribe(
        "c", s, join_leave=False, positioned=True, position=StreamPosition(5, "E")
    )
    hub.broadcast_publication("c", pub(5))  # already in the reply's position: skipped
    hub.broadcast_publication("c", pub(6))
    await next_turn()
    assert s.documents() == [doc(6)]


async def test_join_leave_reach_only_those_who_asked() -> None:
    hub = Hub()
    plain, watcher = FakeSubscriber("plain"), FakeSubscriber("watcher")
    live(hub, plain)
    live(hub, watcher, join_leave=True)
    join = PreparedPush("c", "join", None, b'"channel":"c","join":{}')
    hub.broadcast_publication("c", pub(1))
    hub.broadcast_join_leave("c", join)
    hub.broadcast_publication("c", pub(2))
    await next_turn()
    assert plain.documents() == [doc(1), doc(2)]
    assert watcher.documents() == [doc(1), join.bare, doc(2)]


async def test_remove_reports_the_last_subscriber() -> None:
    hub = Hub()
    a, b = FakeSubscriber("a"), FakeSubscriber("b")
    live(hub, a)
    live(hub, b)
    assert hub.remove("c", a) is False
    assert hub.remove("c", b) is True
    assert "c" not in hub
    hub.broadcast_publication("c", pub(1))
    await next_turn()
    assert a.writes == [] and b.writes == []


async def test_writer_swap_for_slow_clients() -> None:
    hub = Hub()
    a = FakeSubscriber("a")
    live(hub, a)
    diverted: list[bytes] = []
    hub.set_writer("c", a, diverted.append)
    hub.broadcast_publication("c", pub(1))
    await next_turn()
    assert diverted == [doc(1)] and a.writes == []
