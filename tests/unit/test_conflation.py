"""Latest-value conflation: bounded by keys, latest wins, safe positions, rate limit."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.conflation import Conflator

pytestmark = pytest.mark.timeout(30)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_keeps_the_latest_item_per_key_in_order_of_last_update() -> None:
    conflator: Conflator[str] = Conflator()
    for key, item in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("c", "c1"), ("b", "b2")]:
        conflator.offer(key, item)
    assert len(conflator) == 3 and conflator.superseded == 2
    assert conflator.drain() == ["a2", "c1", "b2"]
    assert not conflator and conflator.drain() == []


def test_memory_is_bounded_by_keys_not_by_rate() -> None:
    """A ticker: 1,000 symbols, 200,000 updates, nobody draining."""
    conflator: Conflator[int] = Conflator()
    rng = random.Random(7)
    latest: dict[str, int] = {}
    for n in range(200_000):
        key = f"SYM{rng.randrange(1000)}"
        conflator.offer(key, n)
        latest[key] = n
        assert len(conflator) <= 1000
    assert len(conflator) == len(latest)
    assert conflator.superseded == 200_000 - len(latest)
    assert sorted(conflator.drain()) == sorted(latest.values())


def test_rate_limit_spaces_drains() -> None:
    clock = FakeClock()
    conflator: Conflator[str] = Conflator(max_frequency=10, clock=clock)
    assert conflator.interval == pytest.approx(0.1)
    assert not conflator.ready()  # nothing pending
    conflator.offer("a", "a1")
    assert conflator.ready()
    assert conflator.drain() == ["a1"]
    conflator.offer("a", "a2")
    conflator.offer("a", "a3")
    assert not conflator.ready() and conflator.due() == pytest.approx(100.1)
    clock.now += 0.099
    assert not conflator.ready()
    clock.now += 0.002
    assert conflator.ready() and conflator.drain() == ["a3"]
    # An empty drain does not count: the next item may go at once after a quiet spell.
    clock.now += 5
    assert conflator.drain() == []
    conflator.offer("b", "b1")
    assert conflator.ready()


def test_without_a_rate_limit_every_drain_is_allowed() -> None:
    conflator: Conflator[str] = Conflator()
    conflator.offer("a", "a1")
    assert conflator.drain() == ["a1"]
    conflator.offer("a", "a2")
    assert conflator.ready() and conflator.interval == 0


@pytest.mark.parametrize("frequency", [0, -1.0])
def test_max_frequency_must_be_positive(frequency: float) -> None:
    with pytest.raises(ValueError, match="max_frequency must be above 0"):
        Conflator(max_frequency=frequency)


def test_clear_forgets_pending_items() -> None:
    conflator: Conflator[str] = Conflator()
    conflator.offer("a", "a1")
    conflator.clear()
    assert conflator.drain() == []


def test_a_slow_and_a_rate_limited_subscriber_end_with_every_latest_value() -> None:
    """2,000 updates/s over 1,000 keys for 3 s: one subscriber asks for 10 updates/s,
    one drains whenever it can (every 50 ms); both end with the server's state."""
    clock = FakeClock()
    limited: Conflator[tuple[str, int]] = Conflator(max_frequency=10, clock=clock)
    slow: Conflator[tuple[str, int]] = Conflator(clock=clock)
    seen: dict[str, dict[str, int]] = {"limited": {}, "slow": {}}
    writes = {"limited": 0, "slow": 0}
    state: dict[str, int] = {}
    rng = random.Random(3)
    for tick in range(6000):  # one update each 0.5 ms
        clock.now += 0.0005
        key = f"k{rng.randrange(1000)}"
        state[key] = tick
        limited.offer(key, (key, tick))
        slow.offer(key, (key, tick))
        for name, conflator, can_take in (
            ("limited", limited, True),
            ("slow", slow, tick % 100 == 0),
        ):
            if can_take and conflator.ready():
                for k, v in conflator.drain():
                    seen[name][k] = v
                    writes[name] += 1
    clock.now += 1
    for name, conflator in (("limited", limited), ("slow", slow)):
        for k, v in conflator.drain():
            seen[name][k] = v
            writes[name] += 1
        assert seen[name] == state
    assert writes["limited"] <= 31 * 1000  # at most one write per key per drain, 10 drains/s
    assert writes["limited"] < 6000 and writes["slow"] < 6000  # conflation saved writes


@given(st.lists(st.one_of(st.sampled_from("abcdef"), st.just("DRAIN")), max_size=200))
def test_a_recovery_position_never_passes_an_undelivered_latest_change(steps: list[str]) -> None:
    """Items carry stream offsets; the client may be cut off after any item it applied.
    After it applied item o, each key whose latest change is <= o has that change, so a
    recovery from o misses nothing."""
    conflator: Conflator[tuple[str, int]] = Conflator()
    latest: dict[str, int] = {}
    client: dict[str, int] = {}
    offset = 0
    for step in [*steps, "DRAIN"]:
        if step != "DRAIN":
            offset += 1
            latest[step] = offset
            conflator.offer(step, (step, offset))
            continue
        for key, position in conflator.drain():
            client[key] = position
            for k, change in latest.items():
                if change <= position:
                    assert client.get(k) == change, (k, change, position)
    assert client == latest
