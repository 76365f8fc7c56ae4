"""A market ticker: 500 simulated symbols, about 2,000 trades a second, a live board and chart,
and an order form whose fills come back on the trader's personal channel.

Run it from the repository root (``npm ci && npm run build`` first, for the chart)::

    tidings serve examples.ticker.app:rt

and open http://127.0.0.1:8000. Over two processes, with the market on whichever
holds the lock in Redis::

    tidings serve examples.ticker.app:rt --broker redis://127.0.0.1:6379 --port 8001
    tidings serve examples.ticker.app:rt --broker redis://127.0.0.1:6379 --port 8002

How it fits together:

* the market (:class:`MarketLoop`, on one process: ``examples/game/leader.py``)
  trades 20 times a second and publishes each batch of quotes to
  ``quotes:board``, the whole board once a second to ``snap:board``, and every
  symbol's one-second bar to ``chart:SYMBOL``;
* ``on_subscribe("quotes:*")`` hands a newcomer every symbol's latest quote in
  its subscribe reply: the last whole board plus the batches since;
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
    SubscribeResult,
    Tidings,
)

HERE = Path(__file__).parent
BOARD = "quotes:board"
SNAPSHOT = "snap:board"
ORDERS = "orders:queue"
TICK = 0.05
PUBLISH_CONCURRENCY = 32

log = logging.getLogger("examples.ticker")


def chart_channel(symbol: str) -> str:
    return f"chart:{symbol}"


def fills_channel(user: str) -> str:
    """The user's personal channel: ``#`` limits it to that user (allow_user_limited_channels)."""
    return f"fills:#{user}"


class Batch(msgspec.Struct):
    """What ``quotes:board`` carries: the trades of one tick, in order."""

    quotes: list[Quote]


class Board(msgspec.Struct):
    """What ``snap:board`` carries: every symbol, as of ``quotes:board``'s ``offset``."""

    offset: int
    epoch: str
    quotes: list[Quote]


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
        latest = await rt.history(SNAPSHOT, limit=1, reverse=True)
        if latest.publications:  # another process ran the market until now: carry on
            market.restore(msgspec.convert(latest.publications[0].data, Board).quotes)
        top = await rt.history(ORDERS, limit=0)
        cursor = (top.offset, top.epoch)
        next_tick = clock()
        second = int(time.time())
        ticks = 0
        while True:
            now = time.time()
            if self.trading:
                # The opening batch is the whole board: pages that subscribed before the
                # market ran learn every symbol from it, not just the ones that trade.
                trades = market.step(TICK, now) if ticks else market.board(now)
                published = await rt.publish(BOARD, Batch(trades))
                ticks += 1
                if ticks % 20 == 1:
                    board = Board(published.offset, published.epoch, market.board(now))
                    await rt.publish(SNAPSHOT, board)
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
    rt.channel("quotes:*", schema=Batch)
    rt.channel("snap:*", schema=Board)
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
    async def board(ctx: SubscribeContext) -> SubscribeResult:
        if ctx.channel != BOARD:
            raise ClientError(102, "unknown channel")

        async def whole_board() -> dict[str, list[Quote]]:
            """Read once the subscription has joined: no batch between it and the live ones
            (one may be in both: the page keeps the newer quote of a symbol)."""
            return {"quotes": await latest_quotes(rt)}

        return SubscribeResult(data=whole_board)

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
    """Every symbol's latest quote: the last whole board, then the batches since it."""
    latest = await rt.history(SNAPSHOT, limit=1, reverse=True)
    if not latest.publications:
        return []
    board = msgspec.convert(latest.publications[0].data, Board)
    quotes = {quote.symbol: quote for quote in board.quotes}
    try:
        since = await rt.history(BOARD, since=(board.offset, board.epoch), limit=-1)
    except ClientError:
        return list(quotes.values())
    for publication in since.publications:
        for quote in msgspec.convert(publication.data, Batch).quotes:
            quotes[quote.symbol] = quote
    return sorted(quotes.values(), key=lambda quote: quote.symbol)


rt = build().rt
