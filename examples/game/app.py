"""A multiplayer arena: players steer; the server moves them and publishes the state
at 20 ticks a second.

Run it from the repository root::

    tidings serve examples.game.app:rt

and open http://127.0.0.1:8000 in two tabs. Over two processes, with the loop
on whichever holds the lock in Redis::

    tidings serve examples.game.app:rt --broker redis://127.0.0.1:6379 --port 8001
    tidings serve examples.game.app:rt --broker redis://127.0.0.1:6379 --port 8002

How it fits together:

* a page connects with a name and a random key of its own (kept for the tab's
  lifetime, so a reload is the same player); ``on_connect`` makes the player id
  from the key, and the name travels in the connection's ``info``;
* it publishes the direction it holds into ``input:arena``; ``on_publish``
  validates it (:class:`~examples.game.arena.Move`) and stamps it with the player;
* the game loop (:class:`GameLoop`, on one process: see ``leader.py``) reads
  the inputs from that channel's history at every tick, steps the
  :class:`~examples.game.arena.Arena` and publishes a snapshot to ``game:arena``;
* ``on_subscribe`` hands a newcomer (or a page back from a dropped network) the
  latest snapshot in its subscribe reply, so it draws the arena at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Annotated, Any

import msgspec

from examples.game.arena import Arena, Move, Name, Snapshot, Steer
from examples.game.leader import lock_for, run_as_leader
from tidings import (
    ClientError,
    ConnectContext,
    ConnectResult,
    PublishContext,
    SubscribeContext,
    SubscribeResult,
    Tidings,
)

HERE = Path(__file__).parent
STATE = "game:arena"
INPUTS = "input:arena"
TICK_RATE = 20

log = logging.getLogger("examples.game")


class Join(msgspec.Struct):
    """What a page sends with its connect command."""

    name: Name
    key: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]


def player_id(key: str) -> str:
    """The public id of the player holding ``key``: others see this, never the key itself,
    so nobody can steer someone else's player."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class GameLoop:
    """Owns the :class:`Arena` on the process that holds the leader lock."""

    def __init__(self, rt: Tidings, *, tick_rate: int = TICK_RATE, seed: int | None = None) -> None:
        self.rt = rt
        self.period = 1 / tick_rate
        self.seed = seed
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Campaign for the lock from now on (``on_startup``: in every process)."""
        lock = lock_for(self.rt.config.broker, f"{self.rt.config.broker_prefix}:game:leader")
        self.task = asyncio.create_task(run_as_leader(lock, self.run))

    async def stop(self) -> None:
        """Stop the loop and let go of the lock, so another process takes over at once."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def run(self) -> None:
        """The loop: inputs in, one step, the snapshot out, every ``period`` seconds."""
        clock = asyncio.get_running_loop().time
        arena = Arena(self.seed)
        latest = await self.rt.history(STATE, limit=1, reverse=True)
        if latest.publications:  # another process ran the loop until now: carry on
            arena.restore(msgspec.convert(latest.publications[0].data, Snapshot), clock())
        cursor = await self._inputs_top()
        next_tick = next_presence = clock()
        while True:
            now = clock()
            steers, cursor = await self._read_inputs(cursor)
            for steer in steers:
                arena.steer(steer, now)
            if now >= next_presence:
                present = await self.rt.presence(STATE)
                arena.still_here({client.user for client in present.values()}, now)
                next_presence = now + 1.0
            arena.step(self.period, now)
            if arena.players or arena.tick % TICK_RATE == 0:
                await self.rt.publish(STATE, arena.snapshot())
            next_tick += self.period
            delay = next_tick - clock()
            if delay < -self.period:  # fell behind (a paused process): do not race to catch up
                next_tick = clock()
            await asyncio.sleep(max(0.0, delay))

    async def _inputs_top(self) -> tuple[int, str]:
        top = await self.rt.history(INPUTS, limit=0)
        return top.offset, top.epoch

    async def _read_inputs(self, cursor: tuple[int, str]) -> tuple[list[Steer], tuple[int, str]]:
        """The steering published since ``cursor``, in order, and the cursor after it."""
        try:
            read = await self.rt.history(INPUTS, since=cursor, limit=-1)
        except ClientError as exc:
            if exc.code != 112:  # 112: the input stream was reset (Redis flushed): start over
                raise
            return [], await self._inputs_top()
        if not read.publications:
            return [], (read.offset, read.epoch)
        steers = [msgspec.convert(pub.data, Steer) for pub in read.publications]
        return steers, (read.publications[-1].offset, read.epoch)


def create_app(config: str | Path | Any = HERE / "tidings.toml", **overrides: Any) -> Tidings:
    """The application: handlers, typed channels, pages and the game loop."""
    rt = Tidings(config, **overrides)
    rt.static("/", HERE / "static")
    rt.channel("game:*", schema=Snapshot)
    rt.channel("input:*", schema=Steer)
    game = GameLoop(rt)
    rt.on_startup(game.start)
    rt.on_shutdown(game.stop)

    @rt.on_connect
    async def connect(ctx: ConnectContext) -> ConnectResult:
        try:
            join = msgspec.convert(ctx.data, Join)
        except msgspec.ValidationError as exc:
            raise ClientError(400, f"cannot join: {exc}") from None
        name = join.name.strip()
        if not name:
            raise ClientError(400, "cannot join: the name is empty")
        player = player_id(join.key)
        return ConnectResult(player, info={"name": name}, data={"player": player})

    @rt.on_subscribe("game:*")
    async def watch(ctx: SubscribeContext) -> SubscribeResult:
        if ctx.channel != STATE:
            raise ClientError(102, "unknown channel")

        async def latest() -> Any:
            """Read once the subscription has joined: no tick between it and the live ones."""
            read = await rt.history(STATE, limit=1, reverse=True)
            return read.publications[0].data if read.publications else None

        return SubscribeResult(data=latest)

    @rt.on_publish("input:*")
    async def steer(ctx: PublishContext, move: Move) -> Steer:
        if ctx.channel != INPUTS:
            raise ClientError(102, "unknown channel")
        return Steer(ctx.user, ctx.info["name"], move.dx, move.dy)

    return rt


rt = create_app()
