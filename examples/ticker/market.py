"""A simulated stock market with no I/O: 500 symbols on random walks, one-second bars, orders.

Prices follow geometric Brownian motion in real time (each symbol has its own
volatility, from a quiet 15 % to a wild 90 % a year, scaled up so that the
cents move), with rare jumps (news), a bid/ask spread and traded volume.
Symbols trade at different rates, a few very often and most now and then:
2,800 trades a second in all, which the board publishes as about 2,000 quote
updates (each symbol's latest per tick). :class:`Book` matches the orders people
send against those prices.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgspec

SYMBOLS = 500
TRADES_PER_SECOND = 2800
"""The board publishes each symbol's latest per tick (20 a second): about 2,000 updates."""
VOLATILITY_SCALE = 3.0
"""Real volatility, three times over: a $100 stock moves a few cents a second, so the board
moves visibly without looking fake."""
NAMES_SEED = 2026
"""Every process names the symbols alike (the RPC checks them on any node)."""
JUMP_CHANCE = 0.0002
"""Chance that an update is news: a jump of 1-4 %."""

SECONDS_PER_YEAR = 252 * 6.5 * 3600  # trading seconds


class Quote(msgspec.Struct, omit_defaults=True):
    """One symbol's latest trade and book: a row of the board."""

    symbol: str
    price: float
    change: float
    """Percent since the open."""
    bid: float
    ask: float
    volume: int
    time: int
    """Milliseconds since the epoch (server clock)."""


class Bar(msgspec.Struct, array_like=True):
    """One second of one symbol: ``[time (s), open, high, low, close, volume]``."""

    time: int
    open: float
    high: float
    low: float
    close: float
    volume: int


Symbol = Annotated[str, msgspec.Meta(pattern="^[A-Z]{2,5}$")]
Quantity = Annotated[int, msgspec.Meta(gt=0, le=100_000)]
Price = Annotated[float, msgspec.Meta(gt=0, le=1_000_000)]


class Order(msgspec.Struct, forbid_unknown_fields=True):
    """What the order form sends (the ``order`` RPC's params): no limit is a market order."""

    symbol: Symbol
    side: Literal["buy", "sell"]
    quantity: Quantity
    limit: Price | None = None


class Accepted(msgspec.Struct):
    """The ``order`` RPC's answer; the fills follow on the user's personal channel."""

    id: str
    status: Literal["accepted"] = "accepted"


class Placed(msgspec.Struct):
    """An order on its way to the matching engine (``orders:queue``): with its owner and id."""

    id: str
    user: str
    symbol: str
    side: Literal["buy", "sell"]
    quantity: int
    limit: float | None = None


class Fill(msgspec.Struct):
    """Pushed on ``fills:#<user>``: part (or the rest) of an order was executed."""

    order: str
    symbol: str
    side: Literal["buy", "sell"]
    quantity: int
    price: float
    filled: int
    """Of the order, so far."""
    remaining: int
    status: Literal["partial", "filled", "expired"]
    time: int


def symbol_names(count: int, rng: random.Random) -> list[str]:
    """Pronounceable tickers (``KOVA``, ``TEL``...), unique and sorted."""
    consonants, vowels = "BCDFGHJKLMNPRSTVWZ", "AEIOUY"
    names: set[str] = set()
    while len(names) < count:
        length = rng.choice((3, 4, 4, 4))
        letters = [rng.choice(consonants if i % 2 == 0 else vowels) for i in range(length - 1)] + [
            rng.choice(consonants)
        ]
        names.add("".join(letters))
    return sorted(names)


def all_symbols(count: int = SYMBOLS) -> list[str]:
    """The market's symbols, the same in every process."""
    return symbol_names(count, random.Random(NAMES_SEED))


@dataclass
class Stock:
    symbol: str
    open: float
    price: float
    sigma: float
    """Per-second volatility of the log price."""
    weight: float
    spread: float
    volume: int = 0
    last_move: float = 0.0
    bar: list[float] = field(default_factory=list)
    """The current second's ``[open, high, low, close, volume]``."""


def cents(value: float) -> float:
    return round(value, 2)


