"""``tidings`` as a real process: a server started with ``serve``, or one command run to its end.

:func:`spawn` reads the log up to the "listening on" line; :func:`spawn_tidings` keeps
reading it (a :class:`NodeProcess`, for tests that wait on later lines or stop and
restart nodes), with the suite's secret and API key in its environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import API_KEY, SECRET
from tests.support.redis import delete_keys

REPO = Path(__file__).resolve().parents[2]

WAIT = 20.0
"""Deadline for one awaited condition: far above what each needs on a loaded 2-core machine."""

CHAT_CONFIG = """
[channels.namespaces.chat]
history_size = 10
history_ttl = "60s"
allow_subscribe_for_client = true
"""
"""A small configuration: one ``chat`` namespace with history, open to subscribers."""


@dataclass
class ServerProcess:
    process: asyncio.subprocess.Process
    port: int
    log: list[str]
    """The stderr lines read up to the ``listening on`` line."""


async def spawn(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """``python -m tidings serve --port 0 ARGS``; returns once it says where it listens."""
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


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m tidings ARGS`` to completion; returns exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class NodeProcess:
    """One ``tidings serve`` process; its log is read continuously (the pipe never fills)."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.port = 0
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    @property
    def log(self) -> str:
        return "\n".join(self.lines[-40:])

    async def wait_for_line(
        self, pattern: str, within: float = WAIT, start: int = 0
    ) -> re.Match[str]:
        """The first log line from index ``start`` on that matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        index = start
        while True:
            while index < len(self.lines):
                match = regex.search(self.lines[index])
                if match:
                    return match
                index += 1
            if self._reader.done():
                pytest.fail(f"{self.name} ended without logging /{pattern}/:\n{self.log}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{self.name} did not log /{pattern}/ within {within} s:\n{self.log}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def kill(self) -> None:
        """``kill -9``: no shutdown, no goodbye to clients or Redis."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def stop(self) -> None:
        self.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 10)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def spawn_tidings(
    *args: str, env: dict[str, str] | None = None, name: str = "tidings", wait: bool = True
) -> NodeProcess:
    """``python -m tidings serve --port 0 ARGS``; waits for its "listening on" line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "serve",
        "--port",
        "0",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "TIDINGS_TOKEN_HMAC_SECRET": SECRET,
            "TIDINGS_API_KEY": API_KEY,
            "TIDINGS_DEMO": "off",
            **(env or {}),
        },
        cwd=REPO,
    )
    node = NodeProcess(process, name)
    if wait:
        try:
            match = await node.wait_for_line(r"listening on http://[\d.]+:(\d+)", within=30)
        except BaseException:
            await node.stop()
            raise
        node.port = int(match.group(1))
    return node


@contextlib.asynccontextmanager
async def app_on_redis(
    app: str, redis_url: str, prefix: str, count: int = 2
) -> AsyncIterator[list[ServerProcess]]:
    """``tidings serve APP`` ``count`` times on one Redis under ``prefix``; each is stopped
    with SIGINT (killed if it lingers) and the prefix's keys are deleted afterwards."""
    servers: list[ServerProcess] = []
    try:
        for _ in range(count):
            servers.append(
                await spawn(
                    app, "--app-dir", str(REPO), "--broker", redis_url, "--broker-prefix", prefix
                )
            )
        yield servers
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                server.process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(server.process.wait(), 15)
            except TimeoutError:
                server.process.kill()
                await server.process.wait()
        await delete_keys(redis_url, prefix)
