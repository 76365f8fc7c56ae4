"""The chat demo in headless Debian Chromium: real pages, the real centrifuge-js bundle.

Playwright drives ``/usr/bin/chromium`` (never a browser of its own). The server
runs in demo mode: no token secret, anonymous clients in the ``demo`` namespace.
Pages are ready once ``chat.js`` sets ``document.body.dataset.subscribed``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.compat.conftest import EVENT_TIMEOUT, Launch
from tests.conftest import RunningServer, make_config
from tests.support.polling import eventually

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

PAGE_TIMEOUT_MS = 15_000

# Records, inside the page, what the demo's subscription reported to the SDK's listeners.
INSTRUMENT = """() => {
  window.compat = { offsets: [], subscribed: [] };
  const sub = window.tidingsDemo.sub;
  sub.on('publication', (ctx) => window.compat.offsets.push(ctx.offset));
  sub.on('subscribed', (ctx) => window.compat.subscribed.push(
    { wasRecovering: ctx.wasRecovering, recovered: ctx.recovered }));
}"""


async def demo_server(launch: Launch, **overrides: Any) -> RunningServer:
    return await launch(make_config(demo="on", token_hmac_secret="", **overrides))


async def open_demo(browser: Any, server: RunningServer) -> tuple[Any, Any, str]:
    """A page in its own browser context, subscribed; returns its client id too."""
    before = set(server.node.clients)
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    await page.goto(f"{server.http_url}/")
    await page.wait_for_function("document.body.dataset.subscribed === 'true'")
    (client_id,) = set(server.node.clients) - before
    return context, page, client_id


async def say(page: Any, name: str, text: str) -> None:
    await page.fill("#name", name)
    await page.fill("#text", text)
    await page.click("#composer button[type=submit]")
    await expect_count(page.locator("#messages li.message", has_text=text), 1)


async def expect_count(locator: Any, count: int) -> None:
    from playwright.async_api import expect

    await expect(locator).to_have_count(count, timeout=PAGE_TIMEOUT_MS)


async def message_texts(page: Any) -> list[str]:
    texts: list[str] = await page.locator("#messages li.message").all_inner_texts()
    return texts


async def test_two_pages_chat(browser: Any, launch: Launch) -> None:
    """Messages, joins and leaves between two pages; a later page gets the history."""
    server = await demo_server(launch)
    context_b, page_b, _ = await open_demo(browser, server)
    context_a, page_a, a_id = await open_demo(browser, server)

    await expect_count(page_b.locator("li.event.join", has_text=f"visitor {a_id[:8]} joined"), 1)
    await say(page_a, "alice", "hello from A")
    await expect_count(page_b.locator("#messages li.message", has_text="alice:hello from A"), 1)
    await say(page_b, "bob", "hi alice")
    await expect_count(page_a.locator("#messages li.message", has_text="bob:hi alice"), 1)

    context_c, page_c, _ = await open_demo(browser, server)
    history = page_c.locator("#messages li.message.history")
    await expect_count(history, 2)
    assert await history.all_inner_texts() == ["alice:hello from A", "bob:hi alice"]

    await context_a.close()
    await expect_count(page_b.locator("li.event.leave", has_text="alice left"), 1)
    await expect_count(page_c.locator("li.event.leave", has_text="alice left"), 1)
    await context_b.close()
    await context_c.close()


async def test_page_offline_then_back_gets_every_message_once(browser: Any, launch: Launch) -> None:
    """Page B loses the network while A and the server publish; back online, B
    recovers the missed messages: each exactly once, in order."""
    server = await demo_server(launch, ping_interval=1.0, pong_timeout=2.0)
    context_b, page_b, b_id = await open_demo(browser, server)
    await page_b.evaluate(INSTRUMENT)
    _, page_a, _ = await open_demo(browser, server)
    await say(page_a, "alice", "before the drop")
    await expect_count(page_b.locator("#messages li.message", has_text="before the drop"), 1)

    await context_b.set_offline(True)
    await page_b.wait_for_function("document.body.dataset.state !== 'connected'")
    away = [f"while away {n}" for n in range(1, 4)]
    for text in away:
        await say(page_a, "alice", text)
    await server.node.publish("demo:lobby", {"name": "server", "text": "while away 4"})
    await expect_count(page_a.locator("#messages li.message", has_text="while away 4"), 1)

    await context_b.set_offline(False)
    await page_b.wait_for_function("document.body.dataset.state === 'connected'")
    await expect_count(page_b.locator("#messages li.message", has_text="while away 4"), 1)
    expected = [
        "alice:before the drop",
        *(f"alice:{text}" for text in away),
        "server:while away 4",
    ]
    assert await message_texts(page_b) == expected

    compat = await page_b.evaluate("window.compat")
    assert compat["offsets"] == [1, 2, 3, 4, 5], "the SDK delivered a publication twice or lost one"
    assert compat["subscribed"][-1] == {"wasRecovering": True, "recovered": True}
    await eventually(
        lambda: b_id not in server.node.clients,
        what="B's old session to end",
        within=EVENT_TIMEOUT,
    )
