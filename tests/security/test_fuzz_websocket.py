"""Hypothesis against the live WebSocket endpoint: thousands of hostile frames, nothing falls over.

The server runs on its own uvloop thread (Hypothesis drives a synchronous
test); the fuzzing clients are plain blocking sockets speaking raw RFC 6455
(``tidings.bench.wsframe``), so any byte can be sent: reserved bits and
opcodes, unmasked frames, bad UTF-8, lying lengths, broken fragmentation,
oversized control frames, binary frames, batched and malformed JSON commands,
hostile channel names. Each example opens one to three connections at once,
most of them past ``connect``.

After every example each connection must get an answer to a final sentinel
command (a reply or a close): the server never hangs. Throughout, a control
subscriber must receive every publication, in order, and the server must log
nothing at ERROR (an unhandled exception anywhere shows up there).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningServer, make_config, token
from tests.security.conftest import LogCapture
from tidings.bench.wsframe import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    encode_frame,
    handshake_request,
    parse_close,
    parse_handshake_response,
)
from tidings.node import Node
from tidings.server.app import TidingsServer

pytestmark = pytest.mark.timeout(180)

CONTROL_CHANNEL = "quiet:control"  # clients may subscribe there, never publish
SENTINEL_ID = 4_000_000_000
ANSWER_TIMEOUT = 5.0
EXAMPLES = 350


class ThreadedServer:
    """A TidingsServer on a uvloop in a background thread."""

    def __init__(self, **overrides: Any) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.node = Node(make_config(**overrides))
        self.server = TidingsServer(self.node)
        self.port: int = self.call(self.server.start())

    def call(self, coroutine: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.server.stop(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def running(self) -> RunningServer:
        return RunningServer(self.server, self.node, self.port)


class RawClient:
    """A blocking RFC 6455 client that can send anything."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT)
        self.sock.sendall(handshake_request(f"127.0.0.1:{port}", "/connection/websocket"))
        buffer = b""
        while True:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed during the handshake"
            done, rest = parse_handshake_response(buffer + chunk)
            if done:
                break
            buffer += chunk
        self.reader = FrameReader()
        self.messages: list[bytes] = []
        self.close_code: int | None = None
        self.eof = False
        self._absorb(rest)

    def _absorb(self, data: bytes) -> None:
        messages, controls = self.reader.feed(data)
        self.messages += messages
        for opcode, payload in controls:
            if opcode == OP_CLOSE and self.close_code is None:
                self.close_code = parse_close(payload)[0]

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:  # the server may already have closed: that is an answer too
            self.eof = True

    def command(self, document: dict[str, Any]) -> None:
        self.send(encode_frame(OP_TEXT, json.dumps(document).encode()))

    def answered(self, command_id: int) -> bool:
        if self.close_code is not None or self.eof:
            return True
        for message in self.messages:
            for line in message.split(b"\n"):
                if line.startswith(b'{"id":%d,' % command_id):
                    return True
        return False

    def wait_answer(self, command_id: int) -> None:
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while not self.answered(command_id):
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the server neither answered nor closed: it hangs"
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            except TimeoutError:
                continue
            if not chunk:
                self.eof = True
            else:
                self._absorb(chunk)
        assert self.reader.failure is None, f"server sent bad framing: {self.reader.failure}"

    def close(self) -> None:
        self.sock.close()


