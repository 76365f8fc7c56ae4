"""The README, followed literally, in a fresh copy of the checkout with a fresh virtualenv.

Every code block the README marks with ``<!-- walkthrough: ... -->`` is run as
written, in order, the way a newcomer would:

* ``start NAME PORT``: a command that keeps running (``make serve``, the
  server, the page's web server), started in its own terminal (process group)
  and ready once PORT accepts connections; Ctrl-C (SIGINT) stops it;
* ``run``: a shell command, which must succeed;
* ``file PATH``: a file to save with the block's text;
* ``python [INTERPRETER]``: a Python snippet, run by INTERPRETER (default: the
  backend's Python, which has ``cent``).

The only change: ports 8000 and 3000 become free ephemeral ones (other test
runs may share this machine), in the text and through ``TIDINGS_PORT`` for
commands that use the default port. The copy has no ``node_modules`` and no
``.venv``: ``make serve`` creates the virtualenv (pip reuses its cache), so
this also shows that serving needs Python alone. The pages run in headless
Chromium; the one from step 3 is served from another origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.polling import eventually

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
STEP = re.compile(
    r"<!-- walkthrough: (?P<kind>\w+)(?P<args>(?: [^ >]+)*) -->\n```\w+\n(?P<body>.*?)```", re.S
)
INSTALL_DEADLINE = 180.0
"""``make serve`` creates a virtualenv and installs into it (from pip's cache, usually ~10 s)."""
PAGE_TIMEOUT_MS = 20_000


@dataclass
class Step:
    kind: str
    args: list[str]
    body: str


@dataclass
class Terminal:
    """A command that keeps running, as in its own terminal window."""

    name: str
    process: asyncio.subprocess.Process
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Walkthrough:
    checkout: Path
    env: dict[str, str]
    ports: dict[int, int]
    terminals: dict[str, Terminal] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def readme_steps(ports: dict[int, int]) -> list[Step]:
    text = (REPO / "README.md").read_text()
    for documented, actual in ports.items():
        text = re.sub(rf"\b{documented}\b", str(actual), text)
    steps = [
        Step(match["kind"], match["args"].split(), match["body"]) for match in STEP.finditer(text)
    ]
    assert [s.kind for s in steps][:2] == ["start", "run"], "the README lost its walkthrough"
    return steps


def fresh_checkout(target: Path) -> Path:
    """The files a clone would have (tracked, plus new ones not ignored): no .venv, no npm."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = REPO / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(source.read_bytes())
            destination.chmod(source.stat().st_mode)
    return target


def terminal_env(port: int) -> dict[str, str]:
    """A new terminal's environment: no tidings settings, no virtualenv, not inside make."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("TIDINGS_")
        and name not in ("VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    }
    venv = str(REPO / ".venv")
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if not part.startswith(venv)
    )
    env["TIDINGS_PORT"] = str(port)
    return env


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def start(walk: Walkthrough, step: Step) -> Terminal:
    name, port = step.args[0], int(step.args[1])
    log = walk.checkout.parent / f"terminal-{name}.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            step.body,
            cwd=walk.checkout,
            env=walk.env,
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    terminal = Terminal(name, process, log)
    walk.terminals[name] = terminal
    deadline = time.monotonic() + INSTALL_DEADLINE
    while not await port_open(port):
        assert process.returncode is None, f"{step.body!r} exited:\n{terminal.output()}"
        assert time.monotonic() < deadline, f"{step.body!r} not listening:\n{terminal.output()}"
        await asyncio.sleep(0.1)
    return terminal


async def ctrl_c(terminal: Terminal) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(terminal.process.pid, signal.SIGINT)
    await asyncio.wait_for(terminal.process.wait(), 20)


async def run(walk: Walkthrough, command: list[str], *, check: bool = True) -> tuple[int, str]:
    """Run a command to its end in the checkout; returns its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=walk.checkout,
        env=walk.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    assert process.returncode == 0 or not check, f"{command} failed:\n{out.decode()}"
    return process.returncode, out.decode()


@pytest.fixture
async def walk(tmp_path: Path) -> AsyncIterator[Walkthrough]:
    ports = {8000: free_port(), 3000: free_port()}
    checkout = fresh_checkout(tmp_path / "tidings")
    walkthrough = Walkthrough(checkout, terminal_env(ports[8000]), ports)
    yield walkthrough
    for terminal in walkthrough.terminals.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(terminal.process.pid, signal.SIGKILL)
        await asyncio.wait_for(terminal.process.wait(), 10)


async def new_page(browser: Any) -> Any:
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    return page


async def expect_item(page: Any, text: str) -> None:
    from playwright.async_api import expect

    await expect(page.locator("#messages li", has_text=text)).to_have_count(
        1, timeout=PAGE_TIMEOUT_MS
    )


async def test_the_readme_walkthrough_works_as_written(walk: Walkthrough, browser: Any) -> None:
    http = walk.ports[8000]
    app_page = None
    for step in readme_steps(walk.ports):
        if step.kind == "start":
            await start(walk, step)
            if step.args[0] == "chat":
                await check_the_chat_then_stop_it(walk, browser)
            elif step.args[0] == "page":
                app_page = await new_page(browser)
                await app_page.goto(f"http://127.0.0.1:{walk.ports[3000]}/")
                await expect_item(app_page, "hello from the page")
        elif step.kind == "run":
            await run(walk, ["bash", "-euo", "pipefail", "-c", step.body])
        elif step.kind == "file":
            path = walk.checkout / step.args[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(step.body)
        elif step.kind == "python":
            script = walk.checkout.parent / "snippet.py"
            script.write_text(step.body)
            interpreter = str(walk.checkout / step.args[0]) if step.args else sys.executable
            await run(walk, [interpreter, str(script)])
        else:
            pytest.fail(f"unknown walkthrough step {step.kind!r}")

    assert app_page is not None, "the walkthrough never opened the page"
    await expect_item(app_page, "from the backend")
    await expect_item(app_page, "from Python")
    # The page came from another origin: the server saw it and let it in.
    assert (await app_page.evaluate("window.location.port")) == str(walk.ports[3000])
    server_log = walk.terminals["server"].output()
    assert f"listening on http://127.0.0.1:{http}" in server_log
    assert "refused" not in server_log, server_log


async def check_the_chat_then_stop_it(walk: Walkthrough, browser: Any) -> None:
    """``make serve``: the chat example chats, with Python alone, then Ctrl-C stops it."""
    page = await new_page(browser)
    await page.goto(f"http://127.0.0.1:{walk.ports[8000]}/")
    await page.fill("#entry-name", "newcomer")
    await page.click("#entry button[type=submit]")
    await page.wait_for_function("document.body.dataset.subscribed === 'true'")
    await page.fill("#text", "hello from the README")
    await page.press("#text", "Enter")
    await expect_item(page, "hello from the README")
    await page.context.close()
    assert not (walk.checkout / "node_modules").exists()
    # Serving installed no test or benchmark tools; the load generator says what it needs.
    code, _ = await run(walk, [".venv/bin/python", "-c", "import rich"], check=False)
    assert code != 0
    code, output = await run(walk, [".venv/bin/tidings", "bench"], check=False)
    assert code == 1 and "pip install 'tidings[bench]'" in output
    await ctrl_c(walk.terminals["chat"])
    await eventually(lambda: not port_in_use(walk.ports[8000]), "the chat to free its port", 10)


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
