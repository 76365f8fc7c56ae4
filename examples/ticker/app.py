"""A market ticker: 500 simulated symbols, about 2,000 quote updates a second, a live board
and chart, and an order form whose fills come back on the trader's personal channel.

Run it from the repository root (``npm ci && npm run build`` first, for the chart)::

    tidings serve examples.ticker.app:rt

and open http://127.0.0.1:8000. Over two processes, with the market on whichever
holds the lock in Redis::

    tidings serve examples.ticker.app:rt --broker redis://127.0.0.1:6379 --port 8001
    tidings serve examples.ticker.app:rt --broker redis://127.0.0.1:6379 --port 8002

How it fits together:

* the market (:class:`MarketLoop`, on one process: ``examples/game/leader.py``)
  trades 20 times a second and writes each symbol's latest quote to its key in
  the map channel ``quotes:board`` (``rt.map_publish``), and every symbol's one-second bar to
  ``chart:SYMBOL``;
* a page subscribes to ``quotes:board`` as a map (centrifuge-js
  ``newMapSubscription``): it gets every symbol's latest quote at once, then
  each change, and catches up after a dropped network;
* a page connects with a random key of its own; ``on_connect`` makes the user id
  from it and subscribes the connection to ``fills:#<user>``;
* the ``order`` RPC validates the order (:class:`~examples.ticker.market.Order`),
  queues it on ``orders:queue`` and answers with its id; the market's matching
  engine reads the queue and publishes the fills to ``fills:#<user>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import msgspec

from examples.game.leader import lock_for, run_as_leader
from examples.ticker.market import (
    Accepted,
    Bar,
    Book,
    Market,
    Order,
    Placed,
    Quote,
    all_symbols,
)
from tidings import (
    ClientError,
    ConnectContext,
    ConnectResult,
    RPCContext,
    SubscribeContext,
    Tidings,
)

HERE = Path(__file__).parent
BOARD = "quotes:board"
ORDERS = "orders:queue"
TICK = 0.05
PUBLISH_CONCURRENCY = 32

log = logging.getLogger("examples.ticker")


def chart_channel(symbol: str) -> str:
    return f"chart:{symbol}"


def fills_channel(user: str) -> str:
    """The user's personal channel: ``#`` limits it to that user (allow_user_limited_channels)."""
    return f"fills:#{user}"


class Trader(msgspec.Struct):
    """What a page sends with its connect command: a random key of its own."""

    key: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]


