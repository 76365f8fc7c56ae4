"""The ticker example without a browser: its market, its matching engine, its handlers.

The market is plain Python (``examples/ticker/market.py``); the handlers run
through ``TestClient`` as for a page, with the market running in-process.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import msgspec
import pytest

from examples.ticker.app import BOARD, Ticker, build, fills_channel, latest_quotes, user_id
from examples.ticker.market import (
    SYMBOLS,
    TRADES_PER_SECOND,
    Book,
    Fill,
    Market,
    Placed,
    all_symbols,
)
from tests.support.polling import eventually
from tidings import ClientError
from tidings.testing import TestClient

pytestmark = pytest.mark.timeout(30)

KEY = "c" * 32


# --------------------------------------------------------------------------- the market


def test_500_symbols_trade_2800_times_a_second_about_2000_quote_updates() -> None:
    market = Market(seed=1)
    assert len(market.symbols) == SYMBOLS == len(set(market.symbols))
    assert market.symbols == all_symbols()  # every process names them alike
    counts: dict[str, int] = {}
    quotes = []
    for n in range(200):  # ten seconds of ticks
        for quote in market.step(0.05, now=1000 + n * 0.05):
            counts[quote.symbol] = counts.get(quote.symbol, 0) + 1
            quotes.append(quote)
    assert len(quotes) == pytest.approx(TRADES_PER_SECOND * 10, rel=0.01)
    ticks = [quotes[n : n + TRADES_PER_SECOND // 20] for n in range(0, len(quotes), 140)]
    updates = sum(len({quote.symbol for quote in tick}) for tick in ticks) / 10
    assert updates == pytest.approx(2000, rel=0.1)  # the latest per symbol per tick
    ranked = sorted(counts.values(), reverse=True)
    assert ranked[0] > 10 * ranked[len(ranked) // 2]  # a few busy symbols, a quiet tail
    for quote in quotes:
        assert 0 < quote.bid < quote.ask and quote.bid <= quote.price <= quote.ask
        assert quote.price == round(quote.price, 2)


def test_prices_walk_randomly_without_running_away() -> None:
    """Log returns are centred and their spread is what the volatility says."""
    market = Market(seed=2)
    start = {symbol: stock.price for symbol, stock in market.stocks.items()}
    for n in range(1200):  # a minute
        market.step(0.05, now=1000 + n * 0.05)
    returns = [math.log(market.stocks[s].price / start[s]) for s in start]
    mean = sum(returns) / len(returns)
    spread = (sum((r - mean) ** 2 for r in returns) / len(returns)) ** 0.5
    assert abs(mean) < 0.01 and 0.001 < spread < 0.05


def test_bars_hold_each_second_and_every_symbol_gets_one() -> None:
    market = Market(seed=3)
    traded = market.step(1.0, now=1000.5)
    bars = market.close_bars(1000)
    assert set(bars) == set(market.symbols)
    for quote in traded:
        bar = bars[quote.symbol]
        assert bar.low <= quote.price <= bar.high
    for symbol, bar in bars.items():
        assert bar.time == 1000 and bar.low <= min(bar.open, bar.close)
        assert bar.close == market.stocks[symbol].price
    assert all(bar.volume == 0 for bar in market.close_bars(1001).values())


def test_market_orders_fill_whole_and_limits_wait_for_their_price() -> None:
    market = Market(seed=4)
    book = Book(market)
    symbol = market.symbols[0]
    stock = market.stocks[symbol]
    book.place(Placed("o1", "u1", symbol, "buy", 1000), now=0.0)
    limit = round(stock.price * 0.5, 2)
    book.place(Placed("o2", "u2", symbol, "buy", 300, limit=limit), now=0.0)
    fills: list[Fill] = []
    for n in range(10):
        fills += [fill for user, fill in book.match(now=n * 0.05) if user == "u1"]
    assert sum(fill.quantity for fill in fills) == 1000
    assert fills[-1].status == "filled" and fills[-1].remaining == 0
    assert [f.filled for f in fills] == sorted(f.filled for f in fills)
    (waiting,) = book.resting
    assert waiting.placed.id == "o2"
    stock.price = round(stock.price * 0.4, 2)  # the price falls through the limit
    ((user, fill),) = book.match(now=1.0)
    assert user == "u2" and fill.price <= limit


def test_limit_orders_expire() -> None:
    market = Market(seed=5)
    book = Book(market)
    symbol = market.symbols[0]
    book.place(Placed("o1", "u1", symbol, "sell", 100, limit=1e6), now=0.0)
    assert book.match(now=1.0) == []
    ((_, fill),) = book.match(now=Book.LIMIT_LIFETIME + 1)
    assert (fill.status, fill.quantity, fill.remaining) == ("expired", 0, 100)
    assert book.resting == []


# --------------------------------------------------------------------------- handlers


@pytest.fixture
async def ticker() -> AsyncIterator[Ticker]:
    app = build(port=0)
    async with app.rt:
        yield app


async def test_orders_are_validated_by_their_schema(ticker: Ticker) -> None:
    async with TestClient(ticker.rt, data={"key": KEY}) as client:
        symbol = all_symbols()[0]
        for params, code, detail in (
            ({"symbol": symbol, "side": "hold", "quantity": 1}, 107, "$.side"),
            ({"symbol": symbol, "side": "buy", "quantity": 0}, 107, "$.quantity"),
            ({"symbol": "acme", "side": "buy", "quantity": 1}, 107, "$.symbol"),
            ({"symbol": symbol, "side": "buy", "quantity": 1, "limit": -1}, 107, "$.limit"),
            ({"symbol": "ZZZZZ", "side": "buy", "quantity": 1}, 404, "unknown symbol"),
        ):
            with pytest.raises(ClientError) as refused:
                await client.rpc("order", params)
            assert refused.value.code == code and detail in refused.value.message, params


async def test_an_order_is_filled_on_the_traders_personal_channel(ticker: Ticker) -> None:
    async with TestClient(ticker.rt, data={"key": KEY}) as client:
        assert client.connect_result["data"] == {"user": user_id(KEY)}
        assert fills_channel(user_id(KEY)) in client.connect_result["subs"]
        symbol = all_symbols()[0]
        answer = await client.rpc("order", {"symbol": symbol, "side": "sell", "quantity": 500})
        channel = fills_channel(user_id(KEY))

        async def fills() -> list[Fill]:
            history = await ticker.rt.history(channel, limit=-1)
            return [msgspec.convert(pub.data, Fill) for pub in history.publications]

        async def filled() -> bool:
            so_far = await fills()
            return bool(so_far) and so_far[-1].status == "filled"

        await eventually(filled, "the order to be filled", within=5)
        done = await fills()
        assert {fill.order for fill in done} == {answer["id"]}
        assert sum(fill.quantity for fill in done) == 500
    with pytest.raises(ClientError):  # someone else's fills are not theirs to read
        async with TestClient(ticker.rt, data={"key": "d" * 32}) as other:
            await other.subscribe(channel)


async def test_the_board_holds_every_symbol_from_the_open_and_moves(ticker: Ticker) -> None:
    """The map's state is the board: every symbol as soon as the market runs, then newer."""
    await eventually(lambda: _has_board(ticker), "the whole board", within=5)
    first = {quote.symbol: quote.time for quote in await latest_quotes(ticker.rt)}
    assert sorted(first) == all_symbols()

    async def moved() -> bool:
        now = {quote.symbol: quote.time for quote in await latest_quotes(ticker.rt)}
        return sum(now[s] > first[s] for s in first) >= 100

    await eventually(moved, "100 symbols to trade", within=5)


async def test_a_map_subscriber_gets_the_whole_board_then_each_change(ticker: Ticker) -> None:
    """What a page's newMapSubscription gets: every symbol at once, then newer quotes."""
    await eventually(lambda: _has_board(ticker), "the whole board", within=5)
    async with TestClient(ticker.rt, data={"key": KEY}) as client:
        board = await client.subscribe_map(BOARD)
        assert sorted(board.state) == all_symbols()
        first = dict(board.state)
        change = await board.next(timeout=2)
        assert change.data["time"] >= first[change.data["symbol"]]["time"]
        with pytest.raises(ClientError) as refused:  # the board is the market's alone
            await client.publish(BOARD, {"symbol": "X"})
        assert refused.value.code in (103, 107)


async def _has_board(ticker: Ticker) -> bool:
    return len(await latest_quotes(ticker.rt)) == SYMBOLS
