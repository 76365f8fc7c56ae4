"""The load generator's client-side WebSocket framing: bytes in, bytes or close codes out."""

from __future__ import annotations

import struct

import pytest

from tidings.bench import wsframe

pytestmark = pytest.mark.timeout(10)


def server_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return bytes((first, 126)) + struct.pack("!H", size) + payload
    return bytes((first, 127)) + struct.pack("!Q", size) + payload


def unmask(frame: bytes) -> tuple[int, bytes]:
    """Opcode and payload of a masked client frame."""
    assert frame[1] & 0x80, "client frames must be masked"
    size = frame[1] & 0x7F
    offset = 2
    if size == 126:
        size = struct.unpack("!H", frame[2:4])[0]
        offset = 4
    elif size == 127:
        size = struct.unpack("!Q", frame[2:10])[0]
        offset = 10
    key = frame[offset : offset + 4]
    body = frame[offset + 4 :]
    assert len(body) == size
    return frame[0] & 0x0F, bytes(byte ^ key[index % 4] for index, byte in enumerate(body))


class TestHandshake:
    def test_request_has_the_upgrade_headers(self) -> None:
        request = wsframe.handshake_request("127.0.0.1:8000", "/connection/websocket")
        assert request.startswith(b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
        assert b"Upgrade: websocket\r\n" in request
        assert b"Connection: Upgrade\r\n" in request
        assert b"Sec-WebSocket-Version: 13\r\n" in request
        assert request.endswith(b"\r\n\r\n")

    def test_key_is_sixteen_bytes_base64(self) -> None:
        # Servers such as Node's ws reject keys that do not decode to 16 bytes.
        import base64

        assert len(base64.b64decode(wsframe.HANDSHAKE_KEY)) == 16

    def test_accept_value_matches_rfc_example(self) -> None:
        # RFC 6455 section 1.3.
        assert wsframe.accept_value("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

    def test_incomplete_head_waits(self) -> None:
        done, rest = wsframe.parse_handshake_response(b"HTTP/1.1 101 Switching")
        assert not done
        assert rest == b"HTTP/1.1 101 Switching"

    def test_valid_answer_returns_bytes_after_head(self) -> None:
        head = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"sec-websocket-accept: " + wsframe.EXPECTED_ACCEPT + b"\r\n\r\n"
        )
        done, rest = wsframe.parse_handshake_response(head + b"\x81\x02{}")
        assert done
        assert rest == b"\x81\x02{}"

    def test_refusal_names_the_status(self) -> None:
        with pytest.raises(wsframe.HandshakeError, match="400 Bad Request"):
            wsframe.parse_handshake_response(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    def test_wrong_accept_is_refused(self) -> None:
        head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n"
        with pytest.raises(wsframe.HandshakeError, match="Sec-WebSocket-Accept"):
            wsframe.parse_handshake_response(head)


class TestEncoding:
    def test_mask_matches_rfc_example(self) -> None:
        # RFC 6455 section 5.7: "Hello" masked with 37 fa 21 3d.
        assert wsframe.apply_mask(b"Hello", b"\x37\xfa\x21\x3d") == bytes.fromhex("7f9f4d5158")

    def test_mask_twice_is_identity(self) -> None:
        data = bytes(range(256)) * 3 + b"tail"
        assert wsframe.apply_mask(wsframe.apply_mask(data)) == data

    def test_mask_of_empty_payload(self) -> None:
        assert wsframe.apply_mask(b"") == b""

    @pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
    def test_frame_lengths_round_trip(self, size: int) -> None:
        payload = b"x" * size
        frame = wsframe.encode_frame(wsframe.OP_TEXT, payload)
        assert frame[0] == 0x81
        assert unmask(frame) == (wsframe.OP_TEXT, payload)

    def test_close_frame_carries_code_and_reason(self) -> None:
        opcode, body = unmask(wsframe.encode_close(1000, "bye"))
        assert opcode == wsframe.OP_CLOSE
        assert wsframe.parse_close(body) == (1000, "bye")

    def test_close_without_code(self) -> None:
        assert wsframe.parse_close(b"") == (1005, "")


class TestFrameReader:
    def test_one_text_frame(self) -> None:
        reader = wsframe.FrameReader()
        assert reader.feed(server_frame(1, b'{"a":1}')) == ([b'{"a":1}'], [])
        assert reader.failure is None

    def test_coalesced_frames_in_one_read(self) -> None:
        reader = wsframe.FrameReader()
        data = server_frame(1, b"one") + server_frame(2, b"two") + server_frame(9, b"p")
        assert reader.feed(data) == ([b"one", b"two"], [(wsframe.OP_PING, b"p")])

    def test_frames_split_byte_by_byte(self) -> None:
        reader = wsframe.FrameReader()
        big = b"y" * 300
        data = server_frame(1, b"short") + server_frame(1, big)
        messages: list[bytes] = []
        for index in range(len(data)):
            got, controls = reader.feed(data[index : index + 1])
            messages += got
            assert controls == []
        assert messages == [b"short", big]
        assert reader.buffered == 0

    def test_sixty_four_bit_length(self) -> None:
        reader = wsframe.FrameReader()
        payload = b"z" * 70000
        assert reader.feed(server_frame(1, payload))[0] == [payload]

    def test_fragmented_message_with_interleaved_ping(self) -> None:
        reader = wsframe.FrameReader()
        data = (
            server_frame(1, b"frag", fin=False)
            + server_frame(9, b"ping")
            + server_frame(0, b"men", fin=False)
            + server_frame(0, b"ted")
            + server_frame(1, b"next")
        )
        messages, controls = reader.feed(data)
        assert messages == [b"fragmented", b"next"]
        assert controls == [(wsframe.OP_PING, b"ping")]

    def test_close_frame_is_a_control(self) -> None:
        reader = wsframe.FrameReader()
        body = struct.pack("!H", 3001) + b"shutdown"
        assert reader.feed(server_frame(8, body)) == ([], [(wsframe.OP_CLOSE, body)])

    @pytest.mark.parametrize(
        ("data", "code", "reason"),
        [
            (b"\x81\x85abcdhello", 1002, "masked"),
            (server_frame(1, b"x", rsv=0x40), 1002, "reserved bits"),
            (server_frame(0, b"x"), 1002, "continuation frame outside"),
            (server_frame(1, b"a", fin=False) + server_frame(1, b"b"), 1002, "continuation"),
            (server_frame(9, b"p", fin=False), 1002, "control frames"),
            (server_frame(9, b"p" * 126), 1002, "control frames"),
            (server_frame(0xB, b""), 1002, "unknown control opcode"),
            (server_frame(3, b""), 1002, "unknown data opcode"),
        ],
    )
    def test_violations_become_close_codes(self, data: bytes, code: int, reason: str) -> None:
        reader = wsframe.FrameReader()
        reader.feed(data)
        assert reader.failure is not None
        assert reader.failure[0] == code
        assert reason in reader.failure[1]
        # A failed reader returns nothing more.
        assert reader.feed(server_frame(1, b"late")) == ([], [])

    def test_oversized_frame_is_1009(self) -> None:
        reader = wsframe.FrameReader(max_message=10)
        reader.feed(server_frame(1, b"x" * 11))
        assert reader.failure is not None
        assert reader.failure[0] == wsframe.CLOSE_TOO_BIG

    def test_frames_before_a_violation_are_returned(self) -> None:
        reader = wsframe.FrameReader()
        messages, _ = reader.feed(server_frame(1, b"good") + b"\x81\x85abcdhello")
        assert messages == [b"good"]
        assert reader.failure is not None
