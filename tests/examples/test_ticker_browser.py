"""The ticker example in headless Chromium: the board, the chart, orders, slow pages, drops.

Pages expose what they hold in ``window.ticker``; the tests read what the table
*shows* from the DOM. To compare a page with the server, a test stops the market
(``market.halt()``) and reads the server's latest quote of every symbol
(``latest_quotes``). Waits poll conditions with deadlines. With
``TIDINGS_EXAMPLE_SCREENSHOTS=docs`` the first test writes the screenshots of
docs/examples.md.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from examples.ticker.app import Ticker, build, fills_channel, latest_quotes, user_id
from examples.ticker.market import SYMBOLS, Fill, all_symbols
from tests.conftest import StartApp
from tests.support.polling import eventually
from tests.support.processes import NodeProcess, spawn_tidings
from tests.support.redis import delete_keys, unique_prefix
from tidings import Tidings
from tidings.testing import TestClient

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

PAGE_TIMEOUT_MS = 15_000
WAIT = 20.0
"""Deadline for one awaited condition (the market, Chromium and the test share 2 cores)."""
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}

SHOWN = """() => Object.fromEntries([...document.querySelectorAll('#board tbody tr')]
  .map((tr) => [tr.dataset.symbol, tr.querySelector('td[data-column=price]').textContent]))"""
"""What the table shows: symbol -> the price text."""


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: the test's own directory, or ``docs/examples/`` (for docs/examples.md)
    when ``TIDINGS_EXAMPLE_SCREENSHOTS=docs``."""
    if os.environ.get("TIDINGS_EXAMPLE_SCREENSHOTS") == "docs":
        return Path(__file__).resolve().parents[2] / "docs" / "examples"
    return tmp_path


@pytest.fixture(scope="module", autouse=True)
def chart_bundle() -> None:
    """The chart's bundle (``npm run build``), built once if missing; without npm, a skip."""
    import shutil
    import subprocess

    bundle = Path(__file__).resolve().parents[2] / "examples/ticker/static/dist/chart.js"
    if bundle.exists():
        return
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the ticker's chart bundle cannot be built")
    subprocess.run(["npm", "run", "build"], cwd=bundle.parents[4], check=True, timeout=120)


async def open_trader(browser: Any, base_url: str, viewport: dict[str, int] | None = None) -> Any:
    context = await browser.new_context(viewport=viewport or DESKTOP)
    page = await context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    await page.goto(f"{base_url}/")
    await page.wait_for_function(
        "document.body.dataset.subscribed === 'true' && document.body.dataset.symbols"
    )
    return page


async def shown(page: Any) -> dict[str, str]:
    result: dict[str, str] = await page.evaluate(SHOWN)
    return result


async def truth(rt: Tidings) -> dict[str, str]:
    return {quote.symbol: f"{quote.price:.2f}" for quote in await latest_quotes(rt)}


async def whole_board(app: Ticker) -> bool:
    return len(await latest_quotes(app.rt)) == SYMBOLS


async def ends_on_the_latest_prices(app: Ticker, *pages: Any) -> None:
    """Stop the market, then every page must show the server's latest price of every symbol."""
    await asyncio.wait_for(app.market.halt(), WAIT)
    latest = await truth(app.rt)
    for page in pages:

        async def same(page: Any = page) -> bool:
            return await shown(page) == latest

        try:
            await eventually(same, "the page to show the latest prices", within=WAIT)
        except BaseException:
            now = await shown(page)
            wrong = {s: (now.get(s), latest[s]) for s in latest if now.get(s) != latest[s]}
            print(f"{page.url} {page.viewport_size}: {len(wrong)} symbols differ (shown, latest):")
            print(list(wrong.items())[:10], await page.evaluate("window.ticker.quotes.size"))
            raise