class Market:
    """The symbols and their random walks. ``now`` arguments are Unix seconds."""

    def __init__(self, seed: int | None = None, symbols: int = SYMBOLS) -> None:
        self.random = random.Random(seed)
        names = all_symbols(symbols)
        self.stocks: dict[str, Stock] = {}
        for rank, name in enumerate(self.random.sample(names, len(names))):
            price = math.exp(self.random.uniform(math.log(5), math.log(600)))
            annual = self.random.uniform(0.15, 0.9)
            self.stocks[name] = Stock(
                symbol=name,
                open=cents(price),
                price=cents(price),
                sigma=annual / math.sqrt(SECONDS_PER_YEAR) * VOLATILITY_SCALE,
                weight=1 / (rank + 10),  # a few busy symbols, a long quiet tail
                spread=self.random.uniform(0.0002, 0.001),
            )
        self.symbols = sorted(self.stocks)
        self._population = list(self.stocks.values())
        self._weights = list(itertools.accumulate(s.weight for s in self._population))
        self._owed = 0.0

    def step(self, seconds: float, now: float, rate: float = TRADES_PER_SECOND) -> list[Quote]:
        """About ``rate * seconds`` trades, spread over the symbols by their activity."""
        self._owed += rate * seconds
        count = int(self._owed)
        self._owed -= count
        picked = self.random.choices(self._population, cum_weights=self._weights, k=count)
        return [self._trade(stock, now) for stock in picked]

    def _trade(self, stock: Stock, now: float) -> Quote:
        elapsed = min(max(now - stock.last_move, 0.01), 5.0) if stock.last_move else 0.25
        stock.last_move = now
        shock = self.random.gauss(0.0, stock.sigma * math.sqrt(elapsed))
        if self.random.random() < JUMP_CHANCE:
            shock += self.random.choice((-1, 1)) * self.random.uniform(0.01, 0.04)
        stock.price = max(0.01, cents(stock.price * math.exp(shock - stock.sigma**2 * elapsed / 2)))
        traded = 100 * int(self.random.paretovariate(1.5))
        stock.volume += traded
        if stock.bar:
            bar = stock.bar
            bar[1] = max(bar[1], stock.price)
            bar[2] = min(bar[2], stock.price)
            bar[3] = stock.price
            bar[4] += traded
        else:
            stock.bar = [stock.price, stock.price, stock.price, stock.price, traded]
        return self.quote(stock, now)

    def quote(self, stock: Stock, now: float) -> Quote:
        half = max(0.01, cents(stock.price * stock.spread / 2))
        return Quote(
            symbol=stock.symbol,
            price=stock.price,
            change=round((stock.price / stock.open - 1) * 100, 2),
            bid=cents(stock.price - half),
            ask=cents(stock.price + half),
            volume=stock.volume,
            time=int(now * 1000),
        )

    def board(self, now: float) -> list[Quote]:
        return [self.quote(self.stocks[symbol], now) for symbol in self.symbols]

    def close_bars(self, second: int) -> dict[str, Bar]:
        """Every symbol's bar for the second that starts at ``second``; a symbol that did not
        trade gets a flat bar at its price, so every chart has one bar per second."""
        bars = {}
        for stock in self.stocks.values():
            o, h, low, c, v = stock.bar or [stock.price] * 4 + [0]
            bars[stock.symbol] = Bar(second, o, h, low, c, int(v))
            stock.bar = []
        return bars

    def restore(self, quotes: list[Quote]) -> None:
        """Carry on from the board another node published (it ran the market until now)."""
        for quote in quotes:
            stock = self.stocks.get(quote.symbol)
            if stock is not None:
                stock.price = quote.price
                stock.open = cents(quote.price / (1 + quote.change / 100))
                stock.volume = quote.volume


@dataclass
class Resting:
    placed: Placed
    filled: int = 0
    expires: float = 0.0


class Book:
    """The matching engine: market orders fill at once (in up to three parts, as a real
    book would), limit orders when the price reaches them or after ``LIMIT_LIFETIME``."""

    LIMIT_LIFETIME = 300.0

    def __init__(self, market: Market) -> None:
        self.market = market
        self.resting: list[Resting] = []

    def place(self, placed: Placed, now: float) -> None:
        self.resting.append(Resting(placed, expires=now + self.LIMIT_LIFETIME))

    def match(self, now: float) -> list[tuple[str, Fill]]:
        """Fills due now, as ``(user, fill)``."""
        fills: list[tuple[str, Fill]] = []
        for order in list(self.resting):
            placed = order.placed
            stock = self.market.stocks.get(placed.symbol)
            if stock is None:
                self.resting.remove(order)
                continue
            quote = self.market.quote(stock, now)
            price = quote.ask if placed.side == "buy" else quote.bid
            remaining = placed.quantity - order.filled
            if placed.limit is not None and (
                price > placed.limit if placed.side == "buy" else price < placed.limit
            ):
                if now >= order.expires:
                    self.resting.remove(order)
                    fills.append((placed.user, self._fill(order, 0, price, "expired", now)))
                continue
            part = remaining if remaining <= 100 else max(100, remaining // 2 // 100 * 100)
            if self.random_partial() and part < remaining:
                order.filled += part
                fills.append((placed.user, self._fill(order, part, price, "partial", now)))
            else:
                order.filled += remaining
                self.resting.remove(order)
                fills.append((placed.user, self._fill(order, remaining, price, "filled", now)))
        return fills

    def random_partial(self) -> bool:
        return self.market.random.random() < 0.5

    def _fill(
        self,
        order: Resting,
        quantity: int,
        price: float,
        status: Literal["partial", "filled", "expired"],
        now: float,
    ) -> Fill:
        placed = order.placed
        return Fill(
            order=placed.id,
            symbol=placed.symbol,
            side=placed.side,
            quantity=quantity,
            price=price,
            filled=order.filled,
            remaining=placed.quantity - order.filled,
            status=status,
            time=int(now * 1000),
        )
