"""The hub's fan-out and ordering rules, with in-memory subscribers (no sockets)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from msgspec import Raw

from tests.support.clock import FakeClock
from tidings.conflation import Conflator
from tidings.hub import Hub
from tidings.protocol import codec, fossil
from tidings.protocol.codec import PreparedPush, join_documents, prepare_publication
from tidings.protocol.maps import prepare_map_publication
from tidings.protocol.messages import MapPublication, Publication, StreamPosition
from tidings.protocol.wire import WireFormat


class LinesWire(WireFormat):
    def frame(self, documents: Sequence[bytes]) -> bytes:
        return join_documents(documents)


WIRE = LinesWire("lines", envelope=False)
OTHER_WIRE = LinesWire("other lines", envelope=False)


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


class Calls:
    count = 0


def count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> Calls:
    """Count the calls of ``module.name`` (still calling it)."""
    calls = Calls()
    original: Callable[..., Any] = getattr(module, name)

    def counting(*args: Any) -> Any:
        calls.count += 1
        return original(*args)

    monkeypatch.setattr(module, name, counting)
    return calls


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


# --------------------------------------------------------------------------- delta compression


def quote(
    offset: int, bid: int, *, delta: bool = True, key: str = "", epoch: str = "E"
) -> PreparedPush:
    """A ticker publication (~250 bytes) where only ``bid`` changes between updates."""
    data = {"symbol": "ACME", "bid": bid, "ask": 101, "venue": "XNAS", "note": "x" * 180}
    publication = Publication(data=Raw(json.dumps(data).encode()), offset=offset, key=key)
    return prepare_publication("c", publication, epoch, delta=delta)


def pubs_of(subscriber: FakeSubscriber) -> list[dict[str, Any]]:
    return [json.loads(document)["pub"] for document in subscriber.documents()]


class SdkDecoder:
    """What centrifuge-js does with the publications of a delta subscription."""

    def __init__(self) -> None:
        self.previous = b""

    def decode(self, pub: dict[str, Any]) -> dict[str, Any]:
        text = pub["data"]
        assert isinstance(text, str), "a delta subscriber must get data as a JSON string"
        full = fossil.apply(self.previous, text.encode()) if pub.get("delta") else text.encode()
        self.previous = full
        return dict(json.loads(full))


def delta_live(hub: Hub, subscriber: FakeSubscriber, **kwargs: Any) -> None:
    hub.begin_subscribe("c", subscriber)
    hub.complete_subscribe(
        "c",
        subscriber,
        join_leave=False,
        positioned=True,
        position=kwargs.pop("position", StreamPosition(0, "")),
        delta=True,
        **kwargs,
    )


async def test_delta_subscribers_get_full_strings_first_then_shared_deltas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deltas, variants = (
        count_calls(monkeypatch, fossil, "create"),
        count_calls(monkeypatch, codec, "_encode_variant"),
    )
    hub = Hub()
    plain = FakeSubscriber("plain")
    one, two = FakeSubscriber("one"), FakeSubscriber("two")
    live(hub, plain)
    delta_live(hub, one)
    delta_live(hub, two)
    hub.broadcast_publication("c", quote(1, 100))
    await next_turn()
    hub.broadcast_publication("c", quote(2, 101))
    hub.broadcast_publication("c", quote(3, 102))
    await next_turn()

    assert [p["data"]["bid"] for p in pubs_of(plain)] == [100, 101, 102]  # plain: untouched
    first, later = pubs_of(one)[0], pubs_of(one)[1:]
    assert isinstance(first["data"], str) and "delta" not in first
    assert all(p["delta"] is True for p in later)
    assert len(later[0]["data"]) < len(first["data"]) / 4
    sdk = SdkDecoder()
    assert [sdk.decode(p)["bid"] for p in pubs_of(one)] == [100, 101, 102]
    # Once per channel, not per recipient: one delta per publication, one frame per batch.
    assert one.writes[1] is two.writes[1]
    assert deltas.count == 2
    assert variants.count == 1 + 2  # the first publication's strings, two deltas


async def test_deltas_only_against_the_previous_offset_and_when_asked() -> None:
    hub = Hub()
    s = FakeSubscriber("s")
    delta_live(hub, s)
    hub.broadcast_publication("c", quote(1, 100))
    await next_turn()
    hub.broadcast_publication("c", quote(2, 101, delta=False))  # the publisher did not ask
    await next_turn()
    hub.broadcast_publication("c", quote(0, 102))  # no offset: no continuity to vouch for
    await next_turn()
    hub.broadcast_publication("c", quote(3, 103))  # its base would be offset 0's: whole
    await next_turn()
    hub.broadcast_publication("c", quote(4, 104))
    await next_turn()
    assert [p.get("delta", False) for p in pubs_of(s)] == [False, False, False, False, True]
    sdk = SdkDecoder()
    assert [sdk.decode(p)["bid"] for p in pubs_of(s)] == [100, 101, 102, 103, 104]


async def test_no_delta_across_a_gap() -> None:
    """Offsets 1 then 3: the node missed 2, so 3 has no base (and positioned subscribers,
    delta ones included, are told to recover)."""
    lost: list[tuple[str, str]] = []
    hub = Hub()
    s = FakeSubscriber("s", lost)
    delta_live(hub, s)
    hub.broadcast_publication("c", quote(1, 100))
    third = quote(3, 102)
    hub.broadcast_publication("c", third)
    assert third.base is None and lost == [("c", "s")]
    fourth = quote(4, 103)
    hub.broadcast_publication("c", fourth)
    assert fourth.base is third.payload


async def test_delta_subscriber_replay_starts_whole_then_stays_on_deltas() -> None:
    """What was buffered during the subscribe is consecutive: one full payload, then deltas,
    and live ones go on from the replay's last publication."""
    hub = Hub()
    s = FakeSubscriber("s")
    hub.begin_subscribe("c", s)
    hub.broadcast_publication("c", quote(5, 100))
    hub.broadcast_publication("c", quote(6, 101))
    hub.complete_subscribe(
        "c", s, join_leave=False, positioned=True, position=StreamPosition(4, "E"), delta=True
    )
    hub.broadcast_publication("c", quote(7, 102))
    await next_turn()
    hub.broadcast_publication("c", quote(8, 103))
    await next_turn()
    assert [p.get("delta", False) for p in pubs_of(s)] == [False, True, True, True]
    sdk = SdkDecoder()
    assert [sdk.decode(p)["bid"] for p in pubs_of(s)] == [100, 101, 102, 103]


