"""A lean HTTP/1.1 edge: one asyncio protocol per connection, httptools for parsing.

Why not a framework: an idle WebSocket must cost as little as possible, and a
framework's per-connection objects and tasks cost several KiB and a coroutine
each (docs/architecture.md has the measurements). This module only parses
requests, enforces size and time limits, and routes:

* a plain request goes to an ``async`` handler returning a :class:`Response`;
* a handler may instead take the connection over for a long-lived response
  (``request.start_stream``), for SSE and HTTP streaming;
* a WebSocket upgrade is handed to an upgrade handler, which swaps this
  protocol for a WebSocket one (``transport.set_protocol``), freeing the parser.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol
from urllib.parse import unquote

import httptools

from tidings.server.exchange import RequestFields

log = logging.getLogger("tidings.http")

MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
KEEPALIVE_TIMEOUT = 30.0


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(body: bytes, status: int = 200) -> Response:
    return Response(status, body, "application/json")


def text_response(text: str, status: int) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")


class Request(RequestFields):
    """A parsed request. Header names are lower-case bytes."""

    __slots__ = (
        "body",
        "client",
        "connection",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "raw_path",
    )

    def __init__(
        self,
        method: str,
        raw_path: bytes,
        headers: list[tuple[bytes, bytes]],
        client: str,
        connection: HttpProtocol,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        url = httptools.parse_url(raw_path)
        self.path = unquote(url.path.decode("latin-1"))
        self.query_string = url.query or b""
        self.headers = headers
        self.body = b""
        self.client = client
        self.connection = connection
        self.keep_alive = True
        self._query: dict[str, list[str]] | None = None

    def start_stream(
        self, status: int, headers: list[tuple[str, str]], *, chunked: bool = True
    ) -> HttpStream:
        """Take the connection over for a long-lived response (SSE, HTTP streaming)."""
        return self.connection.start_stream(status, headers, chunked=chunked)


class RefusalLog:
    """Logs refusals at the edge without letting a flood flood the log.

    The first refusal of each kind is logged at once; later ones of that kind
    are counted and reported at most every ``interval`` seconds.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[tuple[int, str], float] = {}
        self._suppressed: dict[tuple[int, str], int] = {}

    def note(self, status: int, reason: str, client: str) -> None:
        key = (status, reason)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        more = f" (and {suppressed} more since the last report)" if suppressed else ""
        log.info(
            "refused %s: %d %s%s",
            client or "-",
            status,
            reason,
            more,
            extra={"client": client, "status": status},
        )


class ConnectionGate(Protocol):
    """Admits or refuses new TCP connections (per-IP and rate limits live behind it)."""

    def admit(self, ip: str) -> bool: ...

    def release(self, ip: str) -> None: ...


Handler = Callable[[Request], Awaitable[Response | None]]
UpgradeHandler = Callable[[Request, asyncio.Transport, bytes], None]


class Router:
    """Exact-path and prefix routes; the edge asks it for a handler per request."""

    def __init__(self) -> None:
        self._exact: dict[str, Handler] = {}
        self._prefix: list[tuple[str, Handler]] = []
        self._upgrades: dict[str, UpgradeHandler] = {}

    def route(self, path: str, handler: Handler) -> None:
        if path.endswith("*"):
            self._prefix.append((path[:-1], handler))
        else:
            self._exact[path] = handler

    def upgrade(self, path: str, handler: UpgradeHandler) -> None:
        self._upgrades[path] = handler

    def find(self, path: str) -> Handler | None:
        handler = self._exact.get(path)
        if handler is not None:
            return handler
        for prefix, prefixed in self._prefix:
            if path.startswith(prefix):
                return prefixed
        return None

    def find_upgrade(self, path: str) -> UpgradeHandler | None:
        return self._upgrades.get(path)


class HttpStream:
    """The write side of a long-lived response. ``on_close`` fires once when it ends."""

    __slots__ = (
        "_chunked",
        "_protocol",
        "closed",
        "on_close",
        "on_pause",
        "on_resume",
        "transport",
        "write",
    )

    def __init__(self, protocol: HttpProtocol, transport: asyncio.Transport, chunked: bool) -> None:
        self._protocol = protocol
        self.transport = transport
        self._chunked = chunked
        self.closed = False
        self.on_close: Callable[[], None] | None = None
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        self.write: Callable[[bytes], None] = self._write_chunk if chunked else transport.write

    def _write_chunk(self, data: bytes) -> None:
        if data and not self.closed:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end(self) -> None:
        """Finish the response (the connection then closes: streams are never reused)."""
        if self.closed:
            return
        self.closed = True
        if self._chunked:
            self.transport.write(b"0\r\n\r\n")
        self.transport.close()
        self._fire_close()

    def _fire_close(self) -> None:
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback()

    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    def set_high_water(self, high: int) -> None:
        self.transport.set_write_buffer_limits(high=high)