class MarketLoop:
    """Runs the :class:`Market` and its :class:`Book` on the process that holds the lock."""

    def __init__(self, rt: Tidings, *, seed: int | None = None) -> None:
        self.rt = rt
        self.seed = seed
        self.task: asyncio.Task[None] | None = None
        self.trading = True
        """Off: the market stands still (the loop goes on matching orders)."""
        self._still = asyncio.Event()
        self._bars: asyncio.Task[None] | None = None
        self.symbols = frozenset(all_symbols())

    async def start(self) -> None:
        """Campaign for the lock from now on (``on_startup``: in every process)."""
        lock = lock_for(self.rt.config.broker, f"{self.rt.config.broker_prefix}:ticker:leader")
        self.task = asyncio.create_task(run_as_leader(lock, self.run))

    async def stop(self) -> None:
        """Stop the market and let go of the lock, so another process takes over at once."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def halt(self) -> None:
        """Stop trading, and return once the last trade is published (a trading halt)."""
        self.trading = False
        self._still.clear()
        await self._still.wait()

    async def run(self) -> None:
        rt = self.rt
        clock = asyncio.get_running_loop().time
        market = Market(self.seed)
        book = Book(market)
        market.restore(await latest_quotes(rt))  # another process may have run it until now
        await self._publish_quotes(market.board(time.time()))  # every symbol from the open
        top = await rt.history(ORDERS, limit=0)
        cursor = (top.offset, top.epoch)
        next_tick = clock()
        second = int(time.time())
        while True:
            now = time.time()
            if self.trading:
                await self._publish_quotes(market.step(TICK, now))
            else:
                self._still.set()
            orders, cursor = await self._read_orders(cursor)
            for placed in orders:
                book.place(placed, now)
            for user, fill in book.match(now):
                await rt.publish(fills_channel(user), fill)
            if int(now) > second:
                bars = market.close_bars(second)
                second = int(now)
                if self._bars is None or self._bars.done():  # else: that second's bars are lost
                    self._bars = asyncio.create_task(self._publish_bars(bars))
            next_tick += TICK
            delay = next_tick - clock()
            if delay < -TICK:  # fell behind (a paused process): do not race to catch up
                next_tick = clock()
            await asyncio.sleep(max(0.0, delay))

    async def _publish_quotes(self, quotes: list[Quote]) -> None:
        """Each symbol's latest quote of the tick to its key of the board, side by side.

        Only the latest per symbol: writes run concurrently, and two of one key
        could land out of order. At most ``PUBLISH_CONCURRENCY`` at once: the
        Redis engine's connection pool refuses more than 100 concurrent commands.
        """
        latest = {quote.symbol: quote for quote in quotes}
        limit = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def write(quote: Quote) -> None:
            async with limit:
                await self.rt.map_publish(BOARD, quote.symbol, quote)

        await asyncio.gather(*(write(quote) for quote in latest.values()))

    async def _publish_bars(self, bars: dict[str, Bar]) -> None:
        """Every symbol's bar, next to the ticks (on Redis, 500 publications take ~0.2 s).

        At most ``PUBLISH_CONCURRENCY`` at once: the Redis engine's connection pool
        refuses more than 100 concurrent commands instead of queueing them.
        """
        limit = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def publish(symbol: str, bar: Bar) -> None:
            async with limit:
                await self.rt.publish(chart_channel(symbol), bar)

        await asyncio.gather(*(publish(symbol, bar) for symbol, bar in bars.items()))

    async def _read_orders(self, cursor: tuple[int, str]) -> tuple[list[Placed], tuple[int, str]]:
        try:
            read = await self.rt.history(ORDERS, since=cursor, limit=-1)
        except ClientError as exc:
            if exc.code != 112:  # 112: the queue was reset (Redis flushed): start over
                raise
            top = await self.rt.history(ORDERS, limit=0)
            return [], (top.offset, top.epoch)
        if not read.publications:
            return [], (read.offset, read.epoch)
        orders = [msgspec.convert(pub.data, Placed) for pub in read.publications]
        return orders, (read.publications[-1].offset, read.epoch)


def user_id(key: str) -> str:
    """The public id of the trader holding ``key`` (the key itself is never shown)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class Ticker(NamedTuple):
    rt: Tidings
    market: MarketLoop


def build(config: str | Path | Any = HERE / "tidings.toml", **overrides: Any) -> Ticker:
    """The application (handlers, typed channels, pages) and its market."""
    rt = Tidings(config, **overrides)
    rt.static("/", HERE / "static")
    rt.channel("quotes:*", schema=Quote)  # every write to the board's keys, too
    rt.channel("chart:*", schema=Bar)
    rt.channel("orders:*", schema=Placed)
    market = MarketLoop(rt)
    rt.on_startup(market.start)
    rt.on_shutdown(market.stop)

    @rt.on_connect
    async def connect(ctx: ConnectContext) -> ConnectResult:
        try:
            trader = msgspec.convert(ctx.data, Trader)
        except msgspec.ValidationError as exc:
            raise ClientError(400, f"cannot connect: {exc}") from None
        user = user_id(trader.key)
        return ConnectResult(user, data={"user": user}, channels=[fills_channel(user)])

    @rt.on_subscribe("quotes:*")
    async def board(ctx: SubscribeContext) -> None:
        if ctx.channel != BOARD:
            raise ClientError(102, "unknown channel")
        return None  # the map's state is the whole board

    @rt.on_subscribe("chart:*")
    async def chart(ctx: SubscribeContext) -> None:
        if ctx.channel.partition(":")[2] not in market.symbols:
            raise ClientError(102, "unknown symbol")

    @rt.rpc("order")
    async def order(ctx: RPCContext, params: Order) -> Accepted:
        if params.symbol not in market.symbols:
            raise ClientError(404, f"unknown symbol {params.symbol}")
        placed = Placed(
            id=secrets.token_hex(6),
            user=ctx.user,
            symbol=params.symbol,
            side=params.side,
            quantity=params.quantity,
            limit=params.limit,
        )
        await rt.publish(ORDERS, placed)
        return Accepted(placed.id)

    return Ticker(rt, market)


async def latest_quotes(rt: Tidings) -> list[Quote]:
    """Every symbol's latest quote: the board's state."""
    state = await rt.map_state(BOARD)
    return [msgspec.convert(item.data, Quote) for item in state.items]


rt = build().rt