class ControlClient(RawClient):
    """Subscribed to the control channel; checks every publication arrives in order."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.command({"id": 1, "connect": {"token": token("control")}})
        self.command({"id": 2, "subscribe": {"channel": CONTROL_CHANNEL}})
        self.wait_answer(2)
        self.received: list[int] = []
        self.published = 0

    def expect(self, count: int) -> None:
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while len(self.received) < count:
            for message in self.messages:
                for line in message.split(b"\n"):
                    document = json.loads(line)
                    push = document.get("push", {})
                    if push.get("channel") == CONTROL_CHANNEL and "pub" in push:
                        self.received.append(push["pub"]["data"]["n"])
                    elif document == {}:
                        self.command({})  # answer the server's ping
            self.messages.clear()
            if len(self.received) >= count:
                break
            assert self.close_code is None and not self.eof, "the control client was cut off"
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"the control client got {self.received} of {count}"
            self.sock.settimeout(remaining)
            self._absorb(self.sock.recv(65536))
        assert self.received == list(range(1, count + 1))


# --------------------------------------------------------------------------- strategies

CHANNELS = ["chat:a", "open:b", "quiet:control", "$chat:x", "dm:x#y", "", "chat:\x00", "nope:x"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
command_params = st.fixed_dictionaries(
    {},
    optional={
        "channel": st.sampled_from(CHANNELS) | st.text(max_size=12) | json_values,
        "data": json_values,
        "token": st.sampled_from(["", "x.y.z", token("fuzz")]) | json_values,
        "limit": st.integers(-3, 10**6) | json_values,
        "recover": st.booleans() | json_values,
        "offset": st.integers(-1, 2**64) | json_values,
        "epoch": st.text(max_size=8),
        "method": st.text(max_size=8),
    },
)
methods = st.sampled_from(
    ["connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats",
     "history", "send", "rpc", "refresh", "sub_refresh", "ping", "bogus"]
)  # fmt: skip
commands = st.builds(
    lambda method, params, command_id: {method: params, **command_id},
    methods,
    command_params,
    st.fixed_dictionaries({}, optional={"id": st.integers(-1, 2**33) | json_values}),
)
json_payloads = st.lists(commands, min_size=1, max_size=4).map(
    lambda docs: "\n".join(json.dumps(d) for d in docs).encode()
)
text_payloads = (
    json_payloads
    | json_payloads.map(lambda p: p[: len(p) // 2])
    | st.text(max_size=100).map(str.encode)
    | st.binary(max_size=100)
    | st.just(b"{}")
    | st.just(b"")
)


@dataclass
class Plan:
    """What one fuzzing connection sends, as raw bytes in order."""

    connect_first: bool
    chunks: list[bytes] = field(default_factory=list)


def _fragmented(payload: bytes, sizes: list[int], opcode: int) -> bytes:
    pieces, rest = [], payload
    for size in sizes:
        pieces.append(rest[:size])
        rest = rest[size:]
    pieces.append(rest)
    frames = [encode_frame(opcode, pieces[0], fin=False)]
    frames += [encode_frame(OP_CONTINUATION, p, fin=False) for p in pieces[1:-1]]
    frames.append(encode_frame(OP_CONTINUATION, pieces[-1], fin=True))
    return b"".join(frames)


def _raw_frame(first: int, payload: bytes, masked: bool) -> bytes:
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        header = bytes((first, mask_bit | size))
    else:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    if masked:
        return encode_frame(OP_TEXT, payload).replace(bytes((0x81,)), bytes((first,)), 1)
    return header + payload


frames = st.one_of(
    text_payloads.map(lambda p: encode_frame(OP_TEXT, p)),
    text_payloads.map(lambda p: encode_frame(OP_TEXT, p)),
    st.binary(max_size=64).map(lambda p: encode_frame(OP_BINARY, p)),
    st.builds(
        _fragmented, json_payloads, st.lists(st.integers(0, 20), max_size=5), st.just(OP_TEXT)
    ),
    st.builds(
        _fragmented,
        st.binary(max_size=40),
        st.lists(st.integers(0, 8), max_size=3),
        st.just(OP_BINARY),
    ),
    st.binary(max_size=125).map(lambda p: encode_frame(OP_PING, p)),
    st.binary(max_size=125).map(lambda p: encode_frame(OP_PONG, p)),
    st.binary(min_size=126, max_size=200).map(lambda p: encode_frame(OP_PING, p)),
    st.builds(
        lambda code, reason: encode_frame(OP_CLOSE, struct.pack("!H", code) + reason),
        st.integers(0, 65535),
        st.binary(max_size=30),
    ),
    st.binary(max_size=20).map(lambda p: encode_frame(OP_CONTINUATION, p)),
    st.builds(_raw_frame, st.integers(0, 255), st.binary(max_size=40), st.booleans()),
    st.just(b"\x81\xff" + struct.pack("!Q", 1 << 40) + b"\0\0\0\0"),  # claims 1 TiB: 1009
    st.integers(65537, 70000).map(lambda n: encode_frame(OP_TEXT, b" " * n)),  # over 64 KiB
)

plans = st.builds(
    Plan,
    st.booleans() | st.just(True),
    st.lists(frames, min_size=1, max_size=12),
)


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[ThreadedServer]:
    server = ThreadedServer()
    yield server
    server.stop()


def test_websocket_endpoint_survives_fuzzing(
    threaded_server: ThreadedServer, server_log: LogCapture
) -> None:
    port = threaded_server.port
    control = ControlClient(port)
    stats = {"connections": 0, "frames": 0, "closed": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(st.lists(plans, min_size=1, max_size=3))
    def one_round(round_plans: list[Plan]) -> None:
        clients = []
        for plan in round_plans:
            client = RawClient(port)
            clients.append(client)
            if plan.connect_first:
                client.command({"id": 1, "connect": {"token": token("fuzzer")}})
        for plan, client in zip(round_plans, clients, strict=True):
            for chunk in plan.chunks:
                client.send(chunk)
            stats["frames"] += len(plan.chunks)
        for client in clients:
            client.command({"id": SENTINEL_ID, "presence_stats": {"channel": "chat:a"}})
        for client in clients:
            client.wait_answer(SENTINEL_ID)
            stats["closed"] += client.close_code is not None or client.eof
            client.close()
        stats["connections"] += len(clients)
        control.published += 1
        threaded_server.call(
            threaded_server.node.publish(CONTROL_CHANNEL, {"n": control.published})
        )
        control.expect(control.published)
        assert not server_log.errors(), server_log.errors()

    one_round()
    print(f"\nfuzzed {stats['frames']} frames over {stats['connections']} connections")
    assert stats["frames"] >= 1000
    assert not server_log.errors(), server_log.errors()
    control.close()


def test_deeply_nested_json_closes_with_3501_without_an_error(
    threaded_server: ThreadedServer, server_log: LogCapture
) -> None:
    client = RawClient(threaded_server.port)
    client.command({"id": 1, "connect": {"token": token("deep")}})
    client.wait_answer(1)
    deep = '{"id":2,"publish":{"channel":"chat:a","data":' + "[" * 1000 + "]" * 1000 + "}}"
    client.send(encode_frame(OP_TEXT, deep.encode()))
    client.wait_answer(2)
    errors = server_log.errors()
    client.close()
    assert client.close_code == 3501 and not errors, (client.close_code, errors)