def body_too_large(max_body: int) -> str:
    """The 413 text names the setting, so whoever sent the body knows what to raise."""
    return f"request body over max_message_size ({max_body} bytes)"


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: parse, route, answer, keep alive or hand over."""

    def __init__(
        self,
        router: Router,
        *,
        max_body: int,
        header_timeout: float = 10.0,
        gate: ConnectionGate | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        self._router = router
        self._max_body = max_body
        self._header_timeout = header_timeout
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._request: Request | None = None
        self._queue: list[Request] = []
        self._busy = False
        self._upgrade: Request | None = None
        self._stream: HttpStream | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._gate = gate
        self._refusals = refusals
        self._ip = ""
        self._admitted = False
        self._refused = False

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._client = f"{peer[0]}:{peer[1]}" if peer else ""
        self._ip = str(peer[0]) if peer else ""
        if self._gate is not None:
            # A refused client still gets a proper answer to its request (503),
            # once its request head is in: closing before that confuses clients.
            self._refused = not self._gate.admit(self._ip)
            self._admitted = not self._refused
        self._arm_timer(self._header_timeout)

    def hand_over(self) -> str:
        """An upgrade took the connection: its new owner releases the admission. Returns the IP."""
        self._admitted = False
        return self._ip

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timer()
        if self._admitted and self._gate is not None:
            self._admitted = False
            self._gate.release(self._ip)
        if self._stream is not None:
            self._stream.closed = True
            self._stream._fire_close()

    def data_received(self, data: bytes) -> None:
        if self._closing or self._stream is not None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self._begin_upgrade(data[offset:])
        except httptools.HttpParserError:
            self._reply_and_close(400, "bad request")

    def eof_received(self) -> bool | None:
        return None

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        if not self._busy:
            self._arm_timer(self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._reply_and_close(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._header_bytes += len(name) + len(value)
        if len(self._headers) > MAX_HEADERS or self._header_bytes > MAX_HEADER_BYTES:
            self._reply_and_close(431, "request headers too large")

    def on_headers_complete(self) -> None:
        if self._closing:
            return
        self._cancel_timer()
        if self._refused:
            self._reply_and_close(503, "too many connections")
            return
        method = self._parser.get_method().decode("latin-1")
        try:
            request = Request(method, self._url, self._headers, self._client, self)
        except httptools.HttpParserInvalidURLError:
            self._reply_and_close(400, "bad request")
            return
        self._request = request
        request.keep_alive = bool(self._parser.should_keep_alive())
        length = request.header("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            self._reply_and_close(413, body_too_large(self._max_body))
        if self._parser.should_upgrade():
            self._upgrade = request

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._reply_and_close(413, body_too_large(self._max_body))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        if request is None or self._closing:
            return
        self._request = None
        request.body = b"".join(self._body)
        self._body = []
        if self._upgrade is request:
            return  # handled in _begin_upgrade once the parser stops
        self._queue.append(request)
        if not self._busy:
            self._next()

    # ------------------------------------------------------------------ requests

    def _next(self) -> None:
        if not self._queue or self._closing or self._stream is not None:
            if not self._queue and not self._closing and self._stream is None:
                self._arm_timer(KEEPALIVE_TIMEOUT)
            return
        self._busy = True
        request = self._queue.pop(0)
        asyncio.get_running_loop().create_task(self._handle(request))

    async def _handle(self, request: Request) -> None:
        handler = self._router.find(request.path)
        try:
            if handler is None:
                response: Response | None = text_response("not found", 404)
            else:
                response = await handler(request)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = json_response(
                b'{"error":{"code":100,"message":"internal server error"}}', 500
            )
        self._busy = False
        if response is None:  # the handler took the connection over (a stream)
            return
        if self._closing:
            return
        keep_alive = request.keep_alive
        self._send_response(response, keep_alive=keep_alive, head=request.method == "HEAD")
        if keep_alive:
            self._next()
        else:
            self._close()

    def _send_response(self, response: Response, *, keep_alive: bool, head: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        lines = [_status_line(response.status)]
        lines.append(b"content-type: %s\r\n" % response.content_type.encode("latin-1"))
        lines.append(b"content-length: %d\r\n" % len(response.body))
        for name, value in response.headers:
            lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        if not head:
            lines.append(response.body)
        transport.write(b"".join(lines))

    def start_stream(
        self, status: int, headers: list[tuple[str, str]], *, chunked: bool = True
    ) -> HttpStream:
        transport = self._transport
        assert transport is not None
        lines = [_status_line(status)]
        for name, value in headers:
            lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"connection: close\r\n\r\n")
        transport.write(b"".join(lines))
        self._cancel_timer()
        self._stream = HttpStream(self, transport, chunked)
        return self._stream

    def pause_writing(self) -> None:
        stream = self._stream
        if stream is not None and stream.on_pause is not None:
            stream.on_pause()

    def resume_writing(self) -> None:
        stream = self._stream
        if stream is not None and stream.on_resume is not None:
            stream.on_resume()

    def _begin_upgrade(self, rest: bytes) -> None:
        request = self._upgrade
        self._upgrade = None
        transport = self._transport
        if request is None or transport is None or self._closing:
            self._reply_and_close(400, "bad request")
            return
        handler = self._router.find_upgrade(request.path)
        if handler is None:
            self._reply_and_close(404, "not found")
            return
        self._cancel_timer()
        self._closing = True  # this protocol is done; the upgrade handler owns the transport
        try:
            handler(request, transport, rest)
        except Exception:
            log.exception("upgrade of %s failed", request.path)
            transport.abort()

    # ------------------------------------------------------------------ closing and timers

    def _reply_and_close(self, status: int, text: str) -> None:
        if self._closing:
            return
        if self._refusals is not None:
            self._refusals.note(status, text, self._client)
        self._send_response(text_response(text, status), keep_alive=False)
        self._close()

    def _close(self) -> None:
        self._closing = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    def _arm_timer(self, delay: float) -> None:
        self._cancel_timer()
        if delay > 0:
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        if self._busy or self._stream is not None:
            return
        if self._headers or self._url:
            self._reply_and_close(408, "request timeout")
        else:
            self._close()
