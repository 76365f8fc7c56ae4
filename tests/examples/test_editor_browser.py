"""The editor example in headless Chromium: Yjs + CodeMirror pages, the example's server.

The page's bundle comes from npm (``npm run build``, which ``make test`` runs).
Servers run in-process (``start_app``) with the in-memory broker, or as two
``tidings serve examples.editor.app:rt`` processes on Redis. A page is ready
once editor.js sets ``document.body.dataset.synced`` (its sync RPC answered).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from examples.editor.app import BUNDLE, Editor
from tests.conftest import StartApp
from tests.support.processes import ServerProcess, app_on_redis
from tests.support.redis import unique_prefix

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

PAGE_TIMEOUT_MS = 15_000
REPO = Path(__file__).resolve().parents[2]
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture(autouse=True)
def bundle() -> None:
    if not BUNDLE.is_file():
        pytest.skip(f"{BUNDLE} is not built: run `npm ci && npm run build` (make test does)")


@pytest.fixture
async def editors() -> AsyncIterator[list[Editor]]:
    """Editors made by a test; their document stores are closed at the end."""
    made: list[Editor] = []
    yield made
    for editor in made:
        await editor.close()


async def open_editor(
    browser: Any, base_url: str, name: str, *, doc: str = "notes", viewport: Any = None
) -> Any:
    """A page in its own browser context (another person), on ``doc``, synced."""
    context = await browser.new_context(viewport=viewport or DESKTOP)
    page = await context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    await page.goto(f"{base_url}/#{doc}")
    await page.fill("#entry-name", name)
    await page.click("#entry button[type=submit]")
    await page.wait_for_function("document.body.dataset.synced === 'true'")
    return page


async def type_at(page: Any, where: str, text: str) -> None:
    """Type ``text`` at the start or the end of the document, key by key."""
    await page.click(".cm-content")
    await page.keyboard.press("Control+Home" if where == "start" else "Control+End")
    await page.keyboard.type(text)


async def text_of(page: Any) -> str:
    text: str = await page.evaluate("window.editor.text()")
    return text


async def shows(page: Any, text: str) -> None:
    """Wait until the page's document (and so its editor) holds exactly ``text``."""
    await page.wait_for_function("(text) => window.editor.text() === text", arg=text)
    editor_text: str = await page.evaluate("window.editor.doc.view.state.doc.toString()")
    assert editor_text == text


async def expect_text(locator: Any, text: Any) -> None:
    from playwright.async_api import expect

    await expect(locator).to_have_text(text, timeout=PAGE_TIMEOUT_MS)


async def test_two_pages_edit_one_document(
    browser: Any, start_app: StartApp, editors: list[Editor]
) -> None:
    """Both type, both converge; each sees the other's name and cursor; a newcomer gets
    the document whole; one page at phone width."""
    editors.append(Editor(port=0))
    server = await start_app(editors[0].rt)
    ada = await open_editor(browser, server.http_url, "Ada")
    bob = await open_editor(browser, server.http_url, "Bob", viewport=PHONE)
    await expect_text(ada.locator("#people li"), ["Ada (you)", "Bob"])
    await expect_text(bob.locator("#people li"), ["Ada", "Bob (you)"])

    await type_at(ada, "start", "Shopping list\n")
    await shows(bob, "Shopping list\n")
    await type_at(bob, "end", "- milk\n")
    await type_at(ada, "end", "- eggs\n")
    expected = "Shopping list\n- milk\n- eggs\n"
    await shows(ada, expected)
    await shows(bob, expected)

    # Awareness: each page draws the other's cursor with its name.
    await expect_text(ada.locator(".cm-ySelectionInfo"), "Bob")
    await expect_text(bob.locator(".cm-ySelectionInfo"), "Ada")

    # A newcomer: the document in the sync reply, then live edits.
    cy = await open_editor(browser, server.http_url, "Cy")
    assert await text_of(cy) == expected
    await type_at(cy, "end", "- bread\n")
    await shows(ada, expected + "- bread\n")
    await expect_text(ada.locator("#documents a[aria-current=true] strong"), "notes")

    # Nothing sticks out sideways at phone width.
    assert await bob.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    # Leaving takes the name and the cursor away.
    await bob.context.close()
    await expect_text(ada.locator("#people li"), ["Ada (you)", "Cy"])
    await expect_text(ada.locator(".cm-ySelectionInfo"), "Cy")


async def test_page_offline_edits_both_ways_then_converges(
    browser: Any, start_app: StartApp, editors: list[Editor]
) -> None:
    """Bob loses the network; both keep typing; back online, both pages hold both
    edits, each exactly once."""
    editors.append(Editor(port=0, ping_interval=1.0, pong_timeout=2.0))
    server = await start_app(editors[0].rt)
    ada = await open_editor(browser, server.http_url, "Ada")
    bob = await open_editor(browser, server.http_url, "Bob")
    await type_at(ada, "start", "middle\n")
    await shows(bob, "middle\n")

    await bob.context.set_offline(True)
    await bob.wait_for_function("document.body.dataset.state !== 'connected'")
    await expect_text(bob.locator("#status"), "connecting")
    await type_at(bob, "end", "Bob wrote this offline\n")
    await type_at(ada, "start", "Ada wrote this meanwhile\n")
    await shows(ada, "Ada wrote this meanwhile\nmiddle\n")
    assert await text_of(bob) == "middle\nBob wrote this offline\n"

    await bob.context.set_offline(False)
    expected = "Ada wrote this meanwhile\nmiddle\nBob wrote this offline\n"
    await shows(bob, expected)
    await shows(ada, expected)
    await expect_text(bob.locator("#status"), "connected")

    # And it goes on working live, both ways.
    await type_at(bob, "end", "back\n")
    await shows(ada, expected + "back\n")
    state = await editors[0].documents.state("notes")
    assert state  # the server's copy holds it too: a newcomer gets exactly this
    cy = await open_editor(browser, server.http_url, "Cy")
    assert await text_of(cy) == expected + "back\n"


# --------------------------------------------------------------------------- two processes


@pytest.fixture
async def two_editor_servers(shared_redis: str) -> AsyncIterator[list[ServerProcess]]:
    """``tidings serve examples.editor.app:rt`` twice, on one Redis (own key prefix)."""
    async with app_on_redis(
        "examples.editor.app:rt", shared_redis, unique_prefix("teditor")
    ) as servers:
        yield servers


@pytest.mark.redis
async def test_two_processes_on_redis(
    browser: Any, two_editor_servers: list[ServerProcess]
) -> None:
    """Ada on one process, Bob on the other: edits, presence and cursors through Redis,
    and the document kept in Redis for a newcomer on either."""
    first, second = (f"http://127.0.0.1:{server.port}" for server in two_editor_servers)
    ada = await open_editor(browser, first, "Ada")
    bob = await open_editor(browser, second, "Bob")
    await expect_text(ada.locator("#people li"), ["Ada (you)", "Bob"])
    await type_at(ada, "start", "from process one\n")
    await shows(bob, "from process one\n")
    await type_at(bob, "end", "from process two\n")
    await shows(ada, "from process one\nfrom process two\n")
    await expect_text(ada.locator(".cm-ySelectionInfo"), "Bob")

    cy = await open_editor(browser, first, "Cy")
    assert await text_of(cy) == "from process one\nfrom process two\n"
