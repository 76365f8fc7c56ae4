"""What the load generator sends, and how it finds numbers in what comes back."""

from __future__ import annotations

import json

import pytest

from tidings.bench import payload as wire

pytestmark = pytest.mark.timeout(10)


class TestPayload:
    @pytest.mark.parametrize("seq", [1, 99, 123456789])
    def test_exactly_one_hundred_bytes_of_json(self, seq: int) -> None:
        data = wire.make_payload(seq, 81234567890123456, publisher=7)
        assert len(data) == wire.PAYLOAD_SIZE
        decoded = json.loads(data)
        assert decoded["s"] == seq
        assert decoded["t"] == 81234567890123456
        assert decoded["p"] == 7

    def test_other_sizes(self) -> None:
        assert len(wire.make_payload(1, 2, size=300)) == 300

    def test_too_small_size_is_refused(self) -> None:
        with pytest.raises(ValueError, match="too small"):
            wire.make_payload(1, 2, size=10)

    def test_payload_never_looks_like_an_offset(self) -> None:
        assert wire.OFFSET_RE.search(wire.make_payload(5, 6)) is None

    def test_sequence_and_send_time_are_found(self) -> None:
        data = wire.make_payload(42, 1000)
        assert wire.SEQ_RE.findall(data) == [b"42"]
        assert wire.SENT_RE.findall(data) == [b"1000"]


class TestCommands:
    def test_anonymous_connect(self) -> None:
        assert json.loads(wire.connect_command()) == {
            "connect": {"name": "tidings-bench"},
            "id": wire.CONNECT_ID,
        }

    def test_connect_with_token(self) -> None:
        command = json.loads(wire.connect_command("abc"))
        assert command["connect"]["token"] == "abc"

    def test_opening_message_pipelines_connect_and_subscribe(self) -> None:
        first, second = wire.opening_message(None, "bench:room").split(b"\n")
        assert json.loads(first)["id"] == wire.CONNECT_ID
        assert json.loads(second) == {
            "subscribe": {"channel": "bench:room"},
            "id": wire.SUBSCRIBE_ID,
        }

    def test_opening_message_without_channel(self) -> None:
        assert b"\n" not in wire.opening_message(None, None)

    def test_publish_commands_count_ids_from_three(self) -> None:
        encoder = wire.PublishEncoder('bench:"quoted"')
        data = wire.make_payload(1, 2)
        first = json.loads(encoder.encode(data))
        second = json.loads(encoder.encode(data))
        assert first == {
            "publish": {"channel": 'bench:"quoted"', "data": json.loads(data)},
            "id": 3,
        }
        assert second["id"] == 4


class TestReading:
    PUSH = (
        b'{"push":{"channel":"bench:a","pub":{"data":%s,'
        b'"info":{"user":"","client":"c1"},"offset":%d}}}'
    )

    def push(self, offset: int) -> bytes:
        return self.PUSH % (wire.make_payload(offset, 1), offset)

    def test_frame_of_publications_only(self) -> None:
        joined = b"\n".join([self.push(1), self.push(2), self.push(3)])
        offsets, simple = wire.count_publications(joined)
        assert offsets == [b"1", b"2", b"3"]
        assert simple

    def test_ping_among_publications_is_not_simple(self) -> None:
        joined = b"\n".join([self.push(1), b"{}", self.push(2)])
        offsets, simple = wire.count_publications(joined)
        assert offsets == [b"1", b"2"]
        assert not simple

    def test_trailing_newline_is_not_simple(self) -> None:
        assert not wire.count_publications(self.push(1) + b"\n")[1]

    def test_split_documents_drops_empty_lines(self) -> None:
        assert wire.split_documents(b'{"a":1}\n{}\n') == [b'{"a":1}', b"{}"]
