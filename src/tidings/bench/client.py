"""Raw asyncio protocol clients: one object per connection, no tasks, no library.

A connection is a :class:`BenchClient` subclass driven entirely by transport
callbacks: it writes the upgrade request, checks the 101, then (for tidings)
sends connect and subscribe in one frame, and from then on counts and checks
every delivery in :meth:`data_received`. Nothing per connection runs on its
own timer, so 100,000 idle connections cost no CPU until something arrives.

Counters shared by the connections of one run live in a :class:`Tally`; the
per-connection sequence state (next expected value, anomalies) lives on the
client so that the exactly-once, in-order check can name each receiver.

State machine of a client (transitions happen only in callbacks)::

    HANDSHAKE --101--> SETUP --connect/subscribe replies--> READY --> CLOSED
        any state --error, close frame, connection lost--> CLOSED

The reference server has no setup: it goes from HANDSHAKE straight to READY.

How deliveries are checked cheaply: a server encodes a publication once and
sends the same bytes to every subscriber of the channel. The first receiver to
get a publication parses its offset (or sequence number), checks it, and files
the document in the channel's :class:`Stream` under that number. Every other
receiver then checks a whole read at once: it joins the documents it expects
next (``next_expected`` onwards) from the stream and compares bytes. Equal
bytes prove order, exactly-once and content with a memcmp and a bisection, with
no per-document Python work; any difference falls back to parsing, so a server
that sends different bytes to different subscribers is still checked, only
more slowly.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from typing import Any, ClassVar, cast

import msgspec

from tidings.bench import payload as wire
from tidings.bench import wsframe
from tidings.bench.stats import advance_sequence

HANDSHAKE = "handshake"
SETUP = "setup"
READY = "ready"
CLOSED = "closed"

_monotonic_ns = time.monotonic_ns
_PONG_FRAME = wsframe.encode_text(wire.PING)
_CLOSE_FRAME = wsframe.encode_close(wsframe.CLOSE_NORMAL, "bench done")
_decode_json = msgspec.json.decode


BENCH_CONFIG_HINT = (
    "the server lacks the bench configuration (anonymous clients in a 'bench' namespace "
    "with history): start it with `tidings serve --config benchmarks/tidings-bench.toml`, "
    "or pass --spawn to let tidings bench start its own"
)
SETUP_REFUSALS = frozenset({101, 102, 103, 3500, 3501})
"""Refusals of the set-up that the bench configuration prevents: unauthorized, unknown
channel, permission denied, and the disconnects for a missing or invalid token."""


class ClientFailed(Exception):
    """A connection could not be set up; the message says which step failed."""


class Tally:
    """Counters shared by the connections of one run.

    ``drain_target``: once ``delivered`` reaches it, ``drained`` (a future the
    scenario awaits) is resolved. ``latencies``: a list to append
    publish-to-receive latencies (ns) to, or None when not measured.
    """

    __slots__ = (
        "acked",
        "delivered",
        "drain_target",
        "drained",
        "first_delivery_ns",
        "last_delivery_ns",
        "latencies",
        "lost",
        "pings",
        "problems",
        "publish_errors",
        "ready",
        "streams",
    )

    def __init__(self, *, latencies: bool = False) -> None:
        self.delivered = 0
        self.drain_target = 1 << 62
        self.drained: asyncio.Future[None] | None = None
        self.first_delivery_ns = 0
        self.last_delivery_ns = 0
        self.latencies: list[int] | None = [] if latencies else None
        self.ready = 0
        self.lost = 0
        self.pings = 0
        self.acked = 0
        self.publish_errors = 0
        self.problems: dict[str, int] = {}
        self.streams: dict[str | None, Stream] = {}

    def stream(self, channel: str | None) -> Stream:
        """The shared :class:`Stream` of ``channel`` among this tally's clients."""
        stream = self.streams.get(channel)
        if stream is None:
            stream = self.streams[channel] = Stream()
        return stream

    def problem(self, text: str) -> None:
        """Count one occurrence of a problem (an unexpected reply, a close, ...)."""
        self.problems[text] = self.problems.get(text, 0) + 1

    def expect(self, total: int, future: asyncio.Future[None]) -> None:
        """Resolve ``future`` once ``total`` deliveries have been counted."""
        self.drain_target = total
        self.drained = future
        if self.delivered >= total:
            self._reached()

    def _reached(self) -> None:
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)