async def test_board_and_chart_update_and_a_late_page_sees_every_symbol_at_once(
    browser: Any, start_app: StartApp, screenshots: Path
) -> None:
    app = build(port=0)
    server = await start_app(app.rt)
    first = await open_trader(browser, server.http_url)  # its connection starts the market
    await eventually(lambda: whole_board(app), "a whole board", within=WAIT)
    await first.wait_for_function("window.ticker.bars >= 2")  # two seconds of bars

    late = await open_trader(browser, server.http_url, PHONE)
    assert await late.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert await late.evaluate("document.body.dataset.symbols") == str(SYMBOLS)
    assert sorted(await shown(late)) == all_symbols()

    for page in (first, late):  # the table moves
        before = await shown(page)

        async def moved(page: Any = page, before: dict[str, str] = before) -> bool:
            now = await shown(page)
            return sum(now[s] != before[s] for s in before) >= 50

        await eventually(moved, "50 prices to change on the page", within=WAIT)

    # The chart opened with the bars from before the page came, and grows.
    await late.wait_for_function("document.body.dataset.chart === window.ticker.chosen")
    bars = await late.evaluate("window.ticker.bars")
    assert bars >= 2
    await late.wait_for_function(f"window.ticker.bars > {bars}")
    await late.click("#board tbody tr:nth-child(3)")
    chosen = await late.evaluate("window.ticker.chosen")
    await late.wait_for_function(
        f"document.body.dataset.chart === {chosen!r} && window.ticker.bars >= 2"
    )
    assert await late.input_value("#order-symbol") == chosen
    await late.click("#order button")  # an order, so the screenshots show a fill
    await late.locator("#orders li[data-status=filled]").wait_for()
    await first.screenshot(path=str(screenshots / "ticker-desktop.png"))
    await late.screenshot(path=str(screenshots / "ticker-phone.png"), full_page=True)

    await ends_on_the_latest_prices(app, first, late)

    # With the market still, sorting by change puts the biggest gainers first; again, the
    # biggest losers.
    header = first.locator("#board th[data-key=change] button")
    changes = """() => [...document.querySelectorAll('#board tbody tr')].map((tr) =>
        window.ticker.quotes.get(tr.dataset.symbol).change)"""
    await header.click()
    order = await first.evaluate(changes)
    assert order == sorted(order, reverse=True) and order[0] > order[-1]
    await header.click()
    assert await first.evaluate(changes) == sorted(order)
    assert first.errors == late.errors == []


async def test_an_order_is_refused_by_its_schema_or_filled_on_the_personal_channel(
    browser: Any, start_app: StartApp
) -> None:
    app = build(port=0)
    server = await start_app(app.rt)
    page = await open_trader(browser, server.http_url, PHONE)
    await page.wait_for_function("window.ticker.chosen")
    await page.fill("#order-quantity", "0")
    await page.click("#order button")
    await page.locator("#order-error", has_text="$.quantity").wait_for()
    assert await page.locator("#orders li").count() == 0

    await page.fill("#order-quantity", "300")
    await page.check("input[name=side][value=sell]")
    await page.click("#order button")
    await page.locator("#orders li[data-status=filled]").wait_for()
    fills = await page.evaluate("window.ticker.fills.map((f) => f.fill)")
    assert sum(fill["quantity"] for fill in fills) == 300
    assert {fill["side"] for fill in fills} == {"sell"}
    assert (await page.text_content("#order-error")) == ""


async def test_a_throttled_page_and_a_paused_page_end_on_the_latest_prices_connected(
    browser: Any, start_app: StartApp
) -> None:
    """One page runs on a CPU 20 times slower, another freezes its main thread for 5 s,
    while the market trades 2,000 times a second: both end on the latest price of every
    symbol, and neither was disconnected."""
    app = build(port=0)
    server = await start_app(app.rt)
    slow = await open_trader(browser, server.http_url)
    frozen = await open_trader(browser, server.http_url)
    await eventually(lambda: whole_board(app), "a whole board", within=WAIT)
    clients = set(app.rt.node.clients)
    cdp = await slow.context.new_cdp_session(slow)
    await cdp.send("Emulation.setCPUThrottlingRate", {"rate": 20})
    began = asyncio.get_running_loop().time()
    await frozen.evaluate("() => { const end = Date.now() + 5000; while (Date.now() < end) {} }")
    assert asyncio.get_running_loop().time() - began >= 5
    await cdp.send("Emulation.setCPUThrottlingRate", {"rate": 1})
    await ends_on_the_latest_prices(app, slow, frozen)
    for page in (slow, frozen):
        assert await page.evaluate("window.ticker.disconnects") == 0
        assert await page.evaluate("document.body.dataset.state") == "connected"
    assert set(app.rt.node.clients) == clients


SET_HIDDEN = """(hidden) => {
  Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
  document.dispatchEvent(new Event("visibilitychange"));
}"""
"""What the browser does when a tab goes to the background (or comes back)."""


async def updates_per_second(page: Any, seconds: float = 2.0) -> float:
    loop = asyncio.get_running_loop()
    before, began = await page.evaluate("window.ticker.updates"), loop.time()
    await asyncio.sleep(seconds)  # a window to count in, not a wait for something to happen
    after = await page.evaluate("window.ticker.updates")
    return float(after - before) / (loop.time() - began)