# --------------------------------------------------------------------------- conflation


def tick(offset: int, key: str, price: int) -> PreparedPush:
    publication = Publication(data=Raw(b'{"p":%d}' % price), offset=offset, key=key)
    return prepare_publication("c", publication, "E")


def latest(subscriber: FakeSubscriber) -> dict[str, int]:
    values: dict[str, int] = {}
    for pub in pubs_of(subscriber):
        data = pub["data"]
        values[pub["key"]] = (json.loads(data) if isinstance(data, str) else data)["p"]
    return values


async def test_rate_limited_subscriber_gets_the_latest_per_key_at_its_rate() -> None:
    clock = FakeClock()
    hub = Hub(clock=clock)
    fast, slow = FakeSubscriber("fast"), FakeSubscriber("slow")
    live(hub, fast)
    hub.begin_subscribe("c", slow)
    conflator: Conflator[PreparedPush] = Conflator(max_frequency=10, clock=clock.monotonic)
    hub.complete_subscribe(
        "c", slow, join_leave=False, positioned=False, position=None, conflator=conflator
    )
    offset = 0
    for round_ in range(5):
        for key in ("A", "B", "C"):
            offset += 1
            hub.broadcast_publication("c", tick(offset, key, 10 * round_ + ord(key)))
        await next_turn()
    assert len(pubs_of(fast)) == 15
    assert [p["key"] for p in pubs_of(slow)] == ["A", "B", "C"]  # the first drain, at once
    assert len(conflator) == 3  # the rest waits, one item per key
    clock.advance(0.1)
    assert latest(slow) == {"A": 40 + 65, "B": 40 + 66, "C": 40 + 67}
    assert len(pubs_of(slow)) == 6 and clock.pending() == 0


async def test_held_subscriber_is_released_with_the_latest_then_shares_frames() -> None:
    hub = Hub()
    fast, slow = FakeSubscriber("fast"), FakeSubscriber("slow")
    live(hub, fast)
    live(hub, slow)
    conflator: Conflator[PreparedPush] = Conflator()
    assert hub.conflate("c", slow, conflator, held=True)
    for offset in range(1, 1001):
        hub.broadcast_publication("c", tick(offset, f"k{offset % 10}", offset))
        if offset % 100 == 0:
            await next_turn()
    assert slow.writes == [] and len(conflator) == 10  # bounded by the keys, not the rate
    hub.release("c", slow)
    assert latest(slow) == {f"k{n % 10}": n for n in range(991, 1001)}
    assert [p["offset"] for p in pubs_of(slow)] == list(range(991, 1001))  # in offset order
    hub.broadcast_publication("c", tick(1001, "k1", 1001))
    await next_turn()
    assert slow.writes[-1] is fast.writes[-1]  # back in the shared group
    assert len(pubs_of(fast)) == 1001