class Stream:
    """A channel's publications in number order (offset or sequence), as first received.

    ``text`` holds every filed document followed by ``\\n``; ``starts[n]`` is
    where document ``n`` begins (numbers start at 1; index 0 is unused), and
    the last entry is where the next document will begin. Only checked,
    contiguous runs are filed, so the text is the exact, in-order stream that
    every subscriber of the channel must receive.
    """

    __slots__ = ("starts", "text")

    def __init__(self) -> None:
        self.text = bytearray()
        self.starts: list[int] = [0, 0]

    @property
    def filed(self) -> int:
        """How many documents are filed (the highest number known)."""
        return len(self.starts) - 2

    def file(self, first: int, documents: list[bytes]) -> None:
        """File ``documents`` numbered ``first``, ``first + 1``, ... (already checked)."""
        following = len(self.starts) - 1
        if not first <= following < first + len(documents):
            return
        text = self.text
        starts = self.starts
        for document in documents[following - first :]:
            text += document
            text += b"\n"
            starts.append(len(text))

    def match(self, first: int, messages: list[bytes]) -> int:
        """How many documents from number ``first`` on ``messages`` are, exactly; 0 if not.

        Each message must equal the filed text at its place (one memcmp, no
        copy) and end on a document boundary, a message holding one document or
        several joined by ``\\n``.
        """
        starts = self.starts
        if first >= len(starts) - 1:
            return 0
        text = self.text
        position = starts[first]
        for message in messages:
            if not text.startswith(message, position):
                return 0
            position += len(message) + 1
        last = bisect_left(starts, position, first)
        if last == len(starts) or starts[last] != position:
            return 0
        return last - first


class BenchClient(asyncio.Protocol):
    """Base of the target-specific clients: handshake, framing, sequence checks."""

    __slots__ = (
        "_handshake_buffer",
        "backward",
        "channel",
        "closing",
        "host",
        "index",
        "next_expected",
        "path",
        "paused",
        "reader",
        "ready",
        "received",
        "skipped",
        "state",
        "stream",
        "tally",
        "transport",
    )

    kind: ClassVar[str] = ""

    def __init__(
        self,
        tally: Tally,
        ready: asyncio.Future[BenchClient],
        *,
        host: str,
        path: str,
        channel: str | None = None,
        index: int = 0,
    ) -> None:
        self.tally = tally
        self.stream = tally.stream(channel)
        self.ready = ready
        self.host = host
        self.path = path
        self.channel = channel
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.reader = wsframe.FrameReader()
        self.state = HANDSHAKE
        self.closing = False
        self.paused = False
        self.next_expected = 1
        self.received = 0
        self.skipped = 0
        self.backward = 0
        self._handshake_buffer = b""

    # -- transport callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look-alikes.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.write(wsframe.handshake_request(self.host, self.path))

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # whatever follows our close (or a failure) is not measured
        if self.state is HANDSHAKE:
            data = self._handshake(data)
            if not data:
                return
        messages, controls = self.reader.feed(data)
        if controls:
            self._controls(controls)
        if messages:
            self._messages(messages, _monotonic_ns())
        if self.reader.failure is not None:
            code, reason = self.reader.failure
            self._fail(f"bad frame from server: {reason}", code)

    def connection_lost(self, exc: Exception | None) -> None:
        was_closing = self.closing
        self.state = CLOSED
        self.closing = True
        if not was_closing:
            self.tally.lost += 1
            reason = f"connection lost ({exc})" if exc else "connection closed by server"
            self.tally.problem(reason)
            self._not_ready(reason)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # -- actions ------------------------------------------------------------------

    def close(self) -> None:
        """Close cleanly: a close frame, then the TCP connection (no wait for the echo)."""
        if self.closing:
            return
        self.closing = True
        self.state = CLOSED
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_CLOSE_FRAME)
            transport.close()

    def publication_frame(self, payload: bytes) -> bytes:
        """The frame that publishes ``payload`` to this client's channel."""
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closing:
            transport.write(data)

    def sequence_state(self) -> tuple[int, int, int, int]:
        """``(received, next expected, skipped, backward)`` for the delivery check."""
        return self.received, self.next_expected, self.skipped, self.backward

    # -- internals ---------------------------------------------------------------

    def _handshake(self, data: bytes) -> bytes:
        buffer = self._handshake_buffer + data if self._handshake_buffer else data
        try:
            done, rest = wsframe.parse_handshake_response(buffer)
        except wsframe.HandshakeError as exc:
            self._fail(f"handshake failed: {exc}")
            return b""
        if not done:
            self._handshake_buffer = rest
            return b""
        self._handshake_buffer = b""
        self._opened()
        return rest

    def _opened(self) -> None:
        """The upgrade succeeded: start the target's setup."""
        self._set_ready()

    def _set_ready(self) -> None:
        self.state = READY
        self.tally.ready += 1
        if not self.ready.done():
            self.ready.set_result(self)

    def _not_ready(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ClientFailed(reason))

    def _fail(self, reason: str, code: int = wsframe.CLOSE_PROTOCOL_ERROR) -> None:
        self.tally.problem(reason)
        self._not_ready(reason)
        if not self.closing:
            self.closing = True
            self.state = CLOSED
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(wsframe.encode_close(code))
                transport.close()

    def _controls(self, controls: list[tuple[int, bytes]]) -> None:
        for opcode, body in controls:
            if opcode == wsframe.OP_PING:
                self.send(wsframe.encode_frame(wsframe.OP_PONG, body))
            elif opcode == wsframe.OP_CLOSE:
                code, reason = wsframe.parse_close(body)
                if not self.closing:
                    text = f"server closed the connection: {code} {reason}".rstrip()
                    self._fail(text + self._setup_hint(code), code)

    def _setup_hint(self, code: int) -> str:
        """What to change when the server refuses the set-up with ``code`` (none by default)."""
        return ""

    def _messages(self, messages: list[bytes], now: int) -> None:
        raise NotImplementedError

    def _deliver(self, values: list[bytes], now: int, text: bytes) -> bool:
        """Check and count ``values`` (numbers as digits) found in ``text``.

        Returns True when they were exactly the next ones expected, so that the
        caller may file the documents in the stream.
        """
        count = len(values)
        expected = self.next_expected
        if count == 1:
            numbers = [int(values[0])]
            in_order = numbers[0] == expected
        else:
            numbers = list(map(int, values))
            in_order = numbers == list(range(expected, expected + count))
        if in_order:
            self.next_expected = expected + count
        else:
            self._out_of_sequence(numbers)
        self._count(count, now, text)
        return in_order

    def _count(self, count: int, now: int, text: bytes | list[bytes]) -> None:
        """Count ``count`` checked deliveries, found in ``text`` (or these messages)."""
        self.received += count
        tally = self.tally
        if not tally.first_delivery_ns:
            tally.first_delivery_ns = now
        tally.last_delivery_ns = now
        tally.delivered += count
        latencies = tally.latencies
        if latencies is not None:
            if isinstance(text, list):
                text = b"\n".join(text)
            latencies.extend([now - int(sent) for sent in wire.SENT_RE.findall(text)])
        if tally.delivered >= tally.drain_target:
            tally._reached()

    def _out_of_sequence(self, numbers: list[int]) -> None:
        self.next_expected, skipped, backward = advance_sequence(self.next_expected, numbers)
        self.skipped += skipped
        self.backward += backward


