"""The chat example in headless Chromium: real pages, centrifuge-js, the example's server.

Servers run in-process (``start_app``) with the in-memory broker, or as two
``tidings serve examples.chat.app:rt`` processes on Redis. A page is ready once
chat.js sets ``document.body.dataset.subscribed`` (history and presence loaded).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from examples.chat.app import create_app
from tests.conftest import StartApp
from tests.support.polling import eventually
from tests.support.processes import ServerProcess, app_on_redis
from tests.support.redis import unique_prefix

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

PAGE_TIMEOUT_MS = 15_000
REPO = Path(__file__).resolve().parents[2]
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 800}


async def open_chat(
    browser: Any, base_url: str, name: str, *, room: str = "lobby", viewport: Any = None
) -> Any:
    """A page in its own browser context (its own storage: another person), in ``room``."""
    context = await browser.new_context(viewport=viewport or DESKTOP)
    page = await context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    await page.goto(f"{base_url}/#{room}")
    await page.fill("#entry-name", name)
    await page.click("#entry button[type=submit]")
    await page.wait_for_function("document.body.dataset.subscribed === 'true'")
    return page


async def expect_count(locator: Any, count: int) -> None:
    from playwright.async_api import expect

    await expect(locator).to_have_count(count, timeout=PAGE_TIMEOUT_MS)


async def expect_text(locator: Any, text: str) -> None:
    from playwright.async_api import expect

    await expect(locator).to_have_text(text, timeout=PAGE_TIMEOUT_MS)


async def say(page: Any, text: str) -> None:
    """Send ``text`` and wait until the room shows it back (from the server)."""
    await page.fill("#text", text)
    await page.press("#text", "Enter")
    await expect_count(page.locator("#messages li.message", has_text=text), 1)


def messages(page: Any) -> Any:
    return page.locator("#messages li.message")


async def message_lines(page: Any) -> list[str]:
    """``name: text`` per message, in the page's order."""
    lines: list[str] = await page.eval_on_selector_all(
        "#messages li.message",
        "items => items.map(li => li.querySelector('.who').textContent + ': ' +"
        " li.querySelector('.text').textContent)",
    )
    return lines


async def fits_the_width(page: Any) -> bool:
    """Nothing sticks out sideways (no horizontal scrolling at phone width)."""
    result: bool = await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    return result


async def test_two_people_chat_with_presence_typing_and_history(
    browser: Any, start_app: StartApp
) -> None:
    """Names, presence, join/leave, typing, own messages marked, timestamps, refusals
    shown to the sender, and the history a third page gets on entry; one page at
    phone width."""
    rt = create_app(port=0)
    server = await start_app(rt)
    ada = await open_chat(browser, server.http_url, "Ada")
    bob = await open_chat(browser, server.http_url, "Bob", viewport=PHONE)

    # Presence and join, by name (on_connect's info), on both sides.
    await expect_count(ada.locator("#messages li.event.join", has_text="Bob joined"), 1)
    await expect_text(ada.locator("#people li"), ["Ada (you)", "Bob"])
    await expect_text(bob.locator("#people li"), ["Ada", "Bob (you)"])
    await expect_text(ada.locator("#status"), "connected")

    # Typing shows on the other page, and goes once the message is sent.
    await ada.fill("#text", "hello Bo")
    await ada.type("#text", "b")
    await expect_text(bob.locator("#typing"), "Ada is typing…")
    await ada.press("#text", "Enter")
    await expect_count(messages(bob).filter(has_text="hello Bob"), 1)
    await expect_text(bob.locator("#typing"), "")
    await say(bob, "hi Ada")
    await expect_count(messages(ada).filter(has_text="hi Ada"), 1)

    # Each page marks its own messages; every message has the server's time.
    await expect_count(ada.locator("#messages li.message.mine"), 1)
    await expect_count(ada.locator("#messages li.message.mine", has_text="hello Bob"), 1)
    await expect_count(bob.locator("#messages li.message.mine", has_text="hi Ada"), 1)
    stamps = await bob.eval_on_selector_all("#messages time", "ts => ts.map(t => t.dateTime)")
    assert len(stamps) == 2 and all(stamp.startswith("20") for stamp in stamps)

    # The typed channel's refusals, shown to the sender; nothing reaches the room.
    await bob.fill("#text", "   ")
    await bob.press("#text", "Enter")
    await expect_text(bob.locator("#notice"), "Not sent: write something first")
    await bob.fill("#text", "x" * 501)
    await bob.press("#text", "Enter")
    await expect_text(bob.locator("#notice"), "Not sent: too long: at most 500 characters")
    assert await bob.input_value("#text") == "x" * 501  # kept, to be fixed
    assert len((await rt.history("chat:lobby", limit=-1)).publications) == 2

    # A third page gets the history on entry, in order, without the typing signals.
    cy = await open_chat(browser, server.http_url, "Cy")
    await expect_count(messages(cy), 2)
    assert await message_lines(cy) == ["Ada: hello Bob", "Bob: hi Ada"]
    assert await cy.locator("#typing").inner_text() == ""

    # Leaving shows on the others, and presence follows.
    await ada.context.close()
    await expect_count(bob.locator("#messages li.event.leave", has_text="Ada left"), 1)
    await expect_text(cy.locator("#people li"), ["Bob", "Cy (you)"])
    assert await fits_the_width(bob)