async def test_conflated_delta_subscriber_gets_strings_then_deltas_again() -> None:
    hub = Hub()
    s = FakeSubscriber("s")
    delta_live(hub, s)
    hub.broadcast_publication("c", quote(1, 100))
    await next_turn()
    hub.conflate("c", s, Conflator(), held=True)
    hub.broadcast_publication("c", quote(2, 101))
    hub.broadcast_publication("c", quote(3, 102))
    await next_turn()
    hub.release("c", s)
    hub.broadcast_publication("c", quote(4, 103))
    await next_turn()
    hub.broadcast_publication("c", quote(5, 104))
    await next_turn()
    assert [p["offset"] for p in pubs_of(s)] == [1, 3, 4, 5]
    assert [p.get("delta", False) for p in pubs_of(s)] == [False, False, False, True]
    sdk = SdkDecoder()
    assert [sdk.decode(p)["bid"] for p in pubs_of(s)] == [100, 102, 103, 104]


async def test_removing_a_conflated_subscriber_empties_the_channel() -> None:
    clock = FakeClock()
    hub = Hub(clock=clock)
    s = FakeSubscriber("s")
    hub.begin_subscribe("c", s)
    conflator: Conflator[PreparedPush] = Conflator(max_frequency=1, clock=clock.monotonic)
    hub.complete_subscribe(
        "c", s, join_leave=False, positioned=False, position=None, conflator=conflator
    )
    hub.broadcast_publication("c", tick(1, "A", 1))
    await next_turn()  # drained at once
    hub.broadcast_publication("c", tick(2, "A", 2))
    await next_turn()  # waits a second: the timer is armed
    assert dict(hub.channels()) == {"c": 1}
    assert clock.pending() == 1 and [p["offset"] for p in pubs_of(s)] == [1]
    assert hub.remove("c", s) is True
    assert clock.pending() == 0 and "c" not in hub


async def test_conflating_the_last_member_of_a_group_mid_flush() -> None:
    """A write that fills a connection conflates its subscriber while the flush is iterating
    the groups: the loop carries on, that subscriber got the batch once, and the emptied
    group is dropped afterwards."""
    hub = Hub()
    fast = FakeSubscriber("fast")
    live(hub, fast)
    slow = FakeSubscriber("slow")
    slow.wire = OTHER_WIRE
    live(hub, slow)

    def fills_up(data: bytes) -> None:
        slow.writes.append(data)
        hub.conflate("c", slow, Conflator(), held=True)

    hub.set_writer("c", slow, fills_up)
    hub.broadcast_publication("c", tick(1, "A", 1))
    await next_turn()
    hub.broadcast_publication("c", tick(2, "A", 2))
    await next_turn()
    assert [p["offset"] for p in pubs_of(slow)] == [1]
    assert [p["offset"] for p in pubs_of(fast)] == [1, 2]
    assert hub.conflation_backlog("c", slow) == 1
    assert OTHER_WIRE not in hub._channels["c"].plain


# --------------------------------------------------------------------------- maps: per-key delta


def board(key: str, n: int) -> bytes:
    """A map value (~250 bytes) where only ``n`` changes between writes of one key."""
    return json.dumps({"player": key, "n": n, "note": "y" * 200}).encode()


def change(offset: int, key: str, n: int | None, base: int | None = None) -> PreparedPush:
    """A map change as the node prepares it: ``base`` is the key's previous value, which
    the engine hands over for a write that asked for delta; ``n`` None is a removal."""
    if n is None:
        publication = MapPublication(key, offset=offset, removed=True)
    else:
        publication = MapPublication(key, data=Raw(board(key, n)), offset=offset)
    previous = board(key, base) if base is not None else None
    return prepare_map_publication("c", publication, "E", base=previous)


def map_delta_live(hub: Hub, subscriber: FakeSubscriber, position: int = 0) -> None:
    hub.begin_subscribe("c", subscriber)
    hub.complete_subscribe(
        "c",
        subscriber,
        join_leave=False,
        positioned=True,
        position=StreamPosition(position, "E" if position else ""),
        delta=True,
        keyed=True,
    )


class MapSdkDecoder:
    """What centrifuge-js 5.8 does with the changes of a map subscription whose reply said
    ``delta: true``: one chain per key, seeded by the state it received, ended by a removal."""

    def __init__(self, state: dict[str, bytes] | None = None) -> None:
        self.previous = dict(state or {})

    def decode(self, pub: dict[str, Any]) -> Any:
        text = pub["data"]
        assert isinstance(text, str), "a delta subscriber must get data as a JSON string"
        key = pub["key"]
        full = (
            fossil.apply(self.previous[key], text.encode()) if pub.get("delta") else text.encode()
        )
        if pub.get("removed"):
            del self.previous[key]
        else:
            self.previous[key] = full
        return json.loads(full)


