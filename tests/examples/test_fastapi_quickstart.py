"""The README's FastAPI quickstart (examples/fastapi_quickstart/app.py), run as written.

The file is started with the command its docstring and the README give (uvicorn with
``--app-dir``), on an ephemeral port, and used as a person would: a raw client with
the login cookie checks every rule the file states, and headless Chromium logs in
through the form and chats.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from tests.conftest import WsClient
from tests.support.fallback import REPO

pytestmark = pytest.mark.timeout(60)

EXAMPLE = REPO / "examples" / "fastapi_quickstart"


@pytest.fixture
async def quickstart() -> AsyncIterator[int]:
    """``uvicorn app:app --app-dir examples/fastapi_quickstart --port 0``; yields its port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "app:app",
        "--app-dir",
        str(EXAMPLE),
        "--port",
        "0",
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    seen: list[str] = []
    try:
        while True:
            line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
            if not line:
                raise AssertionError(f"the quickstart exited: {''.join(seen)}")
            seen.append(line)
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if found:
                break
        yield int(found.group(1))
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 10)


async def log_in(port: int, name: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/login", data={"name": name}, allow_redirects=False
        ) as response,
    ):
        assert response.status == 303
        return response.cookies["session"].value


async def client_with_cookie(port: int, session: str | None) -> WsClient:
    headers = {"Cookie": f"session={session}"} if session else {}
    ws = await connect(
        f"ws://127.0.0.1:{port}/rt/connection/websocket",
        additional_headers=headers,
        open_timeout=5,
    )
    return WsClient(ws)


async def test_the_quickstart_does_what_it_says(quickstart: int) -> None:
    port = quickstart
    stranger = await client_with_cookie(port, None)
    refused = await stranger.call("connect", {})
    assert refused["error"] == {"code": 401, "message": "log in first"}
    await stranger.close()

    ann = await client_with_cookie(port, await log_in(port, "ann"))
    try:
        assert (await ann.connect())["data"] == {"name": "ann"}
        await ann.subscribe("chat")
        reply = await ann.call("publish", {"channel": "chat", "data": {"text": "  hi    there "}})
        assert "error" not in reply
        (message,) = await ann.publications("chat", 1)
        assert message["data"] == {"text": "hi there"} and message["info"]["user"] == "ann"

        invalid = await ann.call("publish", {"channel": "chat", "data": {"txt": "hi"}})
        assert invalid["error"]["code"] == 107

        rolled = await ann.call("rpc", {"method": "roll", "data": {"sides": 6}})
        value = rolled["rpc"]["data"]["value"]
        assert rolled["rpc"]["data"]["sides"] == 6 and 1 <= value <= 6
        (announced,) = await ann.publications("chat", 1)
        assert announced["data"] == {"text": f"ann rolled {value} (d6)"}
    finally:
        await ann.close()

    mallory = await client_with_cookie(port, await log_in(port, "mallory"))
    try:
        await mallory.connect()
        banned = await mallory.call("subscribe", {"channel": "chat"})
        assert banned["error"] == {"code": 403, "message": "banned from the chat"}
    finally:
        await mallory.close()


@pytest.mark.browser
async def test_a_browser_logs_in_and_chats(quickstart: int, browser: Any) -> None:
    page = await browser.new_page()
    try:
        await page.goto(f"http://127.0.0.1:{quickstart}/")
        await page.fill("input[name=name]", "bea")
        await page.click("button")
        await page.locator("#status").get_by_text("connected as bea").wait_for(timeout=10_000)
        await page.fill("#text", "hello from the browser")
        await page.press("#text", "Enter")
        await (
            page.locator("#log").get_by_text("bea: hello from the browser").wait_for(timeout=10_000)
        )
        await page.click("#roll")
        await (
            page.locator("#log").get_by_text(re.compile(r"bea rolled \d")).wait_for(timeout=10_000)
        )
    finally:
        await page.close()


def test_the_readme_quotes_the_file_and_its_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert ".venv/bin/uvicorn app:app --app-dir examples/fastapi_quickstart\n" in readme
    example = (EXAMPLE / "app.py").read_text()
    assert f"```python\n{example}```" in readme, "README.md quotes an older quickstart"
