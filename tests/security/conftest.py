"""Helpers for the hostile-input suite: one client interface over every transport.

A test that must hold on every transport takes the ``transport`` fixture and
talks through :class:`ProtocolClient`; each transport has its own client class:
WebSocket, and the two bidirectional emulations (HTTP streaming and SSE, with
``/emulation``) in :data:`TRANSPORTS`; the unidirectional transports and
``/events``, which carry a connection token but no commands, in
:data:`CONNECT_ONLY_TRANSPORTS` (the ``connect_only_transport`` fixture).

Outcomes are data (:class:`Outcome`), so a matrix can be asserted as a table
and a failure names every cell that went wrong at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import RunningServer, WsClient, token

OK = "ok"
ERROR = "error"
DISCONNECT = "disconnect"
HTTP = "http"  # refused at the HTTP level: code = status x 1000 + protocol error code


@dataclass(frozen=True)
class Outcome:
    """What a command got: a result (``ok``), an error reply (code) or a disconnect (code)."""

    kind: str
    code: int = 0

    def __str__(self) -> str:
        return self.kind if self.kind == OK else f"{self.kind} {self.code}"


def ok() -> Outcome:
    return Outcome(OK)


def error(code: int) -> Outcome:
    return Outcome(ERROR, code)


def disconnect(code: int) -> Outcome:
    return Outcome(DISCONNECT, code)


class ProtocolClient(Protocol):
    """A bidirectional client of one transport."""

    async def command(self, method: str, params: dict[str, Any]) -> Outcome: ...

    async def raw(self, frame: str | bytes) -> Outcome:
        """Send one raw frame holding a command with id 1000; its outcome."""
        ...

    async def close(self) -> None: ...


class WebSocketProtocolClient:
    """``/connection/websocket``: commands in text frames, disconnects in close frames."""

    def __init__(self, client: WsClient) -> None:
        self.client = client

    async def command(self, method: str, params: dict[str, Any], timeout: float = 5.0) -> Outcome:
        command_id = self.client.next_id()
        return await self._outcome(
            json.dumps({"id": command_id, method: params}), command_id, timeout
        )

    async def raw(self, frame: str | bytes, timeout: float = 5.0) -> Outcome:
        return await self._outcome(frame, 1000, timeout)

    async def _outcome(self, frame: str | bytes, command_id: int, timeout: float) -> Outcome:
        try:
            await self.client.send_raw(frame)
            reply = await self.client.reply(command_id, timeout)
        except ConnectionClosed as closed:
            return disconnect(closed.rcvd.code if closed.rcvd is not None else 0)
        if "error" in reply:
            return error(int(reply["error"]["code"]))
        return ok()

    async def close(self) -> None:
        await self.client.ws.close()


async def open_websocket(server: RunningServer, **options: Any) -> WebSocketProtocolClient:
    options.setdefault("compression", None)
    options.setdefault("max_size", None)
    ws = await connect(server.ws_url, open_timeout=5, **options)
    return WebSocketProtocolClient(WsClient(ws))


class EmulationProtocolClient:
    """Bidirectional emulation: ``/connection/http_stream`` or ``/connection/sse`` + ``/emulation``.

    The first command (``connect``) opens the stream; later ones are posted to
    ``/emulation`` and answered down the stream. A disconnect is a
    ``{"push":{"disconnect":...}}`` document followed by the end of the stream.
    """

    def __init__(self, server: RunningServer, kind: str) -> None:
        self.server = server
        self.kind = kind
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.response: aiohttp.ClientResponse | None = None
        self.session = ""
        self.documents: list[dict[str, Any]] = []
        self.disconnected: Outcome | None = None
        self._next_id = 0

    async def command(self, method: str, params: dict[str, Any], timeout: float = 5.0) -> Outcome:
        self._next_id += 1
        command_id = self._next_id
        return await self._outcome(
            json.dumps({"id": command_id, method: params}), command_id, timeout
        )

    async def raw(self, frame: str | bytes, timeout: float = 5.0) -> Outcome:
        text = frame.decode() if isinstance(frame, bytes) else frame
        return await self._outcome(text, 1000, timeout)

    async def _outcome(self, text: str, command_id: int, timeout: float) -> Outcome:
        if self.disconnected is not None:
            return self.disconnected
        if self.response is None:
            await self._open(text)
        else:
            body = {"session": self.session, "node": self.server.node.id, "data": text}
            async with self.http.post(f"{self.server.http_url}/emulation", json=body) as answer:
                assert answer.status == 204, answer.status
        deadline = time.monotonic() + timeout
        while True:
            for index, document in enumerate(self.documents):
                if document.get("id") == command_id:
                    del self.documents[index]
                    if "error" in document:
                        return error(int(document["error"]["code"]))
                    if "connect" in document:
                        self.session = document["connect"]["session"]
                    return ok()
            if self.disconnected is not None:
                return self.disconnected
            await self._read(max(0.01, deadline - time.monotonic()))

    async def _open(self, commands: str) -> None:
        url = f"{self.server.http_url}/connection/{self.kind}"
        if self.kind == "sse":
            self.response = await self.http.get(url, params={"cf_connect": commands})
        else:
            self.response = await self.http.post(
                url, data=commands, headers={"Content-Type": "application/json"}
            )
        if self.response.status != 200:  # refused before any session: an HTTP answer
            self.disconnected = await http_refusal(self.response)

    async def _read(self, timeout: float) -> None:
        assert self.response is not None
        line = await asyncio.wait_for(self.response.content.readline(), timeout)
        if not line:
            self.disconnected = self.disconnected or disconnect(0)
            return
        text = line.decode().strip()
        if self.kind == "sse":
            if not text.startswith("data:"):
                return
            text = text[5:].strip()
        if not text:
            return
        document = json.loads(text)
        self.documents.append(document)
        push = document.get("push", {})
        if "disconnect" in push:
            self.disconnected = disconnect(int(push["disconnect"]["code"]))

    async def close(self) -> None:
        if self.response is not None:
            self.response.close()
        await self.http.close()


async def http_refusal(response: aiohttp.ClientResponse) -> Outcome:
    """A refused HTTP request as an outcome: status x 1000 + the protocol code (JSON bodies)."""
    code = 0
    if response.content_type == "application/json":
        code = int((await response.json())["error"]["code"])
    response.close()
    return Outcome(HTTP, response.status * 1000 + code)


def emulation_opener(kind: str) -> Callable[[RunningServer], Any]:
    async def opener(server: RunningServer) -> EmulationProtocolClient:
        return EmulationProtocolClient(server, kind)

    return opener


class UnidirectionalClient:
    """``uni_websocket``, ``uni_sse``, ``uni_http_stream``: one ConnectRequest, then pushes.

    Only ``connect`` exists here; its outcome is the first push: ``connect``
    (ok) or ``disconnect`` (the code; a refused connect becomes a disconnect,
    109 -> 3005, fact sheet section 8).
    """

    def __init__(self, server: RunningServer, kind: str) -> None:
        self.server = server
        self.kind = kind
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.ws: Any = None
        self.response: aiohttp.ClientResponse | None = None

    async def command(self, method: str, params: dict[str, Any], timeout: float = 5.0) -> Outcome:
        assert method == "connect", f"{self.kind} has no {method} command"
        body = json.dumps(params)
        return await asyncio.wait_for(self._connect(body), timeout)

    async def _connect(self, body: str) -> Outcome:
        if self.kind == "uni_websocket":
            self.ws = await connect(
                f"ws://127.0.0.1:{self.server.port}/connection/uni_websocket", open_timeout=5
            )
            await self.ws.send(body)
            try:
                first = json.loads(await self.ws.recv())
            except ConnectionClosed as closed:
                return disconnect(closed.rcvd.code if closed.rcvd is not None else 0)
            return self._first(first)
        url = f"{self.server.http_url}/connection/{self.kind}"
        if self.kind == "uni_sse":
            response = await self.http.get(url, params={"cf_connect": body})
        else:
            response = await self.http.post(url, data=body)
        self.response = response
        if response.status != 200:
            return await http_refusal(response)
        async for line in response.content:
            text = line.decode().strip()
            if self.kind == "uni_sse":
                if not text.startswith("data:"):
                    continue
                text = text[5:].strip()
            if text:
                return self._first(json.loads(text))
        return disconnect(0)

    @staticmethod
    def _first(document: dict[str, Any]) -> Outcome:
        if "connect" in document:
            return ok()
        if "disconnect" in document:
            return disconnect(int(document["disconnect"]["code"]))
        raise AssertionError(f"unexpected first push {document}")

    async def raw(self, frame: str | bytes, timeout: float = 5.0) -> Outcome:
        raise AssertionError(f"{self.kind} takes no commands")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.response is not None:
            self.response.close()
        await self.http.close()


def unidirectional_opener(kind: str) -> Callable[[RunningServer], Any]:
    async def opener(server: RunningServer) -> UnidirectionalClient:
        return UnidirectionalClient(server, kind)

    return opener


class PlainHttpClient:
    """``/events`` (SSE without an SDK): the token in ``Authorization: Bearer``.

    Its outcome is the HTTP answer: a 200 stream (ok), or 401 with the
    protocol's error code (109 expired, 101 anything else), as ``http`` outcomes.
    """

    def __init__(self, server: RunningServer) -> None:
        self.server = server

    async def command(self, method: str, params: dict[str, Any], timeout: float = 5.0) -> Outcome:
        assert method == "connect", f"/events has no {method} command"
        headers = {"Host": "127.0.0.1"}
        if params.get("token"):
            headers["Authorization"] = f"Bearer {params['token']}"
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        head = "GET /events?channel=chat%3Aevents HTTP/1.1\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write((head + "\r\n").encode())
        try:
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status = int(answer.split()[1])
            code = 0
            if status != 200:
                length = int(re.search(rb"content-length: (\d+)", answer.lower()).group(1))  # type: ignore[union-attr]
                body = await asyncio.wait_for(reader.readexactly(length), timeout)
                if b"application/json" in answer.lower():
                    code = int(json.loads(body)["error"]["code"])
        finally:
            writer.close()
        return ok() if status == 200 else Outcome(HTTP, status * 1000 + code)

    async def raw(self, frame: str | bytes, timeout: float = 5.0) -> Outcome:
        raise AssertionError("/events takes no commands")

    async def close(self) -> None:
        return None


async def open_plain_http(server: RunningServer) -> PlainHttpClient:
    return PlainHttpClient(server)


Opener = Callable[[RunningServer], Any]

TRANSPORTS: dict[str, Opener] = {
    "websocket": open_websocket,
    "http_stream": emulation_opener("http_stream"),
    "sse": emulation_opener("sse"),
}
"""Bidirectional transports -> coroutine opening a :class:`ProtocolClient` on a server."""

CONNECT_ONLY_TRANSPORTS: dict[str, Opener] = {
    "uni_websocket": unidirectional_opener("uni_websocket"),
    "uni_sse": unidirectional_opener("uni_sse"),
    "uni_http_stream": unidirectional_opener("uni_http_stream"),
    "events": open_plain_http,
}
"""Transports with a connection token but no commands: the connect row of the matrices."""

ALL_TRANSPORTS = {**TRANSPORTS, **CONNECT_ONLY_TRANSPORTS}

UNIDIRECTIONAL_CONNECT_ERRORS = {109: 3005, 110: 3005, 111: 3013, 103: 3507}


def expected_on(transport: str, expected: Outcome) -> Outcome:
    """What a connect outcome becomes on a connect-only transport (fact sheet section 8)."""
    if transport in TRANSPORTS:
        return expected
    if transport == "events":
        if expected.kind == OK:
            return expected
        return Outcome(HTTP, 401_000 + (109 if expected == error(109) else 101))
    if expected.kind == ERROR:
        return disconnect(UNIDIRECTIONAL_CONNECT_ERRORS.get(expected.code, 3004))
    return expected


@pytest.fixture(params=sorted(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(params=sorted(CONNECT_ONLY_TRANSPORTS))
def connect_only_transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def open_client() -> AsyncIterator[Callable[[RunningServer, str], Any]]:
    """Open a :class:`ProtocolClient` of a transport; every one is closed at teardown."""
    opened: list[ProtocolClient] = []

    async def opener(server: RunningServer, transport: str) -> ProtocolClient:
        client: ProtocolClient = await ALL_TRANSPORTS[transport](server)
        opened.append(client)
        return client

    yield opener
    for client in opened:
        with contextlib.suppress(TimeoutError, ConnectionClosed, OSError, aiohttp.ClientError):
            await asyncio.wait_for(client.close(), 5)


# --------------------------------------------------------------------------- control client


class ControlSubscriber:
    """A well-behaved subscriber that must receive every publication, in order, throughout."""

    def __init__(self, server: RunningServer, client: WsClient, channel: str) -> None:
        self.server = server
        self.client = client
        self.channel = channel
        self.sent = 0
        self.seen = 0

    @classmethod
    async def open(
        cls, server: RunningServer, channel: str = "chat:control", tok: str | None = None
    ) -> ControlSubscriber:
        ws = await connect(server.ws_url, open_timeout=5, compression=None, max_size=None)
        client = WsClient(ws)
        await client.connect(tok or token("control"))
        await client.subscribe(channel)
        return cls(server, client, channel)

    async def publish(self) -> None:
        self.sent += 1
        await self.server.node.publish(self.channel, {"n": self.sent})

    async def expect_all(self, timeout: float = 10.0) -> None:
        """Every publication since the last call arrived, in order, none lost or duplicated."""
        received = await self.client.publications(self.channel, self.sent - self.seen, timeout)
        assert [p["data"]["n"] for p in received] == list(range(self.seen + 1, self.sent + 1))
        self.seen = self.sent

    async def roundtrip(self, timeout: float = 10.0) -> None:
        """Publish one and see it arrive (with everything published before it)."""
        await self.publish()
        await self.expect_all(timeout)

    async def close(self) -> None:
        await self.client.ws.close()


# --------------------------------------------------------------------------- logs


class LogCapture(logging.Handler):
    """Collects every record of the ``tidings`` loggers (and asyncio's) from INFO up."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.INFO) -> list[str]:
        return [self.format(r) for r in self.records if r.levelno >= level]

    def errors(self) -> list[str]:
        """ERROR and above: an unhandled exception anywhere in the server shows up here."""
        return self.messages(logging.ERROR)

    def clear(self) -> None:
        self.records.clear()


@pytest.fixture
def server_log() -> Iterator[LogCapture]:
    handler = LogCapture()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger("tidings"), logging.getLogger("asyncio")]
    saved = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield handler
    for logger, level in saved:
        logger.removeHandler(handler)
        logger.setLevel(level)


