"""The map engine contract (tidings.brokers.maps), checked against every implementation.

One suite, parameterised by the ``map_engine`` fixture: a factory of started
engines ("nodes") with a recording event handler each, over

* ``memory``: :class:`MemoryMapBroker` (one node);
* ``redis``: :class:`RedisMapBroker` on the shared Redis at
  ``TIDINGS_TEST_REDIS_URL``, several nodes sharing one prefix;
* ``cluster``: the same on a private 3-master Redis Cluster (the
  ``redis_cluster`` session fixture).

Every engine takes the test's fake clock (the Redis scripts compare stored
deadlines with the time they are given), so TTLs of minutes pass at once:
``elapse`` moves the clock and runs each engine's expiry. Durations are still
written in engine seconds (``engine.s(60)``) for an engine that would have to
wait for real time. Each Redis test has its own key prefix and deletes its keys.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from tests.support.maps import MapRecorder
from tests.support.polling import eventually
from tests.support.redis import Cluster, delete_keys
from tidings.brokers.base import IDEMPOTENCY_WINDOW
from tidings.brokers.maps import (
    KeyMode,
    MapBroker,
    MapEntry,
    MapEventHandler,
    MapMode,
    MapRequestError,
    MapRetention,
    SuppressReason,
    UnrecoverablePosition,
)
from tidings.brokers.memory_map import MemoryMapBroker
from tidings.brokers.redis import RedisMapBroker
from tidings.protocol.messages import ClientInfo, StreamPosition

pytestmark = pytest.mark.timeout(60)

WAIT = 5.0
"""Seconds any awaited condition may take (far above what each needs)."""


# --------------------------------------------------------------------------- harness


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_760_000_000.0

    def __call__(self) -> float:
        return self.now


class MapEngine:
    """What a test needs from one implementation. Subclasses fill in the hooks."""

    kind = ""
    multi_node = False
    """Several engines share state (False: each node is its own world)."""
    time_scale = 1.0
    """Real seconds per test second (the memory engine's fake clock makes time free)."""

    def __init__(self) -> None:
        self.prefix = f"tm{uuid.uuid4().hex[:12]}"
        self.brokers: list[Any] = []

    def s(self, seconds: float) -> float:
        """A duration in this engine's time."""
        return seconds * self.time_scale

    async def node(self) -> tuple[MapBroker, MapRecorder]:
        broker = self.make_broker()
        self.brokers.append(broker)
        recorder = MapRecorder()
        handler: MapEventHandler = recorder
        broker.set_event_handler(handler)
        await broker.start()
        return broker, recorder

    def make_broker(self) -> Any:
        raise NotImplementedError

    async def elapse(self, seconds: float) -> None:
        """Let ``seconds`` (engine time) pass, then give expiry its chance to run."""
        raise NotImplementedError

    async def close(self) -> None:
        for broker in self.brokers:
            await broker.close()


class MemoryMapEngine(MapEngine):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()

    def make_broker(self) -> Any:
        return MemoryMapBroker(self.clock)

    async def elapse(self, seconds: float) -> None:
        self.clock.now += seconds
        for broker in self.brokers:
            broker.expire()


class RedisMapEngine(MapEngine):
    """Nodes sharing one Redis (or Cluster) under one prefix, on the test's clock."""

    multi_node = True

    def __init__(self, kind: str, url: str, admin_urls: list[str]) -> None:
        super().__init__()
        self.kind = kind
        self.url = url
        self.admin_urls = admin_urls
        self.clock = FakeClock()

    def make_broker(self) -> Any:
        return RedisMapBroker(
            self.url,
            prefix=self.prefix,
            name=f"n{len(self.brokers)}",
            ping_interval=1.0,
            cleanup_interval=0,
            clock=self.clock,
        )

    async def elapse(self, seconds: float) -> None:
        self.clock.now += seconds
        for broker in self.brokers:
            await broker.expire()

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            for url in self.admin_urls:
                await delete_keys(url, self.prefix)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def map_engine(request: pytest.FixtureRequest) -> AsyncIterator[MapEngine]:
    """Every map engine."""
    engine: MapEngine
    if request.param == "memory":
        engine = MemoryMapEngine()
    elif request.param == "redis":
        url = request.getfixturevalue("shared_redis")
        engine = RedisMapEngine("redis", url, [url])
    else:
        started: Cluster = request.getfixturevalue("redis_cluster")
        admins = [f"redis://127.0.0.1:{port}/0" for port in started.ports]
        engine = RedisMapEngine("cluster", started.url, admins)
    try:
        yield engine
    finally:
        await engine.close()


def persistent(size: int = 100) -> MapRetention:
    return MapRetention.of(MapMode.PERSISTENT, stream_size=size)


def recoverable(engine: MapEngine, key_ttl: float = 60.0, size: int = 100) -> MapRetention:
    return MapRetention.of(
        MapMode.RECOVERABLE, key_ttl=engine.s(key_ttl), stream_size=size, stream_ttl=engine.s(600)
    )


def ephemeral(engine: MapEngine, key_ttl: float = 60.0) -> MapRetention:
    return MapRetention.of(MapMode.EPHEMERAL, key_ttl=engine.s(key_ttl))


def counted(recorder: MapRecorder, channel: str, count: int) -> Callable[[], bool]:
    return lambda: len(recorder.changes[channel]) == count


def value(n: object) -> bytes:
    return msgspec.json.encode({"v": n})


def as_dict(entries: list[MapEntry]) -> dict[str, bytes]:
    return {entry.key: entry.data for entry in entries}


def apply_changes(state: dict[str, bytes], changes: list[MapEntry]) -> dict[str, bytes]:
    """What a client does with a catch-up: later write wins, a removal deletes."""
    merged = dict(state)
    for change in changes:
        if change.removed:
            merged.pop(change.key, None)
        else:
            merged[change.key] = change.data
    return merged


# --------------------------------------------------------------------------- positions


async def test_engine_implements_the_protocol(map_engine: MapEngine) -> None:
    broker, _ = await map_engine.node()
    assert isinstance(broker, MapBroker)


async def test_reading_an_unknown_channel_creates_a_stable_epoch(map_engine: MapEngine) -> None:
    broker, _ = await map_engine.node()
    keep = persistent()
    state = await broker.read_state("m:new", retention=keep, limit=-1)
    assert state.entries == [] and state.cursor == ""
    assert state.position.offset == 0 and state.position.epoch
    stream = await broker.read_stream("m:new", retention=keep)
    assert stream.position == state.position
    assert (await broker.read_state("m:new", retention=keep)).position == state.position
    result = await broker.publish("m:new", "a", value(1), retention=keep)
    assert result.position == StreamPosition(1, state.position.epoch)
    assert not result.suppressed and result.suppress_reason is SuppressReason.NONE


async def test_writes_take_contiguous_offsets_and_state_keeps_the_last_write(
    map_engine: MapEngine,
) -> None:
    broker, _ = await map_engine.node()
    keep = persistent()
    info = ClientInfo(user="u1", client="c1")
    positions = [
        (await broker.publish("m:1", key, value(n), retention=keep, tags=tags, info=info)).position
        for n, (key, tags) in enumerate(
            [("b", None), ("a", {"team": "red"}), ("b", {"team": "blue"}), ("c", None)], start=1
        )
    ]
    assert [p.offset for p in positions] == [1, 2, 3, 4]
    assert len({p.epoch for p in positions}) == 1
    state = await broker.read_state("m:1", retention=keep, limit=-1)
    assert state.position == positions[-1]
    assert [(e.key, e.data, e.offset, e.tags) for e in state.entries] == [
        ("a", value(2), 2, {"team": "red"}),
        ("b", value(3), 3, {"team": "blue"}),
        ("c", value(4), 4, None),
    ]
    assert all(e.info == info and e.time > 0 and not e.removed for e in state.entries)
    assert await broker.stats("m:1") == 3
    assert await broker.stats("m:never") == 0


async def test_changes_reach_the_handler_once_each_in_offset_order(map_engine: MapEngine) -> None:
    broker, recorder = await map_engine.node()
    keep = persistent()
    await broker.subscribe("m:order")
    for n in range(60):
        await broker.publish("m:order", f"k{n % 7}", value(n), retention=keep)
    await broker.remove("m:order", "k3", retention=keep)
    await recorder.wait(lambda: len(recorder.changes["m:order"]) == 61, "61 changes")
    assert recorder.offsets("m:order") == list(range(1, 62))
    epoch = (await broker.read_stream("m:order", retention=keep)).position.epoch
    for change, position, previous in recorder.changes["m:order"]:
        assert position == StreamPosition(change.offset, epoch)
        assert previous is None
    # Per key, the last change seen is the state.
    seen = apply_changes({}, [change for change, _, _ in recorder.changes["m:order"]])
    state = await broker.read_state("m:order", retention=keep, limit=-1)
    assert seen == as_dict(state.entries)
    assert "k3" not in seen


async def test_events_only_for_subscribed_channels_reference_counted(
    map_engine: MapEngine,
) -> None:
    broker, recorder = await map_engine.node()
    keep = persistent()
    await broker.publish("m:quiet", "a", value(0), retention=keep)
    await broker.subscribe("m:quiet")
    await broker.subscribe("m:quiet")
    await broker.publish("m:quiet", "a", value(1), retention=keep)
    await broker.unsubscribe("m:quiet")
    await broker.publish("m:quiet", "a", value(2), retention=keep)
    await recorder.wait(lambda: len(recorder.changes["m:quiet"]) == 2, "two changes")
    await broker.unsubscribe("m:quiet")
    await broker.publish("m:quiet", "a", value(3), retention=keep)
    await broker.subscribe("m:quiet")
    await broker.publish("m:quiet", "a", value(4), retention=keep)  # a marker: 3 was not sent
    await recorder.wait(lambda: len(recorder.changes["m:quiet"]) == 3, "the marker")
    assert recorder.offsets("m:quiet") == [2, 3, 5]


async def test_delta_publishes_carry_the_previous_value_of_the_key(map_engine: MapEngine) -> None:
    broker, recorder = await map_engine.node()
    keep = persistent()
    await broker.subscribe("m:delta")
    await broker.publish("m:delta", "a", value(1), retention=keep, delta=True)
    await broker.publish("m:delta", "b", value(2), retention=keep, delta=True)
    await broker.publish("m:delta", "a", value(3), retention=keep, delta=True)
    await broker.publish("m:delta", "a", value(4), retention=keep)
    await recorder.wait(lambda: len(recorder.changes["m:delta"]) == 4, "four changes")
    assert [previous for _, _, previous in recorder.changes["m:delta"]] == [
        None,
        None,
        value(1),
        None,
    ]


async def test_empty_keys_are_refused_and_removing_one_is_a_no_op(map_engine: MapEngine) -> None:
    broker, _ = await map_engine.node()
    with pytest.raises(MapRequestError):
        await broker.publish("m:1", "", value(1), retention=persistent())
    result = await broker.remove("m:1", "", retention=persistent())
    assert result.suppressed and result.suppress_reason is SuppressReason.KEY_NOT_FOUND


# --------------------------------------------------------------------------- state pages


async def test_state_pages_in_key_order_with_a_cursor(map_engine: MapEngine) -> None:
    broker, _ = await map_engine.node()
    keep = persistent(size=1000)
    keys = [f"key{n:03d}" for n in range(250)]
    for n, key in enumerate(reversed(keys)):
        await broker.publish("m:pages", key, value(n), retention=keep)
    pages: list[list[str]] = []
    cursor = ""
    while True:
        page = await broker.read_state("m:pages", retention=keep, limit=100, cursor=cursor)
        pages.append([entry.key for entry in page.entries])
        cursor = page.cursor
        if not cursor:
            break
    assert [len(page) for page in pages] == [100, 100, 50]
    assert [key for page in pages for key in page] == keys
    everything = await broker.read_state("m:pages", retention=keep, limit=-1)
    assert [entry.key for entry in everything.entries] == keys and everything.cursor == ""
    nothing = await broker.read_state("m:pages", retention=keep, limit=0)
    assert nothing.entries == [] and nothing.position.offset == 250
    exact = await broker.read_state("m:pages", retention=keep, limit=100, key="key200")
    assert [entry.key for entry in exact.entries] == ["key200"] and exact.cursor == ""
    missing = await broker.read_state("m:pages", retention=keep, key="nope")
    assert missing.entries == [] and missing.position == nothing.position


async def test_pages_after_the_first_leave_out_later_writes_which_the_stream_has(
    map_engine: MapEngine,
) -> None:
    """State pages under a frozen top + the stream after it = the current state."""
    broker, _ = await map_engine.node()
    keep = persistent(size=1000)
    for n in range(30):
        await broker.publish("m:frozen", f"k{n:02d}", value(n), retention=keep)
    first = await broker.read_state("m:frozen", retention=keep, limit=10)
    frozen = first.position
    # While the client pages: rewrite a key of a later page, remove one, add one.
    await broker.publish("m:frozen", "k15", value("new"), retention=keep)
    await broker.remove("m:frozen", "k25", retention=keep)
    await broker.publish("m:frozen", "k20a", value("added"), retention=keep)
    # And rewrite a key of the page already read.
    await broker.publish("m:frozen", "k03", value("again"), retention=keep)
    entries = list(first.entries)
    cursor = first.cursor
    while cursor:
        page = await broker.read_state(
            "m:frozen", retention=keep, limit=10, cursor=cursor, revision=frozen
        )
        assert page.position.offset == 34  # the live top, while the client keeps the frozen one
        entries += page.entries
        cursor = page.cursor
    paged = as_dict(entries)
    assert "k15" not in paged and "k25" not in paged and "k20a" not in paged
    assert all(entry.offset <= frozen.offset for entry in entries)
    stream = await broker.read_stream("m:frozen", retention=keep, since=frozen, limit=-1)
    assert [(c.key, c.removed) for c in stream.changes] == [
        ("k15", False),
        ("k25", True),
        ("k20a", False),
        ("k03", False),
    ]
    current = await broker.read_state("m:frozen", retention=keep, limit=-1)
    assert apply_changes(paged, stream.changes) == as_dict(current.entries)


async def test_state_pages_from_another_epoch_are_unrecoverable(map_engine: MapEngine) -> None:
    broker, _ = await map_engine.node()
    keep = persistent()
    await broker.publish("m:epoch", "a", value(1), retention=keep)
    first = await broker.read_state("m:epoch", retention=keep, limit=1)
    stale = StreamPosition(first.position.offset, "not-this-epoch")
    with pytest.raises(UnrecoverablePosition):
        await broker.read_state("m:epoch", retention=keep, limit=1, revision=stale)
    await broker.clear("m:epoch")
    with pytest.raises(UnrecoverablePosition):
        await broker.read_state("m:epoch", retention=keep, limit=1, revision=first.position)


# --------------------------------------------------------------------------- stream


async def test_stream_selection(map_engine: MapEngine) -> None:
    broker, _ = await map_engine.node()
    keep = persistent()
    for n in range(1, 6):
        await broker.publish("m:s", f"k{n}", value(n), retention=keep)
    epoch = (await broker.read_stream("m:s", retention=keep)).position.epoch

    async def offsets(**kwargs: Any) -> list[int]:
        stream = await broker.read_stream("m:s", retention=keep, **kwargs)
        assert stream.position == StreamPosition(5, epoch)
        return [change.offset for change in stream.changes]

    assert await offsets() == []
    assert await offsets(limit=-1) == [1, 2, 3, 4, 5]
    assert await offsets(limit=2) == [1, 2]
    assert await offsets(limit=2, reverse=True) == [5, 4]
    assert await offsets(limit=-1, reverse=True) == [5, 4, 3, 2, 1]
    assert await offsets(since=StreamPosition(2, epoch), limit=-1) == [3, 4, 5]
    assert await offsets(since=StreamPosition(2, epoch), limit=2) == [3, 4]
    assert await offsets(since=StreamPosition(2, epoch), limit=0) == []
    assert await offsets(since=StreamPosition(5, epoch), limit=-1) == []
    assert await offsets(since=StreamPosition(0, epoch), limit=-1) == [1, 2, 3, 4, 5]
    assert await offsets(since=StreamPosition(2, ""), limit=-1) == [3, 4, 5]
    assert await offsets(since=StreamPosition(4, epoch), reverse=True, limit=-1) == [3, 2, 1]
    assert await offsets(since=StreamPosition(4, epoch), reverse=True, limit=2) == [3, 2]
    stream = await broker.read_stream("m:s", retention=keep, limit=-1)
    assert [c.data for c in stream.changes] == [value(n) for n in range(1, 6)]


async def test_a_trimmed_stream_makes_older_positions_unrecoverable(map_engine: MapEngine) -> None:
    broker, _ = await map_engine.node()
    keep = persistent(size=5)
    for n in range(1, 13):
        await broker.publish("m:trim", f"k{n % 3}", value(n), retention=keep)
    everything = await broker.read_stream("m:trim", retention=keep, limit=-1)
    assert [c.offset for c in everything.changes] == [8, 9, 10, 11, 12]
    epoch = everything.position.epoch

    async def since(offset: int, epoch: str = epoch, limit: int = -1) -> list[int]:
        stream = await broker.read_stream(
            "m:trim", retention=keep, since=StreamPosition(offset, epoch), limit=limit
        )
        return [c.offset for c in stream.changes]

    assert await since(7) == [8, 9, 10, 11, 12]  # nothing after 7 is missing
    assert await since(10) == [11, 12]
    assert await since(12) == []
    assert await since(7, limit=0) == []
    for offset, epoch_seen, limit in (
        (6, epoch, -1),  # offset 7 is gone
        (0, epoch, -1),
        (6, epoch, 0),  # a position check (limit 0) still checks
        (13, epoch, -1),  # beyond the top
        (10, "another", -1),  # another epoch
    ):
        with pytest.raises(UnrecoverablePosition):
            await since(offset, epoch_seen, limit)


async def test_the_stream_expires_after_stream_ttl_but_the_top_stays(map_engine: MapEngine) -> None:
    broker, _ = await map_engine.node()
    keep = MapRetention.of(MapMode.PERSISTENT, stream_size=100, stream_ttl=map_engine.s(10))
    for n in range(1, 4):
        await broker.publish("m:sttl", "a", value(n), retention=keep)
    top = (await broker.read_stream("m:sttl", retention=keep)).position
    await map_engine.elapse(map_engine.s(11))

    async def emptied() -> bool:
        return (await broker.read_stream("m:sttl", retention=keep, limit=-1)).changes == []

    await eventually(emptied, "the stream to expire")
    assert (await broker.read_stream("m:sttl", retention=keep)).position == top
    assert (await broker.read_stream("m:sttl", retention=keep, since=top, limit=-1)).changes == []
    with pytest.raises(UnrecoverablePosition):
        await broker.read_stream(
            "m:sttl", retention=keep, since=StreamPosition(2, top.epoch), limit=-1
        )
    # The state is untouched and offsets go on in the same epoch.
    assert as_dict((await broker.read_state("m:sttl", retention=keep, limit=-1)).entries) == {
        "a": value(3)
    }
    result = await broker.publish("m:sttl", "a", value(4), retention=keep)
    assert result.position == StreamPosition(4, top.epoch)


# --------------------------------------------------------------------------- key TTL


async def test_expired_keys_become_removals_in_state_stream_and_events(
    map_engine: MapEngine,
) -> None:
    broker, recorder = await map_engine.node()
    keep = recoverable(map_engine, key_ttl=60)
    await broker.subscribe("m:ttl")
    await broker.publish("m:ttl", "a", value(1), retention=keep)
    await broker.publish("m:ttl", "b", value(2), retention=keep, tags={"k": "v"})
    await map_engine.elapse(map_engine.s(30))
    await broker.publish("m:ttl", "a", value(3), retention=keep)  # extends a's lifetime
    await map_engine.elapse(map_engine.s(31))  # b is 61 s old, a 31 s
    await recorder.wait(lambda: ("b", True) in recorder.keys("m:ttl"), "b's expiry")
    state = await broker.read_state("m:ttl", retention=keep, limit=-1)
    assert as_dict(state.entries) == {"a": value(3)}
    stream = await broker.read_stream("m:ttl", retention=keep, limit=-1)
    removal = stream.changes[-1]
    assert (removal.key, removal.removed, removal.offset, removal.tags) == (
        "b",
        True,
        4,
        {"k": "v"},
    )
    assert removal.data == b""
    assert recorder.changes["m:ttl"][-1][0] == removal
    await map_engine.elapse(map_engine.s(30))  # a is 61 s old
    await recorder.wait(lambda: ("a", True) in recorder.keys("m:ttl"), "a's expiry")
    assert recorder.offsets("m:ttl") == [1, 2, 3, 4, 5]
    assert await broker.stats("m:ttl") == 0


async def test_ephemeral_maps_keep_no_stream_and_expire_keys_live(map_engine: MapEngine) -> None:
    broker, recorder = await map_engine.node()
    keep = ephemeral(map_engine, key_ttl=10)
    await broker.subscribe("m:eph")
    first = await broker.publish("m:eph", "a", value(1), retention=keep)
    await broker.publish("m:eph", "b", value(2), retention=keep)
    assert first.position.offset == 0 and first.position.epoch
    state = await broker.read_state("m:eph", retention=keep, limit=-1)
    assert [(e.key, e.offset) for e in state.entries] == [("a", 0), ("b", 0)]
    assert state.position == first.position
    assert (await broker.read_stream("m:eph", retention=keep, limit=-1)).changes == []
    assert (
        await broker.read_stream("m:eph", retention=keep, since=first.position, limit=-1)
    ).changes == []
    with pytest.raises(UnrecoverablePosition):
        await broker.read_stream(
            "m:eph", retention=keep, since=StreamPosition(1, first.position.epoch), limit=-1
        )
    with pytest.raises(MapRequestError):
        await broker.publish("m:eph", "a", value(3), retention=keep, version=2)
    await broker.remove("m:eph", "a", retention=keep)
    await map_engine.elapse(map_engine.s(11))
    await recorder.wait(lambda: len(recorder.changes["m:eph"]) == 4, "b's expiry")
    assert recorder.keys("m:eph") == [("a", False), ("b", False), ("a", True), ("b", True)]
    assert recorder.offsets("m:eph") == [0, 0, 0, 0]
    assert all(position.offset == 0 for _, position, _ in recorder.changes["m:eph"])


# --------------------------------------------------------------------------- conditional writes


async def test_idempotent_writes_and_removals_happen_once(map_engine: MapEngine) -> None:
    broker, recorder = await map_engine.node()
    keep = persistent()
    await broker.subscribe("m:idem")
    first = await broker.publish("m:idem", "a", value(1), retention=keep, idempotency_key="x")
    again = await broker.publish("m:idem", "a", value(2), retention=keep, idempotency_key="x")
    assert not first.suppressed
    assert again.suppressed and again.suppress_reason is SuppressReason.IDEMPOTENCY
    assert again.position == first.position
    removed = await broker.remove("m:idem", "a", retention=keep, idempotency_key="y")
    repeated = await broker.remove("m:idem", "a", retention=keep, idempotency_key="y")
    assert repeated.suppressed and repeated.suppress_reason is SuppressReason.IDEMPOTENCY
    assert repeated.position == removed.position
    other = await broker.publish("m:idem2", "a", value(1), retention=keep, idempotency_key="x")
    assert not other.suppressed  # idempotency keys are per channel
    await recorder.wait(lambda: len(recorder.changes["m:idem"]) == 2, "two changes")
    assert recorder.keys("m:idem") == [("a", False), ("a", True)]
    assert [
        c.offset for c in (await broker.read_stream("m:idem", retention=keep, limit=-1)).changes
    ] == [1, 2]
    await map_engine.elapse(map_engine.s(IDEMPOTENCY_WINDOW + 1))
    later = await broker.publish("m:idem", "a", value(3), retention=keep, idempotency_key="x")
    assert not later.suppressed and later.position.offset == 3


async def test_key_modes(map_engine: MapEngine) -> None:
    broker, recorder = await map_engine.node()
    keep = persistent()
    await broker.subscribe("m:modes")
    created = await broker.publish(
        "m:modes", "a", value(1), retention=keep, key_mode=KeyMode.IF_NEW
    )
    assert not created.suppressed
    exists = await broker.publish("m:modes", "a", value(2), retention=keep, key_mode=KeyMode.IF_NEW)
    assert exists.suppressed and exists.suppress_reason is SuppressReason.KEY_EXISTS
    assert exists.position == created.position
    missing = await broker.publish(
        "m:modes", "b", value(3), retention=keep, key_mode=KeyMode.IF_EXISTS
    )
    assert missing.suppressed and missing.suppress_reason is SuppressReason.KEY_NOT_FOUND
    updated = await broker.publish(
        "m:modes", "a", value(4), retention=keep, key_mode=KeyMode.IF_EXISTS
    )
    assert not updated.suppressed and updated.position.offset == 2
    gone = await broker.remove("m:modes", "b", retention=keep)
    assert gone.suppressed and gone.suppress_reason is SuppressReason.KEY_NOT_FOUND
    await recorder.wait(lambda: len(recorder.changes["m:modes"]) == 2, "two changes")
    assert as_dict((await broker.read_state("m:modes", retention=keep, limit=-1)).entries) == {
        "a": value(4)
    }
    assert len((await broker.read_stream("m:modes", retention=keep, limit=-1)).changes) == 2


async def test_if_new_can_keep_a_key_alive_without_a_change(map_engine: MapEngine) -> None:
    """How map presence refreshes its entries: no stream entry, no event, a longer TTL."""
    broker, recorder = await map_engine.node()
    keep = recoverable(map_engine, key_ttl=60)
    await broker.subscribe("m:alive")
    await broker.publish("m:alive", "c1", value(1), retention=keep, key_mode=KeyMode.IF_NEW)
    await map_engine.elapse(map_engine.s(50))
    refreshed = await broker.publish(
        "m:alive",
        "c1",
        value(2),
        retention=keep,
        key_mode=KeyMode.IF_NEW,
        refresh_ttl_on_suppress=True,
    )
    assert refreshed.suppressed and refreshed.suppress_reason is SuppressReason.KEY_EXISTS
    await map_engine.elapse(map_engine.s(20))  # 70 s after the write, 20 s after the refresh
    state = await broker.read_state("m:alive", retention=keep, limit=-1)
    assert as_dict(state.entries) == {"c1": value(1)}
    await map_engine.elapse(map_engine.s(41))
    await recorder.wait(lambda: ("c1", True) in recorder.keys("m:alive"), "c1's expiry")
    assert recorder.offsets("m:alive") == [1, 2]


async def test_versions_order_writes_per_key(map_engine: MapEngine) -> None:
    broker, _ = await map_engine.node()
    keep = persistent()

    async def publish(key: str, n: int, version: int, epoch: str = "") -> SuppressReason:
        result = await broker.publish(
            "m:ver", key, value(n), retention=keep, version=version, version_epoch=epoch
        )
        return result.suppress_reason

    assert await publish("a", 1, 5) is SuppressReason.NONE
    assert await publish("a", 2, 3) is SuppressReason.VERSION
    assert await publish("a", 3, 5) is SuppressReason.VERSION
    assert await publish("a", 4, 6) is SuppressReason.NONE
    assert await publish("b", 5, 1) is SuppressReason.NONE  # versions are per key
    assert await publish("a", 6, 1, "e2") is SuppressReason.NONE  # another version epoch
    assert await publish("a", 7, 1, "e2") is SuppressReason.VERSION
    assert await publish("a", 8, 0) is SuppressReason.NONE  # no version: always written...
    assert await publish("a", 9, 1, "e2") is SuppressReason.VERSION  # ...and keeps the stored one
    state = await broker.read_state("m:ver", retention=keep, limit=-1)
    assert as_dict(state.entries) == {"a": value(8), "b": value(5)}


async def test_version_is_checked_before_key_mode(map_engine: MapEngine) -> None:
    broker, _ = await map_engine.node()
    keep = persistent()
    await broker.publish("m:order2", "a", value(1), retention=keep, version=5)
    result = await broker.publish(
        "m:order2", "a", value(2), retention=keep, version=3, key_mode=KeyMode.IF_NEW
    )
    assert result.suppress_reason is SuppressReason.VERSION


# --------------------------------------------------------------------------- removal and clear


async def test_removals_carry_the_entrys_tags_unless_given(map_engine: MapEngine) -> None:
    broker, recorder = await map_engine.node()
    keep = persistent()
    await broker.subscribe("m:rm")
    await broker.publish("m:rm", "a", value(1), retention=keep, tags={"kind": "x"})
    await broker.publish("m:rm", "b", value(2), retention=keep, tags={"kind": "y"})
    await broker.remove("m:rm", "a", retention=keep)
    result = await broker.remove("m:rm", "b", retention=keep, tags={"why": "kicked"})
    assert result.position.offset == 4
    stream = await broker.read_stream("m:rm", retention=keep, since=StreamPosition(2, ""), limit=-1)
    assert [(c.key, c.removed, c.tags, c.data) for c in stream.changes] == [
        ("a", True, {"kind": "x"}, b""),
        ("b", True, {"why": "kicked"}, b""),
    ]
    await recorder.wait(lambda: len(recorder.changes["m:rm"]) == 4, "four changes")
    assert [c for c, _, _ in recorder.changes["m:rm"][2:]] == stream.changes
    assert await broker.stats("m:rm") == 0


async def test_clear_forgets_everything_and_starts_a_new_epoch(map_engine: MapEngine) -> None:
    broker, recorder = await map_engine.node()
    keep = persistent()
    await broker.subscribe("m:clear")
    await broker.publish("m:clear", "a", value(1), retention=keep, idempotency_key="once")
    before = (await broker.read_stream("m:clear", retention=keep)).position
    await broker.clear("m:clear")
    await recorder.wait(lambda: recorder.cleared == ["m:clear"], "the clear event")
    assert await broker.stats("m:clear") == 0
    state = await broker.read_state("m:clear", retention=keep, limit=-1)
    assert state.entries == [] and state.position.offset == 0
    assert state.position.epoch != before.epoch
    with pytest.raises(UnrecoverablePosition):
        await broker.read_stream("m:clear", retention=keep, since=before, limit=-1)
    again = await broker.publish("m:clear", "a", value(2), retention=keep, idempotency_key="once")
    assert not again.suppressed
    assert again.position == StreamPosition(1, state.position.epoch)
    await broker.clear("m:never-written")  # clearing nothing is fine
    assert recorder.cleared == ["m:clear"]


# --------------------------------------------------------------------------- several nodes


async def test_nodes_share_state_and_see_changes_in_order(map_engine: MapEngine) -> None:
    if not map_engine.multi_node:
        pytest.skip(f"{map_engine.kind}: one node only")
    first, first_seen = await map_engine.node()
    second, second_seen = await map_engine.node()
    keep = persistent()
    for broker in (first, second):
        await broker.subscribe("m:shared")
    for n in range(20):
        await (first if n % 2 else second).publish(
            "m:shared", f"k{n % 4}", value(n), retention=keep
        )
    for seen in (first_seen, second_seen):
        await seen.wait(counted(seen, "m:shared", 20), "20 changes")
        assert seen.offsets("m:shared") == list(range(1, 21))
    one = await first.read_state("m:shared", retention=keep, limit=-1)
    other = await second.read_state("m:shared", retention=keep, limit=-1)
    assert one == other


async def test_an_idle_channel_is_forgotten_after_meta_ttl(map_engine: MapEngine) -> None:
    broker, _ = await map_engine.node()
    keep = MapRetention.of(
        MapMode.RECOVERABLE,
        key_ttl=map_engine.s(10),
        stream_ttl=map_engine.s(10),
        meta_ttl=map_engine.s(30),
    )
    forever = persistent()
    first = await broker.publish("m:idle", "a", value(1), retention=keep)
    kept = await broker.publish("m:kept", "a", value(1), retention=forever)
    await map_engine.elapse(map_engine.s(31))

    async def forgotten() -> bool:
        state = await broker.read_state("m:idle", retention=keep, limit=-1)
        return state.position.epoch != first.position.epoch

    await eventually(forgotten, "the idle channel to be forgotten")
    state = await broker.read_state("m:idle", retention=keep, limit=-1)
    assert state.entries == [] and state.position.offset == 0
    with pytest.raises(UnrecoverablePosition):
        await broker.read_stream("m:idle", retention=keep, since=first.position, limit=0)
    # A persistent map keeps its position however long it sits idle.
    await map_engine.elapse(map_engine.s(100_000))
    assert (await broker.read_stream("m:kept", retention=forever)).position == kept.position


# --------------------------------------------------------------------------- memory engine only


async def test_memory_engine_expires_keys_of_untouched_channels_in_the_background() -> None:
    broker = MemoryMapBroker(cleanup_interval=0.02)
    recorder = MapRecorder()
    broker.set_event_handler(recorder)
    await broker.start()
    try:
        await broker.subscribe("m:bg")
        keep = MapRetention.of(MapMode.EPHEMERAL, key_ttl=0.05)
        await broker.publish("m:bg", "a", value(1), retention=keep)
        # Nobody calls the engine again: only its cleanup task can remove the key.
        await recorder.wait(lambda: ("a", True) in recorder.keys("m:bg"), "the expiry")
    finally:
        await broker.close()