async def test_map_delta_subscribers_get_per_key_deltas_at_once_encoded_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A map subscriber holds every key from its reply on: the first change of a key it got
    in the state is already a delta, against that key's value, shared by every recipient."""
    deltas = count_calls(monkeypatch, fossil, "create")
    hub = Hub()
    plain = FakeSubscriber("plain")
    one, two = FakeSubscriber("one"), FakeSubscriber("two")
    live(hub, plain)
    map_delta_live(hub, one, position=2)  # its state: a at 1, b at 2
    map_delta_live(hub, two, position=2)
    hub.broadcast_publication("c", change(3, "a", 2, base=1))
    hub.broadcast_publication("c", change(4, "b", 2, base=1))
    await next_turn()
    hub.broadcast_publication("c", change(5, "a", 3, base=2))
    hub.broadcast_publication("c", change(6, "c", 1))  # a new key: whole
    await next_turn()

    assert [p["data"]["n"] for p in pubs_of(plain)] == [2, 2, 3, 1]  # plain: untouched
    pubs = pubs_of(one)
    assert [p.get("delta", False) for p in pubs] == [True, True, True, False]
    assert all(len(p["data"]) < 40 for p in pubs[:3])
    sdk = MapSdkDecoder({"a": board("a", 1), "b": board("b", 1)})
    assert [(p["key"], sdk.decode(p)["n"]) for p in pubs] == [
        ("a", 2),
        ("b", 2),
        ("a", 3),
        ("c", 1),
    ]
    assert one.writes == two.writes and one.writes[0] is two.writes[0]
    assert deltas.count == 3  # once per change, for every delta subscriber


async def test_a_removal_ends_the_keys_chain() -> None:
    hub = Hub()
    s = FakeSubscriber("s")
    map_delta_live(hub, s, position=1)  # its state: a at 1
    hub.broadcast_publication("c", change(2, "a", 2, base=1))
    hub.broadcast_publication("c", change(3, "a", None))
    hub.broadcast_publication("c", change(4, "a", 5))  # written anew: no base
    await next_turn()
    pubs = pubs_of(s)
    assert pubs[1] == {"key": "a", "data": "null", "offset": 3, "removed": True}
    assert [p.get("delta", False) for p in pubs] == [True, False, False]
    sdk = MapSdkDecoder({"a": board("a", 1)})
    assert sdk.decode(pubs[0])["n"] == 2
    assert sdk.decode(pubs[1]) is None and "a" not in sdk.previous  # the SDK parses "null"
    assert sdk.decode(pubs[2])["n"] == 5


async def test_a_per_key_base_is_never_the_channels_previous_publication() -> None:
    hub = Hub()
    s = FakeSubscriber("s")
    map_delta_live(hub, s, position=1)
    hub.broadcast_publication("c", change(2, "a", 2, base=1))
    first_of_b = change(3, "b", 1)
    first_of_b.delta = True  # asked for delta, but b had no previous value
    hub.broadcast_publication("c", first_of_b)
    assert first_of_b.base is None
    await next_turn()
    assert [p.get("delta", False) for p in pubs_of(s)] == [True, False]


async def test_map_changes_racing_the_subscribe_are_replayed_as_deltas() -> None:
    hub = Hub()
    s = FakeSubscriber("s")
    hub.begin_subscribe("c", s)
    hub.broadcast_publication("c", change(3, "a", 2, base=1))  # in the reply's catch-up
    hub.broadcast_publication("c", change(4, "a", 3, base=2))
    hub.broadcast_publication("c", change(5, "b", 2, base=1))
    hub.complete_subscribe(
        "c",
        s,
        join_leave=False,
        positioned=True,
        position=StreamPosition(3, "E"),
        delta=True,
        keyed=True,
    )
    hub.broadcast_publication("c", change(6, "a", 4, base=3))
    await next_turn()
    pubs = pubs_of(s)
    assert [p["offset"] for p in pubs] == [4, 5, 6]
    assert all(p["delta"] is True for p in pubs)
    sdk = MapSdkDecoder({"a": board("a", 2), "b": board("b", 1)})
    assert [sdk.decode(p)["n"] for p in pubs] == [3, 2, 4]


async def test_a_conflated_map_delta_subscriber_gets_strings_then_deltas_at_once() -> None:
    hub = Hub()
    s = FakeSubscriber("s")
    map_delta_live(hub, s, position=2)
    hub.conflate("c", s, Conflator(), held=True)
    for offset, n in ((3, 2), (4, 3), (5, 4)):
        hub.broadcast_publication("c", change(offset, "a", n, base=n - 1))
    await next_turn()
    hub.release("c", s)
    hub.broadcast_publication("c", change(6, "a", 5, base=4))
    await next_turn()
    pubs = pubs_of(s)
    assert [p["offset"] for p in pubs] == [5, 6]
    assert [p.get("delta", False) for p in pubs] == [False, True]  # the latest whole, then on
    sdk = MapSdkDecoder({"a": board("a", 1)})
    assert [sdk.decode(p)["n"] for p in pubs] == [4, 5]