# --------------------------------------------------------------------------- memory


def _status_kib(pid: int | str, field: bytes) -> int:
    with open(f"/proc/{pid}/status", "rb") as status:
        match = re.search(rb"^" + field + rb":\s+(\d+) kB", status.read(), re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from ``/proc/<pid>/status``."""
    return _status_kib(pid, b"VmRSS")


def peak_rss_bytes(pid: int | str = "self") -> int:
    """The highest RSS the process ever had (``VmHWM``): catches a spike between samples."""
    return _status_kib(pid, b"VmHWM")


def mib(size: float) -> str:
    return f"{size / (1 << 20):.1f} MiB"


# --------------------------------------------------------------------------- server process


class ServerProcess:
    """``tests.security.server_process`` in a child process: its RSS is the server's alone."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.lines: list[str] = []
        self._reader = asyncio.get_running_loop().create_task(self._read_log())

    @classmethod
    async def start(cls, **overrides: Any) -> ServerProcess:
        import sys

        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.security.server_process",
            json.dumps(overrides),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        match = re.match(r"listening on (\d+)", line)
        assert match, f"the server process did not start: {line!r}"
        return cls(process, int(match.group(1)))

    async def _read_log(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    async def trimmed_rss(self) -> int:
        """RSS once the allocator returned its free pages (SIGUSR1 -> malloc_trim)."""
        import signal

        assert self.process.stdout is not None
        self.process.send_signal(signal.SIGUSR1)
        line = await asyncio.wait_for(self.process.stdout.readline(), 10)
        assert line.strip() == b"trimmed", line
        return self.rss

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def errors(self) -> list[str]:
        return [line for line in self.lines if line.startswith(("ERROR", "CRITICAL", "Traceback"))]

    @property
    def rss(self) -> int:
        return rss_bytes(self.process.pid)

    @property
    def peak_rss(self) -> int:
        return peak_rss_bytes(self.process.pid)

    @property
    def open_files(self) -> int:
        import os

        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._reader.cancel()


class KeepAliveHttp:
    """One persistent HTTP/1.1 connection for many small requests (the API publisher)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> KeepAliveHttp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length) if length else b""
        return int(status_line.split()[1]), payload

    async def api(self, method: str, params: dict[str, Any]) -> Any:
        from tests.conftest import API_KEY

        status, body = await self.request(
            "POST", f"/api/{method}", json.dumps(params).encode(), {"X-API-Key": API_KEY}
        )
        assert status == 200, (status, body)
        return json.loads(body)

    async def close(self) -> None:
        self.writer.close()