class ReferenceClient(BenchClient):
    """A client of the reference server: raw payloads, one per message, no setup.

    The reference echoes each message to every client, the publisher included,
    so the payload's sequence number is the value checked for order.
    """

    __slots__ = ()
    kind = "reference"

    def publication_frame(self, payload: bytes) -> bytes:
        return wsframe.encode_text(payload)

    def _messages(self, messages: list[bytes], now: int) -> None:
        expected = self.next_expected
        count = self.stream.match(expected, messages)
        if count:
            self.next_expected = expected + count
            self._count(count, now, messages)
            return
        count = len(messages)
        joined = messages[0] if count == 1 else b"\n".join(messages)
        values = wire.SEQ_RE.findall(joined)
        if len(values) != count:
            self.tally.problem("reference message without a sequence number")
        if values and self._deliver(values, now, joined) and len(values) == count:
            self.stream.file(expected, messages)


class TidingsClient(BenchClient):
    """A Centrifugo-protocol client: connect (+ subscribe), then count publications.

    Fast path: a read whose documents are the channel's next publications, as
    filed in the :class:`Stream`, is checked by one byte comparison per frame; failing
    that, one offset per document is checked with a regular expression and no
    JSON parsing.
    Anything else (a ping ``{}``, a reply, another push, a trailing newline)
    goes through :meth:`_documents`, one document at a time.
    """

    __slots__ = ("publisher", "token")
    kind = "tidings"

    def __init__(
        self,
        tally: Tally,
        ready: asyncio.Future[BenchClient],
        *,
        host: str,
        path: str,
        channel: str | None = None,
        index: int = 0,
        token: str | None = None,
    ) -> None:
        super().__init__(tally, ready, host=host, path=path, channel=channel, index=index)
        self.token = token
        self.publisher: wire.PublishEncoder | None = None

    def publication_frame(self, payload: bytes) -> bytes:
        publisher = self.publisher
        if publisher is None:
            if self.channel is None:
                raise RuntimeError("cannot publish: the client has no channel")
            publisher = self.publisher = wire.PublishEncoder(self.channel)
        return wsframe.encode_text(publisher.encode(payload))

    def _opened(self) -> None:
        self.state = SETUP
        self.send(wsframe.encode_text(wire.opening_message(self.token, self.channel)))

    def _messages(self, messages: list[bytes], now: int) -> None:
        if self.state is READY:
            expected = self.next_expected
            count = self.stream.match(expected, messages)
            if count:
                self.next_expected = expected + count
                self._count(count, now, messages)
                return
        joined = messages[0] if len(messages) == 1 else b"\n".join(messages)
        if self.state is READY:
            count = joined.count(b"\n") + 1
            # One offset per document means every document is a publication: in
            # READY only publication pushes carry an offset (pings, replies: none).
            offsets = wire.OFFSET_RE.findall(joined)
            if len(offsets) == count:
                if self._deliver(offsets, now, joined):
                    self.stream.file(expected, joined.split(b"\n"))
                return
        self._documents(joined, now)

    def _documents(self, joined: bytes, now: int) -> None:
        for line in joined.split(b"\n"):
            if not line:
                continue
            if line == wire.PING:
                self.tally.pings += 1
                self.send(_PONG_FRAME)
            elif line.startswith(b'{"push"') and wire.PUB_MARK in line and self.state is READY:
                match = wire.OFFSET_RE.search(line)
                if match is None:
                    self.tally.problem("publication without an offset (is history on?)")
                else:
                    self._deliver([match.group(1)], now, line)
            else:
                self._document(line, now)

    def _document(self, line: bytes, now: int) -> None:
        try:
            document = _decode_json(line)
        except msgspec.DecodeError:
            self._fail(f"server sent invalid JSON: {line[:80]!r}")
            return
        if not isinstance(document, dict):
            self._fail(f"expected a JSON object, got {line[:80]!r}")
            return
        push = document.get("push")
        if push is not None:
            self._push(push, line, now)
        elif "error" in document:
            self._error_reply(document)
        elif self.state is SETUP:
            self._setup_reply(document)
        elif "publish" in document:
            self.tally.acked += 1
        else:
            self.tally.problem(f"unexpected reply: {line[:80]!r}")

    def _push(self, push: Any, line: bytes, now: int) -> None:
        pub = push.get("pub") if isinstance(push, dict) else None
        if pub is None or self.state is not READY:
            kind = next(iter(push), "?") if isinstance(push, dict) and push else "?"
            self.tally.problem(f"unexpected {kind} push in state {self.state}")
            return
        offset = pub.get("offset") if isinstance(pub, dict) else None
        if not isinstance(offset, int):
            self.tally.problem("publication without an offset (is history on?)")
            return
        self._deliver([b"%d" % offset], now, line)

    def _setup_reply(self, document: dict[str, Any]) -> None:
        command_id = document.get("id")
        if command_id == wire.CONNECT_ID and "connect" in document:
            if self.channel is None:
                self._set_ready()
        elif command_id == wire.SUBSCRIBE_ID and "subscribe" in document:
            self._set_ready()
        else:
            self._fail(f"expected the connect or subscribe reply, got {document!r:.80}")

    def _setup_hint(self, code: int) -> str:
        """A refused connect or subscribe almost always means a server without the bench's
        configuration (no anonymous access, no ``bench`` namespace): say what to pass."""
        if self.state is SETUP and code in SETUP_REFUSALS:
            return f"; {BENCH_CONFIG_HINT}"
        return ""

    def _error_reply(self, document: dict[str, Any]) -> None:
        command_id = document.get("id")
        error = document.get("error")
        if self.state is SETUP:
            step = "connect" if command_id == wire.CONNECT_ID else "subscribe"
            code = error.get("code", 0) if isinstance(error, dict) else 0
            text = (
                f"error {code}: {error.get('message')}" if isinstance(error, dict) else str(error)
            )
            self._fail(f"{step} refused: {text}{self._setup_hint(code)}")
        else:
            self.tally.publish_errors += 1
            self.tally.problem(f"error reply: {error}")


class TidingsMapClient(TidingsClient):
    """A :class:`TidingsClient` of a map channel: it subscribes with ``type: 1`` and
    publishes keyed writes (``map_keys`` keys round robin). Map changes carry offsets
    1, 2, 3... like a stream's publications, so deliveries are checked the same way."""

    __slots__ = ()

    map_keys: ClassVar[int] = 1000

    def publication_frame(self, payload: bytes) -> bytes:
        publisher = self.publisher
        if publisher is None:
            if self.channel is None:
                raise RuntimeError("cannot publish: the client has no channel")
            publisher = self.publisher = wire.MapPublishEncoder(self.channel, self.map_keys)
        return wsframe.encode_text(publisher.encode(payload))

    def _opened(self) -> None:
        self.state = SETUP
        opening = wire.connect_command(self.token)
        if self.channel is not None:
            opening += b"\n" + wire.map_subscribe_command(self.channel)
        self.send(wsframe.encode_text(opening))


CLIENT_CLASSES: dict[str, type[BenchClient]] = {
    "tidings": TidingsClient,
    "reference": ReferenceClient,
    "mount": TidingsClient,  # the same protocol, through rt.asgi() under uvicorn
}
