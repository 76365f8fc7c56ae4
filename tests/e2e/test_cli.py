"""The ``tidings`` command as users run it: a real process, signals, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.conftest import API_KEY, SECRET, WsClient, token
from tests.support.http import http

CONFIG = """
[channels.namespaces.chat]
history_size = 10
history_ttl = "60s"
allow_subscribe_for_client = true
"""


class ServerProcess:
    def __init__(self, process: asyncio.subprocess.Process, port: int, log: list[str]) -> None:
        self.process = process
        self.port = port
        self.log = log


async def spawn(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "serve",
        "--port",
        "0",
        *args,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert process.stderr is not None
    log: list[str] = []
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
        assert line, f"server exited early: {log}"
        log.append(line)
        match = re.search(r"listening on http://[\d.]+:(\d+)", line)
        if match:
            return ServerProcess(process, int(match.group(1)), log)


@pytest.fixture
async def configured(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    path = tmp_path / "tidings.toml"
    path.write_text(CONFIG)
    server = await spawn(
        "--config",
        str(path),
        "--shutdown-timeout",
        "3s",
        env={"TIDINGS_TOKEN_HMAC_SECRET": SECRET, "TIDINGS_API_KEY": API_KEY},
    )
    yield server
    if server.process.returncode is None:
        server.process.kill()
        await server.process.wait()


async def test_sigterm_disconnects_clients_with_3001_and_exits_0(configured: ServerProcess) -> None:
    ws = await connect(f"ws://127.0.0.1:{configured.port}/connection/websocket", compression=None)
    client = WsClient(ws)
    await client.connect(token())
    await client.subscribe("chat:bye")
    configured.process.send_signal(signal.SIGTERM)
    assert await client.closed(timeout=10) == (3001, "shutdown")
    assert await asyncio.wait_for(configured.process.wait(), 10) == 0


async def test_publish_command_reaches_a_subscriber(configured: ServerProcess) -> None:
    ws = await connect(f"ws://127.0.0.1:{configured.port}/connection/websocket", compression=None)
    client = WsClient(ws)
    await client.connect(token())
    await client.subscribe("chat:cli")
    publisher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "publish",
        "chat:cli",
        '{"text": "from the cli"}',
        "--url",
        f"http://127.0.0.1:{configured.port}",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "TIDINGS_API_KEY": API_KEY},
    )
    out, _ = await asyncio.wait_for(publisher.communicate(), 20)
    assert publisher.returncode == 0
    assert json.loads(out)["offset"] == 1
    (publication,) = await client.publications("chat:cli", 1)
    assert publication["data"] == {"text": "from the cli"}
    await ws.close()


async def test_no_configuration_serves_the_demo_loudly() -> None:
    server = await spawn(env={"TIDINGS_TOKEN_HMAC_SECRET": "", "TIDINGS_API_KEY": ""})
    try:
        assert any("DEMO MODE" in line for line in server.log)
        status, headers, body = await http(server.port, "GET", "/")
        assert status == 200 and b"/vendor/centrifuge.js" in body
        status, headers, body = await http(server.port, "GET", "/vendor/centrifuge.js")
        if status == 200:
            assert headers["content-type"].startswith("text/javascript") and b"Centrifuge" in body
        else:  # npm packages not installed here: the page says how to get them
            assert status == 404 and b"npm ci" in body
        # Anonymous access is confined to the demo namespace.
        ws = await connect(f"ws://127.0.0.1:{server.port}/connection/websocket", compression=None)
        client = WsClient(ws)
        await client.connect()
        assert (await client.subscribe("demo:lobby"))["recoverable"] is True
        denied = await client.call("subscribe", {"channel": "elsewhere"})
        assert denied["error"]["code"] == 103
        await ws.close()
    finally:
        server.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(server.process.wait(), 15) == 0


async def test_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[channels.namespaces.chat]\nhistory_size = -1\nhistory_ttl = "1s"\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "serve",
        "--config",
        str(path),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert err.decode().strip() == (
        "tidings: configuration error: channels.namespaces.chat.history_size: "
        "expected a number >= 0, got -1"
    )
