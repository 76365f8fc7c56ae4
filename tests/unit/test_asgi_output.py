"""The mount's adapters on bytes: framed batches in, ASGI messages out, once per batch."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.polling import eventually
from tidings.errors import DisconnectCode
from tidings.protocol.wire import (
    END_CHUNK,
    HTTP_STREAM_WIRE,
    JSON_WIRE,
    SSE_WIRE,
    UNI_WEBSOCKET_WIRE,
    chunk,
)
from tidings.transports.asgi import (
    AsgiOutput,
    AsgiWebSocket,
    SharedMessages,
    body_messages,
    websocket_messages,
)


def test_text_frames_become_websocket_send_messages() -> None:
    for size in (0, 125, 126, 65535, 65536, 70000):  # each length encoding of RFC 6455
        document = b'"' + b"\xc3\xa9" * (size // 2) + b'"'
        (message,) = websocket_messages(JSON_WIRE.frame([document]))
        assert message == {"type": "websocket.send", "text": document.decode()}
    several = UNI_WEBSOCKET_WIRE.frame([b"{}", b'{"a":1}'])
    assert [m["text"] for m in websocket_messages(several)] == ["{}", '{"a":1}']
    joined = JSON_WIRE.frame([b"{}"]) + JSON_WIRE.frame([b"[]", b"1"])  # a slow client's backlog
    assert [m["text"] for m in websocket_messages(joined)] == ["{}", "[]\n1"]


def test_chunks_become_one_body_message() -> None:
    (message,) = body_messages(SSE_WIRE.frame([b"{}", b"[]"]))
    assert message == {
        "type": "http.response.body",
        "body": b"data: {}\n\ndata: []\n\n",
        "more_body": True,
    }
    (joined,) = body_messages(HTTP_STREAM_WIRE.frame([b"1"]) + chunk(b"x" * 300) + END_CHUNK)
    assert joined["body"] == b"1\n" + b"x" * 300
    assert body_messages(END_CHUNK) == ()


def test_shared_messages_convert_each_bytes_object_once() -> None:
    calls: list[bytes] = []

    def convert(data: bytes) -> Any:
        calls.append(data)
        return websocket_messages(data)

    shared = SharedMessages(convert)
    batch = JSON_WIRE.frame([b"{}"])
    first = shared(batch)
    assert all(shared(batch) is first for _ in range(1000))
    other = JSON_WIRE.frame([b"{}"])  # equal bytes, another object: converted again
    assert shared(other) == first and len(calls) == 2


class Sink:
    """An ASGI ``send`` that blocks until the test lets messages through."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, message: Any) -> None:
        await self.gate.wait()
        self.sent.append(message)


async def test_output_pauses_past_high_water_and_resumes_when_drained() -> None:
    sink = Sink()
    output = AsgiOutput(sink, high_water=100)
    events: list[str] = []
    output.on_pause = lambda: events.append("pause")
    resumed = asyncio.Event()
    output.on_resume = lambda: (events.append("resume"), resumed.set())
    sink.gate.clear()
    # The first send waits inside the server (its transport is full): a task takes that
    # send over where it stopped, and the rest queue behind it, in order.
    for n in range(5):
        output.push(({"type": "websocket.send", "text": str(n)},), 30)
    assert events == ["pause"] and output.queued == 150
    sink.gate.set()
    await asyncio.wait_for(resumed.wait(), 1)
    await eventually(lambda: not output.queued, what="the queue to drain", within=1)
    assert events == ["pause", "resume"]
    assert [m["text"] for m in sink.sent] == ["0", "1", "2", "3", "4"]


async def test_close_goes_after_what_is_queued_and_a_stalled_client_is_abandoned() -> None:
    sink = Sink()
    output = AsgiOutput(sink, high_water=1 << 16)
    transport = AsgiWebSocket(output, SharedMessages(websocket_messages))
    finished = asyncio.Event()
    output.on_finished = finished.set
    transport.write(JSON_WIRE.frame([b"{}"]))
    transport.close(DisconnectCode.SLOW)
    transport.write(JSON_WIRE.frame([b"late"]))  # nothing after the close
    await asyncio.wait_for(finished.wait(), 1)
    assert sink.sent == [
        {"type": "websocket.send", "text": "{}"},
        {"type": "websocket.close", "code": 3008, "reason": "slow"},
    ]
    assert not output.aborted

    stalled = Sink()
    stalled.gate.clear()
    output = AsgiOutput(stalled, high_water=1 << 16)
    output.on_finished = (done := asyncio.Event()).set
    output.push(({"type": "websocket.send", "text": "{}"},), 2)
    output.abort()  # what the close deadline does to a client that never reads
    await asyncio.wait_for(done.wait(), 1)
    assert output.aborted and stalled.sent == []
