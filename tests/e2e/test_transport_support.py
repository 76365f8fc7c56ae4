"""Helpers for the transport tests (no tests here): real HTTP clients reading real streams.

* :class:`SseStream` parses ``text/event-stream`` as a browser does (fields,
  comments, ``retry``), event by event, with deadlines.
* :class:`LineStream` reads newline-delimited JSON (HTTP streaming).
* :func:`assert_still_serving` is the control check every bad-input test ends with.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

STEP = 5.0
"""Deadline of one awaited read: generous for a loaded 2-core machine."""


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@dataclass
class SseEvent:
    data: str = ""
    id: str | None = None
    event: str = "message"

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseStream:
    """One open event stream: ``next()`` returns the next dispatched event."""

    response: aiohttp.ClientResponse
    last_event_id: str = ""
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    raw: bytearray = field(default_factory=bytearray)

    async def next(self, timeout: float = STEP) -> SseEvent:
        event = SseEvent()
        has_data = False
        data_lines: list[str] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            line_bytes = await asyncio.wait_for(
                self.response.content.readline(), max(0.01, remaining)
            )
            if not line_bytes:
                raise EOFError("the stream ended")
            self.raw += line_bytes
            line = line_bytes.decode().rstrip("\r\n")
            if not line:
                if has_data:
                    event.data = "\n".join(data_lines)
                    return event
                event = SseEvent(id=None)
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                has_data = True
                data_lines.append(value)
            elif name == "id":
                event.id = value
                self.last_event_id = value
            elif name == "event":
                event.event = value
            elif name == "retry":
                self.retry = int(value)

    async def events(self, count: int, timeout: float = STEP) -> list[SseEvent]:
        return [await self.next(timeout) for _ in range(count)]

    async def ended(self, timeout: float = STEP) -> list[SseEvent]:
        """Read until the server ends the response; return the events read on the way."""
        seen = []
        while True:
            try:
                seen.append(await self.next(timeout))
            except EOFError:
                return seen

    def close(self) -> None:
        self.response.close()


async def open_sse(
    http: aiohttp.ClientSession, url: str, *, headers: dict[str, str] | None = None
) -> SseStream:
    response = await http.get(url, headers=headers or {})
    assert response.status == 200, (response.status, await response.text())
    assert response.headers["content-type"].startswith("text/event-stream")
    return SseStream(response)


@dataclass
class LineStream:
    """Newline-delimited JSON documents from a streamed response."""

    response: aiohttp.ClientResponse

    async def next(self, timeout: float = STEP) -> Any:
        line = await asyncio.wait_for(self.response.content.readline(), timeout)
        if not line:
            raise EOFError("the stream ended")
        return json.loads(line)

    async def until(self, predicate: Any, timeout: float = STEP) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            document = await self.next(max(0.01, deadline - asyncio.get_running_loop().time()))
            if predicate(document):
                return document

    async def rest(self, timeout: float = STEP) -> list[Any]:
        documents = []
        while True:
            try:
                documents.append(await self.next(timeout))
            except EOFError:
                return documents


async def wait_for(condition: Any, within: float = STEP, what: str = "condition") -> None:
    """Poll ``condition()`` until true (no fixed sleeps); fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def error_body(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
