"""The generator's protocol clients, driven by bytes through a recording transport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tidings.bench import payload as wire
from tidings.bench import wsframe
from tidings.bench.client import (
    CLOSED,
    READY,
    SETUP,
    BenchClient,
    ClientFailed,
    ReferenceClient,
    Stream,
    Tally,
    TidingsClient,
)

pytestmark = pytest.mark.timeout(10)

CHANNEL = "bench:room"


class RecordingTransport:
    """Keeps what the client wrote; answers like an open transport."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def frames(self) -> list[tuple[int, bytes]]:
        """Every masked frame written after the handshake, unmasked."""
        out = []
        for data in self.written:
            if data.startswith(b"GET "):
                continue
            while data:
                size = data[1] & 0x7F
                offset = 2
                if size == 126:
                    size = int.from_bytes(data[2:4], "big")
                    offset = 4
                key = data[offset : offset + 4]
                body = data[offset + 4 : offset + 4 + size]
                out.append((data[0] & 0x0F, wsframe.apply_mask(body, key)))
                data = data[offset + 4 + size :]
        return out


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


def frame(payload: bytes, opcode: int = wsframe.OP_TEXT) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    return bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big") + payload


HEAD = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: " + wsframe.EXPECTED_ACCEPT + b"\r\n\r\n"
)


def push(offset: int, channel: str = CHANNEL) -> bytes:
    data = wire.make_payload(offset, 1000)
    return b'{"push":{"channel":"%s","pub":{"data":%s,"offset":%d}}}' % (
        channel.encode(),
        data,
        offset,
    )


def connect(
    loop: asyncio.AbstractEventLoop,
    cls: type[BenchClient] = TidingsClient,
    tally: Tally | None = None,
    **options: Any,
) -> tuple[BenchClient, RecordingTransport, Tally]:
    tally = tally or Tally()
    client = cls(
        tally,
        loop.create_future(),
        host="127.0.0.1:8000",
        path="/connection/websocket",
        channel=CHANNEL,
        **options,
    )
    transport = RecordingTransport()
    client.connection_made(transport)  # type: ignore[arg-type]
    return client, transport, tally


def ready_tidings(
    loop: asyncio.AbstractEventLoop, tally: Tally | None = None
) -> tuple[BenchClient, RecordingTransport, Tally]:
    client, transport, tally = connect(loop, tally=tally)
    client.data_received(
        HEAD
        + frame(
            b'{"id":1,"connect":{"client":"c1","ping":25,"pong":true}}\n{"id":2,"subscribe":{}}'
        )
    )
    assert client.state == READY
    transport.written.clear()
    return client, transport, tally


