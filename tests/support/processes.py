"""``tidings`` as a real process: a server started with ``serve``, or one command run to its end."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass

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
