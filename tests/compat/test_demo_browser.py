"""Demo mode's status page in headless Debian Chromium.

With no application and no token secret, ``/`` says what runs and opens a
WebSocket with the packaged centrifuge-js to show that the connection works
(through whatever proxy sits in front). The chat that used to be served here
is the chat example now: tests/examples/test_chat_browser.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.compat.conftest import Launch
from tests.conftest import make_config

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]


async def test_the_status_page_connects(browser: Any, launch: Launch) -> None:
    from playwright.async_api import expect

    server = await launch(make_config(demo="on", token_hmac_secret=""))
    page = await browser.new_page()
    await page.goto(f"{server.http_url}/")
    await expect(page.locator("#check")).to_have_text("connected (websocket)", timeout=15_000)
    assert len(server.node.clients) == 1
    assert "examples.chat.app:rt" in await page.inner_text("body")