class TestTidingsSetup:
    def test_sends_the_upgrade_then_connect_and_subscribe_in_one_frame(
        self, loop: asyncio.AbstractEventLoop
    ) -> None:
        client, transport, _ = connect(loop)
        assert transport.written[0].startswith(b"GET /connection/websocket HTTP/1.1")
        client.data_received(HEAD)
        assert client.state == SETUP
        [(opcode, body)] = transport.frames()
        assert opcode == wsframe.OP_TEXT
        first, second = body.split(b"\n")
        assert "connect" in json.loads(first)
        assert json.loads(second)["subscribe"] == {"channel": CHANNEL}

    def test_ready_after_the_subscribe_reply(self, loop: asyncio.AbstractEventLoop) -> None:
        client, _, tally = connect(loop)
        client.data_received(HEAD + frame(b'{"id":1,"connect":{"client":"c1"}}'))
        assert client.state == SETUP
        client.data_received(frame(b'{"id":2,"subscribe":{}}'))
        assert client.state == READY
        assert client.ready.result() is client
        assert tally.ready == 1

    def test_handshake_split_over_reads(self, loop: asyncio.AbstractEventLoop) -> None:
        client, _, _ = connect(loop)
        data = HEAD + frame(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{}}')
        for index in range(0, len(data), 7):
            client.data_received(data[index : index + 7])
        assert client.state == READY

    def test_subscribe_refused(self, loop: asyncio.AbstractEventLoop) -> None:
        client, transport, tally = connect(loop)
        client.data_received(
            HEAD
            + frame(
                b'{"id":1,"connect":{}}\n'
                b'{"id":2,"error":{"code":103,"message":"permission denied"}}'
            )
        )
        with pytest.raises(ClientFailed, match="subscribe refused"):
            client.ready.result()
        assert client.state == CLOSED
        assert transport.closed
        assert any("permission denied" in problem for problem in tally.problems)

    def test_bad_handshake(self, loop: asyncio.AbstractEventLoop) -> None:
        client, transport, _ = connect(loop)
        client.data_received(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        with pytest.raises(ClientFailed, match="403"):
            client.ready.result()
        assert transport.closed

    def test_publications_right_behind_the_subscribe_reply(
        self, loop: asyncio.AbstractEventLoop
    ) -> None:
        client, _, tally = connect(loop)
        client.data_received(
            HEAD + frame(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{}}\n' + push(1))
        )
        assert client.state == READY
        assert tally.delivered == 1
        assert client.next_expected == 2


class TestTidingsDeliveries:
    def test_batched_publications(self, loop: asyncio.AbstractEventLoop) -> None:
        client, _, tally = ready_tidings(loop)
        client.data_received(frame(b"\n".join([push(1), push(2)])) + frame(push(3)))
        assert tally.delivered == 3
        assert client.sequence_state() == (3, 4, 0, 0)

    def test_ping_is_answered_with_pong(self, loop: asyncio.AbstractEventLoop) -> None:
        client, transport, tally = ready_tidings(loop)
        client.data_received(frame(b"\n".join([push(1), b"{}", push(2)])))
        assert transport.frames() == [(wsframe.OP_TEXT, b"{}")]
        assert tally.pings == 1
        assert tally.delivered == 2

    def test_websocket_ping_gets_a_pong_frame(self, loop: asyncio.AbstractEventLoop) -> None:
        client, transport, _ = ready_tidings(loop)
        client.data_received(frame(b"hi", wsframe.OP_PING))
        assert transport.frames() == [(wsframe.OP_PONG, b"hi")]

    def test_gap_and_duplicate_are_counted(self, loop: asyncio.AbstractEventLoop) -> None:
        client, _, _ = ready_tidings(loop)
        client.data_received(frame(b"\n".join([push(1), push(3), push(3)])))
        received, next_expected, skipped, backward = client.sequence_state()
        assert (received, next_expected, skipped, backward) == (3, 4, 1, 1)

    def test_publish_reply_and_error_reply(self, loop: asyncio.AbstractEventLoop) -> None:
        client, _, tally = ready_tidings(loop)
        client.data_received(
            frame(b'{"id":3,"publish":{}}\n{"id":4,"error":{"code":103,"message":"no"}}')
        )
        assert tally.acked == 1
        assert tally.publish_errors == 1

    def test_key_order_does_not_matter(self, loop: asyncio.AbstractEventLoop) -> None:
        client, _, tally = ready_tidings(loop)
        client.data_received(frame(b'{"push":{"pub":{"offset":1,"data":{}},"channel":"x"}}'))
        assert tally.delivered == 1

    def test_publication_without_offset_is_a_problem(self, loop: asyncio.AbstractEventLoop) -> None:
        client, _, tally = ready_tidings(loop)
        client.data_received(frame(b'{"push":{"channel":"x","pub":{"data":{}}}}'))
        assert tally.delivered == 0
        assert any("without an offset" in problem for problem in tally.problems)

    def test_server_close_is_a_problem(self, loop: asyncio.AbstractEventLoop) -> None:
        client, transport, tally = ready_tidings(loop)
        client.data_received(frame(b"\x0b\xbcno pong", wsframe.OP_CLOSE))
        assert "server closed the connection: 3004 no pong" in tally.problems
        assert transport.closed
        assert client.state == CLOSED

    def test_our_own_close_is_not_a_problem(self, loop: asyncio.AbstractEventLoop) -> None:
        client, transport, tally = ready_tidings(loop)
        client.close()
        client.connection_lost(None)
        assert transport.frames()[0][0] == wsframe.OP_CLOSE
        assert tally.lost == 0
        assert tally.problems == {}

    def test_lost_connection_is_counted(self, loop: asyncio.AbstractEventLoop) -> None:
        client, _, tally = ready_tidings(loop)
        client.connection_lost(ConnectionResetError("reset"))
        assert tally.lost == 1

    def test_drain_future_resolves_at_the_target(self, loop: asyncio.AbstractEventLoop) -> None:
        client, _, tally = ready_tidings(loop)
        done: asyncio.Future[None] = loop.create_future()
        tally.expect(2, done)
        client.data_received(frame(push(1)))
        assert not done.done()
        client.data_received(frame(push(2)))
        assert done.done()

    def test_latencies_are_recorded_when_asked(self, loop: asyncio.AbstractEventLoop) -> None:
        tally = Tally(latencies=True)
        client, _, _ = ready_tidings(loop, tally)
        client.data_received(frame(push(1)))
        assert tally.latencies is not None
        assert len(tally.latencies) == 1


class TestSharedStream:
    def test_second_receiver_checks_by_bytes_and_catches_a_change(
        self, loop: asyncio.AbstractEventLoop
    ) -> None:
        tally = Tally()
        first, _, _ = ready_tidings(loop, tally)
        second, _, _ = ready_tidings(loop, tally)
        batch = frame(b"\n".join([push(1), push(2)])) + frame(push(3))
        first.data_received(batch)
        assert tally.stream(CHANNEL).filed == 3
        # Differently batched, same documents: accepted by the byte comparison.
        second.data_received(frame(push(1)) + frame(b"\n".join([push(2), push(3)])))
        assert second.sequence_state() == (3, 4, 0, 0)
        # A duplicate is caught although its bytes are known.
        second.data_received(frame(push(3)))
        assert second.sequence_state() == (4, 4, 0, 1)

    def test_match_requires_document_boundaries(self) -> None:
        stream = Stream()
        stream.file(1, [b"aa", b"bb", b"cc"])
        assert stream.match(1, [b"aa"]) == 1
        assert stream.match(1, [b"aa\nbb", b"cc"]) == 3
        assert stream.match(2, [b"bb\ncc"]) == 2
        assert stream.match(1, [b"a"]) == 0
        assert stream.match(1, [b"aa\nb"]) == 0
        assert stream.match(3, [b"cc\ndd"]) == 0
        assert stream.match(4, [b"dd"]) == 0

    def test_file_only_extends_contiguously(self) -> None:
        stream = Stream()
        stream.file(2, [b"b"])
        assert stream.filed == 0
        stream.file(1, [b"a", b"b"])
        stream.file(2, [b"b", b"c"])
        assert stream.filed == 3
        assert stream.match(1, [b"a", b"b", b"c"]) == 3


class TestReference:
    def test_ready_right_after_the_handshake(self, loop: asyncio.AbstractEventLoop) -> None:
        client, transport, _ = connect(loop, ReferenceClient)
        client.data_received(HEAD)
        assert client.state == READY
        assert transport.frames() == []

    def test_sequence_numbers_in_binary_and_text_frames(
        self, loop: asyncio.AbstractEventLoop
    ) -> None:
        client, _, tally = connect(loop, ReferenceClient)
        client.data_received(
            HEAD
            + frame(wire.make_payload(1, 5))
            + frame(wire.make_payload(2, 5), wsframe.OP_BINARY)
            + frame(wire.make_payload(4, 5))
        )
        assert tally.delivered == 3
        assert client.sequence_state() == (3, 5, 1, 0)

    def test_publication_frame_is_the_raw_payload(self, loop: asyncio.AbstractEventLoop) -> None:
        client, transport, _ = connect(loop, ReferenceClient)
        client.data_received(HEAD)
        client.send(client.publication_frame(b"hello"))
        assert transport.frames() == [(wsframe.OP_TEXT, b"hello")]

    def test_tidings_publication_frame(self, loop: asyncio.AbstractEventLoop) -> None:
        client, transport, _ = ready_tidings(loop)
        client.send(client.publication_frame(b'{"x":1}'))
        [(_, body)] = transport.frames()
        assert json.loads(body) == {"publish": {"channel": CHANNEL, "data": {"x": 1}}, "id": 3}
