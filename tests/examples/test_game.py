"""The arena example without a browser: its rules, its handlers, its leader lock.

The rules are plain Python (``examples/game/arena.py``); the handlers run through
``TestClient`` exactly as for a page; the lock runs against the shared Redis
with a key prefix of the test's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import msgspec
import pytest

from examples.game.app import INPUTS, STATE, create_app, player_id
from examples.game.arena import (
    GEM_RADIUS,
    HEIGHT,
    LEAVE_AFTER,
    PLAYER_RADIUS,
    SPEED,
    STEER_HOLD,
    Arena,
    Snapshot,
    Steer,
)
from examples.game.leader import RedisLock, lock_for, run_as_leader
from tests.conftest import ClientFactory, StartApp
from tests.support.polling import eventually
from tests.support.redis import delete_keys, unique_prefix
from tidings import ClientError, Tidings
from tidings.protocol import fossil
from tidings.testing import TestClient

pytestmark = pytest.mark.timeout(30)

KEY_A = "a" * 32
KEY_B = "b" * 32


# --------------------------------------------------------------------------- rules


def test_a_player_joins_with_its_first_input_and_moves_where_it_steers() -> None:
    arena = Arena(seed=1)
    arena.steer(Steer("p1", "ann", 1, 0), now=0.0)
    start = arena.players["p1"].x
    for n in range(10):
        arena.step(0.05, now=n * 0.05)
    assert arena.players["p1"].x == pytest.approx(min(start + SPEED * 0.5, 960 - PLAYER_RADIUS))
    arena.steer(Steer("p1", "ann", -1, -1), now=0.5)
    x, y = arena.players["p1"].x, arena.players["p1"].y
    arena.step(0.05, now=0.55)
    diagonal = SPEED * 0.05 / 2**0.5
    assert (arena.players["p1"].x, arena.players["p1"].y) == pytest.approx(
        (max(x - diagonal, PLAYER_RADIUS), max(y - diagonal, PLAYER_RADIUS))
    )


def test_walls_hold_players_in() -> None:
    arena = Arena(seed=2)
    arena.steer(Steer("p1", "ann", 0, 1), now=0.0)
    for n in range(100):
        arena.step(0.05, now=min(n * 0.05, STEER_HOLD / 2))
    assert arena.players["p1"].y == HEIGHT - PLAYER_RADIUS


def test_a_held_direction_lapses_unless_repeated() -> None:
    """A page that loses its network with a key down stops its player within a second."""
    arena = Arena(seed=3)
    arena.steer(Steer("p1", "ann", 1, 0), now=0.0)
    arena.step(0.05, now=STEER_HOLD + 0.01)
    assert (arena.players["p1"].dx, arena.players["p1"].dy) == (0, 0)


def test_touching_a_gem_scores_and_moves_the_gem() -> None:
    arena = Arena(seed=4)
    arena.steer(Steer("p1", "ann", 0, 0), now=0.0)
    gem = arena.gems[0]
    player = arena.players["p1"]
    player.x, player.y = gem[0] + PLAYER_RADIUS + GEM_RADIUS - 1, gem[1]
    arena.step(0.05, now=0.0)
    assert player.score == 1
    assert arena.gems[0] != gem


def test_players_who_left_stay_a_while_then_go() -> None:
    arena = Arena(seed=5)
    arena.steer(Steer("p1", "ann", 0, 0), now=0.0)
    arena.steer(Steer("p2", "bob", 0, 0), now=0.0)
    arena.still_here({"p1"}, now=LEAVE_AFTER)
    assert set(arena.players) == {"p1", "p2"}
    arena.still_here({"p1"}, now=LEAVE_AFTER + 0.1)
    assert set(arena.players) == {"p1"}


def test_a_snapshot_restores_the_game() -> None:
    """A node that takes over the loop carries on from the last snapshot."""
    arena = Arena(seed=6)
    arena.steer(Steer("p1", "ann", 1, 0), now=0.0)
    arena.players["p1"].score = 7
    for n in range(5):
        arena.step(0.05, now=n * 0.05)
    wire = msgspec.json.encode(arena.snapshot())
    successor = Arena(seed=99)
    successor.restore(msgspec.json.decode(wire, type=Snapshot), now=1.0)
    assert successor.snapshot() == arena.snapshot()


# --------------------------------------------------------------------------- handlers


@pytest.fixture
async def game() -> AsyncIterator[Tidings]:
    rt = create_app(port=0)
    async with rt:
        yield rt


async def test_connect_needs_a_name_and_a_key(game: Tidings) -> None:
    for data in ({"name": "", "key": KEY_A}, {"name": "ann", "key": "short"}, {"name": "x" * 17}):
        with pytest.raises(ClientError) as refused:
            async with TestClient(game, data=data):
                pass
        assert refused.value.code == 400, data


async def test_inputs_are_validated_and_the_loop_publishes_the_players(game: Tidings) -> None:
    async with TestClient(game, data={"name": " ann ", "key": KEY_A}) as client:
        sub = await client.subscribe(STATE)
        with pytest.raises(ClientError) as refused:
            await client.publish(INPUTS, {"dx": 2, "dy": 0})
        assert refused.value.code == 107 and "$.dx" in refused.value.message
        with pytest.raises(ClientError):
            await client.subscribe(INPUTS)  # the loop's input, nobody else's to read
        await client.publish(INPUTS, {"dx": 1, "dy": 0})
        me = player_id(KEY_A)
        while True:
            snapshot = msgspec.convert((await sub.next(timeout=5)).data, Snapshot)
            if snapshot.players:
                break
        (player,) = snapshot.players
        assert (player.id, player.name, player.dx) == (me, "ann", 1)
        first = snapshot
        while snapshot.tick < first.tick + 3:
            snapshot = msgspec.convert((await sub.next(timeout=5)).data, Snapshot)
        assert snapshot.players[0].x > player.x  # the server moved it


async def test_a_newcomer_gets_the_latest_snapshot_in_its_subscribe_reply(game: Tidings) -> None:
    async with TestClient(game, data={"name": "ann", "key": KEY_A}) as ann:
        sub = await ann.subscribe(STATE)
        await ann.publish(INPUTS, {"dx": 0, "dy": 1})
        while not (await sub.next(timeout=5)).data["players"]:
            pass
        async with TestClient(game, data={"name": "bob", "key": KEY_B}) as bob:
            late = await bob.subscribe(STATE)
            snapshot = msgspec.convert(late.result["data"], Snapshot)
            assert [p.name for p in snapshot.players] == ["ann"]


# --------------------------------------------------------------------------- leader lock


class CountingLock(RedisLock):
    """A Redis lock that counts how often its process asked for it."""

    asked = 0

    async def acquire(self) -> bool:
        self.asked += 1
        return await super().acquire()


async def test_one_lock_holder_runs_the_loop_and_another_takes_over(shared_redis: str) -> None:
    """Two processes' locks on one key: one loop runs; when its holder stops, the other's
    loop starts within the lease."""
    prefix = unique_prefix("tgame")
    key = f"{prefix}:game:leader"
    running: list[str] = []

    def loop_of(name: str) -> Callable[[], Coroutine[Any, Any, None]]:
        async def loop() -> None:
            running.append(name)
            try:
                await asyncio.Event().wait()
            finally:
                running.remove(name)

        return loop

    lock_a, lock_b = CountingLock(shared_redis, key, 1.0), CountingLock(shared_redis, key, 1.0)
    first = asyncio.create_task(run_as_leader(lock_a, loop_of("a"), ttl=1.0, retry=0.1))
    second: asyncio.Task[None] | None = None
    try:
        await eventually(lambda: running == ["a"], "the first process to lead")
        second = asyncio.create_task(run_as_leader(lock_b, loop_of("b"), ttl=1.0, retry=0.1))
        await eventually(lambda: lock_b.asked >= 3, "the second to ask a few times")
        assert running == ["a"], "two loops ran at once"
        first.cancel()  # the leader stops (and lets go of its lock)
        await eventually(lambda: running == ["b"], "the second process to take over", within=5)
    finally:
        for task in (first, second):
            if task is not None:
                task.cancel()
        await asyncio.gather(first, *([second] if second else []), return_exceptions=True)
        await delete_keys(shared_redis, prefix)


async def test_a_leader_that_dies_is_replaced_when_its_lease_runs_out(shared_redis: str) -> None:
    """A leader killed without a goodbye (its lock never released) is replaced after the TTL."""
    prefix = unique_prefix("tgame")
    key = f"{prefix}:game:leader"
    dead = RedisLock(shared_redis, key, 1.0)
    assert await dead.acquire()
    await dead.close()  # like kill -9: it holds the lock and never renews it
    started = asyncio.Event()

    async def loop() -> None:
        started.set()
        await asyncio.Event().wait()

    heir = asyncio.create_task(
        run_as_leader(RedisLock(shared_redis, key, 1.0), loop, ttl=1.0, retry=0.1)
    )
    try:
        loop_time = asyncio.get_running_loop().time
        began = loop_time()
        await asyncio.wait_for(started.wait(), 5)
        assert 0.5 < loop_time() - began < 2.5
    finally:
        heir.cancel()
        await asyncio.gather(heir, return_exceptions=True)
        await delete_keys(shared_redis, prefix)


def test_the_lock_follows_the_broker() -> None:
    assert type(lock_for("memory", "k")).__name__ == "LocalLock"
    assert type(lock_for("redis://127.0.0.1:6379/15", "k")).__name__ == "RedisLock"
    with pytest.raises(ValueError, match="redis\\+cluster"):
        lock_for("redis+cluster://127.0.0.1:7000", "k")


# --------------------------------------------------------------------------- delta compression


async def test_pages_that_ask_get_each_tick_as_a_small_fossil_delta(
    start_app: StartApp, ws_client: ClientFactory
) -> None:
    """Two raw clients watch the same ticks, one with ``delta: "fossil"``: applying its
    deltas rebuilds exactly what the other receives whole, in a fraction of the bytes."""
    server = await start_app(create_app(port=0))
    plain, compact = await ws_client(server.ws_url), await ws_client(server.ws_url)
    for client, key in ((plain, KEY_A), (compact, KEY_B)):
        await client.connect(data={"name": key[0], "key": key})
    await plain.subscribe(STATE)
    reply = await compact.subscribe(STATE, delta="fossil")
    assert reply["delta"] is True
    for client in (plain, compact):
        await client.call("publish", {"channel": INPUTS, "data": {"dx": 1, "dy": 1}})
    rebuilt: dict[int, bytes] = {}  # offset -> the snapshot rebuilt from what came
    sent: dict[int, int] = {}  # offset -> bytes of data on the wire
    previous = b""
    while len(rebuilt) < 40:  # two seconds of ticks
        (pub,) = await compact.publications(STATE, 1)
        data = pub["data"].encode()
        previous = fossil.apply(previous, data) if pub.get("delta") else data
        rebuilt[pub["offset"]], sent[pub["offset"]] = previous, len(data)
    whole: dict[int, bytes] = {}
    while not set(rebuilt) <= set(whole):
        (pub,) = await plain.publications(STATE, 1)
        whole[pub["offset"]] = msgspec.json.encode(pub["data"])
    for offset, data in rebuilt.items():
        assert msgspec.json.decode(data) == msgspec.json.decode(whole[offset])
    ratio = sum(sent.values()) / sum(len(whole[offset]) for offset in rebuilt)
    assert ratio < 0.35, f"deltas took {ratio:.0%} of the bytes"
