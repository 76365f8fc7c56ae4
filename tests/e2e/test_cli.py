"""The ``tidings`` command as users run it: a real process, signals, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.conftest import API_KEY, SECRET, WsClient, token
from tests.support.http import http
from tests.support.processes import CHAT_CONFIG, ServerProcess, run_cli, spawn

VENDORED = Path(__file__).resolve().parents[2] / "src" / "tidings" / "demo" / "vendor"


@pytest.fixture
async def configured(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    path = tmp_path / "tidings.toml"
    path.write_text(CHAT_CONFIG)
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


async def test_no_configuration_runs_demo_mode_loudly() -> None:
    server = await spawn(env={"TIDINGS_TOKEN_HMAC_SECRET": "", "TIDINGS_API_KEY": ""})
    try:
        assert any("DEMO MODE" in line for line in server.log)
        status, headers, body = await http(server.port, "GET", "/")
        # The status page: what runs, a live connection check, where the examples are.
        assert status == 200 and b"demo mode" in body and b"/vendor/centrifuge.js" in body
        assert b"examples.chat.app:rt" in body
        assert (await http(server.port, "GET", "/demo/chat.js"))[0] == 404  # the old demo
        status, headers, body = await http(server.port, "GET", "/vendor/centrifuge.js")
        # Served from the package itself: no Node.js or npm needed to serve pages.
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert body == (VENDORED / "centrifuge.js").read_bytes()
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


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("workers", [[], ["--workers", "2", "--broker", "redis://127.0.0.1:1/0"]])
async def test_port_in_use_is_one_line_and_exit_1(workers: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run_cli("serve", "--port", str(port), *workers)
    assert code == 1
    assert one_line(err).endswith(
        f"tidings: cannot listen on 127.0.0.1:{port}: port {port} is already in use "
        "(another server is listening there); stop it or choose another --port"
    )


@pytest.mark.parametrize("workers", [[], ["--workers", "2", "--broker", "redis://127.0.0.1:1/0"]])
async def test_host_that_does_not_resolve_is_one_line_and_exit_1(workers: list[str]) -> None:
    code, _, err = await run_cli("serve", "--host", "no-such-host.invalid", *workers)
    assert code == 1
    assert one_line(err).endswith(
        "tidings: cannot listen on no-such-host.invalid:8000: the host name "
        "'no-such-host.invalid' does not resolve; give --host an address of this machine "
        "(127.0.0.1, or 0.0.0.0 for every interface)"
    )


async def test_host_of_another_machine_is_one_line_and_exit_1() -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine.
    code, _, err = await run_cli("serve", "--host", "192.0.2.1", "--port", "0")
    assert code == 1
    assert one_line(err).endswith(
        "tidings: cannot listen on 192.0.2.1:0: 192.0.2.1 is not an address of this machine; "
        "give --host one of its addresses (127.0.0.1, or 0.0.0.0 for every interface)"
    )


async def test_token_refuses_a_negative_ttl() -> None:
    code, out, err = await run_cli(
        "token", "--user", "alice", "--ttl", "-5", env={"TIDINGS_TOKEN_HMAC_SECRET": SECRET}
    )
    assert (code, out) == (2, "")
    assert one_line(err) == (
        "tidings: --ttl must be a number of seconds >= 0 (0: no expiry), got -5; "
        "a negative one would print a token that has already expired"
    )


async def test_publish_with_a_wrong_key_names_the_setting(configured: ServerProcess) -> None:
    url = f"http://127.0.0.1:{configured.port}"
    code, _, err = await run_cli(
        "publish", "chat:x", "{}", "--url", url, env={"TIDINGS_API_KEY": "not-the-key"}
    )
    assert code == 1
    assert one_line(err) == (
        "tidings: the server refused the API key (HTTP 401): --api-key, or else "
        "TIDINGS_API_KEY (or api_key in --config), must equal the server's api_key"
    )
    code, _, err = await run_cli(
        "publish", "chat:x", "{}", "--url", url, env={"TIDINGS_API_KEY": ""}
    )
    assert code == 1
    assert one_line(err) == (
        "tidings: the server wants an API key (HTTP 401) and none was sent: pass --api-key, "
        "or set TIDINGS_API_KEY (or api_key in --config) to the server's api_key"
    )
    assert "not-the-key" not in "".join(configured.log)


async def test_publish_errors_carry_the_detail(configured: ServerProcess) -> None:
    url = f"http://127.0.0.1:{configured.port}"
    code, _, err = await run_cli(
        "publish", "nowhere:x", "{}", "--url", url, env={"TIDINGS_API_KEY": API_KEY}
    )
    assert code == 1
    assert one_line(err) == (
        "tidings: error 102: unknown channel (channel: unknown namespace 'nowhere'; "
        "configure it as [channels.namespaces.nowhere])"
    )
