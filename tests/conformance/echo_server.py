"""A test-only WebSocket echo route on the production stack, for the Autobahn|Testsuite.

Run: ``python -m tests.conformance.echo_server [--port N] [--max-message-size N]``.
It prints ``listening on <port>`` once the socket is bound, then serves until
SIGTERM/SIGINT.

What is production here, byte for byte: the HTTP/1.1 edge (:class:`HttpProtocol`
with its header timeout, header caps and admission gate), the origin policy,
the handshake every WebSocket route shares (:meth:`WebSocketUpgrades.handshake`:
websockets' :class:`ServerProtocol` with ``max_size`` = ``max_message_size``, also
after decompression, and permessage-deflate negotiated as on
``/connection/websocket``, no context takeover either way), and
:class:`WebSocketConnection` with its fragment cap (``websocket_max_fragments``),
UTF-8 checks (fail-fast on fragments), close handshake and close timeout. The
configuration is :class:`Config`'s defaults with ``websocket_compression = true``.

Deviations, and why:

* No :class:`Session` sits behind the connection: each complete text message
  is echoed with ``ServerProtocol.send_text`` (``on_text``), each binary
  message with ``send_binary`` (``on_binary``), compressed by websockets when
  deflate was negotiated. So the client-protocol limits (command rate, stale
  connection 3502, binary refused with 3506, pings) do not apply here: they
  are tested in ``tests/e2e`` and ``tests/security``.
* ``--max-message-size`` can raise the 64 KiB default to measure the stack
  without the deliberate limit; ``make conformance`` runs with the default and
  allow-lists the cases that exceed it (``allowlist.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvloop
from websockets.protocol import State

from tidings.config import Config
from tidings.node import Node
from tidings.server.app import TidingsServer
from tidings.server.http import Request

log = logging.getLogger("tidings.conformance")

ECHO_PATH = "/echo"


def _refuse(transport: asyncio.Transport, status: int) -> None:
    transport.write(
        b"HTTP/1.1 %d Refused\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % status
    )
    transport.close()


class EchoRoute:
    """The ``/echo`` upgrade handler: the production handshake, then echo instead of a session."""

    def __init__(self, server: TidingsServer) -> None:
        self.server = server

    def upgrade(self, request: Request, transport: asyncio.Transport, rest: bytes) -> None:
        server = self.server
        upgrades = server.upgrades
        if not upgrades.origin_allowed(request):
            _refuse(transport, 403)
            return
        ws = upgrades.handshake(request, transport, compression=True)
        if ws is None:  # refused (400/426...): already answered and closing
            return
        connection = upgrades.accept(ws, transport, request=request)

        # Called from data_received, which flushes ws.data_to_send() after the chunk.
        # A close frame parsed from the same chunk may already have moved the
        # protocol on: nothing may be sent after it (RFC 6455 section 5.5.1).
        def echo_text(message: bytes) -> None:
            if ws.state is State.OPEN:
                ws.send_text(message)

        def echo_binary(message: bytes) -> None:
            if ws.state is State.OPEN:
                ws.send_binary(message)

        connection.on_text = echo_text
        connection.on_binary = echo_binary
        if rest:
            connection.data_received(rest)


async def serve(config: Config) -> None:
    node = Node(config)
    server = TidingsServer(node)
    server.router.upgrade(ECHO_PATH, EchoRoute(server).upgrade)
    port = await server.start()
    print(f"listening on {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-message-size", type=int, default=Config().max_message_size)
    parser.add_argument("--no-compression", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    config = Config(
        host=args.host,
        port=args.port,
        demo="off",
        websocket_compression=not args.no_compression,
        max_message_size=args.max_message_size,
    )
    config.validate()
    uvloop.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
