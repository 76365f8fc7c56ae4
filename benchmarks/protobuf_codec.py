"""Cost of the Protobuf wire format per operation: tidings' codec against the upb runtime.

    .venv/bin/python benchmarks/protobuf_codec.py [--number 100000] [--repeat 7]

What it times (best of ``--repeat`` runs of ``--number`` calls, in µs per call):

(a) encoding one publication push (a 100-byte JSON payload, client info, an
    offset, a channel name) into the ``Reply`` bytes a WebSocket client reads;
(b) decoding one frame holding a publish command (the same payload) into the
    :class:`tidings.protocol.messages.Command` struct the session works with.

Candidates:

* ``tidings``: :mod:`tidings.protocol.protobuf`, the hand-written wire format;
* ``upb``: the ``protobuf`` package with its upb backend, through the classes
  centrifuge-python generates from the same ``client.proto`` (the test extra
  installs it). Its times include what a server must do around the library:
  building the message from the struct, and copying a parsed command into the
  struct (the session logic is shared with the JSON codec and works on structs);
* ``json``: :mod:`tidings.protocol.codec`, for scale.

Each candidate's output is checked against the others' before timing.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

import google.protobuf
from google.protobuf.internal import api_implementation
from msgspec import Raw

from tidings.protocol import codec, protobuf
from tidings.protocol.messages import (
    NO_DATA,
    ClientInfo,
    Command,
    Publication,
    PublishRequest,
)

try:
    from centrifuge.protocol import client_pb2 as pb
except ImportError as exc:  # pragma: no cover - the test extra brings it
    raise SystemExit("needs centrifuge-python (pip install -e '.[test]')") from exc

CHANNEL = "chat:index"
PAYLOAD = b'{"text":"' + b"x" * 77 + b'","seq":12345}'
assert len(PAYLOAD) == 100
INFO = ClientInfo(user="user-42", client="6c7c2a3e-51b3-4a09-a5a0-1f6f0d7c9b21")
PUBLICATION = Publication(data=Raw(PAYLOAD), info=INFO, offset=123456)


def upb_encode_push(channel: str, publication: Publication) -> bytes:
    info = publication.info
    message = pb.Publication(data=bytes(publication.data), offset=publication.offset)
    if info is not None:
        message.info.user = info.user
        message.info.client = info.client
    reply = pb.Reply(push=pb.Push(channel=channel, pub=message))
    return reply.SerializeToString()


def tidings_encode_push(channel: str, publication: Publication) -> bytes:
    return protobuf.push_reply(protobuf.encode_push(channel, "pub", publication))


def json_encode_push(channel: str, publication: Publication) -> bytes:
    return codec.prepare_publication(channel, publication).envelope


def upb_decode_publish(frame: bytes) -> list[Command]:
    """Split the frame, parse with upb, copy into the struct, apply the shared rules."""
    commands = []
    pos = 0
    while pos < len(frame):
        length, pos = _varint(frame, pos)
        message = pb.Command()
        message.ParseFromString(frame[pos : pos + length])
        pos += length
        publish = message.publish
        command = Command(
            id=message.id,
            publish=PublishRequest(
                channel=publish.channel, data=Raw(publish.data) if publish.data else NO_DATA
            )
            if message.HasField("publish")
            else None,
        )
        codec.command_method(command)
        commands.append(command)
    return commands


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def best_us(function: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    number, repeat = args.number, args.repeat

    # The same bytes in, the same meaning out, before anything is timed.
    ours = tidings_encode_push(CHANNEL, PUBLICATION)
    theirs = upb_encode_push(CHANNEL, PUBLICATION)
    assert pb.Reply.FromString(ours) == pb.Reply.FromString(theirs)
    command = pb.Command(id=7, publish=pb.PublishRequest(channel=CHANNEL, data=PAYLOAD))
    body = command.SerializeToString()
    frame = bytes([len(body)]) + body if len(body) < 128 else protobuf.frame([body])
    assert protobuf.decode_commands(frame) == upb_decode_publish(frame)
    json_frame = b'{"id":7,"publish":{"channel":"%s","data":%s}}' % (CHANNEL.encode(), PAYLOAD)

    print(f"protobuf {google.protobuf.__version__}, backend {api_implementation.Type()}")
    print(f"push: {len(ours)} bytes Protobuf, {len(json_encode_push(CHANNEL, PUBLICATION))} JSON")
    push, command_ = "(a) encode publication push", "(b) decode publish command"
    rows = [
        (push, "tidings", lambda: tidings_encode_push(CHANNEL, PUBLICATION)),
        (push, "upb", lambda: upb_encode_push(CHANNEL, PUBLICATION)),
        (push, "json", lambda: json_encode_push(CHANNEL, PUBLICATION)),
        (command_, "tidings", lambda: protobuf.decode_commands(frame)),
        (command_, "upb", lambda: upb_decode_publish(frame)),
        (command_, "json", lambda: codec.decode_frame(json_frame)),
    ]
    print(f"{'operation':32} {'codec':8} {'µs/op':>7}")
    for operation, name, function in rows:
        print(f"{operation:32} {name:8} {best_us(function, number, repeat):7.2f}")


if __name__ == "__main__":
    main()
