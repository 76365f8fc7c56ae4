"""What the load generator sends and how it reads deliveries back, sans I/O.

Every publication carries a 100-byte JSON payload::

    {"s":17,"t":81234567890123,"p":0,"x":"xxxxxxxx..."}

``s`` is the publisher's sequence number (from 1), ``t`` the send time in
nanoseconds of the generator's monotonic clock (one process, one clock, so
receive time minus ``t`` is the publish-to-receive latency), ``p`` the
publisher's index, and ``x`` padding up to the exact size.

Against tidings the payload travels as the ``data`` of a Centrifugo ``publish``
command and comes back inside ``{"push":{"channel":..,"pub":{"data":..,"offset":N}}}``
(docs/protocol.md sections 1-3), several per frame separated by ``\\n``. Against the
reference server the payload is the whole message, echoed to every client.

Reading is done with compiled regular expressions over whole frames rather
than a JSON parser per document: one C-level ``findall`` yields every offset in
a frame, which keeps the generator's per-delivery cost in the low microseconds.
The payload never contains the key ``offset``, so the only match in a
publication push is the server's own offset.
"""

from __future__ import annotations

import json
import re

PAYLOAD_SIZE = 100
"""Bytes of every publication's payload (the issue's 100-byte payloads)."""

OFFSET_RE = re.compile(rb'"offset":(\d+)')
"""The offset of a tidings publication (and of nothing else in a push)."""
SEQ_RE = re.compile(rb'"s":(\d+)')
"""The publisher's sequence number inside a payload."""
SENT_RE = re.compile(rb'"t":(\d+)')
"""The send timestamp (monotonic nanoseconds) inside a payload."""
PUB_MARK = b'"pub":{'
"""Present once in every publication push."""

PING = b"{}"
"""A Centrifugo server ping, and the client's pong (docs/protocol.md section 1)."""

CONNECT_ID = 1
SUBSCRIBE_ID = 2
FIRST_PUBLISH_ID = 3


def make_payload(seq: int, sent_ns: int, publisher: int = 0, size: int = PAYLOAD_SIZE) -> bytes:
    """A JSON object of exactly ``size`` bytes carrying sequence, send time and publisher."""
    head = b'{"s":%d,"t":%d,"p":%d,"x":"' % (seq, sent_ns, publisher)
    padding = size - len(head) - 2
    if padding < 0:
        raise ValueError(f"payload size {size} is too small for {len(head) + 2} bytes of fields")
    return head + b"x" * padding + b'"}'


def json_string(text: str) -> bytes:
    """``text`` as a JSON string literal."""
    return json.dumps(text).encode("utf-8")


def connect_command(token: str | None = None, name: str = "tidings-bench") -> bytes:
    """The ``connect`` command; without a token the server must allow anonymous connects."""
    fields = {"name": name}
    if token:
        fields["token"] = token
    return json.dumps({"connect": fields, "id": CONNECT_ID}, separators=(",", ":")).encode()


def subscribe_command(channel: str) -> bytes:
    """The ``subscribe`` command for ``channel``, without recovery."""
    return b'{"subscribe":{"channel":%s},"id":%d}' % (json_string(channel), SUBSCRIBE_ID)


def map_subscribe_command(channel: str) -> bytes:
    """The first (STATE) request of a map subscription; a fresh map answers LIVE at once
    (docs/protocol.md section 14)."""
    return b'{"subscribe":{"channel":%s,"type":1,"phase":2},"id":%d}' % (
        json_string(channel),
        SUBSCRIBE_ID,
    )


def opening_message(token: str | None, channel: str | None) -> bytes:
    """Connect and, when ``channel`` is set, subscribe, in one frame.

    This is what centrifuge-js does (docs/protocol.md section 1: connect and pending
    subscribes in the same first frame), and it saves a round trip per
    connection during the ramp-up.
    """
    first = connect_command(token)
    if channel is None:
        return first
    return first + b"\n" + subscribe_command(channel)


class PublishEncoder:
    """Builds ``publish`` commands for one channel, with ids counting from 3."""

    __slots__ = ("_prefix", "next_id")

    def __init__(self, channel: str) -> None:
        self._prefix = b'{"publish":{"channel":%s,"data":' % json_string(channel)
        self.next_id = FIRST_PUBLISH_ID

    def encode(self, payload: bytes) -> bytes:
        command_id = self.next_id
        self.next_id = command_id + 1
        return b'%s%s},"id":%d}' % (self._prefix, payload, command_id)


def split_documents(message: bytes) -> list[bytes]:
    """The JSON documents of one frame: split on ``\\n``, empty lines dropped."""
    return [line for line in message.split(b"\n") if line]


def count_publications(joined: bytes) -> tuple[list[bytes], bool]:
    """Offsets found in ``joined`` frames, and whether every document is a publication.

    ``joined`` is one frame or several joined with ``\\n``. When the second
    value is True, the offsets are the whole story and no document needs a
    closer look; otherwise the caller walks the documents one by one (pings,
    replies, other pushes, or a trailing newline).
    """
    offsets = OFFSET_RE.findall(joined)
    count = len(offsets)
    simple = count > 0 and count == joined.count(b"\n") + 1 and count == joined.count(PUB_MARK)
    return offsets, simple


class MapPublishEncoder(PublishEncoder):
    """Builds ``publish`` commands with ``type: 1`` that write ``keys`` keys round robin
    (``k0``, ``k1``, ...): a ticker of ``keys`` symbols."""

    __slots__ = ("_keys", "_sent")

    def __init__(self, channel: str, keys: int) -> None:
        super().__init__(channel)
        self._keys = keys
        self._sent = 0
        self._prefix = b'{"publish":{"channel":%s,"type":1' % json_string(channel)

    def encode(self, payload: bytes) -> bytes:
        command_id = self.next_id
        self.next_id = command_id + 1
        key = self._sent % self._keys
        self._sent += 1
        return b'%s,"key":"k%d","data":%s},"id":%d}' % (self._prefix, key, payload, command_id)
