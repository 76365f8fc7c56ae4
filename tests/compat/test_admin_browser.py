"""The admin page in headless Chromium, over two nodes sharing Redis.

Node A serves the admin page; alice is connected to A (a raw client) and bob to
B (centrifuge-js under Node). Logged in on A, the page must show both nodes,
the channel with both subscribers and their presence; its publish form must
reach bob's centrifuge-js on B, and its disconnect button must end bob's
connection on B. Everything it shows comes from the server API, so this is
also the check that the API works across nodes.

Set ``TIDINGS_ADMIN_SCREENSHOTS=docs`` to write the screenshots used by
docs/admin.md (desktop width) there instead of into the test's temporary dir.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import JsClientFactory
from tests.conftest import ClientFactory, StartServer, make_config, token
from tests.support.redis import delete_keys

pytestmark = [
    pytest.mark.browser,
    pytest.mark.node,
    pytest.mark.redis,
    pytest.mark.timeout(120),
]

PASSWORD = "correct horse battery staple"
TIMEOUT_MS = 20_000
"""Node B's figures reach node A with its next announcement (every 5 s)."""
VIEWPORT = {"width": 1280, "height": 1000}


async def expect_text(locator: Any, text: str) -> None:
    from playwright.async_api import expect

    await expect(locator).to_have_text(text, timeout=TIMEOUT_MS)


async def expect_count(locator: Any, count: int) -> None:
    from playwright.async_api import expect

    await expect(locator).to_have_count(count, timeout=TIMEOUT_MS)


def shots(tmp_path: Path) -> Path:
    chosen = os.environ.get("TIDINGS_ADMIN_SCREENSHOTS")
    directory = Path(chosen) if chosen else tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def test_admin_page_across_two_nodes(
    browser: Any,
    start_server: StartServer,
    js_client: JsClientFactory,
    ws_client: ClientFactory,
    shared_redis: str,
    tmp_path: Path,
) -> None:
    prefix = f"tadmin{uuid.uuid4().hex[:10]}"
    common: dict[str, Any] = {"broker": shared_redis, "broker_prefix": prefix}
    node_a = await start_server(
        make_config(node_name="node-a", admin=True, admin_password=PASSWORD, **common)
    )
    node_b = await start_server(make_config(node_name="node-b", **common))
    try:
        await drive_the_page(
            browser,
            node_a.http_url,
            node_a.ws_url,
            node_b.ws_url,
            js_client,
            ws_client,
            shots(tmp_path),
        )
    finally:
        await delete_keys(shared_redis, prefix)


async def drive_the_page(
    browser: Any,
    admin_url: str,
    url_a: str,
    url_b: str,
    js_client: JsClientFactory,
    ws_client: ClientFactory,
    screenshots: Path,
) -> None:
    bob = await js_client()
    await bob.create(url_b, token=token("bob"))
    bob_client = (await bob.connect())["client"]
    await bob.subscribe("chat:lobby")
    alice = await ws_client(url_a)
    await alice.connect(token("alice"))
    await alice.subscribe("chat:lobby")
    await alice.call("publish", {"channel": "chat:lobby", "data": {"text": "hi bob"}})

    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(f"{admin_url}/admin")

    # 1. Log in (a wrong password first: the form says so).
    await page.fill("#password", "not the password")
    await page.click("#login-form button[type=submit]")
    await expect_text(page.locator("#login-error"), "wrong password or admin token")
    login_area = {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": 420}
    await page.screenshot(path=str(screenshots / "admin-login.png"), clip=login_area)
    await page.fill("#password", PASSWORD)
    await page.click("#login-form button[type=submit]")

    # 2. Two nodes, each with its connection and subscription; the channel on both.
    for name in ("node-a", "node-b"):
        row = page.locator("#nodes tbody tr", has_text=name)
        await expect_text(row.locator("td").nth(1), "1")  # connections
        await expect_text(row.locator("td").nth(3), "1")  # subscriptions
    await expect_count(page.locator("#nodes tbody tr"), 2)
    await expect_text(page.locator("#summary"), "2 nodes, 2 connections")
    lobby = page.locator("#channels tbody tr", has_text="chat:lobby")
    await expect_text(lobby.locator("td").nth(1), "2")

    # 3. The channel: presence from both nodes, and its history.
    await lobby.locator("button").click()
    await expect_count(page.locator("#presence tbody tr"), 2)
    users = await page.locator("#presence tbody tr td:first-child").all_inner_texts()
    assert sorted(users) == ["alice", "bob"]
    await expect_text(page.locator("#history li").first, '{"text":"hi bob"}')

    # 4. Publish from the page: bob's centrifuge-js on node B receives it.
    await page.fill("#publish-data", '{"text": "hello from the admin page"}')
    await page.click("#publish-form button[type=submit]")
    await expect_text(page.locator("#publish-result"), "Published to chat:lobby at offset 2.")
    publication = await bob.log.next(
        "publication", "chat:lobby", where=lambda ctx: ctx["data"].get("text") != "hi bob"
    )
    assert publication["data"] == {"text": "hello from the admin page"}
    assert publication["offset"] == 2
    await expect_text(page.locator("#history li").first, '{"text":"hello from the admin page"}')
    await page.screenshot(path=str(screenshots / "admin-dashboard.png"), full_page=True)

    # 5. Disconnect bob from the presence list: his connection on node B ends, for good.
    bob_row = page.locator("#presence tbody tr", has_text="bob")
    await bob_row.locator("button").click()
    disconnected = await bob.log.next("disconnected", "client")
    assert (disconnected["code"], disconnected["reason"]) == (3503, "force disconnect")
    await expect_text(page.locator("#disconnect-result"), f"Disconnected bob ({bob_client}).")
    await expect_count(page.locator("#presence tbody tr"), 1)
    row_b = page.locator("#nodes tbody tr", has_text="node-b")
    await expect_text(row_b.locator("td").nth(1), "0")
    await context.close()