async def test_rooms_keep_their_own_messages(browser: Any, start_app: StartApp) -> None:
    server = await start_app(create_app(port=0))
    ada = await open_chat(browser, server.http_url, "Ada")
    bob = await open_chat(browser, server.http_url, "Bob", room="python")
    await say(ada, "in the lobby")
    await say(bob, "in python")

    await ada.click("#rooms a[href='#python']")
    await ada.wait_for_function(
        "document.body.dataset.room === 'python' && document.body.dataset.subscribed === 'true'"
    )
    assert await message_lines(ada) == ["Bob: in python"]
    await expect_text(ada.locator("#people li"), ["Ada (you)", "Bob"])
    await expect_text(ada.locator("#rooms a[aria-current=true]"), "#python2")

    # A new room from the form: the URL says where the page is.
    await bob.fill("#new-room-name", "Knitting Club")
    await bob.press("#new-room-name", "Enter")
    await bob.wait_for_function(
        "document.body.dataset.room === 'knitting-club' && document.body.dataset.subscribed"
    )
    assert bob.url.endswith("#knitting-club")
    assert await messages(bob).count() == 0


async def test_page_offline_then_back_gets_every_message_once(
    browser: Any, start_app: StartApp
) -> None:
    """Bob's page loses the network while Ada and the backend post; back online it
    shows what it missed, each once, in order (recovery, not a history reload)."""
    rt = create_app(port=0, ping_interval=1.0, pong_timeout=2.0)
    server = await start_app(rt)
    ada = await open_chat(browser, server.http_url, "Ada")
    bob = await open_chat(browser, server.http_url, "Bob")
    await bob.evaluate(
        """() => {
          window.seen = { offsets: [], subscribed: [] };
          const sub = window.chat.room.sub;
          sub.on('publication', (ctx) => window.seen.offsets.push(ctx.offset));
          sub.on('subscribed', (ctx) => window.seen.subscribed.push(
            { wasRecovering: ctx.wasRecovering, recovered: ctx.recovered }));
        }"""
    )
    await say(ada, "before the drop")
    await expect_count(messages(bob).filter(has_text="before the drop"), 1)

    await bob.context.set_offline(True)
    await bob.wait_for_function("document.body.dataset.state !== 'connected'")
    await expect_text(bob.locator("#status"), "connecting")
    away = [f"while away {n}" for n in range(1, 4)]
    for text in away:
        await say(ada, text)
    await rt.publish("chat:lobby", {"text": "from the backend"})
    await expect_count(messages(ada).filter(has_text="from the backend"), 1)

    await bob.context.set_offline(False)
    await bob.wait_for_function("document.body.dataset.subscribed === 'true'")
    await expect_count(messages(bob).filter(has_text="from the backend"), 1)
    assert await message_lines(bob) == [
        "Ada: before the drop",
        *(f"Ada: {text}" for text in away),
        "tidings: from the backend",
    ]
    seen = await bob.evaluate("window.seen")
    assert seen["offsets"] == [1, 2, 3, 4, 5], "a message was delivered twice or lost"
    assert seen["subscribed"][-1] == {"wasRecovering": True, "recovered": True}
    await expect_text(bob.locator("#status"), "connected")
    await expect_text(bob.locator("#people li"), ["Ada", "Bob (you)"])


# --------------------------------------------------------------------------- two processes


@pytest.fixture
async def two_chat_servers(shared_redis: str) -> AsyncIterator[list[ServerProcess]]:
    """``tidings serve examples.chat.app:rt`` twice, on one Redis (own key prefix)."""
    async with app_on_redis(
        "examples.chat.app:rt", shared_redis, unique_prefix("tchat")
    ) as servers:
        yield servers


@pytest.mark.redis
async def test_two_processes_on_redis(browser: Any, two_chat_servers: list[ServerProcess]) -> None:
    """Ada on one process, Bob on the other: messages, typing, presence and history
    travel through Redis."""
    first, second = (f"http://127.0.0.1:{server.port}" for server in two_chat_servers)
    ada = await open_chat(browser, first, "Ada")
    bob = await open_chat(browser, second, "Bob")
    await expect_text(ada.locator("#people li"), ["Ada (you)", "Bob"])
    await expect_count(ada.locator("#messages li.event.join", has_text="Bob joined"), 1)

    await ada.fill("#text", "typing across processe")
    await ada.type("#text", "s")
    await expect_text(bob.locator("#typing"), "Ada is typing…")
    await ada.press("#text", "Enter")
    await expect_count(messages(bob).filter(has_text="typing across processes"), 1)
    await say(bob, "received")
    await expect_count(messages(ada).filter(has_text="received"), 1)

    cy = await open_chat(browser, second, "Cy")
    assert await message_lines(cy) == ["Ada: typing across processes", "Bob: received"]
    await eventually(
        lambda: cy.evaluate(
            "async () => (await window.chat.centrifuge.rpc('rooms', {})).data[0].people === 3"
        ),
        what="the rooms RPC to count the lobby's subscribers on both processes",
        within=10,
    )
