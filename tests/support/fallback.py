"""centrifuge-js with transport fallback (``tests/compat/js/fallback.mjs``) as a process.

The script configures ``[websocket, http_stream, sse]`` against one base URL (a
server's root, or where ``rt.asgi()`` is mounted) and blocks the transports it
is told to, so a test chooses which one the SDK ends up on.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FALLBACK = REPO / "tests" / "compat" / "js" / "fallback.mjs"


def node_missing() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed"
    for package in ("centrifuge", "ws", "eventsource"):
        if not (REPO / "node_modules" / package / "package.json").is_file():
            return f"npm package {package!r} is not installed"
    return None


class FallbackClient:
    """centrifuge-js in Node: JSON lines out (events, results), JSON commands in."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.stderr = b""

    async def next(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.lines:
            if predicate(line):
                self.lines.remove(line)
                return line
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            raw = await asyncio.wait_for(self.process.stdout.readline(), max(0.01, remaining))
            if not raw:
                assert self.process.stderr is not None
                raise AssertionError(f"node exited: {(await self.process.stderr.read()).decode()}")
            line = json.loads(raw)
            if predicate(line):
                return line
            self.lines.append(line)

    async def call(self, op: str, **args: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        await self.process.stdin.drain()
        result = await self.next(lambda d: d.get("result") == op)
        assert "error" not in result, result
        return result.get("value")


StartFallback = Callable[[str, list[str], str], Awaitable[FallbackClient]]
"""``start(base_url, blocked_transports, channel)``: the ``fallback_client`` fixture."""
