"""Streamed HTTP responses read as a client reads them, with deadlines.

* :class:`SseStream` parses ``text/event-stream`` as a browser does (fields,
  comments, ``retry``), event by event.
* :class:`LineStream` reads newline-delimited JSON (HTTP streaming).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

STEP = 5.0
"""Deadline of one awaited read: generous for a loaded 2-core machine."""


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


def error_body(code: int, message: str) -> dict[str, Any]:
    """The JSON body of an HTTP error answer carrying a protocol error."""
    return {"error": {"code": code, "message": message}}
