"""Sessions and long-lived responses over an ASGI server's connections (``rt.asgi()``).

The hub's contract does not change on the mount: it frames each batch once per
wire format and hands **the same bytes object** to every subscriber's writer
(docs/architecture.md, "The hot path"). ASGI wants something else on the wire
side, though: ``websocket.send`` with ``text`` as ``str``, and response bodies
that the server chunks itself. So the mount's sessions use the standalone edge's
wire formats unchanged (``JSON_WIRE``, ``UNI_WEBSOCKET_WIRE`` and the chunked
stream formats; an ASGI WebSocket shares its hub group, and its framed bytes,
with the standalone listener's WebSockets), and a :class:`SharedMessages` cache
turns each framed batch into ASGI messages **once**: text frames into decoded
``str`` messages, HTTP chunks into bare body bytes. Per recipient a writer does
one identity comparison and queues a reference.

Sending is where ASGI costs what the standalone edge does not: ``send`` is a
coroutine. Each connection has an :class:`AsgiOutput`, a queue of references
drained by a task that exists only while there is something to send (an idle
connection owns none). Its size is the connection's write buffer: past the
high-water mark the session is told it is slow, and the session's own rule
applies, as on the standalone edge: references queue in its backlog, and
``write_buffer_limit`` bytes or ``slow_timeout`` later the client gets 3008.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from typing import Any

from tidings.errors import Disconnect
from tidings.protocol.codec import prepare_push
from tidings.protocol.messages import DisconnectPush
from tidings.protocol.wire import JSON_WIRE, WireFormat, Writer

log = logging.getLogger("tidings.asgi")

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Messages = tuple[Message, ...]

CLOSE_TIMEOUT = 5.0
"""Seconds a closing connection may take to send what it has queued and its last
message (close frame, end of response) before it is abandoned, as on the
standalone edge."""

END_OF_RESPONSE: Message = {"type": "http.response.body", "body": b"", "more_body": False}


# --------------------------------------------------------------------------- framed bytes -> ASGI


def websocket_messages(data: bytes) -> Messages:
    """``websocket.send`` messages for the frames in ``data``: text frames as ``text``,
    binary ones (a Protobuf connection's) as ``bytes``.

    ``data`` holds whole, unmasked, uncompressed frames (RFC 6455 section 5.2) as
    :mod:`tidings.protocol.wire` builds them: one for a bidirectional batch, one per
    push on ``uni_websocket``, several after a slow client's backlog is joined.
    """
    messages: list[Message] = []
    view = memoryview(data)
    position, end = 0, len(data)
    while position < end:
        head, length = data[position], data[position + 1] & 0x7F
        position += 2
        if length == 126:
            length = int.from_bytes(data[position : position + 2])
            position += 2
        elif length == 127:
            length = int.from_bytes(data[position : position + 8])
            position += 8
        if head == 0x81:
            text = str(view[position : position + length], "utf-8")
            messages.append({"type": "websocket.send", "text": text})
        elif head == 0x82:
            payload = data[position : position + length]
            messages.append({"type": "websocket.send", "bytes": payload})
        else:
            raise ValueError(f"expected a final, uncompressed data frame, got 0x{head:02x}")
        position += length
    return tuple(messages)


def body_messages(data: bytes) -> Messages:
    """One ``http.response.body`` message (more to come) for the HTTP chunks in ``data``.

    ``data`` holds complete chunks (``<size>\\r\\n<payload>\\r\\n``, RFC 9112
    section 7.1) as the stream wire formats build them; the last chunk
    (``END_CHUNK``) carries nothing: the response ends with ``end()``.
    """
    parts: list[bytes] = []
    position, end = 0, len(data)
    while position < end:
        line_end = data.index(b"\r\n", position)
        size = int(data[position:line_end], 16)
        start = line_end + 2
        if size:
            parts.append(data[start : start + size])
        position = start + size + 2
    if not parts:
        return ()
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    return ({"type": "http.response.body", "body": body, "more_body": True},)


class SharedMessages:
    """The ASGI messages of the last framed bytes seen: a one-entry cache by identity.

    The hub writes one bytes object to every subscriber of a wire format in a
    row, so all recipients of a batch but the first find it here: the decoding
    (or chunk stripping) happens once per batch, not per recipient. The entry
    keeps a reference to its key, so the key's identity cannot be reused while
    it is cached. The messages themselves are shared too: ASGI servers read the
    messages they are sent and never change them.
    """

    __slots__ = ("_convert", "_key", "_value")

    def __init__(self, convert: Callable[[bytes], Messages]) -> None:
        self._convert = convert
        self._key: bytes | None = None
        self._value: Messages = ()

    def __call__(self, data: bytes) -> Messages:
        if data is self._key:
            return self._value
        value = self._convert(data)
        self._key, self._value = data, value
        return value


# --------------------------------------------------------------------------- sending


class _Resume:
    """Await a coroutine that was already started and is waiting on ``waiting_on``.

    The awaiting task first waits on that same future (the coroutine yielded it
    to us, as it would have to a task), then resumes the coroutine where it
    stopped and drives it to the end.
    """

    __slots__ = ("coroutine", "waiting_on")

    def __init__(self, coroutine: Awaitable[None], waiting_on: Any) -> None:
        self.coroutine = coroutine
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, None, None]:
        yield self.waiting_on
        yield from self.coroutine.__await__()


class AsgiOutput:
    """One connection's outgoing ASGI messages, queued by reference and sent in order.

    The sending task is created when the queue gets its first entry and ends
    when the queue is empty. ``queued`` (bytes, as the wire formats framed them)
    is the connection's write buffer: ``on_pause`` fires past ``high_water``,
    ``on_resume`` once it drains to a quarter of that (asyncio's default ratio).
    ``finish`` queues the last message; ``on_finished`` fires once that message
    is sent, or when the connection is abandoned (``aborted``): the client went
    away, a send failed, or the last message did not leave within ``CLOSE_TIMEOUT``.
    """

    __slots__ = (
        "_deadline",
        "_queue",
        "_send",
        "_task",
        "aborted",
        "closed",
        "finished",
        "high_water",
        "on_finished",
        "on_pause",
        "on_resume",
        "paused",
        "queued",
    )

    def __init__(self, send: Send, high_water: int) -> None:
        self._send = send
        self._queue: deque[tuple[Messages, int]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.high_water = high_water
        self.queued = 0
        self.paused = False
        self.closed = False
        self.finished = False
        self.aborted = False
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        self.on_finished: Callable[[], None] | None = None

    def push(self, messages: Messages, size: int) -> None:
        if self.closed:
            return
        if self._task is None and not self._queue:
            self._send_now(messages, size)
            return
        self._enqueue(messages, size)

    def _enqueue(self, messages: Messages, size: int) -> None:
        queue = self._queue
        if queue is None:  # created on demand: an idle connection keeps no deque (~600 bytes)
            queue = self._queue = deque()
        queue.append((messages, size))
        self.queued += size
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        if not self.paused and self.queued > self.high_water:
            self.paused = True
            if self.on_pause is not None:
                self.on_pause()

    def _send_now(self, messages: Messages, size: int) -> None:
        """Nothing queued: run the server's ``send`` at once, without a task.

        A server's ``send`` usually completes without waiting (uvicorn's waits only
        while its transport is paused), so the common case costs one coroutine and
        no task: measured ~1.3 against ~3.1 µs per recipient with a task (1,000
        connections, a trivial ``send``). When ``send`` does wait, a task takes that
        coroutine over where it stopped, and what follows queues behind it.
        """
        for index, message in enumerate(messages):
            sending = self._send(message)
            try:
                waiting_on = sending.send(None)  # type: ignore[attr-defined]
            except StopIteration:
                continue
            except Exception as exc:  # the server refuses: the connection is gone
                log.debug("ASGI send failed: %r", exc)
                self.abort()
                return
            rest = messages[index + 1 :]
            self._task = asyncio.get_running_loop().create_task(
                self._drain(_Resume(sending, waiting_on))
            )
            self._enqueue(rest, size)
            return

    def finish(self, message: Message) -> None:
        """Queue the last message; nothing is sent after it."""
        if self.closed:
            return
        self.push((message,), 0)
        self.closed = True
        if self.finished:
            return
        if self._task is None and not self._queue:  # sent already
            self._done()
            return
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(CLOSE_TIMEOUT, self._too_late)

    def abort(self) -> None:
        """Send nothing more: the client is gone, or does not read."""
        if self.finished:
            return
        self.closed = self.aborted = True
        self._queue = None
        self.queued = 0
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._done()

    def _too_late(self) -> None:
        self._deadline = None
        log.info("a closing connection did not take its last messages in %.0f s", CLOSE_TIMEOUT)
        self.abort()

    def _done(self) -> None:
        self.finished = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        callback, self.on_finished = self.on_finished, None
        if callback is not None:
            callback()

    async def _drain(self, blocked: _Resume | None = None) -> None:
        send = self._send
        try:
            if blocked is not None:
                await blocked
            while True:
                queue = self._queue
                if not queue:
                    break
                messages, size = queue.popleft()
                for message in messages:
                    await send(message)
                self.queued -= size
                if self.paused and self.queued <= self.high_water // 4:
                    self.paused = False
                    if self.on_resume is not None:
                        self.on_resume()  # the session writes its backlog: queued again
        except Exception as exc:  # the server refuses: the connection is gone
            log.debug("ASGI send failed: %r", exc)
            self._task = None
            self.abort()
            return
        self._task = None
        self._queue = None
        if self.closed and not self.finished:
            self._done()


# --------------------------------------------------------------------------- transports


class AsgiWebSocket:
    """A session's :class:`~tidings.session.Transport` over an ASGI WebSocket.

    ``write`` takes the wire format's frames (shared by every recipient: text, or
    binary on a Protobuf connection) and queues their messages; ``close`` queues
    the close frame behind what is already queued; on ``uni_websocket`` the
    disconnect push goes first (docs/protocol.md section 5, "How a disconnect
    travels").
    """

    __slots__ = ("closed", "messages", "name", "output", "unidirectional", "wire", "write")

    emulation = False

    def __init__(
        self,
        output: AsgiOutput,
        messages: SharedMessages,
        *,
        name: str = "websocket",
        wire: WireFormat = JSON_WIRE,
        unidirectional: bool = False,
    ) -> None:
        self.output = output
        self.messages = messages
        self.name = name
        self.wire = wire
        self.unidirectional = unidirectional
        self.closed = False
        self.write: Writer = self._write

    def _write(self, data: bytes) -> None:
        if not self.closed:
            self.output.push(self.messages(data), len(data))

    def close(self, disconnect: Disconnect) -> None:
        if self.closed:
            return
        if self.unidirectional:
            push = prepare_push(
                "", "disconnect", DisconnectPush(disconnect.code, disconnect.reason)
            )
            self._write(self.wire.frame((push.bare,)))
        self.closed = True
        self.output.finish(
            {"type": "websocket.close", "code": disconnect.code, "reason": disconnect.reason[:123]}
        )

    def lost(self) -> None:
        """The client went away: drop what is queued."""
        self.closed = True
        self.output.abort()

    def write_buffer_size(self) -> int:
        return self.output.queued


class AsgiResponseStream:
    """A :class:`~tidings.server.exchange.ResponseStream` over an ASGI HTTP response.

    Writes take complete HTTP chunks (the stream wire formats' bytes, shared by
    every recipient) and queue the bare body once per batch; the server does
    the chunking. ``done`` resolves when the response has ended and its last
    message left, or the client went away.
    """

    __slots__ = (
        "bodies",
        "closed",
        "done",
        "on_close",
        "on_pause",
        "on_resume",
        "output",
        "write",
    )

    HOP_BY_HOP = frozenset({"transfer-encoding", "connection", "keep-alive", "content-length"})
    """Headers an ASGI application leaves to its server (the standalone edge's streams
    name ``transfer-encoding: chunked`` themselves)."""

    def __init__(
        self,
        output: AsgiOutput,
        bodies: SharedMessages,
        status: int,
        headers: list[tuple[str, str]],
    ) -> None:
        self.output = output
        self.bodies = bodies
        self.closed = False
        self.on_close: Callable[[], None] | None = None
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.write: Writer = self._write
        output.on_pause = self._paused
        output.on_resume = self._resumed
        output.on_finished = self._finished
        raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers
            if name.lower() not in self.HOP_BY_HOP
        ]
        output.push(({"type": "http.response.start", "status": status, "headers": raw_headers},), 0)

    def _write(self, data: bytes) -> None:
        if not self.closed:
            messages = self.bodies(data)
            if messages:
                self.output.push(messages, len(data))

    def end(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.output.finish(END_OF_RESPONSE)
        self._fire_close()

    def lost(self) -> None:
        """The client went away (``http.disconnect``) or the server ended the request."""
        if not self.closed:
            self.closed = True
            self._fire_close()
        self.output.abort()

    def write_buffer_size(self) -> int:
        return self.output.queued

    def set_high_water(self, high: int) -> None:
        self.output.high_water = high

    def _fire_close(self) -> None:
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback()

    def _paused(self) -> None:
        if self.on_pause is not None:
            self.on_pause()

    def _resumed(self) -> None:
        if self.on_resume is not None:
            self.on_resume()

    def _finished(self) -> None:
        if not self.closed:  # a send failed before the end: as if the client left
            self.closed = True
            self._fire_close()
        if not self.done.done():
            self.done.set_result(None)