async def test_a_background_page_gets_one_update_per_symbol_a_second_then_all_again(
    browser: Any, start_app: StartApp
) -> None:
    """A hidden page asks for one update per symbol per second (the server conflates: the
    latest quote of each symbol, never a backlog); shown again, it gets every update."""
    app = build(port=0)
    server = await start_app(app.rt)
    page = await open_trader(browser, server.http_url)
    assert await updates_per_second(page) > 1200

    await page.evaluate(SET_HIDDEN, True)
    await page.wait_for_function(
        "document.body.dataset.rate === '1' && document.body.dataset.subscribed === 'true'"
    )
    assert await updates_per_second(page, 3.0) <= SYMBOLS * 1.1
    await ends_on_the_latest_prices(app, page)  # conflated, yet the latest of every symbol

    app.market.trading = True
    await page.evaluate(SET_HIDDEN, False)
    await page.wait_for_function(
        "document.body.dataset.rate === '0' && document.body.dataset.subscribed === 'true'"
    )
    assert await updates_per_second(page) > 1200
    assert await page.evaluate("window.ticker.disconnects") == 0


async def test_a_page_offline_gets_every_fill_once_and_the_latest_prices(
    browser: Any, start_app: StartApp
) -> None:
    """The trader's page loses its network; meanwhile the same trader (another device)
    sends orders that are filled. Back online, the page shows every fill exactly once, in
    order, and the latest price of every symbol."""
    app = build(port=0)
    server = await start_app(app.rt)
    page = await open_trader(browser, server.http_url)
    await page.wait_for_function("window.ticker.chosen")
    await page.click("#order button")  # 100 of the chosen symbol, before the drop
    await page.locator("#orders li[data-status=filled]").wait_for()
    key = await page.evaluate("localStorage.getItem('tidings-market-key')")
    channel = fills_channel(user_id(key))

    await page.context.set_offline(True)
    await page.wait_for_function("document.body.dataset.state !== 'connected'")
    assert await page.text_content("#status") != "connected"  # the page says so
    async with TestClient(app.rt, data={"key": key}) as device:
        for symbol in all_symbols()[:3]:
            await device.rpc("order", {"symbol": symbol, "side": "buy", "quantity": 700})

        async def all_filled() -> bool:
            history = await app.rt.history(channel, limit=-1)
            fills = [msgspec.convert(pub.data, Fill) for pub in history.publications]
            return sum(fill.status == "filled" for fill in fills) == 4

        await eventually(all_filled, "the three orders to be filled", within=WAIT)
    await page.context.set_offline(False)
    await page.wait_for_function(
        "document.body.dataset.state === 'connected' && document.body.dataset.subscribed === 'true'"
    )
    history = await app.rt.history(channel, limit=-1)
    expected = [pub.offset for pub in history.publications]

    async def every_fill() -> bool:
        got = await page.evaluate("window.ticker.fills.map((f) => f.offset)")
        return bool(got == expected)

    await eventually(every_fill, "every fill, once, in order", within=WAIT)
    assert await page.locator("#orders li[data-status=filled]").count() == 4
    await ends_on_the_latest_prices(app, page)
    assert page.errors == []


async def test_two_processes_on_redis_a_page_on_the_follower(
    browser: Any, shared_redis: str
) -> None:
    """``tidings serve examples.ticker.app:rt --broker redis://...`` twice: the market runs
    on the first; a page on the second sees every symbol at once, a moving board, the
    chart's history, and the fill of its order, all through Redis."""
    prefix = unique_prefix("tticker")
    nodes: list[NodeProcess] = []
    try:
        args = ["--broker", shared_redis, "--broker-prefix", prefix, "--shutdown-timeout", "1s"]
        for name in ("node1", "node2"):
            nodes.append(await spawn_tidings("examples.ticker.app:rt", *args, name=name))
        first, second = nodes
        leader = await open_trader(browser, f"http://127.0.0.1:{first.port}")
        await first.wait_for_line("leader lock: this process runs the loop")
        await leader.wait_for_function(f"window.ticker.quotes.size === {SYMBOLS}")
        await leader.wait_for_function("window.ticker.bars >= 2")

        page = await open_trader(browser, f"http://127.0.0.1:{second.port}", PHONE)
        assert await page.evaluate("document.body.dataset.symbols") == str(SYMBOLS)
        before = await shown(page)

        async def moved() -> bool:
            now = await shown(page)
            return sum(now[s] != before[s] for s in before) >= 50

        await eventually(moved, "the board to move on node2", within=WAIT)
        await page.wait_for_function("document.body.dataset.chart === window.ticker.chosen")
        assert await page.evaluate("window.ticker.bars") >= 2
        await page.click("#order button")
        await page.locator("#orders li[data-status=filled]").wait_for()
        assert not any("runs the loop" in line for line in second.lines)
        assert page.errors == leader.errors == []
    finally:
        for node in nodes:
            await node.stop()
        await delete_keys(shared_redis, prefix)
