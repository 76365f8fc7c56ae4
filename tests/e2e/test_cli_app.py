"""``tidings serve MODULE:ATTRIBUTE``: an application served by the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.conftest import WsClient
from tests.support.processes import run_cli, spawn

pytestmark = pytest.mark.timeout(60)

APP = """
from tidings import ConnectContext, ConnectResult, RPCContext, Tidings

rt = Tidings(demo="off", port=1)  # the command line's --port 0 overrides the port


@rt.on_connect
async def connect(ctx: ConnectContext) -> ConnectResult | None:
    user = ctx.headers.get("x-user")
    return ConnectResult(user) if user else None


@rt.rpc("whoami")
async def whoami(ctx: RPCContext, params: object) -> dict:
    return {"user": ctx.user, "transport": ctx.transport}

not_an_app = 42
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "cliapp.py").write_text(APP)
    return tmp_path


async def test_serve_runs_the_application(app_dir: Path) -> None:
    server = await spawn("cliapp:rt", "--app-dir", str(app_dir))
    try:
        ws = await connect(
            f"ws://127.0.0.1:{server.port}/connection/websocket",
            additional_headers={"X-User": "nora"},
            compression=None,
        )
        client = WsClient(ws)
        await client.connect()
        reply = await client.call("rpc", {"method": "whoami"})
        assert reply["rpc"]["data"] == {"user": "nora", "transport": "websocket"}
        await client.close()
    finally:
        server.process.terminate()
        assert await server.process.wait() == 0


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        ("nosuchmodule:rt", 1, "no module 'nosuchmodule'"),
        ("cliapp:missing", 1, "has no attribute 'missing'"),
        ("cliapp:not_an_app", 1, "is an object of type int, not a Tidings application"),
        ("cliapp", 1, "expected MODULE:ATTRIBUTE"),
    ],
)
async def test_an_application_that_cannot_be_loaded_is_one_line(
    app_dir: Path, spec: str, code: int, message: str
) -> None:
    exit_code, _, err = await run_cli("serve", spec, "--app-dir", str(app_dir))
    assert exit_code == code
    assert message in err
    assert "Traceback" not in err


async def test_config_file_with_an_application_is_refused(app_dir: Path) -> None:
    exit_code, _, err = await run_cli(
        "serve", "cliapp:rt", "--app-dir", str(app_dir), "--config", "x.toml"
    )
    assert exit_code == 2 and "reads its own configuration" in err
